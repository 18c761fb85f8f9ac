"""Sharded training for the shared trainer: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`).

What is sharded, for a trainer whose root module is the model + loss (`trainer._LossModule`):

    root (model + loss)            the model's own embeddings, output layer, projections, conv encoder
    ├── every transformer block    one unit per decoder layer of the LM (and per layer of a
    │                              pretrained vision tower): gathered for its forward, freed after
    └── frozen model (a teacher)   its own unit and its blocks' units; never in the optimizer,
                                   stored in the compute dtype (bf16: 2 bytes a parameter)

Blocks are the classes a Hugging Face model names in `_no_split_modules` (`LlamaDecoderLayer`,
`SiglipEncoderLayer`, ...), the same rule accelerate's transformer-based wrap policy uses. Losses
call a model through `prefix_embeddings` / `action_logits` as well as `forward`; those are
registered as forward methods of a frozen model so that FSDP gathers its parameters for them too.

Mixed precision (`param_dtype`): the sharded master weights, gradients and optimiser state stay
fp32; each unit's parameters are gathered in bf16 and gradients reduced in fp32.

Every function here that moves tensors between processes is collective: call it on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

SHARDINGS = ("none", "fsdp")
FROZEN_FORWARD_METHODS = ("prefix_embeddings", "action_logits")


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks inside `model`, deepest first (the order `fully_shard` needs)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    found = [(name.count("."), m) for name, m in model.named_modules() if type(m).__name__ in names]
    return [m for _, m in sorted(found, key=lambda t: -t[0])]


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every transformer block's activations in the backward pass instead of keeping them
    (non-reentrant `torch.utils.checkpoint`, via each Hugging Face model's own switch, which keeps
    FSDP's hooks outside the recomputed region). Returns how many Hugging Face models it covered."""
    from transformers import PreTrainedModel

    count = 0
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing:
            m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            count += 1
    if count == 0:
        raise ValueError(
            "activation checkpointing needs a Hugging Face model inside the policy that supports it; "
            f"{type(model).__name__} holds none"
        )
    return count


def mesh_for(device: torch.device):
    """A 1-D device mesh over every process of the default group."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard_for_training(
    root: nn.Module,
    model: nn.Module,
    frozen: nn.Module | None,
    device: torch.device,
    param_dtype: torch.dtype | None,
) -> None:
    """Shard `root` (which holds `model` and, when given, the frozen model) in place with FSDP2.

    `param_dtype` None computes in the parameters' dtype; bf16 gathers bf16 copies for compute and
    reduces gradients in fp32 (the trainer's autocast stays on for the ops that mix dtypes)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = mesh_for(device)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    if frozen is not None:
        if param_dtype is not None:
            # frozen weights need no fp32 master copy; buffers (normalisers' statistics) keep theirs
            for p in frozen.parameters():
                p.data = p.data.to(param_dtype)
        for block in blocks(frozen):
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(frozen, mesh=mesh, mp_policy=mp)
        for name in FROZEN_FORWARD_METHODS:
            if hasattr(frozen, name):
                register_fsdp_forward_method(frozen, name)
    for block in blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(root, mesh=mesh, mp_policy=mp)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s full weights as CPU tensors on rank 0 (empty elsewhere), gathered one tensor at a time.
    Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def sharded_training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """This rank's shards of the weights and of the optimiser state, keyed by parameter name, for
    `torch.distributed.checkpoint` (which reshards them on load, to any number of processes)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd}


def save_sharded(state: dict, directory) -> None:
    """Each rank writes its shards of `state` into `directory` (a shared filesystem). Collective."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=str(directory))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict, directory) -> None:
    """Restore weights, optimiser state and `extra` (tensors loaded in place) from `save_sharded`'s
    directory. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = {**sharded_training_state(model, optimizer), **extra}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of `t`'s full value (a DTensor is gathered: collective)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
