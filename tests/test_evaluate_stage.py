"""The shared evaluate path (pipeline.evaluate, pipeline.assess) and the arms' adapters, on synthetic data."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ecg import evaluate as ecg_evaluate
from pipeline import assess
from pipeline.evaluate import EvaluateParams, load_params
from pipeline.params import ParamsError

CLASSES = ["N", "S", "V", "F", "Q"]


def _numbers_only(obj) -> bool:
    if isinstance(obj, dict):
        return all(_numbers_only(v) for v in obj.values())
    return obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool))


def _predictions(seed=0, n=600, k=5):
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=[0.7, 0.12, 0.1, 0.07, 0.01])
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs ** 2 / (probs ** 2).sum(1, keepdims=True), np.repeat(np.arange(12), n // 12)


def test_score_vocabulary_is_numbers_only():
    y, probs, groups = _predictions()
    yv, pv, _ = _predictions(seed=1)
    s = assess.score(y, probs, yv, pv, groups, CLASSES, ["N", "S", "V", "F"], n_boot=100, n_bins=10, seed=3)
    m = s.metrics
    assert _numbers_only(m)
    assert list(m["per_class"]) == ["N", "S", "V", "F"] and "auc" not in m
    assert all(set(r) == {"se", "ppv", "f1", "spec", "n"} for r in m["per_class"].values())
    assert set(m["ece"]) == set(m["brier"]) == set(m["nll"]) == {"before", "after"}
    ci = m["ci95"]["macro_f1"]
    assert set(m["ci95"]) == {"macro_f1", "accuracy"} and ci["lo"] <= m["macro_f1"] <= ci["hi"]
    assert set(s.class_ci95) == {"N", "S", "V", "F"}
    assert all(set(c) == {"se", "ppv", "f1", "spec"} for c in s.class_ci95.values())
    assert s.confusion.sum() == len(y) and s.probs.shape == probs.shape
    np.testing.assert_array_equal(s.probs.argmax(1), probs.argmax(1))  # temperature changes no call
    with pytest.raises(ValueError, match="unknown \\['X'\\]"):
        assess.score(y, probs, yv, pv, groups, CLASSES, ["N", "X"], n_boot=10)
    assert "auc" in assess.score(y, probs, yv, pv, groups, CLASSES, CLASSES, n_boot=10, auc=True).metrics


def test_dvc_plot_files_are_aggregated(tmp_path):
    y, probs, groups = _predictions()
    s = assess.score(y, probs, y, probs, groups, CLASSES, CLASSES[:4], n_boot=10, n_bins=10)
    figs = assess.write_plots(s, CLASSES, tmp_path / "plots", tmp_path / "figs", "t")
    with open(tmp_path / "plots/confusion.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(CLASSES) ** 2 and sum(int(r["count"]) for r in rows) == len(y)
    cell = next(r for r in rows if (r["actual"], r["predicted"]) == ("S", "N"))
    assert int(cell["count"]) == s.confusion[1, 0]
    rel = json.loads((tmp_path / "plots/reliability.json").read_text())
    assert {r["calibration"] for r in rel} == {"before", "after"}
    assert sum(r["count"] for r in rel if r["calibration"] == "after") == len(y)
    assert all(p.stat().st_size > 1000 for p in figs.values())


def test_evaluate_params_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("evaluate: {bootstrap: 50, ece_bins: 10, seed: 1}\n")
    assert load_params(path) == EvaluateParams(bootstrap=50, ece_bins=10, seed=1)
    path.write_text("evaluate: {bootstrap: 50, n_bins: 10}\n")
    with pytest.raises(ParamsError, match="n_bins"):
        load_params(path)
    path.write_text("ecg_train: {seed: 1}\n")
    with pytest.raises(ParamsError, match="missing section 'evaluate'"):
        load_params(path)


def write_ecg_data(data_dir, meta_extra=None, n_per_record=40, window=33):
    """A tiny prepared ECG set: records 100-103 in DS1 (two folds), 200-202 in DS2."""
    rng = np.random.default_rng(0)
    records = [100, 101, 102, 103, 200, 201, 202]
    n = n_per_record * len(records)
    record = np.repeat(records, n_per_record).astype(np.int16)
    arrays = {"x": rng.normal(size=(n, window)).astype(np.float32), "rr": rng.random((n, 4)).astype(np.float32),
              "y": rng.choice(5, size=n, p=[0.6, 0.15, 0.15, 0.07, 0.03]).astype(np.int64),
              "sample": np.tile(np.arange(n_per_record) * 300, len(records)), "record": record,
              "split": (record >= 200).astype(np.int8),
              "fold": np.where(record >= 200, -1, record % 2).astype(np.int8)}
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(data_dir / "beats.npz", **arrays)
    meta = {"classes": CLASSES, "score_classes": CLASSES[:4], "fs": 360, "window_samples": window,
            "r_peak_index": window // 2, "rr_features": ["a", "b", "c", "d"], **(meta_extra or {})}
    (data_dir / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    return arrays


def ecg_trained(data_dir, **extra):
    from pipeline.io import sha256_file
    return {"model": "tiny", "loss": "ce", "channels": ["record_scaled"], "limit_beats": None, "seed": 0,
            "data_sha256": sha256_file(data_dir / "beats.npz"), "val_macro_f1": 0.5,
            "history": {"loss": [1.0, 0.5]}, "folds": {"0": {}, "1": {}}, "val_records": [100, 101], **extra}


def test_ecg_adapter_reads_prepare_and_train_facts(tmp_path):
    arrays = write_ecg_data(tmp_path / "data")
    art = tmp_path / "art"
    art.mkdir()
    np.savez(art / "oof.npz", y=np.array([0, 1]), probs=np.array([[0.9, 0.1, 0, 0, 0], [0.2, 0.8, 0, 0, 0]]))
    inputs = ecg_evaluate.load(tmp_path / "data", art, ecg_trained(tmp_path / "data"))
    assert inputs.scored == ["N", "S", "V", "F"] and inputs.classes == CLASSES
    assert set(inputs.groups.tolist()) == {200, 201, 202} and len(inputs.y) == 120  # DS2 only
    assert inputs.x["beat"].shape == (120, 33, 1) and inputs.x["rr"].shape == (120, 4)
    np.testing.assert_array_equal(inputs.y, arrays["y"][arrays["split"] == 1])
    y_val, p_val = inputs.validation(None)
    assert y_val.tolist() == [0, 1] and p_val.shape == (2, 5)  # the temperature sees DS1 out-of-fold only
    assert inputs.errors(np.array([0, 3]))["error_x"].shape == (2, 33)
    assert inputs.train["val_records"] == [100, 101]
    limited = ecg_evaluate.load(tmp_path / "data", art, ecg_trained(tmp_path / "data", limit_beats=50))
    assert len(limited.y) == 50
    old = ecg_trained(tmp_path / "data")
    old["params"] = {k: old.pop(k) for k in ("channels", "limit_beats", "seed")}  # a train.json of before the split
    assert len(ecg_evaluate.load(tmp_path / "data", art, old).y) == 120
    bad = ecg_trained(tmp_path / "data")
    del bad["channels"]
    with pytest.raises(ValueError, match="art/train.json: no 'channels'"):
        ecg_evaluate.load(tmp_path / "data", art, bad)
    with pytest.raises(ValueError, match="trained on other data"):
        ecg_evaluate.load(tmp_path / "data", art, ecg_trained(tmp_path / "data", data_sha256="0" * 64))
    write_ecg_data(tmp_path / "old", {"score_classes": None})
    with pytest.raises(ValueError, match="old/meta.json: no 'score_classes'"):
        ecg_evaluate.load(tmp_path / "old", art, ecg_trained(tmp_path / "old"))


@pytest.mark.slow
def test_ecg_evaluate_stage_end_to_end(tmp_path, monkeypatch):
    """A tiny saved Keras model through `python -m ecg.evaluate`: every output, numbers-only metrics."""
    import keras

    from pipeline import tracking

    write_ecg_data(tmp_path / "data")
    art = tmp_path / "artifacts/ecg/tiny-ce"
    art.mkdir(parents=True)
    beat, rr = keras.Input((33, 1), name="beat"), keras.Input((4,), name="rr")
    flat = keras.layers.Concatenate()([keras.layers.Flatten()(beat), rr])
    keras.Model({"beat": beat, "rr": rr}, keras.layers.Dense(5, activation="softmax")(flat)).save(art / "model.keras")
    rng = np.random.default_rng(1)
    np.savez(art / "oof.npz", y=rng.integers(0, 5, 80), probs=rng.dirichlet(np.ones(5), 80))
    (art / "train.json").write_text(json.dumps(ecg_trained(tmp_path / "data", mlflow_run_id=None)))
    (tmp_path / "params.yaml").write_text("evaluate: {bootstrap: 30, ece_bins: 5, seed: 0}\n")
    logged = {}

    def fake_log(experiment, name, run_id, metrics, figures, model, prefix):
        logged.update(experiment=experiment, name=name, metrics=metrics, figures=list(figures), prefix=prefix)
        return "r" * 32, "models:/m"

    monkeypatch.setattr(tracking, "log_evaluation", fake_log)
    monkeypatch.chdir(tmp_path)
    assert ecg_evaluate.main(["--model", "tiny", "--loss", "ce", "--params", "params.yaml", "--data", "data"]) == 0
    metrics = json.loads((tmp_path / "metrics/ecg/tiny-ce.json").read_text())
    info = json.loads((art / "eval.json").read_text())
    assert _numbers_only(metrics) and list(metrics["per_class"]) == ["N", "S", "V", "F"]
    assert metrics["val_macro_f1"] == 0.5 and logged["prefix"] == "ds2."
    assert logged["metrics"]["ci95"]["per_class"] == info["class_ci95"]  # MLflow gets every interval
    assert {k: v for k, v in logged["metrics"].items() if k != "ci95"} == {k: v for k, v in metrics.items() if k != "ci95"}
    assert (info["model"], info["loss"], info["split"], info["mlflow_run_id"]) == ("tiny", "ce", "DS2", "r" * 32)
    assert info["evaluate"] == {"bootstrap": 30, "ece_bins": 5, "seed": 0} and info["n_groups"] == 3
    with np.load(art / "eval.npz") as ev:
        assert ev["probs"].shape == (120, 5) and set(ev["group"].tolist()) == {200, 201, 202}
    rows = list(csv.DictReader(open(tmp_path / "reports/plots/ecg/tiny-ce/confusion.csv")))
    assert len(rows) == 25 and sum(int(r["count"]) for r in rows) == 120
    assert {p.name for p in (art / "figures").iterdir()} == {"confusion.png", "reliability.png", "history.png"}


def test_vision_adapter_scores_every_class(tmp_path):
    from pipeline.io import sha256_file
    from vision import evaluate as vision_evaluate

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("val", 10), ("test", 12)):
        arrays[f"x_{split}"] = rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8)
        arrays[f"y_{split}"] = np.arange(n) % 3
    np.savez(tmp_path / "toy.npz", **arrays)
    (tmp_path / "toy.json").write_text(json.dumps({"class_names": ["a", "b", "c"], "n_classes": 3,
                                                   "image_size": [8, 8], "channels": 1, "source": "x.npz"}))
    trained = {"dataset": "toy", "limit": 9, "data_sha256": sha256_file(tmp_path / "toy.npz"),
               "head": {"history": {"loss": [1.0, 0.5]}}, "finetune": {"history": {"loss": [0.4]}}}
    inputs = vision_evaluate.load(tmp_path, tmp_path, trained)
    assert inputs.classes == inputs.scored == ["a", "b", "c"] and len(inputs.y) == 9  # train.json's limit
    assert inputs.groups.tolist() == list(range(9)) and inputs.errors(np.array([1]))["error_x"].shape == (1, 8, 8, 1)
    assert inputs.data == {"source": "x.npz", "image_size": [8, 8], "channels": 1}
    assert inputs.train["history"] == {"head.loss": [1.0, 0.5], "finetune.loss": [0.4]}
    with pytest.raises(ValueError, match="train.json: no 'limit'"):
        vision_evaluate.load(tmp_path, tmp_path, {k: v for k, v in trained.items() if k != "limit"})
