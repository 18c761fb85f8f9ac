"""One trainer for every model here; the loss is an object passed in, not a subclass or a copy.

    loss_fn(model, batch) -> (loss: scalar Tensor, info: dict[str, float])

Teacher training passes `NextTokenLoss()` (the policy's own `forward`); distillation passes its own
loss and dataset. The model must offer `save_to(directory, extra_files, state_dict=None)` (as
`VLAPolicy` does) so a checkpoint is also a loadable policy.

Semantics the trainer promises (and the tests check):
- `batch_size` is the GLOBAL batch. Step s of epoch e uses samples perm_e[s*B:(s+1)*B] of a
  permutation seeded by (seed, e); with W processes each takes a contiguous B/W slice and DDP averages
  gradients, so W processes compute the same update as one process (up to float rounding).
- The loss is a mean over samples, so that average is exact.
- A run resumed from the checkpoint at step s continues with the same batches, learning rate and
  RNG streams as the uninterrupted run: the same weights at every later step (and the same EMA of
  them, when `ema_decay` is on).

Launch several processes with `torchrun --nproc_per_node N` or `accelerate launch --num_processes N`
(both set RANK / WORLD_SIZE / MASTER_ADDR); backend NCCL on CUDA, gloo on CPU.

`sharding="none"` replicates the model on every process (DistributedDataParallel); `"fsdp"` shards
the weights, gradients and optimiser state across them (FSDP2, `sharding.py`), and a frozen model
the loss uses (distillation's teacher, `frozen=`) with them. The same promises hold; a sharded
checkpoint is still one loadable policy (its full weights gathered on rank 0), plus each rank's
shards of the weights and optimiser state under `sharded/` to resume from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ceed_vla.atomic import atomic_savefig

from . import sharding as fsdp
from .checkpoint_io import CheckpointError, atomic_directory, atomic_write_text
from .precision import PRECISIONS, attention_in_fp32, autocast_dtype

TRAINING_STATE_FILE = "training_state.pt"
TRAIN_CONFIG_FILE = "train_config.json"
LAST_FILE = "last"
SHARDED_DIR = "sharded"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"


class LossFn(Protocol):
    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]: ...


class NextTokenLoss:
    """Teacher training: the policy's own next-token cross-entropy over its action tokens.

    `first_step_weight` > 1 up-weights the chunk's first step (see `VLAPolicy.forward`).
    """

    def __init__(self, first_step_weight: float = 1.0):
        if first_step_weight <= 0:
            raise ValueError(f"first_step_weight must be positive, got {first_step_weight!r}")
        self.first_step_weight = first_step_weight

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return model(batch, first_step_weight=self.first_step_weight)


@dataclass
class TrainConfig:
    output_dir: str
    steps: int = 1000
    batch_size: int = 32  # global batch (split across processes)
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    precision: str = "auto"  # "fp32" | "bf16" | "auto" (bf16 where the hardware has it: precision.py)
    save_every: int = 500
    val_every: int = 100
    val_batches: int = 16
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    find_unused_parameters: bool = False
    sharding: str = "none"
    """"none": every process holds the whole model (DDP when there are several); "fsdp": weights,
    gradients and optimiser state are sharded across the processes (FSDP2), the frozen model too."""
    activation_checkpointing: bool = False
    """Recompute the transformer blocks' activations in the backward pass instead of keeping them."""
    ema_decay: float = 0.0
    """Exponential moving average of the weights (0 = off). With it on, validation, `best/`, every
    checkpoint's model file and the model after `fit()` are the averaged weights; the raw weights
    live on in each checkpoint's training state so that a resumed run continues exactly. The decay
    warms up as min(ema_decay, (1 + step) / (10 + step)), so early averages do not remember the
    random initialisation."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "save_every", "val_every", "val_batches", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainConfig.precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}"
            )
        if self.sharding not in fsdp.SHARDINGS:
            raise ValueError(f"TrainConfig.sharding must be one of {fsdp.SHARDINGS}, got {self.sharding!r}")
        if self.num_workers < 0:
            raise ValueError(f"TrainConfig.num_workers must be >= 0, got {self.num_workers!r}")
        if not (isinstance(self.ema_decay, int | float) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(
                f"TrainConfig.ema_decay must be in [0, 1) (0 = off; 0.999 is typical), got {self.ema_decay!r}"
            )


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine from 1 to min_lr_ratio at `steps`."""

    def f(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(always: bool = False) -> DistInfo:
    """Join the process group when launched by torchrun / accelerate (WORLD_SIZE > 1). With `always`
    (sharded training, which needs a group) a lone process makes a group of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if world <= 1 and not dist.is_initialized():
        if not always:
            return DistInfo()
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class EpochBatchSampler(Sampler[list[int]]):
    """This process's share of every global batch of one epoch, from batch `start` on (drop last)."""

    def __init__(self, n: int, global_batch: int, seed: int, epoch: int, info: DistInfo, start: int = 0):
        self.n, self.global_batch, self.info, self.start = n, global_batch, info, start
        self.local = global_batch // info.world
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self.perm = torch.randperm(n, generator=g)

    def __len__(self) -> int:
        return self.n // self.global_batch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, self.n // self.global_batch):
            lo = b * self.global_batch + self.info.rank * self.local
            yield self.perm[lo : lo + self.local].tolist()


class _LossModule(nn.Module):
    """Model + loss as one module so DDP / FSDP see the forward that produces the loss; a frozen model
    the loss calls is registered here too, so that it follows the model's device and sharding."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, frozen: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.frozen = frozen

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.model, batch)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _move(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_set: Dataset,
        config: TrainConfig,
        val_set: Dataset | None = None,
        collate_fn: Callable | None = None,
        extra_files: dict[str, str] | None = None,
        frozen: nn.Module | None = None,
    ):
        """`frozen`: a model the loss calls without training it (distillation's teacher); it is put on
        the device and, under FSDP, sharded beside the model. It is never saved."""
        self.config = config
        self.sharded = config.sharding == "fsdp"
        self.info = init_distributed(always=self.sharded)
        if config.batch_size % self.info.world:
            raise ValueError(
                f"batch_size {config.batch_size} is the global batch and must divide by the "
                f"{self.info.world} processes"
            )
        if len(train_set) < config.batch_size:
            raise ValueError(
                f"the training set has {len(train_set)} samples, fewer than batch_size {config.batch_size}"
            )
        self.device = self._pick_device()
        self.model = model.to(self.device)
        if frozen is not None:
            frozen.to(self.device).eval().requires_grad_(False)
        if config.activation_checkpointing:
            fsdp.enable_activation_checkpointing(self.model)
        self.loss_module = _LossModule(self.model, loss_fn, frozen)
        if self.sharded:  # before the optimizer, which must hold the sharded parameters
            fsdp.shard_for_training(self.loss_module, self.model, frozen, self.device, self.autocast_dtype)
        self.train_set, self.val_set = train_set, val_set
        self.collate_fn = collate_fn
        self.extra_files = dict(extra_files or {})
        self.out = Path(config.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.step = 0
        self.best_val = math.inf
        self.steps_per_epoch = len(train_set) // config.batch_size
        # fp32 copies of every floating parameter, averaged after each optimizer step (None = off).
        self.ema: dict[str, torch.Tensor] | None = None
        if config.ema_decay > 0:
            self.ema = {
                n: p.detach().float().clone()
                for n, p in self.model.named_parameters()
                if p.is_floating_point()
            }
        self.wrapped: nn.Module = self.loss_module  # under FSDP the loss module itself is the sharded root
        if self.info.world > 1 and not self.sharded:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=ids, find_unused_parameters=config.find_unused_parameters
            )

    # ------------------------------------------------------------------------------------ set-up

    def _pick_device(self) -> torch.device:
        if self.config.device != "auto":
            return torch.device(self.config.device)
        if torch.cuda.is_available():
            torch.cuda.set_device(self.info.local_rank)  # collectives of Python objects use it
            return torch.device("cuda", self.info.local_rank)
        return torch.device("cpu")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name or name.endswith(".pos") else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.95), fused=False)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return autocast_dtype(self.config.precision, self.device)

    @property
    def precision_name(self) -> str:
        """The precision the run computes in, "auto" resolved."""
        return "fp32" if self.autocast_dtype is None else "bf16"

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            if dtype is not None and self.device.type == "cpu":  # see precision.py
                with attention_in_fp32(self.loss_module):
                    yield
            else:
                yield

    def _loader(self, dataset: Dataset, sampler: Sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.config.num_workers,
            collate_fn=self.collate_fn,
            persistent_workers=False,
        )

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Batches from `self.step` on, epoch after epoch, exactly as an uninterrupted run sees them."""
        epoch, start = divmod(self.step, self.steps_per_epoch)
        while True:
            if hasattr(self.train_set, "set_epoch"):
                self.train_set.set_epoch(epoch)
            sampler = EpochBatchSampler(
                len(self.train_set), self.config.batch_size, self.config.seed, epoch, self.info, start
            )
            yield from self._loader(self.train_set, sampler)
            epoch, start = epoch + 1, 0

    # -------------------------------------------------------------------------------------- loop

    def fit(self, resume: bool = False, until_step: int | None = None) -> dict[str, Any]:
        """Train to `config.steps` (or stop early at `until_step`, saving a checkpoint there)."""
        torch.manual_seed(self.config.seed + self.info.rank)
        if resume:
            self.load_last()
        else:
            self._reset_metrics()
        stop = min(self.config.steps, until_step or self.config.steps)
        bar = tqdm(
            total=stop, initial=self.step, desc="train", disable=not self.info.main, dynamic_ncols=True
        )
        window: list[dict[str, float]] = []
        t_window, t_start, start_step = time.perf_counter(), time.perf_counter(), self.step
        batches = self._batches()
        self.model.train()
        try:
            while self.step < stop:
                window.append(self._train_step(next(batches)))
                self.step += 1
                bar.update(1)
                at_end = self.step == self.config.steps
                if self.step % self.config.log_every == 0 or at_end:
                    row = self._log_train(window, time.perf_counter() - t_window)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{row['samples_per_s']:.0f}")
                    window, t_window = [], time.perf_counter()
                if self.val_set is not None and (self.step % self.config.val_every == 0 or at_end):
                    self._validate()
                if self.step % self.config.save_every == 0 or self.step == stop:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            if self.info.world == 1 and self.step > start_step:
                self.save_checkpoint()  # a Ctrl-C'd run resumes from where it stopped
            raise
        finally:
            bar.close()
        elapsed = time.perf_counter() - t_start
        if self.ema is not None and self.step == self.config.steps:
            self._copy_into_model(self.ema)  # training is over: the model keeps the averaged weights
        summary = {
            "steps": self.step,
            "train_seconds": elapsed,
            "samples_per_s": (self.step - start_step) * self.config.batch_size / max(elapsed, 1e-9),
            "precision": self.precision_name,
            "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
        }
        if self.info.main:
            self.plot_curves()
        return summary

    def _train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        batch = _move(batch, self.device)
        with self._autocast():
            loss, info = self.wrapped(batch)
        loss.backward()
        grad_norm = fsdp.local_value(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        )  # a sharded model's norm is over every shard
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self._update_ema()
        return {**info, "loss": float(loss.detach()), "grad_norm": float(grad_norm)}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for name, p in self.model.named_parameters():
            if name in self.ema:
                self.ema[name].lerp_(p.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def _copy_into_model(self, values: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        for n, v in values.items():
            params[n].copy_(v.to(params[n].device))

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Within the block the model holds the EMA weights (a no-op without EMA); restored after."""
        if self.ema is None:
            yield
            return
        raw = {n: p.detach().clone() for n, p in self.model.named_parameters() if n in self.ema}
        self._copy_into_model(self.ema)
        try:
            yield
        finally:
            self._copy_into_model(raw)

    def _mean_across(self, rows: list[dict[str, float]]) -> dict[str, float]:
        keys = sorted(rows[0])
        values = torch.tensor([[r[k] for k in keys] for r in rows], dtype=torch.float64).mean(0)
        if self.info.world > 1:
            dist.all_reduce(values)
            values /= self.info.world
        return dict(zip(keys, values.tolist(), strict=True))

    def _log_train(self, window: list[dict[str, float]], seconds: float) -> dict[str, float]:
        row = self._mean_across(window)
        row.update(
            split="train",
            step=self.step,
            lr=self.scheduler.get_last_lr()[0],
            samples_per_s=len(window) * self.config.batch_size / max(seconds, 1e-9),
        )
        self._append_metrics(row)
        return row

    @torch.no_grad()
    def evaluate(self, dataset: Dataset) -> dict[str, float]:
        """Mean loss/info over up to `val_batches` fixed global batches (sharded across processes)."""
        was_training = self.model.training
        self.model.eval()
        n = min(len(dataset), self.config.val_batches * self.config.batch_size)
        order = list(range(n))[self.info.rank :: self.info.world]
        local_bs = max(1, self.config.batch_size // self.info.world)
        # Sharded forwards are collective: every rank runs as many as the rank with the most samples,
        # a rank that has run out repeating its first sample at weight 0.
        calls = math.ceil(math.ceil(n / self.info.world) / local_bs) if self.sharded else None
        sums: dict[str, float] = {}
        count = 0
        for lo in range(0, local_bs * calls if calls else len(order), local_bs):
            chunk = order[lo : lo + local_bs]
            batch = _move(self.collate([dataset[i] for i in chunk or order[:1] or [0]]), self.device)
            with self._autocast():
                loss, info = self.loss_module(batch)
            k = len(chunk)
            for key, v in {**info, "loss": float(loss)}.items():
                sums[key] = sums.get(key, 0.0) + v * k
            count += k
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64)
        if self.info.world > 1:
            dist.all_reduce(totals)
        if self.sharded:  # the root keeps its gathered weights after a forward without backward
            self.loss_module.reshard()
        self.model.train(was_training)
        return {k: float(totals[i] / max(totals[-1], 1)) for i, k in enumerate(keys)}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.collate_fn is not None:
            return self.collate_fn(samples)
        return torch.utils.data.default_collate(samples)

    def _validate(self) -> None:
        with self.averaged_weights():
            row = self.evaluate(self.val_set)
        row.update(split="val", step=self.step)
        self._append_metrics(row)
        if row["loss"] < self.best_val:  # the same on every rank (the row is a mean over all)
            self.best_val = row["loss"]
            with self.averaged_weights():
                self.save_policy(
                    self.out / "best", {"best_step.json": json.dumps({"step": self.step, **row})}
                )
        self._barrier()

    # ------------------------------------------------------------------------------- checkpoints

    def _barrier(self) -> None:
        if self.info.world > 1:
            dist.barrier()

    def _policy_files(self, extra: dict[str, str]) -> dict[str, str]:
        return {
            **self.extra_files,
            TRAIN_CONFIG_FILE: json.dumps(dataclasses.asdict(self.config), indent=2),
            **extra,
        }

    def _write_policy(self, directory: Path, weights: dict[str, torch.Tensor] | None, extra: dict[str, str]):
        """Rank 0: the policy files into `directory`; `weights` is a gathered full state dict (sharded
        runs) or None (the model's own tensors)."""
        self.model.save_to(directory, self._policy_files(extra), state_dict=weights)

    def save_policy(self, directory: str | Path, extra: dict[str, str] | None = None) -> Path:
        """The model as a loadable policy directory, written atomically by rank 0 (a sharded model's
        weights are gathered there first). Call it on every rank."""
        weights = fsdp.full_state_dict(self.model) if self.sharded else None
        if self.info.main:
            with atomic_directory(Path(directory)) as tmp:
                self._write_policy(tmp, weights, extra or {})
        self._barrier()
        return Path(directory)

    def _all_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG state, in rank order (each rank draws its own stream)."""
        states: list[Any] = [None] * self.info.world
        if self.info.world > 1:
            dist.all_gather_object(states, _rng_state())
        else:
            states = [_rng_state()]
        return states

    def _shared_tmp(self, tmp: Path | None) -> Path:
        """Rank 0's temporary checkpoint directory, made known to every rank."""
        box = [str(tmp) if tmp is not None else None]
        if self.info.world > 1:
            dist.broadcast_object_list(box, src=0)
        return Path(box[0])

    def save_checkpoint(self) -> Path:
        """checkpoints/step_NNNNNN/ = loadable policy + training_state.pt (+ sharded/ from a sharded
        run: every rank's shards of the raw weights and the optimiser state); `checkpoints/last` names
        it. Call it on every rank; the directory appears whole or not at all."""
        name = f"step_{self.step:06d}"
        path = self.ckpt_dir / name
        rng = self._all_rng_states()
        with self.averaged_weights():
            weights = fsdp.full_state_dict(self.model) if self.sharded else None
        state: dict[str, Any] = {
            "step": self.step,
            "best_val": self.best_val,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "world_size": self.info.world,
            "sharding": self.config.sharding,
            "has_ema": self.ema is not None,
        }
        if self.sharded:
            shards = fsdp.sharded_training_state(self.model, self.optimizer)
            if self.ema is not None:
                shards["ema"] = self.ema
        else:
            state["optimizer"] = self.optimizer.state_dict()
            if self.ema is not None:
                state["ema"] = {n: v.clone() for n, v in self.ema.items()}
                state["raw_weights"] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        try:
            with contextlib.ExitStack() as stack:
                tmp = stack.enter_context(atomic_directory(path)) if self.info.main else None
                tmp = self._shared_tmp(tmp)
                if self.sharded:
                    fsdp.save_sharded(shards, tmp / SHARDED_DIR)
                if self.info.main:
                    # a sharded run's gathered weights already are the averaged ones
                    with contextlib.nullcontext() if self.sharded else self.averaged_weights():
                        self._write_policy(tmp, weights, {})
                    torch.save(state, tmp / TRAINING_STATE_FILE)
        except (OSError, RuntimeError) as e:
            # torch reports a full disk as a RuntimeError about stream positions; say what it is
            raise CheckpointError(checkpoint_write_failure(self.out, name, e)) from e
        if self.info.main:
            atomic_write_text(self.ckpt_dir / LAST_FILE, name)
            self.plot_curves()
        self._barrier()
        return path

    def load_last(self) -> None:
        """Restore weights, optimizer, scheduler, step and RNG from the last checkpoint."""
        path = last_checkpoint(self.out)
        state_file = path / TRAINING_STATE_FILE
        if not state_file.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {TRAINING_STATE_FILE!r}")
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=False)
        except Exception as e:  # torch raises several unrelated types for a truncated file
            raise CheckpointError(f"{state_file} is corrupt: {e}") from e
        saved = state.get("sharding", "none")
        if saved != self.config.sharding:
            raise CheckpointError(
                f"{path} was saved by a run with --sharding {saved} but this run asks for "
                f"--sharding {self.config.sharding}: resume with the run's own --sharding"
            )
        has_ema = state.get("has_ema", "ema" in state)
        if (self.ema is None) == has_ema:
            want = f"ema_decay {self.config.ema_decay}" if self.ema is not None else "no EMA"
            raise CheckpointError(
                f"{path} was {'saved without' if not has_ema else 'saved with'} an EMA of the weights "
                f"but this run asks for {want}: resume with the run's own --ema-decay"
            )
        if self.sharded:
            # The raw weights, the optimiser state and the EMA come from the shards (resharded to
            # this run's processes); the policy file holds the averaged weights.
            fsdp.load_sharded(
                self.model, self.optimizer, {"ema": self.ema} if self.ema is not None else {},
                path / SHARDED_DIR,
            )  # fmt: skip
        else:
            from safetensors.torch import load_model

            load_model(self.model, str(path / "model.safetensors"), device=str(self.device))
            if self.ema is not None:
                # The model file holds the averaged weights; training continues from the raw ones.
                self._copy_into_model(state["raw_weights"])
                self.ema = {n: v.to(self.device) for n, v in state["ema"].items()}
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        if isinstance(rng, dict):  # checkpoints that kept rank 0's state alone
            _set_rng_state(rng)
        elif len(rng) == self.info.world:
            _set_rng_state(rng[self.info.rank])
        else:
            warnings.warn(
                f"{path} was saved by {len(rng)} processes, this run has {self.info.world}: the random "
                "streams restart from the seed (the run continues, but not bit for bit)",
                stacklevel=2,
            )
        self.step = int(state["step"])
        self.best_val = float(state["best_val"])
        self._truncate_metrics(self.step)

    # ----------------------------------------------------------------------------------- metrics

    def _reset_metrics(self) -> None:
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / METRICS_FILE, "")

    def _truncate_metrics(self, step: int) -> None:
        """Forget rows logged after the checkpoint we resumed from (they will be logged again)."""
        path = self.out / METRICS_FILE
        if not self.info.main or not path.is_file():
            return
        rows = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        atomic_write_text(path, "".join(r + "\n" for r in rows))

    def _append_metrics(self, row: dict[str, Any]) -> None:
        if self.info.main:
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")

    def plot_curves(self) -> Path | None:
        path = self.out / METRICS_FILE
        if not path.is_file():
            return None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return plot_loss_curve(rows, self.out / CURVE_FILE)


# below this much free space a failed checkpoint write is reported as a full disk
LOW_DISK_BYTES = 256 * 2**20


def checkpoint_write_failure(output_dir: str | Path, name: str, error: BaseException) -> str:
    """What to tell a user whose checkpoint `name` could not be written: the cause (a full disk when
    the filesystem is nearly full, whatever the library said), the last complete checkpoint the run
    can resume from, and the command. The atomic write leaves nothing half-written behind."""
    import shutil

    ckpt_dir = Path(output_dir) / "checkpoints"
    try:
        free = shutil.disk_usage(ckpt_dir).free
    except OSError:
        free = None
    try:
        resume_from = f"{last_checkpoint(output_dir).name} (the last complete checkpoint)"
    except CheckpointError:
        resume_from = "the start (no complete checkpoint yet)"
    if free is not None and free < LOW_DISK_BYTES:
        done = list(ckpt_dir.glob("step_*"))
        size = sum(f.stat().st_size for d in done for f in d.rglob("*") if f.is_file())
        need = f"; a checkpoint here takes about {size / len(done) / 2**20:.0f} MiB" if size else ""
        cause = f"the disk is full: {free / 2**20:.0f} MiB free under {ckpt_dir}{need}"
    else:
        cause = f"{type(error).__name__}: {error}"
    return (
        f"could not write checkpoint {name} in {ckpt_dir} ({cause}). Nothing half-written was left. "
        f"Fix the cause and rerun the same command with --resume: it continues from {resume_from}."
    )


def last_checkpoint(output_dir: str | Path) -> Path:
    """The checkpoint directory named by `<output_dir>/checkpoints/last`."""
    ckpt_dir = Path(output_dir) / "checkpoints"
    pointer = ckpt_dir / LAST_FILE
    if not pointer.is_file():
        raise CheckpointError(
            f"nothing to resume: {pointer} does not exist (no checkpoint was saved in {output_dir})"
        )
    path = ckpt_dir / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def export_raw_weights(checkpoint: str | Path, output: str | Path) -> Path:
    """The raw (not averaged) weights of an EMA run's checkpoint, written as a policy directory.

    A checkpoint of a run with `ema_decay` holds the EMA as its policy and the raw weights in
    training_state.pt; this writes the raw ones next to everything else the checkpoint holds, so the
    two can be evaluated against each other from a single training run.
    """
    import shutil

    from .modeling import VLAPolicy

    checkpoint, output = Path(checkpoint), Path(output)
    state_file = checkpoint / TRAINING_STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(
            f"{checkpoint} has no {TRAINING_STATE_FILE}: only checkpoints under checkpoints/ keep the raw "
            "weights (final/ holds the averaged ones alone)"
        )
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    if state.get("sharding") == "fsdp" and state.get("has_ema"):
        raise CheckpointError(
            f"{checkpoint} is from a sharded run: its raw weights are in {SHARDED_DIR}/, written by "
            "torch.distributed.checkpoint (torch.distributed.checkpoint.format_utils.dcp_to_torch_save "
            "turns them into one file); exporting them as a policy is not supported yet"
        )
    if "raw_weights" not in state:
        raise CheckpointError(f"{checkpoint} was saved without an EMA: its policy already is the raw weights")
    policy = VLAPolicy.from_pretrained(checkpoint, device="cpu")
    params = dict(policy.named_parameters())
    raw = state["raw_weights"]
    if set(raw) != set(params):
        raise CheckpointError(
            f"the raw weights in {state_file} do not match the policy's parameters "
            f"(only in the raw weights: {sorted(set(raw) - set(params))[:5]}, "
            f"only in the policy: {sorted(set(params) - set(raw))[:5]})"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(raw[n])
    with atomic_directory(output) as tmp:
        for f in checkpoint.iterdir():  # what the run saved beside the policy (train_config.json, ...)
            if f.is_file() and f.name != TRAINING_STATE_FILE:
                shutil.copy2(f, tmp / f.name)
        policy.save_to(tmp)
    return output


def plot_loss_curve(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:  # a bare GPU box may lack it; metrics.jsonl still holds every number
        warnings.warn("matplotlib is not installed: no loss_curve.png", stacklevel=2)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-"), ("val", "o-")):
        pts = [(r["step"], r["loss"]) for r in rows if r.get("split") == split]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=f"{split} loss", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / action token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_savefig(fig, path)
