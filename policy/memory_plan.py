"""Memory plan for sharded distillation: what one process holds, built from measured bytes.

One process of N (FSDP full sharding, `--sharding fsdp`), student of S parameters, frozen teacher of
T parameters (the same shape), global batch B split over the N processes:

    sharded    (b_param + b_grad + b_optim) * S / N  +  b_teacher * T / N
    gathered   the root unit (embeddings, output layer, projections) whole for the step: weights, fp32
               gradients and the copy the reduce-scatter reads; the teacher's root during its
               forward; 2 transformer blocks at a time (the running one and the prefetched one)
    activations  bytes the backward keeps per sample (measured on one real block at the profile's
               sequence length) x B / N x the student forwards that keep a graph (distillation: 2,
               the mixed-label one and the intermediate-state one); with activation checkpointing a
               block keeps only its input, plus one block's full activations while it is recomputed
    step       AdamW's temporaries while it steps (after the backward, so instead of the two above)

    peak = sharded + max(gathered + activations, step)

b_* are measured, not assumed: bytes per element of a parameter, its gradient and AdamW's state
after a real optimiser step (`bytes_per_parameter`), the step's temporaries
(`optimizer_step_transient`), and saved-for-backward bytes of a real decoder
layer and vision-tower layer (`activation_bytes`). Parameter counts come from the shapes built on
the meta device. Not counted: the CUDA context and allocator slack (reported as headroom), the
logits (only the n action positions are computed), EMA weights (+4 bytes a parameter / N).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from ceed_vla.decoding.costmodel import SHAPES as BACKBONES
from ceed_vla.decoding.costmodel import ModelShape as BackboneShape
from torch import nn

GB = 1e9


@dataclass(frozen=True)
class TowerShape:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    image_size: int = 224
    patch_size: int = 16

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def config(self):
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(
            hidden_size=self.hidden, num_hidden_layers=self.layers, num_attention_heads=self.heads,
            intermediate_size=self.intermediate, image_size=self.image_size, patch_size=self.patch_size,
        )  # fmt: skip


SIGLIP_B16 = TowerShape("SigLIP-B/16-224", 768, 12, 12, 3072, 224, 16)
SIGLIP_SO400M = TowerShape("SigLIP-So400m/14-224", 1152, 27, 16, 4304, 224, 14)


@dataclass(frozen=True)
class ModelShape(BackboneShape):
    """A Llama-style backbone (the cost model's shape, built as `LlamaForCausalLM`) with a SigLIP-shaped
    vision tower."""

    tower: TowerShape | None = None

    def lm_config(self, n_bins: int = 256):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab + n_bins, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            tie_word_embeddings=self.tie_embeddings, max_position_embeddings=1024,
        )  # fmt: skip


def _with_tower(name: str, tower: TowerShape) -> ModelShape:
    """The cost model's backbone of that name (one definition of the public shapes) with a tower."""
    return ModelShape(**{**asdict(BACKBONES[name]), "tower": tower})


SHAPES: dict[str, ModelShape] = {
    name: _with_tower(name, tower)
    for name, tower in (("0.5b", SIGLIP_B16), ("1b", SIGLIP_SO400M), ("7b", SIGLIP_SO400M))
}


# The CPU checks: the embedded tiny preset's LM (with a SigLIP-shaped tower of a few layers, so that
# the check runs the pretrained-tower path) and the 0.5B shape.
TINY = ModelShape(
    "tiny", 256, 4, 4, 4, 1024, 512, tower=TowerShape("SigLIP-shaped 64-wide", 64, 2, 4, 256, 32, 8)
)
CPU_SHAPES = {"tiny": TINY, "0.5b": SHAPES["0.5b"]}


@dataclass(frozen=True)
class Workload:
    """The distillation profile's step: global batch, cameras, instruction tokens, action tokens."""

    global_batch: int = 16  # the demo profiles' distill_batch
    cameras: int = 1
    text_tokens: int = 24  # VLAConfig.max_text_tokens
    action_tokens: int = 32  # chunk 8 x 4 dims
    graph_forwards: int = 2  # student forwards that keep a graph per step (labels, intermediate state)

    def lm_tokens(self, shape: ModelShape) -> int:
        """Sequence length of one sample: image patches, instruction, proprio, the block minus one."""
        return self.cameras * shape.tower.tokens + self.text_tokens + 1 + self.action_tokens - 1


# ------------------------------------------------------------------------------------ measuring


def _unique_params(module: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in module.parameters()}.values())


def parameter_counts(shape: ModelShape) -> dict[str, int]:
    """Parameters of the policy of `shape`, counted on the meta device: total, in each LM block, in
    each tower block, and outside the blocks (the FSDP root unit)."""
    from transformers import AutoModelForCausalLM, SiglipVisionModel

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(shape.lm_config())
        tower = SiglipVisionModel(shape.tower.config())
    h, v = shape.hidden, shape.tower.hidden
    projector = (v * h + h) + (h * h + h)  # VLAPolicy.projector
    lm_block = sum(p.numel() for p in lm.model.layers[0].parameters())
    tower_block = sum(p.numel() for p in tower.encoder.layers[0].parameters())
    lm_total = sum(p.numel() for p in _unique_params(lm))
    tower_total = sum(p.numel() for p in tower.parameters())
    total = lm_total + tower_total + projector
    root = total - shape.layers * lm_block - shape.tower.layers * tower_block
    return {"total": total, "lm_block": lm_block, "tower_block": tower_block, "root": root}


def bytes_per_parameter(model: nn.Module, loss_fn) -> dict[str, float]:
    """Bytes per parameter element after one AdamW step on `model` (as the trainer builds it): the
    parameter, its gradient, the optimiser state. `loss_fn(model) -> scalar`."""
    params = [p for p in _unique_params(model) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_fn(model).backward()
    optimizer.step()
    n = sum(p.numel() for p in params)
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return {
        "param": sum(p.numel() * p.element_size() for p in params) / n,
        "grad": sum(p.grad.numel() * p.grad.element_size() for p in params) / n,
        "optim": state / n,
    }


def optimizer_step_transient(model: nn.Module, loss_fn, foreach: bool) -> float:
    """Peak bytes per parameter element that an AdamW step allocates and frees again, measured by
    watching every tensor its ops create. `foreach=True` is what it runs on CUDA (temporaries for
    every parameter at once), False what it runs on CPU (one parameter at a time)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    params = [p for p in _unique_params(model) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=foreach)
    for _ in range(2):  # the first step creates the state, which is not transient
        optimizer.zero_grad()
        loss_fn(model).backward()
        if _ == 0:
            optimizer.step()
    held = {t.untyped_storage().data_ptr() for t in params + [p.grad for p in params]}
    held |= {
        t.untyped_storage().data_ptr()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    }

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0

        def _free(self, nbytes: int) -> None:
            self.live -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in held:
                    held.add(t.untyped_storage().data_ptr())
                    nbytes = t.untyped_storage().nbytes()
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, nbytes)
            return out

    with Live() as live:
        optimizer.step()
    return live.peak / sum(p.numel() for p in params)


def saved_bytes(fn, *args, exclude: nn.Module | None = None, **kwargs) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of `fn(*args, **kwargs)`,
    leaving out `exclude`'s parameters (weights are counted as parameters, not activations)."""
    skip = {p.untyped_storage().data_ptr() for p in (exclude.parameters() if exclude is not None else ())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(seen.values())


def activation_bytes(shape: ModelShape, workload: Workload, dtype: torch.dtype) -> dict[str, int]:
    """Saved-for-backward bytes of ONE sample through one real LM decoder layer (at the profile's
    sequence length) and through one real tower layer (its patches), in `dtype`; and the bytes of
    one block's input (all a checkpointed block keeps)."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

    torch.manual_seed(0)
    cfg = shape.lm_config()
    cfg._attn_implementation = "sdpa"
    seq = workload.lm_tokens(shape)
    layer = LlamaDecoderLayer(cfg, layer_idx=0).to(dtype)
    x = torch.randn(1, seq, shape.hidden, dtype=dtype, requires_grad=True)
    positions = torch.arange(seq)[None]
    rope = LlamaRotaryEmbedding(cfg)(x, positions)
    lm = saved_bytes(layer, x, position_ids=positions, position_embeddings=rope, exclude=layer)
    del layer
    tcfg = shape.tower.config()
    tcfg._attn_implementation = "sdpa"
    tlayer = SiglipEncoderLayer(tcfg).to(dtype)
    tx = torch.randn(
        workload.cameras, shape.tower.tokens, shape.tower.hidden, dtype=dtype, requires_grad=True
    )
    tower = saved_bytes(tlayer, tx, None, exclude=tlayer)
    item = torch.tensor([], dtype=dtype).element_size()
    return {
        "lm_block": lm,
        "tower_block": tower,
        "lm_block_input": seq * shape.hidden * item,
        "tower_block_input": workload.cameras * shape.tower.tokens * shape.tower.hidden * item,
        "sequence": seq,
    }


# ------------------------------------------------------------------------------------- the plan


@dataclass
class Bytes:
    """Measured bytes per parameter element (master weights, gradients, AdamW) and of the frozen
    teacher's and the gathered weights' element (the compute dtype)."""

    param: float = 4.0
    grad: float = 4.0
    optim: float = 8.0
    teacher: float = 2.0
    gathered: float = 2.0
    step_transient: float = 4.0  # AdamW's temporaries during its step, freed after it
    measured_on: dict = field(default_factory=dict)


def per_process(
    counts: dict[str, int],
    act: dict[str, int],
    shape: ModelShape,
    workload: Workload,
    b: Bytes,
    processes: int,
    checkpointing: bool,
    teacher: bool = True,
) -> dict[str, float]:
    """Bytes one of `processes` processes holds at its peak (see the module docstring)."""
    n, s = processes, counts["total"]
    sharded = (b.param + b.grad + b.optim) * s / n + (b.teacher * s / n if teacher else 0.0)
    block = max(counts["lm_block"], counts["tower_block"])
    grad_fp32 = 4.0
    # the student's root (weights, fp32 grads and their reduce-scatter copy) for the whole step, the
    # teacher's root during its forward, two blocks at a time
    gathered = counts["root"] * (b.gathered + 2 * grad_fp32 + (b.gathered if teacher else 0.0))
    gathered += 2 * block * (b.gathered + 2 * grad_fp32)
    if n == 1:  # nothing to gather: the sharded weights are the whole weights
        gathered = 0.0
    per_sample = math.ceil(workload.global_batch / n)
    if checkpointing:
        kept = shape.layers * act["lm_block_input"] + shape.tower.layers * act["tower_block_input"]
        recompute = max(act["lm_block"], act["tower_block"])
        activations = per_sample * (workload.graph_forwards * kept + recompute)
    else:
        kept = shape.layers * act["lm_block"] + shape.tower.layers * act["tower_block"]
        activations = per_sample * workload.graph_forwards * kept
    step = b.step_transient * s / n  # after the backward: activations and gathered copies are gone
    return {
        "sharded": sharded,
        "gathered": gathered,
        "activations": activations,
        "optimizer_step": step,
        "total": sharded + max(gathered + activations, step),
    }


def plan(
    shapes: dict[str, ModelShape],
    workload: Workload,
    b: Bytes,
    activations: dict[str, dict[str, int]],
    gpus: tuple[int, ...] = (1, 2, 4, 8),
    gpu_gb: float = 80.0,
    headroom_gb: float = 6.0,
) -> list[dict]:
    """One row per (shape, GPU count): GB per GPU for each part, with and without activation
    checkpointing, and whether it fits in `gpu_gb` less `headroom_gb` (CUDA context, allocator)."""
    rows = []
    for name, shape in shapes.items():
        counts = parameter_counts(shape)
        for n in gpus:
            ac = per_process(counts, activations[name], shape, workload, b, n, checkpointing=True)
            full = per_process(counts, activations[name], shape, workload, b, n, checkpointing=False)
            rows.append(
                {
                    "model": name,
                    "like": shape.like,
                    "tower": shape.tower.name,
                    "params_b": counts["total"] / 1e9,
                    "gpus": n,
                    "batch_per_gpu": math.ceil(workload.global_batch / n),
                    "sharded_gb": ac["sharded"] / GB,
                    "gathered_gb": ac["gathered"] / GB,
                    "activations_ac_gb": ac["activations"] / GB,
                    "activations_gb": full["activations"] / GB,
                    "total_ac_gb": ac["total"] / GB,
                    "total_gb": full["total"] / GB,
                    "fits_ac": ac["total"] / GB <= gpu_gb - headroom_gb,
                    "fits": full["total"] / GB <= gpu_gb - headroom_gb,
                }
            )
    return rows


def markdown(rows: list[dict], gpu_gb: float = 80.0, headroom_gb: float = 6.0) -> str:
    head = (
        "| model | params (student) | GPUs | batch/GPU | sharded state | gathered | activations "
        "(AC / none) | total (AC / none) | fits "
        f"{gpu_gb:.0f} GB (AC / none) |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['model']} ({r['like']} + {r['tower']}) | {r['params_b']:.2f} B | {r['gpus']} | "
        f"{r['batch_per_gpu']} | {r['sharded_gb']:.1f} GB | {r['gathered_gb']:.1f} GB | "
        f"{r['activations_ac_gb']:.1f} / {r['activations_gb']:.1f} GB | "
        f"{r['total_ac_gb']:.1f} / {r['total_gb']:.1f} GB | "
        f"{'yes' if r['fits_ac'] else 'no'} / {'yes' if r['fits'] else 'no'} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def as_json(shapes: dict[str, ModelShape], workload: Workload, b: Bytes) -> dict:
    return {
        "workload": asdict(workload),
        "bytes_per_parameter": asdict(b),
        "shapes": {k: asdict(v) for k, v in shapes.items()},
    }
