"""Stage train_vision: transfer one pretrained backbone to one image set.

    python -m vision.train --dataset breastmnist --model vgg16 --regime finetune --loss focal

Reads data/vision/<dataset>.npz and artifacts/vision/pretrain/<model>/backbone.*; early stopping
and checkpoint choice use validation macro-F1 over all classes; the test split is never read here.
Writes artifacts/vision/<dataset>-<model>-<regime>-<loss>/model.keras + train.json, opens the MLflow run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline import device, tracking
from pipeline.io import fingerprint, read_json, write_json
from pipeline.losses import LOSSES, loss_from_params
from pipeline.stage import run_args
from vision import dataset, train_config
from vision.checkpoint import load_backbone, save_model
from vision.models import BACKBONES, REGIMES
from vision.transfer import transfer

CHECKPOINTS = Path("artifacts/checkpoints/vision")


def run_name(dataset_name: str, model: str, regime: str, loss: str) -> str:
    return f"{dataset_name}-{model}-{regime}-{loss}"


def train(dataset_name: str, model_name: str, regime: str, loss_name: str, cfg, data_dir: Path,
          backbone_dir: Path, out_dir: Path, ckpt_root: Path = CHECKPOINTS) -> dict:
    splits, meta = dataset.load(data_dir, dataset_name, cfg.limit)
    train_set, n_classes = splits["train"], meta["n_classes"]
    counts = np.bincount(train_set.y, minlength=n_classes)
    loss = loss_from_params(loss_name, cfg.loss, class_counts=counts)
    policy = device.configure(cfg.mixed_precision)
    info = read_json(backbone_dir / "backbone.json")
    name = run_name(dataset_name, model_name, regime, loss_name)
    print(f"{name}: backbone {info['source']} ({info['sha256'][:12]}), input {train_set.x.shape[1:]} -> "
          f"{tuple(info['input_shape'])}; train {len(train_set.y)} images {counts.tolist()}, "
          f"val {len(splits['val'].y)}; precision policy {policy}", flush=True)
    data = [meta["sha256"], info["sha256"], cfg.limit, policy]
    run_cfg = cfg.run_config(model_name, regime, loss_name)
    features = ckpt_root / "features" / f"{fingerprint(*data, cfg.seed)}.npz"
    head_fp = fingerprint(*data, cfg.head_config(loss_name))
    head_run = (ckpt_root / f"{dataset_name}-{model_name}-{loss_name}-head", head_fp)
    finetune_run = (ckpt_root / name, fingerprint(*data, run_cfg, head_fp))
    with tracking.run("vision", name) as mlflow:
        tracking.log_params(mlflow, {"dataset": dataset_name, "model": model_name, "regime": regime,
                                     "loss": loss_name, **run_cfg, "data.sha256": meta["sha256"],
                                     "data.n": {s: len(im.y) for s, im in splits.items()},
                                     "data.image_shape": list(train_set.x.shape[1:]),
                                     "data.classes": meta["class_names"]})
        tracking.log_dataset(mlflow, data_dir / f"{dataset_name}.npz", meta["sha256"], dataset_name, "training",
                             train_set.x, train_set.y)
        model, rec = transfer(regime, model_name, dataset_name, lambda: load_backbone(backbone_dir)[0],
                              splits, n_classes, loss, cfg, head_run, finetune_run, features,
                              phase=lambda phase: tracking.phase_run("vision", f"{name} {phase}"))
        model_info = {"params": int(model.count_params()), "input_size": list(train_set.x.shape[1:]),
                      "backbone_input_size": info["input_shape"], "backbone_source": info["source"],
                      "backbone_sha256": info["sha256"], **rec["trainable"]}
        tracking.log_params(mlflow, {f"model_info.{k}": v for k, v in model_info.items()})
        mlflow.log_metric("val_macro_f1", rec["val_macro_f1"])
        run_id = mlflow.active_run().info.run_id
    save_model(model, out_dir / "model.keras")  # byte-reproducible: a restored fit rewrites the same file
    record = {"dataset": dataset_name, "model": model_name, "regime": regime, "loss": loss_name,
              "class_names": meta["class_names"], "model_info": model_info, "train_counts": counts.tolist(),
              "n": {s: len(im.y) for s, im in splits.items()}, **{k: v for k, v in rec.items() if k != "trainable"},
              "precision_policy": policy, "config": run_cfg, "limit": cfg.limit, "seed": cfg.seed,
              "data_sha256": meta["sha256"], "mlflow_run_id": run_id,
              "backbone": {k: info.get(k) for k in ("model", "source", "sha256", "input_shape", "arch",
                                                    "val_accuracy", "mlflow_run_id")}}
    write_json(out_dir / "train.json", record)
    return record


def main(argv=None) -> int:
    args = run_args(__doc__, {"dataset": None, "model": BACKBONES, "regime": REGIMES, "loss": LOSSES},
                    data="data/vision", argv=argv)
    cfg = train_config.load_train(args.params)
    name = run_name(args.dataset, args.model, args.regime, args.loss)
    record = train(args.dataset, args.model, args.regime, args.loss, cfg, Path(args.data),
                   Path("artifacts/vision/pretrain") / args.model, Path("artifacts/vision") / name)
    print(f"train_vision {name}: best val macro-F1 {record['val_macro_f1']:.4f} at epoch {record['best_epoch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
