"""Retrieval from a large image database (paper section 3.1 "LAION-5B retrieval", Appendix A.7).

Instead of generating an image, the brain embedding is matched against a bank of real images: the FAISS
index (:mod:`mindeye.inference.index`) is searched for the k nearest neighbours of the brain embedding
and the k candidates are re-ranked by cosine similarity to it. See :func:`retrieve` for the output
(the reconstruction-directory format of :mod:`mindeye.inference.recon_dir`, plus ``retrievals.json``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mindeye.errors import MindEyeError
from mindeye.inference.index import DatabaseIndex, rerank
from mindeye.inference.recon_dir import new_index, write_index
from mindeye.utils.files import replace_dir, write_json_atomic
from mindeye.utils.images import save_png, square

# A run trained on an encoder's hidden tokens can query an index of the same model's final embedding
# with its CLS token (row 0 of the hidden target IS the final embedding).
FINAL_OF = {"clip-vit-l14-hidden": "clip-vit-l14-final", "standin-clip-hidden": "standin-clip-final"}


def query_embeddings(projector: torch.Tensor, index_dim: int, query: str, run_encoder: str,
                     index_encoder: str) -> tuple[np.ndarray, str]:
    """The vectors to search with: the flattened projector output, or its CLS token (``query='cls'``).

    ``auto``: the flattened output if its size matches the index, else the CLS token when the index holds the
    final embedding of the run's hidden-token encoder.
    """
    x = projector.float()
    if x.ndim == 2:
        x = x[:, None]
    flat_dim, tok_dim = x.shape[1] * x.shape[2], x.shape[2]
    if query == "auto":
        cls_ok = x.shape[1] > 1 and tok_dim == index_dim and FINAL_OF.get(run_encoder) == index_encoder
        query = "projector" if flat_dim == index_dim else ("cls" if cls_ok else "projector")
    if query == "projector":
        q = x.flatten(1)
    elif query == "cls":
        q = x[:, 0]
    else:
        raise MindEyeError(f"unknown --query {query!r}; choose auto, projector or cls")
    if q.shape[1] != index_dim:
        raise MindEyeError(
            f"the run's {query} embedding has dimension {q.shape[1]} ({x.shape[1]} x {tok_dim} tokens from "
            f"{run_encoder}) but the index holds {index_dim}-d {index_encoder} embeddings; build the index with the "
            f"run's encoder ({run_encoder}"
            + (f", or its final embedding {FINAL_OF[run_encoder]} and --query cls" if run_encoder in FINAL_OF else "")
            + ")")
    return q.numpy(), query


def _check_encoders(run_encoder: str, index: DatabaseIndex, query: str, store: Path, weights: str | None) -> None:
    """The brain embedding and the index must live in the same space (same encoder and weights)."""
    enc = index.encoder
    if enc != run_encoder and not (query == "cls" and FINAL_OF.get(run_encoder) == enc):
        raise MindEyeError(f"the run predicts {run_encoder} embeddings but {index.path} indexes {enc} embeddings; "
                           f"build an index with --encoder {FINAL_OF.get(run_encoder, run_encoder)}")
    if enc == run_encoder:
        from mindeye.encoders.cache import find_cache, read_manifest

        try:
            cache = read_manifest(find_cache(store, run_encoder, weights)) or {}
        except MindEyeError:
            return  # no cache to compare with (targets computed elsewhere): nothing more to check
        if index.manifest["fingerprint"] == "external":  # an attached index: its weights are the user's word
            return
        if cache.get("fingerprint") and cache["fingerprint"] != index.manifest["fingerprint"]:
            raise MindEyeError(f"the run's {run_encoder} targets (fingerprint {cache['fingerprint'][:12]}) and the "
                               f"index {index.path} (fingerprint {index.manifest['fingerprint'][:12]}) come from "
                               "different weights or preprocessing; rebuild the index with the run's weights")


def retrieve(
    run_dir: str | Path,
    index_dir: str | Path,
    out_dir: str | Path,
    *,
    k: int = 16,
    store: str | Path | None = None,
    subject: str | None = None,
    device: str | None = None,
    weights: str | None = None,
    query: str = "auto",
    save_all: bool = False,
    limit: int | None = None,
    nprobe: int | None = None,
    refine: int = 4,
    size: int | None = None,
    images_root: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    encoder: Any = None,
) -> dict[str, Any]:
    """For each test image of the run's store (repetitions averaged): k nearest neighbours, re-ranked.

    Re-ranking: every candidate's embedding in the run's own target space is compared (cosine) with the
    run's flattened projector output and the highest wins. When the index holds the run's own encoder the
    stored embeddings are used (exact, so this also undoes IVF-PQ's approximation); when a hidden-token run
    queries a final-embedding index with its CLS token, the candidates are encoded with the run's target
    encoder (``weights``: its weights, default the run's ``targets.weights``; ``encoder``: a built one).

    Writes ``out_dir/images/IIIII.png`` (the chosen image for store image IIIII, centre-cropped to a square
    of ``size`` px, default the store's image size), with ``save_all`` also ``candidates/IIIII_KK.png``
    (all k, in kNN order), ``index.json`` (the reconstruction-directory format read by ``mindeye evaluate
    recon``) and ``retrievals.json`` (one record per test sample). Returns the index.json content.
    """
    from mindeye.data.splits import load_eval_split
    from mindeye.devices import resolve_device
    from mindeye.runs import embed_voxels, load_run_model

    if k < 1:
        raise MindEyeError(f"-k must be at least 1, got {k}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise MindEyeError(f"{out_dir} already exists and is not empty; choose another --out or pass --overwrite")
    db = DatabaseIndex.open(index_dir, images_root)  # a missing index fails before the model is loaded
    device = resolve_device(device)
    cfg, info, model, subject = load_run_model(run_dir, device, store, subject=subject)
    if cfg.model.kind == "lowlevel":
        raise MindEyeError(f"{run_dir} is a low-level run; database retrieval needs a high-level (mindeye or ridge) "
                           "run that predicts CLIP embeddings")
    test = load_eval_split(subject, subject.image_indices("test"), "averaged", cfg.data.test_repetitions)
    if len(test) == 0:
        raise MindEyeError(f"{subject.path} has no test images")
    rows = slice(0, limit) if limit else slice(None)
    voxels, image_index = test.voxels[rows], test.image_index[rows]
    brain = embed_voxels(model, voxels, device, which="projector")
    q, query = query_embeddings(brain, db.dim, query, cfg.targets.encoder, db.encoder)
    _check_encoders(cfg.targets.encoder, db, query, subject.path, cfg.targets.weights)

    knn_scores, ids = db.search(q, k, nprobe, refine)
    if (ids < 0).any():  # IVF with too few probed lists can return fewer than k
        print(f"note: some queries found fewer than {k} neighbours; raise --nprobe", flush=True)
    db.source.check(ids[ids >= 0].ravel())  # every candidate on disk before anything is written

    brain_flat = brain.float().flatten(1).numpy()
    use_stored = db.encoder == cfg.targets.encoder and db.has_embeddings
    enc = None
    if not use_stored:
        from mindeye.encoders.registry import get_encoder

        enc = encoder if encoder is not None else get_encoder(cfg.targets.encoder, weights or cfg.targets.weights,
                                                              device)
    enc_size = db.manifest.get("image_size")
    size = size or subject.image_size

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {"index": str(db.path.resolve()), "index_encoder": db.encoder, "index_fingerprint":
              db.manifest["fingerprint"], "index_type": db.manifest["index"]["type"], "k": k, "query": query,
              "nprobe": nprobe, "refine": refine,
              "index_source": db.source.describe(),
              "rerank": "stored-embeddings" if use_stored else f"encode:{cfg.targets.encoder}",
              "high_run": str(Path(run_dir).resolve()), "store": str(subject.path.resolve()), "test_mode": "averaged",
              "generator": f"database retrieval ({db.path.name})", "size": size}
    index = new_index("retrieval", config)
    records = []
    for m in tqdm(range(len(image_index)), desc="retrieve", unit="img", disable=not progress):
        cand = ids[m][ids[m] >= 0]
        if len(cand) == 0:
            raise MindEyeError(f"the index returned no neighbour for test sample {m}; raise --nprobe")
        pics = db.source.load(cand) if (save_all or enc is not None) else None
        if use_stored:
            emb = db.embeddings(cand)
        else:
            batch = np.stack([square(p, enc_size) if enc_size else p for p in pics])
            emb = enc.encode(batch).float().flatten(1).cpu().numpy()
        if emb.shape[1] != brain_flat.shape[1]:
            raise MindEyeError(f"cannot re-rank: the candidates' {cfg.targets.encoder} embeddings have dimension "
                               f"{emb.shape[1]} but the run's brain embedding {brain_flat.shape[1]}")
        best, scores = rerank(emb, brain_flat[m])
        idx = int(image_index[m])
        chosen = pics[best] if pics is not None else db.source.load([cand[best]])[0]
        rec: dict[str, Any] = {"image_index": idx, "image_id": subject.image_ids[idx], "file": f"images/{idx:05d}.png",
                               "chosen": best, "chosen_id": int(cand[best]), "chosen_source": db.source.name(cand[best]),
                               "candidates": cand.tolist(), "knn_scores": knn_scores[m][: len(cand)].tolist(),
                               "scores": scores.tolist()}
        save_png(square(chosen, size), tmp / rec["file"])
        if save_all:
            rec["samples"] = [f"candidates/{idx:05d}_{j:02d}.png" for j in range(len(cand))]
            for j, p in enumerate(pics):
                save_png(square(p, size), tmp / rec["samples"][j])
        index["images"][str(idx)] = rec
        records.append({"sample": m, **rec})
    write_index(tmp, index)
    write_json_atomic(tmp / "retrievals.json", {"config": config, "retrievals": records}, indent=1)
    replace_dir(tmp, out_dir)
    return index
