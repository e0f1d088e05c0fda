"""Stage evaluate_vision: score one trained (dataset, model, regime, loss) on its test split.

Temperature is fitted on the validation split; the test split is used for nothing but scoring.
Each image is its own bootstrap group. Writes metrics/vision/<name>.json, DVC plots, figures,
artifacts/vision/<name>/eval.npz, and logs to the run's MLflow entry (experiment "vision").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras

from pipeline import assess, plots, tracking
from pipeline.evaluation import accuracy, macro_f1, roc_auc
from pipeline.io import read_json, save_npz, write_json
from pipeline.training import predict_probs
from vision import dataset, layers, train_config  # noqa: F401  (layers registers custom layers)
from vision.train import run_name


def per_class(raw: dict) -> dict:
    """assess's se/ppv naming -> the vision contract (precision, recall, f1, n, specificity)."""
    return {c: {"precision": m["ppv"], "recall": m["se"], "f1": m["f1"], "n": m["n"], "specificity": m["spec"]}
            for c, m in raw.items()}


def evaluate(name: str, cfg, data_dir: Path, art_dir: Path, metrics_path: Path, plots_dir: Path) -> dict:
    trained = read_json(art_dir / "train.json")
    splits, meta = dataset.load(data_dir, trained["dataset"], cfg.limit)
    if trained["data_sha256"] != meta["sha256"]:
        raise ValueError(f"{art_dir / 'train.json'}: model was trained on other data; rerun train_vision")
    val, test = splits["val"], splits["test"]
    model = keras.models.load_model(art_dir / "model.keras")
    probs_val, probs = predict_probs(model, val.x, 256), predict_probs(model, test.x, 256)
    classes, all_classes = meta["class_names"], tuple(range(meta["n_classes"]))
    result = assess.score(test.y, probs, val.y, probs_val, test.index, classes, all_classes,
                          n_boot=cfg.bootstrap, n_bins=cfg.ece_bins, seed=cfg.seed)
    figs = assess.write_plots(result, test.y, classes, plots_dir, art_dir / "figures", f"{name} (test)")
    figs["history"] = plots.plot_history(trained["history"], art_dir / "figures" / "history.png")
    worst = assess.top_errors(test.y, result["_probs_after"])
    save_npz(art_dir / "eval.npz", y_true=test.y, probs=result["_probs_after"], probs_before=probs,
             group=test.index, error_index=worst, error_x=test.x[worst])
    public = assess.public(result)
    val_pred = probs_val.argmax(axis=1)
    metrics = {"dataset": trained["dataset"], "model": trained["model"], "regime": trained["regime"],
               "loss": trained["loss"], "split": "test", **public, "per_class": per_class(public["per_class"]),
               "auc": roc_auc(test.y, result["_probs_after"]),
               "val_macro_f1": macro_f1(val.y, val_pred, all_classes), "val_accuracy": accuracy(val.y, val_pred),
               "selected_on": "validation", "n_test": int(len(test.y)), "model_info": trained["model_info"]}
    logged = {k: metrics[k] for k in ("accuracy", "auc", "macro_f1", "per_class", "ece", "brier", "nll",
                                      "temperature")}
    metrics["mlflow_run_id"], metrics["model_uri"] = tracking.log_evaluation(
        "vision", name, trained.get("mlflow_run_id"), logged, figs.values(), model, "test.")
    write_json(metrics_path, metrics)
    return metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key in ("dataset", "model", "regime", "loss"):
        ap.add_argument(f"--{key}", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/vision")
    args = ap.parse_args(argv)
    cfg = train_config.load_train(args.params)
    name = run_name(args.dataset, args.model, args.regime, args.loss)
    m = evaluate(name, cfg, Path(args.data), Path("artifacts/vision") / name, Path("metrics/vision") / f"{name}.json",
                 Path("reports/plots/vision") / name)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"evaluate_vision {name}: test accuracy {fmt(m['accuracy'])}, macro-F1 {fmt(m['macro_f1'])} "
          f"CI {m['ci95']['macro_f1']}, AUC {fmt(m['auc'])}; ECE {fmt(m['ece']['before'])} -> "
          f"{fmt(m['ece']['after'])} (T={m['temperature']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
