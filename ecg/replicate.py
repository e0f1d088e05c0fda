"""Stage replicate_ecg: the packaged run's configuration, trained again, on DS1 only.

Two things the single train_ecg run cannot tell:

* Seeds. The same configuration with `ecg_replicate.seeds` (besides ecg_train.seed, train_ecg's own run): each
  seed is the full patient-wise cross-validation, so each gives its own DS1 out-of-fold macro-F1 and its own
  fold ensemble (saved, for evaluate_deployed_ecg to score on DS2 once).
  The seeds' out-of-fold predictions, averaged beat by beat with the run's, are what package_ecg fits the deployed
  temperature on (ecg.package.calibration_data): each DS1 beat predicted by an ensemble of fold models trained
  exactly like the packaged ensemble's members, none of which saw it. `python -m ecg.predict` uses a fold ensemble,
  less confident than any one fold model, so single-model out-of-fold predictions (oof.npz) do not fit it.
* Nested cross-validation, a diagnostic: for each DS1 fold k, the same cross-validation runs on the other folds
  (one model per remaining fold, each early-stopped on it), and the mean of those models predicts fold k. Its
  members train on half of DS1 and stop on a single inner fold; on MIT-BIH 7 of 12 stopped at epoch 1, so these
  ensembles are not the packaged kind and their predictions are reported, not used.

DS2 is never read. Outputs: <out>/seed<s>/{model.keras,oof.npz}, <out>/oof_nested.npz (y, probs, record,
run), <out>/replicate.json and metrics/ecg/replicate.json (per-seed DS1 out-of-fold scores, their spread, the nested ensemble's
score and its calibration before / after each temperature).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecg import dataset, train_config
from ecg.train import cross_validate, ensemble
from pipeline import calibration as cal
from pipeline import device, tracking
from pipeline.evaluation import class_metrics, confusion, macro_f1
from pipeline.io import atomic_path, read_json, save_npz, write_json
from pipeline.params import ParamsError, load_section

NESTED_FILE = "oof_nested.npz"


@dataclass(frozen=True)
class ReplicateParams:
    """params.yaml `ecg_replicate`: which extra seeds (the nested cross-validation always runs)."""
    seeds: tuple[int, ...] = (43, 44)

    def validate(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise ParamsError(f"seeds: repeated values in {list(self.seeds)}")


def load_params(path) -> ReplicateParams:
    return load_section("ecg_replicate", ReplicateParams, path)


def summary(y, probs, meta: dict) -> dict:
    """Macro-F1 over the scored classes and each scored class's F1 (sklearn-equivalent, from the confusion)."""
    idx = dataset.score_indices(meta)
    cm = confusion(y, probs.argmax(axis=1), len(meta["classes"]))
    return {"macro_f1": macro_f1(y, probs.argmax(axis=1), idx),
            "f1": {meta["classes"][k]: class_metrics(cm, k)["f1"] for k in idx}}


def spread(values) -> dict:
    v = np.asarray([x for x in values if x is not None], np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def numbers(obj):
    """The numeric leaves of a nested dict (booleans as 0/1); strings and lists dropped (DVC metrics)."""
    if isinstance(obj, dict):
        kept = {k: numbers(v) for k, v in obj.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    if isinstance(obj, bool):
        return int(obj)
    return obj if isinstance(obj, (int, float)) else None


def without_fold(arrays: dict, fold: int) -> dict:
    """DS1 minus fold `fold` (DS2 rows dropped too: nothing here scores them)."""
    keep = (arrays["split"] == 0) & (arrays["fold"] != fold)
    return {k: v[keep] if getattr(v, "shape", ())[:1] == keep.shape else v for k, v in arrays.items()}


def nested_oof(model_name, loss_name, cfg, arrays, meta, folds, ckpt: Path, label: str) -> dict:
    """For each outer fold k: the fold ensemble of DS1 minus k (cross-validated on the remaining folds) predicts k."""
    from pipeline.training import predict_probs

    ys, ps, recs, inner = [], [], [], {}
    for k in folds:
        rest = [f for f in folds if f != k]
        cv = cross_validate(model_name, loss_name, cfg, without_fold(arrays, k), meta, rest, ckpt / f"outer{k}",
                            f"{label} nested outer {k}", cfg.seed)
        _, held, _ = dataset.splits(arrays, [k], cfg.limit_beats, cfg.seed)
        probs = np.mean([predict_probs(m, held.x) for m in cv["members"]], axis=0)
        ys.append(held.y), ps.append(probs), recs.append(held.record)
        inner[str(k)] = {"inner_oof_macro_f1": cv["macro_f1"], **summary(held.y, probs, meta),
                         "best_epochs": [h["best_epoch"] for h in cv["histories"].values()]}
        print(f"{label} nested: fold {k} scored by the ensemble of folds {rest}: "
              f"macro-F1 {inner[str(k)]['macro_f1']:.4f}", flush=True)
    return {"y": np.concatenate(ys), "probs": np.concatenate(ps), "record": np.concatenate(recs), "outer": inner}


def calibration_facts(y, probs, single_t: float, n_bins: int) -> dict:
    """ECE of the nested ensemble predictions: raw, under the single-model temperature, under their own."""
    own = cal.fit_temperature_no_worse(probs, y, n_bins)
    return {"ece_raw": own["ece_before"], "single_model_temperature": single_t,
            "ece_single_model_temperature": cal.ece(cal.apply_temperature(probs, single_t), y, n_bins),
            "nested_temperature": own["temperature"], "nested_temperature_fitted": own["fitted"],
            "nested_temperature_kept": own["kept"], "ece_nested_temperature": own["ece_after"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/ecg")
    ap.add_argument("--runs-root", default="artifacts/ecg", help="train_ecg's run folders")
    ap.add_argument("--out", default="artifacts/ecg_replicate")
    ap.add_argument("--metrics", default="metrics/ecg/replicate.json")
    args = ap.parse_args(argv)
    from ecg.package import ece_bins
    from ecg.package import load_params as package_params
    try:
        run = package_params(args.params).run
        rep, cfg, n_bins = load_params(args.params), train_config.load(args.params), ece_bins(args.params)
    except ParamsError as exc:
        print(f"ecg.replicate: error: {exc}", file=sys.stderr)
        return 2
    run_dir, out, ckpt = Path(args.runs_root) / run, Path(args.out), Path("artifacts/checkpoints/ecg_replicate")
    if not (run_dir / "train.json").exists():
        print(f"ecg.replicate: error: {run_dir / 'train.json'}: missing; run train_ecg for {run} first", file=sys.stderr)
        return 2
    trained = read_json(run_dir / "train.json")
    model_name, loss_name = trained["model"], trained["loss"]
    if trained.get("config") != json.loads(json.dumps(cfg.run_config(model_name, loss_name))):
        print(f"ecg.replicate: error: {run_dir / 'train.json'} was trained with other ecg_train settings than "
              f"{args.params}; rerun train_ecg", file=sys.stderr)
        return 2
    if cfg.seed in rep.seeds:
        print(f"ecg.replicate: error: ecg_replicate.seeds holds {cfg.seed}, train_ecg's own seed (ecg_train.seed)",
              file=sys.stderr)
        return 2
    arrays, meta = dataset.load_inputs(args.data, cfg.channels)
    if trained["data_sha256"] != meta["beats_sha256"]:
        print(f"ecg.replicate: error: {run_dir / 'train.json'}: trained on other data than {args.data}; rerun train_ecg",
              file=sys.stderr)
        return 2
    device.configure(cfg.mixed_precision)
    folds = dataset.cv_folds(arrays, cfg.val_folds)
    if len(folds) < 3:
        print(f"ecg.replicate: error: nested cross-validation needs >= 3 DS1 validation folds, ecg_train.val_folds / "
              f"ecg_data.n_folds give {folds}", file=sys.stderr)
        return 2
    with np.load(run_dir / "oof.npz") as oof:
        own = {"y": oof["y"], "probs": oof["probs"]}
    seeds = {str(cfg.seed): {**summary(own["y"], own["probs"], meta), "source": str(run_dir / "oof.npz")}}
    with tracking.run("ecg", f"{run}-replicate") as mlflow:
        tracking.log_params(mlflow, {"run": run, "seeds": list(rep.seeds)})
        for seed in rep.seeds:
            label = f"{run} seed {seed}"
            cv = cross_validate(model_name, loss_name, cfg, arrays, meta, folds, ckpt / f"seed{seed}", label, seed)
            seed_dir = out / f"seed{seed}"
            model = ensemble(cv["members"], f"{model_name}_cv{len(cv['members'])}_seed{seed}")
            with atomic_path(seed_dir / "model.keras", suffix=".keras") as tmp:
                model.save(tmp)
            save_npz(seed_dir / "oof.npz", y=cv["y"], probs=cv["probs"], record=cv["record"])
            seeds[str(seed)] = {**summary(cv["y"], cv["probs"], meta),
                                "best_epochs": [h["best_epoch"] for h in cv["histories"].values()]}
            mlflow.log_metric(f"seed{seed}.val_macro_f1", seeds[str(seed)]["macro_f1"])
            print(f"{label}: DS1 out-of-fold macro-F1 {seeds[str(seed)]['macro_f1']:.4f}", flush=True)
        scored = [meta["classes"][k] for k in dataset.score_indices(meta)]
        record = {"run": run, "model": model_name, "loss": loss_name, "split": "DS1 out-of-fold (DS2 never read)",
                  "seeds": seeds, "spread": {"macro_f1": spread(s["macro_f1"] for s in seeds.values()),
                                             **{f"{c}_f1": spread(s["f1"][c] for s in seeds.values()) for c in scored}}}
        nested = nested_oof(model_name, loss_name, cfg, arrays, meta, folds, ckpt / "nested", run)
        save_npz(out / NESTED_FILE, y=nested["y"], probs=nested["probs"], record=nested["record"],
                 run=np.array(run))
        single_t = cal.fit_temperature(own["probs"], own["y"])
        record["nested"] = {**summary(nested["y"], nested["probs"], meta), "outer": nested["outer"],
                            "calibration": calibration_facts(nested["y"], nested["probs"], single_t, n_bins),
                            "single_model_calibration": {"ece_raw": cal.ece(own["probs"], own["y"], n_bins),
                                                         "temperature": single_t}}
        tracking.log_metrics(mlflow, {"nested": {"macro_f1": record["nested"]["macro_f1"],
                                                 **record["nested"]["calibration"]}})
        tracking.log_metrics(mlflow, {"spread": record["spread"]})
    write_json(out / "replicate.json", record)   # everything, with names and per-fold best epochs
    write_json(args.metrics, numbers(record))    # DVC metrics: numbers only
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: nothing left to resume
    s = record["spread"]["macro_f1"]
    print(f"ecg.replicate {run}: DS1 out-of-fold macro-F1 over seeds {list(seeds)}: mean {s['mean']:.4f}, "
          f"sd {s['sd'] if s['sd'] is None else round(s['sd'], 4)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
