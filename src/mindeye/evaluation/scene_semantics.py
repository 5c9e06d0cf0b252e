"""How semantically close are retrieval errors? Scored with a simulated store's scene attributes.

A simulated store records the attributes every scene was drawn from (attributes.json), which no
encoder sees. For top-1 retrieval over the test set (brain -> image, cosine), the wrongly retrieved
images are compared with the true one: the cosine of their attribute vectors
(mindeye.data.scenes.attribute_vector) and whether their largest objects share the category. Chance
is the same over all pairs of distinct test images. Used by the demo and
scripts/compare_target_semantics.py to judge a target space (docs/evaluation.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def scene_semantics(store_path: str | Path, image_index: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(unit attribute vectors (N, 56), main-object categories (N,)), or None for a store without scenes."""
    from mindeye.data.scenes import attribute_vector
    from mindeye.data.store import data_root

    path = data_root(store_path) / "attributes.json"
    if not path.is_file():
        return None
    scenes = json.loads(path.read_text())
    attrs = np.stack([attribute_vector(scenes[i]) for i in image_index]).astype(np.float64)
    attrs /= np.linalg.norm(attrs, axis=1, keepdims=True)
    main = np.array([max(scenes[i]["objects"], key=lambda o: o["size"])["category"] for i in image_index])
    return attrs, main


def error_semantics(sim: np.ndarray, attrs: np.ndarray, main: np.ndarray) -> dict[str, float]:
    """Top-1 of each row of sim (queries x candidates, same order) and the semantics of its errors."""
    n = len(sim)
    best = sim.argmax(1)
    wrong = best != np.arange(n)
    a_sim = (attrs * attrs[best]).sum(1)
    same = main == main[best]
    off = ~np.eye(n, dtype=bool)
    return {"top1": float((~wrong).mean()), "errors": int(wrong.sum()),
            "error_attr_cos": float(a_sim[wrong].mean()) if wrong.any() else float("nan"),
            "error_same_category": float(same[wrong].mean()) if wrong.any() else float("nan"),
            "chance_attr_cos": float((attrs @ attrs.T)[off].mean()),
            "chance_same_category": float((main[:, None] == main[None, :])[off].mean())}


def run_error_semantics(run_dir: str | Path, device: str = "cpu") -> dict[str, Any] | None:
    """error_semantics of a trained run's projector outputs vs its targets over the test set (None: no scenes)."""
    from mindeye.data.splits import load_eval_split
    from mindeye.encoders.targets import Targets
    from mindeye.runs import embed_voxels, load_run_model

    cfg, _, model, subject = load_run_model(run_dir, device)
    test = load_eval_split(subject, subject.image_indices("test"), cfg.data.test_mode, cfg.data.test_repetitions)
    sem = scene_semantics(subject.path, test.image_index)
    if sem is None:
        return None
    t = torch.nn.functional.normalize(Targets(subject.path, cfg.targets.encoder, cfg.targets.weights)
                                      .get(test.image_index).flatten(1).float(), dim=1)
    p = torch.nn.functional.normalize(embed_voxels(model, test.voxels, device).flatten(1).float(), dim=1)
    return {"encoder": cfg.targets.encoder, **error_semantics((p @ t.T).numpy(), *sem)}
