"""Clinically framed numbers: ROC, operating points, ordinal agreement, paired comparisons.

Every interval is a percentile bootstrap over groups (the arm's group: an ECG record, an image),
drawn the same way for every statistic with the same seed, so two runs scored on the same test
set are resampled identically (a paired bootstrap).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import cohen_kappa_score, roc_auc_score, roc_curve

SE_TARGET = 0.95   # the clinically framed operating point: 95% sensitivity, chosen on validation


def group_draws(groups, n_boot: int, seed: int):
    """Resampled sample indices, one array per bootstrap draw (whole groups drawn with replacement)."""
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if len(groups) else []
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        picked = rng.integers(0, len(members), len(members))
        yield np.concatenate([members[g] for g in picked])


def percentile(values) -> dict | None:
    """{lo, hi}: the 2.5 and 97.5 percentiles of the defined values (None when none is defined)."""
    vals = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(vals):
        return None
    return {"lo": float(np.percentile(vals, 2.5)), "hi": float(np.percentile(vals, 97.5))}


def bootstrap_ci(stat, arrays: tuple, groups, n_boot: int, seed: int) -> dict | None:
    """95% CI of stat(*arrays[idx]) over group-bootstrap draws."""
    return percentile(stat(*(a[idx] for a in arrays)) for idx in group_draws(groups, n_boot, seed))


def auc(y_pos, score):
    """ROC AUC of a positive-class score; None when only one class is present."""
    y_pos = np.asarray(y_pos, bool)
    return float(roc_auc_score(y_pos, score)) if 0 < y_pos.sum() < len(y_pos) else None


def roc(y_pos, score) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) of the ROC curve."""
    fpr, tpr, _ = roc_curve(np.asarray(y_pos, bool), score)
    return fpr, tpr


def threshold_for_sensitivity(y_pos, score, target: float = SE_TARGET) -> float | None:
    """The highest threshold t with sensitivity (score >= t among positives) at least `target`."""
    pos = np.sort(np.asarray(score, np.float64)[np.asarray(y_pos, bool)])[::-1]
    if not len(pos):
        return None
    return float(pos[math.ceil(target * len(pos)) - 1])


def rates(y_pos, called_pos) -> dict:
    """{se, spec} of positive calls (None when a side is absent)."""
    y_pos, called_pos = np.asarray(y_pos, bool), np.asarray(called_pos, bool)
    n_pos, n_neg = int(y_pos.sum()), int((~y_pos).sum())
    return {"se": float((called_pos & y_pos).sum() / n_pos) if n_pos else None,
            "spec": float((~called_pos & ~y_pos).sum() / n_neg) if n_neg else None}


def binary_metrics(y, probs, y_val, probs_val, positive: int, groups, n_boot: int, seed: int) -> dict:
    """AUC (+ its CI) and operating points of a two-class task, `positive` the class index of interest.

    `in_use`: the model's own call (the most probable class, i.e. threshold 0.5 on the positive
    probability); `se95_val`: the threshold giving 95% sensitivity on the validation split, read on test.
    """
    y, probs = np.asarray(y, np.int64), np.asarray(probs, np.float64)
    y_pos, score = y == positive, probs[:, positive]
    t95 = threshold_for_sensitivity(np.asarray(y_val) == positive, np.asarray(probs_val, np.float64)[:, positive])
    points = {"in_use": {"threshold": 0.5, **rates(y_pos, probs.argmax(axis=1) == positive)}}
    if t95 is not None:
        points["se95_val"] = {"threshold": t95, **rates(y_pos, score >= t95)}
    return {"auc": auc(y_pos, score),
            "auc_ci": bootstrap_ci(auc, (y_pos, score), groups, n_boot, seed),
            "operating_points": points}


def within_one(y, pred) -> float | None:
    y, pred = np.asarray(y), np.asarray(pred)
    return float(np.mean(np.abs(y - pred) <= 1)) if len(y) else None


def kappa(y, pred) -> float | None:
    """Quadratic-weighted Cohen's kappa (None when undefined, e.g. a single grade everywhere)."""
    y, pred = np.asarray(y), np.asarray(pred)
    if not len(y) or (len(np.unique(y)) < 2 and len(np.unique(pred)) < 2):
        return None
    k = cohen_kappa_score(y, pred, weights="quadratic")
    return float(k) if np.isfinite(k) else None


def ordinal_metrics(y, pred, groups, n_boot: int, seed: int) -> dict:
    """Quadratic-weighted kappa and within-one-grade accuracy, with their 95% CIs."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    return {key: (fn(y, pred), bootstrap_ci(fn, (y, pred), groups, n_boot, seed))
            for key, fn in (("kappa_quadratic", kappa), ("within_one", within_one))}


# --- paired comparison of two runs on the same test set ---------------------------------------------

def macro_f1(cm: np.ndarray, idx) -> float | None:
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)   # 2tp + fp + fn
    f1 = [2 * tp[k] / denom[k] for k in idx if denom[k] > 0]
    return float(np.mean(f1)) if f1 else None


def _group_confusions(y, pred, inverse, n_groups, k):
    flat = (inverse * k + y) * k + pred
    return np.bincount(flat, minlength=n_groups * k * k).reshape(n_groups, k, k).astype(np.float64)


def class_f1(cm: np.ndarray, k: int) -> float | None:
    return macro_f1(cm, [k])


def accuracy(cm: np.ndarray) -> float | None:
    return float(np.trace(cm) / cm.sum()) if cm.sum() else None


def paired_differences(y, pred_a, pred_b, groups, fns: dict, n_boot: int, seed: int, n_classes: int) -> dict:
    """For each confusion statistic fns[name](cm): run a minus run b on the same samples, with the
    95% CI of a paired group bootstrap (each draw resamples the same groups for both runs).
    name -> {"a", "b", "diff", "ci"}."""
    y, groups = np.asarray(y, np.int64), np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    ca = _group_confusions(y, np.asarray(pred_a, np.int64), inverse, n_groups, n_classes)
    cb = _group_confusions(y, np.asarray(pred_b, np.int64), inverse, n_groups, n_classes)
    rng = np.random.default_rng(seed)
    diffs = {name: [] for name in fns}
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)
        wa, wb = np.tensordot(w, ca, 1), np.tensordot(w, cb, 1)
        for name, fn in fns.items():
            a, b = fn(wa), fn(wb)
            diffs[name].append(None if a is None or b is None else a - b)
    out = {}
    for name, fn in fns.items():
        a, b = fn(ca.sum(0)), fn(cb.sum(0))
        out[name] = {"a": a, "b": b, "diff": None if a is None or b is None else a - b, "ci": percentile(diffs[name])}
    return out


def paired_difference(y, pred_a, pred_b, groups, idx, n_boot: int, seed: int, n_classes: int) -> dict:
    """Macro-F1 of a minus b over the classes `idx` (see paired_differences)."""
    return paired_differences(y, pred_a, pred_b, groups, {"m": lambda cm: macro_f1(cm, idx)},
                              n_boot, seed, n_classes)["m"]


def degenerate(metrics: dict) -> list[str]:
    """Plain-words reasons a model is degenerate: a scored class with F1 = 0 or never predicted."""
    out = []
    for cls, row in (metrics.get("per_class") or {}).items():
        if row.get("ppv") is None and (row.get("n") or 0) > 0:
            out.append(f"{cls} is never predicted")
        elif row.get("f1") == 0:
            out.append(f"{cls} F1 is 0")
    return out
