"""One interleaved speed measurement of several decoders (`ceed bench speed`, the demo's speed stage).

A speed ratio between two decoders is only a measurement of the decoders when both are timed under the
same conditions. Timed in separate evaluation runs minutes apart, the ratio carries whatever else the
machine did in between (on a shared 2-core machine the same AR model has read 126 ms and 257 ms per
chunk in two runs of one afternoon). Here every decoder decodes the same observations in one process
at one thread setting, in rounds: each round runs every decoder over every observation, the decoders
in a rotated order, so slow drift in the machine's load reaches each decoder alike. A decoder's ratio
to the reference is computed per round (reference mean ms / its mean ms in that round), and the spread
of those per-round ratios is what the report states beside the median.

Observations come in runs (consecutive frames of one episode, `stride` apart, as a control loop that
executes `stride` steps of each chunk sees them); within a run a Jacobi decoder starts from its own
previous chunk's tail, as it does in a rollout, and from the constant guess at a run's first frame.

Decoding imports nothing else of the project; `ceed_vla.policy.bench_speed` loads the policies.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch

from ceed_vla.stats import percentile

from .config import DecodeConfig
from .decode import decode
from .guess import guess_from_previous_chunk


@dataclass(frozen=True)
class SpeedEntry:
    """One decoder: a policy (`lm`, `prefix_embeddings`, `chunk_tokens`, `action_token_start`,
    `config.action_dim`) and how it decodes."""

    name: str
    policy: Any
    decode: DecodeConfig
    warm_start: bool = True  # Jacobi modes: the initial guess from this decoder's previous chunk
    exact_steps: int = 0  # early exit: the chunk's first steps left exact (`decode`'s exact_tokens)


def measure_interleaved(
    entries: list[SpeedEntry],
    observations: list[dict[str, Any]],
    runs: list[int],
    steps_executed: int,
    rounds: int = 5,
    warmup: int = 2,
    reference: str | None = None,
    progress=None,
) -> dict[str, Any]:
    """Time every entry on every observation, `rounds` times, interleaved (see the module docstring).

    runs: per observation, the id of the run (episode) it belongs to; steps_executed: the chunk steps a
    warm start shifts out. reference: the entry the speedups are against (default: the first).
    progress: called once per decoded chunk (a tqdm's update, say).
    Returns {"reference", "rounds", "samples", "entries": {name: {...}}}; each entry holds ms per
    chunk p50/p95/mean over every timed decode, the per-round means, iterations and forward passes per
    chunk, and its speedup against the reference: the median of the per-round ratios and their range.
    """
    if not entries:
        raise ValueError("measure_interleaved needs at least one entry")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"entry names repeat: {names}")
    if len(runs) != len(observations) or not observations:
        raise ValueError(
            f"{len(observations)} observations but {len(runs)} run ids; give one per observation"
        )
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    reference = reference or names[0]
    if reference not in names:
        raise ValueError(f"reference {reference!r} is not one of the entries {names}")

    policies = {id(e.policy): e.policy for e in entries}
    with torch.inference_mode():
        prefixes = {key: [p.prefix_embeddings(o) for o in observations] for key, p in policies.items()}

    def decode_all(entry: SpeedEntry) -> tuple[list[float], list[float], list[float]]:
        p = entry.policy
        ms, iterations, forwards = [], [], []
        previous = None
        for k, (embeds, mask) in enumerate(prefixes[id(p)]):
            if k and runs[k] != runs[k - 1]:
                previous = None  # a new episode: no chunk of this one to continue
            guess = None
            if entry.warm_start and entry.decode.mode != "ar" and previous is not None:
                guess = guess_from_previous_chunk(previous, steps_executed, p.config.action_dim)
            exact = min(entry.exact_steps * p.config.action_dim, p.chunk_tokens)
            out = decode(
                p.lm,
                embeds,
                mask,
                p.chunk_tokens,
                p.action_token_start,
                entry.decode,
                init_guess=guess,
                exact_tokens=exact,
            )
            ms.append(out.stats.wall_ms)
            iterations.append(out.stats.mean_iterations)
            forwards.append(out.stats.forward_passes)
            previous = out.bins
            if progress is not None:
                progress(1)
        return ms, iterations, forwards

    for entry in entries:  # untimed: first-call allocations, graph capture, caches
        p = entry.policy
        embeds, mask = prefixes[id(p)][0]
        for _ in range(warmup):
            decode(p.lm, embeds, mask, p.chunk_tokens, p.action_token_start, entry.decode)

    times = {n: [] for n in names}
    round_means = {n: [] for n in names}
    iterations, forwards = {}, {}
    for r in range(rounds):
        shift = r % len(entries)
        for entry in entries[shift:] + entries[:shift]:
            ms, it, fw = decode_all(entry)
            times[entry.name] += ms
            round_means[entry.name].append(sum(ms) / len(ms))
            if r == 0:  # the same observations and guesses every round: the counts repeat
                iterations[entry.name] = sum(it) / len(it)
                forwards[entry.name] = sum(fw) / len(fw)

    out = {}
    for name in names:
        ratios = [a / b for a, b in zip(round_means[reference], round_means[name], strict=True)]
        out[name] = {
            "ms_p50": percentile(times[name], 50),
            "ms_p95": percentile(times[name], 95),
            "ms_mean": sum(times[name]) / len(times[name]),
            "round_means_ms": round_means[name],
            "iterations_per_chunk": iterations[name],
            "forward_passes_per_chunk": forwards[name],
            "speedup_vs_reference": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "speedups_per_round": ratios,
        }
    return {"reference": reference, "rounds": rounds, "samples": len(observations), "entries": out}
