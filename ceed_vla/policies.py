"""Policies by name: the one loader behind every `--policy` option and `policy` parameter.

    "DIR" or "checkpoint:DIR"  a trained VLA checkpoint directory (`ceed_vla.policy.load_policy`)
    "expert"                   the sim suite's scripted MetaWorld expert; it reads the task from the
                               instruction and privileged sim state (in the bridge: the sim robot's
                               environment_state topic)
    "sine[:AMPLITUDE]"         a slow sine per action dimension, for bring-up: it checks topics,
                               limits and controller wiring before a learned policy is trusted

`ceed eval`, `ceed select`, `ceed bench decode`, the robot bridge and its benchmark load through
`load_policy`; LeRobot's plugin loads checkpoints through the same `ceed_vla.policy.load_policy`.
Every policy has the API of docs/interfaces.md (`reset`, `predict_action_chunk`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

SPECS = "a checkpoint directory, 'checkpoint:DIR', 'expert' or 'sine[:AMPLITUDE]'"


class PolicySpecError(ValueError):
    """The spec does not name a loadable policy."""


class SinePolicy:
    """Bring-up policy: action_d(t) = amplitude * sin(2 pi f t + d pi / 2), in chunks of `chunk_size`.

    The phase follows the wall clock, so consecutive chunks join up whatever the inference latency.
    """

    def __init__(
        self,
        action_dim: int,
        chunk_size: int = 8,
        amplitude: float = 0.2,
        frequency_hz: float = 0.25,
        control_rate_hz: float = 20.0,
    ):
        if action_dim < 1 or chunk_size < 1:
            raise PolicySpecError(f"action_dim={action_dim}, chunk_size={chunk_size}: need >= 1")
        if not (math.isfinite(amplitude) and amplitude >= 0):
            raise PolicySpecError(f"sine amplitude {amplitude}: need a finite value >= 0")
        self.action_dim, self.chunk_size = action_dim, chunk_size
        self.amplitude, self.frequency_hz, self.dt = amplitude, frequency_hz, 1.0 / control_rate_hz
        self.last_decode_stats = None
        self._queue: list[torch.Tensor] = []

    def reset(self) -> None:
        self._queue.clear()

    def predict_action_chunk(self, obs: dict) -> torch.Tensor:
        batch = len(obs["task"])
        t = time.monotonic() + self.dt * torch.arange(self.chunk_size, dtype=torch.float64)  # [K]
        phase = math.pi / 2 * torch.arange(self.action_dim, dtype=torch.float64)  # [D]
        chunk = self.amplitude * torch.sin(2 * math.pi * self.frequency_hz * t[:, None] + phase)  # [K, D]
        return chunk.float().expand(batch, -1, -1).clone()  # [B, K, D]

    def select_action(self, obs: dict) -> torch.Tensor:
        if not self._queue:
            self._queue = list(self.predict_action_chunk(obs).unbind(1))
        return self._queue.pop(0)  # [B, D]


def load_policy(
    spec: str,
    *,
    action_dim: int | None = None,
    control_rate_hz: float = 20.0,
    device: str | None = None,
):
    """The policy `spec` names (see the module docstring), in eval mode.

    action_dim: the robot's action size; a checkpoint must match it, a sine policy is built with it
    (default 4, MetaWorld's). control_rate_hz: the sine policy's tick."""
    kind, _, arg = spec.partition(":")
    if kind == "expert" and not arg:
        from ceed_vla.sim.experts import ScriptedExpert

        return ScriptedExpert()
    if kind == "sine":
        amplitude = _float(arg, spec) if arg else 0.2
        return SinePolicy(action_dim or 4, amplitude=amplitude, control_rate_hz=control_rate_hz)
    if kind == "checkpoint":
        if not arg:
            raise PolicySpecError("policy 'checkpoint:' needs a directory: 'checkpoint:/path/to/ckpt'")
        path = arg
    elif Path(spec).is_dir():
        path = spec
    else:
        raise PolicySpecError(f"policy={spec!r} is none of the known kinds: use {SPECS}")
    from ceed_vla.policy import load_policy as load_checkpoint

    return load_checkpoint(path, device=device, expected_action_dim=action_dim).eval()


def _float(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PolicySpecError(f"policy={spec!r}: {text!r} is not a number") from None
