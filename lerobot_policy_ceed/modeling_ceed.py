"""`CeedPolicy`: LeRobot's `PreTrainedPolicy` around `ceed_vla.policy.VLAPolicy`.

LeRobot's processors normalise the inputs (state mean/std) and unnormalise the outputs (action
quantiles), so the wrapped VLA runs with identity normalisers: its bins are cut from [-1, 1], which is
the q01..q99 range of the raw actions. The weights file is the VLA's own, without a prefix, so `ceed`
jobs and LeRobot load the same `model.safetensors`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from ceed_vla.policy import VLAPolicy, load_policy
from ceed_vla.policy import lerobot_layout as layout
from ceed_vla.policy.checkpoint_io import CheckpointError
from ceed_vla.policy.config import ConfigError
from ceed_vla.policy.text_tokenizer import load_tokenizer, train_instruction_tokenizer
from lerobot.policies.pretrained import PreTrainedPolicy

from .configuration_ceed import CeedConfig


class CeedPolicy(PreTrainedPolicy):
    config_class = CeedConfig
    name = "ceed"

    def __init__(
        self,
        config: CeedConfig,
        dataset_stats=None,
        dataset_meta=None,
        model: VLAPolicy | None = None,
        **kwargs,
    ):
        super().__init__(config)
        config.sync_features()
        if model is None:
            if dataset_meta is not None and config.fps is None:
                config.fps = float(dataset_meta.fps)
            model = _fresh_model(config, dataset_meta)
        self.model = model

    # ------------------------------------------------------------------------------ LeRobot's API

    def get_optim_params(self):
        return self.model.parameters()

    def reset(self) -> None:
        self.model.reset()

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.model(batch, first_step_weight=self.config.first_step_weight)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, **kwargs) -> torch.Tensor:
        """[B, K, D] normalised actions (LeRobot's postprocessor unnormalises them)."""
        chunk = self.model.predict_action_chunk(batch, decoding=self.config.decode_config())
        return chunk.to(self.model.device)

    @torch.no_grad()
    def select_action(self, batch: dict, **kwargs) -> torch.Tensor:
        """[B, D]: the next action of the current chunk (`n_action_steps` per chunk)."""
        return self.model.select_action(batch, decoding=self.config.decode_config()).to(self.model.device)

    # ------------------------------------------------------------------------------- checkpoints

    def _save_pretrained(self, save_directory: Path, state_dict=None) -> None:
        self.config.sync_features()
        self.config._save_pretrained(Path(save_directory))
        self.model.save_model_files(Path(save_directory))

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path, *, config: CeedConfig | None = None, **kwargs):
        path = Path(str(pretrained_name_or_path))
        if not path.is_dir():
            raise CheckpointError(
                f"ceed checkpoints load from a local directory; {pretrained_name_or_path!r} is not one "
                "(download a Hub repository first, e.g. with `huggingface-cli download`)"
            )
        if config is None:
            config = CeedConfig.from_pretrained(path)
        model = load_policy(path, normalize_inside=False)
        policy = cls(config, model=model)
        policy.to(config.device)
        policy.eval()
        return policy


# The square size a new policy's conv encoder trains at when `--policy.vision.image_size` is not given
# (frames smaller than this keep their size). LeRobot hands the policy full-size frames; without a
# recorded size the encoder would train and deploy at the camera's resolution (a 480x640 camera costs
# ~0.5 s per prefill on 2 cores). The encoder resizes inside its forward, so every consumer of the
# checkpoint (eval, bridge, bench, LeRobot) feeds it what it trained on.
DEFAULT_IMAGE_SIZE = 128


def _record_image_size(config: CeedConfig) -> None:
    """Give a new policy's conv encoder the size it will train at, so its checkpoint records it."""
    vision = config.vision
    if vision.kind == "pretrained" or vision.image_size is not None or not config.image_shapes:
        return  # a pretrained tower has its own size; an explicit size stays
    largest = max(max(int(h), int(w)) for _, h, w in config.image_shapes)
    config.vision = dataclasses.replace(vision, image_size=min(DEFAULT_IMAGE_SIZE, largest))


def _fresh_model(config: CeedConfig, dataset_meta) -> VLAPolicy:
    _record_image_size(config)  # `CeedPolicy.__init__` has synced the camera shapes
    vla = config.to_vla_config()
    if vla.lm_path:
        tokenizer = load_tokenizer(vla.lm_path)
    else:
        if dataset_meta is None:
            raise ConfigError(
                "a new ceed policy trains its instruction tokenizer on the dataset's tasks: build it from "
                "a dataset (LeRobot's make_policy with ds_meta) or load a checkpoint with --policy.path"
            )
        tasks = sorted(str(t) for t in dataset_meta.tasks.index)
        tokenizer = train_instruction_tokenizer(tasks, vocab_size=vla.text_vocab_size)
    action_tok, state_norm = layout.identity_normalizers(vla)
    return VLAPolicy.build(vla, tokenizer, action_tok, state_norm, normalize_inside=False)
