"""`decode()`: greedy decoding of a chunk of action tokens after a prompt of embeddings.

Prefill once over the prompt: its last logit gives the first action token exactly and the cache holds
the prefix. Then either AR (n - 1 single-token steps) or Jacobi: a state of n tokens whose positions
1..n-1 are guesses; each iteration forwards state[:, :n-1] at action offsets [0, n-1) in ONE pass and
the Jacobi step (`step.py`) shifts the argmaxes in. Exact Jacobi stops at the fixed point and equals
AR token for token; early exit stops sooner (iteration cap sigma, bin tolerance tau). Each sequence of
a batch stops on its own: a finished sequence is frozen while the others go on.

`fused_prefill` folds the prefill and the first iteration into one forward over [prompt, guess
block] (see `DecodeConfig.fused_prefill`): at sigma 1 one forward per chunk.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .backends import make_backend
from .config import DecodeConfig, DecodeInputError, DecodeOutput, DecodeStats
from .guess import guess_block, initial_state
from .step import jacobi_step, resolve_step_impl


def _check_inputs(
    prefix_embeds: torch.Tensor,
    prefix_mask: torch.Tensor,
    n_tokens: int,
    config: DecodeConfig,
    init_guess: torch.Tensor | None,
) -> torch.Tensor:
    if prefix_embeds.dim() != 3:
        raise DecodeInputError(f"prefix_embeds must be [B, P, H]; got shape {tuple(prefix_embeds.shape)}")
    b, p, _ = prefix_embeds.shape
    if p == 0:
        raise DecodeInputError("prefix_embeds has no positions (P = 0); the prompt needs at least one token")
    if tuple(prefix_mask.shape) != (b, p):
        raise DecodeInputError(f"prefix_mask must be [B, P] = {(b, p)}; got {tuple(prefix_mask.shape)}")
    mask = prefix_mask.to(device=prefix_embeds.device, dtype=torch.bool)
    if not bool(mask[:, -1].all()):
        raise DecodeInputError("prefix_mask has padding at the end of a row; padding must be on the LEFT")
    if bool((mask[:, 1:].long() < mask[:, :-1].long()).any()):
        raise DecodeInputError(
            "prefix_mask has a gap (True then False) in a row; padding must be on the LEFT only"
        )
    if n_tokens < 1:
        raise DecodeInputError(f"n_tokens={n_tokens} must be >= 1")
    if init_guess is not None:
        if tuple(init_guess.shape) != (b, n_tokens):
            raise DecodeInputError(
                f"init_guess must be [B, n] = {(b, n_tokens)}; got {tuple(init_guess.shape)}"
            )
        if bool(((init_guess < 0) | (init_guess >= config.n_bins)).any()):
            raise DecodeInputError(f"init_guess holds bins outside [0, n_bins={config.n_bins})")
    return mask


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


def _decode_ar(backend, first: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    tokens = [first]  # each [B]
    for t in range(n_tokens - 1):
        logits = backend.forward_actions(tokens[-1][:, None], offset=t)  # [B, 1, V]
        tokens.append(_greedy(logits[:, -1]))
    bins = torch.stack(tokens, dim=1)  # [B, n]
    iterations = torch.full((first.shape[0],), n_tokens - 1, dtype=torch.long, device=first.device)
    return bins, iterations, n_tokens


def _fused_first_iteration(
    block_logits: torch.Tensor, state0: torch.Tensor, right: torch.Tensor, config: DecodeConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first Jacobi iteration from the fused pass. block_logits [B, n-1, V] were computed from
    the guess, whose position 0 `right` [B] says was the exact first token; state0 [B, n] is the
    guess with the exact first token in place. Where the guess was right this is exactly the first
    iteration from state0; where not, its rows are still the best update at hand but none of them is
    known to be final: only position 0 is. Returns (state [B, n], final prefix length [B], done [B])."""
    impl = resolve_step_impl(config.step_impl, state0.device)
    tau = -1 if config.tau is None else config.tau
    ones = torch.ones(state0.shape[0], dtype=torch.long, device=state0.device)
    step = jacobi_step(block_logits, state0, ones, tau=tau, impl=impl)
    fixed = torch.where(right, step.converged, ones)
    # A wrong first guess: nothing moved says nothing (the rows saw another token 0), so neither the
    # fixed point nor tau may stop here; the next, ordinary iteration decides.
    done = step.done & right
    return step.next_state, fixed, done


def _decode_jacobi(
    backend,
    state: torch.Tensor,
    config: DecodeConfig,
    trajectory: list[torch.Tensor] | None,
    after_fused: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Iterate to the fixed point or the early exit; `after_fused` = (final prefix length, done)
    when the fused pass already ran the first iteration (it counts towards sigma)."""
    b, n = state.shape
    impl = resolve_step_impl(config.step_impl, state.device)
    # Position 0 (the prefill's token) is final; every iteration makes at least one more final, so
    # exact Jacobi needs at most n - 1 iterations.
    cap = n - 1 if config.sigma is None else min(config.sigma, n - 1)
    tau = -1 if config.tau is None else config.tau
    fixed = torch.ones(b, dtype=torch.long, device=state.device)  # [B] final prefix length
    done = torch.zeros(b, dtype=torch.bool, device=state.device)  # [B]
    iterations = torch.zeros(b, dtype=torch.long, device=state.device)  # [B]
    used = 0
    if after_fused is not None:
        fixed, done = after_fused
        iterations += 1
        used = 1
        if config.sigma is None:  # exact: up to n - 1 ordinary iterations after a wrong first guess
            cap += 1
    passes = 0
    while used + passes < cap and not bool(done.all()):
        logits = backend.forward_actions(state[:, : n - 1], offset=0)  # [B, n-1, V]
        frozen = torch.where(done, n, fixed)  # a finished sequence keeps its state
        step = jacobi_step(logits, state, frozen, tau=tau, impl=impl)
        iterations += (~done).long()
        state, fixed, done = step.next_state, step.converged, done | step.done
        passes += 1
        if trajectory is not None:
            trajectory.append(state.clone())
    return state, iterations, passes


@torch.no_grad()  # not inference_mode: callers may feed the bins to autograd code (training)
def decode(
    lm: nn.Module,
    prefix_embeds: torch.Tensor,
    prefix_mask: torch.Tensor,
    n_tokens: int,
    action_token_start: int,
    config: DecodeConfig | None = None,
    init_guess: torch.Tensor | None = None,
) -> DecodeOutput:
    """Decode ``n_tokens`` action bins greedily after the prompt.

    lm: a Hugging Face causal LM; prefix_embeds: [B, P, H]; prefix_mask: [B, P] bool, left padding;
    action bins 0..n_bins-1 are token ids action_token_start + bin; init_guess: [B, n] bins (Jacobi
    modes; position 0 is replaced by the prefill's exact token) or None for ``config.init``.
    Returns bins [B, n], stats, and the Jacobi trajectory when ``config.record_trajectory``.
    """
    config = config or DecodeConfig()
    mask = _check_inputs(prefix_embeds, prefix_mask, n_tokens, config, init_guess)
    device = prefix_embeds.device
    _sync(device)
    start = time.perf_counter()
    backend = make_backend(lm, config.backend, action_token_start, config.n_bins)
    embeds = prefix_embeds.to(lm.get_input_embeddings().weight.dtype)
    trajectory = None
    if config.mode == "ar":
        first = _greedy(backend.prefill(embeds, mask, n_tokens))  # [B]
        bins, iterations, passes = _decode_ar(backend, first, n_tokens)
    elif config.fused_prefill and n_tokens > 1:
        guess = guess_block(config, embeds.shape[0], n_tokens, device, init_guess)  # [B, n]
        first_logits, block_logits = backend.prefill_with_block(embeds, mask, n_tokens, guess[:, :-1])
        first = _greedy(first_logits)  # [B]
        state0 = guess.clone()
        state0[:, 0] = first
        state, fixed, done = _fused_first_iteration(block_logits, state0, guess[:, 0] == first, config)
        if config.record_trajectory:
            trajectory = [state0, state.clone()]
        bins, iterations, block_passes = _decode_jacobi(
            backend, state, config, trajectory, after_fused=(fixed, done)
        )
        passes = 1 + block_passes
    else:
        first = _greedy(backend.prefill(embeds, mask, n_tokens))  # [B]
        state = initial_state(config, first, n_tokens, init_guess)  # [B, n]
        trajectory = [state.clone()] if config.record_trajectory else None
        bins, iterations, block_passes = _decode_jacobi(backend, state, config, trajectory)
        passes = 1 + block_passes
    _sync(device)
    wall_ms = (time.perf_counter() - start) * 1e3
    stats = DecodeStats(
        tokens=n_tokens, iterations=iterations, forward_passes=passes, wall_ms=wall_ms, backend=backend.name
    )
    return DecodeOutput(bins=bins, stats=stats, trajectory=trajectory)
