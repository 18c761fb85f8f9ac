"""`ceed bridge --params FILE [--node NAME]`: start the nodes of a ROS parameter YAML with rclpy.

The YAML is the one the launch files pass to `ros2 launch` (launch/config/*.yaml); its top-level keys
are node names. Each known node found there is created in this process, rclpy reading the file
through `--ros-args --params-file FILE`, and all are spun in one single-threaded executor until
SIGINT, SIGTERM or `--duration`; the bridge then publishes its hold before the process exits (0 after
a signal, 1 after a crash). Use this
where no ROS CLI exists; on a ROS 2 install `ros2 launch` on the launch files does the same.
"""

from __future__ import annotations

import argparse
import importlib
import threading
from pathlib import Path

import yaml

# node name in the YAML -> "module:class"; the class takes the node name as its first argument
NODE_TYPES = {
    "policy_bridge": "ceed_vla.robot_bridge.node:PolicyBridgeNode",
    "sim_robot": "ceed_vla.robot_bridge.sim_robot:SimRobotNode",
}


class LaunchError(RuntimeError):
    """The parameter file does not describe nodes this launcher can start."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", type=Path, required=True, help="ROS 2 parameter YAML (launch/config/*.yaml)"
    )
    parser.add_argument(
        "--node",
        action="append",
        choices=sorted(NODE_TYPES),
        help="start only this node (repeatable); default: every node in the file",
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0 = run until Ctrl-C)"
    )


def nodes_in_file(path: Path) -> list[str]:
    """Node names at the top level of a ROS parameter file that this launcher knows, in file order."""
    if not path.is_file():
        raise LaunchError(f"parameter file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LaunchError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise LaunchError(
            f"{path} must map node names to {{ros__parameters: ...}}; got {type(data).__name__}"
        )
    names = []
    for key, body in data.items():
        name = str(key).rstrip("/").rsplit("/", 1)[-1]
        if name == "**":
            continue  # wildcard parameters apply to every node
        if not isinstance(body, dict) or "ros__parameters" not in body:
            raise LaunchError(f"{path}: entry {key!r} has no 'ros__parameters' mapping")
        if name not in NODE_TYPES:
            raise LaunchError(f"{path}: node {key!r} is not one of {sorted(NODE_TYPES)}")
        names.append(name)
    if not names:
        raise LaunchError(f"{path} names no node; expected some of {sorted(NODE_TYPES)}")
    return names


def create_node(name: str, **kwargs):
    """Create the node registered as `name`; a managed node is configured and activated."""
    module_name, cls_name = NODE_TYPES[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    node = cls(name, **kwargs)
    if hasattr(node, "start") and node.get_parameter("autostart").value and not node.start():
        node.destroy_node()
        raise LaunchError(f"node {name!r} failed to configure; see the log above")
    return node


def create_nodes(path: Path, only: list[str] | None = None, context=None) -> list:
    """Create the nodes of parameter file `path` (or the `only` ones) in an initialised rclpy
    context that was given `--ros-args --params-file path`. On failure none is left behind."""
    names = nodes_in_file(path)
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise LaunchError(f"{path} has no parameters for {missing}; it has {names}")
        names = [n for n in names if n in only]
    nodes = []
    try:
        for name in names:
            nodes.append(create_node(name, context=context))
    except BaseException:
        for node in nodes:
            node.destroy_node()
        raise
    return nodes


def ros_args(path: Path) -> list[str]:
    return ["--ros-args", "--params-file", str(path)]


def main(args: argparse.Namespace) -> int:
    from .node import run

    try:
        nodes_in_file(args.params)  # explain a bad file before paying for rclpy and the policy
    except LaunchError as exc:
        print(f"ceed bridge: {exc}")
        return 2

    def make(stop: threading.Event):
        try:
            nodes = create_nodes(args.params, args.node)
        except (LaunchError, ValueError) as exc:
            print(f"ceed bridge: {exc}")
            return 1
        if args.duration > 0:
            timer = threading.Timer(args.duration, stop.set)  # a stop like Ctrl-C: holds first
            timer.daemon = True  # Ctrl-C before the deadline must not wait for it
            timer.start()
        return nodes

    return run(make, ros_args(args.params))
