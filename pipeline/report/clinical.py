"""Clinically framed parts of a run page: AUC and operating points of two-class tasks, ordinal
agreement of graded tasks, a warning when the class of interest is often missed, degenerate models.

Numbers come from the metrics file (evaluate wrote them); the ROC curve is drawn from eval.npz.
"""
from __future__ import annotations

import numpy as np

from pipeline import clinical

LOW_SE = 0.80   # below this sensitivity for the class of interest, the page opens with a red warning
POINTS = {"in_use": "The model's own call (the most probable class; threshold 50%)",
          "se95_val": "Threshold giving 95% sensitivity on the validation data, read on test"}
ORDINAL = {"kappa_quadratic": ("Quadratic-weighted kappa", "agreement with the true grade beyond chance; "
                               "a call two grades off counts four times as much as one grade off (100% = perfect)"),
           "within_one": ("Within one grade", "share of calls at most one grade away from the true grade")}


def _ci(run, key):
    return (run.metrics.get("ci95") or {}).get(key)


def binary(run) -> dict | None:
    """{"positive", "auc", "points", "low_se"} of a two-class run whose evaluate named a class of interest."""
    positive = run.info.get("positive")
    if positive is None or "operating_points" not in run.metrics:
        return None
    points = [{"key": k, "label": POINTS.get(k, k), **v} for k, v in run.metrics["operating_points"].items()]
    row = run.metrics["per_class"].get(positive) or {}
    se = row.get("se")
    low = None
    if se is not None and se < LOW_SE:
        n = row.get("n")
        missed = round((1 - se) * n) if n else None
        low = {"se": se, "n": n, "missed": missed}
    return {"positive": positive, "auc": {"value": run.metrics.get("auc"), "ci": _ci(run, "auc"), "reason": None
                                          if run.metrics.get("auc") is not None else "one class only in the test set",
                                          "ci_reason": None},
            "points": points, "low_se": low, "low_threshold": LOW_SE}


def ordinal(run) -> list[dict]:
    """Ordinal agreement rows of a graded task (empty otherwise)."""
    return [{"key": k, "label": label, "what": what,
             "cell": {"value": run.metrics[k], "ci": _ci(run, k), "ci_reason": None,
                      "reason": None if run.metrics[k] is not None else "undefined on this test set"}}
            for k, (label, what) in ORDINAL.items() if k in run.metrics]


def degenerate(run) -> list[str]:
    return clinical.degenerate(run.metrics)


def alarms(run) -> dict | None:
    """False calls per hour of test data: {"rows": [{"cls", "per_hour", "count"}], "hours", "method"}."""
    per_hour = run.metrics.get("alarms_per_hour")
    hours = run.info.get("hours")
    if not per_hour:
        return None
    return {"rows": [{"cls": c, "per_hour": v, "count": None if v is None or not hours else round(v * hours)}
                     for c, v in per_hour.items()],
            "hours": hours, "method": run.info.get("hours_method") or ""}


def group_table(run) -> list[dict]:
    """Per group (the arm's bootstrap group): samples, Se/+P of each scored class (None when undefined), and
    the arm's context for the group if it supplies one (run.data["group_context"][group])."""
    a = run.arrays
    if not run.arm.group_table or a is None or "group" not in a:
        return []
    y, pred, groups = a["y_true"], a["probs"].argmax(axis=1), a["group"]
    rows = []
    for g in np.unique(groups):
        m = groups == g
        cells = {}
        for c in run.scored:
            k = run.classes.index(c)
            t, p = y[m] == k, pred[m] == k
            cells[c] = {"n": int(t.sum()), "se": float((t & p).sum() / t.sum()) if t.any() else None,
                        "ppv": float((t & p).sum() / p.sum()) if p.any() else None}
        name = str(g.item() if hasattr(g, "item") else g)
        rows.append({"group": name, "n": int(m.sum()), "cells": cells,
                     "context": (run.data or {}).get("group_context", {}).get(name)})
    return rows
