"""The whole loop in MuJoCo over ROS 2: a MetaWorld sim robot and the policy bridge driving it.

    ros2 launch launch/sim.launch.py                                   # scripted expert, reach
    ros2 launch launch/sim.launch.py policy:=checkpoint:/path/to/ckpt task:=door-open

Both executables are console scripts of the ceed-vla Python package (found on PATH); both read
launch/config/sim.yaml from this directory. Without a ROS CLI the same file starts the same nodes:
`ceed bridge --params launch/config/sim.yaml`.
"""

import os

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


def generate_launch_description():
    params = LaunchConfiguration("params_file")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(CONFIG_DIR, "sim.yaml"),
                description="ROS parameter YAML of the sim_robot and policy_bridge nodes",
            ),
            DeclareLaunchArgument("policy", default_value="expert", description="expert, or checkpoint:DIR"),
            DeclareLaunchArgument(
                "task", default_value="reach", description="MetaWorld task of the sim robot"
            ),
            Node(
                executable="ceed-sim-robot",
                name="sim_robot",
                output="screen",
                parameters=[params, {"task": LaunchConfiguration("task")}],
            ),
            Node(
                executable="ceed-policy-bridge",
                name="policy_bridge",
                output="screen",
                parameters=[params, {"policy": LaunchConfiguration("policy")}],
            ),
        ]
    )
