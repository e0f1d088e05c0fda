"""Stage goal_ecg: issue 10's goal table for the deployed ECG model, from files only (no training, no predicting).

Reads what earlier stages wrote and writes metrics/analysis/goal_ecg.json:

* goal: the deployed model's DS2 macro-F1 (N, S, V, F), S/V/F F1 (each with its record-bootstrap CI) and ECE after
  temperature scaling, against goal_ecg.targets, the published inter-patient figures (goal_ecg.literature) and
  the frozen reference (the model packaged before issue 10, goal_ecg.reference).
* what_changed: the deployed model against the reference, metric by metric: both values with their CIs and
  whether the CIs separate (do not overlap). Unpaired: the reference's predictions are not kept.
* calibration: ECE before / after on DS2, whether scaling made it worse, and on DS1 the nested (fold-ensemble)
  out-of-fold predictions under the single-model temperature and under their own.
* seeds: each seed's DS1 out-of-fold and DS2 macro-F1 and class F1, and their spread.
* experiments: every DS1 out-of-fold figure on record: the train_ecg runs now, the runs of the reference commit,
  the search variants (goal_ecg.search files), the extra seeds and the nested fold ensemble. Chosen on DS1 only.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.io import read_json, write_json
from pipeline.params import ParamsError, load_section

CLASSES = ("S", "V", "F")


@dataclass(frozen=True)
class Targets:
    """DS2 figures to reach: F1 at least (macro_f1, S, V, F), ECE after temperature scaling at most; null = none."""
    macro_f1: float | None = None
    S: float | None = None
    V: float | None = None
    F: float | None = None
    ece_after: float | None = None


@dataclass(frozen=True)
class Published:
    """One published inter-patient result (F1 on DS2; null = not reported)."""
    source: str
    macro_f1: float | None = None
    S: float | None = None
    V: float | None = None
    F: float | None = None


@dataclass(frozen=True)
class GoalParams:
    targets: Targets = field(default_factory=Targets)
    literature: tuple[Published, ...] = ()
    reference: str = "benchmarks/results/ecg_ds2_reference.json"
    search: tuple[str, ...] = ()                      # benchmark result files with DS1 out-of-fold variants


def load_params(path) -> GoalParams:
    return load_section("goal_ecg", GoalParams, path)


def valued(value, ci=None) -> dict:
    return {"value": value, "ci95": ci} if ci else {"value": value}


def separate(a: dict | None, b: dict | None) -> bool | None:
    """Whether two 95% intervals {lo, hi} do not overlap (None when one is missing)."""
    if not a or not b:
        return None
    return bool(a["lo"] > b["hi"] or b["lo"] > a["hi"])


def _f3(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _value(v):
    return v["value"] if isinstance(v, dict) else v


def _interval(v):
    return v.get("ci95") if isinstance(v, dict) else None


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _ci(ci) -> str:
    return f" [{ci['lo']:.3f}, {ci['hi']:.3f}]" if ci else ""


def metric_rows(metrics: dict, class_ci: dict) -> dict:
    """{name: (value, ci)} of the goal's metrics from a metrics file and its class CIs."""
    rows = {"macro_f1": (metrics["macro_f1"], (metrics.get("ci95") or {}).get("macro_f1"))}
    for c in CLASSES:
        rows[c] = ((metrics["per_class"].get(c) or {}).get("f1"), (class_ci.get(c) or {}).get("f1"))
    return rows


def build(cfg: GoalParams, root: Path) -> dict:
    deployed = read_json(root / "metrics/ecg/deployed.json")
    info = read_json(root / "artifacts/ecg/deployed/eval.json")
    seeds = read_json(root / "metrics/ecg/seeds.json")
    replicate = read_json(root / "artifacts/ecg_replicate/replicate.json")
    ref = read_json(root / cfg.reference)
    run = info["data"]["deployed_from"]
    now = metric_rows(deployed, info["class_ci95"])
    before = metric_rows(ref["metrics"], ref["class_ci95"])
    words = {"macro_f1": "macro-F1 (N, S, V, F)", "S": "S F1", "V": "V F1", "F": "F1 of F", "ece_after": "ECE after TS"}
    lit = {row.source: asdict(row) for row in cfg.literature}
    targets = asdict(cfg.targets)

    goal, readings, changed = {}, {}, {}
    for key, (value, ci) in now.items():
        target = targets.get(key)
        goal[words[key]] = {"goal": target, "deployed": valued(value, ci),
                            "met": None if target is None or value is None else bool(value >= target),
                            "met_by_ci": None if target is None or not ci else bool(ci["lo"] >= target),
                            "reference": valued(*before[key]),
                            **{f"lit: {src}": row.get(key) for src, row in lit.items() if row.get(key) is not None}}
        changed[words[key]] = {"before": valued(*before[key]), "after": valued(value, ci),
                               "difference": None if value is None or before[key][0] is None else value - before[key][0],
                               "cis_separate": separate(ci, before[key][1])}
    ece_after, ece_before = deployed["ece"]["after"], deployed["ece"]["before"]
    target = targets["ece_after"]
    goal[words["ece_after"]] = {"goal_at_most": target, "deployed": ece_after,   # no interval for ECE
                                "met": None if target is None else bool(ece_after <= target),
                                "reference": ref["metrics"]["ece"]["after"]}
    changed[words["ece_after"]] = {"before": ref["metrics"]["ece"]["after"], "after": ece_after,
                                   "difference": ece_after - ref["metrics"]["ece"]["after"], "cis_separate": None}

    met = [k for k, v in goal.items() if v["met"]]
    missed = [k for k, v in goal.items() if v["met"] is False]
    readings["goal"] = (f"Deployed model ({run}, fold ensemble): goal {'met' if not missed else 'not met'} on DS2. "
                        + ", ".join(f"{k} {_f3(_value(goal[k]['deployed']))}{_ci(_interval(goal[k]['deployed']))} "
                                    f"(goal {_f3(goal[k].get('goal', goal[k].get('goal_at_most')))})" for k in goal)
                        + (f". Met: {', '.join(met)}." if met else ". None met.")
                        + (f" Missed: {', '.join(missed)}." if missed else ""))
    for key, row in changed.items():
        b, a = row["before"], row["after"]
        sep = row["cis_separate"]
        call = ("no interval for ECE, so no call" if sep is None else
                "the 95% CIs do not overlap" if sep else "the 95% CIs overlap: DS2 cannot tell the two apart")
        readings[f"changed {key}"] = (f"{key}: before issue 10 {_f3(_value(b))}{_ci(_interval(b))}, now "
                                      f"{_f3(_value(a))}{_ci(_interval(a))} ({'+' if (row['difference'] or 0) >= 0 else ''}"
                                      f"{_f3(row['difference'])}); {call}.")

    nested = replicate["nested"]["calibration"]
    used = info["data"].get("temperature_calibration") or {}
    calibration = {
        "DS2, deployed (fold ensemble)": {"ece_before": ece_before, "ece_after": ece_after,
                                          "temperature": deployed["temperature"],
                                          "worse_after_scaling": bool(ece_after > ece_before)},
        "DS1 out-of-fold, seed ensembles of fold models (the temperature's data)": {
            "ece_before": used.get("ece_before"), "ece_after": used.get("ece_after"),
            "temperature": deployed["temperature"], "fitted": used.get("fitted"), "kept": used.get("kept")},
        "DS1 out-of-fold, single fold models": {
            "ece_before": replicate["nested"]["single_model_calibration"]["ece_raw"],
            "temperature": replicate["nested"]["single_model_calibration"]["temperature"]},
        "DS1 nested, fold ensembles on half of DS1 (diagnostic, not used)": {
            "ece_before": nested["ece_raw"], "ece_after": nested["ece_nested_temperature"],
            "temperature": nested["nested_temperature"],
            "ece_under_single_model_temperature": nested["ece_single_model_temperature"]},
        "DS2, reference (before issue 10)": {"ece_before": ref["metrics"]["ece"]["before"],
                                             "ece_after": ref["metrics"]["ece"]["after"],
                                             "temperature": ref["metrics"]["temperature"]}}
    readings["calibration"] = (
        f"Temperature {deployed['temperature']:.3f}, fitted on DS1 out-of-fold predictions of seed ensembles of fold "
        f"models (kept only if it lowers their ECE: {_pct(used.get('ece_before'))} -> {_pct(used.get('ece_after'))} "
        f"there): DS2 ECE {_pct(ece_before)} -> {_pct(ece_after)}"
        f"{' (worse after scaling)' if ece_after > ece_before else ''}. The single fold models' own out-of-fold "
        f"temperature is {replicate['nested']['single_model_calibration']['temperature']:.3f}.")

    ds1, ds2 = seeds["ds1_out_of_fold"], seeds["ds2"]
    per_seed = {}
    for s in sorted(ds2["per_seed"], key=int):
        one, two = ds1["per_seed"].get(s, {}), ds2["per_seed"][s]
        per_seed[f"seed {s}"] = {"ds1_macro_f1": one.get("macro_f1"), "ds2_macro_f1": two["macro_f1"],
                                 **{f"ds1_{c}_f1": (one.get("f1") or {}).get(c) for c in CLASSES},
                                 **{f"ds2_{c}_f1": two["f1"].get(c) for c in CLASSES}}
    spread = {"DS1 out-of-fold macro-F1": ds1["spread"]["macro_f1"], "DS2 macro-F1": ds2["spread"]["macro_f1"],
              **{f"DS2 {c} F1": ds2["spread"][f"{c}_f1"] for c in CLASSES}}
    s1, s2 = ds1["spread"]["macro_f1"], ds2["spread"]["macro_f1"]
    readings["seeds"] = (f"{s2['n']} seeds of the chosen configuration: DS1 out-of-fold macro-F1 mean {s1['mean']:.3f} "
                         f"(sd {_f3(s1.get('sd'))}, {s1['min']:.3f}-{s1['max']:.3f}); DS2 macro-F1 mean {s2['mean']:.3f} "
                         f"(sd {_f3(s2.get('sd'))}, {s2['min']:.3f}-{s2['max']:.3f}), beside the deployed seed's "
                         f"record-bootstrap CI{_ci(now['macro_f1'][1])}.")

    experiments = experiment_table(cfg, root, ref, replicate, run)
    runs = {k: v for k, v in experiments.items() if "chosen" in v}   # the train_ecg runs the package is chosen from
    best = max(runs, key=lambda k: runs[k]["ds1_macro_f1"], default=None)
    readings["experiments"] = (f"{len(experiments)} DS1 out-of-fold figures on record. The package is chosen among "
                               f"the {len(runs)} train_ecg runs on DS1 alone: {best} "
                               f"({_f3(runs[best]['ds1_macro_f1']) if best else 'n/a'}).")
    return {"setting": {"run": run, "chosen_on": "DS1 out-of-fold macro-F1 (train_ecg)",
                        "temperature_on": "DS1 out-of-fold predictions of seed ensembles of fold models",
                        "ds2_records": info["n_groups"], "ds2_beats": info["n_test"],
                        "bootstrap": (info.get("evaluate") or {}).get("bootstrap")},
            "goal": goal, "what_changed": changed, "calibration": calibration, "seeds": per_seed,
            "seed_spread": spread, "experiments": experiments, "readings": readings,
            "method": {"goal": "Targets and the literature rows are issue 10's (params goal_ecg); a target is met when "
                               "the DS2 point estimate reaches it, 'met by CI' when the CI's lower bound does.",
                       "what_changed": "Reference: benchmarks/results/ecg_ds2_reference.json, the model packaged at "
                                       "commit 7ae5b9b, frozen. CIs separate when the two 95% record-bootstrap "
                                       "intervals do not overlap (an unpaired, conservative call).",
                       "experiments": "DS1 out-of-fold macro-F1 only (DS2 never chooses). 'comparable' rows use "
                                      "the stage's own training loop with early stopping on the held-out fold; the "
                                      "search rows use fixed epochs and one seed on another machine."}}


def experiment_table(cfg: GoalParams, root: Path, ref: dict, replicate: dict, run: str) -> dict:
    classes = list(read_json(root / "data/ecg/meta.json")["classes"])
    rows = {}
    for name, r in sorted((ref.get("ds1_out_of_fold") or {}).get("runs", {}).items()):
        rows[f"{name} @ {ref['commit']} (before issue 10)"] = {
            "ds1_macro_f1": r["val_macro_f1"], **{f"{c}_f1": (r.get("f1") or {}).get(c) for c in CLASSES},
            "epochs": "12, patience 3, every beat", "comparable": True}
    for path in sorted((root / "artifacts/ecg").glob("*/train.json")):
        t = read_json(path)
        cfgd = t.get("config") or {}
        sampling = (cfgd.get("sampling") or {}).get("keep")
        fit = cfgd.get("fit") or {}
        rows[f"{path.parent.name} (now)"] = {
            "ds1_macro_f1": t["val_macro_f1"], **oof_f1(path.parent / "oof.npz", classes),
            "epochs": f"{fit.get('epochs')}, patience {fit.get('patience')}, "
                      + ("every beat" if sampling is None else f"{sampling:.0%} of N per epoch"),
            "comparable": True, "chosen": path.parent.name == run}
    for seed, s in replicate["seeds"].items():
        if f"{run} (now)" in rows and s.get("source"):
            continue   # the run itself
        rows[f"{run} seed {seed}"] = {"ds1_macro_f1": s["macro_f1"], **{f"{c}_f1": s["f1"].get(c) for c in CLASSES},
                                      "comparable": True}
    n = replicate["nested"]
    rows[f"{run} nested fold ensembles"] = {"ds1_macro_f1": n["macro_f1"], **{f"{c}_f1": n["f1"].get(c) for c in CLASSES},
                                            "epochs": "as the run, on 2 of 4 folds per member", "comparable": False}
    for file in cfg.search:
        data = read_json(root / file)
        where = (data.get("machine") or {}).get("devices") or ["?"]
        for v in data.get("variants", []):
            if v.get("macro_f1") is None:
                continue
            rows[f"search: {v['variant']}"] = {"ds1_macro_f1": v["macro_f1"],
                                               **{f"{c}_f1": v.get(f"f1_{c}") for c in CLASSES},
                                               "epochs": f"{v.get('epochs')} fixed, seed {v.get('seed')}",
                                               "what": v.get("description"), "machine": ", ".join(where),
                                               "comparable": False}
    return rows


def oof_f1(path: Path, classes: list) -> dict:
    """S, V and F F1 of a run's pooled out-of-fold predictions (oof.npz)."""
    import numpy as np

    from pipeline.evaluation import class_metrics, confusion
    with np.load(path) as z:
        cm = confusion(z["y"], z["probs"].argmax(axis=1), z["probs"].shape[1])
    return {f"{c}_f1": class_metrics(cm, classes.index(c))["f1"] for c in CLASSES if c in classes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", default="metrics/analysis/goal_ecg.json")
    args = ap.parse_args(argv)
    try:
        cfg = load_params(args.params)
        record = build(cfg, Path("."))
    except (ParamsError, FileNotFoundError, KeyError) as exc:
        print(f"ecg.goal: error: {exc}", file=sys.stderr)
        return 2
    write_json(args.metrics, record)
    for text in record["readings"].values():
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
