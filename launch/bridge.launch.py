"""The policy bridge on a real arm. DRY RUN unless the parameter file says `dry_run: false`.

    ros2 launch launch/bridge.launch.py                                   # dry run, bring-up sine
    ros2 launch launch/bridge.launch.py params_file:=so101.yaml           # what so101.yaml says
    ros2 launch launch/bridge.launch.py params_file:=so101.yaml policy:=checkpoint:/path/to/ckpt

Runs `ceed-policy-bridge` (the console script of the ceed-vla Python package, found on PATH) with
launch/config/bridge_hardware.yaml, or `params_file:=...`. The file decides: `policy` and `dry_run`
override it only when given on the command line (`dry_run:=false` is the one way to go live from
here). A file whose key names a namespace (`/robot/policy_bridge:`) needs `namespace:=/robot`;
the node refuses to run when no key of the file applies to it. The parameter files are read from
this directory, not from an installed package share: run from a checkout.
"""

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


def _bridge(context):
    """The bridge node, with only the overrides the user gave on the command line."""
    overrides = {}
    policy = LaunchConfiguration("policy").perform(context)
    if policy:
        overrides["policy"] = policy
    dry_run = LaunchConfiguration("dry_run").perform(context).strip().lower()
    if dry_run:
        if dry_run not in ("true", "false"):
            raise RuntimeError(f"dry_run:={dry_run!r}: write dry_run:=true or dry_run:=false")
        overrides["dry_run"] = dry_run == "true"
    parameters = [LaunchConfiguration("params_file").perform(context)]
    return [
        Node(
            executable="ceed-policy-bridge",
            name="policy_bridge",
            namespace=LaunchConfiguration("namespace").perform(context),
            output="screen",
            parameters=parameters + ([overrides] if overrides else []),
        )
    ]


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
                default_value="",
                description="'' = what the parameter file says (and dry run when it says nothing); "
                "true: commands to '<command_topic>/dry_run' only; false: LIVE",
            ),
            DeclareLaunchArgument(
                "policy",
                default_value="",
                description="'' = the parameter file's policy; checkpoint:DIR for a trained VLA, sine:AMPLITUDE",
            ),
            DeclareLaunchArgument(
                "namespace",
                default_value="",
                description="the node's namespace: the one its key in the parameter file names",
            ),
            OpaqueFunction(function=_bridge),
        ]
    )
