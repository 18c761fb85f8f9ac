"""Declare a config dataclass's fields as ROS parameters and read them back into the dataclass.

Parameters are declared with dynamic typing so YAML written by hand works: `control_rate_hz: 20`
(an integer) is accepted for a float, `[0, 1]` for a list of floats. Values are coerced to the
field's type here and the dataclass validates them.

A parameter the node does not know is an error, not a silent default: `dryrun: true` written for
`dry_run` would otherwise leave the live command topic on. Nodes are created with
`automatically_declare_parameters_from_overrides` so every name given to them can be checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from enum import StrEnum
from pathlib import Path

import yaml
from rcl_interfaces.msg import ParameterDescriptor

from .config import ConfigError

_DYNAMIC = ParameterDescriptor(dynamic_typing=True)
# parameters every rclpy node has; qos_overrides.* are rclpy's QoS override parameters
ROS_OWN_PARAMETERS = {"use_sim_time", "start_type_description_service"}


def defaults(config_cls) -> dict[str, object]:
    """Field names and defaults of a config dataclass, as ROS-declarable values (enums as strings)."""
    out = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out[f.name] = value.value if isinstance(value, StrEnum) else value
    return out


def declare(node, config_cls) -> None:
    """Declare every field of `config_cls` as a parameter of `node`."""
    for name, value in defaults(config_cls).items():
        if not node.has_parameter(name):
            # An empty list has no ROS type: declare it unset, reading back gives the default.
            node.declare_parameter(name, None if value == [] else value, _DYNAMIC)


def read(node, config_cls, given_names=None, adjust=None):
    """Build `config_cls` from the node's parameters (raises ConfigError on a bad value or a name
    the config does not have). `adjust(given) -> given` may fill in or refuse the parameters that
    were set (`given_names`, or those that differ from their default) before the defaults apply."""
    names = node.list_parameters([], 0).names
    refuse_unknown(
        [n for n in names if n not in ROS_OWN_PARAMETERS and not n.startswith("qos_overrides.")],
        config_cls,
        node.get_name(),
    )
    types = {f.name: str(f.type) for f in dataclasses.fields(config_cls)}
    values, given = {}, {}
    for name, default in defaults(config_cls).items():
        value = node.get_parameter(name).value
        values[name] = coerce(name, types[name], default if value is None else value)
        if value is not None and (
            (given_names is not None and name in given_names) or values[name] != default
        ):
            given[name] = values[name]
    if adjust is not None:
        values.update(adjust(given))
    return config_cls(**values)


def from_dict(config_cls, params: dict, adjust=None):
    """Build `config_cls` from a plain mapping (a node's `ros__parameters` in a YAML file); `adjust`
    as in `read`."""
    refuse_unknown(list(params), config_cls, config_cls.__name__)
    types = {f.name: str(f.type) for f in dataclasses.fields(config_cls)}
    given = {k: coerce(k, types[k], v) for k, v in params.items()}
    return config_cls(**(adjust(given) if adjust is not None else given))


def refuse_unknown(names: list[str], config_cls, owner: str) -> None:
    """ConfigError naming every unknown parameter and the closest valid name for each."""
    valid = list(defaults(config_cls))
    unknown = sorted(set(names) - set(valid))
    if not unknown:
        return
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ConfigError(
        f"{owner} has no parameter {', '.join(parts)}: fix the name in the parameter file; "
        f"valid names: {', '.join(sorted(valid))}"
    )


def describe(config) -> str:
    """The effective parameters of a config, one `name=value` each, for one log line at configure."""
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out.append(f"{f.name}={value.value if isinstance(value, StrEnum) else value!r}")
    return ", ".join(out)


FIXES = {
    "float": "write a number, e.g. 0.5",
    "int": "write a whole number, e.g. 3",
    "bool": "write true or false (unquoted)",
    "list[float]": "write a list of numbers, e.g. [0.5, 0.5]",
    "list[str]": "write a list of quoted strings, e.g. ['a', 'b']",
    "str": "write a quoted string",
}


def coerce(name: str, type_name: str, value):
    """`value` read from ROS as the field's type, strictly: a boolean is not a number, a string is
    not a number, a number is not a string; an int passes for a float (YAML `20` for `20.0`). An
    optional field (`bool | None`) left unset stays None: the config derives its value."""
    if type_name.endswith(" | None"):
        if value is None:
            return None
        type_name = type_name.removesuffix(" | None")
    if type_name in ("float", "int", "list[float]"):
        values = (
            list(value) if type_name == "list[float]" and not isinstance(value, (str, bytes)) else [value]
        )
        if any(isinstance(v, (bool, str, bytes)) for v in values) or (
            type_name == "list[float]" and isinstance(value, (str, bytes, bool, int, float))
        ):
            raise ConfigError(
                f"parameter {name}={value!r} is not a valid {type_name}: {FIXES[type_name]}"
                + (" (true/false are not numbers)" if any(isinstance(v, bool) for v in values) else "")
            )
    if type_name == "list[str]" and (
        isinstance(value, (str, bytes)) or any(not isinstance(v, str) for v in value)
    ):
        raise ConfigError(f"parameter {name}={value!r} is not a valid {type_name}: {FIXES[type_name]}")
    if type_name in ("str", "OutputMode") and not isinstance(value, (str, bytes)):
        raise ConfigError(f"parameter {name}={value!r} is not a valid string: {FIXES['str']}")
    try:
        if type_name == "list[float]":
            out = [float(v) for v in value]
            if not all(math.isfinite(v) for v in out):
                raise ConfigError(f"parameter {name}={out} has non-finite values: give finite numbers")
            return out
        if type_name == "list[str]":
            return [str(v) for v in value]
        if type_name == "float":
            out = float(value)
            if not math.isfinite(out):
                raise ConfigError(f"parameter {name}={out} is not finite: give a finite number")
            return out
        if type_name == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if type_name == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        return value if not isinstance(value, bytes) else value.decode()
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(
            f"parameter {name}={value!r} is not a valid {type_name}: {FIXES.get(type_name, 'fix its type')}"
        ) from None


# ---- parameter files: which node a key binds to, and what rcl's YAML parser refuses ---------------


def key_pattern(key: str) -> re.Pattern:
    """The fully qualified node names a parameter-file key applies to, with ROS 2's rules: a key
    without a leading slash is in the root namespace, `*` stands for one name token and `**` for
    any number of them (none included)."""
    tokens = [t for t in str(key).strip().split("/") if t]
    parts = []
    for token in tokens:
        if token == "**":
            parts.append(r"(?:/[^/]+)*")
        else:
            parts.append("/" + ".*".join(re.escape(p) for p in token.split("*")).replace(".*", "[^/]*"))
    return re.compile("".join(parts) + r"\Z" if parts else r"\Z")


def key_matches(key: str, fully_qualified_name: str) -> bool:
    return bool(key_pattern(key).match(fully_qualified_name))


def params_files(args: list[str]) -> list[str]:
    """The `--params-file FILE` arguments of a ROS command line, in order."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--params-file"]


def load_param_file(path) -> dict:
    """A ROS parameter YAML as a mapping of node keys, refused with the key and the fix where rcl's
    own parser would fail with only "Couldn't parse params file" (an unquoted value holding ':'
    inside a [...] list) or where it is not a parameter file at all."""
    text = Path(path).read_text()
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if root is not None:
        _refuse_unquoted_colons(root, [], path)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must map node names to {{ros__parameters: ...}}; got {type(data).__name__}"
        )
    return data


def _refuse_unquoted_colons(node, keys: list[str], path, in_flow: bool = False) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            _refuse_unquoted_colons(v, [*keys, str(k.value)], path, in_flow or bool(node.flow_style))
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _refuse_unquoted_colons(v, keys, path, in_flow or bool(node.flow_style))
    elif isinstance(node, yaml.ScalarNode) and in_flow and node.style is None and ":" in node.value:
        key = keys[-1] if keys else "?"
        raise ConfigError(
            f"{path}, line {node.start_mark.line + 1}: {key} holds the unquoted value {node.value!r} inside "
            f"[...]; ROS's parameter parser refuses ':' there. Quote it: {key}: ['{node.value}']"
        )


def binding_problem(files: list[str], fully_qualified_name: str) -> str | None:
    """Why the parameter files do not bind to the node `fully_qualified_name` (None: one of their
    keys applies to it, or there are no files). rcl silently skips a key naming another node, and
    the node would then run on its code defaults."""
    keys = [str(k) for f in files for k in load_param_file(f)]
    if not files or any(key_matches(k, fully_qualified_name) for k in keys):
        return None
    name = fully_qualified_name.rsplit("/", 1)[-1]
    namespaces = sorted(
        {"/" + "/".join(k.strip("/").split("/")[:-1]) for k in keys if k.rstrip("/").endswith(name)}
    )
    hint = (
        f"start it in the namespace the file names ({', '.join(namespaces)}): `--ros-args -r __ns:={namespaces[0]}` "
        f"or `ros2 launch ... namespace:={namespaces[0]}`, or `ceed bridge --params FILE`, which does so"
        if namespaces
        else f"name it in the file ('{name}:' or '{fully_qualified_name}:')"
    )
    return f"no key of {', '.join(files)} (keys: {keys}) applies to this node, {fully_qualified_name}: {hint}"
