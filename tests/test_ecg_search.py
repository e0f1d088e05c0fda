"""benchmarks/ecg_search.py: the DS1-only export, the patient-wise fold splits, the label-free features,
and a --quick run end to end on a small synthetic DS1-like file."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ecg_search.py"

_spec = importlib.util.spec_from_file_location("ecg_search", SCRIPT)
es = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("ecg_search", es)  # dataclasses look their module up while the class is made
_spec.loader.exec_module(es)  # imports no Keras at module level

DS1_RECORDS = (101, 106, 108, 109, 112, 114, 115, 116)  # two per fold
DS2_RECORDS = (100, 103)
BEATS_PER_RECORD = 90


def synthetic_beats(path: Path, seed: int = 0) -> dict:
    """A prepare_ecg-like beats.npz: DS1 records in 4 folds with every class, plus DS2 rows (split 1, fold -1).
    Rows of one record are NOT written in sample order for one record, and records are interleaved by blocks,
    as the real file is not sorted by record number."""
    rng = np.random.default_rng(seed)
    t = np.arange(253)
    parts = []
    for i, rec in enumerate(DS1_RECORDS + DS2_RECORDS):
        n = BEATS_PER_RECORD
        y = np.resize(np.array([0] * 12 + [1, 2, 3, 4], np.int8), n)
        rng.shuffle(y)
        width = np.array([6.0, 6.0, 14.0, 10.0, 8.0])[y]
        x = (np.exp(-0.5 * ((t[None, :] - 126) / width[:, None]) ** 2) * (1 + 0.2 * (y[:, None] == 2))
             + 0.05 * rng.standard_normal((n, 253))).astype(np.float32)
        rr_s = np.where(y == 1, 0.55, 0.85) + 0.02 * rng.standard_normal(n)
        sample = (1000 + np.cumsum(rr_s * 360)).astype(np.int64)
        rr = np.stack([rr_s / 0.85] * 5, axis=1).astype(np.float32)
        ds2 = rec in DS2_RECORDS
        part = {"x": x, "rr": rr, "y": y, "sample": sample, "record": np.full(n, rec, np.int16),
                "split": np.full(n, int(ds2), np.int8), "fold": np.full(n, -1 if ds2 else i // 2, np.int8)}
        if rec == 108:  # one record stored out of sample order
            order = rng.permutation(n)
            part = {k: v[order] for k, v in part.items()}
        parts.append(part)
    arrays = {k: np.concatenate([p[k] for p in parts[::-1]]) for k in parts[0]}
    np.savez(path, **arrays)
    return arrays


def test_export_keeps_ds1_only_as_float16(tmp_path):
    src = synthetic_beats(tmp_path / "beats.npz")
    out = tmp_path / "ds" / "ds1.npz"
    info = es.export(tmp_path / "beats.npz", out)
    with np.load(out) as npz:
        got = {k: npz[k] for k in npz.files}
    assert set(es.EXPORT_KEYS) <= set(got) and "split" not in got
    assert got["x"].dtype == np.float16 and got["x"].shape == (len(DS1_RECORDS) * BEATS_PER_RECORD, 253)
    assert not np.isin(got["record"], DS2_RECORDS).any()
    assert set(got["record"].tolist()) == set(DS1_RECORDS)
    assert info["rows"] == int((src["split"] == 0).sum()) and info["ds2_rows_dropped"] == 2 * BEATS_PER_RECORD
    assert out.stat().st_size == info["bytes"] < es.MAX_EXPORT_BYTES
    ds1 = src["split"] == 0
    np.testing.assert_allclose(got["x"].astype(np.float32), src["x"][ds1], atol=2e-3)
    np.testing.assert_array_equal(got["y"], src["y"][ds1])
    # loading sorts by (record, sample) and keeps every row
    data = es.load_ds1(out)
    key = data["record"] * 10**9 + data["sample"]
    assert np.all(np.diff(key) > 0) and len(key) == info["rows"]


def test_export_refuses_bad_inputs_and_leaves_nothing(tmp_path):
    src = synthetic_beats(tmp_path / "beats.npz")
    # a DS2 record marked as DS1
    bad = dict(src)
    bad["split"] = np.where(src["record"] == 100, 0, src["split"]).astype(np.int8)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(es.SearchError, match="not de Chazal DS1"):
        es.export(tmp_path / "bad.npz", tmp_path / "o1.npz")
    assert not (tmp_path / "o1.npz").exists()
    # over the size cap: refused, no file
    with pytest.raises(es.SearchError, match="MB"):
        es.export(tmp_path / "beats.npz", tmp_path / "o2.npz", max_bytes=10_000)
    assert not (tmp_path / "o2.npz").exists() and not list(tmp_path.glob(".o2.npz*"))
    # a missing key is named
    np.savez(tmp_path / "nokey.npz", **{k: v for k, v in src.items() if k != "fold"})
    with pytest.raises(es.SearchError, match="fold"):
        es.export(tmp_path / "nokey.npz", tmp_path / "o3.npz")


def test_run_input_refuses_ds2_rows(tmp_path):
    src = synthetic_beats(tmp_path / "beats.npz")
    keys = es.EXPORT_KEYS
    np.savez(tmp_path / "with_ds2.npz", **{k: src[k] for k in keys})  # DS2 records, no split key
    with pytest.raises(es.SearchError, match="DS2"):
        es.load_ds1(tmp_path / "with_ds2.npz")
    ds1 = src["split"] == 0
    np.savez(tmp_path / "with_split.npz", **{k: src[k][ds1] for k in keys}, split=np.ones(int(ds1.sum()), np.int8))
    with pytest.raises(es.SearchError, match="split"):
        es.load_ds1(tmp_path / "with_split.npz")


def test_fold_splits_never_train_on_the_held_out_fold(tmp_path):
    synthetic_beats(tmp_path / "beats.npz")
    es.export(tmp_path / "beats.npz", tmp_path / "ds1.npz")
    data = es.load_ds1(tmp_path / "ds1.npz")
    splits = list(es.fold_splits(data["fold"], data["record"]))
    assert [k for k, _, _ in splits] == [0, 1, 2, 3]
    held_all = np.concatenate([te for _, _, te in splits])
    assert np.array_equal(np.sort(held_all), np.arange(len(data["y"])))  # every row held out exactly once
    for k, tr, te in splits:
        assert np.all(data["fold"][te] == k) and not np.any(data["fold"][tr] == k)
        assert not set(tr.tolist()) & set(te.tolist())
        assert not set(data["record"][tr].tolist()) & set(data["record"][te].tolist())
        assert len(tr) + len(te) == len(data["y"])
    # a subset mask restricts both sides
    keep = np.zeros(len(data["y"]), bool)
    keep[::3] = True
    for k, tr, te in es.fold_splits(data["fold"], data["record"], keep):
        assert keep[tr].all() and keep[te].all()
    # a record split across folds is refused
    fold = data["fold"].copy()
    fold[np.flatnonzero(data["record"] == 101)[0]] = 3
    with pytest.raises(AssertionError, match="101"):
        list(es.fold_splits(fold, data["record"]))


def test_neighbours_stay_in_record_and_rich_rr_by_hand():
    record = np.array([5, 5, 5, 7, 7])
    prev, nxt = es.neighbours(record)
    assert prev.tolist() == [0, 0, 1, 3, 3] and nxt.tolist() == [1, 2, 2, 4, 4]
    # one record: RR 0.8, 0.8, 0.4 (premature), 1.2 (compensatory pause), 0.8 s
    sample = np.cumsum([360, 288, 288, 144, 432, 288])
    f = es.rich_rr(sample, np.zeros(6, int))
    col = {n: i for i, n in enumerate(es.RICH_RR)}
    np.testing.assert_allclose(f[:, col["pre_s"]], [0.8, 0.8, 0.8, 0.4, 1.2, 0.8], rtol=1e-5)
    np.testing.assert_allclose(f[:, col["post_s"]], [0.8, 0.8, 0.4, 1.2, 0.8, 0.8], rtol=1e-5)
    np.testing.assert_allclose(f[3, col["post_over_pre"]], 3.0, rtol=1e-5)   # the premature beat
    np.testing.assert_allclose(f[3, col["pre_over_prev_pre"]], 0.5, rtol=1e-5)
    assert np.all(np.isfinite(f)) and np.all(f > 0)


def test_epoch_indices_balanced_and_whole_batches():
    y = np.array([0] * 900 + [1] * 40 + [2] * 50 + [3] * 10)
    tr = np.arange(1000)
    rng = np.random.default_rng(0)
    idx = es.epoch_indices(tr, y, 0.25, 32, rng)
    assert len(idx) % 32 == 0 and len(set(idx.tolist())) == len(idx)
    assert (y[idx] == 0).sum() <= 225 and (y[idx] != 0).sum() >= 100 - 31  # trimming drops < one batch
    full = es.epoch_indices(tr, y, None, 32, rng)
    assert len(full) == 992
    np.testing.assert_allclose(es.expected_counts(tr, y, 0.25)[:4], [225, 40, 50, 10])


def test_quick_run_writes_table_with_finite_scores(tmp_path):
    """run --quick on the synthetic file: both tables written, every variant done with a finite OOF
    macro-F1, each fold's held-out records exactly its fold's, OOF predictions cover every used row once."""
    synthetic_beats(tmp_path / "beats.npz")
    es.export(tmp_path / "beats.npz", tmp_path / "ds1.npz")
    params = tmp_path / "params.yaml"
    params.write_text("ecg_train:\n  seed: 42\n  channels: [record_scaled, record_deviation]\n"
                      "  fit: {epochs: 12, batch_size: 32, learning_rate: 0.001, patience: 3, min_delta: 0.001}\n"
                      "  lenet1d: {width: 1, dropout: 0.3}\n  dilated1d: {filters: 8, stem_stride: 2, dropout: 0.3}\n")
    out = tmp_path / "res"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--quick", "--quick-beats", "120", "--data",
                           str(tmp_path / "ds1.npz"), "--out", str(out), "--params", str(params),
                           "--variants", "lenet1d_base,dil_all", "--predict-batch", "64"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== machine: keras" in done.stdout
    res = json.loads((out / "ecg_search.json").read_text())
    assert res["status"] == "finished" and res["mode"].startswith("quick")
    assert [r["variant"] for r in res["variants"]] == ["lenet1d_base", "dil_all"]
    data = es.load_ds1(tmp_path / "ds1.npz")
    for r in res["variants"]:
        assert r["status"] == "done", r["status"]
        assert np.isfinite(r["macro_f1"]) and 0 <= r["macro_f1"] <= 1
        assert all(np.isfinite(r[f"f1_{c}"]) for c in "SVF")
        for k, f in r["folds"].items():
            assert f["held_out_records"] == sorted({int(x) for x in data["record"][data["fold"] == int(k)]})
        oof = np.load(out / f"oof_{r['variant']}_s0.npz")
        assert len(oof["y"]) == res["data"]["used_rows"] == 4 * 120
        keys = oof["record"].astype(np.int64) * 10**9 + oof["sample"]
        assert len(np.unique(keys)) == len(keys)  # each used row predicted once
        assert np.all(np.isfinite(oof["probs"].astype(np.float32)))
    assert res["variants"][1]["inputs"] == {"beat": [253, 4], "rr": 15}  # ctx channels + rich RR
    md = (out / "ecg_search.md").read_text()
    assert "| lenet1d_base |" in md and "| dil_all |" in md and "OOF macro-F1" in md


_SEARCH_PROBE = r"""
spec = importlib.util.spec_from_file_location("ecg_search", os.path.join(ROOT, "benchmarks", "ecg_search.py"))
es = importlib.util.module_from_spec(spec)
sys.modules["ecg_search"] = es
spec.loader.exec_module(es)
import keras
from ecg import train_config
from pipeline.losses import class_weights, make_loss
cfg = train_config.EcgTrain()
params = {}
for name in ("lenet1d", "dilated1d", "resnet1d"):
    v = es.Variant(name, "probe", model=name, context="channels", rich_rr=True)
    params[name] = int(es.build_model(v, cfg, 253, 15, 4).count_params())
# the search applies focal's class alpha as per-beat sample weights: the same loss as the project's focal
import numpy as np
rng = np.random.default_rng(0)
counts = np.array([900.0, 40, 50, 10, 2])
y = rng.integers(0, 5, 64)
onehot = np.eye(5, dtype="float32")[y]
probs = rng.dirichlet(np.ones(5), 64).astype("float32")
project = float(make_loss("focal", class_counts=counts, alpha="sqrt_inverse", gamma=2.0)(onehot, probs))
w = class_weights(counts, "sqrt_inverse").astype("float32")
search = float(make_loss("focal", class_counts=np.ones(5), alpha="none", gamma=2.0)(onehot, probs, sample_weight=w[y]))
out.update(params=params, focal=[project, search])
"""


def test_search_imports_and_builds_without_tensorflow():
    """The device has JAX and no TensorFlow: the script and every project module it uses must import, and
    all three model families must build, where project files cannot import tensorflow (strict on JAX when
    this Python has it; on the TensorFlow backend, Keras itself may load it). Also: the focal loss with its
    class alpha moved into per-beat sample weights (how the search trains) equals the project's focal loss."""
    from tests.no_tf import run_without_tensorflow
    out = run_without_tensorflow(_SEARCH_PROBE)
    assert all(n > 1000 for n in out["params"].values()), out["params"]
    project, search = out["focal"]
    assert project > 0 and abs(project - search) <= 1e-5 * project, out["focal"]
