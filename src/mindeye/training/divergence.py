"""Non-finite loss detection on every step without a host sync.

The trainer records each step's verdict in a device-side flag, skips the optimizer update of a
non-finite step on the device (the fused AdamW's ``found_inf`` on GPU; a free host check on the
CPU) and reads the flag only at the syncs it already makes (log steps and the end of an epoch).
A run whose flag is set is stopped before any checkpoint or weights are written.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from mindeye.training.distributed import DistInfo


class DivergenceGuard:
    def __init__(self, device: str, dist: DistInfo) -> None:
        self.device = torch.device(device)
        self.dist = dist
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)  # -1: all finite so far

    def observe(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """Record step ``step``'s loss; returns a device bool tensor, True when it is non-finite."""
        bad = ~torch.isfinite(loss.detach()).all()
        first = (self.first_bad_step < 0) & bad
        self.first_bad_step = torch.where(first, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        return bad

    def optimizer_step(self, optimizer: torch.optim.Optimizer, bad: torch.Tensor, scaler=None) -> None:
        """optimizer.step(), skipped when ``bad`` (no host sync on a GPU with a fused optimizer)."""
        if scaler is not None:  # the grad scaler already skips steps with non-finite gradients
            scaler.step(optimizer)
            scaler.update()
            return
        if self.device.type == "cpu":
            if not bool(bad):  # a CPU tensor: reading it is not a device sync
                optimizer.step()
            return
        fused = any(group.get("fused") for group in optimizer.param_groups)
        if fused:
            optimizer.found_inf = bad.float()  # fused AdamW skips the update (and its step count) where 1
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
        else:  # no device-side skip: the update may be lost, but the run stops at the next sync unsaved
            optimizer.step()

    def diverged_at(self) -> int | None:
        """The first non-finite step on any process, or None (a host sync: call it where one happens)."""
        flag = self.first_bad_step.clone()
        if self.dist.enabled:
            # max over processes of the step, with -1 (none) losing to any real step.
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        value = int(flag.item())
        return None if value < 0 else value
