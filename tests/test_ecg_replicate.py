"""replicate_ecg (seeds, nested cross-validation), the package's seed-ensemble temperature and evaluate_deployed_ecg."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from ecg import replicate
from pipeline import calibration as cal

CLASSES = ["N", "S", "V", "F", "Q"]
WINDOW = 253


def test_fit_temperature_no_worse_keeps_only_an_ece_gain():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    logits = rng.normal(size=(3000, 3))
    logits[np.arange(3000), y] += 1.5
    over = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)   # over-confident: T > 1 helps
    r = cal.fit_temperature_no_worse(over, y, 10)
    assert r["kept"] and r["temperature"] == r["fitted"] > 1 and r["ece_after"] < r["ece_before"]
    assert r["ece_after"] == pytest.approx(cal.ece(cal.apply_temperature(over, r["fitted"]), y, 10))
    # a pure prior shift: confidences right on average for the top label, NLL-optimal T moves them off
    p = np.full((4000, 2), 0.5)
    p[:, 0] = 0.7
    y2 = (rng.random(4000) > 0.7).astype(int)
    r2 = cal.fit_temperature_no_worse(p, y2, 10)
    if not r2["kept"]:
        assert r2["temperature"] == 1.0 and r2["ece_after"] == r2["ece_before"]
    else:
        assert r2["ece_after"] < r2["ece_before"]


def test_without_fold_and_numbers():
    arrays = {"split": np.array([0, 0, 0, 1]), "fold": np.array([0, 1, 2, -1]), "x": np.arange(8).reshape(4, 2),
              "names": np.array(["a", "b"])}
    out = replicate.without_fold(arrays, 1)
    assert out["fold"].tolist() == [0, 2] and out["x"].tolist() == [[0, 1], [4, 5]]
    assert out["names"].tolist() == ["a", "b"]   # not a per-beat array: kept whole
    assert replicate.numbers({"a": 1, "b": "x", "c": {"d": True, "e": [1, 2], "f": None}, "g": {"h": "y"}}) == \
        {"a": 1, "c": {"d": 1}}


def test_spread():
    s = replicate.spread([0.5, 0.7, None])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6) and s["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert replicate.spread([0.5])["sd"] is None


def write_data(data_dir, n_per_record=36):
    """Six DS1 records in three folds, two DS2 records; beats whose class shows in the waveform."""
    rng = np.random.default_rng(0)
    records = [100, 101, 102, 103, 104, 105, 200, 201]
    n = n_per_record * len(records)
    record = np.repeat(records, n_per_record).astype(np.int16)
    y = rng.choice(5, size=n, p=[0.55, 0.15, 0.15, 0.1, 0.05]).astype(np.int64)
    t = np.linspace(0, 1, WINDOW, dtype=np.float32)
    x = rng.normal(scale=0.2, size=(n, WINDOW)).astype(np.float32) + np.sin(2 * np.pi * (1 + y)[:, None] * t)
    arrays = {"x": x.astype(np.float32), "rr": rng.random((n, 5)).astype(np.float32), "y": y,
              "sample": np.tile(np.arange(n_per_record) * 300, len(records)), "record": record,
              "split": (record >= 200).astype(np.int8), "fold": np.where(record >= 200, -1, record % 3).astype(np.int8)}
    data_dir.mkdir(parents=True)
    np.savez(data_dir / "beats.npz", **arrays)
    meta = {"database": "synthetic", "fs": 360, "window_samples": WINDOW, "r_peak_index": WINDOW // 2,
            "window_ms": 700.0, "classes": CLASSES, "score_classes": CLASSES[:4],
            "rr_features": ["a", "b", "c", "d", "e"], "bandpass_hz": [0.5, 40.0], "filter_order": 2,
            "local_rr_beats": 10, "lead": "MLII", "fallback_leads": ["V5"],
            "leads": {str(r): "MLII" for r in records}}
    (data_dir / "meta.json").write_text(json.dumps(meta))
    return arrays


def params(extra_seed=7):
    return {
        "ecg_train": {"seed": 3, "channels": ["record_scaled"], "val_folds": "all",
                      "fit": {"epochs": 2, "batch_size": 64, "learning_rate": 0.003, "patience": 2, "min_delta": 0.0},
                      "augment": None, "mixed_precision": "off", "limit_beats": None,
                      "sampling": {"majority": "N", "keep": 0.5}, "schedule": {"kind": "constant", "peak_factor": 1.0},
                      "lenet1d": {"width": 1, "dropout": 0.0}, "dilated1d": {"filters": 4, "stem_stride": 2, "dropout": 0.0},
                      "resnet1d": {"filters": [4, 4], "kernel": 3, "stem_stride": 2, "dropout": 0.0},
                      "loss": {"ce": {"label_smoothing": 0.0}, "weighted_ce": {"alpha": "sqrt_inverse", "label_smoothing": 0.0},
                               "focal": {"alpha": "sqrt_inverse", "gamma": 2.0, "label_smoothing": 0.0}}},
        "evaluate": {"bootstrap": 20, "ece_bins": 5, "seed": 0},
        "package_ecg": {"run": "lenet1d-ce"},
        "ecg_replicate": {"seeds": [extra_seed]},
    }


@pytest.mark.slow
def test_replicate_package_deployed_end_to_end(tmp_path, monkeypatch):
    """train_ecg -> replicate_ecg -> package_ecg (seed-ensemble temperature) -> evaluate_deployed_ecg, goal_ecg."""
    from ecg import deployed, package, train
    from ecg.package import load_package

    arrays = write_data(tmp_path / "data/ecg")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert train.main(["--model", "lenet1d", "--loss", "ce", "--params", "params.yaml", "--data", "data/ecg"]) == 0
    assert replicate.main(["--params", "params.yaml", "--data", "data/ecg"]) == 0

    ds1 = arrays["split"] == 0
    with np.load("artifacts/ecg_replicate/oof_nested.npz") as npz:
        nested = {k: npz[k] for k in npz.files}
    assert str(nested["run"]) == "lenet1d-ce" and nested["probs"].shape == (ds1.sum(), 5)
    order = np.lexsort((arrays["sample"][ds1], arrays["record"][ds1]))
    got = np.lexsort((np.zeros(len(nested["record"])), nested["record"]))
    assert sorted(nested["record"].tolist()) == sorted(arrays["record"][ds1].tolist())  # every DS1 beat once
    np.testing.assert_array_equal(np.sort(nested["y"]), np.sort(arrays["y"][ds1][order]))
    assert got.shape == order.shape
    np.testing.assert_allclose(nested["probs"].sum(1), 1.0, atol=1e-5)
    full = json.loads((tmp_path / "artifacts/ecg_replicate/replicate.json").read_text())
    assert set(full["nested"]["outer"]) == {"0", "1", "2"} and set(full["seeds"]) == {"3", "7"}
    assert all(len(o["best_epochs"]) == 2 for o in full["nested"]["outer"].values())  # 2 inner folds each
    metrics = json.loads((tmp_path / "metrics/ecg/replicate.json").read_text())
    assert metrics["spread"]["macro_f1"]["n"] == 2
    seed_oof = np.load("artifacts/ecg_replicate/seed7/oof.npz")
    assert full["seeds"]["7"]["macro_f1"] == pytest.approx(
        replicate.summary(seed_oof["y"], seed_oof["probs"], {"classes": CLASSES, "score_classes": CLASSES[:4]})["macro_f1"])

    # the package's temperature comes from the mean of the run's and the seeds' out-of-fold predictions (seed
    # ensembles of fold models), kept only if it lowers their ECE
    assert package.main(["--params", "params.yaml", "--runs-root", "artifacts/ecg", "--meta", "data/ecg/meta.json",
                         "--out", "models/ecg", "--calibration", "artifacts/ecg_replicate"]) == 0
    spec = load_package("models/ecg").spec
    own = np.load("artifacts/ecg/lenet1d-ce/oof.npz")
    mean = (own["probs"] + seed_oof["probs"]) / 2
    expect = cal.fit_temperature_no_worse(mean, own["y"], 5)
    assert spec["temperature"] == pytest.approx(expect["temperature"])
    assert spec["calibration"]["ece_before"] == pytest.approx(cal.ece(mean, own["y"], 5))
    assert "seed7/oof.npz" in spec["temperature_fitted_on"] and "mean of 2 seeds" in spec["temperature_fitted_on"]
    assert spec["calibration"]["kept"] == expect["kept"]

    assert deployed.main(["--params", "params.yaml", "--data", "data/ecg"]) == 0
    dm = json.loads((tmp_path / "metrics/ecg/deployed.json").read_text())
    assert dm["temperature"] == pytest.approx(spec["temperature"]) and set(dm["per_class"]) == set(CLASSES[:4])
    info = json.loads((tmp_path / "artifacts/ecg/deployed/eval.json").read_text())
    assert info["data"]["deployed_from"] == "lenet1d-ce" and info["split"] == "DS2"
    seeds = json.loads((tmp_path / "metrics/ecg/seeds.json").read_text())
    assert set(seeds["ds2"]["per_seed"]) == {"3", "7"} and seeds["ds2"]["spread"]["macro_f1"]["n"] == 2
    assert seeds["ds2"]["per_seed"]["3"]["macro_f1"] == pytest.approx(dm["macro_f1"])  # the packaged ensemble

    # goal_ecg: the deployed model against a "before" that is the same model (nothing changed, CIs identical)
    from ecg import goal
    info_ds2 = json.loads((tmp_path / "artifacts/ecg/deployed/eval.json").read_text())
    ref = {"commit": "abc1234", "metrics": dm, "class_ci95": info_ds2["class_ci95"],
           "ds1_out_of_fold": {"runs": {"lenet1d-ce": {"val_macro_f1": 0.4, "f1": {"S": 0.1, "V": 0.2, "F": 0.0}}}}}
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    p = params()
    p["goal_ecg"] = {"targets": {"macro_f1": 0.0, "S": 1.01, "ece_after": 1.0}, "reference": "ref.json",
                     "literature": [{"source": "someone 2020", "S": 0.5}]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert goal.main(["--params", "params.yaml", "--metrics", "goal.json"]) == 0
    g = json.loads((tmp_path / "goal.json").read_text())
    mf1 = g["goal"]["macro-F1 (N, S, V, F)"]
    assert mf1["met"] is True and mf1["deployed"]["value"] == pytest.approx(dm["macro_f1"])
    assert g["goal"]["S F1"]["met"] is False and g["goal"]["S F1"]["lit: someone 2020"] == 0.5
    assert g["goal"]["V F1"]["met"] is None and g["goal"]["ECE after TS"]["met"] is True
    changed = g["what_changed"]["macro-F1 (N, S, V, F)"]
    assert changed["difference"] == 0 and changed["cis_separate"] is False
    assert set(g["seeds"]) == {"seed 3", "seed 7"} and g["seed_spread"]["DS2 macro-F1"]["n"] == 2
    assert {"lenet1d-ce @ abc1234 (before issue 10)", "lenet1d-ce (now)", "lenet1d-ce seed 7",
            "lenet1d-ce nested fold ensembles"} == set(g["experiments"])
    assert g["experiments"]["lenet1d-ce (now)"]["chosen"] is True
    assert "goal not met" in g["readings"]["goal"] and "Missed: S F1" in g["readings"]["goal"]

    # seeds of another run, or of other beats, are refused
    full_other = {**full, "run": "dilated1d-ce"}
    (tmp_path / "other").mkdir()
    (tmp_path / "other/replicate.json").write_text(json.dumps(full_other))
    argv = ["--params", "params.yaml", "--runs-root", "artifacts/ecg", "--meta", "data/ecg/meta.json",
            "--out", "models/other", "--calibration", "other"]
    assert package.main(argv) == 2 and not (tmp_path / "models/other").exists()
    (tmp_path / "other/replicate.json").write_text(json.dumps(full))
    (tmp_path / "other/seed9").mkdir()
    np.savez("other/seed9/oof.npz", y=seed_oof["y"][::-1], probs=seed_oof["probs"], record=seed_oof["record"])
    assert package.main(argv) == 2 and not (tmp_path / "models/other").exists()


def test_replicate_refuses_its_own_seed_and_other_settings(tmp_path, monkeypatch, capsys):
    write_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    p = params(extra_seed=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    (tmp_path / "artifacts/ecg/lenet1d-ce").mkdir(parents=True)
    from ecg import train_config
    cfg = train_config.load("params.yaml")
    (tmp_path / "artifacts/ecg/lenet1d-ce/train.json").write_text(json.dumps(
        {"model": "lenet1d", "loss": "ce", "config": cfg.run_config("lenet1d", "ce"), "data_sha256": "x"}))
    assert replicate.main(["--params", "params.yaml", "--data", "data"]) == 2
    assert "train_ecg's own seed" in capsys.readouterr().err
    p["ecg_replicate"]["seeds"] = [7]
    p["ecg_train"]["fit"]["epochs"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert replicate.main(["--params", "params.yaml", "--data", "data"]) == 2
    assert "other ecg_train settings" in capsys.readouterr().err


def test_report_changes_and_deployed_copy(tmp_path):
    from types import SimpleNamespace

    from ecg.report import REPORT, changes
    from pipeline.report import compare
    assert changes(tmp_path) == []
    (tmp_path / "metrics/analysis").mkdir(parents=True)
    (tmp_path / "metrics/analysis/goal_ecg.json").write_text(json.dumps(
        {"readings": {"goal": "g", "changed S F1": "s", "calibration": "c", "seeds": "x"}}))
    assert changes(tmp_path) == ["g", "s"] and REPORT.changes is changes
    run = SimpleNamespace(info={"data": {"deployed_from": "dilated1d-focal"}}, get=lambda k: 0.9, arm=REPORT)
    other = SimpleNamespace(info={"data": {}}, get=lambda k: 0.5, arm=REPORT, name="dilated1d-focal")
    assert compare.deployed_copy(run) and not compare.deployed_copy(other)
    assert compare.chosen([run, other]) == {"dilated1d-focal"}   # the copy never takes the validation choice
