"""Side-by-side runs, block by block, as each arm's descriptor plans them (pipeline.report.arm.Plan).

The highlighted run of each block is the one with the best validation macro-F1
(val_macro_f1 in its metrics file), never the best on test.
"""
from __future__ import annotations

from itertools import combinations

from pipeline.report.tables import ci_text, pct


def rare_classes(runs) -> list[str]:
    """Scored classes except the most frequent one (by test n of the first run)."""
    per_class = runs[0].metrics["per_class"]
    biggest = max(per_class, key=lambda c: per_class[c].get("n") or 0)
    return [c for c in per_class if c != biggest]


def chosen(runs) -> set[str]:
    """Names of the runs with the best val_macro_f1 within each choice group of their arm."""
    best: dict[tuple, object] = {}
    for r in runs:
        v = r.get("val_macro_f1")
        key = tuple(r.get(k) for k in r.arm.choice)
        if v is not None and (key not in best or v > best[key].get("val_macro_f1")):
            best[key] = r
    return {r.name for r in best.values()}


def contrast(what: str, a: tuple, b: tuple) -> str:
    """Plain-words comparison of (label, value, ci) a and b; ci is {lo, hi} or None."""
    (la, va, ca), (lb, vb, cb) = a, b
    if va is None or vb is None:
        return f"{what}: {la} {pct(va)} vs {lb} {pct(vb)}; undefined for one of them, so no call."
    text = f"{what}: {la} {pct(va)} ({ci_text(ca) or 'no CI'}) vs {lb} {pct(vb)} ({ci_text(cb) or 'no CI'})"
    if not ca or not cb:
        return text + "; an interval is missing, so no call."
    if ca["lo"] > cb["hi"] or cb["lo"] > ca["hi"]:
        return text + f"; the 95% intervals do not overlap: {la if va > vb else lb} is better."
    return text + "; the 95% intervals overlap, so this test set cannot tell them apart."


def _f1(run, cls):
    return run.metrics["per_class"].get(cls, {}).get("f1"), run.class_ci(cls, "f1")


def blocks(arm, runs) -> list[dict]:
    """One table per block: {"title", "vary", "classes", "rows", "answers"}."""
    if not runs:
        return []
    picked = chosen(runs)
    return [b for plan in arm.plans for b in _plan_blocks(plan, runs, picked)]


def _plan_blocks(plan, runs, picked) -> list[dict]:
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault(tuple(r.get(k) for k in plan.fixed), []).append(r)
    out = []
    for key, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        shown = rare_classes(members) if plan.focus == "rare" else members[0].scored
        rows = [{"name": r.name, "label": r.get(plan.vary), "chosen": r.name in picked,
                 "macro": (r.get("macro_f1"), (r.get("ci95") or {}).get("macro_f1")),
                 "accuracy": (r.get("accuracy"), (r.get("ci95") or {}).get("accuracy")),
                 "f1": {c: _f1(r, c) for c in shown}, "val": r.get("val_macro_f1")} for r in members]
        by_label = {row["label"]: row for row in rows}
        todo = plan.pairs or list(combinations(sorted(by_label), 2))
        answers = []
        for la, lb in todo:
            if la not in by_label or lb not in by_label:
                answers.append(f"No {la if la not in by_label else lb} run yet, so no {la} vs {lb} comparison.")
                continue
            ra, rb = by_label[la], by_label[lb]
            answers.append(contrast("Macro-F1", (la, *ra["macro"]), (lb, *rb["macro"])))
            if plan.focus == "rare":
                answers += [contrast(f"{c} F1", (la, *ra["f1"][c]), (lb, *rb["f1"][c])) for c in shown]
            else:
                answers.append(contrast("Accuracy", (la, *ra["accuracy"]), (lb, *rb["accuracy"])))
        out.append({"title": " · ".join(str(k) for k in key) + plan.suffix, "vary": plan.vary, "classes": shown,
                    "rows": rows, "answers": answers})
    return out
