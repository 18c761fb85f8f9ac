"""Memory plan for sharded distillation (student + frozen teacher) and its check on CPU.

    python benchmarks/bench_memory.py run --shape tiny --nproc 2       # measured: peak RSS per process
    python benchmarks/bench_memory.py run --shape 0.5b --nproc 2 --steps 3 --batch 2
    python benchmarks/bench_memory.py plan                             # the table for 0.5B/1B/7B x 1-8 GPUs

`run` starts `--nproc` gloo processes (torchrun) that each build a random policy of the shape (a
Llama-style LM with a SigLIP-shaped tower, the pretrained-tower path), a frozen copy as teacher, and
distil for `--steps` steps through the shared trainer with `--sharding fsdp` and activation
checkpointing, fp32. Each records its RSS after start-up, the peak while building, the RSS once
sharded, the peak over the training steps and the peak over the final checkpoint (gathered on rank
0). It writes benchmarks/results/memory_cpu_<shape>.json with the plan's prediction beside it.

`plan` measures bytes per parameter (one real AdamW step) and saved activations (one real block of
each shape at the profile's sequence length, bf16), and writes benchmarks/results/memory_plan.json
and memory_plan.md, with the CPU runs found in benchmarks/results/ as the check.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import functools
import gc
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from ceed_vla.policy import memory_plan as mp

from ceed_vla.atomic import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("push the red puck to the goal", "open the top drawer")


# ------------------------------------------------------------------------------- resident memory


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def release_freed_memory() -> None:
    """Give freed heap pages back to the OS, so that RSS shows what is still held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class PeakSampler:
    """Samples RSS every `period` s in a thread; the peaks are kept per phase, the phase named by
    `phase()` (read at every sample) once `follow` is called, by `enter` before."""

    def __init__(self, period: float = 0.02):
        self.period, self.peaks = period, {}
        self.phase = lambda: "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        name = self.phase()
        self.peaks[name] = max(self.peaks.get(name, 0), rss_bytes())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.period)

    def enter(self, phase: str) -> None:
        self._sample()
        self.phase = lambda: phase

    def follow(self, phase) -> None:
        self._sample()
        self.phase = phase

    def stop(self) -> dict[str, int]:
        self._sample()
        self._stop.set()
        self._thread.join()
        return self.peaks


# ------------------------------------------------------------------------------ model and data


def build_policy(shape: mp.ModelShape, chunk_size: int = 8, action_dim: int = 4):
    """A random policy of `shape`: the LM built from its config, the tower from a SigLIP config (the
    pretrained-tower path, as a user's local model would be restored), random action statistics."""
    from ceed_vla.policy import ActionTokenizer, StateNormalizer, VisionConfig, VLAConfig, VLAPolicy
    from ceed_vla.policy.text_tokenizer import train_instruction_tokenizer
    from ceed_vla.policy.vision import PretrainedTower
    from transformers import AutoModelForCausalLM

    vision_cfg = VisionConfig(kind="pretrained", tower_path=f"(random {shape.tower.name})")
    config = VLAConfig(chunk_size=chunk_size, action_dim=action_dim, state_dim=4, vision=vision_cfg)
    lm = AutoModelForCausalLM.from_config(shape.lm_config(config.n_bins))
    tower = PretrainedTower(vision_cfg, weights=False, tower_config=shape.tower.config().to_dict())
    tokenizer = train_instruction_tokenizer(list(TASKS), vocab_size=64)
    g = torch.Generator().manual_seed(0)
    actions, states = torch.rand(200, action_dim, generator=g) * 2 - 1, torch.rand(200, 4, generator=g)
    return VLAPolicy(
        config, lm, tower, tokenizer, ActionTokenizer.fit(actions), StateNormalizer.fit(states), shape.vocab
    )


class SyntheticDistill(torch.utils.data.Dataset):
    """Observations and Jacobi-trajectory keys drawn from the index (the same in every process)."""

    def __init__(self, size: int, image_size: int, chunk_size: int, action_dim: int, n_bins: int = 256):
        self.size, self.image_size, self.k, self.d, self.n_bins = (
            size,
            image_size,
            chunk_size,
            action_dim,
            n_bins,
        )

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        from ceed_vla.distill.losses import GT, L1, STATE, TARGET, TEACHER

        g = torch.Generator().manual_seed(i)
        n = self.k * self.d
        fixed = torch.randint(0, self.n_bins, (n,), generator=g)
        state = fixed.clone()
        state[int(torch.randint(0, n, (), generator=g)) :] = 0
        return {
            "observation.image": torch.rand(3, self.image_size, self.image_size, generator=g),
            "observation.state": torch.rand(4, generator=g),
            "action": torch.rand(self.k, self.d, generator=g) * 2 - 1,
            "action_is_pad": torch.zeros(self.k, dtype=torch.bool),
            "task": TASKS[i % 2],
            STATE: state,
            TARGET: fixed,
            TEACHER: fixed,
            GT: torch.randint(0, self.n_bins, (n,), generator=g),
            L1: torch.rand((), generator=g) * 0.1,
        }


# ---------------------------------------------------------------------------------- measured run


def worker(shape_name: str, out_dir: Path, steps: int, batch: int, precision: str = "fp32") -> dict:
    """One process of `run`: build, shard, distil `steps` steps, save; RSS at each phase."""
    from ceed_vla.distill.losses import DistillLoss, DistillLossConfig
    from ceed_vla.policy import TrainConfig, Trainer
    from torch.distributed.tensor import DTensor

    sampler = PeakSampler()
    start = rss_bytes()
    sampler.enter("build")
    torch.manual_seed(0)
    shape = mp.CPU_SHAPES[shape_name]
    student = build_policy(shape).train()
    teacher = copy.deepcopy(student).eval()
    data = SyntheticDistill(4 * batch, shape.tower.image_size, 8, 4)
    config = TrainConfig(
        output_dir=str(out_dir / "run"), steps=steps, batch_size=batch, lr=1e-4, warmup_steps=1,
        log_every=1, save_every=steps, val_every=steps, precision=precision, device="cpu",
        sharding="fsdp", activation_checkpointing=True,
    )  # fmt: skip
    loss = DistillLoss(DistillLossConfig(w_ar=0.1, target="teacher"), teacher=teacher)
    trainer = Trainer(student, loss, data, config, frozen=teacher)
    release_freed_memory()
    sharded = rss_bytes()

    def local(m):
        return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in m.parameters())

    # The steps until the trainer's step counter reaches `steps`; then its final checkpoint.
    sampler.follow(lambda: "steps" if trainer.step < steps else "checkpoint")
    t0 = time.perf_counter()
    summary = trainer.fit()
    peaks = sampler.stop()
    rows = [json.loads(line) for line in (out_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "rank": trainer.info.rank,
        "world": trainer.info.world,
        "parameters": sum(p.numel() for p in student.parameters()),
        "local_parameters": {"student": local(student), "teacher": local(teacher)},
        "rss_start": start,
        "rss_peak_build": peaks["build"],
        "rss_sharded": sharded,
        "rss_peak_steps": peaks["steps"],
        "rss_peak_checkpoint": peaks["checkpoint"],
        "seconds": time.perf_counter() - t0,
        "train_seconds": summary["train_seconds"],
        "losses": [r["loss"] for r in rows if r["split"] == "train"],
    }


def predicted(shape_name: str, world: int, batch: int, precision: str = "fp32") -> dict:
    """The plan's bytes for a CPU run (activation checkpointing on). bf16 is the GPU recipe (bf16
    compute copies and teacher, fp32 master weights), with AdamW's CPU temporaries."""
    shape = mp.CPU_SHAPES[shape_name]
    workload = replace(mp.Workload(), global_batch=batch)
    compute = torch.bfloat16 if precision == "bf16" else torch.float32
    b = replace(measured_bytes(compute), step_transient=measured_bytes(torch.float32).step_transient)
    act = mp.activation_bytes(shape, workload, compute)
    return mp.per_process(mp.parameter_counts(shape), act, shape, workload, b, world, checkpointing=True)


def run(args: argparse.Namespace) -> dict:
    out_dir = Path(args.work)
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = ["worker", "--shape", args.shape, "--steps", str(args.steps), "--batch", str(args.batch)]
    argv += ["--work", str(out_dir), "--precision", args.precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    subprocess.run([*cmd, __file__, *argv], check=True, env=env)
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(args.nproc)]
    pred = predicted(args.shape, args.nproc, args.batch, args.precision)
    record = {
        "shape": asdict(mp.CPU_SHAPES[args.shape]),
        "processes": args.nproc,
        "steps": args.steps,
        "global_batch": args.batch,
        "precision": args.precision,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "activation_checkpointing": True,
        "ranks": ranks,
        "predicted_bytes_per_process": pred,
        "torch": torch.__version__,
    }
    path = Path(args.output or RESULTS / f"memory_cpu_{args.shape}.json")
    atomic_write_json(path, record)
    print(cpu_table([record]))
    print(f"wrote {path}")
    return record


def cpu_table(records: list[dict]) -> str:
    head = (
        "| shape | processes | rank | start RSS | peak build | sharded RSS | peak steps | peak checkpoint "
        "| predicted model state | measured (peak steps - start) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for rec in records:
        pred = rec["predicted_bytes_per_process"]["total"] / mp.GB
        env = " ".join(f"{k}={v}" for k, v in rec.get("malloc_env", {}).items())
        label = f"{rec['shape']['name']}, {rec.get('precision', 'fp32')}" + (f", {env}" if env else "")
        for r in rec["ranks"]:
            g = {k: r[k] / mp.GB for k in r if k.startswith("rss")}
            lines.append(
                f"| {label} | {rec['processes']} | {r['rank']} | {g['rss_start']:.2f} GB | "
                f"{g['rss_peak_build']:.2f} GB | {g['rss_sharded']:.2f} GB | {g['rss_peak_steps']:.2f} GB | "
                f"{g['rss_peak_checkpoint']:.2f} GB | {pred:.2f} GB | "
                f"{g['rss_peak_steps'] - g['rss_start']:.2f} GB |"
            )
    return head + "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- the plan


@functools.cache
def measured_bytes(compute: torch.dtype = torch.bfloat16) -> mp.Bytes:
    """Bytes per parameter from one real AdamW step on a small Llama (fp32 master weights), and the
    compute dtype's element size for the teacher and the gathered copies. bf16 stands for the GPU
    (AdamW's temporaries measured in its CUDA form), fp32 for the CPU check."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4)
    )  # fmt: skip
    ids = torch.randint(0, 64, (2, 8))
    loss = lambda m: m(input_ids=ids, labels=ids).loss  # noqa: E731
    per = mp.bytes_per_parameter(lm, loss)
    # AdamW runs its foreach implementation on CUDA, one parameter at a time on CPU
    per["step_transient"] = mp.optimizer_step_transient(lm, loss, foreach=compute != torch.float32)
    item = torch.tensor([], dtype=compute).element_size()
    return mp.Bytes(
        per["param"], per["grad"], per["optim"], item, item, per["step_transient"], {"adamw_step": per}
    )


def plan(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    workload = mp.Workload()
    b = measured_bytes()
    shapes = {name: {**mp.SHAPES, **mp.CPU_SHAPES}[name] for name in args.shapes}
    acts = {name: mp.activation_bytes(shape, workload, torch.bfloat16) for name, shape in shapes.items()}
    rows = mp.plan(shapes, workload, b, acts, gpu_gb=args.gpu_gb, headroom_gb=args.headroom_gb)
    checks = [json.loads(p.read_text()) for p in sorted(Path(args.checks).glob("memory_cpu_*.json"))]
    for c in checks:  # the prediction of the plan as it is now
        c["predicted_bytes_per_process"] = predicted(
            c["shape"]["name"], c["processes"], c["global_batch"], c.get("precision", "fp32")
        )
    record = {
        **mp.as_json(shapes, workload, b),
        "activation_bytes_per_sample": acts,
        "gpu_gb": args.gpu_gb,
        "headroom_gb": args.headroom_gb,
        "rows": rows,
        "cpu_checks": [
            {
                "shape": c["shape"]["name"],
                "processes": c["processes"],
                "ranks": c["ranks"],
                "predicted_bytes_per_process": c["predicted_bytes_per_process"],
            }
            for c in checks
        ],  # fmt: skip
    }
    out = Path(args.output or RESULTS / "memory_plan.json")
    atomic_write_json(out, record)
    text = mp.markdown(rows, args.gpu_gb, args.headroom_gb)
    if checks:
        head = "\nChecked on CPU (2 gloo processes, `--sharding fsdp`, activation checkpointing):\n\n"
        text += head + cpu_table(checks)
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="measure peak RSS per process of a sharded distillation on CPU")
    w = sub.add_parser("worker", help="one process of `run` (started by torchrun)")
    for p in (r, w):
        p.add_argument("--shape", choices=sorted(mp.CPU_SHAPES), default="tiny")
        p.add_argument("--steps", type=int, default=3)
        p.add_argument("--batch", type=int, default=2, help="global batch")
        p.add_argument("--work", default="/tmp/ceed_bench_memory", help="run directory (checkpoints)")
        p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    r.add_argument("--nproc", type=int, default=2)
    r.add_argument("--threads", type=int, default=1, help="threads per process")
    r.add_argument("--output", default=None)
    pl = sub.add_parser("plan", help="write the memory plan (JSON + Markdown)")
    pl.add_argument("--gpu-gb", type=float, default=80.0)
    pl.add_argument("--headroom-gb", type=float, default=6.0, help="CUDA context and allocator slack")
    pl.add_argument("--threads", type=int, default=1)
    pl.add_argument(
        "--shapes", nargs="+", default=list(mp.SHAPES), choices=sorted({**mp.SHAPES, **mp.CPU_SHAPES})
    )
    pl.add_argument("--checks", default=str(RESULTS), help="folder of the memory_cpu_*.json runs to show")
    pl.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.command == "worker":
        result = worker(args.shape, Path(args.work), args.steps, args.batch, args.precision)
        atomic_write_json(Path(args.work) / f"rank{result['rank']}.json", result)
    elif args.command == "run":
        run(args)
    else:
        plan(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
