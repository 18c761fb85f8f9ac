"""`CeedConfig`: the VLA's configuration (`ceed_vla.policy.VLAConfig`) as a registered LeRobot
`PreTrainedConfig`, plus how chunks are decoded (AR, exact Jacobi, early exit with sigma / tau,
initial guess)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ceed_vla.policy.config import ConfigError, VLAConfig
from lerobot.configs import FeatureType, NormalizationMode, PreTrainedConfig
from lerobot.optim import AdamWConfig

from ceed_vla.keys import ACTION_KEY, STATE_KEY

DECODING_MODES = ("ar", "jacobi", "early_exit")


@PreTrainedConfig.register_subclass("ceed")
@dataclass
class CeedConfig(PreTrainedConfig, VLAConfig):
    """Every `VLAConfig` field (chunk_size, lm, vision, ...), LeRobot's fields, and decoding.

    The camera keys, state and action sizes come from `input_features` / `output_features` (LeRobot
    fills them from the dataset or env); `sync_features` copies them into the VLA fields.
    """

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.QUANTILES,
        }
    )
    decoding_mode: str = "ar"  # ar | jacobi | early_exit
    sigma: int | None = None  # early exit: Jacobi iteration cap
    tau: int | None = None  # early exit: stop when no token moved by more than tau bins
    init_guess: str = "constant"  # Jacobi initial guess: constant | random | first_token
    first_step_weight: float = 1.0  # loss weight of the chunk's first step
    optimizer_lr: float = 3e-4
    optimizer_weight_decay: float = 0.01

    def __post_init__(self) -> None:
        PreTrainedConfig.__post_init__(self)
        VLAConfig.__post_init__(self)
        if self.decoding_mode not in DECODING_MODES:
            raise ConfigError(
                f"CeedConfig.decoding_mode must be one of {DECODING_MODES}, got {self.decoding_mode!r}"
            )
        self.decode_config()  # validates sigma / tau / init_guess against the mode

    # ---------------------------------------------------------------------------- VLA <-> LeRobot

    def sync_features(self) -> None:
        """Copy camera keys and shapes, state and action sizes from LeRobot's features."""
        cams = {k: ft for k, ft in (self.input_features or {}).items() if ft.type is FeatureType.VISUAL}
        if cams:
            self.image_keys = tuple(cams)
            self.image_shapes = tuple(tuple(int(v) for v in ft.shape) for ft in cams.values())
        if self.robot_state_feature is not None:
            self.state_dim = int(self.robot_state_feature.shape[0])
        if self.action_feature is not None:
            self.action_dim = int(self.action_feature.shape[0])
        for name, dim in (("state_names", self.state_dim), ("action_names", self.action_dim)):
            names = getattr(self, name)
            if names is not None and len(names) != dim:
                setattr(self, name, None)  # names of another feature set: drop rather than mislabel
        self._check_contract()

    def set_dataset_feature_metadata(self, features: dict) -> None:
        """Called by LeRobot's `make_policy` with the dataset's features: keep their names."""
        for key, name in ((STATE_KEY, "state_names"), (ACTION_KEY, "action_names")):
            names = (features.get(key) or {}).get("names")
            if isinstance(names, dict):  # some datasets nest names per axis
                names = next(iter(names.values()), None)
            if names is not None:
                setattr(self, name, tuple(str(n) for n in names))

    def to_vla_config(self) -> VLAConfig:
        self.sync_features()
        return VLAConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(VLAConfig)})

    def decode_config(self):
        from ceed_vla.decoding import DecodeConfig

        return DecodeConfig(
            mode=self.decoding_mode, sigma=self.sigma, tau=self.tau, init=self.init_guess, n_bins=self.n_bins
        )

    # ------------------------------------------------------------------------ LeRobot's contract

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay)

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        if not self.image_features:
            raise ConfigError(
                f"the ceed policy needs at least one camera among its input features, got "
                f"{sorted(self.input_features or {})}"
            )
        if self.robot_state_feature is None:
            raise ConfigError(
                f"the ceed policy needs 'observation.state' among its input features, got "
                f"{sorted(self.input_features or {})}"
            )
        self.sync_features()
