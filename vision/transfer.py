"""Transfer a pretrained backbone to a target image set, in one of two regimes.

Phase 1, both regimes (head on a frozen backbone): a frozen backbone computes the same pooled
features every epoch, so they are computed once, cached on disk (keyed by the backbone and data
hashes) and the head alone is trained on them with the shared fit loop. For "frozen" this is
the whole training; no augmentation (features are fixed).
Phase 2, "finetune" only: backbone + the warmed-up head + augmentation layers; blocks from
`unfreeze_from` on become trainable, BatchNorm stays frozen (inference mode), and the fit loop
compiles it afresh at the finetune learning rate.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import numpy as np

from pipeline.io import save_npz
from pipeline.training import fit
from vision.augment import build_augment
from vision.models import build_classifier, build_head, copy_head, set_trainable, weight_counts


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """Image -> pooled backbone features (the input of the head)."""
    return keras.Model(classifier.input, classifier.get_layer("head_pool").output, name="features")


def cached_features(classifier: keras.Model, splits: dict, path: Path, batch_size: int = 256) -> dict:
    """{split: float32 features}; read from `path` if present, else computed and written there."""
    if path.exists():
        with np.load(path) as npz:
            feats = {s: npz[s] for s in npz.files}
        if set(feats) == set(splits) and all(len(feats[s]) == len(splits[s].y) for s in splits):
            return feats
    extractor = feature_extractor(classifier)
    feats = {s: np.asarray(extractor.predict(im.x, batch_size=batch_size, verbose=0), np.float32)
             for s, im in splits.items()}
    save_npz(path, **feats)
    return feats


def make_classifier(backbone, n_classes: int, input_shape, cfg, dataset: str | None = None,
                    augment: bool = False) -> keras.Model:
    layers = build_augment(cfg.finetune.augment, dataset, seed=cfg.seed) if augment else ()
    return build_classifier(backbone, n_classes, input_shape=input_shape, head_units=cfg.head_units,
                            dropout=cfg.dropout, augment=layers)


@contextlib.contextmanager
def _no_tracking(name: str):
    yield []


def transfer(regime: str, model_name: str, dataset: str, load_backbone, splits: dict, n_classes: int, loss,
             cfg, head_run: tuple[Path, str], finetune_run: tuple[Path, str], feature_path: Path, phase=None):
    """Train per `regime`; return (classifier for raw images, record with histories and weight counts).

    `load_backbone()` returns a fresh copy of the pretrained backbone. `head_run` / `finetune_run` are
    (run folder, fingerprint) of the two fit loops; the frozen and finetune stages of one (dataset,
    model, loss) share `head_run`, so whichever runs second finds phase 1 done and reuses it.
    `phase(name)` is a context manager around each fit loop yielding its extra Keras callbacks
    (the stage opens a nested MLflow run per phase there).
    """
    train, val = splits["train"], splits["val"]
    classes = tuple(range(n_classes))
    shape = train.x.shape[1:]
    base = make_classifier(load_backbone(), n_classes, shape, cfg)
    feats = cached_features(base, {"train": train, "val": val}, feature_path, cfg.head_fit.batch_size * 4)
    phase = phase or _no_tracking
    with phase("head") as callbacks:
        head, head_state = fit(lambda: build_head(feats["train"].shape[1], n_classes, dropout=cfg.dropout,
                                                  head_units=cfg.head_units),
                               loss, (feats["train"], train.y), (feats["val"], val.y), classes, cfg.head_fit,
                               *head_run, seed=cfg.seed, callbacks=callbacks)
    record = {"head": {"best_epoch": head_state["best_epoch"], "val_macro_f1": head_state["best"],
                       "epochs_run": head_state["epoch"], "history": head_state["history"]}}
    if regime == "frozen":
        copy_head(head, base)
        record["trainable"] = set_trainable(base, "frozen")
        record.update(record["head"])
        return base, record
    if regime != "finetune":
        raise ValueError(f"unknown regime '{regime}'; valid: ['frozen', 'finetune']")
    unfreeze_from = getattr(cfg.unfreeze_from, model_name)
    counts = {}

    def build():
        model = make_classifier(load_backbone(), n_classes, shape, cfg, dataset, augment=True)
        copy_head(head, model)
        counts.update(set_trainable(model, "finetune", unfreeze_from))
        return model

    with phase("finetune") as callbacks:
        model, state = fit(build, loss, (train.x, train.y), (val.x, val.y), classes, cfg.finetune.fit,
                           *finetune_run, seed=cfg.seed, callbacks=callbacks)
    record.update(finetune={"unfreeze_from": unfreeze_from, "best_epoch": state["best_epoch"],
                            "val_macro_f1": state["best"], "epochs_run": state["epoch"],
                            "history": state["history"]},
                  trainable=counts or weight_counts(model), best_epoch=state["best_epoch"],
                  val_macro_f1=state["best"], epochs_run=state["epoch"], history=state["history"])
    return model, record
