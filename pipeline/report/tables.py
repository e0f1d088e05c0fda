"""Headline numbers of one run: per-class Se, +P, F1, Sp with 95% CIs, and failure modes.

Values come from the metrics file (the source of truth); a key it lacks (vision files have
no specificity) is computed from the eval.npz confusion matrix. null stays undefined and is
shown as n/a with the reason, never as 0. CIs: group bootstrap over eval.npz `group`
(class_cis, stored on run.cis by the stage).
"""
from __future__ import annotations

import numpy as np

from pipeline import evaluation as ev

COLUMNS = (("se", "Sensitivity (Se)"), ("ppv", "Positive predictivity (+P)"),
           ("f1", "F1"), ("spec", "Specificity (Sp)"))
ALIASES = {"se": ("se", "recall", "sensitivity"), "ppv": ("ppv", "precision"),
           "f1": ("f1",), "spec": ("spec", "specificity")}
UNDEFINED = {
    "se": "no true {c} {u} is in the test set, so sensitivity is undefined",
    "ppv": "no {u} was predicted as {c}, so +P is undefined",
    "f1": "{c} is absent from both the test labels and the predictions, so F1 is undefined",
    "spec": "every test {u} is {c}, so specificity is undefined",
}


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def ci_text(ci) -> str:
    return "" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%"


def confusion(run) -> np.ndarray | None:
    if run.arrays is None:
        return None
    probs = run.arrays["probs"]
    return ev.confusion(run.arrays["y_true"], probs.argmax(axis=1), probs.shape[1])


def class_cis(run, n_boot: int, seed: int) -> dict:
    """"<class>.<metric>" -> [lo, hi] | None; {} without eval.npz or group ids."""
    a = run.arrays
    if a is None or "group" not in a:
        return {}
    fns = {f"{c}.{key}": (lambda cm, k=run.classes.index(c), key=key: ev.class_metrics(cm, k)[key])
           for c in run.scored for key, _ in COLUMNS}
    return ev.bootstrap_confusion_ci(a["y_true"], a["probs"].argmax(axis=1), a["group"],
                                     a["probs"].shape[1], fns, n_boot=n_boot, seed=seed)


def _value(row: dict, key: str, computed: dict | None):
    for alias in ALIASES[key]:
        if alias in row:
            return True, row[alias]
    if computed is not None:
        return True, computed[key]
    return False, None


def _ci_reason(run):
    if run.arrays is None:
        return "no eval.npz, so no interval"
    if not run.cis:
        return "eval.npz has no group ids, so no interval"
    return "undefined in every bootstrap resample"


def cell(run, cls: str, key: str, cm) -> dict:
    """{"value", "ci", "reason", "ci_reason"} of one metric of one class."""
    computed = ev.class_metrics(cm, run.classes.index(cls)) if cm is not None else None
    found, value = _value(run.metrics["per_class"][cls], key, computed)
    reason = None
    if not found:
        reason = f"not in {run.metrics_path.name} and no eval.npz to compute it from"
    elif value is None:
        reason = UNDEFINED[key].format(c=cls, u=run.arm.unit)
    ci95 = run.metrics.get("ci95") or {}
    ci = ci95[f"{cls}_f1"] if key == "f1" and f"{cls}_f1" in ci95 else run.cis.get(f"{cls}.{key}")
    return {"value": value, "ci": ci, "reason": reason,
            "ci_reason": None if ci or value is None else _ci_reason(run)}


def headline(run, cm) -> list[dict]:
    """One row per scored class: {"cls", "n", "cells": {metric: cell}}."""
    return [{"cls": c, "n": run.metrics["per_class"][c].get("n"),
             "cells": {key: cell(run, c, key, cm) for key, _ in COLUMNS}} for c in run.scored]


def overall(run, key: str) -> dict:
    """Run-level metric (macro_f1, accuracy) with its CI from the metrics file."""
    value = run.metrics.get(key)
    ci = (run.metrics.get("ci95") or {}).get(key)
    reason = None
    if value is None:
        reason = ("no scored class had a true or predicted sample" if key in run.metrics
                  else f"not in {run.metrics_path.name}")
    return {"value": value, "ci": ci, "reason": reason,
            "ci_reason": None if ci or value is None else f"no interval in {run.metrics_path.name}"}


def failure_modes(run, cm) -> list[str]:
    """Plain-words statements read from the confusion matrix, worst miss rate first."""
    if cm is None:
        return []
    u, names, found = run.arm.unit, run.classes, []
    for c in run.scored:
        k = names.index(c)
        n = int(cm[k].sum())
        if n == 0:
            continue
        if cm[:, k].sum() == 0:
            found.append((2.0, f"No {u} was predicted as {c}: all {n:,} {c} {u}s in the test set were missed."))
            continue
        off = cm[k].copy()
        off[k] = 0
        j = int(off.argmax())
        if off[j]:
            rate = off[j] / n
            found.append((rate, f"{c} {u}s are most often called {names[j]} "
                                f"({pct(rate)} of {c} {u}s: {int(off[j]):,} of {n:,})."))
    fp = cm.sum(axis=0) - np.diag(cm)
    if fp.sum():
        j = int(fp.argmax())
        found.append((-1.0, f"Most false alarms are calls of {names[j]}: {int(fp[j]):,} {u}s of other "
                            f"classes were labelled {names[j]} ({pct(fp[j] / fp.sum())} of all errors)."))
    return [text for _, text in sorted(found, key=lambda t: -t[0])]
