"""Stage train_ecg: train one (model, loss) by patient-wise cross-validation inside DS1.

For each validation fold k, a model is trained on the other DS1 folds, with early stopping and
checkpoint choice on macro-F1 (N, S, V, F) of fold k's records. The saved model averages the
fold models; the out-of-fold (OOF) predictions cover every DS1 beat with a model that never
saw its patient, and serve model selection and temperature fitting. DS2 is never read here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np

from ecg import dataset, models, train_config
from pipeline import device, tracking
from pipeline.evaluation import macro_f1
from pipeline.io import atomic_path, save_npz, write_json
from pipeline.losses import make_loss
from pipeline.training import fit, predict_probs

SCORE_CLASSES = (0, 1, 2, 3)  # N, S, V, F: Q (a handful of beats) is left out of macro-F1


def fingerprint(cfg, model: str, loss: str, fold: int, meta: dict) -> str:
    blob = json.dumps([asdict(cfg), model, loss, fold, meta["beats_sha256"]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensemble(members, name: str):
    """One Keras model averaging the fold models' class probabilities."""
    if len(members) == 1:
        return members[0]
    inputs = [keras.Input(t.shape[1:], name=t.name.split(":")[0]) for t in members[0].inputs]
    for i, m in enumerate(members):
        m.name = f"fold{i}_{m.name}"
    outs = [m(inputs) for m in members]
    return keras.Model(inputs, keras.layers.Average(name="mean_probs")(outs), name=name)


def train(model_name: str, loss_name: str, cfg, data_dir: Path, out_dir: Path, ckpt_dir: Path) -> dict:
    arrays, meta = dataset.load_inputs(data_dir, cfg.channels)
    n_classes = len(meta["classes"])
    policy = device.configure(cfg.mixed_precision)
    kwargs = cfg.model_kwargs(model_name)
    shape = (meta["window_samples"], len(meta["rr_features"]), n_classes)
    info = models.build(model_name, *shape, **kwargs)[1]
    info["receptive_field_ms"] = 1000.0 * info["receptive_field_samples"] / meta["fs"]
    folds = dataset.cv_folds(arrays, cfg.val_folds)
    print(f"{name_of(model_name, loss_name)}: {info['params']:,} params per fold model, receptive field "
          f"{info['receptive_field_samples']} samples ({info['receptive_field_ms']:.0f} ms), folds {folds}, "
          f"precision policy {policy}", flush=True)
    members, histories, oof_parts = [], {}, []
    for fold in folds:
        tr, va, _ = dataset.splits(arrays, [fold], cfg.limit_beats, cfg.seed)
        counts = np.bincount(tr.y, minlength=n_classes)
        alpha = cfg.alpha if isinstance(cfg.alpha, str) else list(cfg.alpha)
        loss = make_loss(loss_name, class_counts=counts, alpha=alpha, gamma=cfg.gamma,
                         label_smoothing=cfg.label_smoothing)
        print(f"fold {fold}: train {len(tr.y)} beats {counts.tolist()}, validation records {sorted(set(va.record.tolist()))}",
              flush=True)
        best, state = fit(lambda: models.build(model_name, *shape, **kwargs)[0], loss, (tr.x, tr.y), (va.x, va.y),
                          SCORE_CLASSES, cfg.fit, ckpt_dir / f"fold{fold}",
                          fingerprint(cfg, model_name, loss_name, fold, meta), seed=cfg.seed + fold)
        members.append(best)
        histories[str(fold)] = {"history": state["history"], "best_epoch": state["best_epoch"],
                                "val_macro_f1": state["best"], "epochs_run": state["epoch"]}
        oof_parts.append((va, predict_probs(best, va.x)))
    y_oof = np.concatenate([va.y for va, _ in oof_parts])
    p_oof = np.concatenate([p for _, p in oof_parts])
    oof_f1 = macro_f1(y_oof, p_oof.argmax(axis=1), SCORE_CLASSES)
    model = ensemble(members, f"{model_name}_cv{len(members)}")
    with atomic_path(out_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    save_npz(out_dir / "oof.npz", y=y_oof, probs=p_oof, record=np.concatenate([va.record for va, _ in oof_parts]))
    record = {"model": model_name, "loss": loss_name, "model_info": info, "folds": histories,
              "history": histories[str(folds[0])]["history"], "val_macro_f1": oof_f1,
              "val_records": sorted({int(r) for va, _ in oof_parts for r in va.record}),
              "precision_policy": policy, "params": asdict(cfg), "data_sha256": meta["beats_sha256"]}
    with tracking.run("ecg", name_of(model_name, loss_name)) as mlflow:
        tracking.log_params(mlflow, {"model": model_name, "loss": loss_name, **asdict(cfg), **info,
                                     "data_sha256": meta["beats_sha256"]})
        tracking.log_history(mlflow, record["history"])
        mlflow.log_metric("val_macro_f1", oof_f1)
        record["mlflow_run_id"] = mlflow.active_run().info.run_id
    write_json(out_dir / "train.json", record)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: nothing left to resume
    return record


def name_of(model: str, loss: str) -> str:
    return f"{model}-{loss}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--loss", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/ecg")
    args = ap.parse_args(argv)
    cfg = train_config.load(args.params)
    name = name_of(args.model, args.loss)
    record = train(args.model, args.loss, cfg, Path(args.data), Path("artifacts/ecg") / name,
                   Path("artifacts/checkpoints/ecg") / name)
    print(f"train_ecg {name}: out-of-fold DS1 macro-F1 {record['val_macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
