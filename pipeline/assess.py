"""Score a trained model's predictions the same way for both arms.

Temperature is fitted on validation predictions only, then applied to the test predictions;
CIs come from a bootstrap over groups (the arm says what a group is), never single samples.

Vocabulary (both arms): per class `se, ppv, f1, spec, n`; top level `accuracy, macro_f1, auc,
ece/brier/nll {before, after}, temperature`; intervals `{lo, hi}` (null when undefined in
every resample).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import calibration as cal
from pipeline import evaluation as ev
from pipeline import plots
from pipeline.io import atomic_path, ensure_dir, write_json

CLASS_METRICS = ("se", "ppv", "f1", "spec")


@dataclass(frozen=True)
class Scores:
    metrics: dict            # numbers only: the DVC metrics file (before val_macro_f1 is added)
    class_ci95: dict         # class -> metric -> {lo, hi} | None, for every scored class
    confusion: np.ndarray    # rows true, columns predicted (all classes)
    reliability: dict        # {"before": bins, "after": bins}
    probs: np.ndarray        # test probabilities after temperature scaling


def interval(ci) -> dict | None:
    """[lo, hi] -> {"lo", "hi"} (None stays None)."""
    return None if ci is None else {"lo": float(ci[0]), "hi": float(ci[1])}


def class_indices(class_names, scored) -> list[int]:
    unknown = [c for c in scored if c not in class_names]
    if unknown or not scored:
        raise ValueError(f"scored classes {list(scored)}: unknown {unknown}; classes are {list(class_names)}")
    return [list(class_names).index(c) for c in scored]


def score(y_true, probs, y_val, probs_val, groups, class_names, scored, *, n_boot: int = 1000,
          n_bins: int = 15, seed: int = 0, auc: bool = False, temperature: float | None = None) -> Scores:
    """Metrics of test predictions; `scored` names the classes in macro-F1 and the per-class table.

    The temperature is fitted on (y_val, probs_val) unless `temperature` gives it (a deployed model's own)."""
    y_true, probs = np.asarray(y_true, np.int64), np.asarray(probs, np.float64)
    n_classes = probs.shape[1]
    idx = class_indices(class_names, scored)
    if temperature is None:
        temperature = cal.fit_temperature(probs_val, np.asarray(y_val, np.int64))
    probs_t = cal.apply_temperature(probs, temperature)
    y_pred = probs.argmax(axis=1)  # temperature never changes the argmax
    cm = ev.confusion(y_true, y_pred, n_classes)
    fns = {"macro_f1": lambda c: ev.macro_f1_from_confusion(c, idx),
           "accuracy": lambda c: float(np.trace(c) / c.sum()) if c.sum() else None}
    for name, k in zip(scored, idx):
        for key in CLASS_METRICS:
            fns[f"{name}\0{key}"] = lambda c, k=k, key=key: ev.class_metrics(c, k)[key]
    ci = ev.bootstrap_confusion_ci(y_true, y_pred, groups, n_classes, fns, n_boot=n_boot, seed=seed)
    metrics = {"accuracy": ev.accuracy(y_true, y_pred), "macro_f1": ev.macro_f1_from_confusion(cm, idx)}
    if auc:
        metrics["auc"] = ev.roc_auc(y_true, probs_t)
    metrics.update({
        "per_class": {name: ev.class_metrics(cm, k) for name, k in zip(scored, idx)},
        "ece": {"before": cal.ece(probs, y_true, n_bins), "after": cal.ece(probs_t, y_true, n_bins)},
        "brier": {"before": cal.brier(probs, y_true), "after": cal.brier(probs_t, y_true)},
        "nll": {"before": cal.nll(probs, y_true), "after": cal.nll(probs_t, y_true)},
        "temperature": float(temperature),
        "ci95": {"macro_f1": interval(ci["macro_f1"]), "accuracy": interval(ci["accuracy"])},
    })
    class_ci = {name: {key: interval(ci[f"{name}\0{key}"]) for key in CLASS_METRICS} for name in scored}
    reliability = {"before": cal.reliability_bins(probs, y_true, n_bins),
                   "after": cal.reliability_bins(probs_t, y_true, n_bins)}
    return Scores(metrics, class_ci, cm, reliability, probs_t)


def write_plots(scores: Scores, class_names, plots_dir: Path, figures_dir: Path, title: str) -> dict:
    """DVC plot data (confusion counts CSV, reliability JSON) and PNG figures; returns the figure paths."""
    ensure_dir(plots_dir)
    rows = plots.dvc_confusion_counts(scores.confusion, class_names)
    with atomic_path(plots_dir / "confusion.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["actual", "predicted", "count"])
        writer.writeheader()
        writer.writerows(rows)
    write_json(plots_dir / "reliability.json",
               [r for stage in ("before", "after") for r in plots.dvc_reliability_rows(scores.reliability[stage], stage)])
    ece = scores.metrics["ece"]
    return {
        "confusion": plots.plot_confusion(scores.confusion, class_names, figures_dir / "confusion.png", title),
        "reliability": plots.plot_reliability(scores.reliability["before"], scores.reliability["after"],
                                              ece["before"], ece["after"], figures_dir / "reliability.png"),
    }


def top_errors(y_true, probs, k: int = 12, groups=None, per_group: int | None = None) -> np.ndarray:
    """Indices of the k misclassified samples with the highest predicted-class probability; with
    `per_group`, at most that many from one group (so the examples spread over records)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    wrong = np.flatnonzero(probs.argmax(axis=1) != y_true)
    order = wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")]
    if groups is None or per_group is None:
        return order[:k]
    groups, taken, out = np.asarray(groups), {}, []
    for i in order:
        g = groups[i].item()
        if taken.get(g, 0) < per_group:
            taken[g] = taken.get(g, 0) + 1
            out.append(i)
            if len(out) == k:
                break
    return np.asarray(out, dtype=np.int64)
