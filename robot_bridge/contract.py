"""The data contract a checkpoint was trained on, and the bridge parameters it fixes.

A checkpoint's config.json (LeRobot's layout) names its cameras by feature key with their recorded
shapes, the state and action dimensions with their names, and the dataset's fps. The bridge takes
what the parameter file leaves out from there, and refuses a value that contradicts it, naming
both, before any topic is opened:

    parameter            from the checkpoint                  refused when
    control_rate_hz      fps (actions are 1/fps apart)        it differs from fps
    camera_topics        one camera: camera_topic feeds it    a key the checkpoint lacks or misses
    image size           each camera's recorded H x W         it differs from the recorded size
    state_joint_names    state_names                          the count differs from state_dim
    joint_names          action_names (trajectory, forward)   the count differs from action_dim
    action_low/high      never: limits are the user's         missing for a dimension other than 4,
                                                              or a count other than action_dim

Safety limits are never guessed: a checkpoint whose actions are not the simulator's 4 dimensions
needs `action_low` and `action_high` in the parameter file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_ACTION_DIM, ConfigError, parse_camera_topics


@dataclass(frozen=True)
class PolicyContract:
    source: str  # the checkpoint directory
    action_dim: int
    state_dim: int
    image_keys: tuple[str, ...]
    image_shapes: tuple[tuple[int, int, int], ...] | None  # [C, H, W] per camera, as recorded
    state_names: tuple[str, ...] | None
    action_names: tuple[str, ...] | None
    fps: float | None
    image_size: int | None = None  # the square size the encoder resizes frames to (None: none recorded)

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> PolicyContract:
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise ConfigError(f"{directory} has no config.json: not a checkpoint written by `ceed train`")
        try:
            c = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc})") from exc
        if c.get("type") != "ceed":
            raise ConfigError(
                f"{path} is not a ceed checkpoint in LeRobot's layout (type {c.get('type')!r}); convert an older "
                "one with `ceed checkpoint convert`"
            )
        shapes = c.get("image_shapes")
        return cls(
            source=str(directory),
            action_dim=int(c["action_dim"]),
            state_dim=int(c["state_dim"]),
            image_keys=tuple(c.get("image_keys") or ("observation.image",)),
            image_shapes=None if shapes is None else tuple(tuple(int(v) for v in s) for s in shapes),
            state_names=None if c.get("state_names") is None else tuple(c["state_names"]),
            action_names=None if c.get("action_names") is None else tuple(c["action_names"]),
            fps=None if c.get("fps") is None else float(c["fps"]),
            image_size=_image_size(c),
        )

    def shape_of(self, key: str) -> tuple[int, int] | None:
        """(H, W) the camera `key` was recorded at, or None when the checkpoint does not say."""
        if self.image_shapes is None:
            return None
        _, h, w = self.image_shapes[self.image_keys.index(key)]
        return h, w

    def apply(self, given: dict) -> dict:
        """The parameters given explicitly -> the same with the checkpoint's values filled in.
        Raises ConfigError when a given value contradicts the checkpoint."""
        out = dict(given)
        src = f"the checkpoint {self.source}"

        # rate
        if self.fps is not None:
            rate = out.get("control_rate_hz")
            if rate is None:
                out["control_rate_hz"] = self.fps
            elif not math.isclose(float(rate), self.fps, rel_tol=1e-6):
                raise ConfigError(
                    f"control_rate_hz={rate} contradicts {src}, trained at fps {self.fps:g} (its actions are "
                    f"1/{self.fps:g} s apart): remove control_rate_hz or set it to {self.fps:g}"
                )

        # actions and their limits
        names = f" ({', '.join(self.action_names)})" if self.action_names else ""
        for key in ("action_low", "action_high"):
            if key in out and len(out[key]) != self.action_dim:
                raise ConfigError(
                    f"{key} has {len(out[key])} values but {src} acts in {self.action_dim} dimensions{names}"
                )
        if self.action_dim != DEFAULT_ACTION_DIM and not ("action_low" in out and "action_high" in out):
            raise ConfigError(
                f"{src} acts in {self.action_dim} dimensions{names}: set action_low and action_high "
                f"({self.action_dim} values each) in the parameter file; safety limits are never guessed"
            )
        # the joints a position output commands, and whose measured positions say where the arm is
        if self.action_names is not None and out.get("output_mode", "forward") in ("trajectory", "forward"):
            joints = out.get("joint_names")
            if not joints:
                out["joint_names"] = list(self.action_names)
            elif len(joints) != self.action_dim:
                raise ConfigError(
                    f"joint_names has {len(joints)} names but {src} acts in {self.action_dim} dimensions{names}"
                )

        # state
        state = out.get("state_joint_names")
        if out.get("state_type", "joint_state") == "joint_state":
            if state is None and self.state_names is not None:
                out["state_joint_names"] = list(self.state_names)
            elif state is not None and len(state) != self.state_dim:
                expected = f" ({', '.join(self.state_names)})" if self.state_names else ""
                raise ConfigError(
                    f"state_joint_names={list(state)} has {len(state)} names but {src} reads a state of "
                    f"{self.state_dim}{expected}"
                )
        elif self.state_dim != 7:
            raise ConfigError(
                f"state_type=pose gives a state of 7 but {src} reads a state of {self.state_dim}"
            )

        # cameras
        topics = parse_camera_topics(out.get("camera_topics") or [])
        if topics:
            missing = sorted(set(self.image_keys) - set(topics))
            extra = sorted(set(topics) - set(self.image_keys))
            if missing or extra:
                raise ConfigError(
                    f"camera_topics names {sorted(topics)} but {src} reads the cameras {list(self.image_keys)}"
                    + (f"; missing: {missing}" if missing else "")
                    + (f"; unknown: {extra}" if extra else "")
                )
            entries = []
            for key in self.image_keys:
                topic, size = topics[key]
                recorded = self.shape_of(key)
                if size is not None and recorded is not None and size != (recorded[1], recorded[0]):
                    raise ConfigError(
                        f"camera_topics gives {key} as {size[0]}x{size[1]} but {src} recorded it at "
                        f"{recorded[1]}x{recorded[0]} (width x height)"
                    )
                size = size or (None if recorded is None else (recorded[1], recorded[0]))
                entries.append(f"{key}={topic}" + (f":{size[0]}x{size[1]}" if size else ""))
            out["camera_topics"] = entries
        elif len(self.image_keys) > 1:
            example = ", ".join(f"'{k}=/camera/{k.split('.')[-1]}/image_raw'" for k in self.image_keys)
            raise ConfigError(
                f"{src} reads {len(self.image_keys)} cameras {list(self.image_keys)}: list one topic per camera "
                f"in camera_topics, e.g. [{example}]"
            )
        else:
            out["camera_key"] = self.image_keys[0]
            recorded = self.shape_of(self.image_keys[0])
            if recorded is not None:
                for key, value in (("image_height", recorded[0]), ("image_width", recorded[1])):
                    if out.get(key) in (None, 0):
                        out[key] = value
                    elif out[key] != value:
                        raise ConfigError(
                            f"{key}={out[key]} contradicts {src}, which recorded {self.image_keys[0]} at "
                            f"{recorded[1]}x{recorded[0]} (width x height)"
                        )
        return out


def _image_size(config: dict) -> int | None:
    vision = config.get("vision") if isinstance(config.get("vision"), dict) else {}
    size = vision.get("image_size", config.get("image_size"))
    return None if size is None else int(size)


def image_size_note(contract: PolicyContract) -> str | None:
    """A warning when the checkpoint records no encoder size although its cameras were recorded
    larger than the encoders are trained at: its tokens at deployment then come from full-size
    frames, not the resized ones it learnt from."""
    if contract.image_size is not None or not contract.image_shapes:
        return None
    largest = max(max(h, w) for _, h, w in contract.image_shapes)
    if largest <= 128:
        return None
    return (
        f"the checkpoint {contract.source} records no vision.image_size while its cameras were recorded at up to "
        f"{largest} px: if its frames were resized for training (ceed train --image-size), the encoder now "
        "sees other images than it learnt from; retrain with a version that records the size"
    )


def contract_for(policy_spec: str) -> PolicyContract | None:
    """The contract of a `checkpoint:DIR` policy; None for the built-in policies."""
    if not policy_spec.startswith("checkpoint:"):
        return None
    return PolicyContract.from_checkpoint(policy_spec.split(":", 1)[1])


def apply_contract(given: dict) -> dict:
    """`ros_params.read`'s adjust step: the given parameters with the checkpoint's contract applied."""
    from .config import BridgeConfig

    contract = contract_for(str(given.get("policy", BridgeConfig.policy)))
    return given if contract is None else contract.apply(given)
