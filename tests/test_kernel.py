"""The fused Jacobi step: Triton kernel == PyTorch reference, exactly.

On CPU the kernel runs under Triton's interpreter, which Triton reads from TRITON_INTERPRET when it is
first imported; the test process has usually imported it already (transformers does), so the CPU
comparison runs in a fresh interpreter. On a GPU the compiled kernel and CUDA decoding are compared
with the reference in-process (`gpu` tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ceed_vla.decoding import DecodeConfig, decode, jacobi_step, jacobi_step_reference
from ceed_vla.decoding.step import resolve_step_impl

from tests.fixtures.tiny_lm import make_prompt, make_tiny_llama

REPO = Path(__file__).resolve().parents[1]

# (batch, n, n_bins, tau, logits dtype, view into a wider vocabulary): odd sizes, tiles that do not
# divide n, the smallest state with a prediction, a vocabulary slice with a row stride, bf16 logits.
SHAPES = [
    (1, 2, 5, -1, "float32", False),
    (3, 7, 37, -1, "float32", False),
    (2, 33, 256, 0, "float32", True),
    (5, 45, 300, 3, "bfloat16", False),
    (2, 6, 3000, 100, "float32", True),
]


def make_case(b, n, v, dtype, sliced, seed):
    """Random logits with planted ties (the first maximum must win), a state with some positions
    already equal to the argmax, and a random final-prefix length per sequence."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, max(n - 1, 0), v + 11 if sliced else v, generator=g)
    if sliced:
        logits = logits[..., 5 : 5 + v]  # a view: row stride != v, like the HF path's action rows
    logits[..., 1] = logits[..., 2] = logits.amax(-1) + 1  # exact tie between bins 1 and 2
    logits[:, ::3, v // 2] = 1e4  # some rows with a clear winner
    logits = logits.to(getattr(torch, dtype))
    prev = torch.randint(0, v, (b, n), generator=g)
    prev[:, 1::2] = 1  # these already hold the winning bin where the tie wins
    fixed = torch.randint(1, n + 1, (b,), generator=g)
    return logits, prev, fixed


def compare(result, reference) -> dict:
    names = ("next_state", "changed", "max_move", "converged", "done")
    return {
        name: bool(torch.equal(a, r)) and a.dtype == r.dtype
        for name, a, r in zip(names, result, reference, strict=True)
    }


def test_reference_on_a_worked_example():
    # n = 5, V = 4; rows predict positions 1..4
    logits = torch.tensor([[[0, 9, 0, 0], [0, 0, 9, 0], [9, 0, 0, 0], [0, 0, 0, 9.0]]])
    prev = torch.tensor([[3, 1, 2, 3, 0]])
    out = jacobi_step_reference(logits, prev, torch.tensor([1]), tau=-1)
    assert out.next_state.tolist() == [[3, 1, 2, 0, 3]]
    assert out.changed.tolist() == [[False, False, False, True, True]]
    assert out.max_move.tolist() == [3]
    assert out.converged.tolist() == [4]  # positions 0..2 unchanged -> 0..3 final
    assert out.done.tolist() == [False]
    assert jacobi_step_reference(logits, prev, torch.tensor([1]), tau=3).done.tolist() == [True]
    frozen = jacobi_step_reference(logits, prev, torch.tensor([5]), tau=-1)
    assert torch.equal(frozen.next_state, prev) and frozen.done.tolist() == [True]


def test_dispatch_picks_the_reference_off_cuda():
    assert resolve_step_impl("auto", torch.device("cpu")) == "torch"
    logits, prev, fixed = make_case(2, 9, 17, "float32", False, 0)
    assert compare(
        jacobi_step(logits, prev, fixed, 2, impl="torch"), jacobi_step_reference(logits, prev, fixed, 2)
    )


INTERPRET_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import triton
    sys.path.insert(0, {repo!r})
    from tests.test_kernel import SHAPES, compare, make_case
    from ceed_vla.decoding.kernel import jacobi_step_triton
    from ceed_vla.decoding.step import jacobi_step, jacobi_step_reference
    assert triton.knobs.runtime.interpret, "TRITON_INTERPRET was not honoured"
    results = []
    for i, (b, n, v, tau, dtype, sliced) in enumerate(SHAPES):
        logits, prev, fixed = make_case(b, n, v, dtype, sliced, seed=i)
        ref = jacobi_step_reference(logits, prev, fixed, tau)
        results.append(compare(jacobi_step_triton(logits, prev, fixed, tau), ref))
    logits, prev, fixed = make_case(2, 9, 17, "float32", False, 99)
    forced = jacobi_step(logits, prev, fixed, 1, impl="triton")
    results.append(compare(forced, jacobi_step_reference(logits, prev, fixed, 1)))
    print("RESULTS" + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def interpreted_results():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRET_SCRIPT.format(repo=str(REPO))],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS"))
    return json.loads(line[len("RESULTS") :])


@pytest.mark.parametrize("index", range(len(SHAPES) + 1))
def test_interpreted_kernel_equals_reference_exactly(interpreted_results, index):
    assert interpreted_results[index] == dict.fromkeys(interpreted_results[index], True)
    assert len(interpreted_results[index]) == 5


# ------------------------------------------------------------------------------------------------ gpu
# The skip is here as well as in conftest.py: scripts/gpu_check.sh runs these with --noconftest.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (make gpu-check)")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_compiled_kernel_equals_reference_on_cuda(index):
    from ceed_vla.decoding.kernel import jacobi_step_triton

    b, n, v, tau, dtype, sliced = SHAPES[index]
    logits, prev, fixed = make_case(b, n, v, dtype, sliced, seed=index)
    logits, prev, fixed = logits.cuda(), prev.cuda(), fixed.cuda()
    assert resolve_step_impl("auto", logits.device) == "triton"
    got = jacobi_step_triton(logits, prev, fixed, tau)
    assert compare(got, jacobi_step_reference(logits, prev, fixed, tau)) == dict.fromkeys(
        ("next_state", "changed", "max_move", "converged", "done"), True
    )


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("backend", ["hf", "static"])
def test_cuda_decoding_with_the_kernel_equals_the_reference_path(backend):
    lm = make_tiny_llama(21).cuda()
    embeds, mask = make_prompt(21, 3, 7, lm.config.hidden_size, [0, 2, 4])
    embeds, mask = embeds.cuda(), mask.cuda()
    ar = decode(lm, embeds, mask, 29, 40, DecodeConfig(mode="ar", backend=backend))
    for mode_kwargs in (
        {"mode": "jacobi"},
        {"mode": "early_exit", "sigma": 4},
        {"mode": "early_exit", "tau": 3},
    ):
        outs = {
            impl: decode(
                lm, embeds, mask, 29, 40, DecodeConfig(backend=backend, step_impl=impl, **mode_kwargs)
            )
            for impl in ("triton", "torch")
        }
        assert torch.equal(outs["triton"].bins, outs["torch"].bins), mode_kwargs
        assert torch.equal(outs["triton"].stats.iterations, outs["torch"].stats.iterations), mode_kwargs
    jacobi = decode(lm, embeds, mask, 29, 40, DecodeConfig(mode="jacobi", backend=backend))
    assert torch.equal(jacobi.bins, ar.bins)
    cpu = decode(lm.cpu(), embeds.cpu(), mask.cpu(), 29, 40, DecodeConfig(mode="ar", backend=backend))
    assert torch.equal(cpu.bins, ar.bins.cpu())


@pytest.mark.gpu
@requires_cuda
def test_bf16_cuda_decoding_keeps_its_guarantees():
    lm = make_tiny_llama(22, hidden=128).cuda().to(torch.bfloat16)
    embeds, mask = make_prompt(22, 4, 9, 128, [0, 1, 5, 8])
    embeds, mask = embeds.cuda(), mask.cuda()
    ar = decode(lm, embeds, mask, 32, 40, DecodeConfig(mode="ar"))
    jac = decode(lm, embeds, mask, 32, 40, DecodeConfig(mode="jacobi", record_trajectory=True))
    assert int(jac.stats.iterations.max()) <= 31
    assert torch.equal(jac.trajectory[-1], jac.bins)
    # bf16 rounding differs between a block forward and single steps, so the fixed point may differ from
    # AR; the first token comes from the same prefill and must agree.
    assert torch.equal(jac.bins[:, 0], ar.bins[:, 0])
    assert bool(((jac.bins >= 0) & (jac.bins < 256)).all())
