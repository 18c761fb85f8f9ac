"""CUDA graphs over the static backend: prefill, one-token step and n-token block, captured once per
shape and replayed across `decode()` calls.

On a GPU the tiny policy's forwards take microseconds of arithmetic and milliseconds of kernel
launches and Python; a captured graph replays every kernel of a forward with one launch. What a
graph needs is fixed addresses: the KV buffer, positions, key validity and each forward's input and
output live in a `GraphState` made once per (model, B, P, n, dtype, device) and kept in a cache, and
a call copies its prompt into those buffers before replaying. Graphs are captured on first use of
their shape: the prefill, the Jacobi block at offset 0, and the AR step at each offset (each writes
its own KV slot, so each is its own graph).

The arithmetic is the static backend's own (`StaticLlamaBackend._forward`), so graphed and eager
decoding give identical tokens in fp32 (tested on CUDA: `pytest -m gpu`). CUDA only: on CPU
`make_backend(..., "graphs")` refuses with the reason.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .backends import BackendUnsupportedError, StaticLlamaBackend, prefix_positions

_STATES: dict[tuple, GraphState] = {}
"""(id(lm), B, P, n, dtype, device) -> its buffers and graphs; `clear_graph_cache()` empties it.
Graphs hold the addresses of the weights: after moving a model (`.to(...)`) clear the cache."""


def clear_graph_cache() -> None:
    _STATES.clear()


class GraphState:
    """The static buffers of one decode shape and the graphs captured over them."""

    def __init__(self, backend: StaticLlamaBackend, b: int, p: int, n: int, dtype: torch.dtype, device):
        self.b, self.p, self.n = b, p, n
        h = backend.action_embed.shape[1]
        slots = p + n
        self.kv = [
            (
                torch.zeros(b, backend.n_kv, slots, backend.head_dim, dtype=dtype, device=device),
                torch.zeros(b, backend.n_kv, slots, backend.head_dim, dtype=dtype, device=device),
            )
            for _ in backend.layers
        ]
        self.positions = torch.zeros(b, slots, dtype=torch.long, device=device)
        self.key_valid = torch.ones(b, slots, dtype=torch.bool, device=device)
        self.slot_ids = torch.arange(slots, device=device)
        self.prefill_in = torch.zeros(b, p, h, dtype=dtype, device=device)
        self.block_in = torch.zeros(b, max(n - 1, 1), dtype=torch.long, device=device)
        self.step_in = torch.zeros(b, 1, dtype=torch.long, device=device)
        self.lm = weakref.ref(backend.lm)  # graphs hold the weights' addresses: only for this model
        self.graphs: dict[tuple[str, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None  # one memory pool shared by this shape's graphs
        self.captures = 0


class GraphedLlamaBackend(StaticLlamaBackend):
    """`StaticLlamaBackend` whose forwards replay CUDA graphs (see the module docstring)."""

    name = "graphs"

    def __init__(self, lm: nn.Module, action_token_start: int, n_bins: int):
        super().__init__(lm, action_token_start, n_bins)
        device = self.action_embed.device
        if device.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnsupportedError(
                f"the graphs backend captures CUDA graphs; the model is on {device}: use backend='static'"
            )
        self.lm = lm
        self._lm_id = id(lm)
        self.state: GraphState | None = None

    # ---- the DecodeBackend interface --------------------------------------------------------------
    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
        self._allocate(embeds, mask, n_tokens)
        self.state.prefill_in.copy_(embeds)
        return self._replay(("prefill", 0), lambda st: self._head(self._forward(st.prefill_in, 0)[:, -1]))

    def forward_actions(self, bins: torch.Tensor, offset: int) -> torch.Tensor:
        st = self.state
        t = bins.shape[1]
        if t == 1:
            st.step_in.copy_(bins)
            key, source = ("step", offset), st.step_in
        elif t == st.n - 1 and offset == 0:
            st.block_in.copy_(bins)
            key, source = ("block", 0), st.block_in
        else:  # a shape the decoder does not use: eager, correct, uncaptured
            return super().forward_actions(bins, offset)
        start = self.prefix_len + offset
        return self._replay(
            key, lambda s: self._head(self._forward(F.embedding(source, self.action_embed), start))
        )

    # ---- internals ----------------------------------------------------------------------------------
    def _allocate(self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> None:
        """Instead of fresh buffers: point this backend at the cached state of this shape and copy the
        prompt's layout in. The inherited `prefill_with_block` (one more shape, run once per chunk) then
        runs eagerly over the same buffers."""
        b, p, _ = embeds.shape
        key = (self._lm_id, b, p, n_tokens, embeds.dtype, embeds.device)
        if key not in _STATES or _STATES[key].lm() is not self.lm:  # a new model at a reused id
            _STATES[key] = GraphState(self, b, p, n_tokens, embeds.dtype, embeds.device)
        st = self.state = _STATES[key]
        self.prefix_len = p
        lengths = mask.long().sum(dim=1)
        steps = torch.arange(n_tokens, device=embeds.device)
        st.positions.copy_(torch.cat([prefix_positions(mask), lengths[:, None] + steps[None, :]], dim=1))
        st.key_valid.copy_(torch.cat([mask, mask.new_ones(b, n_tokens)], dim=1))
        # the eager helpers read these attributes: aim them at the static buffers
        self.kv, self.positions, self.key_valid, self.slot_ids = (
            st.kv,
            st.positions,
            st.key_valid,
            st.slot_ids,
        )

    def _replay(self, key: tuple[str, int], fn) -> torch.Tensor:
        """Replay the graph of `key` (capturing it on first use); returns its static output, valid
        until the next replay of the same graph."""
        st = self.state
        if key not in st.graphs:
            # warm up on a side stream (lazy initialisation must not be captured), then capture
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn(st)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=st.pool):
                out = fn(st)
            st.pool = graph.pool()
            st.graphs[key] = (graph, out)
            st.captures += 1
        graph, out = st.graphs[key]
        graph.replay()
        return out
