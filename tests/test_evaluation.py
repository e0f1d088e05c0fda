import time

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from pipeline.evaluation import (
    accuracy, bootstrap_ci, bootstrap_confusion_ci, class_metrics, confusion,
    macro_f1, roc_auc,
)


def test_confusion_orientation():
    cm = confusion([0, 0, 1, 2], [0, 1, 1, 0], 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError):
        confusion([0, 3], [0, 0], 3)


def per_class(y_true, y_pred, class_names):
    cm = confusion(y_true, y_pred, len(class_names))
    return {name: class_metrics(cm, k) for k, name in enumerate(class_names)}


def test_per_class_matches_sklearn():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    res = per_class(y_true, y_pred, ["N", "S", "V", "F"])
    for k, name in enumerate("NSVF"):
        m = res[name]
        assert m["se"] == pytest.approx(r[k]) and m["ppv"] == pytest.approx(p[k])
        assert m["f1"] == pytest.approx(f[k]) and m["n"] == s[k]
        neg = y_true != k
        assert m["spec"] == pytest.approx(np.mean(y_pred[neg] != k))
    assert macro_f1(y_true, y_pred, [0, 1, 2, 3]) == pytest.approx(f.mean())
    assert accuracy(y_true, y_pred) == pytest.approx(np.mean(y_true == y_pred))


def test_undefined_values_are_none():
    y_true = np.array([0, 0, 1, 1, 3])
    y_pred = np.array([0, 0, 0, 0, 0])  # class 1 never predicted, class 2 absent everywhere
    res = per_class(y_true, y_pred, ["a", "b", "c", "d"])
    assert res["b"] == {"se": 0.0, "ppv": None, "f1": 0.0, "spec": 1.0, "n": 2}
    assert res["c"]["se"] is None and res["c"]["ppv"] is None and res["c"]["f1"] is None
    assert res["a"]["ppv"] == pytest.approx(0.4) and res["a"]["se"] == 1.0
    # macro over a, b, c: c skipped -> mean(f1_a, 0)
    f1_a = 2 * 0.4 / 1.4
    assert macro_f1(y_true, y_pred, [0, 1, 2]) == pytest.approx(f1_a / 2)
    assert macro_f1(y_true, y_pred, [2]) is None
    # predicted but absent from truth
    m = class_metrics(confusion([0, 0], [1, 0], 2), 1)
    assert m["se"] is None and m["ppv"] == 0.0 and m["f1"] == 0.0


def test_roc_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300)
    probs[np.arange(300), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    assert roc_auc(y, probs) == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    yb = (y == 1).astype(int)
    assert roc_auc(yb, probs[:, 1]) == pytest.approx(roc_auc_score(yb, probs[:, 1]))
    assert roc_auc(np.zeros(5, int), np.full(5, 0.3)) is None


def _acc_fns():
    return {"acc": lambda cm: cm.trace() / cm.sum(), "se1": lambda cm: class_metrics(cm, 1)["se"]}


def test_bootstrap_generic_equals_confusion_version():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 8, 400)
    y_true = rng.integers(0, 3, 400)
    y_pred = np.where(rng.random(400) < 0.7, y_true, rng.integers(0, 3, 400))

    def stat(idx):
        cm = confusion(y_true[idx], y_pred[idx], 3)
        return {k: fn(cm) for k, fn in _acc_fns().items()}

    fast = bootstrap_confusion_ci(y_true, y_pred, groups, 3, _acc_fns(), n_boot=200, seed=5)
    slow = bootstrap_ci(groups, stat, n_boot=200, seed=5)
    for k in fast:
        np.testing.assert_allclose(fast[k], slow[k])
    lo, hi = fast["acc"]
    assert lo <= accuracy(y_true, y_pred) <= hi and hi > lo


def test_bootstrap_resamples_groups():
    # 10 groups of 50; group 0 all wrong, the rest all right -> accuracy 0.9
    groups = np.repeat(np.arange(10), 50)
    y_true = np.zeros(500, int)
    y_pred = np.where(groups == 0, 1, 0)
    lo, hi = bootstrap_confusion_ci(y_true, y_pred, groups, 2, _acc_fns(), seed=0)["acc"]
    assert lo <= 0.8 and hi == 1.0  # drawing group 0 zero or 2+ times moves accuracy by 0.1
    # the same beats as identical copies: every group 90% right -> zero-width interval
    y_pred_mixed = np.tile(np.r_[np.ones(5, int), np.zeros(45, int)], 10)
    lo2, hi2 = bootstrap_confusion_ci(y_true, y_pred_mixed, groups, 2, _acc_fns(), seed=0)["acc"]
    assert lo2 == pytest.approx(0.9) and hi2 == pytest.approx(0.9)
    # a metric undefined in every resample gives None, not a fake interval
    assert bootstrap_confusion_ci(y_true, y_pred, groups, 2, _acc_fns(), seed=0)["se1"] is None


def test_bootstrap_confusion_is_fast():
    rng = np.random.default_rng(3)
    n = 50_000
    y_true = rng.integers(0, 5, n)
    y_pred = np.where(rng.random(n) < 0.8, y_true, rng.integers(0, 5, n))
    fns = {f"f1_{k}": (lambda cm, k=k: class_metrics(cm, k)["f1"]) for k in range(4)}
    t0 = time.perf_counter()
    ci = bootstrap_confusion_ci(y_true, y_pred, rng.integers(0, 22, n), 5, fns, n_boot=1000)
    assert time.perf_counter() - t0 < 10
    assert all(lo < hi for lo, hi in ci.values())
