"""The policy bridge on a real arm. DRY RUN unless `dry_run:=false`.

    ros2 launch launch/bridge.launch.py                                   # dry run, bring-up sine
    ros2 launch launch/bridge.launch.py policy:=checkpoint:/path/to/ckpt dry_run:=false

Runs `ceed-policy-bridge` (the console script of the ceed-vla Python package, found on PATH) with
launch/config/bridge_hardware.yaml, or `params_file:=...`. The parameter files are read from this
directory, not from an installed package share: run from a checkout.
"""

import os

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(CONFIG_DIR, "bridge_hardware.yaml"),
                description="ROS parameter YAML of the policy_bridge node",
            ),
            DeclareLaunchArgument(
                "dry_run",
                default_value="true",
                description="publish commands to '<command_topic>/dry_run' only (no controller listens there)",
            ),
            DeclareLaunchArgument(
                "policy",
                default_value="sine:0.05",
                description="checkpoint:DIR for a trained VLA, or sine:AMPLITUDE for bring-up",
            ),
            Node(
                executable="ceed-policy-bridge",
                name="policy_bridge",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {"dry_run": LaunchConfiguration("dry_run"), "policy": LaunchConfiguration("policy")},
                ],
            ),
        ]
    )
