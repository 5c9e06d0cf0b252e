"""The training data path: gather -> transfer -> convert, for both pipelines.

The sampler (:mod:`mindeye.training.data` / the tasks in the trainer) decides *which* rows a step
uses and draws every random choice that affects the data (augmented view, repetition weights);
this module only turns those indices into float32 device tensors, in one of three modes:

* ``simple``    today's reference path: gather on the host from the memory map, convert to float32
                on the host, copy from pageable memory, serial with the step.
* ``resident``  the float16 voxels and targets of the sampled images live on the device; a step
                indexes them there and converts to float32 there (no host work, no copies).
* ``prefetch``  a background thread gathers the next ``depth`` batches (float16) into pinned host
                buffers (``torch.index_select(..., out=)`` releases the GIL), the step copies them
                with ``non_blocking=True`` and converts on the device.
* ``auto``      ``resident`` on a GPU when the data fit in ``resident_fraction`` of its free memory,
                else ``prefetch``; ``simple`` on the CPU (no device to overlap with; the measured
                CPU numbers are in benchmarks/README.md).

Every mode yields bit-identical batches for the same requests (float16 -> float32 is exact and the
repetition mix is the same float32 einsum); tests/test_batches.py checks it.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mindeye.errors import MindEyeError

MODES = ("auto", "resident", "prefetch", "simple")


@dataclass
class Request:
    """What one step needs; every random choice is already made.

    ``voxel_rows`` index dim 0 of the voxel table; with a (M, R, V) table and ``repetition``
    given, the pair (row, repetition) picks one (V,) row. ``mix_weights`` (B, R) average a
    (M, R, V) table's repetitions instead. ``image_index`` are store image indices for the
    targets; ``views`` (B,) pick an augmented view per sample (0 = the plain image).
    """

    voxel_rows: np.ndarray
    image_index: np.ndarray
    repetition: np.ndarray | None = None
    mix_weights: torch.Tensor | None = None
    views: np.ndarray | None = None


@dataclass
class TargetTable:
    """A float16 target cache: ``plain`` (n_images, *shape) and optional ``views`` (n_images, K, *shape)."""

    name: str
    plain: np.ndarray
    views: np.ndarray | None = None
    view_request: bool = True  # whether this table uses Request.views (False: always the plain target)


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A torch view of a (possibly read-only memory-mapped) array, no copy."""
    with warnings.catch_warnings():  # read-only memmap: we never write through this view
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(arr))


def reference_target(table: TargetTable, req: Request) -> torch.Tensor:
    """Today's host path for one table: sorted memory-map reads, float32 on the host."""
    idx = np.asarray(req.image_index)
    if table.views is not None and table.view_request and req.views is not None:
        k = np.asarray(req.views)
        out = np.empty((len(idx), *table.plain.shape[1:]), dtype=np.float16)
        plain = k == 0
        out[plain] = table.plain[idx[plain]]
        out[~plain] = table.views[idx[~plain], k[~plain] - 1]
        return torch.from_numpy(out.astype(np.float32))
    if not isinstance(table.plain, np.memmap):  # in RAM: one gather + convert (the floor, data_throughput.py)
        return _as_tensor(table.plain).index_select(0, torch.from_numpy(idx.astype(np.int64))).float()
    order = np.argsort(idx, kind="stable")  # a memory map: sorted reads keep the page cache local
    rows = np.asarray(table.plain[idx[order]])
    out = np.empty_like(rows)
    out[order] = rows
    return torch.from_numpy(out.astype(np.float32))


def _mix(vox: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return torch.einsum("br,brv->bv", weights, vox.float())


def available_host_bytes() -> int | None:
    """RAM available to new allocations (Linux MemAvailable; elsewhere free pages), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class BatchLoader:
    """Turns a sequence of :class:`Request` into dicts of float32 device tensors.

    ``voxels`` is the float16 host table (N, V) or (M, R, V); ``tables`` the target caches;
    ``images`` the store image indices requests may name (resident mode uploads only those).
    """

    def __init__(self, voxels: torch.Tensor, tables: Sequence[TargetTable], images: np.ndarray, device: str,
                 mode: str = "auto", depth: int = 3, resident_fraction: float = 0.25) -> None:
        if mode not in MODES:
            raise MindEyeError(f"train.data_path={mode!r}; choose one of {', '.join(MODES)}")
        self.voxels = voxels
        self.tables = list(tables)
        self.images = np.unique(np.asarray(images))
        self.device = torch.device(device)
        self.depth = max(1, int(depth))
        self.mode = self._choose(mode, resident_fraction)
        self._resident: dict[str, torch.Tensor] = {}
        if self.mode == "resident":
            self._upload()

    # -- mode selection -----------------------------------------------------------------------------
    def resident_bytes(self) -> int:
        """Bytes the resident mode keeps on the device (voxels + targets of ``images``, float16)."""
        n = self.voxels.numel() * self.voxels.element_size()
        for t in self.tables:
            row = int(np.prod(t.plain.shape[1:])) * t.plain.dtype.itemsize
            n += len(self.images) * row
            if t.views is not None and t.view_request:
                n += len(self.images) * t.views.shape[1] * row
        return n

    def _choose(self, mode: str, fraction: float) -> str:
        if mode != "auto":
            return mode
        if self.device.type != "cuda":
            # On the CPU "resident" holds the float16 tables in RAM and indexes them there: at NSD scale
            # 4.9x the simple path's memory-map reads and 1.2x the gather floor (benchmarks/README.md).
            free = available_host_bytes()
            return "resident" if free is not None and self.resident_bytes() <= fraction * free else "simple"
        free, _ = torch.cuda.mem_get_info(self.device)
        return "resident" if self.resident_bytes() <= fraction * free else "prefetch"

    def _upload(self) -> None:
        """Copy the float16 tables to the device in chunks (never a full host float32 copy)."""
        dev = self.device
        self._resident["voxels"] = self.voxels.to(dev)
        lookup = torch.full((int(self.images.max()) + 1 if len(self.images) else 1,), -1, dtype=torch.long)
        lookup[torch.from_numpy(self.images)] = torch.arange(len(self.images))
        self._resident["lookup"] = lookup.to(dev)
        for t in self.tables:
            self._resident[t.name] = self._upload_rows(t.plain)
            if t.views is not None and t.view_request:
                self._resident[t.name + ".views"] = self._upload_rows(t.views)

    def _upload_rows(self, arr: np.ndarray, chunk: int = 512) -> torch.Tensor:
        out = torch.empty((len(self.images), *arr.shape[1:]), dtype=_as_tensor(arr[:0]).dtype, device=self.device)
        for s in range(0, len(self.images), chunk):
            out[s:s + chunk] = torch.from_numpy(np.asarray(arr[self.images[s:s + chunk]])).to(self.device)
        return out

    # -- the three paths ----------------------------------------------------------------------------
    def batches(self, requests: Iterable[Request]) -> Iterator[dict[str, torch.Tensor]]:
        if self.mode == "resident":
            return (self._resident_batch(r) for r in requests)
        if self.mode == "prefetch":
            return self._prefetch(requests)
        return (self._simple_batch(r) for r in requests)

    def _voxel_rows(self, req: Request) -> np.ndarray:
        rows = np.asarray(req.voxel_rows, dtype=np.int64)
        if req.repetition is not None:
            rows = rows * self.voxels.shape[1] + np.asarray(req.repetition, dtype=np.int64)
        return rows

    def _flat_voxels(self, vox: torch.Tensor, req: Request) -> torch.Tensor:
        return vox.flatten(0, 1) if req.repetition is not None else vox

    def _simple_batch(self, req: Request) -> dict[str, torch.Tensor]:
        rows = torch.from_numpy(self._voxel_rows(req))
        vox = self._flat_voxels(self.voxels, req).index_select(0, rows)  # ~4x advanced indexing on the CPU
        vox = _mix(vox, req.mix_weights) if req.mix_weights is not None else vox.float()
        out = {"voxels": vox.to(self.device)}
        for t in self.tables:
            out[t.name] = reference_target(t, req).to(self.device)
        return out

    def _resident_batch(self, req: Request) -> dict[str, torch.Tensor]:
        dev, res = self.device, self._resident
        # index_select, not advanced indexing: the same rows, ~4x faster on the CPU (measured)
        rows = torch.from_numpy(self._voxel_rows(req)).to(dev, non_blocking=True)
        vox = self._flat_voxels(res["voxels"], req).index_select(0, rows)
        if req.mix_weights is not None:
            vox = _mix(vox, req.mix_weights.to(dev, non_blocking=True))
        else:
            vox = vox.float()
        out = {"voxels": vox}
        image = torch.from_numpy(np.asarray(req.image_index, dtype=np.int64)).to(dev, non_blocking=True)
        pos = res["lookup"].index_select(0, image)
        for t in self.tables:
            plain = res[t.name].index_select(0, pos)
            if t.views is not None and t.view_request and req.views is not None:
                k = torch.from_numpy(np.asarray(req.views, dtype=np.int64)).to(dev, non_blocking=True)
                views = res[t.name + ".views"]
                viewed = views.flatten(0, 1).index_select(0, pos * views.shape[1] + (k - 1).clamp_min(0))
                plain = torch.where((k == 0).view(-1, *([1] * (plain.ndim - 1))), plain, viewed)
            out[t.name] = plain.float()
        return out

    # -- prefetch -------------------------------------------------------------------------------------
    def _host_gather(self, req: Request, slot: dict[str, torch.Tensor]) -> None:
        """float16 rows of one request into one set of (pinned) host buffers; runs in the worker."""
        rows = torch.from_numpy(self._voxel_rows(req))
        vox_src = self._flat_voxels(self.voxels, req)
        torch.index_select(vox_src, 0, rows, out=slot["voxels"][:len(rows)])
        idx = np.asarray(req.image_index, dtype=np.int64)
        for t in self.tables:
            buf = slot[t.name][:len(idx)]
            if t.views is not None and t.view_request and req.views is not None:
                k = np.asarray(req.views)
                plain = np.flatnonzero(k == 0)
                viewed = np.flatnonzero(k != 0)
                buf[torch.from_numpy(plain)] = torch.from_numpy(np.asarray(t.plain[idx[plain]]))
                buf[torch.from_numpy(viewed)] = torch.from_numpy(np.asarray(t.views[idx[viewed], k[viewed] - 1]))
            else:
                order = np.argsort(idx, kind="stable")  # ascending memory-map reads
                gathered = torch.index_select(_as_tensor(t.plain), 0, torch.from_numpy(idx[order]))
                buf[torch.from_numpy(order)] = gathered

    def _new_slot(self, req: Request, b: int) -> dict[str, torch.Tensor]:
        pin = self.device.type == "cuda"
        vshape = (b, *self.voxels.shape[1:]) if req.repetition is None else (b, self.voxels.shape[-1])
        slot = {"voxels": torch.empty(vshape, dtype=self.voxels.dtype, pin_memory=pin)}
        for t in self.tables:
            slot[t.name] = torch.empty((b, *t.plain.shape[1:]), dtype=_as_tensor(t.plain[:0]).dtype, pin_memory=pin)
        return slot

    def _prefetch(self, requests: Iterable[Request]) -> Iterator[dict[str, torch.Tensor]]:
        """Worker gathers ahead into ``depth + 1`` buffer slots; the caller copies and converts."""
        reqs = list(requests)
        if not reqs:
            return
        n_slots = self.depth + 1
        largest = max(len(r.image_index) for r in reqs)
        slots = [self._new_slot(reqs[0], largest) for _ in range(n_slots)]
        free: queue.Queue = queue.Queue()
        for i in range(n_slots):
            free.put((i, None))
        ready: queue.Queue = queue.Queue()
        stop = threading.Event()

        def work() -> None:
            try:
                for req in reqs:
                    while True:
                        if stop.is_set():
                            return
                        try:
                            i, event = free.get(timeout=0.05)
                            break
                        except queue.Empty:
                            continue
                    if event is not None:
                        event.synchronize()  # the previous non-blocking copy out of this slot is done
                    self._host_gather(req, slots[i])
                    ready.put((i, req, None))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                ready.put((None, None, exc))

        worker = threading.Thread(target=work, name="mindeye-prefetch", daemon=True)
        worker.start()
        try:
            for _ in reqs:
                while True:
                    try:
                        i, req, exc = ready.get(timeout=0.5)
                        break
                    except queue.Empty:
                        if not worker.is_alive() and ready.empty():
                            raise MindEyeError("the data prefetch thread stopped without a batch") from None
                if exc is not None:
                    raise exc
                yield self._device_batch(slots[i], req, i, free)
        finally:
            stop.set()
            worker.join()

    def _device_batch(self, slot: dict[str, torch.Tensor], req: Request, i: int,
                      free: queue.Queue) -> dict[str, torch.Tensor]:
        dev = self.device
        b = len(req.image_index)
        host = {k: v[:b] for k, v in slot.items()}
        if dev.type == "cuda":
            host = {k: v.to(dev, non_blocking=True) for k, v in host.items()}
            event = torch.cuda.Event()
            event.record()  # the worker waits on it before refilling this slot
            free.put((i, event))
        out = {"voxels": _mix(host["voxels"], req.mix_weights.to(dev, non_blocking=True))
               if req.mix_weights is not None else host["voxels"].to(torch.float32, copy=True)}
        out.update({t.name: host[t.name].to(torch.float32, copy=True) for t in self.tables})
        if dev.type != "cuda":
            free.put((i, None))  # on the CPU the outputs are fresh copies: the slot is free again
        return out


def thread_alive(name: str = "mindeye-prefetch") -> bool:
    """Whether a prefetch worker is running (tests check clean shutdown)."""
    return any(t.name == name and t.is_alive() for t in threading.enumerate())
