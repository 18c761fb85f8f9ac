"""The whole loop in MuJoCo over ROS 2: a MetaWorld sim robot and the policy bridge driving it.

    ros2 launch launch/sim.launch.py                                   # what sim.yaml says: expert, reach
    ros2 launch launch/sim.launch.py policy:=checkpoint:/path/to/ckpt task:=door-open

Both executables are console scripts of the ceed-vla Python package (found on PATH); both read
launch/config/sim.yaml from this directory. `policy` and `task` override the file only when given.
Without a ROS CLI the same file starts the same nodes: `ceed bridge --params launch/config/sim.yaml`.
"""

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


def _nodes(context):
    """Both nodes, each with only the overrides the user gave on the command line."""
    params = LaunchConfiguration("params_file").perform(context)
    task = LaunchConfiguration("task").perform(context)
    policy = LaunchConfiguration("policy").perform(context)
    return [
        Node(
            executable="ceed-sim-robot",
            name="sim_robot",
            output="screen",
            parameters=[params] + ([{"task": task}] if task else []),
        ),
        Node(
            executable="ceed-policy-bridge",
            name="policy_bridge",
            output="screen",
            parameters=[params] + ([{"policy": policy}] if policy else []),
        ),
    ]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(CONFIG_DIR, "sim.yaml"),
                description="ROS parameter YAML of the sim_robot and policy_bridge nodes",
            ),
            DeclareLaunchArgument(
                "policy", default_value="", description="'' = the file's (expert); checkpoint:DIR"
            ),
            DeclareLaunchArgument(
                "task", default_value="", description="'' = the file's (reach); a MetaWorld task"
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
