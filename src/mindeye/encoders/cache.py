"""The target cache: every frozen encoder's output for every unique image of a store, computed once.

Layout (inside the subject store)::

    STORE/targets/<encoder>-<fingerprint[:12]>/
        manifest.json   encoder, fingerprint, weights, preprocessing, output_shape, dtype, n_images,
                        images checksum, chunk progress, views, complete flag
        targets.npy     float16 (n_images, *output_shape), memory-mapped, row i = image i of the store
        views.npy       float16 (n_images, K, *output_shape): K augmented views per image (optional)

The directory name carries the encoder fingerprint (weights + preprocessing), and the manifest also
records the checksum of the store's images.npy, so a cache made with other weights, another
preprocessing or other images is never read: :func:`load_targets` refuses it and says which
``mindeye embed`` command produces the right one. Work is done in chunks; after each chunk the arrays
are flushed and the manifest is replaced atomically, so an interrupted run resumes at the first
unfinished chunk and an unfinished cache is never taken for a finished one.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye import __version__
from mindeye.data.store import SubjectStore, file_sha256
from mindeye.diskspace import require_space, reserve_file
from mindeye.encoders import augment
from mindeye.encoders.base import ImageEncoder
from mindeye.encoders.registry import ENCODERS, encoder_fingerprint, get_encoder, get_spec
from mindeye.errors import MindEyeError, WeightsUnavailableError
from mindeye.safe_load import NPY_LOAD_ERRORS, npy_error
from mindeye.utils.chunks import finish_chunk, n_chunks, open_chunked
from mindeye.utils.files import write_json_atomic
from mindeye.utils.locks import FileLock
from mindeye.utils.logs import progress_bar

CACHE_FORMAT = 1
MANIFEST = "manifest.json"


def cache_dir(store_path: str | Path, encoder_name: str, fingerprint: str) -> Path:
    return Path(store_path) / "targets" / f"{encoder_name}-{fingerprint[:12]}"


def cache_lock_path(directory: Path) -> Path:
    """The lock file of one target cache (outside targets/, which holds only caches): STORE/.locks/NAME.lock."""
    return Path(directory).parent.parent / ".locks" / f"{Path(directory).name}.lock"


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn manifest cannot happen with atomic writes; treat as absent anyway


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(directory / MANIFEST, manifest)


def images_checksum(store: SubjectStore) -> str:
    checksum = store.meta.get("checksums", {}).get("images.npy")
    return checksum or file_sha256(store.data_path / "images.npy")


def embed_command(store_path: str | Path, encoder_name: str, weights: str | None = None, views: int = 0,
                  random_init: bool = False, **options: Any) -> str:
    """The exact CLI command that produces a cache (used in error messages)."""
    cmd = ["mindeye", "embed", "--data", str(store_path), "--encoder", encoder_name]
    if "preprocess" in options:
        cmd += ["--clip-preprocess", str(options["preprocess"])]
    if "image_size" in options:
        cmd += ["--image-size", str(options["image_size"])]
    if weights:
        cmd += ["--weights", str(weights)]
    if views:
        cmd += ["--views", str(views)]
    if random_init:
        cmd += ["--random-init"]
    return shlex.join(cmd)


def _encode_into(encoder: ImageEncoder, images: np.ndarray, out: np.ndarray, batch_size: int,
                 transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
                 on_batch: Callable[[int], Any] | None = None) -> None:
    """Encode ``images`` (a memory-mapped slice) batch by batch into ``out`` as float16.

    The next batch is read from disk (and augmented) in a background thread while the current one is
    encoded, so the accelerator is not left waiting on the memory map.
    """
    def load(s: int) -> np.ndarray:
        batch = np.ascontiguousarray(images[s:s + batch_size])
        return transform(batch, s) if transform is not None else batch

    starts = list(range(0, len(images), batch_size))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, starts[0]) if starts else None
        for i, s in enumerate(starts):
            batch = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(load, starts[i + 1])
            y = encoder.encode(batch).to(torch.float16)
            if not bool(torch.isfinite(y).all()):
                raise MindEyeError(
                    f"encoder '{encoder.name}' produced NaN/inf (or values beyond float16 range); check the "
                    f"weights, or run with --device cpu to compute in float32"
                )
            out[s:s + len(y)] = y.cpu().numpy()
            if on_batch is not None:
                on_batch(len(y))


def _reserve_or_remove(path: Path, directory: Path | None) -> None:
    """Reserve a new memory-mapped array's blocks; on failure remove it (and ``directory``, holding no work yet)."""
    try:
        reserve_file(path)
    except BaseException:
        path.unlink(missing_ok=True)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def embed_store(
    store_path: str | Path,
    encoder_name: str,
    weights: str | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    chunk_size: int = 1024,
    views: int = 0,
    random_init: bool = False,
    progress: bool = True,
    *,
    config: Any = None,
    encoder: ImageEncoder | None = None,
    views_seed: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Compute (or finish) the target cache of ``encoder_name`` for the store; returns its directory.

    Already complete: returns at once. Interrupted earlier: continues at the first unfinished chunk
    (with the batch size recorded then, unless ``batch_size`` is given, so the bytes are identical to an
    uninterrupted run). ``views=K`` also caches K augmented views per image (see
    :mod:`mindeye.encoders.augment`). ``encoder``: an already built encoder to use instead of building
    ``encoder_name``. ``random_init``/``config``: tests and benchmarks only.
    """
    store = SubjectStore(store_path)
    if views < 0:
        raise MindEyeError(f"--views must be >= 0, got {views}")
    if chunk_size <= 0 or (batch_size is not None and batch_size <= 0):
        raise MindEyeError("--batch-size and the chunk size must be positive")
    enc = encoder if encoder is not None else get_encoder(
        encoder_name, weights, device, random_init=random_init, config=config, **options)
    if views and enc.augmentation is None:
        raise MindEyeError(
            f"encoder '{enc.name}' has no augmentation (its targets are not augmented in MindEye); "
            "drop --views"
        )
    fingerprint = enc.fingerprint
    out = cache_dir(store.data_path, enc.name, fingerprint)  # a store view's targets are its parent's
    # One writer per cache: a second `embed` of the same cache (other --views, --overwrite) waits for none
    # and is refused, so a manifest never describes arrays another process rewrote meanwhile.
    with FileLock(cache_lock_path(out), f"the target cache {out}",
                  "wait for that `mindeye embed` to finish, then run this one"):
        return _embed_locked(store, enc, out, fingerprint, weights, chunk_size, batch_size, views, random_init,
                             progress, views_seed, overwrite)


def _arrays_match(out: Path, manifest: dict[str, Any]) -> bool:
    """The arrays on disk have the shapes the manifest records (a truncated or replaced file does not)."""
    try:
        if np.load(out / "targets.npy", mmap_mode="r").shape[0] != manifest.get("n_images"):
            return False
        if manifest.get("views"):
            return np.load(out / "views.npy", mmap_mode="r").shape[:2] == (manifest["n_images"], manifest["views"])
        return True
    except (*NPY_LOAD_ERRORS, IndexError):
        return False


def _embed_locked(store: SubjectStore, enc: ImageEncoder, out: Path, fingerprint: str, weights: str | None,
                  chunk_size: int, batch_size: int | None, views: int, random_init: bool, progress: bool,
                  views_seed: int, overwrite: bool) -> Path:
    n, shape = store.n_images, tuple(int(s) for s in enc.output_shape)
    key = {"encoder": enc.name, "fingerprint": fingerprint, "images_checksum": images_checksum(store),
           "n_images": n, "output_shape": list(shape), "dtype": "float16", "format": CACHE_FORMAT}

    manifest = read_manifest(out)
    if manifest is not None and (overwrite or any(manifest.get(k) != v for k, v in key.items())
                                 or (manifest.get("complete") and not _arrays_match(out, manifest))):
        shutil.rmtree(out)  # stale (store re-prepared), damaged (arrays do not match the manifest) or replaced
        manifest = None
    if manifest is not None and manifest["complete"] and (views == 0 or manifest["views"] == views):
        return out
    item_bytes = 2 * int(np.prod(shape))  # float16
    needed = (0 if manifest is not None else n * item_bytes) + (
        n * views * item_bytes if views and (manifest is None or manifest["views"] != views) else 0)
    require_space(out, needed)  # e.g. --views 1e14: refused here, before any file is made

    spec = ENCODERS.get(enc.name)
    if manifest is None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "views.npy").unlink(missing_ok=True)
        targets = open_chunked(out / "targets.npy", (n, *shape))
        _reserve_or_remove(out / "targets.npy", out)
        manifest = {
            **key,
            "weights": "random-init" if random_init else (weights or (spec.default_weights if spec else None)),
            "random_init": random_init,
            "preprocessing": enc.preprocessing,
            "mindeye_version": __version__,
            "chunk_size": chunk_size,
            "batch_size": batch_size or 64,
            "n_chunks": n_chunks(n, chunk_size),
            "chunks_done": 0,
            "views": 0,
            "view_chunks_done": 0,
            "augmentation": None,
            "complete": False,
        }
    else:
        targets = open_chunked(out / "targets.npy")
        if batch_size is not None:
            manifest["batch_size"] = batch_size
    chunk_size, batch_size = manifest["chunk_size"], manifest["batch_size"]
    chunks = manifest["n_chunks"]
    if views and manifest["views"] != views:  # new or different number of views: (re)compute them
        view_arr = open_chunked(out / "views.npy", (n, views, *shape))
        _reserve_or_remove(out / "views.npy", out if manifest.get("chunks_done", 0) == 0 else None)
        manifest.update(views=views, view_chunks_done=0, augmentation=augment.describe(enc.augmentation, views_seed))
    elif manifest["views"]:
        view_arr = open_chunked(out / "views.npy")
    manifest["complete"] = False
    manifest["device"] = str(enc.device)
    _write_manifest(out, manifest)

    n_views = manifest["views"]
    seed = (manifest["augmentation"] or {}).get("seed", views_seed)
    done = min(manifest["chunks_done"] * chunk_size, n) + n_views * min(manifest["view_chunks_done"] * chunk_size, n)
    bar = progress_bar(total=n * (1 + n_views), initial=done, unit="img", desc=f"embed {enc.name}", disable=not progress,
               dynamic_ncols=True)
    try:
        for c in range(chunks):
            need_targets = c >= manifest["chunks_done"]
            need_views = n_views > 0 and c >= manifest["view_chunks_done"]
            if not (need_targets or need_views):
                continue
            lo, hi = c * chunk_size, min((c + 1) * chunk_size, n)
            images = store.images[lo:hi]  # memory-mapped; read batch by batch
            if need_targets:
                _encode_into(enc, images, targets[lo:hi], batch_size, on_batch=bar.update)
            if need_views:
                for k in range(n_views):
                    def view_k(batch: np.ndarray, start: int, k: int = k, lo: int = lo) -> np.ndarray:
                        idx = np.arange(lo + start, lo + start + len(batch))
                        return augment.augment_batch(batch, idx, k, enc.augmentation, seed).numpy()

                    _encode_into(enc, images, view_arr[lo:hi, k], batch_size, view_k, on_batch=bar.update)
            # Data first, then the manifest: a chunk counts as done only once its bytes are on disk.
            done_now = ({"chunks_done": c + 1} if need_targets else {}) | (
                {"view_chunks_done": c + 1} if need_views else {})
            finish_chunk(out / MANIFEST, manifest, [targets, view_arr] if n_views else [targets], **done_now)
    finally:
        bar.close()
    manifest["complete"] = True
    _write_manifest(out, manifest)
    return out


def _is_usable(manifest: dict[str, Any] | None, checksum: str, n_images: int, views: bool) -> bool:
    return (
        manifest is not None and manifest.get("complete") is True and manifest.get("format") == CACHE_FORMAT
        and manifest.get("images_checksum") == checksum and manifest.get("n_images") == n_images
        and manifest.get("chunks_done") == manifest.get("n_chunks")
        and (not views or (manifest.get("views", 0) > 0 and manifest.get("view_chunks_done") == manifest.get("n_chunks")))
    )


def find_cache(
    store_path: str | Path,
    encoder_name: str,
    weights: str | None = None,
    views: bool = False,
    random_init: bool = False,
    config: Any = None,
    **options: Any,
) -> Path:
    """Directory of the complete cache matching the encoder's CURRENT fingerprint and the store's images.

    Raises MindEyeError (naming the ``mindeye embed`` command to run) when it is missing, stale or unfinished.
    When the weights are not on this machine (targets computed elsewhere), the cache made from the same
    ``--weights`` value with the same preprocessing is accepted -- the weights themselves cannot be checked.
    """
    store = SubjectStore(store_path)
    checksum = images_checksum(store)
    cmd = embed_command(store.path, encoder_name, weights, 1 if views else 0, random_init, **options)
    if views:
        cmd = cmd.replace("--views 1", "--views K")
    spec = get_spec(encoder_name)
    root = store.data_path / "targets"  # a store view's targets are its parent's
    others = sorted(root.glob(f"{encoder_name}-*")) if root.exists() else []
    try:
        fingerprint = encoder_fingerprint(encoder_name, weights, random_init, config, **options)
    except WeightsUnavailableError as exc:
        wanted = weights or spec.default_weights
        pre = spec.preprocessing(random_init, config, options)
        for d in others:
            m = read_manifest(d)
            if _is_usable(m, checksum, store.n_images, views) and m["weights"] == wanted and m["preprocessing"] == pre:
                return d
        raise WeightsUnavailableError(
            f"{exc}\n(No target cache made from weights '{wanted}' exists in {store.path} either; "
            f"compute one where the weights are available with: {cmd})"
        ) from None
    d = cache_dir(store.data_path, encoder_name, fingerprint)
    m = read_manifest(d)
    if _is_usable(m, checksum, store.n_images, views) and m.get("fingerprint") == fingerprint:
        return d
    if m is None:
        stale = [o.name for o in others if o != d]
        extra = (f" Existing cache(s) {', '.join(stale)} were made with other weights or preprocessing "
                 f"and are not used (delete them to reclaim space).") if stale else ""
        problem = f"no target cache for encoder '{encoder_name}' with the current weights and preprocessing " \
                  f"(fingerprint {fingerprint[:12]}) in {store.path}.{extra}"
    elif m.get("images_checksum") != checksum or m.get("n_images") != store.n_images:
        problem = f"the target cache {d} was computed from other images (the store was re-prepared); it is stale."
    elif not m.get("complete") or m.get("chunks_done") != m.get("n_chunks"):
        problem = (f"the target cache {d} is unfinished ({m.get('chunks_done')}/{m.get('n_chunks')} chunks; "
                   f"an interrupted `mindeye embed`); running embed again resumes it.")
    elif views:
        problem = f"the target cache {d} has no augmented views."
    else:
        problem = f"the target cache {d} does not match (format {m.get('format')})."
    raise MindEyeError(f"{problem} Compute the targets with:\n  {cmd}")


def load_targets(
    store_path: str | Path,
    encoder_name: str,
    weights: str | None = None,
    views: bool = False,
    random_init: bool = False,
    config: Any = None,
    **options: Any,
) -> np.ndarray:
    """Memory-mapped float16 targets: ``(n_images, *shape)``, or ``(n_images, K, *shape)`` with ``views``.

    Row i belongs to image i of the store. Only a complete cache matching the encoder's current
    fingerprint and the store's images is returned; anything else raises MindEyeError with the
    ``mindeye embed`` command to run.
    """
    d = find_cache(store_path, encoder_name, weights, views, random_init, config, **options)
    path = d / ("views.npy" if views else "targets.npy")
    try:
        arr = np.load(path, mmap_mode="r")
    except NPY_LOAD_ERRORS as exc:  # truncated or damaged after it was finished
        raise MindEyeError(f"the target cache file {path} is damaged ({npy_error(exc)}); recompute it "
                           f"with:\n  {embed_command(store_path, encoder_name, weights, 1 if views else 0, random_init)}"
                           " --overwrite") from None
    return arr


def sample_views(view_targets: np.ndarray, image_indices: np.ndarray, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """Pick one cached augmented view per image (uniformly): float32 ``(B, *shape)`` for a training batch."""
    idx = np.asarray(image_indices)
    k = torch.randint(view_targets.shape[1], (len(idx),), generator=generator).numpy()
    order = np.argsort(idx, kind="stable")  # memory-map reads in ascending order
    picked = np.empty((len(idx), *view_targets.shape[2:]), dtype=np.float32)
    picked[order] = view_targets[idx[order], k[order]]
    return torch.from_numpy(picked)
