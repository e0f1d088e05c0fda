"""Stage evaluate_ecg: score one trained (model, loss) on DS2.

Temperature is fitted on the out-of-fold DS1 predictions saved by train_ecg; DS2 is used for
nothing but scoring.
Writes metrics/ecg/<model>-<loss>.json, DVC plots, figures, and logs to the run's MLflow entry.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras
import numpy as np

from ecg import dataset, models, train_config  # noqa: F401  (models registers custom layers)
from pipeline import assess, plots, tracking
from pipeline.io import read_json, save_npz, write_json
from pipeline.training import predict_probs

SCORE_CLASSES = (0, 1, 2, 3)


def evaluate(name: str, cfg, data_dir: Path, art_dir: Path, metrics_path: Path, plots_dir: Path) -> dict:
    arrays, meta = dataset.load_inputs(data_dir, cfg.channels)
    trained = read_json(art_dir / "train.json")
    if trained["data_sha256"] != meta["beats_sha256"]:
        raise ValueError(f"{art_dir / 'train.json'}: model was trained on other data; rerun train_ecg")
    test = dataset.select(arrays, arrays["split"] == 1, cfg.limit_beats, cfg.seed)
    with np.load(art_dir / "oof.npz") as oof:
        y_val, probs_val = oof["y"], oof["probs"]
    model = keras.models.load_model(art_dir / "model.keras")
    probs = predict_probs(model, test.x)
    classes = meta["classes"]
    result = assess.score(test.y, probs, y_val, probs_val, test.record, classes, SCORE_CLASSES,
                          n_boot=cfg.bootstrap, n_bins=cfg.ece_bins, seed=cfg.seed)
    figs = assess.write_plots(result, test.y, classes, plots_dir, art_dir / "figures", f"{name} on DS2")
    figs["history"] = plots.plot_history(trained["history"], art_dir / "figures" / "history.png")
    worst = assess.top_errors(test.y, result["_probs_after"])
    save_npz(art_dir / "eval.npz", y_true=test.y, probs=result["_probs_after"], probs_before=probs,
             group=test.record, sample=test.sample, error_index=worst, error_x=test.x["beat"][worst, :, 0],
             error_rr=test.x["rr"][worst])
    public = assess.public(result)
    public["per_class"] = {c: public["per_class"][c] for c in classes[:4]}  # Q: too few beats to score
    metrics = {"model": trained["model"], "loss": trained["loss"], "split": "DS2", **public,
               "val_macro_f1": trained["val_macro_f1"], "selected_on": "DS1 validation",
               "val_records": trained["val_records"], "model_info": trained["model_info"]}
    logged = {k: metrics[k] for k in ("accuracy", "macro_f1", "per_class", "ece", "brier", "nll", "temperature")}
    metrics["mlflow_run_id"], metrics["model_uri"] = tracking.log_evaluation(
        "ecg", name, trained.get("mlflow_run_id"), logged, figs.values(), model, "ds2.")
    write_json(metrics_path, metrics)
    return metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--loss", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/ecg")
    args = ap.parse_args(argv)
    cfg = train_config.load(args.params)
    name = f"{args.model}-{args.loss}"
    m = evaluate(name, cfg, Path(args.data), Path("artifacts/ecg") / name, Path("metrics/ecg") / f"{name}.json",
                 Path("reports/plots/ecg") / name)
    pc = m["per_class"]
    print(f"evaluate_ecg {name}: DS2 macro-F1 {m['macro_f1']:.3f} CI {m['ci95']['macro_f1']}, "
          + ", ".join(f"{c} F1 {pc[c]['f1'] if pc[c]['f1'] is None else round(pc[c]['f1'], 3)}" for c in pc)
          + f"; ECE {m['ece']['before']:.3f} -> {m['ece']['after']:.3f} (T={m['temperature']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
