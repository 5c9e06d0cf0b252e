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
