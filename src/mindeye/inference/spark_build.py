"""``mindeye index build --engine spark``: embeddings and index built by Apache Spark tasks.

The same steps as :func:`mindeye.inference.index.build_index`, with the two per-item loops handed to Spark
(autofaiss' distributed mode works the same way: train on the driver, add in executors, merge):

1. the driver lists the collection (``ids.csv``) into ``OUT.partial/`` (on storage every executor sees:
   a shared filesystem, or the local disk in ``local[N]`` mode);
2. one Spark task per part of ``part_size`` images encodes them and writes ``embeddings/part-NNNNN.npy``
   atomically; parts already written are not scheduled again (a failed or killed job resumes);
3. the driver chooses and trains the index (:func:`mindeye.inference.ann.choose_index`);
4. one Spark task per shard adds its vectors to the trained index and writes ``shards/shard-NNNNN.index``
   (again idempotent);
5. the driver merges the shards into on-disk inverted lists, tunes nprobe, and renames the directory.

``master``: a Spark master URL (``local[4]``, ``spark://host:7077``, ``yarn``...); ``None`` uses the active
session when there is one (``spark-submit``), else ``local[*]``. A task's failure (a missing image, a bad
encoder) is reported as one MindEyeError naming it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mindeye import __version__
from mindeye.errors import MindEyeError
from mindeye.inference import ann
from mindeye.inference.index import (
    EMBEDDINGS_DIR,
    MANIFEST,
    _embed_batch,
    _read_json,
    encoder_input_size,
    finish_ann,
    require_faiss,
)
from mindeye.inference.sources import IDS, ImageSource, open_source
from mindeye.utils.files import atomic_path, replace_dir, write_json_atomic

_ENCODERS: dict[tuple, Any] = {}  # one encoder per Python worker, reused by its tasks


def require_spark() -> Any:
    try:
        import pyspark  # noqa: F401
        from pyspark.sql import SparkSession
    except ModuleNotFoundError:
        raise MindEyeError("--engine spark needs pyspark (and Java 17+), which is not installed; install it "
                           "with: pip install 'mindeye[spark]'") from None
    return SparkSession


def spark_session(master: str | None) -> Any:
    """The active Spark session (spark-submit), or a new one on ``master`` (default ``local[*]``)."""
    session_cls = require_spark()
    active = session_cls.getActiveSession()
    if active is not None and master is None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this interpreter (local mode)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    try:
        return (session_cls.builder.master(master or "local[*]").appName("mindeye-index")
                .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                .config("spark.task.maxFailures", "1").getOrCreate())
    except Exception as exc:  # py4j / Java start-up failures (no Java, bad master URL)
        raise MindEyeError(f"could not start Spark on {master or 'local[*]'}: {str(exc).splitlines()[0][:200]} "
                           "(Spark needs Java 17+ on PATH or JAVA_HOME)") from None


def _task_error(exc: Exception) -> MindEyeError:
    """One line out of a failed Spark job: the MindEyeError raised in the task if there is one."""
    text = str(exc)
    found = re.findall(r"MindEyeError: (.+)", text)
    if found:
        return MindEyeError(f"a Spark task failed: {found[-1].strip()}")
    errors = re.findall(r"^\w*(?:Error|Exception): (.+)$", text, flags=re.M)
    return MindEyeError(f"a Spark task failed: {(errors[-1] if errors else text.splitlines()[0])[:300]}")


def part_path(tmp: Path, part: int) -> Path:
    return Path(tmp) / EMBEDDINGS_DIR / f"part-{part:05d}.npy"


def _embed_part(part: int, *, tmp: str, described: dict[str, Any], encoder: tuple, part_size: int, n: int,
                batch_size: int, size: int | None) -> None:
    """Spark task: encode images ``part * part_size ...`` and write their part file (skipped if present)."""
    from mindeye.encoders.registry import get_encoder

    out = part_path(Path(tmp), part)
    if out.exists():
        return
    if encoder not in _ENCODERS:
        name, weights, device, random_init = encoder
        _ENCODERS[encoder] = get_encoder(name, weights, device, random_init=random_init)
    enc = _ENCODERS[encoder]
    source = ImageSource.read(Path(tmp), described)
    lo, hi = part * part_size, min((part + 1) * part_size, n)
    rows = [_embed_batch(enc, source.load(range(b, min(b + batch_size, hi))), size) for b in range(lo, hi, batch_size)]
    out.parent.mkdir(exist_ok=True)
    with atomic_path(out) as t, open(t, "wb") as f:
        np.save(f, np.concatenate(rows))


def _add_shard_task(shard: int, *, tmp: str, files: list[str], shard_size: int) -> None:
    """Spark task: add one shard of the stored embeddings to the trained index (skipped if written)."""
    vectors = ann.Embeddings(files)
    lo, hi = shard * shard_size, min((shard + 1) * shard_size, len(vectors))
    ann.add_shard(Path(tmp), shard, vectors[lo:hi], lo)


def _run(spark: Any, func: Any, items: list[int]) -> None:
    if not items:
        return
    try:
        spark.sparkContext.parallelize(items, len(items)).foreach(func)
    except MindEyeError:
        raise
    except Exception as exc:  # Py4JJavaError wraps the task's Python traceback
        raise _task_error(exc) from None


def build_index_spark(images: Any, encoder_name: str, out: str | Path, *, master: str | None = None,
                      weights: str | None = None, device: str = "cpu", index_type: str = "auto",
                      batch_size: int = 64, part_size: int = 10_000, image_size: int | None = None,
                      nlist: int | None = None, pq_m: int | None = None, overwrite: bool = False,
                      random_init: bool = False, seed: int = 0, max_index_memory: str | int = ann.DEFAULT_MEMORY,
                      shard_size: int = 1_000_000, nprobe: int | None = None, spark: Any = None) -> Path:
    """Build ``out`` like :func:`~mindeye.inference.index.build_index`, with Spark tasks (module docstring).

    The result is the same index directory (embeddings as ``embeddings/part-*.npy`` instead of one file).
    ``spark``: an existing SparkSession to use (else :func:`spark_session` with ``master``).
    """
    from mindeye.encoders.registry import get_encoder

    out = Path(out)
    if out.exists() and not overwrite:
        raise MindEyeError(f"{out} already exists; choose another --out, delete it, or pass --overwrite to rebuild")
    if batch_size <= 0 or part_size <= 0:
        raise MindEyeError("--batch-size and --part-size must be positive")
    require_faiss()
    require_spark()
    source = open_source(images)
    enc = get_encoder(encoder_name, weights, "cpu", random_init=random_init)  # the driver: name, shape, fingerprint
    size = None if source.kind == "store" else (image_size or encoder_input_size(enc.preprocessing))
    dim, n = int(np.prod(enc.output_shape)), len(source)
    key = {"format": 1, "engine": "spark", "encoder": enc.name, "fingerprint": enc.fingerprint, "dim": dim,
           "output_shape": list(enc.output_shape), "count": n, "source": source.describe(), "image_size": size,
           "part_size": part_size}
    tmp = out.with_name(out.name + ".partial")
    state = _read_json(tmp / MANIFEST)
    if state is not None and any(state.get(k) != v for k, v in key.items()):
        print(f"note: {tmp} holds an interrupted build with other images or settings; starting over", flush=True)
        state = None
    if state is None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        source.write_ids(tmp / IDS)
        state = {**key, "batch_size": batch_size, "complete": False, "preprocessing": enc.preprocessing,
                 "weights": "random-init" if random_init else weights}
        write_json_atomic(tmp / MANIFEST, state, indent=1)
    del enc

    spark = spark or spark_session(master)
    n_parts = -(-n // part_size)
    todo = [p for p in range(n_parts) if not part_path(tmp, p).exists()]
    _run(spark, partial(_embed_part, tmp=str(tmp), described=source.describe(),
                        encoder=(encoder_name, weights, device, random_init), part_size=part_size, n=n,
                        batch_size=batch_size, size=size), todo)
    files = [str(part_path(tmp, p)) for p in range(n_parts)]
    vectors = ann.Embeddings(files)
    if vectors.shape != (n, dim):
        raise MindEyeError(f"the embedding parts in {tmp} hold {vectors.shape} vectors, expected {(n, dim)}; "
                           "delete that directory and build again")
    runner = partial(_run, spark, partial(_add_shard_task, tmp=str(tmp), files=files, shard_size=shard_size))
    finish_ann(tmp, vectors, state, index_type=index_type, nlist=nlist, pq_m=pq_m, seed=seed,
               max_index_memory=max_index_memory, shard_size=shard_size, nprobe=nprobe, run_shards=runner)
    state.update(complete=True, normalised=True, mindeye_version=__version__, spark_master=spark.sparkContext.master)
    write_json_atomic(tmp / MANIFEST, state, indent=1)
    del vectors
    replace_dir(tmp, out)
    return out
