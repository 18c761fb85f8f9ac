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
from enum import StrEnum

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


def coerce(name: str, type_name: str, value):
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
        raise ConfigError(f"parameter {name}={value!r} is not a valid {type_name}") from None
