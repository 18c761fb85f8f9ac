"""CUDA-graph decoding: graphed and eager give identical tokens in fp32, graphs are captured once per
shape and replayed across calls. The `gpu` tests skip without CUDA (run them with `make gpu-check`)."""

from __future__ import annotations

import pytest
import torch
from ceed_vla.decoding import DecodeConfig, decode
from ceed_vla.decoding.backends import BackendUnsupportedError, make_backend

from tests.fixtures.tiny_lm import make_prompt, make_tiny_llama

ACTION_START = 40


def test_graphs_backend_refuses_a_model_off_cuda():
    lm = make_tiny_llama(0)
    with pytest.raises(BackendUnsupportedError, match="use backend='static'"):
        make_backend(lm, "graphs", ACTION_START, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["ar", "jacobi", "early_exit", "fused"])
def test_graphed_decoding_equals_eager_token_for_token_in_fp32(variant):
    from ceed_vla.decoding.graphs import clear_graph_cache

    clear_graph_cache()
    kwargs = {"early_exit": {"sigma": 2}, "fused": {"fused_prefill": True}}.get(variant, {})
    mode = "jacobi" if variant == "fused" else variant  # the fused pass runs eagerly over the graphs' buffers
    for seed, (batch, prefix, n, pads) in enumerate(
        [(1, 6, 12, []), (3, 9, 20, [0, 4, 8]), (2, 5, 32, [1, 0])]
    ):
        lm = make_tiny_llama(300 + seed).cuda().eval()
        embeds, mask = make_prompt(seed, batch, prefix, lm.config.hidden_size, pads)
        embeds, mask = embeds.cuda(), mask.cuda()
        eager = decode(lm, embeds, mask, n, ACTION_START, DecodeConfig(mode=mode, backend="static", **kwargs))
        graphed = decode(
            lm, embeds, mask, n, ACTION_START, DecodeConfig(mode=mode, backend="graphs", **kwargs)
        )
        assert torch.equal(graphed.bins, eager.bins), (variant, seed)
        assert graphed.stats.backend == "graphs"


@pytest.mark.gpu
def test_graphs_are_captured_once_per_shape_and_replayed_for_new_prompts():
    from ceed_vla.decoding import graphs

    graphs.clear_graph_cache()
    lm = make_tiny_llama(7).cuda().eval()
    n = 16
    config = DecodeConfig(mode="jacobi", backend="graphs")
    first_prompt = [t.cuda() for t in make_prompt(1, 2, 8, lm.config.hidden_size, [0, 3])]
    decode(lm, *first_prompt, n, ACTION_START, config)
    (state,) = graphs._STATES.values()
    captured = state.captures
    assert captured >= 2  # the prefill and the Jacobi block at least
    for seed in (2, 3, 4):  # other prompts of the same shape, other left padding
        embeds, mask = (t.cuda() for t in make_prompt(seed, 2, 8, lm.config.hidden_size, [seed % 8, 0]))
        out = decode(lm, embeds, mask, n, ACTION_START, config)
        ref = decode(lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="jacobi", backend="static"))
        assert torch.equal(out.bins, ref.bins), seed
    assert state.captures == captured  # replayed, not captured again
    assert len(graphs._STATES) == 1
