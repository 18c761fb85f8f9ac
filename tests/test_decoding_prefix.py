"""Forced-prefix decoding (real-time chunking) and decoding to a deadline.

A chunk's first f tokens may be given (the actions that execute while it is computed); every mode
then decodes the rest conditioned on them, and exact Jacobi still equals AR given the same forced
tokens. A deadline on an injected clock stops Jacobi iterations; the clock here is fake and advances
by a fixed cost per model forward, so what the deadline does is exact and repeatable.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from ceed_vla.decoding import DecodeConfig, DecodeInputError, decode

from tests.fixtures.tiny_lm import make_prompt, make_tiny_llama
from tests.test_decoding import ACTION_START, random_cases


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def uncached_greedy_after(lm, embeds, mask, n_tokens, n_bins, forced, start=ACTION_START):
    """Greedy AR the slow obvious way, whose first f tokens are `forced` [B, f] instead of argmaxes:
    the full sequence through the model at every step, no cache."""
    seq, seq_mask = embeds, mask.long()
    tokens = []
    for j in range(n_tokens):
        positions = (seq_mask.cumsum(1) - 1).clamp_min(0)
        logits = lm(inputs_embeds=seq, attention_mask=seq_mask, position_ids=positions).logits
        tok = forced[:, j] if j < forced.shape[1] else logits[:, -1, start : start + n_bins].argmax(-1)
        tokens.append(tok)
        seq = torch.cat([seq, lm.get_input_embeddings()(tok + start)[:, None]], dim=1)
        seq_mask = torch.cat([seq_mask, seq_mask.new_ones(seq_mask.shape[0], 1)], dim=1)
    return torch.stack(tokens, 1)  # [B, n]


def _forced(seed: int, batch: int, f: int, n_bins: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_bins, (batch, f), generator=gen)


def test_every_mode_given_a_forced_prefix_equals_ar_given_it_over_random_models():
    rng = torch.Generator().manual_seed(77)
    for trial, lm, embeds, mask, n, n_bins, backend, pads in random_cases(2024, 14, 500):
        batch = embeds.shape[0]
        f = int(torch.randint(0, n + 1, (1,), generator=rng))
        forced = _forced(trial, batch, f, n_bins)
        where = (trial, batch, embeds.shape[1], n, f, pads, backend)
        base = DecodeConfig(mode="ar", n_bins=n_bins, backend=backend)
        ar = decode(lm, embeds, mask, n, ACTION_START, base, forced_bins=forced)
        reference = uncached_greedy_after(lm, embeds, mask, n, n_bins, forced)
        assert torch.equal(ar.bins, reference), where
        assert torch.equal(ar.bins[:, :f], forced) and ar.bins.shape == (batch, n)
        assert ar.stats.forced == f and ar.stats.tokens == n and ar.stats.decoded == n - f
        assert ar.stats.forward_passes == n - f  # the prefill (over prompt and forced) + n - f - 1 steps

        jacobi = dataclasses.replace(base, mode="jacobi")
        jac = decode(lm, embeds, mask, n, ACTION_START, jacobi, forced_bins=forced)
        assert torch.equal(jac.bins, ar.bins), where
        assert int(jac.stats.iterations.max()) <= max(n - f - 1, 0)
        tau0 = dataclasses.replace(base, mode="early_exit", tau=0)
        assert torch.equal(decode(lm, embeds, mask, n, ACTION_START, tau0, forced_bins=forced).bins, ar.bins)

        init = ("constant", "random")[trial % 2]
        fused = dataclasses.replace(jacobi, init=init, fused_prefill=True)
        out = decode(lm, embeds, mask, n, ACTION_START, fused, forced_bins=forced)
        assert torch.equal(out.bins, ar.bins), (*where, init)
        # a guess of the answer itself is one forward over [prompt, forced, guess]
        right = decode(lm, embeds, mask, n, ACTION_START, fused, init_guess=ar.bins, forced_bins=forced)
        assert torch.equal(right.bins, ar.bins) and right.stats.forward_passes == (1 if f < n else 0)
        if f < n:  # and a guess wrong in its first free token still ends at AR's tokens
            wrong = ar.bins.clone()
            wrong[:, f] = (wrong[:, f] + 1) % n_bins
            off = decode(lm, embeds, mask, n, ACTION_START, fused, init_guess=wrong, forced_bins=forced)
            assert torch.equal(off.bins, ar.bins), (*where, "wrong first guess")


def test_forcing_the_models_own_tokens_gives_its_unforced_chunk():
    lm = make_tiny_llama(21)
    embeds, mask = make_prompt(21, 3, 7, lm.config.hidden_size, [0, 2, 5])
    n = 16
    for backend in ("hf", "static"):
        ar = decode(lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="ar", backend=backend)).bins
        for f in (1, 4, 9, 15):
            for mode in ("ar", "jacobi"):
                config = DecodeConfig(mode=mode, backend=backend)
                out = decode(lm, embeds, mask, n, ACTION_START, config, forced_bins=ar[:, :f])
                assert torch.equal(out.bins, ar), (backend, f, mode)


def test_a_forced_prefix_changes_what_follows_it():
    # the conditioning is real: forcing other tokens than the model's own changes the continuation
    lm = make_tiny_llama(22)
    embeds, mask = make_prompt(22, 2, 6, lm.config.hidden_size, [0, 3])
    ar = decode(lm, embeds, mask, 12, ACTION_START, DecodeConfig(mode="ar")).bins
    other = (ar[:, :4] + 97) % 256
    out = decode(lm, embeds, mask, 12, ACTION_START, DecodeConfig(mode="jacobi"), forced_bins=other)
    assert torch.equal(out.bins[:, :4], other)
    assert not torch.equal(out.bins[:, 4:], ar[:, 4:])


@pytest.mark.parametrize(
    "config",
    [
        DecodeConfig(mode="ar"),
        DecodeConfig(mode="jacobi", record_trajectory=True),
        DecodeConfig(mode="early_exit", sigma=2, record_trajectory=True),
        DecodeConfig(mode="early_exit", tau=3, backend="hf"),
        DecodeConfig(mode="jacobi", fused_prefill=True, init="random", seed=4, record_trajectory=True),
    ],
)
def test_an_empty_forced_prefix_is_the_plain_decode_bit_for_bit(config):
    lm = make_tiny_llama(23)
    embeds, mask = make_prompt(23, 3, 8, lm.config.hidden_size, [0, 1, 6])
    guess = _forced(5, 3, 14, 256)
    kwargs = {} if config.mode == "ar" else {"init_guess": guess}
    plain = decode(lm, embeds, mask, 14, ACTION_START, config, **kwargs)
    empty = decode(lm, embeds, mask, 14, ACTION_START, config, forced_bins=guess[:, :0], **kwargs)
    assert torch.equal(empty.bins, plain.bins)
    assert torch.equal(empty.stats.iterations, plain.stats.iterations)
    assert empty.stats.forward_passes == plain.stats.forward_passes and empty.stats.forced == 0
    assert empty.stats.stopped_by == plain.stats.stopped_by
    if plain.trajectory is not None:
        assert len(empty.trajectory) == len(plain.trajectory)
        assert all(torch.equal(a, b) for a, b in zip(empty.trajectory, plain.trajectory, strict=True))


@pytest.mark.parametrize("sigma", [1, 2, 4])
def test_sigma_counts_iterations_over_the_free_tokens(sigma):
    lm = make_tiny_llama(24)
    embeds, mask = make_prompt(24, 3, 7, lm.config.hidden_size, [0, 2, 4])
    n, f = 20, 6
    forced = _forced(24, 3, f, 256)
    ar = decode(lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="ar"), forced_bins=forced).bins
    config = DecodeConfig(mode="early_exit", sigma=sigma, record_trajectory=True)
    out = decode(lm, embeds, mask, n, ACTION_START, config, forced_bins=forced)
    assert out.stats.iterations.tolist() == [sigma] * 3  # random guesses take longer than sigma here
    assert out.stats.forward_passes == 1 + sigma and out.stats.stopped_by == "sigma"
    # k iterations fix at least k + 1 free tokens after the forced ones
    assert torch.equal(out.bins[:, : f + sigma + 1], ar[:, : f + sigma + 1])
    for k, state in enumerate(out.trajectory):
        assert state.shape == (3, n) and torch.equal(state[:, :f], forced)
        assert torch.equal(state[:, : f + k + 1], ar[:, : f + k + 1])


def test_a_fully_forced_chunk_runs_no_forward_and_one_free_token_only_the_prefill():
    lm = make_tiny_llama(25)
    embeds, mask = make_prompt(25, 2, 5, lm.config.hidden_size, [0, 2])
    forced = _forced(25, 2, 8, 256)
    for mode in ("ar", "jacobi"):
        out = decode(lm, embeds, mask, 8, ACTION_START, DecodeConfig(mode=mode), forced_bins=forced)
        assert torch.equal(out.bins, forced) and out.stats.forward_passes == 0
        assert out.stats.iterations.tolist() == [0, 0] and out.stats.stopped_by == "complete"
    last = decode(lm, embeds, mask, 8, ACTION_START, DecodeConfig(mode="jacobi"), forced_bins=forced[:, :7])
    assert last.stats.forward_passes == 1 and last.stats.stopped_by == "fixed_point"
    ar = decode(lm, embeds, mask, 8, ACTION_START, DecodeConfig(mode="ar"), forced_bins=forced[:, :7])
    assert torch.equal(last.bins, ar.bins)


def test_forced_bins_are_checked():
    lm = make_tiny_llama(26)
    embeds, mask = make_prompt(26, 2, 5, lm.config.hidden_size)
    cases = [
        (torch.zeros(3, 2, dtype=torch.long), "forced_bins must be"),  # batch
        (torch.zeros(2, 9, dtype=torch.long), "forced_bins must be"),  # longer than the chunk
        (torch.full((2, 2), 256), "outside"),
        (torch.zeros(2, 2), "integer bins"),
    ]
    for forced, match in cases:
        with pytest.raises(DecodeInputError, match=match):
            decode(lm, embeds, mask, 8, ACTION_START, DecodeConfig(mode="jacobi"), forced_bins=forced)


# ---- decoding to a deadline ------------------------------------------------------------------------


class ForwardClock:
    """A fake clock that advances by `cost` every time the model runs a forward (a hook on the final
    norm, which every backend calls once per forward)."""

    def __init__(self, lm, cost: float = 1.0):
        self.now = 100.0
        self.forwards = 0
        self.cost = cost
        self.cost_of = None  # a callable giving each forward's cost, when set
        lm.model.norm.register_forward_hook(self._tick)

    def _tick(self, *_):
        self.now += self.cost if self.cost_of is None else self.cost_of()
        self.forwards += 1

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def deadline_case():
    lm = make_tiny_llama(27)
    clock = ForwardClock(lm)
    embeds, mask = make_prompt(27, 2, 6, lm.config.hidden_size, [0, 3])
    exact = decode(lm, embeds, mask, 18, ACTION_START, DecodeConfig(mode="jacobi"))
    assert int(exact.stats.iterations.min()) >= 8  # the deadlines below stop it short
    return lm, clock, embeds, mask, exact


@pytest.mark.parametrize("backend", ["hf", "static"])
def test_the_deadline_stops_iterations_before_one_would_end_late(deadline_case, backend):
    lm, clock, embeds, mask, exact = deadline_case
    jacobi = DecodeConfig(mode="jacobi", backend=backend)
    # prefill ends at +1, iteration 1 at +2, iteration 2 at +3; iteration 3 would end at +4 > +3.5
    out = decode(lm, embeds, mask, 18, ACTION_START, jacobi, deadline=clock.now + 3.5, clock=clock)
    assert out.stats.stopped_by == "deadline"
    assert out.stats.iterations.tolist() == [2, 2] and out.stats.forward_passes == 3
    capped = decode(
        lm, embeds, mask, 18, ACTION_START, DecodeConfig(mode="early_exit", sigma=2, backend=backend)
    )
    assert torch.equal(out.bins, capped.bins)  # the state reached after two iterations
    # an iteration ending exactly at the deadline is on time
    on_time = decode(lm, embeds, mask, 18, ACTION_START, jacobi, deadline=clock.now + 3.0, clock=clock)
    assert on_time.stats.iterations.tolist() == [2, 2]
    # a far deadline changes nothing: the fixed point comes first
    far = decode(lm, embeds, mask, 18, ACTION_START, jacobi, deadline=clock.now + 1e6, clock=clock)
    assert torch.equal(far.bins, exact.bins) and far.stats.stopped_by == "fixed_point"
    assert torch.equal(far.stats.iterations, exact.stats.iterations)


def test_the_cost_estimate_is_the_last_step(deadline_case):
    lm, clock, embeds, mask, _ = deadline_case
    jacobi = DecodeConfig(mode="jacobi")
    clock.cost = 2.0  # the prefill costs 2: with 3 left, one 2-unit iteration fits, a second would not
    try:
        out = decode(lm, embeds, mask, 18, ACTION_START, jacobi, deadline=clock.now + 5.0, clock=clock)
    finally:
        clock.cost = 1.0
    assert out.stats.iterations.tolist() == [1, 1] and out.stats.stopped_by == "deadline"


def test_one_slow_step_does_not_stop_the_iterations_after_it(deadline_case):
    lm, clock, embeds, mask, exact = deadline_case
    costs = iter([1.0, 5.0])  # the prefill, then one slow iteration; every later forward costs 1
    clock.cost_of = lambda: next(costs, 1.0)
    try:
        # ends: prefill +1, iteration 1 +6, iteration 2 +7 (expected to cost 5: 11 fits), then each
        # expected to cost 1: iterations 3..7 end at +8..+12 (the longest step, 5, would stop at 3)
        out = decode(
            lm,
            embeds,
            mask,
            18,
            ACTION_START,
            DecodeConfig(mode="jacobi"),
            deadline=clock.now + 12,
            clock=clock,
        )
    finally:
        clock.cost_of = None
    assert out.stats.iterations.tolist() == [7, 7] and out.stats.stopped_by == "deadline"
    capped = decode(lm, embeds, mask, 18, ACTION_START, DecodeConfig(mode="early_exit", sigma=7))
    assert torch.equal(out.bins, capped.bins)


def test_a_deadline_already_passed_returns_the_prefilled_guess(deadline_case):
    lm, clock, embeds, mask, exact = deadline_case
    config = DecodeConfig(mode="jacobi", init="constant", init_bin=9)
    out = decode(lm, embeds, mask, 18, ACTION_START, config, deadline=clock.now - 1.0, clock=clock)
    assert out.stats.stopped_by == "deadline" and out.stats.forward_passes == 1
    assert out.stats.iterations.tolist() == [0, 0]
    assert torch.equal(out.bins[:, 0], exact.bins[:, 0]) and bool((out.bins[:, 1:] == 9).all())


def test_sigma_or_the_fixed_point_when_they_come_before_the_deadline(deadline_case):
    lm, clock, embeds, mask, exact = deadline_case
    soon = clock.now + 3.5
    early = decode(
        lm,
        embeds,
        mask,
        18,
        ACTION_START,
        DecodeConfig(mode="early_exit", sigma=1),
        deadline=soon,
        clock=clock,
    )
    assert early.stats.stopped_by == "sigma" and early.stats.iterations.tolist() == [1, 1]
    # AR has no whole chunk before its last step: it ignores the deadline
    ar = decode(lm, embeds, mask, 18, ACTION_START, DecodeConfig(mode="ar"), deadline=clock.now, clock=clock)
    assert torch.equal(ar.bins, exact.bins) and ar.stats.stopped_by == "complete"
    # a guess at the answer: the fixed point after one iteration, well before the deadline
    warm = decode(
        lm, embeds, mask, 18, ACTION_START, DecodeConfig(mode="jacobi"),
        init_guess=exact.bins, deadline=clock.now + 3.5, clock=clock,
    )  # fmt: skip
    assert warm.stats.stopped_by == "fixed_point" and warm.stats.iterations.tolist() == [1, 1]


def test_the_deadline_with_a_forced_prefix_and_the_fused_prefill(deadline_case):
    lm, clock, embeds, mask, _ = deadline_case
    forced = _forced(28, 2, 6, 256)
    config = DecodeConfig(mode="jacobi", fused_prefill=True)
    ref = decode(lm, embeds, mask, 18, ACTION_START, DecodeConfig(mode="ar"), forced_bins=forced)
    # the fused pass (+1) is the first iteration; the second ends at +2, a third would end at +3
    out = decode(
        lm, embeds, mask, 18, ACTION_START, config, forced_bins=forced, deadline=clock.now + 2.5, clock=clock
    )
    assert out.stats.stopped_by == "deadline" and out.stats.forward_passes == 2
    assert out.stats.iterations.tolist() == [2, 2] and out.stats.forced == 6
    assert torch.equal(out.bins[:, :6], forced)
    assert torch.equal(out.bins[:, :7], ref.bins[:, :7])  # the forced tokens and the exact first free one
    full = decode(
        lm, embeds, mask, 18, ACTION_START, config, forced_bins=forced, deadline=clock.now + 1e6, clock=clock
    )
    assert torch.equal(full.bins, ref.bins) and full.stats.stopped_by == "fixed_point"


def test_stop_reasons_without_a_deadline(deadline_case):
    lm, _, embeds, mask, exact = deadline_case
    assert (
        decode(lm, embeds, mask, 18, ACTION_START, DecodeConfig(mode="jacobi")).stats.stopped_by
        == "fixed_point"
    )
    loose = decode(lm, embeds, mask, 18, ACTION_START, DecodeConfig(mode="early_exit", tau=255))
    assert loose.stats.stopped_by == "tau" and loose.stats.iterations.tolist() == [1, 1]
    stats = decode(lm, embeds, mask, 18, ACTION_START, DecodeConfig(mode="ar")).stats
    assert stats.stopped_by == "complete" and stats.as_dict()["forced"] == 0


# ---- CUDA graphs --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["ar", "jacobi"])
def test_graphed_decoding_with_a_forced_prefix_equals_eager(mode):
    from ceed_vla.decoding.graphs import clear_graph_cache

    clear_graph_cache()
    lm = make_tiny_llama(29).cuda().eval()
    embeds, mask = (t.cuda() for t in make_prompt(29, 3, 9, lm.config.hidden_size, [0, 4, 8]))
    for f in (0, 4, 12, 31):
        forced = _forced(f, 3, f, 256).cuda()
        eager = decode(
            lm, embeds, mask, 32, ACTION_START, DecodeConfig(mode=mode, backend="static"), forced_bins=forced
        )
        graphed = decode(
            lm, embeds, mask, 32, ACTION_START, DecodeConfig(mode=mode, backend="graphs"), forced_bins=forced
        )
        assert torch.equal(graphed.bins, eager.bins), (mode, f)
        assert torch.equal(graphed.bins[:, :f], forced) and graphed.stats.backend == "graphs"
