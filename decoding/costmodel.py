"""A cost model of decoding at real VLA scale: measured forwards of random Llama-shaped models, combined
with measured iterations per chunk into projected ms per chunk for each decoder.

A decoder's chunk is a sequence of forwards whose cost depends on the model's size, not on what it
learnt: a prefill over the prompt, then AR steps (one token each) or Jacobi passes (a block of n - 1
tokens each), or the fused pass (prompt and block in one forward). How many passes a chunk takes is a
property of the trained policy, measured in closed loop elsewhere (`iterations_per_chunk` of a report).
So a random model of a given shape times each kind of forward, and

    AR            prefill + (n - 1) x step
    Jacobi        prefill + iterations x pass
    Jacobi fused  fused + (iterations - 1) x pass       (the guess's first token right: a warm start)

projects ms per chunk at that scale. Each forward is timed as the decoder runs it: through `make_backend`
(`graphs` on CUDA: captured once, replayed), the AR step with its argmax, the Jacobi pass with its step
(`jacobi_step`) and the host read of the done flag that ends every iteration of the decoder's loop.

Shapes are named presets (`SHAPES`); parameters are counted from the built model, not assumed.
Imports nothing of the project outside `decoding`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from .backends import make_backend
from .step import jacobi_step


class CostModelError(ValueError):
    """A cost-model option or input cannot work."""


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder shape. `approx_parameters` is derived; the built model's count is reported."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = False
    like: str = ""  # the public model this shape copies

    def __post_init__(self) -> None:
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise CostModelError(
                f"shape {self.name!r}: hidden={self.hidden} must divide by heads={self.heads}, "
                f"and heads by kv_heads={self.kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def approx_parameters(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h
        embeddings = self.vocab * h * (1 if self.tie_embeddings else 2)
        return self.layers * per_layer + embeddings + h


SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        # the shapes of public backbones; the weights are random
        ModelShape("0.5b", 896, 24, 14, 2, 4864, 151936, True, like="Qwen2.5-0.5B (as Llama)"),
        ModelShape("1b", 2048, 16, 32, 8, 8192, 128256, True, like="Llama-3.2-1B"),
        ModelShape("7b", 4096, 32, 32, 32, 11008, 32000, False, like="Llama-2-7B (OpenVLA's backbone)"),
        # for tests and CPU runs of the script
        ModelShape("tiny", 64, 2, 4, 2, 128, 320, False, like="test shape"),
    )
}


@dataclass
class CostConfig:
    shapes: tuple[str, ...] = ("0.5b", "1b", "7b")
    prompt: int = 300  # prompt positions: image patches, instruction, proprio
    chunk_tokens: tuple[int, ...] = (8, 16, 32, 56)
    n_bins: int = 256
    dtype: str = "bf16"
    device: str = "cuda"
    backend: str = "auto"  # auto: graphs on CUDA, static elsewhere
    warmup: int = 3
    rounds: int = 7  # timed rounds; the median is reported
    calls: int = 5  # calls per timed round
    ar_chunk_check: int | None = 32  # also decode a whole AR chunk of this n (the projection's check)
    seed: int = 0
    extra_shapes: dict[str, ModelShape] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shapes = tuple(self.shapes)
        self.chunk_tokens = tuple(int(n) for n in self.chunk_tokens)
        known = {**SHAPES, **self.extra_shapes}
        unknown = [s for s in self.shapes if s not in known]
        if unknown:
            raise CostModelError(f"unknown shapes {unknown}; known: {sorted(known)}")
        if self.prompt < 1:
            raise CostModelError(f"prompt={self.prompt} must be >= 1")
        if not self.chunk_tokens or min(self.chunk_tokens) < 2:
            raise CostModelError(f"chunk_tokens={self.chunk_tokens} must all be >= 2 (a Jacobi block)")
        if self.dtype not in DTYPES:
            raise CostModelError(f"dtype={self.dtype!r} is not one of {tuple(DTYPES)}")
        if min(self.warmup, self.rounds - 1, self.calls - 1) < 0:
            raise CostModelError(
                f"warmup={self.warmup} must be >= 0, rounds={self.rounds} and calls={self.calls} >= 1"
            )

    def shape(self, name: str) -> ModelShape:
        return {**SHAPES, **self.extra_shapes}[name]

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "graphs" if torch.device(self.device).type == "cuda" else "static"


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, rounds: int, calls: int) -> dict:
    """Milliseconds per call of `fn`: `rounds` rounds of `calls` back-to-back calls after `warmup` calls;
    CUDA events on CUDA, perf_counter elsewhere. Returns the median, min and max over rounds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    per_call = []
    for _ in range(rounds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            per_call.append(start.elapsed_time(end) / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            per_call.append((time.perf_counter() - t0) * 1e3 / calls)
    return {"median": statistics.median(per_call), "min": min(per_call), "max": max(per_call)}


# ------------------------------------------------------------------------------------------ a model


def build_lm(shape: ModelShape, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A random `LlamaForCausalLM` of `shape`, made directly on `device` in `dtype` (no fp32 copy on the
    host: a 7B model is built in seconds on a GPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=shape.tie_embeddings,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            lm = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return lm.to(dtype).eval().requires_grad_(False)


def measure_shape(cfg: CostConfig, name: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Times the prefill, one AR step, one Jacobi pass and the fused pass of shape `name` for every
    chunk size of `cfg`. Frees the model before returning."""
    from .graphs import clear_graph_cache

    shape, device, dtype = cfg.shape(name), torch.device(cfg.device), DTYPES[cfg.dtype]
    backend_name = cfg.resolved_backend()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    lm = build_lm(shape, dtype, device, cfg.seed)
    parameters = sum(p.numel() for p in lm.parameters())
    log(f"{name}: {parameters / 1e6:.1f}M parameters built in {time.perf_counter() - t0:.1f} s")
    start = shape.vocab - cfg.n_bins  # the action bins are the vocabulary's last rows, as in the policy
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    embeds = (torch.randn(1, cfg.prompt, shape.hidden, generator=gen) * 0.02).to(device, dtype)  # [1, P, H]
    mask = torch.ones(1, cfg.prompt, dtype=torch.bool, device=device)  # [1, P]
    timing = dict(warmup=cfg.warmup, rounds=cfg.rounds, calls=cfg.calls)
    rows = []
    try:
        with torch.no_grad():
            for n in cfg.chunk_tokens:
                impl = make_backend(lm, backend_name, start, cfg.n_bins)
                state = torch.randint(0, cfg.n_bins, (1, n), generator=gen).to(device)  # [1, n]
                row = _time_forwards(impl, embeds, mask, state, device, timing)
                if n == cfg.ar_chunk_check:
                    row["ar_chunk_measured_ms"] = _measure_ar_chunk(lm, embeds, mask, n, start, cfg)
                rows.append(row)
                log(
                    f"{name} n={n}: prefill {row['prefill_ms']['median']:.3f} ms, AR step "
                    f"{row['ar_step_ms']['median']:.3f} ms, pass {row['jacobi_pass_ms']['median']:.3f} ms "
                    f"({row['pass_over_step']:.2f}x a step), fused {row['fused_ms']['median']:.3f} ms"
                )
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    finally:
        del lm
        clear_graph_cache()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "shape": asdict(shape),
        "parameters": parameters,
        "backend": backend_name,
        "dtype": cfg.dtype,
        "prompt": cfg.prompt,
        "peak_memory_bytes": peak,
        "forwards": rows,
    }


def _time_forwards(impl, embeds, mask, state: torch.Tensor, device, timing: dict) -> dict[str, Any]:
    """Each kind of forward of one chunk size n = state.shape[1], as the decoder calls it."""
    n = state.shape[1]
    fixed = torch.ones(1, dtype=torch.long, device=device)  # [1]
    token = state[:, :1]  # [1, 1]
    mid = n // 2  # the AR step timed: its offset is in the middle of the chunk

    def prefill():
        return impl.prefill(embeds, mask, n).argmax(-1)

    def ar_step():
        return impl.forward_actions(token, mid).argmax(-1)

    def jacobi_pass():  # one iteration of the decoder's loop
        logits = impl.forward_actions(state[:, : n - 1], 0)  # [1, n-1, V]
        return bool(jacobi_step(logits, state, fixed).done.all())

    def fused():  # eager in the product: the graphs backend runs this shape uncaptured
        first, block = impl.prefill_with_block(embeds, mask, n, state[:, : n - 1])
        return first.argmax(-1), jacobi_step(block, state, fixed).done

    prefill()  # allocates the KV buffer that the other forwards read
    row = {
        "chunk_tokens": n,
        "pass_tokens": n - 1,
        "prefill_ms": time_ms(prefill, device, **timing),
        "ar_step_ms": time_ms(ar_step, device, **timing),
        "jacobi_pass_ms": time_ms(jacobi_pass, device, **timing),
        "fused_ms": time_ms(fused, device, **timing),
    }
    row["pass_over_step"] = row["jacobi_pass_ms"]["median"] / row["ar_step_ms"]["median"]
    return row


def _measure_ar_chunk(lm, embeds, mask, n: int, start: int, cfg: CostConfig) -> dict:
    """A whole AR chunk through `decode()` (its own wall clock, synchronised): checks the projection."""
    from .config import DecodeConfig
    from .decode import decode

    config = DecodeConfig(mode="ar", n_bins=cfg.n_bins, backend=cfg.resolved_backend())
    times = []
    for i in range(cfg.warmup + cfg.rounds):
        out = decode(lm, embeds, mask, n, start, config)
        if i >= cfg.warmup:
            times.append(out.stats.wall_ms)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


# ---------------------------------------------------------------------------------------- projecting


@dataclass(frozen=True)
class Decoder:
    """One decoder of a report: `iterations` is its measured mean per chunk (AR: n - 1 steps)."""

    name: str
    policy: str
    mode: str  # ar | jacobi | early_exit
    iterations: float
    sigma: int | None = None
    success: float | None = None


PAUSED_DECODERS = ("teacher_ar", "teacher_jacobi", "student_jacobi", "student_early_exit", "student_sigma1")


def decoders_from_report(report: dict[str, Any], names: tuple[str, ...] = PAUSED_DECODERS) -> list[Decoder]:
    """The paused-clock decoders of an evaluation report (`reports/*/report.json`), with their measured
    iterations per chunk and success; names missing from the report are skipped."""
    modes = report.get("modes")
    if not isinstance(modes, dict):
        raise CostModelError("the report has no 'modes' table (is it a `ceed demo` report.json?)")
    out = []
    for name in names:
        row = modes.get(name)
        if row is None:
            continue
        mode = row.get("mode", {})
        out.append(
            Decoder(
                name=name,
                policy=str(mode.get("policy", "")),
                mode=str(mode.get("decoding", "")),
                iterations=float(row["iterations_per_chunk"]),
                sigma=mode.get("sigma"),
                success=row.get("success_rate"),
            )
        )
    if not out:
        raise CostModelError(f"none of {names} is in the report's modes {sorted(modes)}")
    return out


def project(shape_record: dict[str, Any], decoders: list[Decoder], chunk_tokens: int) -> list[dict]:
    """Projected ms per chunk and chunks per second of each decoder, from one measured shape at the
    chunk size the iterations were measured at."""
    by_n = {r["chunk_tokens"]: r for r in shape_record["forwards"]}
    if chunk_tokens not in by_n:
        raise CostModelError(
            f"no forwards measured at n={chunk_tokens} (measured: {sorted(by_n)}); the report's "
            "iterations hold for its own chunk size only"
        )
    f = by_n[chunk_tokens]
    prefill, step = f["prefill_ms"]["median"], f["ar_step_ms"]["median"]
    block, fused = f["jacobi_pass_ms"]["median"], f["fused_ms"]["median"]
    rows = []
    for d in decoders:
        if d.mode == "ar":
            variants = [("", prefill + (chunk_tokens - 1) * step, 1 + (chunk_tokens - 1))]
        else:
            it = d.iterations
            variants = [
                ("", prefill + it * block, 1 + it),
                ("/fused", fused + max(it - 1.0, 0.0) * block, max(it, 1.0)),
            ]
        for suffix, ms, forwards in variants:
            rows.append(
                {
                    "decoder": d.name + suffix,
                    "policy": d.policy,
                    "mode": d.mode,
                    "sigma": d.sigma,
                    "fused": suffix == "/fused",
                    "iterations": d.iterations,
                    "forwards": forwards,
                    "ms_per_chunk": ms,
                    "chunks_per_s": 1e3 / ms if ms > 0 else math.inf,
                    "paused_success": d.success,
                }
            )
    ar = next((r["ms_per_chunk"] for r in rows if r["mode"] == "ar"), None)
    for r in rows:
        r["speedup_vs_ar"] = None if ar is None else ar / r["ms_per_chunk"]
    return rows


def run(
    cfg: CostConfig,
    decoders: list[Decoder],
    report_chunk_tokens: int,
    log: Callable[[str], None] = print,
    on_shape: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every shape (a failing shape is recorded with its error; the others still run) and
    project the decoders at `report_chunk_tokens`. `on_shape(record)` is called after each shape with
    the record so far (to save partial results)."""
    shapes: dict[str, Any] = {}
    record = {
        "benchmark": "costmodel",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": torch.cuda.get_device_name(0) if cfg.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra_shapes"},
        "backend": None,
        "report_chunk_tokens": report_chunk_tokens,
        "decoders": [asdict(d) for d in decoders],
        "weights": "random (shapes of public models; decoding cost does not depend on the weights)",
        "shapes": shapes,
    }
    fallback = None  # after graphs fail once, the remaining shapes are timed eagerly
    for name in cfg.shapes:
        try:
            try:
                measured = measure_shape(fallback or cfg, name, log)
            except Exception as err:
                if fallback is not None or cfg.resolved_backend() != "graphs":
                    raise
                log(f"{name}: graphs failed ({type(err).__name__}: {err}); timing eagerly (static) instead")
                fallback = replace(cfg, backend="static")
                measured = measure_shape(fallback, name, log)
                measured["graphs_error"] = f"{type(err).__name__}: {err}"
            measured["projection"] = project(measured, decoders, report_chunk_tokens)
            shapes[name] = measured
        except Exception as err:  # one shape out of memory or broken must not lose the others
            log(f"{name}: failed: {type(err).__name__}: {err}")
            shapes[name] = {"shape": asdict(cfg.shape(name)), "error": f"{type(err).__name__}: {err}"}
        backends = sorted({s["backend"] for s in shapes.values() if "backend" in s})
        record["backend"] = ", ".join(backends) or None
        if on_shape is not None:
            on_shape(record)
    return record


def plot(record: dict[str, Any], path) -> None:
    """Left: projected ms per chunk of each decoder at each scale. Right: a Jacobi pass over one AR step
    against the chunk size, per scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {k: v for k, v in record["shapes"].items() if "forwards" in v}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if ok:
        decoders = [r["decoder"] for r in next(iter(ok.values()))["projection"]]
        width = 0.8 / len(ok)
        for i, (name, rec) in enumerate(ok.items()):
            ms = {r["decoder"]: r["ms_per_chunk"] for r in rec["projection"]}
            xs = [j + i * width for j in range(len(decoders))]
            left.bar(xs, [ms[d] for d in decoders], width, label=name)
            right.plot(
                [f["chunk_tokens"] for f in rec["forwards"]],
                [f["pass_over_step"] for f in rec["forwards"]],
                marker="o",
                label=name,
            )
        left.set_xticks([j + 0.4 - width / 2 for j in range(len(decoders))])
        left.set_xticklabels(decoders, rotation=35, ha="right", fontsize=7)
        left.set_yscale("log")
        left.legend(fontsize=8)
    left.set_ylabel(f"projected ms per chunk (n = {record['report_chunk_tokens']})")
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    right.set_xlabel("chunk tokens n (a pass forwards n - 1)")
    right.set_ylabel("Jacobi pass time / AR step time")
    right.legend(fontsize=8)
    fig.suptitle(f"cost model: {record['device']}, {record['config']['dtype']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ report reading


def profile_sigmas(report: dict[str, Any]) -> tuple[int, ...]:
    """The early-exit caps a profile evaluates: its `sigma` and its sweep's, sorted."""
    config = report.get("config", {})
    sigmas = {config.get("sigma"), *config.get("sweep_sigmas", [])}
    sigmas = tuple(sorted(int(s) for s in sigmas if s is not None))
    if not sigmas:
        raise CostModelError("the report's config names no sigma (config.sigma, config.sweep_sigmas)")
    return sigmas


def report_chunk_tokens(report: dict[str, Any]) -> int:
    """Tokens per chunk the report's iterations were measured at."""
    counts = {int(m["tokens_per_chunk"]) for m in report.get("modes", {}).values() if "tokens_per_chunk" in m}
    if len(counts) != 1:
        raise CostModelError(f"the report's modes disagree on tokens per chunk: {sorted(counts)}")
    return counts.pop()


def format_projection(record: dict[str, Any]) -> str:
    lines = [
        f"cost model: {record['device']}, {record['config']['dtype']}, prompt {record['config']['prompt']}, "
        f"backend {record['backend']}"
    ]
    for name, rec in record["shapes"].items():
        if "error" in rec:
            lines.append(f"{name}: {rec['error']}")
            continue
        lines.append(f"\n{name} ({rec['parameters'] / 1e6:.1f}M parameters)")
        lines.append(f"{'n':>4}{'prefill':>10}{'AR step':>10}{'pass':>10}{'fused':>10}{'pass/step':>11}")
        for f in rec["forwards"]:
            lines.append(
                f"{f['chunk_tokens']:>4}{f['prefill_ms']['median']:>10.3f}{f['ar_step_ms']['median']:>10.3f}"
                f"{f['jacobi_pass_ms']['median']:>10.3f}{f['fused_ms']['median']:>10.3f}{f['pass_over_step']:>11.2f}"
            )
            if "ar_chunk_measured_ms" in f:
                projected = f["prefill_ms"]["median"] + (f["chunk_tokens"] - 1) * f["ar_step_ms"]["median"]
                lines.append(
                    f"     AR chunk through decode(): {f['ar_chunk_measured_ms']['median']:.2f} ms "
                    f"(projected {projected:.2f})"
                )
        lines.append(f"{'decoder':<28}{'iters':>7}{'ms/chunk':>10}{'chunks/s':>10}{'vs AR':>8}")
        for r in rec["projection"]:
            lines.append(
                f"{r['decoder']:<28}{r['iterations']:>7.2f}{r['ms_per_chunk']:>10.2f}"
                f"{r['chunks_per_s']:>10.1f}{r['speedup_vs_ar']:>7.2f}x"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- latency against control


KEEP_TOLERANCE = 0.05  # success within this of the paused success counts as kept


def delay_curves(report: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Success against delay (in control ticks) per curve name, from an evaluation report; {} when it
    has none. Read from `success_vs_delay` (a list of {decoder, delay_ticks, success_rate} or a dict of
    name -> [{delay_ticks, success_rate}] / [[d, success]]) and from modes whose `mode` names a
    `delay_ticks` (curve name `<policy>_<decoding>`, plus `_<scheduling>` when the mode names one)."""
    curves: dict[str, list[tuple[float, float]]] = {}

    def add(name, delay, success) -> None:
        if name is not None and delay is not None and success is not None:
            curves.setdefault(str(name), []).append((float(delay), float(success)))

    def success_of(point: dict):
        return point.get("success_rate", point.get("success"))

    raw = report.get("success_vs_delay")
    if isinstance(raw, list):
        for p in raw:
            if isinstance(p, dict):
                add(p.get("decoder", p.get("name")), p.get("delay_ticks"), success_of(p))
    elif isinstance(raw, dict):
        for name, points in raw.items():
            for p in points if isinstance(points, list) else []:
                if isinstance(p, dict):
                    add(name, p.get("delay_ticks"), success_of(p))
                elif isinstance(p, list | tuple) and len(p) == 2:
                    add(name, p[0], p[1])
    for row in report.get("modes", {}).values():
        mode = row.get("mode", {})
        if mode.get("delay_ticks") is None:
            continue
        name = f"{mode.get('policy')}_{mode.get('decoding')}"
        if mode.get("scheduling"):
            name += f"_{mode['scheduling']}"
        add(name, mode["delay_ticks"], row.get("success_rate"))
    return {k: sorted(set(v)) for k, v in curves.items()}


def success_at(curve: list[tuple[float, float]], delay: float) -> float | None:
    """Linear interpolation of a success-against-delay curve; None beyond its last measured delay."""
    if not curve or delay > curve[-1][0]:
        return None
    if delay <= curve[0][0]:
        return curve[0][1]
    for (d0, s0), (d1, s1) in zip(curve, curve[1:], strict=False):
        if d0 <= delay <= d1:
            return s0 if d1 == d0 else s0 + (s1 - s0) * (delay - d0) / (d1 - d0)
    return None


def realtime_points(report: dict[str, Any], control_hz: float) -> list[dict[str, Any]]:
    """The report's rows measured under the real-time clock: latency, delay in ticks, success."""
    rows = []
    for name, row in report.get("modes", {}).items():
        if row.get("mode", {}).get("clock") != "realtime":
            continue
        ms = row.get("ms_per_chunk_p50")
        rows.append(
            {
                "mode": name,
                "ms_per_chunk_p50": ms,
                "delay_ticks": None if ms is None else ms * control_hz / 1e3,
                "success_rate": row.get("success_rate"),
                "held_fraction": row.get("held_fraction"),
                "late_chunks": row.get("late_chunks"),
            }
        )
    return rows


def latency_table(
    costmodel_record: dict[str, Any],
    report: dict[str, Any],
    rates_hz: tuple[float, ...] = (10.0, 30.0, 80.0),
    sim_hz: float = 80.0,
) -> tuple[str, dict[str, Any]]:
    """Markdown and a record: each scale's projected ms per chunk as a delay in control ticks at each
    rate, and, where the report has a success-against-delay curve for the decoder, the success read
    off it at that delay and whether it stays within KEEP_TOLERANCE of the paused success."""
    curves = delay_curves(report)
    rows = []
    for scale, rec in costmodel_record["shapes"].items():
        for p in rec.get("projection", []):
            key = f"{p['policy']}_{p['mode']}"
            matching = {name: c for name, c in curves.items() if name == key or name.startswith(key + "_")}
            row = {
                "scale": scale,
                "parameters": rec.get("parameters"),
                "decoder": p["decoder"],
                "ms_per_chunk": p["ms_per_chunk"],
                "paused_success": p.get("paused_success"),
                "rates": {},
            }
            for hz in rates_hz:
                delay = p["ms_per_chunk"] * hz / 1e3
                cell: dict[str, Any] = {"delay_ticks": delay, "curves": {}}
                for name, curve in matching.items():
                    s = success_at(curve, delay)
                    paused = p.get("paused_success")
                    keeps = None if s is None or paused is None else s >= paused - KEEP_TOLERANCE
                    cell["curves"][name] = {"success": s, "keeps": keeps}
                row["rates"][f"{hz:g}"] = cell
            rows.append(row)
    points = realtime_points(report, sim_hz)
    lines = [
        "# Projected latency against control rate",
        "",
        f"ms per chunk projected from forwards measured on {costmodel_record['device']} "
        f"({costmodel_record['config']['dtype']}, backend {costmodel_record.get('backend', '?')}, prompt "
        f"{costmodel_record['config']['prompt']} positions, random weights) and the iterations per chunk of "
        f"the report (n = {costmodel_record['report_chunk_tokens']} tokens). A delay of d ticks at f Hz is "
        "ms x f / 1000: the chunk steps that pass while the chunk is computed.",
        "",
    ]
    head = (
        "| scale | decoder | ms/chunk | paused success | "
        + " | ".join(f"{hz:g} Hz" for hz in rates_hz)
        + " |"
    )
    lines += [head, "|" + " --- |" * (4 + len(rates_hz))]
    for r in rows:
        cells = []
        for cell in r["rates"].values():
            text = f"{cell['delay_ticks']:.2f} ticks"
            for name, c in cell["curves"].items():
                if c["success"] is None:
                    text += f"; {name}: beyond the curve"
                else:
                    text += f"; {name}: {c['success']:.2f} ({'keeps' if c['keeps'] else 'loses'})"
            cells.append(text)
        paused = "" if r["paused_success"] is None else f"{r['paused_success']:.2f}"
        lines.append(
            f"| {r['scale']} | {r['decoder']} | {r['ms_per_chunk']:.2f} | {paused} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append("")
    if curves:
        lines.append(
            "Success-against-delay curves read: "
            + "; ".join(f"{k}: " + ", ".join(f"d={d:g} {s:.2f}" for d, s in v) for k, v in curves.items())
            + f". 'keeps': within {KEEP_TOLERANCE:.2f} of the decoder's paused success."
        )
    else:
        lines.append(
            "Success against delay: **pending**. The report has no delay sweep yet (no `success_vs_delay`, "
            "no mode with `delay_ticks`), so no success is read off; the real-time rows it does have are below."
        )
    lines += [
        "",
        f"## Real-time rows of the report (its own machine; the simulation's control rate {sim_hz:g} Hz)",
        "",
        "| mode | ms/chunk p50 | delay (ticks) | success | held fraction | late chunks |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        ms = "" if p["ms_per_chunk_p50"] is None else f"{p['ms_per_chunk_p50']:.1f}"
        d = "" if p["delay_ticks"] is None else f"{p['delay_ticks']:.2f}"
        held = "" if p["held_fraction"] is None else f"{p['held_fraction']:.3f}"
        lines.append(f"| {p['mode']} | {ms} | {d} | {p['success_rate']} | {held} | {p['late_chunks']} |")
    if not points:
        lines.append("| (none) | | | | | |")
    record = {
        "rates_hz": list(rates_hz),
        "sim_hz": sim_hz,
        "curves": curves,
        "rows": rows,
        "realtime": points,
    }
    return "\n".join(lines) + "\n", record
