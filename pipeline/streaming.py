"""fit_stream: pipeline.training.fit for training data streamed from disk (a keras.utils.PyDataset).

Same contract, checkpoints and resume as `pipeline.training.fit`, built from its pieces (load_unit,
CheckpointController, seed_epoch, ...): one atomic checkpoint unit per epoch, every epoch a pure function
of (weights and optimizer state after the previous epoch, seed, epoch), so a resumed run ends with the
same weights as an uninterrupted one. The only difference is where epoch e's batches come from:
`train_ds.set_epoch(e)` (e.g. pipeline.shards.ShardDataset, whose order depends on (seed, epoch) only)
instead of `epoch_order` over in-memory arrays.

This is a separate module only because pipeline/training.py is a dependency of every trained stage and
editing it would make them all stale: at the next full retrain the epoch loop below is to be folded into
`pipeline.training.fit` (train = arrays or a PyDataset), and this module reduced to an alias.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import keras

from pipeline.io import ensure_dir
from pipeline.params import ParamsError
from pipeline.training import CheckpointController, FitConfig, _clean_partial, load_unit, seed_epoch


def fit_stream(build_model, loss, train_ds, val, score_classes, cfg: FitConfig, run_dir: Path, fingerprint: str,
               seed: int = 0, callbacks=(), verbose: int | None = None):
    """Train (or resume) on `train_ds` and return (best_model, state), like pipeline.training.fit.

    train_ds: a PyDataset of (x, y_onehot) batches with `set_epoch(epoch)` and `batch_size` equal to
    cfg.batch_size; its order for an epoch must depend only on (its seed, epoch). val: (x, y_int) arrays
    in memory (the checkpoint controller scores macro-F1 on them after every epoch).
    """
    if not callable(getattr(train_ds, "set_epoch", None)):
        raise TypeError(f"train_ds ({type(train_ds).__name__}) needs set_epoch(epoch): each epoch's order must be "
                        f"a function of (seed, epoch) for resume to equal an uninterrupted run")
    if getattr(train_ds, "batch_size", cfg.batch_size) != cfg.batch_size:
        raise ParamsError(f"train_ds batch_size {train_ds.batch_size} differs from fit batch_size {cfg.batch_size}")
    run_dir = Path(run_dir)
    ensure_dir(run_dir)
    _clean_partial(run_dir)
    loaded = load_unit(run_dir, fingerprint, seed)
    if loaded is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        ensure_dir(run_dir)
        state = {"fingerprint": fingerprint, "epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0,
                 "history": {}, "config": asdict(cfg), "seed": seed}
        keras.utils.set_random_seed(seed)
        model = build_model()
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss,
                      metrics=["accuracy"], jit_compile=False)
        unit = None
    else:
        state, model, unit = loaded
        print(f"resuming {run_dir} after epoch {state['epoch']}", flush=True)
    controller = CheckpointController(val[0], val[1], score_classes, run_dir, cfg, state, unit)
    verbose = verbose if verbose is not None else (1 if sys.stdout.isatty() else 2)
    while not controller.done:
        epoch = state["epoch"]
        train_ds.set_epoch(epoch)
        controller.expected_steps = len(train_ds)
        seed_epoch(model, seed, epoch)
        # shuffle=False: Keras would otherwise permute the batch indices; the dataset shuffles itself
        model.fit(train_ds, initial_epoch=epoch, epochs=epoch + 1, shuffle=False,
                  callbacks=[controller, *callbacks], verbose=verbose)
        if state["epoch"] != epoch + 1:  # a callback stopped training before the epoch ended
            raise RuntimeError(f"epoch {epoch + 1} of {run_dir} did not finish")
    best = keras.models.load_model(controller.unit / "best.keras")
    return best, state
