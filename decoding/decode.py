"""`decode()`: greedy decoding of a chunk of action tokens after a prompt of embeddings.

Prefill once over the prompt: its last logit gives the first action token exactly and the cache holds
the prefix. Then either AR (n - 1 single-token steps) or Jacobi: a state of n tokens whose positions
1..n-1 are guesses; each iteration forwards state[:, :n-1] at action offsets [0, n-1) in ONE pass and
the Jacobi step (`step.py`) shifts the argmaxes in. Exact Jacobi stops at the fixed point and equals
AR token for token; early exit stops sooner (iteration cap sigma, bin tolerance tau). Each sequence of
a batch stops on its own: a finished sequence is frozen while the others go on.

`fused_prefill` folds the prefill and the first iteration into one forward over [prompt, guess
block] (see `DecodeConfig.fused_prefill`): at sigma 1 one forward per chunk.

Forced prefix (real-time chunking): the caller may give the chunk's first f tokens, the actions the
arm will execute while the chunk is computed. They join the prompt (the prefill runs over [prompt,
forced], the fused prefill over [prompt, forced, guess]) at the positions they hold in the chunk, and
the n - f free tokens are decoded after them exactly as a chunk of n - f tokens would be.

Deadline: Jacobi is an anytime algorithm (every state is a whole chunk), so a caller may give a time
by which the chunk must be back; iteration stops at the fixed point, sigma or that time, whichever
comes first.

Exact prefix: a caller that knows how many of the chunk's steps will execute before the next chunk
replaces them may ask for those tokens exact (`exact_tokens`). The early exit then stops at sigma or
tau only once that prefix is final (unchanged for an iteration, hence the greedy AR tokens): the
commands the arm runs are the model's own AR ones, and the rest of the chunk, which only seeds the
next warm start, stays an early-exit guess. The deadline still ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
    forced_bins: torch.Tensor | None,
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
    if forced_bins is not None:
        if forced_bins.dim() != 2 or forced_bins.shape[0] != b or forced_bins.shape[1] > n_tokens:
            raise DecodeInputError(
                f"forced_bins must be [B, f] with B={b} and 0 <= f <= n={n_tokens}; "
                f"got {tuple(forced_bins.shape)}"
            )
        if forced_bins.dtype.is_floating_point or forced_bins.dtype == torch.bool:
            raise DecodeInputError(f"forced_bins must hold integer bins; got dtype {forced_bins.dtype}")
        if bool(((forced_bins < 0) | (forced_bins >= config.n_bins)).any()):
            raise DecodeInputError(f"forced_bins holds bins outside [0, n_bins={config.n_bins})")
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
    block_logits: torch.Tensor,
    state0: torch.Tensor,
    right: torch.Tensor,
    config: DecodeConfig,
    exact_tokens: int = 0,
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
    done = step.done & right & (fixed >= min(exact_tokens, state0.shape[1]))
    return step.next_state, fixed, done


class _Deadline:
    """When to stop iterating: the next iteration is started only if it is expected to end by
    ``deadline``, its expected cost being the duration of the most recent step (before the first
    iteration, the prefill). The most recent step, not the longest: one slow step (a first-call
    compile, a graph capture, a busy core) then costs one decision, not the rest of the call. Without
    a deadline the clock is never read."""

    def __init__(self, deadline: float | None, clock: Callable[[], float], start: float | None):
        self.deadline = deadline
        self.clock = clock
        self.last = start

    def passed(self) -> bool:
        """Call once per loop, after the sync that ends the previous step."""
        if self.deadline is None:
            return False
        now = self.clock()
        step, self.last = now - self.last, now
        return now + step > self.deadline


def _decode_jacobi(
    backend,
    state: torch.Tensor,
    config: DecodeConfig,
    trajectory: list[torch.Tensor] | None,
    deadline: _Deadline,
    after_fused: tuple[torch.Tensor, torch.Tensor] | None = None,
    exact_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """Iterate to the fixed point, the early exit or the deadline; `after_fused` = (final prefix
    length, done) when the fused pass already ran the first iteration (it counts towards sigma);
    sigma and tau stop a sequence only once its first `exact_tokens` are final.
    Returns (state [B, n], iterations [B], passes, what stopped it)."""
    b, n = state.shape
    need = min(exact_tokens, n)  # reached: every iteration finalises at least one more token
    impl = resolve_step_impl(config.step_impl, state.device)
    # Position 0 (the prefill's token) is final; every iteration makes at least one more final, so
    # exact Jacobi needs at most n - 1 iterations.
    cap = n - 1 if config.sigma is None else min(config.sigma, n - 1)
    tau = -1 if config.tau is None else config.tau
    fixed = torch.ones(b, dtype=torch.long, device=state.device)  # [B] final prefix length
    iterations = torch.zeros(b, dtype=torch.long, device=state.device)  # [B]
    used = 0
    if after_fused is not None:
        fixed, done = after_fused
        iterations += 1
        used = 1
        if config.sigma is None:  # exact: up to n - 1 ordinary iterations after a wrong first guess
            cap += 1
    else:
        done = fixed >= n  # [B] a one-token block is final after the prefill
    by_tau = done & (fixed < n)  # [B] stopped by the bin tolerance short of the fixed point
    passes = 0
    capped = False  # sigma stopped a sequence short of its fixed point
    while True:
        if used + passes >= cap:  # past sigma only a sequence whose exact prefix is not final goes on
            final = fixed >= need
            capped |= bool((~done & final).any())
            done = done | final
        if bool(done.all()):
            stopped = "sigma" if capped else "tau" if bool(by_tau.any()) else "fixed_point"
            break
        if deadline.passed():
            stopped = "deadline"
            break
        logits = backend.forward_actions(state[:, : n - 1], offset=0)  # [B, n-1, V]
        frozen = torch.where(done, n, fixed)  # a finished sequence keeps its state
        step = jacobi_step(logits, state, frozen, tau=tau, impl=impl)
        iterations += (~done).long()
        step_done = step.done & (step.converged >= need)  # tau waits for the exact prefix
        by_tau |= ~done & step_done & (step.converged < n)
        state, fixed, done = step.next_state, step.converged, done | step_done
        passes += 1
        if trajectory is not None:
            trajectory.append(state.clone())
    return state, iterations, passes, stopped


def _append_forced(
    lm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, forced: torch.Tensor, action_token_start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt extended by the forced action tokens: embeds [B, P + f, H], mask [B, P + f]. A forced
    token then sits at the position an action token of that offset has (len_b + j) and the free
    tokens follow it at len_b + f + j', so every backend decodes the rest unchanged."""
    forced_embeds = lm.get_input_embeddings()(forced + action_token_start).to(embeds.dtype)  # [B, f, H]
    return torch.cat([embeds, forced_embeds], dim=1), torch.cat(
        [mask, torch.ones_like(forced, dtype=torch.bool)], 1
    )


@torch.no_grad()  # not inference_mode: callers may feed the bins to autograd code (training)
def decode(
    lm: nn.Module,
    prefix_embeds: torch.Tensor,
    prefix_mask: torch.Tensor,
    n_tokens: int,
    action_token_start: int,
    config: DecodeConfig | None = None,
    init_guess: torch.Tensor | None = None,
    forced_bins: torch.Tensor | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    exact_tokens: int = 0,
) -> DecodeOutput:
    """Decode ``n_tokens`` action bins greedily after the prompt.

    lm: a Hugging Face causal LM; prefix_embeds: [B, P, H]; prefix_mask: [B, P] bool, left padding;
    action bins 0..n_bins-1 are token ids action_token_start + bin; init_guess: [B, n] bins (Jacobi
    modes; position 0 of the free tokens is replaced by the prefill's exact token) or None for
    ``config.init``.

    forced_bins: [B, f] bins (0 <= f <= n) that the chunk's first f tokens are, not decoded: the rest
    is decoded conditioned on them, in every mode (the prefill runs over [prompt, forced]; the fused
    prefill over [prompt, forced, guess]). Exact Jacobi still equals AR given the same forced tokens;
    sigma counts iterations over the n - f free tokens. None or f = 0 is the plain decode.

    deadline: a time on ``clock`` by which the Jacobi modes must return. An iteration is started only
    if it is expected to end by then (see `_Deadline`); the state is a whole chunk at every
    iteration, so the output is the best one reached. AR ignores it (it has no whole chunk before
    its last step). ``stats.stopped_by`` says what ended the call.

    exact_tokens: the chunk's first tokens (forced ones included) that early exit must leave exact:
    sigma and tau stop only once they are final, so they equal AR's (the deadline still stops it).
    0 is the plain early exit; exact modes are exact everywhere anyway.

    Returns bins [B, n] (the forced tokens first), stats, and the Jacobi trajectory when
    ``config.record_trajectory``.
    """
    config = config or DecodeConfig()
    mask = _check_inputs(prefix_embeds, prefix_mask, n_tokens, config, init_guess, forced_bins)
    if not (isinstance(exact_tokens, int) and 0 <= exact_tokens <= n_tokens):
        raise DecodeInputError(f"exact_tokens={exact_tokens!r} must be an int in [0, n_tokens={n_tokens}]")
    device = prefix_embeds.device
    _sync(device)
    start = time.perf_counter()
    timer = _Deadline(deadline, clock, clock() if deadline is not None else None)
    backend = make_backend(lm, config.backend, action_token_start, config.n_bins)
    embeds = prefix_embeds.to(lm.get_input_embeddings().weight.dtype)
    b = embeds.shape[0]
    f = 0 if forced_bins is None else forced_bins.shape[1]
    forced = None
    if f:
        forced = forced_bins.to(device=device, dtype=torch.long)  # [B, f]
        embeds, mask = _append_forced(lm, embeds, mask, forced, action_token_start)
    m = n_tokens - f  # free tokens
    exact_free = max(0, exact_tokens - f)
    guess = None if init_guess is None else init_guess[:, f:]
    trajectory = None
    stopped = "complete"
    if m == 0:  # the caller gave the whole chunk
        bins = embeds.new_zeros(b, 0, dtype=torch.long)
        iterations, passes = torch.zeros(b, dtype=torch.long, device=device), 0
    elif config.mode == "ar":
        first = _greedy(backend.prefill(embeds, mask, m))  # [B]
        bins, iterations, passes = _decode_ar(backend, first, m)
    elif config.fused_prefill and m > 1:
        guess = guess_block(config, b, m, device, guess)  # [B, m]
        first_logits, block_logits = backend.prefill_with_block(embeds, mask, m, guess[:, :-1])
        first = _greedy(first_logits)  # [B]
        state0 = guess.clone()
        state0[:, 0] = first
        state, fixed, done = _fused_first_iteration(
            block_logits, state0, guess[:, 0] == first, config, exact_free
        )
        if config.record_trajectory:
            trajectory = [state0, state.clone()]
        bins, iterations, block_passes, stopped = _decode_jacobi(
            backend, state, config, trajectory, timer, after_fused=(fixed, done), exact_tokens=exact_free
        )
        passes = 1 + block_passes
    else:
        first = _greedy(backend.prefill(embeds, mask, m))  # [B]
        state = initial_state(config, first, m, guess)  # [B, m]
        trajectory = [state.clone()] if config.record_trajectory else None
        bins, iterations, block_passes, stopped = _decode_jacobi(
            backend, state, config, trajectory, timer, exact_tokens=exact_free
        )
        passes = 1 + block_passes
    if forced is not None:
        bins = torch.cat([forced, bins], dim=1)  # [B, n]
        if trajectory is not None:
            trajectory = [torch.cat([forced, state], dim=1) for state in trajectory]
    _sync(device)
    wall_ms = (time.perf_counter() - start) * 1e3
    stats = DecodeStats(
        tokens=n_tokens,
        iterations=iterations,
        forward_passes=passes,
        wall_ms=wall_ms,
        backend=backend.name,
        forced=f,
        stopped_by=stopped,
    )
    return DecodeOutput(bins=bins, stats=stats, trajectory=trajectory)
