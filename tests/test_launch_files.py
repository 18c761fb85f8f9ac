"""Launch files, checked statically (`launch`/`launch_ros` cannot be installed here): they parse,
every executable they start is a console script of this package, every parameter file exists and
names the nodes they start, every parameter is one the node declares, and every LaunchConfiguration
has a DeclareLaunchArgument."""

import ast
import tomllib
from pathlib import Path

import pytest
import yaml
from ceed_vla.robot_bridge import ros_params
from ceed_vla.robot_bridge.config import BridgeConfig
from ceed_vla.robot_bridge.launcher import NODE_TYPES, LaunchError, nodes_in_file
from ceed_vla.robot_bridge.sim_robot import SimRobotConfig

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_DIR = ROOT / "launch"
LAUNCH_FILES = sorted(LAUNCH_DIR.glob("*.launch.py"))
CONFIG_FILES = sorted((LAUNCH_DIR / "config").glob("*.yaml"))
NODE_CONFIGS = {"policy_bridge": BridgeConfig, "sim_robot": SimRobotConfig}
ALLOWED_IMPORTS = {"os", "launch", "launch.actions", "launch.substitutions", "launch_ros.actions"}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name
    ]


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_both_launch_files_and_their_configs_exist():
    assert {p.name for p in LAUNCH_FILES} >= {"bridge.launch.py", "sim.launch.py"}
    assert {p.name for p in CONFIG_FILES} >= {"bridge_hardware.yaml", "sim.yaml"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_well_formed(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert "generate_launch_description" in functions
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= ALLOWED_IMPORTS, f"{path.name} imports {imported - ALLOWED_IMPORTS}"

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    yaml_files = [s for s in _strings(tree) if s.endswith(".yaml")]
    assert yaml_files, f"{path.name} names no parameter file"
    for name in yaml_files:
        assert (LAUNCH_DIR / "config" / name).is_file(), f"{path.name} refers to missing config/{name}"
    started = set()
    for call in _calls(tree, "Node"):
        executable, node_name = _kw(call, "executable"), _kw(call, "name")
        assert isinstance(executable, ast.Constant) and executable.value in scripts, ast.unparse(call)
        module = scripts[executable.value].split(":")[0]
        assert NODE_TYPES[node_name.value].startswith(module), (
            f"{executable.value} does not run {node_name.value}"
        )
        assert _kw(call, "parameters") is not None
        started.add(node_name.value)
    for name in yaml_files:
        assert set(nodes_in_file(LAUNCH_DIR / "config" / name)) == started

    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    used = {c.args[0].value for c in _calls(tree, "LaunchConfiguration")}
    assert used <= declared, f"{path.name} uses undeclared launch arguments {used - declared}"


def test_hardware_launch_is_a_dry_run_by_default():
    tree = ast.parse((LAUNCH_DIR / "bridge.launch.py").read_text())
    # the launch file never overrides the parameter file unless the user passes the argument ...
    for name in ("dry_run", "policy"):
        arg = next(c for c in _calls(tree, "DeclareLaunchArgument") if c.args[0].value == name)
        assert _kw(arg, "default_value").value == ""
    # ... and the file it starts, like the code's default, is a dry run
    params = yaml.safe_load((LAUNCH_DIR / "config" / "bridge_hardware.yaml").read_text())
    assert params["policy_bridge"]["ros__parameters"]["dry_run"] is True
    assert BridgeConfig.dry_run is True
    sim = ast.parse((LAUNCH_DIR / "sim.launch.py").read_text())
    for name in ("policy", "task"):
        arg = next(c for c in _calls(sim, "DeclareLaunchArgument") if c.args[0].value == name)
        assert _kw(arg, "default_value").value == ""


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_parameter_is_declared_by_its_node_and_valid(path):
    data = yaml.safe_load(path.read_text())
    for node_name in nodes_in_file(path):
        # raises ConfigError on an undeclared parameter or a bad value
        ros_params.from_dict(NODE_CONFIGS[node_name], data[node_name]["ros__parameters"])


def test_parameter_file_errors_are_explained(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera_node:\n  ros__parameters: {rate: 1}\n")
    with pytest.raises(LaunchError, match="not one of"):
        nodes_in_file(bad)
    with pytest.raises(LaunchError, match="does not exist"):
        nodes_in_file(tmp_path / "missing.yaml")
    wildcard = tmp_path / "wild.yaml"
    wildcard.write_text(
        "/**:\n  ros__parameters: {use_sim_time: false}\n/policy_bridge:\n  ros__parameters: {}\n"
    )
    assert nodes_in_file(wildcard) == ["policy_bridge"]


def test_ceed_bridge_explains_a_bad_parameter_file(tmp_path, capsys):
    from ceed_vla import cli

    assert cli.main(["bridge", "--params", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().out
