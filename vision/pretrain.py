"""Stage pretrain_vision: give one backbone its starting weights and hand them to the transfer stages.

    python -m vision.pretrain --model alexnet      # params.yaml: vision_pretrain (shared keys + .alexnet)

vision_pretrain.<model>.weights:
  source:<dataset>  train backbone + a throw-away head from scratch on data/vision/source_<dataset>.npz
                    (fit loop with early stopping on validation macro-F1, resumable)
  imagenet          vgg16 / squeezenet: published ImageNet weights (Keras download cache, md5-checked, or
                    env VGG16_WEIGHTS / SQUEEZENET_WEIGHTS / vision_pretrain.<model>.weights_file)
Writes artifacts/vision/pretrain/<model>/backbone.keras + backbone.json (provenance, sha256).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from pipeline import device, tracking
from pipeline.evaluation import accuracy
from pipeline.io import fingerprint, sha256_file
from pipeline.losses import make_loss
from pipeline.training import fit, predict_probs
from vision import dataset, train_config
from vision.augment import build_augment
from vision.checkpoint import imagenet_weights, save_backbone, write_info
from vision.models import BACKBONES, build_backbone, build_classifier, find_backbone

OUT_DIR = Path("artifacts/vision/pretrain")


def arch_kwargs(model_name: str, cfg) -> dict:
    """The builder args BACKBONES[model_name].arch names, from params section vision_pretrain.<model_name>."""
    keys = BACKBONES[model_name].arch
    return {k: getattr(cfg.backbone(model_name), k) for k in keys} if keys else {}


def pretrain(model_name: str, cfg, data_dir: Path, out_dir: Path, run_dir: Path) -> dict:
    own = cfg.backbone(model_name)
    source = own.weights
    policy = device.configure(cfg.mixed_precision)
    shape = (cfg.input_side(model_name),) * 2 + (3,)
    info = {"model": model_name, "source": source, "input_shape": list(shape),
            "arch": arch_kwargs(model_name, cfg), "precision_policy": policy}
    metrics, history = {}, {}
    if source == "imagenet":
        path = imagenet_weights(model_name, getattr(own, "weights_file", None))
        backbone = build_backbone(model_name, shape, weights=path)
        info.update(weights_file=str(path), weights_sha256=sha256_file(path))
        print(f"{model_name}: ImageNet weights from {path}", flush=True)
    else:
        name = train_config.source_set(source)
        splits, meta = dataset.load(data_dir, f"source_{name}")
        train, val = splits["train"], splits["val"]
        n_classes = meta["n_classes"]
        fit_cfg = own.fit

        def build():
            return build_classifier(build_backbone(model_name, shape, **info["arch"]), n_classes,
                                    input_shape=train.x.shape[1:], head_units=cfg.head_units,
                                    dropout=cfg.dropout, augment=build_augment(cfg.augment, seed=cfg.seed))

        print(f"{model_name}: pretraining on {source} ({len(train.y)} train / {len(val.y)} val images, "
              f"{train.x.shape[1:]} -> {shape}), precision policy {policy}", flush=True)
        best, state = fit(build, make_loss("ce"), (train.x, train.y), (val.x, val.y), tuple(range(n_classes)),
                          fit_cfg, run_dir, fingerprint(cfg.run_config(model_name), meta["sha256"]), seed=cfg.seed)
        backbone = find_backbone(best)
        metrics = {"val_accuracy": accuracy(val.y, predict_probs(best, val.x).argmax(axis=1)),
                   "val_macro_f1": state["best"]}
        history = state["history"]
        info.update(source_data_sha256=meta["sha256"], source_classes=meta["class_names"],
                    n_train=len(train.y), n_val=len(val.y), best_epoch=state["best_epoch"],
                    epochs_run=state["epoch"], fit=asdict(fit_cfg), history=history, **metrics)
    info["params_count"] = int(backbone.count_params())
    info["sha256"] = save_backbone(backbone, out_dir)
    with tracking.run("vision_pretrain", f"{model_name}-{source}") as mlflow:
        tracking.log_params(mlflow, {"backbone_sha256": info["sha256"], **cfg.run_config(model_name)})
        tracking.log_history(mlflow, history)
        tracking.log_metrics(mlflow, metrics)
        info["mlflow_run_id"] = mlflow.active_run().info.run_id
    write_info(out_dir, info)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/vision")
    args = ap.parse_args(argv)
    cfg = train_config.load_pretrain(args.params)
    if args.model not in BACKBONES:
        raise SystemExit(f"unknown model {args.model!r}; valid: {list(BACKBONES)}")
    info = pretrain(args.model, cfg, Path(args.data), OUT_DIR / args.model,
                    Path("artifacts/checkpoints/vision/pretrain") / args.model)
    acc = info.get("val_accuracy")
    print(f"pretrain_vision {args.model}: {info['source']}, {info['params_count']:,} params"
          + (f", source val accuracy {acc:.3f}" if acc is not None else "") + f", sha256 {info['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
