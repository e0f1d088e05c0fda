"""Side-by-side runs, block by block, as each arm's descriptor plans them (pipeline.report.arm.Plan).

The highlighted run of each block is the one with the best validation macro-F1
(val_macro_f1 in its metrics file), never the best on test.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

from pipeline import clinical
from pipeline.report.tables import ci_text, pct

DEFAULT_BOOT = 1000   # when eval.json records no resample count


def rare_classes(runs) -> list[str]:
    """Scored classes except the most frequent one (by test n of the first run)."""
    per_class = runs[0].metrics["per_class"]
    biggest = max(per_class, key=lambda c: per_class[c].get("n") or 0)
    return [c for c in per_class if c != biggest]


def chosen(runs) -> set[str]:
    """Names of the runs with the best val_macro_f1 within each choice group of their arm."""
    best: dict[tuple, object] = {}
    for r in runs:
        if deployed_copy(r):
            continue
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


def _points(v) -> str:
    return f"{100 * v:+.1f} points"


def paired_text(what: str, la: str, lb: str, d: dict, group: str) -> str:
    """Plain words for a paired difference {"a", "b", "diff", "ci"} of run a (label la) minus b."""
    if d["diff"] is None:
        return f"{what}: {la} {pct(d['a'])} vs {lb} {pct(d['b'])}; undefined for one of them, so no call."
    text = f"{what}: {la} {pct(d['a'])} vs {lb} {pct(d['b'])}, difference {la} − {lb} {_points(d['diff'])}"
    ci = d["ci"]
    if not ci:
        return text + " (no paired interval), so no call."
    text += f" (paired 95% CI {_points(ci['lo'])} to {_points(ci['hi'])}, same {group}s resampled for both)"
    if ci["lo"] > 0 or ci["hi"] < 0:
        return text + f": {la if d['diff'] > 0 else lb} is better."
    return text + ": the interval includes 0, so this test set cannot tell them apart."


def _same_test_set(ra, rb) -> bool:
    a, b = getattr(ra, "arrays", None), getattr(rb, "arrays", None)
    if a is None or b is None or "group" not in a or "group" not in b:
        return False
    return (a["probs"].shape == b["probs"].shape and np.array_equal(a["y_true"], b["y_true"])
            and np.array_equal(a["group"], b["group"]))


def paired(ra, rb, classes: list[str]) -> dict | None:
    """Paired bootstrap differences (a - b) of macro-F1, accuracy and each class's F1; None when the two
    runs were not scored on the same samples (then the unpaired intervals are all there is)."""
    if not _same_test_set(ra, rb):
        return None
    names = list(ra.classes)
    idx = [names.index(c) for c in ra.scored]
    fns = {"macro_f1": lambda cm: clinical.macro_f1(cm, idx), "accuracy": clinical.accuracy,
           **{c: (lambda cm, k=names.index(c): clinical.class_f1(cm, k)) for c in classes}}
    knobs = ra.info.get("evaluate") or {}
    a = ra.arrays
    return clinical.paired_differences(a["y_true"], a["probs"].argmax(axis=1), rb.arrays["probs"].argmax(axis=1),
                                       a["group"], fns, int(knobs.get("bootstrap") or DEFAULT_BOOT),
                                       int(knobs.get("seed") or 0), a["probs"].shape[1])


def _f1(run, cls):
    return run.metrics["per_class"].get(cls, {}).get("f1"), run.class_ci(cls, "f1")


def deployed_copy(run) -> bool:
    """A deployed model scored as its own run (eval.json data.deployed_from names the run it packages): it would
    repeat that run's row in every block, so blocks leave it out (the index page and its own page show it)."""
    return bool((run.info.get("data") or {}).get("deployed_from"))


def blocks(arm, runs) -> list[dict]:
    """One table per block: {"title", "vary", "classes", "rows", "answers", "paired"}; `paired` holds the
    paired-bootstrap differences {"run_a", "run_b", "what", "value_a", "value_b", "diff", "ci"} (a - b) when both runs share a test set."""
    runs = [r for r in runs if not deployed_copy(r)]
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
                 "degenerate": clinical.degenerate(r.metrics),
                 "macro": (r.get("macro_f1"), (r.get("ci95") or {}).get("macro_f1")),
                 "accuracy": (r.get("accuracy"), (r.get("ci95") or {}).get("accuracy")),
                 "f1": {c: _f1(r, c) for c in shown}, "val": r.get("val_macro_f1"), "run": r} for r in members]
        by_label = {row["label"]: row for row in rows}
        todo = plan.pairs or list(combinations(sorted(by_label), 2))
        answers, table = [], []
        for la, lb in todo:
            if la not in by_label or lb not in by_label:
                answers.append(f"No {la if la not in by_label else lb} run yet, so no {la} vs {lb} comparison.")
                continue
            ra, rb = by_label[la], by_label[lb]
            d = paired(ra["run"], rb["run"], shown if plan.focus == "rare" else [])
            if d is not None:
                group = ra["run"].arm.group
                table += [{"run_a": la, "run_b": lb, "what": k, "value_a": v["a"], "value_b": v["b"], "diff": v["diff"],
                           "ci": v["ci"]} for k, v in d.items()]
                answers.append(paired_text("Macro-F1", la, lb, d["macro_f1"], group))
                answers += ([paired_text(f"{c} F1", la, lb, d[c], group) for c in shown] if plan.focus == "rare"
                            else [paired_text("Accuracy", la, lb, d["accuracy"], group)])
                continue
            answers.append(contrast("Macro-F1", (la, *ra["macro"]), (lb, *rb["macro"])))
            if plan.focus == "rare":
                answers += [contrast(f"{c} F1", (la, *ra["f1"][c]), (lb, *rb["f1"][c])) for c in shown]
            else:
                answers.append(contrast("Accuracy", (la, *ra["accuracy"]), (lb, *rb["accuracy"])))
        out.append({"title": " · ".join(str(k) for k in key) + plan.suffix, "vary": plan.vary, "classes": shown,
                    "rows": rows, "answers": answers, "paired": table})
    return out
