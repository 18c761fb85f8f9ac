"""Model configuration of the VLA policy: one dataclass, named presets, validation that quotes bad values.

Presets:
    tiny        the embedded default: a 4-layer Llama-style LM (hidden 256) and a 4-layer strided conv,
                trained from scratch on CPU in minutes.
    small       the same shape, wider and deeper (hidden 512, 8 layers), for a GPU.
    pretrained  a local Hugging Face causal LM directory (its own tokenizer) and, optionally, a local
                vision tower directory (any `transformers.AutoModel` with `last_hidden_state`).

Derived fields (`chunk_tokens`) are properties so a config on disk never disagrees with itself.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ceed_vla.keys import IMAGE_KEY


class ConfigError(ValueError):
    """A configuration value is invalid; the message quotes it and says what is accepted."""


@dataclass
class LMConfig:
    """Shape of a backbone built from scratch (ignored when `VLAConfig.lm_path` is set)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"LMConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads != 0:
            raise ConfigError(
                f"LMConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )


VISION_KINDS = ("spatial", "conv", "pretrained")


def spatial_vision(**overrides: Any) -> VisionConfig:
    """The spatial-softmax encoder's defaults: three residual stages, 32 keypoints, a 4 x 4 grid."""
    return VisionConfig(
        **{"kind": "spatial", "channels": (32, 64, 128), "keypoints": 32, "grid": 4, **overrides}
    )


@dataclass
class VisionConfig:
    """The image encoder: `spatial` (residual convs, keypoint + grid tokens), `conv` (strided convs
    pooled to a grid) or `pretrained` (a local vision tower)."""

    kind: str = "conv"
    channels: tuple[int, ...] = (32, 64, 128, 256)
    grid: int = 4  # the conv output is pooled to grid x grid patch tokens (spatial: 0 = none)
    keypoints: int = 0  # spatial: spatial-softmax keypoint tokens
    # conv / spatial: append the pixel's x and y in [-1, 1] to the image as two more input channels
    # (CoordConv), so a small target's position survives the strided convs and the pooling
    coords: bool = False
    image_size: int | None = None  # resize input images to this square size; None keeps their size
    tower_path: str | None = None  # local directory of a transformers vision model (kind="pretrained")
    # pretrained: the tower's own normalisation, read from its preprocessor_config.json when built
    # (None: images scaled to [-1, 1], i.e. mean = std = 0.5)
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != 3 or (name == "image_std" and min(value) <= 0):
                    raise ConfigError(f"VisionConfig.{name} must be 3 numbers (std > 0), got {value!r}")
                setattr(self, name, value)
        if self.kind not in VISION_KINDS:
            raise ConfigError(f"VisionConfig.kind must be one of {VISION_KINDS}, got {self.kind!r}")
        if self.kind == "pretrained" and self.coords:
            raise ConfigError(
                "VisionConfig.coords is for the conv and spatial encoders, not a pretrained tower"
            )
        if self.kind == "pretrained" and not self.tower_path:
            raise ConfigError("VisionConfig.kind='pretrained' needs tower_path (a local directory), got None")
        if not self.channels or any(int(c) <= 0 for c in self.channels):
            raise ConfigError(f"VisionConfig.channels must be positive ints, got {self.channels!r}")
        if self.kind == "spatial":
            if self.keypoints <= 0:
                raise ConfigError(
                    f"VisionConfig.keypoints must be positive for kind='spatial', got {self.keypoints!r}"
                )
            if self.grid < 0:
                raise ConfigError(f"VisionConfig.grid must be >= 0 for kind='spatial', got {self.grid!r}")
        elif self.grid <= 0:
            raise ConfigError(f"VisionConfig.grid must be positive, got {self.grid!r}")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"VisionConfig.image_size must be >= 8 or None, got {self.image_size!r}")

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid + (self.keypoints if self.kind == "spatial" else 0)


@dataclass
class VLAConfig:
    """Everything needed to rebuild the network; saved as `config.json` in every checkpoint."""

    chunk_size: int = 8  # K: action steps per chunk
    n_action_steps: int | None = None  # steps of each chunk executed by select_action (None = K)
    action_dim: int = 4  # D: dims per action (from the dataset)
    state_dim: int = 4
    n_bins: int = 256
    max_text_tokens: int = 24  # instructions are truncated to this many tokens
    text_vocab_size: int = 512  # upper bound when training the default tokenizer
    lm: LMConfig = field(default_factory=LMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    lm_path: str | None = None  # local pretrained causal LM directory (its tokenizer is used)
    dropout: float = 0.0
    # Weight of an auxiliary loss: predict the episode's final state (where the demonstration ends:
    # the reach goal, the button, the handle) from the image tokens alone. 0 = off. It gives the
    # encoder a direct, dense signal to localise what the task is about; only training uses it.
    aux_final_state_weight: float = 0.0
    # The data contract, from the dataset: camera feature keys (each camera is encoded to its own
    # tokens, in this order), the names of the state and action dimensions, and the recording rate.
    image_keys: tuple[str, ...] = (IMAGE_KEY,)
    image_shapes: tuple[tuple[int, int, int], ...] | None = None  # [C, H, W] per camera as recorded
    state_names: tuple[str, ...] | None = None
    action_names: tuple[str, ...] | None = None
    fps: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lm, dict):
            self.lm = LMConfig(**self.lm)
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        for name in ("chunk_size", "action_dim", "state_dim", "max_text_tokens", "text_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"VLAConfig.{name} must be a positive int, got {value!r}")
        if self.n_bins < 2 or self.n_bins > 4096:
            raise ConfigError(f"VLAConfig.n_bins must be in [2, 4096], got {self.n_bins!r}")
        if self.n_action_steps is not None and not 1 <= self.n_action_steps <= self.chunk_size:
            raise ConfigError(
                f"VLAConfig.n_action_steps must be in [1, chunk_size={self.chunk_size}], got {self.n_action_steps!r}"
            )
        if not (isinstance(self.aux_final_state_weight, int | float) and self.aux_final_state_weight >= 0):
            raise ConfigError(
                f"VLAConfig.aux_final_state_weight must be a number >= 0, got {self.aux_final_state_weight!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"VLAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.lm_path is not None and not isinstance(self.lm_path, str):
            raise ConfigError(f"VLAConfig.lm_path must be a str path or None, got {self.lm_path!r}")
        self._check_contract()

    def _check_contract(self) -> None:
        self.image_keys = tuple(self.image_keys)
        if not self.image_keys or len(set(self.image_keys)) != len(self.image_keys):
            raise ConfigError(f"VLAConfig.image_keys must be distinct camera keys, got {self.image_keys!r}")
        if self.image_shapes is not None:
            self.image_shapes = tuple(tuple(int(v) for v in s) for s in self.image_shapes)
            if len(self.image_shapes) != len(self.image_keys):
                raise ConfigError(
                    f"VLAConfig.image_shapes has {len(self.image_shapes)} entries for "
                    f"{len(self.image_keys)} image_keys {self.image_keys!r}"
                )
        for name, dim in (("state_names", self.state_dim), ("action_names", self.action_dim)):
            names = getattr(self, name)
            if names is not None:
                names = tuple(str(n) for n in names)
                setattr(self, name, names)
                if len(names) != dim:
                    raise ConfigError(f"VLAConfig.{name} has {len(names)} names for {dim} dims: {names!r}")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"VLAConfig.fps must be positive or None, got {self.fps!r}")

    @property
    def chunk_tokens(self) -> int:
        """n = K * D action tokens per chunk."""
        return self.chunk_size * self.action_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown VLAConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def tiny_config(**overrides: Any) -> VLAConfig:
    return VLAConfig(**overrides)


def small_config(**overrides: Any) -> VLAConfig:
    overrides.setdefault("lm", LMConfig(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048))
    overrides.setdefault("vision", VisionConfig(channels=(64, 128, 256, 512), grid=6))
    return VLAConfig(**overrides)


def pretrained_config(lm_path: str, tower_path: str | None = None, **overrides: Any) -> VLAConfig:
    """Wrap a local causal LM (and optionally a local vision tower); shapes come from their configs."""
    vision = VisionConfig(kind="pretrained", tower_path=tower_path) if tower_path else VisionConfig()
    overrides.setdefault("vision", vision)
    return VLAConfig(lm_path=lm_path, **overrides)


PRESETS = {"tiny": tiny_config, "small": small_config, "pretrained": pretrained_config}


def make_config(preset: str, **overrides: Any) -> VLAConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset](**overrides)
