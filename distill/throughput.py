"""Training throughput of the shared trainer's step with the batch already on the device.

Two measurements, each through `Trainer._train_step` (forward under the trainer's autocast, backward,
clipping, AdamW, scheduler, EMA), so the figure is the step the product trains with and not the
data loader's or the disk's:

- teacher: the tiny policy's next-token step (`NextTokenLoss`) on synthetic frames of the recorded
  shape, at each batch size given;
- distillation: one `DistillLoss` step (global consistency against the frozen teacher plus w * AR, as
  the full profile distils) of a policy whose LM has a larger shape (`distill_lm`), on random tokens,
  with the peak device memory of the step.

Images, states, actions and tokens are random: a step's cost does not depend on their values.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from ceed_vla.policy import ActionTokenizer, StateNormalizer, VLAPolicy, make_config
from ceed_vla.policy.config import LMConfig, VisionConfig
from ceed_vla.policy.text_tokenizer import train_instruction_tokenizer
from ceed_vla.policy.trainer import NextTokenLoss, TrainConfig, Trainer

from .losses import GT, L1, STATE, TARGET, TEACHER, DistillLoss, DistillLossConfig

TASKS = ("reach the red goal", "push the puck to the goal", "open the drawer", "press the button")


@dataclass
class ThroughputConfig:
    device: str = "cuda"
    precision: str = "bf16"
    image_size: int = 64
    chunk_size: int = 8
    teacher_batches: tuple[int, ...] = (32, 256)
    teacher_steps: int = 30  # timed steps per batch size
    warmup_steps: int = 5
    first_step_weight: float = 8.0  # as the profiles train the teacher
    ema_decay: float = 0.999
    distill_lm: LMConfig = field(
        default_factory=lambda: LMConfig(
            hidden_size=896, num_layers=24, num_heads=14, intermediate_size=4864, max_position_embeddings=512
        )
    )
    distill_grid: int = 16  # image tokens per side: 256 patch tokens, a VLA-sized prompt
    distill_batch: int = 16
    distill_steps: int = 5
    distill_warmup: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.distill_lm, dict):
            self.distill_lm = LMConfig(**self.distill_lm)
        self.teacher_batches = tuple(int(b) for b in self.teacher_batches)
        if min(self.teacher_batches, default=1) < 1 or self.distill_batch < 1:
            raise ValueError(
                f"batch sizes must be >= 1, got teacher_batches={self.teacher_batches}, "
                f"distill_batch={self.distill_batch}"
            )
        if min(self.teacher_steps, self.distill_steps) < 1:
            raise ValueError(
                f"teacher_steps={self.teacher_steps} and distill_steps={self.distill_steps} must be >= 1"
            )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _policy(config, seed: int) -> VLAPolicy:
    torch.manual_seed(seed)
    tokenizer = train_instruction_tokenizer(list(TASKS), vocab_size=config.text_vocab_size)
    actions = torch.rand(512, config.action_dim) * 2 - 1
    states = torch.rand(512, config.state_dim)
    return VLAPolicy.build(config, tokenizer, ActionTokenizer.fit(actions), StateNormalizer.fit(states))


def _observations(config, batch: int, image_size: int, gen: torch.Generator) -> dict[str, Any]:
    obs: dict[str, Any] = {
        key: torch.rand(batch, 3, image_size, image_size, generator=gen) for key in config.image_keys
    }
    obs["observation.state"] = torch.rand(batch, config.state_dim, generator=gen)
    obs["task"] = [TASKS[i % len(TASKS)] for i in range(batch)]
    return obs


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _trainer(policy, loss, batch_size: int, cfg: ThroughputConfig, out: str) -> Trainer:
    config = TrainConfig(
        output_dir=out, steps=10**6, batch_size=batch_size, warmup_steps=1, precision=cfg.precision,
        device=cfg.device, ema_decay=cfg.ema_decay, log_every=10**6, save_every=10**6, val_every=10**6,
    )  # fmt: skip
    # the trainer checks its dataset's length only; batches are fed to its step directly
    return Trainer(policy.train(), loss, [None] * batch_size, config)


def _time_steps(trainer: Trainer, batch: dict[str, Any], warmup: int, steps: int) -> dict[str, Any]:
    device = trainer.device
    for _ in range(warmup):
        trainer._train_step(batch)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step, loss = [], None
    for _ in range(steps):
        t0 = time.perf_counter()
        row = trainer._train_step(batch)  # reads the loss back: a synchronising step
        _sync(device)
        per_step.append(time.perf_counter() - t0)
        loss = row["loss"]
    return {
        "step_ms_median": statistics.median(per_step) * 1e3,
        "step_ms_min": min(per_step) * 1e3,
        "samples_per_s": len(batch["observation.state"]) / statistics.median(per_step),
        "loss_last": loss,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def teacher_throughput(cfg: ThroughputConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Samples/s of the tiny teacher's training step at each batch size."""
    config = make_config(
        "tiny",
        chunk_size=cfg.chunk_size,
        aux_final_state_weight=1.0,
        vision=VisionConfig(image_size=cfg.image_size),
    )
    device = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for batch_size in cfg.teacher_batches:
        policy = _policy(config, cfg.seed)
        batch = _observations(config, batch_size, cfg.image_size, gen)
        batch["action"] = torch.rand(batch_size, cfg.chunk_size, config.action_dim, generator=gen) * 2 - 1
        batch["action_is_pad"] = torch.zeros(batch_size, cfg.chunk_size, dtype=torch.bool)
        batch["episode.final_state"] = torch.rand(batch_size, config.state_dim, generator=gen)
        with tempfile.TemporaryDirectory() as out:
            trainer = _trainer(policy, NextTokenLoss(cfg.first_step_weight), batch_size, cfg, out)
            result = _time_steps(trainer, _to(batch, trainer.device), cfg.warmup_steps, cfg.teacher_steps)
        rows.append({"batch_size": batch_size, "parameters": policy.num_parameters(), **result})
        log(
            f"teacher step, batch {batch_size}: {result['samples_per_s']:.0f} samples/s "
            f"({result['step_ms_median']:.2f} ms a step)"
        )
        del trainer, policy
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def distill_step(cfg: ThroughputConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One distillation step of the larger-shaped policy: its time, samples/s and peak memory."""
    config = make_config(
        "tiny",
        chunk_size=cfg.chunk_size,
        lm=cfg.distill_lm,
        vision=VisionConfig(image_size=cfg.image_size, grid=cfg.distill_grid),
    )
    student = _policy(config, cfg.seed)
    teacher = copy.deepcopy(student)  # the full profile distils against the frozen teacher
    device = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    b, n = cfg.distill_batch, config.chunk_tokens
    batch = _observations(config, b, cfg.image_size, gen)
    for key in (STATE, TARGET, TEACHER, GT):
        batch[key] = torch.randint(0, config.n_bins, (b, n), generator=gen)
    batch[L1] = torch.rand(b, generator=gen) * 0.1
    loss = DistillLoss(DistillLossConfig(w_ar=0.1, target="teacher"), teacher=teacher)
    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(student, loss, b, cfg, out)
        batch = _to(batch, trainer.device)
        with torch.no_grad():
            prompt = int(student.prefix_embeddings(batch)[0].shape[1])
        result = _time_steps(trainer, batch, cfg.distill_warmup, cfg.distill_steps)
    record = {
        "batch_size": b,
        "chunk_tokens": n,
        "prompt_positions": prompt,
        "lm": asdict(cfg.distill_lm),
        "parameters": student.num_parameters(),
        "lm_parameters": sum(p.numel() for p in student.lm.parameters()),
        "loss": "global consistency against the frozen teacher + 0.1 x AR (mixed labels)",
        **result,
    }
    log(
        f"distillation step, {record['parameters'] / 1e9:.3f}B parameters, batch {b}, prompt {prompt}: "
        f"{result['step_ms_median']:.1f} ms, {result['samples_per_s']:.1f} samples/s, peak "
        f"{(result['peak_memory_bytes'] or 0) / 2**30:.2f} GiB"
    )
    del trainer, student, teacher
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record
