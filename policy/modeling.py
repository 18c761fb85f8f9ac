"""The VLA policy: image + instruction + proprio prefix -> K x D action tokens from a causal LM.

Timing (LeRobot's convention): the observation o_t at control step t produces the chunk
a_t, a_{t+1}, ..., a_{t+K-1}; `select_action` executes `n_action_steps` of them before it asks for
a new chunk.

    prompt  = [pad ...][image patches (T)][instruction tokens (L_i)][proprio (1)]   (P positions)
    actions =                                                 [b_0 b_1 ... b_{n-1}]  (n = K * D)

Padding is on the left so every row's last prefix position is P - 1; position ids are
`cumsum(mask) - 1`. Action token j sits at id `action_token_start + bin`, and greedy decoding and the
loss only ever look at the `n_bins` action rows of the output layer.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerBase

from ceed_vla.keys import (
    ACTION_KEY,
    FINAL_STATE_KEY,
    PREFIX_OFFSET_KEY,
    PREFIX_STEPS_KEY,
    STATE_KEY,
    TASK_KEY,
)

from . import lerobot_layout as layout
from .action_tokenizer import ActionTokenizer, StateNormalizer
from .checkpoint_io import CheckpointError, atomic_directory, atomic_write_text, read_json, require_file
from .config import ConfigError, VLAConfig
from .text_tokenizer import load_tokenizer
from .vision import build_vision_encoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.json"
TOKENIZER_FILE = "tokenizer.json"
TEXT_CACHE_SIZE = 4096  # instructions whose token ids are kept
FORMAT_VERSION = layout.FORMAT_VERSION


class _Parts(NamedTuple):
    """What a checkpoint directory's files say, before the model is assembled from them."""

    config: VLAConfig
    lm_cfg: Any
    tower_cfg: dict | None
    action_tok: ActionTokenizer
    state_norm: StateNormalizer
    start: int


class ActionDimMismatchError(ValueError):
    """A policy's action (or state) dimension differs from what the environment or dataset provides."""


def _scratch_lm(config: VLAConfig, vocab_size: int, pad_id: int | None) -> nn.Module:
    lm_cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.lm.hidden_size,
        intermediate_size=config.lm.intermediate_size,
        num_hidden_layers=config.lm.num_layers,
        num_attention_heads=config.lm.num_heads,
        num_key_value_heads=config.lm.num_heads,
        max_position_embeddings=config.lm.max_position_embeddings,
        rope_theta=config.lm.rope_theta,
        attention_dropout=config.dropout,
        tie_word_embeddings=False,
        pad_token_id=pad_id,
        bos_token_id=None,
        eos_token_id=None,
    )
    return AutoModelForCausalLM.from_config(lm_cfg)


def _pretrained_lm(config: VLAConfig, n_bins: int) -> tuple[nn.Module, int]:
    path = Path(config.lm_path)
    if not path.is_dir():
        raise ConfigError(
            f"lm_path {config.lm_path!r} is not a local directory; pretrained backbones are never "
            "downloaded — pass a directory written by save_pretrained()"
        )
    lm = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    start = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(start + n_bins)
    return lm, start


class VLAPolicy(nn.Module):
    """A VLA with LeRobot's inference vocabulary; build with `build()` or `from_pretrained()`."""

    def __init__(
        self,
        config: VLAConfig,
        lm: nn.Module,
        vision: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        action_tokenizer: ActionTokenizer,
        state_normalizer: StateNormalizer,
        action_token_start: int,
        normalize_inside: bool = True,
    ):
        super().__init__()
        if action_tokenizer.action_dim != config.action_dim:
            raise ActionDimMismatchError(
                f"action statistics have {action_tokenizer.action_dim} dims but config.action_dim is {config.action_dim}"
            )
        if action_tokenizer.n_bins != config.n_bins:
            raise ConfigError(f"action tokenizer has {action_tokenizer.n_bins} bins, config {config.n_bins}")
        self.config = config
        self.lm = lm
        self.vision = vision
        hidden = lm.get_input_embeddings().weight.shape[1]
        self.projector = nn.Sequential(
            nn.Linear(vision.out_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.proprio = nn.Sequential(
            nn.Linear(config.state_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        if config.aux_final_state_weight > 0:
            # [B, C*T*V] flattened raw vision tokens -> [B, S] normalised final state
            width = len(config.image_keys) * vision.num_tokens * vision.out_dim
            self.aux_head = nn.Sequential(nn.Linear(width, 128), nn.GELU(), nn.Linear(128, config.state_dim))
        if len(config.image_keys) > 1:  # tells the LM which camera a token came from
            self.camera_embed = nn.Parameter(torch.zeros(len(config.image_keys), hidden))
            nn.init.normal_(self.camera_embed, std=0.02)
        # False when LeRobot's processors normalise the inputs and unnormalise the outputs; the
        # normalisers inside are then identities and the statistics stay in the processor files.
        self.normalize_inside = bool(normalize_inside)
        self.tokenizer = tokenizer
        self.action_tokenizer = action_tokenizer
        self.state_normalizer = state_normalizer
        self.action_token_start = int(action_token_start)
        self.last_decode_stats = None
        self._text_cache: dict[str, list[int]] = {}
        self._queue: collections.deque[torch.Tensor] = collections.deque()

    # ----------------------------------------------------------------------------------------- build

    @classmethod
    def build(
        cls,
        config: VLAConfig,
        tokenizer: PreTrainedTokenizerBase,
        action_tokenizer: ActionTokenizer,
        state_normalizer: StateNormalizer,
        normalize_inside: bool = True,
    ) -> VLAPolicy:
        """A fresh policy: LM from scratch (or from `config.lm_path`), vision encoder, projections."""
        if config.lm_path:
            lm, start = _pretrained_lm(config, config.n_bins)
        else:
            start = len(tokenizer)
            lm = _scratch_lm(config, start + config.n_bins, tokenizer.pad_token_id)
        vision = build_vision_encoder(config.vision)
        return cls(config, lm, vision, tokenizer, action_tokenizer, state_normalizer, start, normalize_inside)

    # -------------------------------------------------------------------------------- building blocks

    @property
    def n_bins(self) -> int:
        return self.config.n_bins

    @property
    def chunk_tokens(self) -> int:
        return self.config.chunk_tokens

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def _text_ids(self, text: str) -> list[int]:
        ids = self._text_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.config.max_text_tokens]
            if self.tokenizer.bos_token_id is not None:
                ids = [self.tokenizer.bos_token_id] + ids
            if len(self._text_cache) < TEXT_CACHE_SIZE:  # noised training instructions are all new
                self._text_cache[text] = ids
        return ids

    def _text_embeddings(self, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embeds [B, L, H], mask [B, L] bool), each row right-aligned (padding on the left)."""
        rows = [self._text_ids(t) for t in tasks]
        width = max(1, max(len(r) for r in rows))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(r)
                mask[i, width - len(r) :] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.lm.get_input_embeddings()(ids), mask

    def check_observation(self, obs: dict[str, Any]) -> None:
        missing = [k for k in (*self.config.image_keys, STATE_KEY, TASK_KEY) if k not in obs]
        if missing:
            raise KeyError(
                f"observation is missing {missing}; it has {sorted(obs)} (this policy's cameras are "
                f"{list(self.config.image_keys)})"
            )
        state_dim = obs[STATE_KEY].shape[-1]
        if state_dim != self.config.state_dim:
            raise ActionDimMismatchError(
                f"observation.state has {state_dim} dims but this policy was trained with {self.config.state_dim}"
            )

    def check_action_dim(self, env_action_dim: int) -> None:
        """Refuse to drive an environment whose action dimension differs from the checkpoint's."""
        if int(env_action_dim) != self.config.action_dim:
            raise ActionDimMismatchError(
                f"policy outputs {self.config.action_dim}-dim actions but the environment expects "
                f"{int(env_action_dim)}; use a checkpoint trained on this environment's actions"
            )

    def prefix_embeddings(self, obs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Observation -> (embeds [B, P, H], mask [B, P] bool, True = real), padding on the LEFT."""
        self.check_observation(obs)
        state = self.state_normalizer(obs[STATE_KEY].to(self.device, torch.float32))  # [B, S]
        cams, raw = [], []
        images = [obs[key].to(self.device, torch.float32) for key in self.config.image_keys]  # [B, 3, H, W]
        # One encoder pass over every camera when their sizes agree (its norms are per sample: exact).
        if len({tuple(x.shape) for x in images}) == 1:
            per_camera = self.vision(torch.cat(images)).chunk(len(images))  # C x [B, T, V]
        else:
            per_camera = [self.vision(x) for x in images]
        for c, feats in enumerate(per_camera):
            raw.append(feats)
            tokens = self.projector(feats)  # [B, T, H]
            cams.append(tokens + self.camera_embed[c] if len(self.config.image_keys) > 1 else tokens)
        img = torch.cat(cams, dim=1)  # [B, C*T, H]: every camera's tokens, in image_keys order
        self._vision_tokens = torch.cat(raw, dim=1)  # [B, C*T, V], for the auxiliary loss
        tasks = obs[TASK_KEY]
        tasks = [tasks] * img.shape[0] if isinstance(tasks, str) else list(tasks)
        txt, txt_mask = self._text_embeddings(tasks)  # [B, L, H], [B, L]
        prop = self.proprio(state).unsqueeze(1)  # [B, 1, H]
        dtype = txt.dtype
        embeds = torch.cat([img.to(dtype), txt, prop.to(dtype)], dim=1)  # [B, P, H]
        ones = torch.ones(img.shape[0], 1, dtype=torch.bool, device=self.device)
        mask = torch.cat([ones.expand(-1, img.shape[1]), txt_mask, ones], dim=1)  # [B, P]
        # The text padding sits between image and text: move every row's padding to the far left.
        order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices  # [B, P]
        embeds = embeds.gather(1, order.unsqueeze(-1).expand_as(embeds))
        return embeds, mask.gather(1, order)

    def tokens_to_actions(self, bins: torch.Tensor) -> torch.Tensor:
        """[B, n] action bins -> [B, K, D] actions in environment units."""
        b = bins.shape[0]
        return self.action_tokenizer.decode(
            bins.reshape(b, self.config.chunk_size, self.config.action_dim).cpu()
        )

    def actions_to_bins(self, actions: torch.Tensor) -> torch.Tensor:
        """[B, K, D] actions -> [B, n] bins (step-major: step 0's D dims, then step 1's, ...)."""
        return self.action_tokenizer.encode(actions.float().cpu()).reshape(actions.shape[0], -1)

    # ------------------------------------------------------------------------------------ training

    def action_logits(
        self, prefix: torch.Tensor, prefix_mask: torch.Tensor, bins: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced logits over the action rows: [B, n, n_bins]; row j predicts bin j."""
        n = bins.shape[1]
        tokens = self.action_token_start + bins[:, :-1]  # [B, n-1]
        embeds = torch.cat([prefix, self.lm.get_input_embeddings()(tokens)], dim=1)  # [B, P+n-1, H]
        mask = torch.cat([prefix_mask, torch.ones_like(tokens, dtype=torch.bool)], dim=1)  # [B, P+n-1]
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        out = self.lm(
            inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions, logits_to_keep=n
        )
        start = self.action_token_start
        return out.logits[..., start : start + self.n_bins]  # [B, n, n_bins]

    def forward(
        self, batch: dict[str, Any], first_step_weight: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token cross-entropy on the action tokens; padded chunk steps (episode end) are ignored,
        and so are the steps of a forced prefix when the batch carries one (`_forced_prefix`).

        `first_step_weight` scales the loss of the chunk's first step (its D tokens). Under teacher
        forcing the later steps can largely copy the step before them; the first step is the one
        decided from the observation alone, and greedy decoding inherits its mistakes.
        """
        actions = batch[ACTION_KEY]  # [B, K, D]
        if actions.shape[-1] != self.config.action_dim:
            raise ActionDimMismatchError(
                f"batch actions have {actions.shape[-1]} dims but the policy has {self.config.action_dim}"
            )
        bins = self.actions_to_bins(actions).to(self.device)  # [B, n]
        inputs, free = self._forced_prefix(batch, bins)  # [B, n], [B, n] | None
        prefix, prefix_mask = self.prefix_embeddings(batch)
        logits = self.action_logits(prefix, prefix_mask, inputs)  # [B, n, n_bins]
        ce = F.cross_entropy(logits.float().transpose(1, 2), bins, reduction="none")  # [B, n]
        valid = self._valid_tokens(batch, bins)  # [B, n]
        if free is not None:
            valid = valid * free
        if first_step_weight != 1.0:
            valid = valid.clone()
            valid[:, : self.config.action_dim] *= first_step_weight
        per_sample = (ce * valid).sum(1) / valid.sum(1).clamp_min(1)  # [B]
        loss = per_sample.mean()
        aux = self._aux_final_state_loss(batch)
        if aux is not None:
            loss = loss + self.config.aux_final_state_weight * aux
        with torch.no_grad():
            pred = logits.argmax(-1)
            hit = (pred == bins).float()
            acc = (hit * (valid > 0)).sum() / (valid > 0).sum().clamp_min(1)
            err = (self.tokens_to_actions(pred) - self.tokens_to_actions(bins)).abs()  # [B, K, D]
        info = {
            "loss": float(loss.detach()),
            "token_acc": float(acc),
            "first_step_acc": float(hit[:, : self.config.action_dim].mean()),
            "action_l1": float(err.mean()),
            "first_step_l1": float(err[:, 0].mean()),
        }
        if aux is not None:
            info["aux_final_state_mse"] = float(aux.detach())
        return loss, info

    def _aux_final_state_loss(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """MSE of the predicted normalised final state of the sample's episode; None when off."""
        if self.config.aux_final_state_weight <= 0:
            return None
        if FINAL_STATE_KEY not in batch:
            raise KeyError(
                f"aux_final_state_weight > 0 needs {FINAL_STATE_KEY!r} in the batch "
                "(ChunkDataset provides it); the batch has " + repr(sorted(batch))
            )
        target = self.state_normalizer(batch[FINAL_STATE_KEY].to(self.device, torch.float32))  # [B, S]
        pred = self.aux_head(self._vision_tokens.flatten(1).float())  # [B, S]
        return F.mse_loss(pred, target)

    def _forced_prefix(
        self, batch: dict[str, Any], bins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The input bins [B, n] and the free-token mask [B, n] (None without a forced prefix).

        A batch with `action_prefix_steps` [B] (d per sample) and `action_prefix_offset` [B, K, D]
        (see `policy.data.PrefixConfig`) gives the first d steps as input: the ground-truth bins moved
        by the offsets, clipped to the bin range, as the decoder's `forced_bins` are at run time. Those
        positions carry no loss; the rest are predicted, under teacher forcing, after the forced prefix.
        """
        steps = batch.get(PREFIX_STEPS_KEY)
        if steps is None:
            return bins, None
        d = self.config.action_dim
        forced = torch.arange(bins.shape[1], device=bins.device)[None, :] < steps.to(bins.device)[:, None] * d
        offset = batch[PREFIX_OFFSET_KEY].to(bins.device).reshape(bins.shape)  # [B, n]
        moved = (bins + offset).clamp(0, self.n_bins - 1)
        inputs = torch.where(forced, moved, bins)  # [B, n]
        return inputs, (~forced).float()

    def _valid_tokens(self, batch: dict[str, Any], bins: torch.Tensor) -> torch.Tensor:
        pad = batch.get(f"{ACTION_KEY}_is_pad")  # [B, K] True where the chunk ran past the episode end
        if pad is None:
            return torch.ones_like(bins, dtype=torch.float32)
        valid = (~pad.to(self.device)).float()
        return valid.repeat_interleave(self.config.action_dim, dim=1)  # [B, n]

    # ----------------------------------------------------------------------------------- inference

    def reset(self) -> None:
        self._queue.clear()

    @torch.no_grad()
    def predict_action_chunk(
        self,
        obs: dict[str, Any],
        decoding=None,
        init_guess: torch.Tensor | None = None,
        forced_bins: torch.Tensor | None = None,
        deadline: float | None = None,
        clock=None,
        exact_steps: int | None = None,
    ):
        """[B, K, D] actions; `decoding` is a `ceed_vla.decoding.DecodeConfig` (AR when None).

        init_guess: [B, K*D] bins, the Jacobi warm start. forced_bins: [B, d*D] bins of the chunk's
        first d steps (the actions that execute while it is computed): they are the chunk's first d
        steps exactly and the rest is decoded conditioned on them. deadline: a time on `clock`
        (`time.monotonic` when None) by which Jacobi decoding returns its best chunk. exact_steps: the
        chunk's first steps an early exit must leave exact (the ones that will execute; capped at the
        chunk): they are the greedy AR actions, the rest the early exit's.
        """
        from ceed_vla.decoding import DecodeConfig, decode

        config = decoding if decoding is not None else DecodeConfig(mode="ar", n_bins=self.n_bins)
        if config.n_bins != self.n_bins:
            raise ConfigError(
                f"DecodeConfig.n_bins is {config.n_bins} but this policy has {self.n_bins} action bins"
            )
        if forced_bins is not None and forced_bins.shape[-1] % self.config.action_dim:
            raise ConfigError(
                f"forced_bins has {forced_bins.shape[-1]} bins, not whole steps of "
                f"action_dim={self.config.action_dim}"
            )
        if exact_steps is not None and not (isinstance(exact_steps, int) and exact_steps >= 0):
            raise ConfigError(f"exact_steps must be an int >= 0 or None, got {exact_steps!r}")
        exact_tokens = min(exact_steps or 0, self.config.chunk_size) * self.config.action_dim
        embeds, mask = self.prefix_embeddings(obs)
        timing = {} if clock is None else {"clock": clock}
        out = decode(
            self.lm,
            embeds,
            mask,
            self.chunk_tokens,
            self.action_token_start,
            config=config,
            init_guess=None if init_guess is None else init_guess.to(self.device),
            forced_bins=None if forced_bins is None else forced_bins.to(self.device),
            deadline=deadline,
            exact_tokens=exact_tokens,
            **timing,
        )
        self.last_decode_stats = out.stats
        self.last_decode_output = out
        return self.tokens_to_actions(out.bins)

    @torch.no_grad()
    def select_action(self, obs: dict[str, Any], decoding=None) -> torch.Tensor:
        """[B, D]: the next action from the chunk queue, refilled from `predict_action_chunk` when empty."""
        if not self._queue:
            chunk = self.predict_action_chunk(obs, decoding=decoding)  # [B, K, D]
            steps = self.config.n_action_steps or self.config.chunk_size
            self._queue.extend(chunk[:, :steps].transpose(0, 1))
        return self._queue.popleft()

    # ---------------------------------------------------------------------------------- checkpoints

    def save_pretrained(self, directory: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """Write the checkpoint directory atomically; `extra_files` maps file names to text."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            self.save_to(tmp, extra_files)
        return directory

    def save_to(
        self,
        directory: Path,
        extra_files: dict[str, str] | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write the checkpoint files into an existing directory (no atomicity of its own), in LeRobot's
        layout (see `lerobot_layout`): config.json, weights, processors with the statistics, tokenizer.
        `state_dict`: full weights to write instead of the module's own (a sharded model's, gathered)."""
        if not self.normalize_inside:
            raise CheckpointError(
                "this policy runs on LeRobot-normalised data and holds no statistics; save it with "
                "CeedPolicy.save_pretrained plus the processors (LeRobot's training script does both)"
            )
        atomic_write_text(directory / CONFIG_FILE, _dumps(layout.config_json(self.config)))
        layout.save_processors(
            directory, self.config, layout.stats_dict(self.action_tokenizer, self.state_normalizer)
        )
        self.save_model_files(directory, state_dict)
        for name, text in (extra_files or {}).items():
            atomic_write_text(directory / name, text)

    def save_model_files(self, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The files besides config.json and the processors: network shell, tokenizer, weights."""
        meta = {
            "format_version": FORMAT_VERSION,
            "backbone": self.lm.config.to_dict(),
            "vision_tower": self.vision.model.config.to_dict() if hasattr(self.vision, "model") else None,
            "action_token_start": self.action_token_start,
        }
        atomic_write_text(Path(directory) / layout.MODEL_FILE, _dumps(meta))
        self.tokenizer.save_pretrained(str(directory))
        if state_dict is None:
            save_model(self, str(Path(directory) / WEIGHTS_FILE))
        else:
            save_file(
                {k: v.contiguous() for k, v in state_dict.items()},
                str(Path(directory) / WEIGHTS_FILE),
                metadata={"format": "pt"},
            )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device | None = None,
        expected_action_dim: int | None = None,
        normalize_inside: bool = True,
    ) -> VLAPolicy:
        """Load a checkpoint directory; names any missing or corrupt file, refuses a wrong action dim.

        `normalize_inside=False` loads the network for LeRobot's processors (identity normalisers).
        The first ceed layout (config.json without `type`) still loads here, in raw units.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint directory {directory} does not exist")
        meta = read_json(require_file(directory, CONFIG_FILE))
        if layout.is_legacy(meta):
            if not normalize_inside:
                raise CheckpointError(
                    f"{directory} is in the first ceed layout (no 'type' in config.json), which LeRobot "
                    f"cannot read; convert it with `ceed checkpoint convert {directory} NEW_DIR`"
                )
            return cls._from_legacy(directory, meta, device, expected_action_dim)
        if meta.get("type") != layout.POLICY_TYPE:
            raise CheckpointError(
                f"{directory / CONFIG_FILE} has type {meta.get('type')!r}; a ceed checkpoint has type "
                f"{layout.POLICY_TYPE!r}"
            )
        shell = read_json(require_file(directory, layout.MODEL_FILE))
        weights = require_file(directory, WEIGHTS_FILE)
        require_file(directory, TOKENIZER_FILE)
        try:
            config = layout.vla_config_from_json(meta)
            backbone = dict(shell["backbone"])
            lm_cfg = AutoConfig.for_model(backbone.pop("model_type"), **backbone)
            start = int(shell["action_token_start"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{directory / CONFIG_FILE} or {layout.MODEL_FILE} is corrupt: {e!r}"
            ) from e
        if normalize_inside:
            action_tok, state_norm = layout.read_stats(directory)
        else:
            action_tok, state_norm = layout.identity_normalizers(config)
        action_tok.n_bins = config.n_bins
        parts = _Parts(config, lm_cfg, shell.get("vision_tower"), action_tok, state_norm, start)
        return cls._assemble(directory, weights, parts, device, expected_action_dim, normalize_inside)

    @classmethod
    def _from_legacy(cls, directory: Path, meta: dict, device, expected_action_dim) -> VLAPolicy:
        norm = read_json(require_file(directory, NORMALIZER_FILE))
        weights = require_file(directory, WEIGHTS_FILE)
        require_file(directory, TOKENIZER_FILE)
        try:
            config = VLAConfig.from_dict(meta["policy"])
            action_tok = ActionTokenizer.from_dict(norm["action"])
            state_norm = StateNormalizer.from_dict(norm["state"])
            backbone = dict(meta["backbone"])
            lm_cfg = AutoConfig.for_model(backbone.pop("model_type"), **backbone)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{directory / CONFIG_FILE} or {NORMALIZER_FILE} is corrupt: {e!r}") from e
        parts = _Parts(
            config, lm_cfg, meta.get("vision_tower"), action_tok, state_norm, meta["action_token_start"]
        )
        return cls._assemble(directory, weights, parts, device, expected_action_dim, normalize_inside=True)

    @classmethod
    def _assemble(
        cls, directory, weights, parts: _Parts, device, expected_action_dim, normalize_inside
    ) -> VLAPolicy:
        config, lm_cfg, tower_cfg, action_tok, state_norm, start = parts
        if expected_action_dim is not None and expected_action_dim != config.action_dim:
            raise ActionDimMismatchError(
                f"checkpoint {directory} outputs {config.action_dim}-dim actions but the environment "
                f"expects {expected_action_dim}"
            )
        try:
            tokenizer = load_tokenizer(directory)
        except Exception as e:  # tokenizers raises plain Exception subclasses for broken files
            raise CheckpointError(f"{directory / TOKENIZER_FILE} cannot be loaded: {e}") from e
        lm = AutoModelForCausalLM.from_config(lm_cfg)
        vision = build_vision_encoder(config.vision, weights=False, tower_config=tower_cfg)
        policy = cls(config, lm, vision, tokenizer, action_tok, state_norm, start, normalize_inside)
        try:
            missing, unexpected = load_model(policy, str(weights), strict=False)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{weights} is corrupt or does not match config.json: {e}") from e
        if missing or unexpected:
            raise CheckpointError(
                f"{weights} does not match config.json: missing {missing}, unexpected {unexpected}"
            )
        policy.eval()
        return policy.to(device) if device is not None else policy

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)
