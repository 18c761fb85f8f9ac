"""Early exit with an exact prefix: the chunk's first `exact_tokens` tokens are the AR ones.

The steps that execute before the next chunk replaces them are what the arm does; the early exit may
stop at sigma or tau only once those tokens are final, so they equal greedy AR token for token, over
random models, both backends, with and without the fused prefill and a forced prefix. The rest of the
chunk stays the early exit's.
"""

from __future__ import annotations

import pytest
import torch
from ceed_vla.decoding import DecodeConfig, DecodeInputError, decode

from tests.fixtures.tiny_lm import make_prompt, make_tiny_llama
from tests.test_decoding import ACTION_START, random_cases


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_the_exact_prefix_equals_ar_over_random_models():
    rng = torch.Generator().manual_seed(5)
    differs = 0  # cases where the plain early exit's prefix is not AR's: the rule has work to do
    for trial, lm, embeds, mask, n, n_bins, backend, pads in random_cases(4321, 10, 900):
        batch = embeds.shape[0]
        f = int(torch.randint(0, n, (1,), generator=rng)) if trial % 3 == 2 else 0
        forced = torch.randint(0, n_bins, (batch, f), generator=rng) if f else None
        k = int(torch.randint(f, n + 1, (1,), generator=rng))
        ar = decode(
            lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="ar", n_bins=n_bins), forced_bins=forced
        )
        for sigma, tau, fused in ((1, None, False), (2, None, False), (1, None, True), (None, 3, False)):
            config = DecodeConfig(
                mode="early_exit",
                n_bins=n_bins,
                backend=backend,
                sigma=sigma,
                tau=tau,
                fused_prefill=fused,
                init="random" if trial % 2 else "constant",
            )
            where = (trial, batch, n, f, k, pads, backend, sigma, tau, fused)
            plain = decode(lm, embeds, mask, n, ACTION_START, config, forced_bins=forced)
            out = decode(lm, embeds, mask, n, ACTION_START, config, forced_bins=forced, exact_tokens=k)
            assert torch.equal(out.bins[:, :k], ar.bins[:, :k]), where
            assert out.bins.shape == (batch, n)
            # it only ever iterates more than the plain early exit, never past the fixed point
            assert bool((out.stats.iterations >= plain.stats.iterations).all()), where
            assert int(out.stats.iterations.max()) <= max(n - f - 1, 0) + int(fused), where
            differs += int(not torch.equal(plain.bins[:, :k], ar.bins[:, :k]))
            if sigma == 2:  # no exact prefix asked: the plain early exit, token for token
                zero = decode(lm, embeds, mask, n, ACTION_START, config, forced_bins=forced, exact_tokens=0)
                assert torch.equal(zero.bins, plain.bins), where
    assert differs >= 5, differs


def test_the_whole_chunk_exact_is_ar_and_the_first_token_costs_nothing():
    lm = make_tiny_llama(3, hidden=32, layers=2, heads=4, kv_heads=2)
    embeds, mask = make_prompt(0, 2, 6, 32, [0, 2])
    n, n_bins = 16, 64
    ar = decode(lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="ar", n_bins=n_bins))
    config = DecodeConfig(mode="early_exit", n_bins=n_bins, sigma=1)
    assert torch.equal(decode(lm, embeds, mask, n, ACTION_START, config, exact_tokens=n).bins, ar.bins)
    plain = decode(lm, embeds, mask, n, ACTION_START, config)
    one = decode(lm, embeds, mask, n, ACTION_START, config, exact_tokens=1)  # the prefill's token
    assert torch.equal(one.bins, plain.bins) and one.stats.forward_passes == plain.stats.forward_passes == 2
    assert one.stats.stopped_by == "sigma"


def test_the_deadline_still_ends_an_exact_prefix_and_bad_values_are_refused():
    lm = make_tiny_llama(4, hidden=32, layers=1, heads=4, kv_heads=4)
    embeds, mask = make_prompt(1, 1, 4, 32, [0])
    config = DecodeConfig(mode="early_exit", n_bins=32, sigma=1)
    ticks = iter(range(1000))
    out = decode(
        lm, embeds, mask, 12, ACTION_START, config, exact_tokens=12, deadline=0.5, clock=lambda: next(ticks)
    )
    assert out.stats.stopped_by == "deadline" and out.stats.forward_passes == 1  # the prefill only
    for bad in (-1, 13, 2.0, None):
        with pytest.raises(DecodeInputError, match="exact_tokens"):
            decode(lm, embeds, mask, 12, ACTION_START, config, exact_tokens=bad)
