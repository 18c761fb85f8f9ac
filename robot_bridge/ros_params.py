"""Declare a config dataclass's fields as ROS parameters and read them back into the dataclass.

Parameters are declared with dynamic typing so YAML written by hand works: `control_rate_hz: 20`
(an integer) is accepted for a float, `[0, 1]` for a list of floats. Values are coerced to the
field's type here and the dataclass validates them.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from rcl_interfaces.msg import ParameterDescriptor

from .config import ConfigError

_DYNAMIC = ParameterDescriptor(dynamic_typing=True)


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


def read(node, config_cls):
    """Build `config_cls` from the node's parameters (raises ConfigError on a bad value)."""
    types = {f.name: str(f.type) for f in dataclasses.fields(config_cls)}
    values = {}
    for name, default in defaults(config_cls).items():
        value = node.get_parameter(name).value
        values[name] = coerce(name, types[name], default if value is None else value)
    return config_cls(**values)


def from_dict(config_cls, params: dict):
    """Build `config_cls` from a plain mapping (a node's `ros__parameters` in a YAML file)."""
    unknown = sorted(set(params) - set(defaults(config_cls)))
    if unknown:
        raise ConfigError(f"{config_cls.__name__} has no parameters {unknown}")
    types = {f.name: str(f.type) for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: coerce(k, types[k], v) for k, v in params.items()})


def coerce(name: str, type_name: str, value):
    try:
        if type_name == "list[float]":
            return [float(v) for v in value]
        if type_name == "list[str]":
            return [str(v) for v in value]
        if type_name == "float":
            return float(value)
        if type_name == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if type_name == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        return value if not isinstance(value, bytes) else value.decode()
    except (TypeError, ValueError):
        raise ConfigError(f"parameter {name}={value!r} is not a valid {type_name}") from None
