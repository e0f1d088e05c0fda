"""pipeline.clinical: operating points chosen on validation, AUC/kappa CIs, paired bootstrap, and the
evaluate stage writing them as numbers."""
import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from pipeline import clinical
from pipeline.evaluate import EvaluateParams, Inputs, write_outputs
from vision.evaluate import ADAPTER as VISION
from vision.evaluate import positive_class


def test_threshold_for_sensitivity_is_read_on_validation():
    y = np.array([1] * 20 + [0] * 20)
    score = np.r_[np.linspace(0.05, 1.0, 20), np.linspace(0.0, 0.5, 20)]
    t = clinical.threshold_for_sensitivity(y, score, 0.95)
    assert np.mean(score[y == 1] >= t) >= 0.95 and np.mean(score[y == 1] >= np.nextafter(t, 2)) < 0.95
    assert clinical.threshold_for_sensitivity(np.zeros(3), np.ones(3)) is None


def test_binary_metrics_auc_ci_and_points():
    rng = np.random.default_rng(0)
    y, yv = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    def probs(lab):
        p1 = np.clip(0.5 + 0.3 * (lab == 0) - 0.15 + rng.normal(0, 0.2, len(lab)), 0.01, 0.99)
        return np.c_[p1, 1 - p1]   # class 0 is the positive class here (like BreastMNIST malignant)
    b = clinical.binary_metrics(y, probs(y), yv, probs(yv), 0, np.arange(300), 200, 0)
    assert b["auc"] == pytest.approx(roc_auc_score(y == 0, probs(y)[:, 0]), abs=0.1)
    assert b["auc_ci"]["lo"] < b["auc"] < b["auc_ci"]["hi"]
    op = b["operating_points"]
    assert set(op) == {"in_use", "se95_val"} and op["in_use"]["threshold"] == 0.5
    assert 0.85 < op["se95_val"]["se"] <= 1.0 and op["se95_val"]["spec"] < op["in_use"]["spec"]


def test_ordinal_metrics_match_sklearn():
    y = np.array([0, 1, 2, 3, 4] * 20)
    pred = np.clip(y + np.array([0, 1, -1, 2, 0] * 20), 0, 4)
    m = clinical.ordinal_metrics(y, pred, np.arange(100), 100, 0)
    assert m["kappa_quadratic"][0] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["within_one"][0] == pytest.approx(np.mean(np.abs(y - pred) <= 1))
    assert m["within_one"][1]["lo"] <= m["within_one"][0] <= m["within_one"][1]["hi"]


def test_paired_difference():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    good = np.where(rng.random(400) < 0.9, y, (y + 1) % 3)
    bad = np.where(rng.random(400) < 0.6, y, (y + 1) % 3)
    same = clinical.paired_difference(y, good, good, np.arange(400), [0, 1, 2], 100, 0, 3)
    assert same["diff"] == 0 and same["ci"] == {"lo": 0.0, "hi": 0.0}
    d = clinical.paired_difference(y, good, bad, np.repeat(np.arange(40), 10), [0, 1, 2], 200, 0, 3)
    assert d["diff"] == pytest.approx(d["a"] - d["b"]) and 0 < d["ci"]["lo"] < d["diff"] < d["ci"]["hi"]


def test_degenerate():
    assert clinical.degenerate({"per_class": {"a": {"f1": 0.0, "ppv": None, "n": 5}, "b": {"f1": 0.0, "ppv": 0.0, "n": 3},
                                              "c": {"f1": 0.8, "ppv": 0.7, "n": 9}}}) == \
        ["a is never predicted", "b F1 is 0"]


def test_positive_class_of_vision_datasets():
    assert positive_class("breastmnist", ["malignant", "normal, benign"]) == "malignant"
    assert positive_class("pneumoniamnist", ["normal", "pneumonia"]) == "pneumonia"
    assert positive_class("other", ["normal", "tumour"]) == "tumour"
    assert positive_class("retinamnist", list("01234")) is None


@pytest.mark.parametrize("kind", ["binary", "ordinal"])
def test_evaluate_writes_clinical_numbers(tmp_path, kind):
    rng = np.random.default_rng(2)
    k = 2 if kind == "binary" else 5
    classes = ["malignant", "normal, benign"] if kind == "binary" else list("01234")
    y, yv = rng.integers(0, k, 200), rng.integers(0, k, 200)
    pr = rng.dirichlet(np.ones(k), 200); pr[np.arange(200), y] += 0.3; pr /= pr.sum(1, keepdims=True)
    pv = rng.dirichlet(np.ones(k), 200); pv[np.arange(200), yv] += 0.3; pv /= pv.sum(1, keepdims=True)
    inputs = Inputs(x=None, y=y, groups=np.arange(200), classes=classes, scored=classes, validation=None,
                    errors=lambda idx: {}, positive="malignant" if kind == "binary" else None,
                    ordinal=kind == "ordinal")
    write_outputs(VISION, "run", EvaluateParams(bootstrap=50), tmp_path, {"val_macro_f1": 0.5}, inputs, pr, (yv, pv),
                  lambda m, f: ("id", "uri"))
    m = json.loads((tmp_path / "metrics/vision/run.json").read_text())
    info = json.loads((tmp_path / "artifacts/vision/run/eval.json").read_text())
    with np.load(tmp_path / "artifacts/vision/run/eval.npz") as z:
        assert z["probs_val"].shape == (200, k) and z["y_val"].tolist() == yv.tolist()
    if kind == "binary":
        assert m["auc"] == pytest.approx(roc_auc_score(y == 0, pr[:, 0]))
        assert m["ci95"]["auc"]["lo"] < m["auc"] < m["ci95"]["auc"]["hi"] and info["positive"] == "malignant"
        assert set(m["operating_points"]["se95_val"]) == {"threshold", "se", "spec"}
        assert m["operating_points"]["in_use"]["se"] == pytest.approx(m["per_class"]["malignant"]["se"])
    else:
        assert m["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, pr.argmax(1), weights="quadratic"))
        assert set(m["ci95"]) >= {"kappa_quadratic", "within_one", "macro_f1"} and info["ordinal"] is True


def test_ecg_alarms_per_hour(tmp_path):
    """False S/V calls per hour of DS2: the adapter's hours (last beat / fs per record) and the metrics file."""
    from ecg import evaluate as ecg_evaluate
    from ecg.evaluate import ADAPTER as ECG
    from tests.test_evaluate_stage import ecg_trained, write_ecg_data

    write_ecg_data(tmp_path / "data")
    art = tmp_path / "art"
    art.mkdir()
    np.savez(art / "oof.npz", y=np.array([0, 1]), probs=np.array([[0.9, 0.1, 0, 0, 0], [0.2, 0.8, 0, 0, 0]]))
    inputs = ecg_evaluate.load(tmp_path / "data", art, ecg_trained(tmp_path / "data"))
    assert inputs.hours == pytest.approx(3 * 39 * 300 / 360 / 3600) and inputs.alarm_classes == ("S", "V")
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), len(inputs.y))
    write_outputs(ECG, "tiny-ce", EvaluateParams(bootstrap=20), tmp_path, {"val_macro_f1": 0.5}, inputs, probs,
                  inputs.validation(None), lambda m, f: ("id", "uri"))
    m = json.loads((tmp_path / "metrics/ecg/tiny-ce.json").read_text())
    pred = probs.argmax(1)
    for c, k in (("S", 1), ("V", 2)):
        assert m["alarms_per_hour"][c] == pytest.approx(((pred == k) & (inputs.y != k)).sum() / inputs.hours)
    info = json.loads((tmp_path / "artifacts/ecg/tiny-ce/eval.json").read_text())
    assert info["hours"] == pytest.approx(inputs.hours) and "approximation" in info["hours_method"]


def test_errors_spread_over_groups():
    from pipeline.assess import top_errors

    y = np.zeros(10, int)
    probs = np.c_[np.zeros(10), np.ones(10)]  # all wrong, equally sure
    groups = np.array([7] * 6 + [8, 8, 9, 9])
    picked = top_errors(y, probs, 5, groups, 2)
    assert len(picked) == 5 and max(np.bincount(groups[picked])) <= 2
    assert top_errors(y, probs, 5).tolist() == [0, 1, 2, 3, 4]


def test_ecg_error_context_in_mv(tmp_path):
    from ecg import evaluate as ecg_evaluate
    from ecg import dataset
    from tests.test_evaluate_stage import ecg_trained, write_ecg_data

    raw = write_ecg_data(tmp_path / "data")
    art = tmp_path / "art"
    art.mkdir()
    np.savez(art / "oof.npz", y=np.array([0]), probs=np.array([[1.0, 0, 0, 0, 0]]))
    inputs = ecg_evaluate.load(tmp_path / "data", art, ecg_trained(tmp_path / "data"))
    ctx = inputs.errors(np.array([0, 5]))
    w, off = ctx["error_context_mv"], ctx["error_offsets"]
    assert w.shape == (2, 3, 33) and off.tolist()[1] == [-300, 0, 300]
    assert np.isnan(w[0, 0]).all() and off[0, 0] == 0   # the first beat of a record has no previous beat
    row = np.flatnonzero((raw["record"] == 200))[5]
    np.testing.assert_allclose(w[1, 1], raw["x"][row] - raw["x"][row].mean(), rtol=1e-5)
    assert ecg_evaluate.ADAPTER.errors_per_group == 2 and dataset  # examples spread over records
