"""`mindeye prepare nifti` and the store's brain mask, on a tiny synthetic NIfTI set the test builds.

Grid 6x7x5 (2 mm voxels, an MNI-like affine), a mask of ~40 voxels, three sessions of 4-D betas plus
tiny PNG stimuli; every value is checked against numpy indexing of the arrays the test wrote.
"""

from __future__ import annotations

import builtins
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mindeye.cli import main
from mindeye.data.store import SubjectStore
from mindeye.errors import MindEyeError

pytest.importorskip("nilearn")

SHAPE = (6, 7, 5)
AFFINE = np.array([[2.0, 0, 0, -6], [0, 2, 0, -8], [0, 0, 2, -4], [0, 0, 0, 1]])
N_IMAGES = 10
VOLS = 12  # per session


def _write_tsv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return path


def _build(root: Path, n_sessions: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = rng.random(SHAPE) < 0.2
    mask[0, 0, 0] = False
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), root / "mask.nii.gz")
    (root / "stimuli").mkdir()
    for k in range(N_IMAGES):
        img = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "stimuli" / f"im{k:02d}.png")
    betas, events, data = [], [], []
    for s in range(n_sessions):
        vol = rng.normal(size=(*SHAPE, VOLS)).astype(np.float32) * 3 + 10 * s
        vol[~mask] = np.nan  # outside the mask never reaches the store (GLM outputs often hold NaN there)
        path = root / f"sub-01_ses-{s + 1:02d}_betas.nii.gz"
        nib.save(nib.Nifti1Image(vol, AFFINE), path)
        betas.append(path)
        data.append(vol)
        rows = []
        for v in range(VOLS):
            image = "n/a" if v == VOLS - 1 else f"stimuli/im{(v + s) % N_IMAGES:02d}.png"  # last volume: a blank
            rows.append({"onset": 4.0 * v, "duration": 3.0, "image": image})
        events.append(_write_tsv(root / f"sub-01_ses-{s + 1:02d}_events.tsv", rows))
    return {"mask": mask, "betas": betas, "events": events, "data": data, "root": root}


@pytest.fixture(scope="module")
def nifti(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("nifti")
    d = _build(root)
    out = root / "store"
    assert main(["prepare", "nifti", "--betas", *map(str, d["betas"]), "--mask", str(root / "mask.nii.gz"),
                 "--events", *map(str, d["events"]), "--images", str(root / "stimuli"), "--out", str(out),
                 "--image-size", "16", "--voxel-dtype", "float32", "--subject", "subj01", "--no-progress"]) == 0
    d["store"] = SubjectStore(out)
    return d


def _expected_rows(d: dict) -> tuple[np.ndarray, list[str], list[int]]:
    """The trials an independent reading of the inputs gives: masked volumes, image ids, sessions."""
    rows, ids, sessions = [], [], []
    for s, vol in enumerate(d["data"]):
        for v in range(VOLS - 1):  # the last volume of each session is the blank
            rows.append(vol[..., v][d["mask"]])
            ids.append(f"im{(v + s) % N_IMAGES:02d}")
            sessions.append(s + 1)
    return np.stack(rows), ids, sessions


def test_voxels_trials_and_mask(nifti):
    store = nifti["store"]
    rows, ids, sessions = _expected_rows(nifti)
    assert store.n_voxels == int(nifti["mask"].sum())
    np.testing.assert_allclose(np.asarray(store.voxels), rows, rtol=1e-6)
    assert [store.image_ids[i] for i in store.trials.image_index] == ids
    assert store.trials.session.tolist() == sessions
    assert set(store.trials.split.tolist()) == {"train", "test"}  # test images drawn (--test-fraction 0.1)
    assert len(store.image_indices("test")) == 1
    assert store.meta["source"] == "nifti" and store.meta["subject_id"] == "subj01"
    assert store.meta["mask"]["n_voxels"] == store.n_voxels
    assert "  brain mask   mask.nii.gz (grid 6x7x5)" in store.summary(check=False).splitlines()
    kept = nib.load(store.mask_path)
    np.testing.assert_array_equal(np.asarray(kept.dataobj) != 0, nifti["mask"])
    np.testing.assert_allclose(kept.affine, AFFINE)
    # The stored image is the PNG, resized: its mean colour survives.
    k = store.image_ids.index("im03")
    src = np.asarray(Image.open(nifti["root"] / "stimuli" / "im03.png"), dtype=float)
    assert abs(store.images[k].astype(float).mean() - src.mean()) < 8


def test_unmask_round_trip(nifti, tmp_path):
    store = nifti["store"]
    img = store.unmask(np.asarray(store.voxels[5]))
    assert img.shape == SHAPE
    np.testing.assert_allclose(img.affine, AFFINE)
    data = np.asarray(img.dataobj)
    np.testing.assert_allclose(data[nifti["mask"]], nifti["data"][0][..., 5][nifti["mask"]], rtol=1e-6)
    assert (data[~nifti["mask"]] == 0).all()
    # 4-D from a (k, n_voxels) array, and saved to disk through to_nifti; nilearn reads it back the same.
    from nilearn.maskers import NiftiMasker

    path = tmp_path / "two.nii.gz"
    store.to_nifti(np.asarray(store.voxels[:2]), path)
    again = NiftiMasker(mask_img=str(store.mask_path), standardize=None).fit().transform(str(path))
    np.testing.assert_allclose(again, np.asarray(store.voxels[:2]), rtol=1e-6)
    # Values are saved as floats, not cast to the mask's uint8.
    weights = np.linspace(-1, 1, store.n_voxels)
    store.to_nifti(weights, tmp_path / "w.nii")
    np.testing.assert_allclose(np.asarray(nib.load(tmp_path / "w.nii").dataobj)[nifti["mask"]], weights, rtol=1e-6)
    with pytest.raises(MindEyeError, match=rf"\({store.n_voxels},\)"):
        store.unmask(np.zeros(store.n_voxels + 1))


def test_store_without_mask_says_so(nifti, tmp_path):
    import shutil

    shutil.copytree(nifti["store"].path, tmp_path / "plain")
    (tmp_path / "plain" / "mask.nii.gz").unlink()  # as a simulated, NSD or arrays store
    store = SubjectStore(tmp_path / "plain")
    assert store.mask_path is None
    with pytest.raises(MindEyeError, match="prepare nifti"):
        store.unmask(np.zeros(store.n_voxels))


def _prepare(d: dict, out: Path, **changes):
    from mindeye.data.nifti import prepare_nifti

    kwargs = {"betas": d["betas"], "mask": d["root"] / "mask.nii.gz", "events": d["events"],
              "images": d["root"] / "stimuli", "out": out, "image_size": 16, "progress": False}
    kwargs.update(changes)
    return prepare_nifti(**kwargs)


def test_one_events_table_with_splits_and_sessions(nifti, tmp_path):
    d = nifti
    rows = []
    for s in range(3):
        for v in range(VOLS):
            iid = (v + s) % N_IMAGES
            rows.append({"trial_type": "blank" if v == VOLS - 1 else f"im{iid:02d}", "session": 7 + s,
                         "split": "test" if iid < 2 else "train"})
    rows = [{**r, "trial_type": "n/a" if r["trial_type"] == "blank" else r["trial_type"]} for r in rows]
    events = _write_tsv(tmp_path / "all.tsv", rows)
    store = SubjectStore(_prepare(d, tmp_path / "s", events=[events], zscore=True))
    _, ids, _ = _expected_rows(d)
    assert [store.image_ids[i] for i in store.trials.image_index] == ids
    assert sorted(set(store.trials.session.tolist())) == [7, 8, 9]
    assert sorted(store.image_ids[i] for i in store.image_indices("test")) == ["im00", "im01"]
    # --zscore: every voxel has mean 0, std 1 within each session.
    v = np.asarray(store.voxels, dtype=np.float64)
    for s in (7, 8, 9):
        block = v[store.trials.session == s]
        np.testing.assert_allclose(block.mean(0), 0, atol=1e-3)  # float16 storage
        np.testing.assert_allclose(block.std(0), 1, atol=2e-3)


def test_3d_betas(nifti, tmp_path):
    d = nifti
    files, rows = [], []
    for v in range(4):
        path = tmp_path / f"trial{v}.nii.gz"
        nib.save(nib.Nifti1Image(d["data"][1][..., v], AFFINE), path)
        files.append(path)
        rows.append({"image": f"im{v:02d}", "split": "test" if v == 0 else "train"})
    out = tmp_path / "new" / "dirs" / "s"  # parents are created
    store = SubjectStore(_prepare(d, out, betas=files, events=[_write_tsv(tmp_path / "e.tsv", rows)]))
    assert sorted(p.name for p in out.parent.iterdir()) == ["s"]  # the temporary voxel matrix is gone
    np.testing.assert_allclose(np.asarray(store.voxels[2], dtype=np.float32),
                               d["data"][1][..., 2][d["mask"]], rtol=1e-3)  # float16 storage
    assert store.trials.session.tolist() == [1, 1, 1, 1]


def test_bad_inputs_are_refused_before_writing(nifti, tmp_path):
    d, root = nifti, nifti["root"]
    out = tmp_path / "never"
    # Another affine (a shifted grid).
    shifted = AFFINE.copy()
    shifted[0, 3] += 2
    nib.save(nib.Nifti1Image(d["mask"].astype(np.uint8), shifted), tmp_path / "shifted.nii.gz")
    with pytest.raises(MindEyeError, match="different affines.*resample_to_img"):
        _prepare(d, out, mask=tmp_path / "shifted.nii.gz")
    # Another grid shape.
    nib.save(nib.Nifti1Image(np.ones((6, 7, 4), np.uint8), AFFINE), tmp_path / "small.nii.gz")
    with pytest.raises(MindEyeError, match=r"grid \(6, 7, 5\) but mask .* has \(6, 7, 4\)"):
        _prepare(d, out, mask=tmp_path / "small.nii.gz")
    # An empty mask; a probabilistic one; a 4-D one.
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE), tmp_path / "empty.nii.gz")
    with pytest.raises(MindEyeError, match="empty: it selects no voxel"):
        _prepare(d, out, mask=tmp_path / "empty.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(SHAPE).astype(np.float32), AFFINE),
             tmp_path / "prob.nii.gz")
    with pytest.raises(MindEyeError, match="not binary.*binarize_img"):
        _prepare(d, out, mask=tmp_path / "prob.nii.gz")
    with pytest.raises(MindEyeError, match="mask must be a 3D image"):
        _prepare(d, out, mask=d["betas"][0])
    # Row counts, stimulus column, missing images, missing files.
    short = _write_tsv(tmp_path / "short.tsv", [{"image": "im00"}] * (VOLS - 1))
    with pytest.raises(MindEyeError, match=f"has {VOLS - 1} rows but its betas file hold.* {VOLS} volumes"):
        _prepare(d, out, events=[short, *d["events"][1:]])
    with pytest.raises(MindEyeError, match="2 events tables for 3 betas files"):
        _prepare(d, out, events=d["events"][:2])
    no_col = _write_tsv(tmp_path / "nocol.tsv", [{"onset": 0.0, "stimulus": "im00"}] * VOLS)
    with pytest.raises(MindEyeError, match="no stimulus column: it needs 'image'"):
        _prepare(d, out, events=[no_col, *d["events"][1:]])
    ghost = _write_tsv(tmp_path / "ghost.tsv", [{"image": "ghost.png"}] + [{"image": "im01"}] * (VOLS - 1))
    with pytest.raises(MindEyeError, match="1 image.* no file in .*stimuli: ghost"):
        _prepare(d, out, events=[ghost, *d["events"][1:]])
    bad_split = _write_tsv(tmp_path / "split.tsv", [{"image": "im00", "split": "training"}] * (3 * VOLS))
    with pytest.raises(MindEyeError, match=r"split.tsv.*unknown split value\(s\) \['training'\]"):
        _prepare(d, out, events=[bad_split])
    with pytest.raises(MindEyeError, match="'split' column is empty on some rows"):
        _prepare(d, out, events=[_write_tsv(tmp_path / "split1.tsv", [{"image": "im00", "split": "test"}] * VOLS),
                                 *d["events"][1:]])
    with pytest.raises(MindEyeError, match="betas .*nope.nii.gz not found"):
        _prepare(d, out, betas=[root / "nope.nii.gz"])
    (tmp_path / "text.nii.gz").write_text("not an image")
    with pytest.raises(MindEyeError, match="cannot read betas .* as a NIfTI image"):
        _prepare(d, out, betas=[tmp_path / "text.nii.gz"])
    # NaN inside the mask: the file, volume and voxel are named.
    vol = d["data"][0].copy()
    i, j, k = np.argwhere(d["mask"])[3]
    vol[i, j, k, 4] = np.nan
    nib.save(nib.Nifti1Image(vol, AFFINE), tmp_path / "nan.nii.gz")
    with pytest.raises(MindEyeError, match=rf"nan.nii.gz holds NaN or inf inside the mask \(volume 4, voxel "
                                           rf"\({i}, {j}, {k}\)\)"):
        _prepare(d, out, betas=[tmp_path / "nan.nii.gz", *d["betas"][1:]])
    assert not out.exists() and not list(tmp_path.glob(".never*")) and not list(tmp_path.glob("never*"))


def test_without_nilearn_names_the_extra(nifti, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_nilearn(name, *args, **kwargs):
        if name.startswith("nilearn"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nilearn)
    with pytest.raises(MindEyeError, match=r"pip install 'mindeye\[nifti\]'"):
        _prepare(nifti, tmp_path / "s")


def test_cli_message_and_meta(nifti, capsys):
    rc = main(["prepare", "nifti", "--betas", str(nifti["betas"][0]), "--mask", str(nifti["root"] / "mask.nii.gz"),
               "--events", str(nifti["events"][0]), "--images", str(nifti["root"]),
               "--out", str(nifti["root"] / "x")])
    assert rc == 2
    assert "no file in" in capsys.readouterr().err  # the root holds no stimuli: one line, no traceback
    meta = json.loads((nifti["store"].path / "meta.json").read_text())
    assert meta["inputs"]["mask"].endswith("mask.nii.gz") and len(meta["inputs"]["betas"]) == 3


def test_report_draws_the_first_layer_on_a_glass_brain(nifti, tmp_path):
    """A tiny run on the NIfTI store: the report gains a glass-brain figure of the first layer's weight norm."""
    import torch

    from mindeye.config import load_config
    from mindeye.encoders.cache import embed_store
    from mindeye.evaluation import report_figures as figs
    from mindeye.evaluation.report import build_report
    from mindeye.runs import load_run_model
    from mindeye.training.trainer import Trainer

    repo = Path(__file__).resolve().parents[1]
    store = nifti["store"].path
    embed_store(store, "standin-clip-hidden", progress=False)
    cfg = load_config(repo / "src/mindeye/configs/demo-highlevel.yaml", [
        "model.backbone.hidden=32", "model.backbone.n_blocks=1", "model.projector.hidden=16",
        "model.prior.enabled=false", "train.batch_size=8", "train.epochs=1", "data.val_images=2",
        "train.val_every=1"])
    Trainer(cfg, tmp_path / "run", store=store, device="cpu", progress=False).fit()
    page = build_report(tmp_path / "run", out=tmp_path / "rep" / "report.html", umap=False, n_images=1, device="cpu")
    html = page.read_text()
    assert 'id="fig-brain_map"' in html and "weights in the first linear layer" in html
    index = json.loads((tmp_path / "rep" / "figures" / "index.json").read_text())
    assert "brain_map" in [f["stem"] for f in index["figures"]]
    assert (tmp_path / "rep" / "figures" / "brain_map.png").stat().st_size > 10_000
    # The map is the weight norm: voxel k of the figure's image is column k of the stem's weight.
    _, _, model, subject = load_run_model(tmp_path / "run", "cpu", None)
    norms = figs.first_layer_voxel_norm(model, subject.subject_id)
    expected = torch.linalg.vector_norm(model.backbone.stem[0].weight.detach(), dim=0).numpy()
    np.testing.assert_allclose(norms, expected, rtol=1e-6)
    assert norms.shape == (subject.n_voxels,) and norms.std() > 0
    img = subject.unmask(norms)
    np.testing.assert_allclose(np.asarray(img.dataobj)[nifti["mask"]], norms, rtol=1e-6)


def test_docs_describe_the_mask_and_the_events(nifti):
    docs = Path(__file__).resolve().parents[1] / "docs"
    store_doc = (docs / "subject-store.md").read_text()
    missing = [n for n in ["mask.nii.gz", *nifti["store"].meta["mask"]] if f"`{n}`" not in store_doc]
    missing += [n for n in ("s.unmask(", "s.to_nifti(", "s.mask_path") if n not in store_doc]
    assert not missing, f"docs/subject-store.md does not document {missing}"
    guide = (docs / "adding-a-dataset.md").read_text()
    for name in ("image", "stim_file", "trial_type", "session", "split", "repetition", "n/a", "--test-fraction"):
        assert f"`{name}`" in guide, name
