"""The decode benchmark (`ceed bench decode`): ms per chunk, iterations and action deviation for every decoding mode.

For a checkpoint (or a fresh policy of a preset) and a list of observations (frames of a LeRobotDataset
when given, else synthetic ones, which the JSON says), the prefix embeddings are computed once per
observation and then every decoding variant decodes every observation: AR (the reference), exact
Jacobi from each initial-guess strategy, and early exit over a sigma sweep and a tau sweep. Per
variant: ms per chunk p50/p95 (wall clock of `decode()`, synchronised on CUDA), iterations and forward
passes per chunk, tokens per forward, speedup versus AR measured in the same run, the mean absolute
action deviation from AR and the share of chunks identical to AR.

Writes one JSON record, prints a table and draws speedup versus action deviation (PNG).

Decoding imports nothing else of the project: the job that loads or builds the policy and calls
`run` is `ceed_vla.policy.bench_decode`. LeRobot is imported only when a dataset is given.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ceed_vla.atomic import atomic_write_bytes
from ceed_vla.keys import IMAGE_KEY, STATE_KEY, TASK_KEY
from ceed_vla.stats import percentile

from .config import DecodeConfig
from .decode import decode
from .guess import guess_from_previous_chunk

SYNTHETIC_TASKS = (
    "push the puck to the goal",
    "open the drawer",
    "press the button from the top",
    "reach the red target",
    "open the door",
)
INIT_VARIANTS = ("constant", "random", "first_token", "prev_tail")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class BenchConfigError(ValueError):
    """A `ceed bench decode` option has a value that cannot work."""


@dataclass
class DecodeBenchConfig:
    checkpoint: str | None = None  # a policy checkpoint directory; None builds a fresh policy of `preset`
    preset: str = "tiny"
    dataset: str | None = None  # LeRobotDataset root for real observations; None = synthetic
    repo_id: str | None = None
    observations: str | None = None  # a file written by `save_observations`, read instead of a dataset
    save_observations: str | None = None  # write the observations used to this file (.pt)
    samples: int = 8  # observations (chunks) per variant
    repeats: int = 2  # timed decodes per observation and variant
    warmup: int = 2  # untimed decodes before each variant
    device: str = "auto"
    dtype: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 on CUDA, fp32 elsewhere)
    backend: str = "auto"
    sigmas: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    taus: tuple[int, ...] = (1, 2, 4, 8, 16)
    fused_sigmas: tuple[int, ...] = (1, 2, 3)  # early exit with the prefill carrying the guess block
    inits: tuple[str, ...] = INIT_VARIANTS
    sweep_init: str = "prev_tail"
    steps_executed: int | None = None  # chunk steps executed between observations; None = the policy's
    seed: int = 0
    threads: int | None = None
    out: str = "benchmarks/results/decode.json"
    plot: bool = True

    def __post_init__(self) -> None:
        self.sigmas = tuple(int(s) for s in self.sigmas)
        self.taus = tuple(int(t) for t in self.taus)
        self.fused_sigmas = tuple(int(x) for x in self.fused_sigmas)
        self.inits = tuple(self.inits)
        if self.samples < 1:
            raise BenchConfigError(f"samples={self.samples} must be >= 1")
        if self.repeats < 1:
            raise BenchConfigError(f"repeats={self.repeats} must be >= 1")
        if self.warmup < 0:
            raise BenchConfigError(f"warmup={self.warmup} must be >= 0")
        if self.dtype not in (*DTYPES, "auto"):
            raise BenchConfigError(f"dtype={self.dtype!r} is not one of {(*DTYPES, 'auto')}")
        if any(s < 1 for s in (*self.sigmas, *self.fused_sigmas)):
            raise BenchConfigError(f"sigmas={self.sigmas}, fused_sigmas={self.fused_sigmas} must all be >= 1")
        if any(t < 0 for t in self.taus):
            raise BenchConfigError(f"taus={self.taus} must all be >= 0")
        for init in (*self.inits, self.sweep_init):
            if init not in INIT_VARIANTS:
                raise BenchConfigError(f"init {init!r} is not one of {INIT_VARIANTS}")
        if self.checkpoint is not None and not Path(self.checkpoint).is_dir():
            raise BenchConfigError(f"checkpoint={self.checkpoint!r} is not a directory")
        if self.dataset is not None and not Path(self.dataset).is_dir():
            raise BenchConfigError(f"dataset={self.dataset!r} is not a directory (a LeRobotDataset root)")
        if self.dataset is not None and self.observations is not None:
            raise BenchConfigError("give --dataset or --observations, not both")
        if self.observations is not None and not Path(self.observations).is_file():
            raise BenchConfigError(
                f"observations={self.observations!r} is not a file; write one with "
                "`ceed bench decode --dataset ROOT --save-observations FILE`"
            )
        if self.steps_executed is not None and self.steps_executed < 1:
            raise BenchConfigError(f"steps_executed={self.steps_executed} must be >= 1")


@dataclass(frozen=True)
class Variant:
    name: str
    decode: DecodeConfig
    prev_tail: bool = False  # initial guess from this variant's previous chunk


def build_variants(cfg: DecodeBenchConfig, n_bins: int, backend: str) -> list[Variant]:
    def make(name: str, init: str, **kwargs) -> Variant:
        strategy = "constant" if init == "prev_tail" else init
        config = DecodeConfig(n_bins=n_bins, backend=backend, init=strategy, seed=cfg.seed, **kwargs)
        return Variant(name, config, prev_tail=init == "prev_tail")

    variants = [Variant("ar", DecodeConfig(mode="ar", n_bins=n_bins, backend=backend))]
    variants += [make(f"jacobi/{init}", init, mode="jacobi") for init in cfg.inits]
    variants += [make(f"ee/sigma={s}", cfg.sweep_init, mode="early_exit", sigma=s) for s in cfg.sigmas]
    variants += [make(f"ee/tau={t}", cfg.sweep_init, mode="early_exit", tau=t) for t in cfg.taus]
    if cfg.fused_sigmas and cfg.sweep_init != "first_token":  # the fused pass computes the first token
        fused = dict(fused_prefill=True)
        variants += [make(f"jacobi/{cfg.sweep_init}/fused", cfg.sweep_init, mode="jacobi", **fused)]
        variants += [
            make(f"ee/sigma={s}/fused", cfg.sweep_init, mode="early_exit", sigma=s, **fused)
            for s in cfg.fused_sigmas
        ]
    return variants


def measure_prefill(policy, prefixes, cfg: DecodeBenchConfig, backend: str) -> float:
    """ms p50 of the prefill alone (the floor of any mode that runs it), same prefixes and repeats."""
    from .backends import make_backend

    lm, n = policy.lm, policy.chunk_tokens
    device = prefixes[0][0].device
    times = []
    for i in range(cfg.warmup + len(prefixes) * cfg.repeats):
        embeds, mask = prefixes[i % len(prefixes)]
        impl = make_backend(lm, backend, policy.action_token_start, policy.n_bins)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        impl.prefill(embeds.to(lm.get_input_embeddings().weight.dtype), mask.to(torch.bool), n).argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= cfg.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return percentile(times, 50)


# ----------------------------------------------------------------------------------- model and data


def resolve_device_dtype(cfg: DecodeBenchConfig) -> tuple[torch.device, torch.dtype]:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if cfg.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, DTYPES[cfg.dtype]


def synthetic_observations(policy, count: int, seed: int) -> list[dict[str, Any]]:
    size = policy.config.vision.image_size or 64
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            IMAGE_KEY: torch.rand(1, 3, size, size, generator=gen),
            STATE_KEY: torch.rand(1, policy.config.state_dim, generator=gen) * 2 - 1,
            TASK_KEY: [SYNTHETIC_TASKS[i % len(SYNTHETIC_TASKS)]],
        }
        for i in range(count)
    ]


OBSERVATIONS_FORMAT = "ceed-vla decode-bench observations v1"


def save_observations(path: str | Path, observations: list[dict[str, Any]], source: str) -> None:
    """Write observations to a .pt file that `load_observations` reads back without LeRobot, so real
    frames can be benchmarked on a machine that has only torch (a GPU box, say)."""
    import io

    buf = io.BytesIO()
    torch.save({"format": OBSERVATIONS_FORMAT, "source": source, "observations": observations}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_observations(path: str | Path, count: int) -> tuple[list[dict[str, Any]], str]:
    """The first `count` observations of a file written by `save_observations`, and their source."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise BenchConfigError(f"{path} is not an observations file ({err})") from err
    if not isinstance(blob, dict) or blob.get("format") != OBSERVATIONS_FORMAT:
        raise BenchConfigError(
            f"{path} is not an observations file of format {OBSERVATIONS_FORMAT!r}; "
            "write one with `ceed bench decode --dataset ROOT --save-observations FILE`"
        )
    observations = blob["observations"]
    if len(observations) < count:
        raise BenchConfigError(
            f"{path} holds {len(observations)} observations but --samples is {count}; "
            f"pass --samples {len(observations)} or save more"
        )
    return observations[:count], str(blob["source"])


def dataset_observations(root: str, repo_id: str | None, count: int, stride: int) -> list[dict[str, Any]]:
    """Frames 0, stride, 2 * stride, ... of the dataset: consecutive observations of a control loop that
    executes `stride` steps of each chunk (until an episode ends)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(repo_id or f"local/{Path(root).name}", root=root)
    if len(ds) == 0:
        raise BenchConfigError(f"dataset {root} has no frames")
    return [_observation(ds, ds[(i * stride) % len(ds)]) for i in range(count)]


def dataset_observation_runs(
    root: str, repo_id: str | None, runs: int, run_length: int, stride: int
) -> tuple[list[dict[str, Any]], list[int]]:
    """`run_length` consecutive observations of a control loop executing `stride` steps per chunk
    (frames start, start + stride, ...), from each of `runs` episodes spread evenly over the dataset
    (so every task of a multi-task recording is in). -> (observations, the episode of each)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(repo_id or f"local/{Path(root).name}", root=root)
    if len(ds) == 0:
        raise BenchConfigError(f"dataset {root} has no frames")
    episode = torch.as_tensor(ds.hf_dataset["episode_index"]).flatten()
    ids = episode.unique().tolist()
    if runs > len(ids):
        raise BenchConfigError(f"dataset {root} has {len(ids)} episodes; ask for at most that many runs")
    observations, run_of = [], []
    for e in (ids[round(i * (len(ids) - 1) / max(runs - 1, 1))] for i in range(runs)):
        frames = torch.nonzero(episode == e).flatten().tolist()
        for index in frames[:: max(stride, 1)][:run_length]:
            observations.append(_observation(ds, ds[index]))
            run_of.append(int(e))
    return observations, run_of


def _observation(ds, item) -> dict[str, Any]:
    """A dataset item as the policy's batch of one: every camera, the state, the task."""
    return {
        **{k: item[k][None].float() for k in ds.meta.camera_keys},
        STATE_KEY: item[STATE_KEY][None].float(),
        TASK_KEY: [item["task"]],
    }


# ----------------------------------------------------------------------------------------- measuring


def run_variant(
    policy, variant: Variant, prefixes, reference_bins, steps_executed: int, cfg: DecodeBenchConfig
) -> dict[str, Any]:
    """Decode every prefix `repeats` times (after `warmup` untimed decodes); compare with AR."""
    lm, n, start = policy.lm, policy.chunk_tokens, policy.action_token_start
    embeds0, mask0 = prefixes[0]
    for _ in range(cfg.warmup):
        decode(lm, embeds0, mask0, n, start, variant.decode)
    times, iterations, passes, deviation, identical = [], [], [], [], []
    previous = None
    for (embeds, mask), ref in zip(prefixes, reference_bins, strict=True):
        guess = None
        if variant.prev_tail and previous is not None:
            guess = guess_from_previous_chunk(previous, steps_executed, policy.config.action_dim)
        for r in range(cfg.repeats):
            out = decode(lm, embeds, mask, n, start, variant.decode, init_guess=guess)
            times.append(out.stats.wall_ms)
            if r == 0:
                iterations.append(out.stats.mean_iterations)
                passes.append(out.stats.forward_passes)
                bins = out.bins
        previous = bins
        delta = policy.tokens_to_actions(bins) - policy.tokens_to_actions(ref)  # [1, K, D]
        deviation.append(float(delta.abs().mean()))
        identical.append(bool(torch.equal(bins, ref)))
    return {
        "name": variant.name,
        "mode": variant.decode.mode,
        "init": "prev_tail" if variant.prev_tail else variant.decode.init,
        "sigma": variant.decode.sigma,
        "tau": variant.decode.tau,
        "ms_p50": percentile(times, 50),
        "ms_p95": percentile(times, 95),
        "ms_mean": sum(times) / len(times),
        "iterations_per_chunk": sum(iterations) / len(iterations),
        "forward_passes_per_chunk": sum(passes) / len(passes),
        "tokens_per_forward": n / (sum(passes) / len(passes)),
        "action_deviation_from_ar": sum(deviation) / len(deviation),
        "identical_to_ar": sum(identical) / len(identical),
    }


def measure_step(
    device: torch.device, dtype: torch.dtype, n: int, n_bins: int, calls: int = 200
) -> dict[str, float]:
    """Microseconds per Jacobi step (after the forward) for each implementation this device runs:
    the Triton kernel (CUDA only) and the PyTorch reference, on logits of the benchmark's shape."""
    from .step import jacobi_step, triton_available

    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(1, n - 1, n_bins, generator=gen, device=device).to(dtype)  # [1, n-1, V]
    prev = torch.randint(0, n_bins, (1, n), generator=gen, device=device)  # [1, n]
    fixed = torch.ones(1, dtype=torch.long, device=device)
    impls = ["torch"] + (["triton"] if device.type == "cuda" and triton_available() else [])
    result = {}
    for impl in impls:
        for _ in range(10):
            jacobi_step(logits, prev, fixed, impl=impl)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            jacobi_step(logits, prev, fixed, impl=impl)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result[impl] = (time.perf_counter() - start) / calls * 1e6
    return result


def run(cfg: DecodeBenchConfig, policy, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every variant on ``policy`` (a VLA policy already on its device and dtype: ``lm``,
    ``prefix_embeddings``, ``chunk_tokens``, ...); ``source`` says where it came from (the record's
    "model"). `ceed_vla.policy.bench_decode` loads or builds the policy for `ceed bench decode`."""
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, dtype = policy.device, policy.lm.get_input_embeddings().weight.dtype
    if source is None:
        source = {"given": type(policy).__name__, "parameters": sum(p.numel() for p in policy.parameters())}
    steps = cfg.steps_executed or policy.config.n_action_steps or policy.config.chunk_size
    if cfg.dataset:
        observations = dataset_observations(cfg.dataset, cfg.repo_id, cfg.samples, steps)
        obs_source = f"dataset:{Path(cfg.dataset).resolve()}"
    elif cfg.observations:
        observations, source_of_file = load_observations(cfg.observations, cfg.samples)
        obs_source = f"file:{Path(cfg.observations).name} ({source_of_file})"
    else:
        observations = synthetic_observations(policy, cfg.samples, cfg.seed)
        obs_source = "synthetic (random images and states; no dataset given)"
    if cfg.save_observations:
        save_observations(cfg.save_observations, observations, obs_source)
    with torch.inference_mode():
        prefixes = [policy.prefix_embeddings(obs) for obs in observations]
    variants = build_variants(cfg, policy.n_bins, cfg.backend)
    n, start = policy.chunk_tokens, policy.action_token_start
    reference = [decode(policy.lm, e, m, n, start, variants[0].decode).bins for e, m in prefixes]  # AR
    rows = []
    for variant in tqdm(variants, desc="decode variants", unit="variant"):
        row = run_variant(policy, variant, prefixes, reference, steps, cfg)
        rows.append(row)
    ar_p50, ar_mean = rows[0]["ms_p50"], rows[0]["ms_mean"]
    for row in rows:
        row["speedup_vs_ar"] = ar_p50 / row["ms_p50"]
        row["speedup_vs_ar_mean"] = ar_mean / row["ms_mean"]
    backend = decode(policy.lm, *prefixes[0], 1, policy.action_token_start, variants[0].decode).stats.backend
    with torch.inference_mode():
        prefill_ms = measure_prefill(policy, prefixes, cfg, cfg.backend)
    by_name = {r["name"]: r for r in rows}
    fused1 = by_name.get("ee/sigma=1/fused")
    step_us = measure_step(device, dtype, n, policy.n_bins) if n > 1 else {}
    return {
        "benchmark": "decode",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "device_type": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "backend": backend,
        "model": source,
        "observations": obs_source,
        "samples": cfg.samples,
        "repeats": cfg.repeats,
        "chunk_tokens": policy.chunk_tokens,
        "chunk_size": policy.config.chunk_size,
        "action_dim": policy.config.action_dim,
        "prompt_positions": int(prefixes[0][0].shape[1]),
        "steps_executed_between_chunks": steps,
        "config": asdict(cfg),
        "jacobi_step_us": step_us,
        "prefill_ms_p50": prefill_ms,
        # the one-forward-per-chunk goal: early exit at sigma 1 against the prefill alone
        "sigma1_fused_over_prefill": None if fused1 is None else fused1["ms_p50"] / prefill_ms,
        "sigma1_over_prefill": by_name["ee/sigma=1"]["ms_p50"] / prefill_ms
        if "ee/sigma=1" in by_name
        else None,
        "results": rows,
    }


# ------------------------------------------------------------------------------------------- output


def format_table(record: dict[str, Any]) -> str:
    head = f"{'variant':<20}{'ms p50':>9}{'ms p95':>9}{'iters':>8}{'fwd':>7}{'tok/fwd':>9}{'speedup':>9}{'dev':>9}{'=AR':>6}"
    lines = [
        f"decode benchmark: {record['device']} {record['dtype']}, backend {record['backend']}, n = "
        f"{record['chunk_tokens']} tokens, {record['samples']} observations ({record['observations']})",
        head,
        "-" * len(head),
    ]
    if record.get("prefill_ms_p50") is not None:
        lines.insert(1, f"prefill alone: {record['prefill_ms_p50']:.2f} ms p50")
    step = ", ".join(f"{k} {v:.1f} us" for k, v in record.get("jacobi_step_us", {}).items())
    if step:
        lines.insert(1, f"one Jacobi step after the forward: {step}")
    for r in record["results"]:
        lines.append(
            f"{r['name']:<20}{r['ms_p50']:>9.2f}{r['ms_p95']:>9.2f}{r['iterations_per_chunk']:>8.2f}"
            f"{r['forward_passes_per_chunk']:>7.2f}{r['tokens_per_forward']:>9.2f}{r['speedup_vs_ar']:>8.2f}x"
            f"{r['action_deviation_from_ar']:>9.4f}{r['identical_to_ar']:>6.2f}"
        )
    return "\n".join(lines)


def plot(record: dict[str, Any], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = {"ar": "black", "jacobi": "tab:blue", "early_exit": "tab:orange"}
    for r in record["results"]:
        ax.scatter(r["action_deviation_from_ar"], r["speedup_vs_ar"], color=groups[r["mode"]], s=28)
        ax.annotate(
            r["name"],
            (r["action_deviation_from_ar"], r["speedup_vs_ar"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("mean |action - AR action| (action units)")
    ax.set_ylabel("speedup vs AR (p50 ms per chunk)")
    ax.set_title(f"decode: {record['device']} {record['dtype']}, n={record['chunk_tokens']}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
