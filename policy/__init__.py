"""The VLA policy: model, tokenizers, checkpoints and the trainer (`ceed train`).

Building blocks for decoding and distillation are documented in docs/policy.md.
"""

from .action_tokenizer import ActionTokenizer, StateNormalizer
from .checkpoint_io import CheckpointError
from .config import ConfigError, LMConfig, VisionConfig, VLAConfig, make_config
from .modeling import ActionDimMismatchError, VLAPolicy
from .trainer import LossFn, NextTokenLoss, TrainConfig, Trainer

__all__ = [
    "ActionDimMismatchError",
    "ActionTokenizer",
    "CheckpointError",
    "ConfigError",
    "LMConfig",
    "LossFn",
    "NextTokenLoss",
    "StateNormalizer",
    "TrainConfig",
    "Trainer",
    "VLAConfig",
    "VLAPolicy",
    "VisionConfig",
    "load_policy",
    "make_config",
]


def load_policy(path, device=None, expected_action_dim=None, normalize_inside=True) -> VLAPolicy:
    """Load a checkpoint directory written by `ceed train` (or `VLAPolicy.save_pretrained`).

    The one checkpoint loader: `ceed_vla.policies.load_policy` (every job's `--policy`) and LeRobot's
    plugin (`normalize_inside=False`: LeRobot's processors normalise) both come through here."""
    return VLAPolicy.from_pretrained(
        path, device=device, expected_action_dim=expected_action_dim, normalize_inside=normalize_inside
    )
