"""torchrun / DDP plumbing. With one process everything here is a no-op.

The global batch and the learning rate mean the same on 1 or N processes: each rank takes
its slice of the same global batch (drawn from an identically seeded generator), contrastive
losses are computed on the gathered global batch, and DDP averages gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mindeye.errors import MindEyeError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    return DistInfo(rank, world, local_rank)


def local_slice(n_global: int, info: DistInfo) -> slice:
    if n_global % info.world:
        raise MindEyeError(f"train.batch_size={n_global} is not divisible by the {info.world} processes; "
                           "choose a global batch size that is a multiple of the process count")
    per = n_global // info.world
    return slice(info.rank * per, (info.rank + 1) * per)


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0; gradients flow back to each rank's own slice."""
    if not info.enabled:
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still correct and supported
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x), 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# -- FSDP2 (train.parallel=fsdp) ---------------------------------------------------------------------
def shard_model(model: torch.nn.Module, info: DistInfo, device: str) -> torch.nn.Module:
    """FSDP2 (``fully_shard``) in place: each process keeps 1/world of every parameter, gradient and
    AdamW state; a unit's full parameters exist only while it runs (all-gathered, then freed).

    Units: the backbone's stem, each block and its 809 M-parameter head; the projector; the prior (its
    ``loss`` is registered as a forward method, as the trainer calls it directly); the low-level decoder
    and projector; then the root for whatever is left. Gradients are reduce-scattered as averages, so
    the update is DDP's.
    """
    import warnings

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # Our modules return views (the head's reshape) that nothing modifies in place afterwards.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (info.world,))
    backbone = getattr(model, "backbone", model)  # the low-level model is itself the backbone
    units = [backbone.stem, *backbone.blocks, backbone.head]
    for name in ("projector", "upsampler"):
        if getattr(model, name, None) is not None:
            units.append(getattr(model, name))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    prior = getattr(model, "prior", None)
    if prior is not None:
        fully_shard(prior, mesh=mesh)
        register_fsdp_forward_method(prior, "loss")
    fully_shard(model, mesh=mesh)
    return model


class FullState:
    """Stands in for a sharded model where a full state dict is saved (``save_checkpoint``/``save_weights``)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def full_model_state(model: torch.nn.Module) -> FullState:
    """Every parameter and buffer unsharded, on the CPU. A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return FullState(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state with full (unsharded) tensors, keyed like a plain optimizer's. A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
