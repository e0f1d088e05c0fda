"""ECG training and inference throughput, as ratios to a frozen reference measured in the same run (issue 10).

Machines differ several-fold in speed, so every figure here is compared with REFERENCE, timed in the same
process on the same machine:

* REFERENCE (hard-coded below, NOT read from params.yaml, so later params changes do not move it): the ECG arm's
  configuration of 2026-11-27, lenet1d (width 2, dropout 0.3, augmentation gain 0.1 / noise 0.02 / rr_jitter
  0.03, channels record_scaled + record_deviation) with the focal loss (sqrt_inverse alpha, gamma 2) at batch
  256, learning rate 1e-3, trained through `pipeline.training.fit` with its per-epoch validation pass
  (predictions on the held-out fold and macro-F1) and checkpoint unit.
* REFERENCE dilated1d: today's dilated1d (filters 16, stem stride 2), otherwise as REFERENCE (the issue's
  dilated1d goal is >= 2x this row).
* One row per --models entry (default: params grid.ecg.models) with params ecg_train as it stands (model
  args, channels, batch size, augmentation, sampling, schedule, mixed precision).
* One "+balanced" row per model: the same with class-balanced epochs (ecg_train.sampling with keep = --keep):
  fewer beats per epoch, so both beats/s and wall seconds per epoch are printed.

Every row trains through `pipeline.training.fit` (the stage's loop), so an epoch's wall time includes what
the stage pays per epoch: row selection, the training batches, the validation pass and the checkpoint.
Columns: train beats/s = beats per epoch / epoch wall s; train-only beats/s = beats per epoch / time of the
training batches alone; infer beats/s = `predict_probs` at batch 1024 over the validation beats; x ref =
ratio to the reference row. The first epoch (tracing) is not timed. While params ecg_train still holds today's
settings, "lenet1d (params)" repeats the reference configuration: the gap between the two rows is the run's
timing noise.

Data: DS1 of data/ecg when prepared (training beats from folds other than 0, validation beats from fold 0,
each a seeded random subset of --beats / --beats/3 beats; DS2 is never read), otherwise random beats with
DS1's class shares. Results depend on the machine's load: quote them only from an otherwise idle machine.

    python benchmarks/ecg_train.py --beats small            # a quick check that it runs
    python benchmarks/ecg_train.py --beats full --epochs 3 --models lenet1d dilated1d resnet1d
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecg import dataset, models, train_config  # noqa: E402
from ecg.train import epoch_sampler, lr_schedule  # noqa: E402
from pipeline import device  # noqa: E402
from pipeline.losses import loss_from_params, make_loss  # noqa: E402
from pipeline.params import read_params  # noqa: E402
from pipeline.training import FitConfig, fit, predict_probs  # noqa: E402

REFERENCE = {
    "model": "lenet1d",
    "model_args": {"width": 2, "dropout": 0.3},
    "augment": {"gain": 0.1, "noise": 0.02, "rr_jitter": 0.03},
    "channels": ("record_scaled", "record_deviation"),
    "loss": {"name": "focal", "alpha": "sqrt_inverse", "gamma": 2.0, "label_smoothing": 0.0},
    "batch_size": 256,
    "learning_rate": 1e-3,
    "mixed_precision": "auto",
}
# today's dilated1d (issue 10's second speed goal: >= 2x this row), the same frozen settings otherwise
REFERENCE_DILATED = {**REFERENCE, "model": "dilated1d", "model_args": {"filters": 16, "stem_stride": 2, "dropout": 0.3}}
SIZES = {"small": 4096, "full": None}  # full: every DS1 training beat outside fold 0 (~38k)
DS1_SHARES = (0.899, 0.018, 0.074, 0.008, 0.001)  # N, S, V, F, Q beats of DS1


class EpochClock(keras.callbacks.Callback):
    """Timestamps per epoch: begin, end of the last training batch, and end (after the checkpoint controller,
    which runs first: validation pass and checkpoint unit)."""

    def __init__(self):
        super().__init__()
        self.begin, self.last_batch, self.end = {}, {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.last_batch[self._epoch()] = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.end[epoch] = time.perf_counter()

    def _epoch(self):
        return max(self.begin)


def load_data(beats: int | None, channel_sets, seed: int = 0):
    """{channels: (train x, val x)}, train y, val y, source. DS1 only."""
    meta_path = Path("data/ecg/meta.json")
    rng = np.random.default_rng(seed)
    if meta_path.exists():
        arrays, meta = dataset.load("data/ecg")
        ds1 = arrays["split"] == 0
        tr = np.flatnonzero(ds1 & (arrays["fold"] != 0))
        va = np.flatnonzero(ds1 & (arrays["fold"] == 0))
        if beats is not None:
            tr = np.sort(rng.choice(tr, min(beats, len(tr)), replace=False))
            va = np.sort(rng.choice(va, min(max(beats // 3, 1), len(va)), replace=False))
        rows = np.concatenate([tr, va])
        xs = {}
        for chans in channel_sets:
            beat = dataset.beat_channels(arrays["x"][rows], arrays["record"][rows], chans)
            rr = arrays["rr"][rows].astype("float32")
            xs[chans] = ({"beat": beat[: len(tr)], "rr": rr[: len(tr)]}, {"beat": beat[len(tr):], "rr": rr[len(tr):]})
        y = arrays["y"].astype(np.int64)
        return (xs, y[tr], y[va], meta["classes"], dataset.score_indices(meta), meta["window_samples"],
                f"data/ecg DS1 ({len(tr)} train, {len(va)} val)")
    n_tr = beats or 38000
    n_va = max(n_tr // 3, 1)
    window, n_rr, classes = 253, 5, ["N", "S", "V", "F", "Q"]
    y = rng.choice(len(classes), n_tr + n_va, p=DS1_SHARES)
    xs = {}
    for chans in channel_sets:
        beat = rng.normal(size=(n_tr + n_va, window, len(chans))).astype("float32")
        rr = rng.uniform(0.5, 1.5, (n_tr + n_va, n_rr)).astype("float32")
        xs[chans] = ({"beat": beat[:n_tr], "rr": rr[:n_tr]}, {"beat": beat[n_tr:], "rr": rr[n_tr:]})
    return (xs, y[:n_tr], y[n_tr:], classes, (0, 1, 2, 3), window,
            f"random beats ({n_tr} train, {n_va} val; no data/ecg)")


def measure(label, build, loss, fit_cfg, data, y_tr, y_va, score, epochs, policy, sampler=None, schedule=None) -> dict:
    x_tr, x_va = data
    keras.mixed_precision.set_global_policy(policy)
    clock = EpochClock()
    cfg = replace(fit_cfg, epochs=epochs + 1, patience=epochs + 2)
    with tempfile.TemporaryDirectory(prefix="ecg_bench_") as run_dir:
        model, _ = fit(build, loss, (x_tr, y_tr), (x_va, y_va), score, cfg, Path(run_dir), label,
                       seed=0, verbose=0, callbacks=[clock], sampler=sampler, schedule=schedule)
    timed = range(1, epochs + 1)  # epoch 0 traces the graph
    epoch_s = np.array([clock.end[e] - clock.end[e - 1] for e in timed])
    train_s = np.array([clock.last_batch[e] - clock.begin[e] for e in timed])
    per_epoch = len(sampler) if sampler is not None else len(y_tr)
    predict_probs(model, x_va, 1024)  # warm-up
    t0 = time.perf_counter()
    predict_probs(model, x_va, 1024)
    infer = len(y_va) / (time.perf_counter() - t0)
    return {"row": label, "params": int(model.count_params()), "batch": fit_cfg.batch_size, "policy": policy,
            "beats_per_epoch": per_epoch, "epoch_s": float(np.median(epoch_s)),
            "train_beats_per_s": per_epoch / float(np.median(epoch_s)),
            "train_only_beats_per_s": per_epoch / float(np.median(train_s)), "infer_beats_per_s": infer}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beats", default="small",
                    help="training beats: small (4096), full (all of DS1 outside fold 0) or a number")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per row (after one untimed epoch)")
    ap.add_argument("--models", nargs="+", default=None, help="default: params grid.ecg.models")
    ap.add_argument("--loss", default="focal")
    ap.add_argument("--keep", type=float, default=0.25, help="majority fraction of the +balanced rows")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    beats = SIZES[args.beats] if args.beats in SIZES else int(args.beats)
    cfg = train_config.load(args.params)
    names = args.models or list(read_params(args.params)["grid"]["ecg"]["models"])
    unknown = [n for n in names if n not in models.MODELS]
    if unknown:
        ap.error(f"unknown --models {unknown}; valid: {sorted(models.MODELS)}")
    ref_policy = device.configure(REFERENCE["mixed_precision"])
    policy = device.configure(cfg.mixed_precision)
    xs, y_tr, y_va, classes, score, window, source = load_data(beats, {REFERENCE["channels"], tuple(cfg.channels)})
    n_classes, n_rr = len(classes), xs[REFERENCE["channels"]][0]["rr"].shape[1]
    counts = np.bincount(y_tr, minlength=n_classes)
    print(f"backend {keras.backend.backend()}, cores {os.cpu_count()}, {source}, window {window}, "
          f"train classes {counts.tolist()}, {args.epochs} timed epochs per row", flush=True)

    rows = []
    ref = REFERENCE
    ref_loss = make_loss(ref["loss"]["name"], class_counts=counts,
                         **{k: v for k, v in ref["loss"].items() if k != "name"})
    ref_fit = FitConfig(batch_size=ref["batch_size"], learning_rate=ref["learning_rate"])
    for label, r in (("REFERENCE lenet1d b256", REFERENCE), ("REFERENCE dilated1d b256", REFERENCE_DILATED)):
        rows.append(measure(label, lambda r=r: models.build(
            r["model"], window, n_rr, n_classes, channels=len(r["channels"]), augment=r["augment"],
            **r["model_args"])[0], ref_loss, ref_fit, xs[r["channels"]], y_tr, y_va, score, args.epochs, ref_policy))
    loss = loss_from_params(args.loss, cfg.loss, class_counts=counts)  # full counts, as ecg.train
    balanced = replace(cfg, sampling=replace(cfg.sampling, keep=args.keep))
    for name in names:
        kwargs = cfg.model_kwargs(name)

        def build(name=name, kwargs=kwargs):
            return models.build(name, window, n_rr, n_classes, **kwargs)[0]

        data = xs[tuple(cfg.channels)]
        rows.append(measure(f"{name} (params)", build, loss, cfg.fit, data, y_tr, y_va, score, args.epochs, policy,
                            epoch_sampler(cfg, y_tr, classes), lr_schedule(cfg)))
        rows.append(measure(f"{name} +balanced {args.keep:g}", build, loss, cfg.fit, data, y_tr, y_va, score,
                            args.epochs, policy, epoch_sampler(balanced, y_tr, classes), lr_schedule(cfg)))
    base = rows[0]
    for r in rows:
        r["train_x_ref"] = r["train_beats_per_s"] / base["train_beats_per_s"]
        r["epoch_s_x_ref"] = r["epoch_s"] / base["epoch_s"]
        r["infer_x_ref"] = r["infer_beats_per_s"] / base["infer_beats_per_s"]
    head = (f"{'row':<26}{'params':>9}{'batch':>6}{'beats/ep':>9}{'epoch s':>9}{'x ref':>7}{'train b/s':>11}"
            f"{'x ref':>7}{'train-only':>11}{'infer b/s':>11}{'x ref':>7}")
    print(head)
    for r in rows:
        print(f"{r['row']:<26}{r['params']:>9,}{r['batch']:>6}{r['beats_per_epoch']:>9,}{r['epoch_s']:>9.2f}"
              f"{r['epoch_s_x_ref']:>7.2f}{r['train_beats_per_s']:>11,.0f}{r['train_x_ref']:>7.2f}"
              f"{r['train_only_beats_per_s']:>11,.0f}{r['infer_beats_per_s']:>11,.0f}{r['infer_x_ref']:>7.2f}")
    print("issue 10 goals (same machine, same run): lenet1d (params) train b/s >= 3x REFERENCE; dilated1d >= 2x "
          "today's dilated1d")
    if args.json:
        Path(args.json).write_text(json.dumps({"source": source, "backend": keras.backend.backend(),
                                               "epochs": args.epochs, "reference": REFERENCE,
                                               "reference_dilated1d": REFERENCE_DILATED, "rows": rows},
                                              indent=2, default=list) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
