"""Headline numbers of one run: per-class Se, +P, F1, Sp with 95% CIs, and failure modes.

Values come from the metrics file (the source of truth), intervals from eval.json (the same
bootstrap as the evaluate stage: nothing is recomputed here). null stays undefined and is shown
as n/a with the reason, never as 0.
"""
from __future__ import annotations

import numpy as np

from pipeline import evaluation as ev

COLUMNS = (("se", "Sensitivity (Se)"), ("ppv", "Positive predictivity (+P)"),
           ("f1", "F1"), ("spec", "Specificity (Sp)"))
UNDEFINED = {
    "se": "no true {c} {u} is in the test set, so sensitivity is undefined",
    "ppv": "no {u} was predicted as {c}, so +P is undefined",
    "f1": "{c} is absent from both the test labels and the predictions, so F1 is undefined",
    "spec": "every test {u} is {c}, so specificity is undefined",
}


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def ci_text(ci) -> str:
    return "" if not ci else f"{100 * ci['lo']:.1f}–{100 * ci['hi']:.1f}%"


def confusion(run) -> np.ndarray | None:
    if run.arrays is None:
        return None
    probs = run.arrays["probs"]
    return ev.confusion(run.arrays["y_true"], probs.argmax(axis=1), probs.shape[1])


def cell(run, cls: str, key: str) -> dict:
    """{"value", "ci", "reason", "ci_reason"} of one metric of one class."""
    row = run.metrics["per_class"][cls]
    value, reason = row.get(key), None
    if key not in row:
        reason = f"not in {run.metrics_path.name}"
    elif value is None:
        reason = UNDEFINED[key].format(c=cls, u=run.arm.unit)
    ci = run.class_ci(cls, key)
    ci_reason = None
    if not ci and value is not None:
        ci_reason = ("no interval in eval.json" if not run.info.get("class_ci95")
                     else "undefined in every bootstrap resample")
    return {"value": value, "ci": ci, "reason": reason, "ci_reason": ci_reason}


def headline(run) -> list[dict]:
    """One row per scored class: {"cls", "n", "cells": {metric: cell}}."""
    return [{"cls": c, "n": run.metrics["per_class"][c].get("n"),
             "cells": {key: cell(run, c, key) for key, _ in COLUMNS}} for c in run.scored]


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
            found.append((2.0, f"No {u} was predicted as {c}: all {n:,} test {u}s of class {c} were missed."))
            continue
        off = cm[k].copy()
        off[k] = 0
        j = int(off.argmax())
        if off[j]:
            rate = off[j] / n
            found.append((rate, f"{u.capitalize()}s of class {c} are most often called {names[j]} "
                                f"({pct(rate)} of them: {int(off[j]):,} of {n:,})."))
    fp = cm.sum(axis=0) - np.diag(cm)
    if fp.sum():
        j = int(fp.argmax())
        found.append((-1.0, f"Most false alarms are calls of {names[j]}: {int(fp[j]):,} {u}s of other "
                            f"classes were labelled {names[j]} ({pct(fp[j] / fp.sum())} of all errors)."))
    return [text for _, text in sorted(found, key=lambda t: -t[0])]
