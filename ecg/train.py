"""Stage train_ecg: train one (model, loss) by patient-wise cross-validation inside DS1.

For each validation fold k, a model is trained on the other DS1 folds, with early stopping and
checkpoint choice on macro-F1 (over meta.json's score_classes) of fold k's records. The saved
model averages the fold models; the out-of-fold (OOF) predictions cover every DS1 beat with a
model that never saw its patient, and serve model selection and temperature fitting. DS2 is
never read here. Each fold is a nested MLflow run with live per-epoch curves.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import keras
import numpy as np

from ecg import dataset, models, train_config
from pipeline import device, tracking
from pipeline.evaluation import macro_f1
from pipeline.io import atomic_path, fingerprint, save_npz, write_json
from pipeline.losses import LOSSES, loss_from_params
from pipeline.sampling import ConstantSchedule, CosineSchedule, MajorityUndersampler
from pipeline.stage import run_args
from pipeline.training import fit, predict_probs


def ensemble(members, name: str):
    """One Keras model averaging the fold models' class probabilities."""
    if len(members) == 1:
        return members[0]
    inputs = [keras.Input(t.shape[1:], name=t.name.split(":")[0]) for t in members[0].inputs]
    for i, m in enumerate(members):
        m.name = f"fold{i}_{m.name}"
    outs = [m(inputs) for m in members]
    return keras.Model(inputs, keras.layers.Average(name="mean_probs")(outs), name=name)


def data_params(meta: dict) -> dict:
    """What the model was trained on, as MLflow params: records, leads, rate, window."""
    return {"data.database": meta["database"], "data.records": sorted(meta["leads"], key=int),
            "data.leads": sorted(set(meta["leads"].values())), "data.fs": meta["fs"],
            "data.window_ms": meta["window_ms"], "data.window_samples": meta["window_samples"],
            "data.bandpass_hz": meta["bandpass_hz"], "data.classes": meta["classes"],
            "data.score_classes": meta["score_classes"], "data.sha256": meta["beats_sha256"]}


def epoch_sampler(cfg, y: np.ndarray, classes) -> MajorityUndersampler | None:
    """ecg_train.sampling as a per-epoch row sampler for `fit`; None (every beat every epoch) when keep is null."""
    s = cfg.sampling
    if s.keep is None:
        return None
    if s.majority not in classes:
        raise ValueError(f"ecg_train.sampling.majority: {s.majority!r} is not one of the prepared classes {classes}")
    return MajorityUndersampler(y, classes.index(s.majority), s.keep)


def lr_schedule(cfg):
    """ecg_train.schedule as a learning-rate schedule for `fit`; None (fit.learning_rate throughout) by default."""
    s = cfg.schedule
    if s.kind == "constant" and s.peak_factor == 1.0:
        return None
    peak = cfg.fit.learning_rate * s.peak_factor
    return ConstantSchedule(peak) if s.kind == "constant" else CosineSchedule(peak, cfg.fit.epochs)


def cross_validate(model_name: str, loss_name: str, cfg, arrays: dict, meta: dict, folds, ckpt_dir: Path,
                   label: str, seed: int, callbacks_for=None) -> dict:
    """Train one model per validation fold of `arrays` (DS1 rows: split 0) and predict its held-out fold.

    Returns members (fold order), per-fold histories, the pooled out-of-fold arrays (y, probs, record) and
    the model description. `seed` + fold seeds each fit; `callbacks_for(fold)` gives a context manager
    yielding the fit's callbacks (MLflow), or None for none. Used by train_ecg and by the replication stage
    (other seeds; nested folds), so they train exactly as the stage does."""
    score = dataset.score_indices(meta)
    n_classes = len(meta["classes"])
    shape = (meta["window_samples"], len(meta["rr_features"]), n_classes)
    kwargs = cfg.model_kwargs(model_name)
    run_cfg = cfg.run_config(model_name, loss_name)
    schedule = lr_schedule(cfg)
    members, histories, parts, info = [], {}, [], None
    for fold in folds:
        tr, va, _ = dataset.splits(arrays, [fold], cfg.limit_beats, cfg.seed)
        counts = np.bincount(tr.y, minlength=n_classes)
        # class weights / focal alpha come from the FULL training counts, also when the epochs are
        # class-balanced by `sampler` (benchmarks/ecg_search.py derived them from the per-epoch counts instead)
        loss = loss_from_params(loss_name, cfg.loss, class_counts=counts)
        sampler = epoch_sampler(cfg, tr.y, meta["classes"])
        print(f"{label} fold {fold}: train {len(tr.y)} beats {counts.tolist()}, validation records "
              f"{sorted(set(va.record.tolist()))}", flush=True)
        if sampler is not None or schedule is not None:
            rows = "every beat" if sampler is None else f"{sampler!r} {sampler.epoch_counts(n_classes).tolist()}"
            print(f"{label} fold {fold}: per epoch {rows}; learning rate {schedule or cfg.fit.learning_rate!r}",
                  flush=True)

        def build():
            model, model_info = models.build(model_name, *shape, **kwargs)
            nonlocal info
            info = info or model_info
            return model

        with (callbacks_for(fold) if callbacks_for else contextlib.nullcontext([])) as callbacks:
            best, state = fit(build, loss, (tr.x, tr.y), (va.x, va.y), score, cfg.fit, ckpt_dir / f"fold{fold}",
                              fingerprint(run_cfg, fold, meta["beats_sha256"], seed, sorted(set(tr.record.tolist()))),
                              seed=seed + fold, callbacks=callbacks, sampler=sampler, schedule=schedule)
        members.append(best)
        histories[str(fold)] = {"history": state["history"], "best_epoch": state["best_epoch"],
                                "val_macro_f1": state["best"], "epochs_run": state["epoch"]}
        if sampler is not None:
            histories[str(fold)]["train_beats_per_epoch"] = len(sampler)
        parts.append((va, predict_probs(best, va.x)))
    if info is None:  # every fold resumed from a finished checkpoint: describe the model without training
        info = models.build(model_name, *shape, **kwargs)[1]
    info["receptive_field_ms"] = 1000.0 * info["receptive_field_samples"] / meta["fs"]
    y = np.concatenate([va.y for va, _ in parts])
    probs = np.concatenate([p for _, p in parts])
    return {"members": members, "histories": histories, "info": info, "y": y, "probs": probs,
            "record": np.concatenate([va.record for va, _ in parts]),
            "macro_f1": macro_f1(y, probs.argmax(axis=1), score)}


def train(model_name: str, loss_name: str, cfg, data_dir: Path, out_dir: Path, ckpt_dir: Path) -> dict:
    arrays, meta = dataset.load_inputs(data_dir, cfg.channels)
    policy = device.configure(cfg.mixed_precision)
    run_cfg = cfg.run_config(model_name, loss_name)
    folds = dataset.cv_folds(arrays, cfg.val_folds)
    name = name_of(model_name, loss_name)
    with tracking.run("ecg", name) as mlflow:
        tracking.log_params(mlflow, {"model": model_name, "loss": loss_name, **run_cfg, **data_params(meta)})
        tracking.log_dataset(mlflow, data_dir / "beats.npz", meta["beats_sha256"], f"{meta['database']}-beats",
                             "training", arrays["rr"][arrays["split"] == 0], arrays["y"][arrays["split"] == 0])
        parent_id = mlflow.active_run().info.run_id
        cv = cross_validate(model_name, loss_name, cfg, arrays, meta, folds, ckpt_dir, name, cfg.seed,
                            lambda fold: tracking.phase_run("ecg", f"{name} fold {fold}"))
        info, histories, oof_f1 = cv["info"], cv["histories"], cv["macro_f1"]
        tracking.log_params(mlflow, {f"model_info.{k}": v for k, v in info.items()})
        mlflow.log_metric("val_macro_f1", oof_f1)
    model = ensemble(cv["members"], f"{model_name}_cv{len(cv['members'])}")
    with atomic_path(out_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    save_npz(out_dir / "oof.npz", y=cv["y"], probs=cv["probs"], record=cv["record"])
    record = {"model": model_name, "loss": loss_name, "model_info": info, "folds": histories,
              "history": histories[str(folds[0])]["history"], "val_macro_f1": oof_f1,
              "val_records": sorted({int(r) for r in cv["record"]}),
              "precision_policy": policy, "config": run_cfg, "channels": list(cfg.channels),
              "limit_beats": cfg.limit_beats, "seed": cfg.seed, "data_sha256": meta["beats_sha256"],
              "mlflow_run_id": parent_id}
    write_json(out_dir / "train.json", record)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: nothing left to resume
    print(f"{name}: {info['params']:,} params per fold model, receptive field {info['receptive_field_samples']} "
          f"samples ({info['receptive_field_ms']:.0f} ms), folds {folds}, precision policy {policy}", flush=True)
    return record


def name_of(model: str, loss: str) -> str:
    return f"{model}-{loss}"


def main(argv=None) -> int:
    args = run_args(__doc__, {"model": models.MODELS, "loss": LOSSES}, data="data/ecg", argv=argv)
    cfg = train_config.load(args.params)
    name = name_of(args.model, args.loss)
    record = train(args.model, args.loss, cfg, Path(args.data), Path("artifacts/ecg") / name,
                   Path("artifacts/checkpoints/ecg") / name)
    print(f"train_ecg {name}: out-of-fold DS1 macro-F1 {record['val_macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
