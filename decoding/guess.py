"""Initial guesses for the Jacobi block.

The decoder overwrites position 0 with the prefill's token (exact), so a guess only matters from
position 1 on.
"""

from __future__ import annotations

import torch

from .config import DecodeConfig, DecodeInputError


def guess_block(
    config: DecodeConfig, batch: int, n_tokens: int, device: torch.device, init_guess: torch.Tensor | None
) -> torch.Tensor:
    """The guess [B, n] long before the first token is known (every strategy but "first_token")."""
    if init_guess is not None:
        return init_guess.to(device=device, dtype=torch.long).clone()
    if config.init == "constant":
        return torch.full((batch, n_tokens), config.constant_bin, dtype=torch.long, device=device)
    if config.init == "random":
        gen = torch.Generator(device=device).manual_seed(config.seed)
        return torch.randint(0, config.n_bins, (batch, n_tokens), generator=gen, device=device)
    raise ValueError(f"init={config.init!r} needs the first token; use initial_state")


def initial_state(
    config: DecodeConfig, first: torch.Tensor, n_tokens: int, init_guess: torch.Tensor | None
) -> torch.Tensor:
    """first [B] long, the prefill's token -> the Jacobi state before the first iteration [B, n] long."""
    b = first.shape[0]
    if init_guess is None and config.init == "first_token":
        state = first[:, None].expand(b, n_tokens).clone()
    else:
        state = guess_block(config, b, n_tokens, first.device, init_guess)
    state[:, 0] = first
    return state  # [B, n]


def guess_from_previous_chunk(
    previous_bins: torch.Tensor, steps_executed: int, action_dim: int, fill: str = "repeat_last"
) -> torch.Tensor:
    """Shift the unexecuted tail of the previous chunk into place as the next chunk's initial guess.

    previous_bins: [B, K * D] bins of the previous chunk, step-major (step k holds bins k*D .. k*D+D-1).
    steps_executed: how many of its K steps were executed since it was decoded (0 <= e <= K; 0 gives
        the previous chunk as it was).
    fill: how the last e steps are filled: ``"repeat_last"`` repeats the last step of the previous chunk
        (the arm keeps doing what it was about to do).
    Returns [B, K * D]: steps e..K-1 of the previous chunk, then the fill.
    """
    if previous_bins.dim() != 2 or previous_bins.shape[1] % action_dim:
        raise DecodeInputError(
            f"previous_bins {tuple(previous_bins.shape)} must be [B, K * D] with D={action_dim} dividing its width"
        )
    b, n = previous_bins.shape
    k = n // action_dim
    if not 0 <= steps_executed <= k:
        raise DecodeInputError(f"steps_executed={steps_executed} must be in [0, K={k}]")
    if fill != "repeat_last":
        raise DecodeInputError(f"fill={fill!r} is not supported; use 'repeat_last'")
    steps = previous_bins.view(b, k, action_dim)  # [B, K, D]
    tail = steps[:, steps_executed:]  # [B, K-e, D]
    pad = steps[:, -1:].expand(b, steps_executed, action_dim)  # [B, e, D]
    return torch.cat([tail, pad], dim=1).reshape(b, n)
