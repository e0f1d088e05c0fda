"""The evaluate stage of every arm: score, plots, errors, save, log, write.

An arm supplies an `Adapter` (in <arm>/evaluate.py): the keys naming a run, where its
data lives, and `load(data_dir, art_dir, trained) -> Inputs` (test split, validation predictions for
the temperature, group ids for the bootstrap). Everything else is here and knows no domain.

Knobs come from the params section `evaluate` (bootstrap, ece_bins, seed); model and data facts
come from what the train stage wrote (train.json) and the arm's prepared data, never from training
params. Outputs of run <name> of arm <arm>:
    metrics/<arm>/<name>.json              DVC metrics: numbers only (see pipeline.assess)
    artifacts/<arm>/<name>/eval.json       everything else the report needs (names, ids, notes, CIs)
    artifacts/<arm>/<name>/eval.npz        labels, probabilities, groups, most confident errors
    artifacts/<arm>/<name>/figures/        PNG figures (also logged to MLflow)
    reports/plots/<arm>/<name>/            DVC plot data (confusion counts, reliability)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline import assess, clinical, plots, tracking
from pipeline.io import read_json, save_npz, sha256_file, write_json
from pipeline.params import PARAMS_FILE, ParamsError, load_section
from pipeline.stage import run_args

MAX_ERRORS = 12  # error examples kept in eval.npz (the report shows report.max_errors of them)


@dataclass(frozen=True)
class EvaluateParams:
    bootstrap: int = 1000   # group-bootstrap resamples for the 95% CIs
    ece_bins: int = 15      # equal-width confidence bins (ECE, reliability)
    seed: int = 42          # bootstrap draws (the same draws for every run)

    def validate(self) -> None:
        if self.bootstrap < 1 or self.ece_bins < 1:
            raise ParamsError(f"bootstrap and ece_bins must be >= 1, got {self.bootstrap}, {self.ece_bins}")


def load_params(path=PARAMS_FILE) -> EvaluateParams:
    return load_section("evaluate", EvaluateParams, path)


@dataclass(frozen=True)
class Inputs:
    """One run's evaluation data, as an arm's adapter reads it."""
    x: object                       # model input of the test split
    y: np.ndarray                   # test labels
    groups: np.ndarray              # bootstrap groups (one id per test sample)
    classes: list                   # every class name, in label order
    scored: list                    # names of the classes in macro-F1 and the per-class table
    validation: Callable            # model -> (y_val, probs_val): what the temperature is fitted on
    errors: Callable                # indices -> {name: array} saved in eval.npz (e.g. error_x)
    arrays: dict = field(default_factory=dict)   # more per-sample arrays for eval.npz
    data: dict = field(default_factory=dict)     # facts about the data, copied to eval.json
    train: dict = field(default_factory=dict)    # facts about training, copied to eval.json
    positive: str | None = None     # two-class task: the class of interest (ROC, operating points)
    ordinal: bool = False           # classes are ordered grades (quadratic kappa, within-one accuracy)
    hours: float | None = None      # recording time the test samples cover: false alarms per hour
    hours_method: str = ""          # how `hours` was obtained, in words (copied to eval.json)
    alarm_classes: tuple = ()       # classes whose false calls are counted per hour


@dataclass(frozen=True)
class Adapter:
    arm: str                  # MLflow experiment; folder under metrics/, artifacts/, reports/plots/
    run_keys: tuple           # CLI options naming a run; the run is their values joined by '-'
    data_dir: str             # default --data
    split: str                # name of the scored split (e.g. DS2, test)
    selected_on: str          # what chose the checkpoint and fitted the temperature, in words
    load: Callable            # (data_dir, art_dir, trained) -> Inputs
    auc: bool = False         # report ROC AUC
    batch_size: int = 256
    register: Callable = lambda: None   # imports the arm's custom Keras layers before the model loads
    errors_per_group: int | None = None  # most error examples kept from one group (None: no cap)


def trained_fact(trained: dict, key: str, path: Path):
    """A fact the train stage recorded in train.json; a clear error when it is missing.

    train.json files written before the params split keep the training knobs under `params`.
    """
    if key in trained:
        return trained[key]
    if key in (trained.get("params") or {}):
        return trained["params"][key]
    raise ValueError(f"{path}: no '{key}' (written by the train stage); rerun it")


def evaluate(adapter: Adapter, name: str, cfg: EvaluateParams, data_dir: Path, root: Path = Path(".")) -> dict:
    """Score run `name` with its saved model, write its outputs under `root`; returns the metrics."""
    import keras  # slow import, only when a model is scored

    from pipeline.training import predict_probs

    art_dir = root / "artifacts" / adapter.arm / name
    trained = read_json(art_dir / "train.json")
    inputs = adapter.load(Path(data_dir), art_dir, trained)
    adapter.register()
    model = keras.models.load_model(art_dir / "model.keras", compile=False)  # scoring needs no loss
    probs = predict_probs(model, inputs.x, adapter.batch_size)

    def log(metrics, figures):
        return tracking.log_evaluation(adapter.arm, name, trained.get("mlflow_run_id"), metrics, figures, model,
                                       f"{adapter.split.lower()}.")

    return write_outputs(adapter, name, cfg, root, trained, inputs, probs, inputs.validation(model), log)


def write_outputs(adapter: Adapter, name: str, cfg: EvaluateParams, root: Path, trained: dict, inputs: Inputs,
                  probs, val: tuple, log, temperature: float | None = None) -> dict:
    """Score test `probs` (temperature fitted on `val` = (y_val, probs_val), or `temperature` when given: a
    deployed model's own), write plots, figures,
    eval.npz, eval.json and the metrics file; `log(metrics, figures) -> (run_id, model_uri)` records
    them in MLflow. Returns the metrics."""
    art_dir = root / "artifacts" / adapter.arm / name
    scores = assess.score(inputs.y, probs, *val, inputs.groups, inputs.classes, inputs.scored,
                          n_boot=cfg.bootstrap, n_bins=cfg.ece_bins, seed=cfg.seed, auc=adapter.auc,
                          temperature=temperature)
    figs = assess.write_plots(scores, inputs.classes, root / "reports" / "plots" / adapter.arm / name,
                              art_dir / "figures", f"{name} ({adapter.split})")
    if inputs.train.get("history"):
        figs["history"] = plots.plot_history(inputs.train["history"], art_dir / "figures" / "history.png")
    worst = assess.top_errors(inputs.y, scores.probs, MAX_ERRORS, inputs.groups, adapter.errors_per_group)
    y_val, probs_val = val
    save_npz(art_dir / "eval.npz", y_true=inputs.y, probs=scores.probs, probs_before=probs, group=inputs.groups,
             error_index=worst, y_val=np.asarray(y_val), probs_val=np.asarray(probs_val),
             **inputs.errors(worst), **inputs.arrays)
    metrics = {**scores.metrics, **clinical_metrics(inputs, probs, val, cfg),
               "val_macro_f1": trained_fact(trained, "val_macro_f1", art_dir / "train.json")}
    metrics["ci95"] = {**scores.metrics["ci95"], **metrics.pop("_ci95", {})}
    logged = {**metrics, "ci95": {**metrics["ci95"], "per_class": scores.class_ci95}}  # MLflow gets every CI
    run_id, model_uri = log(logged, list(figs.values()))
    info = {"arm": adapter.arm, "run": name, **{k: trained.get(k) for k in adapter.run_keys},
            "split": adapter.split, "selected_on": adapter.selected_on, "classes": list(inputs.classes),
            "scored": list(inputs.scored), "positive": inputs.positive, "ordinal": inputs.ordinal,
            "hours": inputs.hours, "hours_method": inputs.hours_method,
            "n_test": int(len(inputs.y)),
            "n_groups": int(len(np.unique(inputs.groups))), "evaluate": asdict(cfg),
            "class_ci95": scores.class_ci95, "mlflow_run_id": run_id, "model_uri": model_uri,
            "model_info": trained.get("model_info") or {}, "train": inputs.train, "data": inputs.data,
            "hashes": hashes(art_dir, trained)}
    write_json(art_dir / "eval.json", info)
    write_json(root / "metrics" / adapter.arm / f"{name}.json", metrics)  # last: appears when all else is there
    return metrics


def hashes(art_dir: Path, trained: dict) -> dict:
    """SHA-256 of the scored model file and of the data it was trained on (as train.json recorded it)."""
    model = art_dir / "model.keras"
    return {"model": sha256_file(model) if model.is_file() else None, "data": trained.get("data_sha256")}


def clinical_metrics(inputs: Inputs, probs, val: tuple, cfg: EvaluateParams) -> dict:
    """AUC with its CI and operating points (two-class tasks with a `positive` class), ordinal
    agreement (graded tasks); CIs under the key `_ci95` (merged into `ci95` by the caller)."""
    out, ci = {}, {}
    if inputs.positive is not None:
        b = clinical.binary_metrics(inputs.y, probs, *val, list(inputs.classes).index(inputs.positive),
                                    inputs.groups, cfg.bootstrap, cfg.seed)
        out.update(auc=b["auc"], operating_points=b["operating_points"])
        ci["auc"] = b["auc_ci"]
    if inputs.hours and inputs.alarm_classes:
        pred = np.asarray(probs).argmax(axis=1)
        y = np.asarray(inputs.y)
        out["alarms_per_hour"] = {c: float(((pred == k) & (y != k)).sum() / inputs.hours)
                                  for c in inputs.alarm_classes for k in [list(inputs.classes).index(c)]}
    if inputs.ordinal:
        for key, (value, interval) in clinical.ordinal_metrics(inputs.y, np.asarray(probs).argmax(axis=1),
                                                               inputs.groups, cfg.bootstrap, cfg.seed).items():
            out[key], ci[key] = value, interval
    return {**out, "_ci95": ci} if out else {}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def summary(adapter: Adapter, name: str, m: dict) -> str:
    ci = m["ci95"]["macro_f1"]
    per = ", ".join(f"{c} F1 {_fmt(r['f1'])}" for c, r in m["per_class"].items())
    return (f"evaluate {adapter.arm} {name}: {adapter.split} accuracy {_fmt(m['accuracy'])}, macro-F1 "
            f"{_fmt(m['macro_f1'])} (95% CI {_fmt(ci and ci['lo'])}-{_fmt(ci and ci['hi'])}); {per}; "
            f"ECE {_fmt(m['ece']['before'])} -> {_fmt(m['ece']['after'])} (T={m['temperature']:.2f})")


def main(adapter: Adapter, doc: str | None, argv=None) -> int:
    """The command line of an arm's evaluate stage: --<run key> ... --params --data."""
    args = run_args(doc, {key: None for key in adapter.run_keys}, data=adapter.data_dir, argv=argv)
    name = "-".join(getattr(args, key) for key in adapter.run_keys)
    metrics = evaluate(adapter, name, load_params(args.params), Path(args.data))
    print(summary(adapter, name, metrics))
    return 0
