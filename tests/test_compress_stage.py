"""ecg.compress (stage compress_ecg) without training: params checks, the teacher's out-of-fold soft
targets lined up with the prepared beats, the class-balanced int8 calibration set, JSON safety.
The whole stage runs in the slow smoke `dvc repro` (tests/test_smoke_dvc.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ecg import compress
from pipeline.io import save_npz, write_json
from pipeline.params import ParamsError

CLASSES = ["N", "S", "V", "F", "Q"]


def _params(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text("compress_ecg:\n" + text)
    return path


def test_defaults_load_and_bad_params_name_the_key(tmp_path):
    cfg = compress.load(_params(tmp_path, "  seed: 1\n"))
    assert cfg.distill.select_width in cfg.student.widths
    with pytest.raises(ParamsError, match="select_width"):
        compress.load(_params(tmp_path, "  student: {widths: [3, 6]}\n  distill: {select_width: 4}\n"))
    with pytest.raises(ParamsError, match="sparsities"):
        compress.load(_params(tmp_path, "  prune: {sparsities: [0.5, 1.0]}\n"))
    with pytest.raises(ParamsError, match="alphas"):
        compress.load(_params(tmp_path, "  distill: {alphas: [0.0]}\n"))
    with pytest.raises(ParamsError, match="temperture"):
        compress.load(_params(tmp_path, "  distill: {temperture: [2.0]}\n"))


def _prepared(tmp_path, n=120, window=32):
    """A tiny prepared dataset: DS1 records 1-4 in folds 0/1, DS2 records 5-6, and a train_ecg run folder."""
    rng = np.random.default_rng(0)
    record = np.repeat([1, 2, 3, 4, 5, 6], n // 6)
    split = (record >= 5).astype(np.int64)
    fold = np.where(record <= 2, 0, np.where(record <= 4, 1, -1))
    y = rng.integers(0, 4, len(record))
    data = tmp_path / "data"
    save_npz(data / "beats.npz", x=rng.normal(size=(len(record), window)).astype(np.float32),
             rr=(0.5 + rng.random((len(record), 5))).astype(np.float32), y=y, record=record,
             sample=np.arange(len(record)) * 300, split=split, fold=fold)
    write_json(data / "meta.json", {"classes": CLASSES, "score_classes": CLASSES[:4], "window_samples": window})
    run = tmp_path / "run"
    order = np.concatenate([np.flatnonzero((fold == f) & (split == 0)) for f in (0, 1)])
    probs = rng.dirichlet(np.ones(5), len(order)).astype(np.float32)
    save_npz(run / "oof.npz", y=y[order], probs=probs, record=record[order])
    write_json(run / "train.json", {"folds": {"0": {}, "1": {}}})
    package = {"channels": ["centred"], "classes": CLASSES}
    return data, run, package, order, probs


def test_soft_targets_line_up_with_the_beats(tmp_path):
    data_dir, run, package, order, probs = _prepared(tmp_path)
    data = compress.load_data(data_dir, package, run, val_fold=0)
    assert set(data.train.record) == {3, 4} and set(data.val.record) == {1, 2} and set(data.test.record) == {5, 6}
    by_index = dict(zip(order.tolist(), probs))
    train_idx = np.flatnonzero(np.isin(np.repeat([1, 2, 3, 4, 5, 6], 20), [3, 4]))
    np.testing.assert_array_equal(data.soft_train, np.stack([by_index[i] for i in train_idx]))
    assert np.isfinite(data.soft_val).all() and len(data.soft_val) == len(data.val.y)
    assert data.score == (0, 1, 2, 3)


def test_runs_trained_on_a_subsample_give_soft_targets_for_those_beats_only(tmp_path):
    """train_ecg with limit_beats keeps a seeded subsample of each validation fold (ecg.dataset.select):
    the out-of-fold file covers those beats, and students learn from exactly them."""
    data_dir, run, package, _, _ = _prepared(tmp_path)
    rng = np.random.default_rng(3)
    with np.load(data_dir / "beats.npz") as npz:
        a = {k: npz[k] for k in npz.files}
    order = np.concatenate([np.sort(np.random.default_rng(7).choice(np.flatnonzero((a["fold"] == f) & (a["split"] == 0)),
                                                                    15, replace=False)) for f in (0, 1)])
    probs = rng.dirichlet(np.ones(5), len(order)).astype(np.float32)
    save_npz(run / "oof.npz", y=a["y"][order], probs=probs, record=a["record"][order])
    write_json(run / "train.json", {"folds": {"0": {}, "1": {}}, "limit_beats": 15, "seed": 7})
    data = compress.load_data(data_dir, package, run, val_fold=0)
    assert len(data.train.y) == 15 and len(data.val.y) == 15 and len(data.test.y) == 40
    assert np.isfinite(data.soft_train).all() and np.isfinite(data.soft_val).all()
    np.testing.assert_array_equal(data.soft_val, probs[:15])
    np.testing.assert_array_equal(data.soft_train, probs[15:])


def test_misaligned_oof_is_refused_naming_the_file(tmp_path):
    data_dir, run, package, order, probs = _prepared(tmp_path)
    with np.load(run / "oof.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["y"] = np.roll(arrays["y"], 1)
    save_npz(run / "oof.npz", **arrays)
    with pytest.raises(ValueError, match="oof.npz does not line up"):
        compress.load_data(data_dir, package, run, val_fold=0)
    with pytest.raises(ParamsError, match="val_fold: 7"):
        compress.load_data(data_dir, package, tmp_path / "run", val_fold=7)


def test_representative_set_is_class_balanced():
    y = np.array([0] * 500 + [1] * 20 + [2] * 7 + [3] * 3)
    beats = type("B", (), {"y": y, "x": {"beat": np.arange(len(y))[:, None], "rr": np.arange(len(y))[:, None]}})
    rep = compress.representative(beats, 40, seed=0)
    got = np.bincount(y[rep["beat"][:, 0]], minlength=4)
    assert got.sum() == 40 and got[3] == 3 and got[2] == 7 and got[1] == 15 and got[0] == 15
    np.testing.assert_array_equal(rep["beat"], rep["rr"])   # the same beats in every input
    assert len(set(rep["beat"][:, 0].tolist())) == 40        # no beat twice


def test_finite_turns_nan_and_inf_into_null_and_says_where():
    obj = {"a": 1.0, "b": [np.float32(2.5), float("nan")], "c": {"d": float("inf"), "e": np.int64(3)}}
    clean, bad = compress.finite(obj)
    assert bad == ["b[1]", "c.d"]
    assert json.loads(json.dumps(clean, allow_nan=False)) == {"a": 1.0, "b": [2.5, None], "c": {"d": None, "e": 3}}
