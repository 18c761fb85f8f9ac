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
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .ros_params import key_matches, load_param_file

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


@dataclass(frozen=True)
class NodeSpec:
    name: str  # a key of NODE_TYPES
    namespace: str  # "/" or "/robot": the node is created there, so the file's key binds to it
    key: str  # the key of the parameter file that names it

    @property
    def fully_qualified_name(self) -> str:
        return f"{self.namespace.rstrip('/')}/{self.name}"


def node_specs(path: Path, only: list[str] | None = None) -> list[NodeSpec]:
    """The nodes a ROS parameter file names, each in the namespace its key gives (ROS 2's rules:
    `/robot/policy_bridge`, `policy_bridge`, `/**/policy_bridge` = the root namespace). Wildcard keys
    (`/**`, `/robot/*`) apply to every node they match but name none: with only wildcards the file
    starts the `only` nodes, in the root namespace. Refused: a file that names no node this
    launcher starts, an unknown node, a namespace with `*` in it (where would the node go?), and
    an `only` node the file has no parameters for."""
    if not path.is_file():
        raise LaunchError(f"parameter file {path} does not exist")
    try:
        data = load_param_file(path)
    except ConfigError as exc:
        raise LaunchError(str(exc)) from exc
    expected = " or ".join(sorted(NODE_TYPES))
    specs, wildcards = [], []
    for key, body in data.items():
        if not isinstance(body, dict) or "ros__parameters" not in body:
            raise LaunchError(f"{path}: entry {key!r} has no 'ros__parameters' mapping")
        tokens = [t for t in str(key).split("/") if t]
        if not tokens:
            raise LaunchError(f"{path}: entry {key!r} names no node; expected {expected}")
        name, namespace = tokens[-1], tokens[:-1]
        if "*" in name:
            wildcards.append(str(key))
            continue
        if name not in NODE_TYPES:
            raise LaunchError(
                f"{path}: node {key!r} is not one of {sorted(NODE_TYPES)}, the nodes this launcher starts; "
                "e.g. 'policy_bridge:' or '/robot/policy_bridge:' (a namespace is kept)"
            )
        if namespace == ["**"]:
            namespace = []  # /**/policy_bridge: any namespace, the root one included
        if any("*" in t for t in namespace):
            raise LaunchError(
                f"{path}: {key!r} leaves the namespace open ({'/'.join(namespace)}): write the namespace "
                f"the node runs in, e.g. '/robot/{name}:'"
            )
        specs.append(NodeSpec(name, "/" + "/".join(namespace), str(key)))
    if only:
        unknown = sorted(set(only) - set(NODE_TYPES))
        if unknown:
            raise LaunchError(f"--node {unknown}: this launcher starts {expected}")
        named = [s for s in specs if s.name in only]
        for name in only:
            if not any(s.name == name for s in named):
                spec = NodeSpec(name, "/", "")
                if not any(key_matches(k, spec.fully_qualified_name) for k in wildcards):
                    raise LaunchError(
                        f"{path} has no parameters for {name!r} (keys: {list(map(str, data))}); name it, e.g. "
                        f"'{name}:' or '/robot/{name}:'"
                    )
                named.append(NodeSpec(name, "/", next(k for k in wildcards if key_matches(k, f"/{name}"))))
        specs = named
    if not specs:
        raise LaunchError(
            f"{path} names no node this launcher starts (keys: {list(map(str, data))}); expected {expected}, "
            f"e.g. 'policy_bridge:' or '/robot/policy_bridge:'"
            + ("; wildcard keys alone do not say which node to start: add --node NAME" if wildcards else "")
        )
    return specs


def nodes_in_file(path: Path) -> list[str]:
    """Names of the nodes a ROS parameter file starts, in file order (see `node_specs`)."""
    return [spec.name for spec in node_specs(path)]


def create_node(spec: NodeSpec | str, **kwargs):
    """Create the node `spec` (in its namespace); a managed node is configured and activated."""
    spec = spec if isinstance(spec, NodeSpec) else NodeSpec(spec, "/", spec)
    module_name, cls_name = NODE_TYPES[spec.name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    node = cls(spec.name, namespace=spec.namespace, **kwargs)
    if hasattr(node, "start") and node.get_parameter("autostart").value and not node.start():
        node.destroy_node()
        raise LaunchError(f"node {spec.fully_qualified_name!r} failed to configure; see the log above")
    return node


def create_nodes(path: Path, only: list[str] | None = None, context=None) -> list:
    """Create the nodes of parameter file `path` (or the `only` ones) in an initialised rclpy
    context that was given `--ros-args --params-file path`. On failure none is left behind. A sim
    robot is created first, and a policy bridge beside one sim robot plans ahead with its forward
    model (`SimRobotNode.forward_model`, where it applies to the bridge's parameters)."""
    specs = sorted(node_specs(path, only), key=lambda spec: spec.name != "sim_robot")
    nodes = []
    try:
        for spec in specs:
            kwargs = {}
            sims = [node for node in nodes if hasattr(node, "forward_model")]
            if spec.name == "policy_bridge" and len(sims) == 1:
                kwargs["forward_model"] = sims[0].forward_model
            nodes.append(create_node(spec, context=context, **kwargs))
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
        node_specs(args.params, args.node)  # explain a bad file before paying for rclpy and the policy
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
