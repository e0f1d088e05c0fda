"""Classification metrics with honest undefined values, and group bootstrap CIs.

Per-class rule (tp, fp, fn, tn from the confusion matrix; n = tp + fn true samples,
m = tp + fp predicted samples):
  se   = tp / n              None if n == 0 (no true samples of the class)
  ppv  = tp / m              None if m == 0 (class never predicted)
  f1   = 2 tp / (n + m)      None only if n == m == 0; so a class with true samples
                             that is never predicted has se = 0, ppv = None, f1 = 0,
                             and a class absent from truth but predicted has
                             se = None, ppv = 0, f1 = 0
  spec = tn / (tn + fp)      None if every sample belongs to the class
Macro F1 averages f1 over the requested classes, skipping classes whose f1 is
None (absent from both truth and prediction); None if all are skipped.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def _labels(y, name):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    return y.astype(np.int64)


def _check_range(y_true, y_pred, n_classes):
    for y in (y_true, y_pred):
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes}), got {y.min()}..{y.max()}")


def confusion(y_true, y_pred, n_classes) -> np.ndarray:
    """(n_classes, n_classes) int count matrix, rows = true, columns = predicted."""
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels, y_pred {len(y_pred)}")
    _check_range(y_true, y_pred, n_classes)
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def _ratio(a, b):
    return float(a / b) if b else None


def class_metrics(cm, k) -> dict:
    """se, ppv, f1, spec, n of class index k from a confusion matrix (module rule)."""
    cm = np.asarray(cm)
    tp, n, m, total = cm[k, k], cm[k, :].sum(), cm[:, k].sum(), cm.sum()
    fp = m - tp
    tn = total - n - fp
    return {"se": _ratio(tp, n), "ppv": _ratio(tp, m), "f1": _ratio(2 * tp, n + m),
            "spec": _ratio(tn, tn + fp), "n": int(n)}


def macro_f1_from_confusion(cm, classes):
    f1s = [class_metrics(cm, k)["f1"] for k in classes]
    f1s = [f for f in f1s if f is not None]
    return float(np.mean(f1s)) if f1s else None


def macro_f1(y_true, y_pred, classes):
    """Mean F1 over the class indices `classes` (None-F1 classes skipped, see module doc)."""
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    n = int(max(y_true.max(initial=0), y_pred.max(initial=0), max(classes))) + 1
    return macro_f1_from_confusion(confusion(y_true, y_pred, n), classes)


def accuracy(y_true, y_pred):
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    return float(np.mean(y_true == y_pred)) if len(y_true) else None


def roc_auc(y_true, probs):
    """Binary: AUC of the positive-class prob ((n,) or column 1 of (n, 2)).

    Multi-class (n, k>2): macro one-vs-rest AUC over the classes present in
    y_true (equals sklearn's macro OvR when all are present). None if y_true
    holds a single class.
    """
    y_true = _labels(y_true, "y_true")
    probs = np.asarray(probs, dtype=np.float64)
    if len(np.unique(y_true)) < 2:
        return None
    if probs.ndim == 1 or probs.shape[1] == 2:
        score = probs if probs.ndim == 1 else probs[:, 1]
        return float(roc_auc_score(y_true == 1, score))
    present = np.unique(y_true)
    return float(np.mean([roc_auc_score(y_true == k, probs[:, k]) for k in present]))


def _group_index(groups):
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    return inverse.ravel()


def _percentiles(samples, alpha):
    out = {}
    for name, vals in samples.items():
        vals = np.array([v for v in vals if v is not None and np.isfinite(v)], dtype=float)
        out[name] = (np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)]).tolist()
                     if len(vals) else None)
    return out


def _draws(n_groups, n_boot, seed):
    return np.random.default_rng(seed).integers(0, n_groups, size=(n_boot, n_groups))


def bootstrap_ci(groups, stat_fn, n_boot=1000, seed=0, alpha=0.05) -> dict:
    """Group bootstrap: resample groups with replacement, pass the concatenated
    sample indices to stat_fn(idx) -> dict name -> float | None. Returns
    name -> [lo, hi] percentile interval (None values dropped; None if none left).
    """
    gidx = _group_index(groups)
    members = [np.flatnonzero(gidx == g) for g in range(gidx.max() + 1)]
    samples: dict[str, list] = {}
    for draw in _draws(len(members), n_boot, seed):
        stats = stat_fn(np.concatenate([members[g] for g in draw]))
        for name, v in stats.items():
            samples.setdefault(name, []).append(v)
    return _percentiles(samples, alpha)


def bootstrap_confusion_ci(y_true, y_pred, groups, n_classes, metric_fns,
                           n_boot=1000, seed=0, alpha=0.05) -> dict:
    """Fast group bootstrap for confusion-matrix metrics.

    Per-group confusion matrices are summed per resample (same draws as
    bootstrap_ci with the same seed). metric_fns: name -> fn(cm) -> float | None.
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    gidx = _group_index(groups)
    if len(gidx) != len(y_true):
        raise ValueError(f"groups has {len(gidx)} entries, labels {len(y_true)}")
    n_groups = gidx.max() + 1
    k2 = n_classes * n_classes
    _check_range(y_true, y_pred, n_classes)
    cell = y_true * n_classes + y_pred
    per_group = np.bincount(gidx * k2 + cell, minlength=n_groups * k2).reshape(n_groups, k2)
    draws = _draws(n_groups, n_boot, seed)
    times = np.zeros((n_boot, n_groups), dtype=np.int64)
    np.add.at(times, (np.repeat(np.arange(n_boot), n_groups), draws.ravel()), 1)
    cms = (times @ per_group).reshape(n_boot, n_classes, n_classes)
    samples = {name: [fn(cm) for cm in cms] for name, fn in metric_fns.items()}
    return _percentiles(samples, alpha)
