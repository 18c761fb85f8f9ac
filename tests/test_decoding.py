"""Decoding modes against each other and against an uncached greedy reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from ceed_vla.decoding import (
    DecodeConfig,
    DecodeConfigError,
    DecodeInputError,
    decode,
    guess_from_previous_chunk,
)

from tests.fixtures.tiny_lm import make_prompt, make_tiny_llama

ACTION_START = 40


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def uncached_greedy(lm, embeds, mask, n_tokens, n_bins, start=ACTION_START):
    """Greedy AR the slow obvious way: the full sequence through the model at every step, no cache."""
    lengths = mask.long().sum(1)
    tokens = []
    seq, seq_mask = embeds, mask.long()
    for _ in range(n_tokens):
        positions = (seq_mask.cumsum(1) - 1).clamp_min(0)
        logits = lm(inputs_embeds=seq, attention_mask=seq_mask, position_ids=positions).logits
        tok = logits[:, -1, start : start + n_bins].argmax(-1)  # [B]
        tokens.append(tok)
        seq = torch.cat([seq, lm.get_input_embeddings()(tok + start)[:, None]], dim=1)
        seq_mask = torch.cat([seq_mask, torch.ones_like(lengths)[:, None]], dim=1)
    return torch.stack(tokens, 1)


# (seed, batch, prefix, n_tokens, n_bins, left pads per row, backend)
CASES = [
    (0, 1, 5, 7, 256, [], "hf"),
    (1, 2, 9, 13, 200, [0, 3], "static"),
    (2, 3, 6, 32, 256, [2, 0, 5], "hf"),
    (3, 4, 11, 28, 97, [0, 1, 7, 10], "static"),
    (4, 1, 3, 1, 64, [], "static"),
    (5, 2, 8, 2, 256, [4, 0], "hf"),
    (6, 3, 4, 19, 150, [1, 2, 3], "static"),
]


@pytest.mark.parametrize("seed,batch,prefix,n,n_bins,pads,backend", CASES)
def test_exact_jacobi_equals_ar_equals_uncached_greedy(seed, batch, prefix, n, n_bins, pads, backend):
    lm = make_tiny_llama(seed)
    embeds, mask = make_prompt(seed, batch, prefix, lm.config.hidden_size, pads)
    ar = decode(lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="ar", n_bins=n_bins, backend=backend))
    jac = decode(
        lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="jacobi", n_bins=n_bins, backend=backend)
    )
    reference = uncached_greedy(lm, embeds, mask, n, n_bins)
    assert torch.equal(ar.bins, reference)
    assert torch.equal(jac.bins, ar.bins)
    assert jac.bins.shape == (batch, n) and jac.bins.dtype == torch.long
    assert int(jac.stats.iterations.max()) <= n - 1 < n
    assert ar.stats.forward_passes == n and ar.stats.tokens == n
    assert jac.stats.forward_passes == 1 + int(jac.stats.iterations.max())


def random_cases(seed: int, trials: int, model_seed: int):
    """Random tiny Llamas (1-3 layers, GQA or not) and left-padded prompts, alternating backends:
    yields (trial, lm, embeds, mask, n_tokens, n_bins, backend, pads)."""
    rng = torch.Generator().manual_seed(seed)

    def draw(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=rng))

    for trial in range(trials):
        lm = make_tiny_llama(
            model_seed + trial, hidden=32, layers=draw(1, 3), heads=4, kv_heads=(1, 2, 4)[trial % 3]
        )
        batch, prefix, n = draw(1, 4), draw(1, 10), draw(1, 24)
        pads = [draw(0, prefix - 1) for _ in range(batch)]
        embeds, mask = make_prompt(trial, batch, prefix, 32, pads)
        yield trial, lm, embeds, mask, n, draw(2, 256), ("hf", "static")[trial % 2], pads


def test_exact_jacobi_equals_ar_over_many_random_models_and_prompts():
    for trial, lm, embeds, mask, n, n_bins, backend, pads in random_cases(1234, 12, 100):
        batch, prefix = embeds.shape[:2]
        config = DecodeConfig(mode="ar", n_bins=n_bins, backend=backend)
        ar = decode(lm, embeds, mask, n, ACTION_START, config)
        jac = decode(lm, embeds, mask, n, ACTION_START, dataclasses.replace(config, mode="jacobi"))
        assert torch.equal(jac.bins, ar.bins), (trial, batch, prefix, n, pads, backend)
        assert int(jac.stats.iterations.max()) < n or n == 1


def test_the_hf_backend_serves_other_causal_lms():
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    models = [
        GPT2LMHeadModel(
            GPT2Config(
                vocab_size=300,
                n_embd=64,
                n_layer=2,
                n_head=4,
                initializer_range=0.2,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
        Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=300,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                initializer_range=0.2,
            )
        ),
    ]
    embeds, mask = make_prompt(0, 3, 6, 64, [0, 2, 5])
    for lm in models:
        lm.eval()
        ar = decode(lm, embeds, mask, 9, ACTION_START, DecodeConfig(mode="ar"))
        jac = decode(lm, embeds, mask, 9, ACTION_START, DecodeConfig(mode="jacobi"))
        assert ar.stats.backend == "hf"  # "auto" falls back to the generic path
        assert torch.equal(ar.bins, uncached_greedy(lm, embeds, mask, 9, 256))
        assert torch.equal(jac.bins, ar.bins)
    with pytest.raises(ValueError, match="backend='hf'"):
        decode(models[0], embeds, mask, 9, ACTION_START, DecodeConfig(backend="static"))


def test_the_cache_holds_only_the_prefix_and_the_current_block():
    from ceed_vla.decoding.backends import HFBackend, StaticLlamaBackend

    lm = make_tiny_llama(12)
    embeds, mask = make_prompt(12, 2, 6, lm.config.hidden_size, [0, 2])
    block = torch.randint(0, 256, (2, 9))
    other = torch.randint(0, 256, (2, 9))
    for cls in (HFBackend, StaticLlamaBackend):
        with torch.no_grad():
            backend = cls(lm, ACTION_START, 256)
            backend.prefill(embeds, mask, 10)
            first = backend.forward_actions(block, offset=0)
            backend.forward_actions(other, offset=0)  # a different guess in between
            again = backend.forward_actions(block, offset=0)
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        if cls is HFBackend:
            assert backend.cache.get_seq_length() == 6 + 9  # cropped, not grown to 6 + 27


@pytest.mark.parametrize("seed", [7, 8])
def test_backends_agree_and_auto_picks_static_for_llama(seed):
    lm = make_tiny_llama(seed, kv_heads=4)
    embeds, mask = make_prompt(seed, 2, 6, lm.config.hidden_size, [0, 2])
    outs = {
        b: decode(lm, embeds, mask, 11, ACTION_START, DecodeConfig(mode="jacobi", backend=b))
        for b in ("hf", "static", "auto")
    }
    assert torch.equal(outs["hf"].bins, outs["static"].bins)
    assert torch.equal(outs["hf"].stats.iterations, outs["static"].stats.iterations)
    assert outs["auto"].stats.backend == "static" and outs["hf"].stats.backend == "hf"


def test_left_padded_row_decodes_like_the_same_prompt_alone():
    lm = make_tiny_llama(9)
    embeds, mask = make_prompt(9, 2, 8, lm.config.hidden_size, [0, 3])
    for backend in ("hf", "static"):
        config = DecodeConfig(mode="jacobi", backend=backend)
        batched = decode(lm, embeds, mask, 9, ACTION_START, config).bins
        alone = decode(lm, embeds[1:, 3:], mask[1:, 3:], 9, ACTION_START, config).bins
        assert torch.equal(batched[1:], alone), backend


@pytest.fixture(scope="module")
def model_and_prompt():
    lm = make_tiny_llama(11)
    embeds, mask = make_prompt(11, 3, 7, lm.config.hidden_size, [0, 2, 4])
    ar = decode(lm, embeds, mask, 17, ACTION_START, DecodeConfig(mode="ar")).bins
    return lm, embeds, mask, ar


@pytest.mark.parametrize("init", ["constant", "random", "first_token"])
def test_early_exit_without_cap_and_tau_zero_is_exact_jacobi(model_and_prompt, init):
    lm, embeds, mask, ar = model_and_prompt
    jac = decode(lm, embeds, mask, 17, ACTION_START, DecodeConfig(mode="jacobi", init=init, seed=3))
    ee = decode(lm, embeds, mask, 17, ACTION_START, DecodeConfig(mode="early_exit", tau=0, init=init, seed=3))
    assert torch.equal(jac.bins, ar)
    assert torch.equal(ee.bins, jac.bins)
    assert torch.equal(ee.stats.iterations, jac.stats.iterations)


@pytest.mark.parametrize("sigma", [1, 2, 5])
def test_sigma_caps_iterations_and_the_converged_prefix_is_exact(model_and_prompt, sigma):
    lm, embeds, mask, ar = model_and_prompt
    out = decode(lm, embeds, mask, 17, ACTION_START, DecodeConfig(mode="early_exit", sigma=sigma))
    assert int(out.stats.iterations.max()) <= sigma
    assert out.stats.forward_passes <= 1 + sigma
    # after k iterations at least the first k + 1 tokens are the AR tokens
    assert torch.equal(out.bins[:, : sigma + 1], ar[:, : sigma + 1])


def test_tau_stops_when_no_token_moves_more_than_tau(model_and_prompt):
    lm, embeds, mask, ar = model_and_prompt
    config = DecodeConfig(mode="early_exit", tau=255, record_trajectory=True)
    out = decode(lm, embeds, mask, 17, ACTION_START, config)
    # every move is within 255 bins, so each sequence stops after its first iteration
    assert out.stats.iterations.tolist() == [1, 1, 1]
    assert torch.equal(out.bins[:, :2], ar[:, :2])
    loose = decode(
        lm, embeds, mask, 17, ACTION_START, DecodeConfig(mode="early_exit", tau=40, record_trajectory=True)
    )
    states = loose.trajectory
    for b in range(3):
        last = int(loose.stats.iterations[b])
        move = (states[last][b] - states[last - 1][b]).abs().max()
        assert move <= 40 or torch.equal(states[last][b], ar[b])


def test_initial_guess_at_the_answer_converges_in_one_iteration_per_sequence(model_and_prompt):
    lm, embeds, mask, ar = model_and_prompt
    guess = torch.full_like(ar, 128)
    guess[1] = ar[1]  # only the second sequence starts at its fixed point
    out = decode(lm, embeds, mask, 17, ACTION_START, DecodeConfig(mode="jacobi"), init_guess=guess)
    assert torch.equal(out.bins, ar)
    assert int(out.stats.iterations[1]) == 1
    assert out.stats.forward_passes == 1 + int(out.stats.iterations.max())


def test_trajectory_records_every_state_from_the_guess_to_the_fixed_point(model_and_prompt):
    lm, embeds, mask, ar = model_and_prompt
    config = DecodeConfig(mode="jacobi", init="constant", init_bin=5, record_trajectory=True)
    out = decode(lm, embeds, mask, 17, ACTION_START, config)
    states = out.trajectory
    assert len(states) == out.stats.forward_passes  # the initial state plus one per iteration
    assert torch.equal(states[0][:, 0], ar[:, 0]) and bool((states[0][:, 1:] == 5).all())
    assert torch.equal(states[-1], out.bins)
    for k, state in enumerate(states):
        assert state.shape == ar.shape
        assert torch.equal(state[:, : k + 1], ar[:, : k + 1])  # k iterations fix at least k + 1 tokens
    assert decode(lm, embeds, mask, 17, ACTION_START, DecodeConfig(mode="ar")).trajectory is None


def test_random_init_is_reproducible_with_its_seed(model_and_prompt):
    lm, embeds, mask, _ = model_and_prompt

    def first_state(seed):
        config = DecodeConfig(mode="early_exit", sigma=1, init="random", seed=seed, record_trajectory=True)
        return decode(lm, embeds, mask, 17, ACTION_START, config).trajectory[0]

    assert torch.equal(first_state(1), first_state(1))
    assert not torch.equal(first_state(1), first_state(2))


def test_guess_from_previous_chunk_shifts_the_unexecuted_tail_into_place():
    prev = torch.arange(12).view(1, 12)  # K = 4 steps of D = 3 bins
    guess = guess_from_previous_chunk(prev, steps_executed=1, action_dim=3)
    assert guess.tolist() == [[3, 4, 5, 6, 7, 8, 9, 10, 11, 9, 10, 11]]
    guess = guess_from_previous_chunk(prev, steps_executed=4, action_dim=3)
    assert guess.tolist() == [[9, 10, 11] * 4]
    assert torch.equal(
        guess_from_previous_chunk(prev, steps_executed=0, action_dim=3), prev
    )  # observed again at once
    with pytest.raises(DecodeInputError, match="steps_executed=5"):
        guess_from_previous_chunk(prev, steps_executed=5, action_dim=3)
    with pytest.raises(DecodeInputError, match="D=5"):
        guess_from_previous_chunk(prev, steps_executed=1, action_dim=5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "beam"}, "mode='beam'"),
        ({"mode": "jacobi", "sigma": 3}, "sigma=3"),
        ({"mode": "early_exit"}, "needs an iteration cap"),
        ({"mode": "early_exit", "sigma": 0}, "sigma=0"),
        ({"mode": "early_exit", "tau": 256}, "tau=256"),
        ({"init": "zeros"}, "init='zeros'"),
        ({"init_bin": 300}, "init_bin=300"),
        ({"backend": "vllm"}, "backend='vllm'"),
        ({"step_impl": "cuda"}, "step_impl='cuda'"),
        ({"n_bins": 1}, "n_bins=1"),
    ],
)
def test_config_rejects_bad_values_quoting_them(kwargs, match):
    with pytest.raises(DecodeConfigError, match=match):
        DecodeConfig(**kwargs)


def test_decode_rejects_bad_inputs_saying_what_to_fix(model_and_prompt):
    lm, embeds, mask, _ = model_and_prompt
    right_padded = mask.flip(1)
    with pytest.raises(DecodeInputError, match="LEFT"):
        decode(lm, embeds, right_padded, 4, ACTION_START)
    with pytest.raises(DecodeInputError, match=r"\[B, P, H\]"):
        decode(lm, embeds[0], mask, 4, ACTION_START)
    with pytest.raises(DecodeInputError, match="init_guess must be"):
        decode(
            lm,
            embeds,
            mask,
            4,
            ACTION_START,
            DecodeConfig(mode="jacobi"),
            init_guess=torch.zeros(3, 5).long(),
        )
    with pytest.raises(DecodeInputError, match="outside"):
        decode(
            lm, embeds, mask, 4, ACTION_START, DecodeConfig(mode="jacobi"), init_guess=torch.full((3, 4), 256)
        )
    with pytest.raises(ValueError, match="do not fit"):
        decode(lm, embeds, mask, 4, 100)  # 100 + 256 > vocabulary of 300


# ---- fused prefill: one forward over [prompt, guess block] -----------------------------------------


def test_fused_prefill_keeps_exact_jacobi_equal_to_ar_over_many_random_models():
    for trial, lm, embeds, mask, n, n_bins, backend, pads in random_cases(4321, 16, 200):
        batch, prefix = embeds.shape[:2]
        ar = decode(
            lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="ar", n_bins=n_bins, backend=backend)
        )
        init = ("constant", "random")[trial % 2]
        fused = DecodeConfig(mode="jacobi", n_bins=n_bins, backend=backend, init=init, fused_prefill=True)
        out = decode(lm, embeds, mask, n, ACTION_START, fused)
        assert torch.equal(out.bins, ar.bins), (trial, batch, prefix, n, pads, backend, init)
        # a guess of the answer itself, and one that is wrong in its first token
        right = decode(lm, embeds, mask, n, ACTION_START, fused, init_guess=ar.bins)
        assert torch.equal(right.bins, ar.bins) and right.stats.forward_passes == 1
        wrong = ar.bins.clone()
        wrong[:, 0] = (wrong[:, 0] + 1) % n_bins
        off = decode(lm, embeds, mask, n, ACTION_START, fused, init_guess=wrong)
        assert torch.equal(off.bins, ar.bins), (trial, "wrong first guess")
        tau0 = dataclasses.replace(fused, mode="early_exit", tau=0)
        assert torch.equal(decode(lm, embeds, mask, n, ACTION_START, tau0, init_guess=wrong).bins, ar.bins)


def test_fused_prefill_at_sigma_one_is_one_forward_with_the_exact_first_token(model_and_prompt):
    lm, embeds, mask, _ = model_and_prompt
    n = 12
    ar = decode(lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="ar"))
    one = decode(
        lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="early_exit", sigma=1, fused_prefill=True)
    )
    assert one.stats.forward_passes == 1 and one.stats.iterations.tolist() == [1] * embeds.shape[0]
    assert torch.equal(one.bins[:, 0], ar.bins[:, 0])
    plain = decode(lm, embeds, mask, n, ACTION_START, DecodeConfig(mode="early_exit", sigma=1))
    assert plain.stats.forward_passes == 2  # prefill, then one pass over the block
    # with the constant guess's first token right, the fused pass IS the first iteration
    same = decode(
        lm, embeds, mask, n, ACTION_START,
        DecodeConfig(mode="early_exit", sigma=1, fused_prefill=True, init_bin=int(ar.bins[0, 0])),
    )  # fmt: skip
    ref = decode(
        lm, embeds, mask, n, ACTION_START,
        DecodeConfig(mode="early_exit", sigma=1, init_bin=int(ar.bins[0, 0])),
    )  # fmt: skip
    assert torch.equal(same.bins[0], ref.bins[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "ar", "fused_prefill": True}, "needs a Jacobi mode"),
        ({"mode": "jacobi", "init": "first_token", "fused_prefill": True}, "cannot use init='first_token'"),
    ],
)
def test_fused_prefill_refuses_what_it_cannot_do(kwargs, match):
    with pytest.raises(DecodeConfigError, match=match):
        DecodeConfig(**kwargs)
