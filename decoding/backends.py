"""Forward implementations the decoder runs on, behind one interface.

A backend is made for one `decode()` call. It runs the prefill over the prompt embeddings and then
forwards of action tokens at action offsets [offset, offset + T) against the cached prefix, returning
logits over the action rows only. Whatever it caches holds exactly the prefix plus the action
positions before ``offset``: a Jacobi iteration re-forwards the block from offset 0, so a cache that
kept the previous iteration's block would silently attend to stale guesses.

- `HFBackend` works for any Hugging Face causal LM: `DynamicCache`, cropped back before each forward.
- `StaticLlamaBackend` is a hand-written forward for Llama-style models over a static KV buffer of
  P + n slots indexed by position, with the output layer cut to the action rows; it reuses the model's
  own modules and weights. Shapes are fixed per call (prefill [B, P], block [B, n-1], step [B, 1]).

`make_backend` is the one place that chooses.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class BackendUnsupportedError(ValueError):
    """The requested backend cannot run this model."""


class DecodeBackend(Protocol):
    name: str

    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """embeds [B, P, H], mask [B, P] bool -> action-row logits of the last prefix position [B, V]."""

    def forward_actions(self, bins: torch.Tensor, offset: int) -> torch.Tensor:
        """bins [B, T] action bins at action offsets [offset, offset+T) -> action-row logits [B, T, V]."""

    def prefill_with_block(
        self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int, bins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over the prompt and bins [B, T] at action offsets [0, T) -> (logits of the last
        prefix position [B, V], action-row logits of the block [B, T, V]); the cache then holds the
        prefix, and the block as any `forward_actions(bins, 0)` would leave it."""


def prefix_positions(mask: torch.Tensor) -> torch.Tensor:
    """mask [B, P] bool, left-padded -> position ids [B, P] long (cumsum - 1; padding clamped to 0)."""
    return (mask.long().cumsum(dim=1) - 1).clamp_min(0)


def _action_slice(action_token_start: int, n_bins: int, vocab: int) -> slice:
    if action_token_start < 0 or action_token_start + n_bins > vocab:
        raise BackendUnsupportedError(
            f"action tokens [{action_token_start}, {action_token_start + n_bins}) do not fit in the model's "
            f"vocabulary of {vocab}; check action_token_start and n_bins"
        )
    return slice(action_token_start, action_token_start + n_bins)


class HFBackend:
    """Any causal LM through its own forward, with a `DynamicCache` cropped to prefix + offset."""

    name = "hf"

    def __init__(self, lm: nn.Module, action_token_start: int, n_bins: int):
        from transformers import DynamicCache

        self.lm = lm
        self.embed = lm.get_input_embeddings()
        self.rows = _action_slice(action_token_start, n_bins, self.embed.num_embeddings)
        self.action_token_start = action_token_start
        params = inspect.signature(lm.forward).parameters
        # transformers 5.x is renaming `past_key_values` to `cache`; pass whichever this version takes.
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keep_kw = "logits_to_keep" in params
        self.cache = DynamicCache(config=lm.config)
        self.mask: torch.Tensor | None = None  # [B, P] long
        self.lengths: torch.Tensor | None = None  # [B] real prefix tokens

    def _run(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, last_only: bool
    ):
        kwargs = {self.cache_kw: self.cache}
        if last_only and self.keep_kw:
            kwargs["logits_to_keep"] = 1
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            **kwargs,
        )
        return out.logits[..., self.rows]

    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
        self.mask = mask.long()
        self.lengths = self.mask.sum(dim=1)
        logits = self._run(embeds, self.mask, prefix_positions(mask), last_only=True)  # [B, 1 or P, V]
        return logits[:, -1]

    def prefill_with_block(
        self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int, bins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.mask = mask.long()
        self.lengths = self.mask.sum(dim=1)
        b, t = bins.shape
        block = self.embed(bins + self.action_token_start).to(embeds.dtype)  # [B, T, H]
        steps = torch.arange(t, device=bins.device)
        positions = torch.cat([prefix_positions(mask), self.lengths[:, None] + steps[None, :]], dim=1)
        attention_mask = torch.cat([self.mask, self.mask.new_ones(b, t)], dim=1)  # [B, P + T]
        logits = self._run(torch.cat([embeds, block], dim=1), attention_mask, positions, last_only=False)
        p = embeds.shape[1]
        return logits[:, p - 1], logits[:, p:]  # [B, V], [B, T, V]

    def forward_actions(self, bins: torch.Tensor, offset: int) -> torch.Tensor:
        b, t = bins.shape
        keep = self.mask.shape[1] + offset
        extra = self.cache.get_seq_length() - keep
        if extra > 0:
            self.cache.crop(-extra)  # a negative count removes that many positions (any 5.x version)
        embeds = self.embed(bins + self.action_token_start)  # [B, T, H]
        ones = self.mask.new_ones(b, offset + t)
        attention_mask = torch.cat([self.mask, ones], dim=1)  # [B, P + offset + T]
        steps = torch.arange(offset, offset + t, device=bins.device)
        positions = self.lengths[:, None] + steps[None, :]  # [B, T]
        return self._run(embeds, attention_mask, positions, last_only=False)


STATIC_MODEL_TYPES = ("llama",)


def static_support_problem(lm: nn.Module) -> str | None:
    """Why `StaticLlamaBackend` cannot run ``lm``, or None when it can."""
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in STATIC_MODEL_TYPES:
        return f"model_type={model_type!r} is not one of {STATIC_MODEL_TYPES}"
    base = getattr(lm, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if base is None or not all(hasattr(base, a) for a in needed) or not hasattr(lm, "lm_head"):
        return "the model does not have the Llama module layout (model.embed_tokens/layers/norm/rotary_emb, lm_head)"
    if getattr(lm, "training", False) and getattr(config, "attention_dropout", 0.0):
        return "the model is in training mode with attention dropout; call lm.eval()"
    return None


class StaticLlamaBackend:
    """A lean forward for Llama-style models over a static KV buffer indexed by position."""

    name = "static"

    def __init__(self, lm: nn.Module, action_token_start: int, n_bins: int):
        problem = static_support_problem(lm)
        if problem is not None:
            raise BackendUnsupportedError(
                f"the static backend cannot run this model: {problem}; use backend='hf'"
            )
        base = lm.model
        self.layers = list(base.layers)
        self.norm = base.norm
        self.rotary = base.rotary_emb
        rows = _action_slice(action_token_start, n_bins, base.embed_tokens.num_embeddings)
        self.action_embed = base.embed_tokens.weight[rows]  # [V, H]
        self.head_weight = lm.lm_head.weight[rows]  # [V, H]
        self.head_bias = None if lm.lm_head.bias is None else lm.lm_head.bias[rows]  # [V]
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_kv = attn.k_proj.out_features // self.head_dim
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.head_weight, self.head_bias)

    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
        self._allocate(embeds, mask, n_tokens)
        hidden = self._forward(embeds, start=0)  # [B, P, H]
        return self._head(hidden[:, -1])

    def _allocate(self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> None:
        """The KV buffer of P + n slots, positions, key validity for one decode."""
        b, p, _ = embeds.shape
        self.prefix_len = p
        slots = p + n_tokens
        self.kv = [
            (
                embeds.new_zeros(b, self.n_kv, slots, self.head_dim),
                embeds.new_zeros(b, self.n_kv, slots, self.head_dim),
            )
            for _ in self.layers
        ]
        lengths = mask.long().sum(dim=1)  # [B]
        steps = torch.arange(n_tokens, device=embeds.device)
        self.positions = torch.cat(
            [prefix_positions(mask), lengths[:, None] + steps[None, :]], dim=1
        )  # [B, S]
        self.key_valid = torch.cat([mask, mask.new_ones(b, n_tokens)], dim=1)  # [B, S]
        self.slot_ids = torch.arange(slots, device=embeds.device)  # [S]

    def prefill_with_block(
        self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int, bins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._allocate(embeds, mask, n_tokens)
        p = embeds.shape[1]
        block = F.embedding(bins, self.action_embed).to(embeds.dtype)  # [B, T, H]
        hidden = self._forward(torch.cat([embeds, block], dim=1), start=0)  # [B, P + T, H]
        return self._head(hidden[:, p - 1]), self._head(hidden[:, p:])

    def forward_actions(self, bins: torch.Tensor, offset: int) -> torch.Tensor:
        embeds = F.embedding(bins, self.action_embed)  # [B, T, H]
        return self._head(self._forward(embeds, start=self.prefix_len + offset))  # [B, T, V]

    def _attention_mask(self, query_slots: torch.Tensor) -> torch.Tensor:
        """query_slots [T] -> bool [B, 1, T, S]: causal over slots, real keys only, and each query sees
        itself (keeps padded prefix rows finite; their outputs are never used)."""
        causal = self.slot_ids[None, :] <= query_slots[:, None]  # [T, S]
        own = self.slot_ids[None, :] == query_slots[:, None]  # [T, S]
        allowed = (causal[None] & self.key_valid[:, None, :]) | own[None]  # [B, T, S]
        return allowed[:, None]

    def _forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        b, t, _ = x.shape
        query_slots = self.slot_ids[start : start + t]  # [T]
        cos, sin = self.rotary(x, self.positions[:, start : start + t])  # [B, T, d] each
        mask = self._attention_mask(query_slots)
        for layer, (k_buf, v_buf) in zip(self.layers, self.kv, strict=True):
            x = x + self._attention(
                layer.self_attn, layer.input_layernorm(x), cos, sin, k_buf, v_buf, start, mask
            )
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x)

    def _attention(self, attn, h, cos, sin, k_buf, v_buf, start, mask) -> torch.Tensor:
        b, t, _ = h.shape
        q = attn.q_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)  # [B, Hq, T, d]
        k = attn.k_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, T, d]
        v = attn.v_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, T, d]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        k_buf[:, :, start : start + t] = k  # the slot of a position is rewritten, never appended
        v_buf[:, :, start : start + t] = v
        out = F.scaled_dot_product_attention(
            q, k_buf, v_buf, attn_mask=mask, scale=attn.scaling, enable_gqa=k_buf.shape[1] != q.shape[1]
        )  # [B, Hq, T, d]
        return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, d]; cos, sin [B, T, d]."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def make_backend(lm: nn.Module, backend: str, action_token_start: int, n_bins: int) -> DecodeBackend:
    """The one place that picks the forward: ``"auto"`` takes the static path when the model supports it
    (Llama-style), else the generic HF path; ``"hf"`` / ``"static"`` force one; ``"graphs"`` is the
    static path replayed as CUDA graphs (CUDA only, `graphs.py`)."""
    if backend == "hf" or (backend == "auto" and static_support_problem(lm) is not None):
        return HFBackend(lm, action_token_start, n_bins)
    if backend in ("auto", "static"):
        return StaticLlamaBackend(lm, action_token_start, n_bins)
    if backend == "graphs":
        from .graphs import GraphedLlamaBackend

        return GraphedLlamaBackend(lm, action_token_start, n_bins)
    raise BackendUnsupportedError(f"backend={backend!r} is not one of 'auto', 'hf', 'static', 'graphs'")
