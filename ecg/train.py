"""Stage train_ecg: train one (model, loss) on DS1 minus its validation folds.

Early stopping and checkpoint selection use validation macro-F1 (N, S, V, F) on the
patient-wise validation folds of DS1; DS2 is never read here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ecg import dataset, models, train_config
from pipeline import device, tracking
from pipeline.io import atomic_path, write_json
from pipeline.losses import make_loss
from pipeline.training import fit

SCORE_CLASSES = (0, 1, 2, 3)  # N, S, V, F: Q (a handful of beats) is left out of macro-F1


def fingerprint(cfg, model: str, loss: str, meta: dict) -> str:
    blob = json.dumps([asdict(cfg), model, loss, meta["beats_sha256"]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train(model_name: str, loss_name: str, cfg, data_dir: Path, out_dir: Path, run_dir: Path) -> dict:
    arrays, meta = dataset.load(data_dir)
    train_set, val_set, _ = dataset.splits(arrays, cfg.val_folds, cfg.limit_beats, cfg.seed)
    n_classes = len(meta["classes"])
    counts = np.bincount(train_set.y, minlength=n_classes)
    loss = make_loss(loss_name, class_counts=counts, alpha=cfg.alpha if isinstance(cfg.alpha, str) else list(cfg.alpha),
                     gamma=cfg.gamma, label_smoothing=cfg.label_smoothing)
    policy = device.configure(cfg.mixed_precision)
    kwargs = cfg.model_kwargs(model_name)

    def build():
        return models.build(model_name, meta["window_samples"], len(meta["rr_features"]), n_classes, **kwargs)[0]

    info = models.build(model_name, meta["window_samples"], len(meta["rr_features"]), n_classes, **kwargs)[1]
    info["receptive_field_ms"] = 1000.0 * info["receptive_field_samples"] / meta["fs"]
    print(f"{model_name}: {info['params']:,} params, receptive field {info['receptive_field_samples']} samples "
          f"({info['receptive_field_ms']:.0f} ms); train {len(train_set.y)} beats {counts.tolist()}, "
          f"val {len(val_set.y)} beats (folds {list(cfg.val_folds)}), precision policy {policy}", flush=True)
    best, state = fit(build, loss, (train_set.x, train_set.y), (val_set.x, val_set.y), SCORE_CLASSES, cfg.fit,
                      run_dir, fingerprint(cfg, model_name, loss_name, meta), seed=cfg.seed)
    with atomic_path(out_dir / "model.keras", suffix=".keras") as tmp:
        best.save(tmp)
    record = {"model": model_name, "loss": loss_name, "model_info": info, "train_counts": counts.tolist(),
              "val_records": sorted({int(r) for r in val_set.record}), "best_epoch": state["best_epoch"],
              "val_macro_f1": state["best"], "epochs_run": state["epoch"], "history": state["history"],
              "precision_policy": policy, "params": asdict(cfg), "data_sha256": meta["beats_sha256"]}
    with tracking.run("ecg", f"{model_name}-{loss_name}") as mlflow:
        tracking.log_params(mlflow, {"model": model_name, "loss": loss_name, **asdict(cfg), **info,
                                     "data_sha256": meta["beats_sha256"]})
        tracking.log_history(mlflow, state["history"])
        mlflow.log_metric("val_macro_f1", state["best"])
        record["mlflow_run_id"] = mlflow.active_run().info.run_id
    write_json(out_dir / "train.json", record)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--loss", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/ecg")
    args = ap.parse_args(argv)
    cfg = train_config.load(args.params)
    name = f"{args.model}-{args.loss}"
    out_dir = Path("artifacts/ecg") / name
    record = train(args.model, args.loss, cfg, Path(args.data), out_dir, Path("artifacts/checkpoints/ecg") / name)
    print(f"train_ecg {name}: best val macro-F1 {record['val_macro_f1']:.4f} at epoch {record['best_epoch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
