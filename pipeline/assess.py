"""Score a trained model's predictions the same way for both arms.

Temperature is fitted on validation predictions only, then applied to the test predictions;
CIs come from a bootstrap over groups (ECG records, image ids), never single samples.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline import calibration as cal
from pipeline import evaluation as ev
from pipeline import plots
from pipeline.io import atomic_path, ensure_dir, write_json


def score(y_true, probs, y_val, probs_val, groups, class_names, score_classes, *,
          n_boot: int = 1000, n_bins: int = 15, seed: int = 0) -> dict:
    """Metrics of test predictions; `score_classes` are the class indices in macro-F1."""
    y_true, probs = np.asarray(y_true, np.int64), np.asarray(probs, np.float64)
    n_classes = probs.shape[1]
    temperature = cal.fit_temperature(probs_val, np.asarray(y_val, np.int64))
    probs_t = cal.apply_temperature(probs, temperature)
    y_pred = probs.argmax(axis=1)  # temperature never changes the argmax
    cm = ev.confusion(y_true, y_pred, n_classes)
    per_class = {class_names[k]: ev.class_metrics(cm, k) for k in range(n_classes)}
    fns = {"macro_f1": lambda c: ev.macro_f1_from_confusion(c, score_classes),
           "accuracy": lambda c: float(np.trace(c) / c.sum()) if c.sum() else None}
    for k in score_classes:
        fns[f"{class_names[k]}_f1"] = lambda c, k=k: ev.class_metrics(c, k)["f1"]
    ci = ev.bootstrap_confusion_ci(y_true, y_pred, groups, n_classes, fns, n_boot=n_boot, seed=seed)
    return {
        "accuracy": ev.accuracy(y_true, y_pred),
        "macro_f1": ev.macro_f1_from_confusion(cm, score_classes),
        "per_class": per_class,
        "ece": {"before": cal.ece(probs, y_true, n_bins), "after": cal.ece(probs_t, y_true, n_bins)},
        "brier": {"before": cal.brier(probs, y_true), "after": cal.brier(probs_t, y_true)},
        "nll": {"before": cal.nll(probs, y_true), "after": cal.nll(probs_t, y_true)},
        "temperature": float(temperature),
        "ci95": ci,
        "n_groups": int(len(np.unique(groups))),
        "confusion": cm.tolist(),
        "reliability": {"before": cal.reliability_bins(probs, y_true, n_bins),
                        "after": cal.reliability_bins(probs_t, y_true, n_bins)},
        "_probs_after": probs_t,
    }


def write_plots(result: dict, y_true, class_names, plots_dir: Path, figures_dir: Path, title: str) -> dict:
    """DVC plot data (confusion CSV, reliability JSON) and PNG figures; returns the figure paths."""
    ensure_dir(plots_dir)
    y_true = np.asarray(y_true)
    y_pred = np.asarray(result["_probs_after"]).argmax(axis=1)
    with atomic_path(plots_dir / "confusion.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        names = np.asarray(class_names, dtype=object)
        writer.writerows(zip(names[y_true], names[y_pred]))
    rows = [dict(r, calibration=stage) for stage in ("before", "after")
            for r in plots.dvc_reliability_rows(result["reliability"][stage])]
    write_json(plots_dir / "reliability.json", rows)
    figs = {
        "confusion": plots.plot_confusion(np.array(result["confusion"]), class_names,
                                          figures_dir / "confusion.png", title),
        "reliability": plots.plot_reliability(result["reliability"]["before"], result["reliability"]["after"],
                                              result["ece"]["before"], result["ece"]["after"],
                                              figures_dir / "reliability.png"),
    }
    return figs


def top_errors(y_true, probs, k: int = 12) -> np.ndarray:
    """Indices of the k misclassified samples with the highest predicted-class probability."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    wrong = np.flatnonzero(probs.argmax(axis=1) != y_true)
    conf = probs[wrong].max(axis=1)
    return wrong[np.argsort(-conf, kind="stable")[:k]]


def public(result: dict) -> dict:
    """The result without the bulky or private parts (those go to plots and arrays)."""
    return {k: v for k, v in result.items() if k not in ("confusion", "reliability") and not k.startswith("_")}
