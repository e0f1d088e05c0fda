"""Issue 12 item 4: what does pretraining AlexNet on more CIFAR-10 images cost, and what does it buy, per epoch?

One epoch of the project's own AlexNet source pretraining (stage pretrain_vision@alexnet) on
  small: the 4,500 train images used today (data/vision/source_cifar10.npz, ingest_source_images), and
  large: N train images from the CIFAR-10 JPEG mirror (the zip ingest reads, vision.readers.load_image_tree),
         a superset of those 4,500: the 4,500 plus class-stratified random others, so each class has N/10,
and the CIFAR-10 validation accuracy / macro-F1 after that one epoch, on the same 500 validation images
of source_cifar10.npz for both (they are removed from the large set's pool by pixel identity).

The model and the training loop are vision.pretrain's and pipeline.training's, imported, not copied:
build_classifier(build_backbone("alexnet", (32, 32, 3), **arch_kwargs), head_units, dropout, the pretrain
augmentation), make_loss("ce"), pipeline.training.fit with params.yaml vision_pretrain (seed, batch size,
learning rate) and epochs=1, checkpointing into a temporary folder that is deleted afterwards.  The
4,500-image epoch is therefore epoch 1 of the committed pretrain_vision@alexnet run.

Timing: a Keras callback records the epoch's start and every batch end: "epoch s" = first batch start to
last batch end (includes tracing the train step), "steady img/s" = batches 2..last.  "fit s" = the whole fit()
call (also building, the validation pass and the checkpoint write).  The full-schedule cost is extrapolated
linearly from the large run's steady rate (vision_pretrain.alexnet.fit.epochs epochs, no early stop).

N: --large N, or "auto": 49,500 (all 50,000 minus the 500 validation images) when the small run's rate
projects one such epoch at <= 12 min, else the largest of 20,000 / 10,000 whose projected epoch fits
--large-budget-min (default 9 min), else 10,000.

    python benchmarks/cifar_pretrain_cost.py [--large auto|N] [--small-limit N  (smoke runs)]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.squeezenet_resolution import busy_processes, cpu_model  # noqa: E402
from pipeline import device  # noqa: E402
from pipeline.evaluation import accuracy, macro_f1  # noqa: E402
from pipeline.io import write_text  # noqa: E402
from pipeline.losses import make_loss  # noqa: E402
from pipeline.training import fit, predict_probs  # noqa: E402
from vision import dataset, train_config  # noqa: E402
from vision.augment import build_augment  # noqa: E402
from vision.models import build_backbone, build_classifier  # noqa: E402
from vision.pretrain import arch_kwargs  # noqa: E402
from vision.readers import load_image_tree  # noqa: E402

MODEL = "alexnet"
DEFAULT_ZIP = "/work/shared/data/cifar10/cifar10_jpg.zip"
ALL_BUT_VAL = 49_500
CANDIDATES = (20_000, 10_000)


class EpochClock(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.t_begin = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if batch == 0:
            self.t_first = now
        self.t_last, self.n_batches = now, batch + 1


def digests(x: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in x]


def large_set(zip_path, n: int, small: dataset.Images, val: dataset.Images, seed: int):
    """The small train set plus class-stratified random CIFAR-10 train images (never a validation image)
    up to n/10 per class (all of them when n >= 49,500).  Returns (x, y, info)."""
    t0 = time.perf_counter()
    splits, classes = load_image_tree(zip_path)
    x, y = splits["train"]
    load_s = time.perf_counter() - t0
    h = digests(x)
    val_h, small_h = set(digests(val.x)), set(digests(small.x))
    in_val = np.array([d in val_h for d in h])
    in_small = np.array([d in small_h for d in h])
    rng = np.random.default_rng(seed)
    keep = [np.flatnonzero(in_small)]
    per_class = n // len(classes)
    for c in range(len(classes)):
        rest = np.flatnonzero((y == c) & ~in_val & ~in_small)
        need = len(rest) if n >= ALL_BUT_VAL else max(0, per_class - int(np.sum(small.y == c)))
        keep.append(rng.choice(rest, min(need, len(rest)), replace=False))
    keep = np.sort(np.concatenate(keep))
    info = {"pool": len(y), "val_found": int(in_val.sum()), "small_found": int(in_small.sum()),
            "load_s": load_s, "classes": classes}
    return x[keep], y[keep], info


def one_epoch(cfg, x_tr, y_tr, val, n_classes: int, label: str) -> dict:
    own = cfg.backbone(MODEL)
    fit_cfg = dataclasses.replace(own.fit, epochs=1)
    shape = (cfg.image_size, cfg.image_size, 3)
    arch = arch_kwargs(MODEL, cfg)

    def build():   # exactly vision.pretrain.pretrain's build()
        return build_classifier(build_backbone(MODEL, shape, **arch), n_classes, input_shape=x_tr.shape[1:],
                                head_units=cfg.head_units, dropout=cfg.dropout,
                                augment=build_augment(cfg.augment, seed=cfg.seed))

    clock = EpochClock()
    run_dir = Path(tempfile.mkdtemp(prefix=f"cifar_pretrain_cost_{label}_"))
    try:
        t0 = time.perf_counter()
        best, state = fit(build, make_loss("ce"), (x_tr, y_tr), (val.x, val.y), tuple(range(n_classes)),
                          fit_cfg, run_dir, f"benchmark-{label}-{len(y_tr)}", seed=cfg.seed, callbacks=[clock])
        fit_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    pred = predict_probs(best, val.x).argmax(axis=1)
    steady_n = (clock.n_batches - 1) * fit_cfg.batch_size
    steady_n = min(steady_n, len(y_tr) - fit_cfg.batch_size)   # the last batch may be partial
    out = {"label": label, "n": len(y_tr), "batches": clock.n_batches, "epoch_s": clock.t_last - clock.t_begin,
           "first_batch_s": clock.t_first - clock.t_begin,
           "steady_ips": steady_n / (clock.t_last - clock.t_first), "fit_s": fit_s,
           "val_acc": accuracy(val.y, pred), "val_f1": macro_f1(val.y, pred, range(n_classes)),
           "train_acc_logged": state["history"].get("accuracy", [float("nan")])[-1],
           "train_loss": state["history"].get("loss", [float("nan")])[-1],
           "params": int(best.count_params())}
    keras.backend.clear_session()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--data", default=str(REPO / "data/vision"))
    ap.add_argument("--zip", default=os.environ.get("CIFAR10_ZIP", DEFAULT_ZIP))
    ap.add_argument("--large", default="auto", help="'auto', 'none' or a number of train images")
    ap.add_argument("--large-budget-min", type=float, default=9.0)
    ap.add_argument("--small-limit", type=int, default=None, help="first N of the 4,500 (smoke runs only)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/cifar_pretrain_cost.txt"))
    args = ap.parse_args(argv)

    lines: list[str] = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    t_start = time.perf_counter()
    cfg = train_config.load_pretrain(args.params)
    own = cfg.backbone(MODEL)
    policy = device.configure(cfg.mixed_precision)
    splits, meta = dataset.load(args.data, "source_cifar10")
    small, val = splits["train"], splits["val"]
    if args.small_limit:
        small = dataset.Images(small.x[:args.small_limit], small.y[:args.small_limit], small.index[:args.small_limit])
    n_classes = int(meta["n_classes"])
    say(f"CIFAR-10 source pretraining cost, AlexNet, one epoch (benchmarks/cifar_pretrain_cost.py), "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    say(f"machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} CPU cores shared with other work; load average "
        f"at start {os.getloadavg()[0]:.2f}; keras {keras.__version__} backend {keras.backend.backend()}, "
        f"precision {policy}")
    say(f"other processes at start (>= 5% CPU): {busy_processes()}")
    say(f"setup: params.yaml vision_pretrain: image_size {cfg.image_size}, arch {arch_kwargs(MODEL, cfg)}, head "
        f"{list(cfg.head_units)} dropout {cfg.dropout}, augment {dataclasses.asdict(cfg.augment)}, fit "
        f"{dataclasses.asdict(own.fit)} run with epochs=1, seed {cfg.seed}")
    say(f"validation: the {len(val.y)} val images of data/vision/source_cifar10.npz for both runs")
    if args.small_limit:
        say(f"SMOKE RUN: small set cut to {args.small_limit} images")
    say()

    rows = [one_epoch(cfg, small.x, small.y, val, n_classes, "small")]
    r = rows[0]
    print(f"  small: {r['n']} images, epoch {r['epoch_s']:.0f} s, {r['steady_ips']:.0f} img/s, "
          f"val acc {r['val_acc']:.3f} [{time.perf_counter() - t_start:.0f} s]", flush=True)

    rate = r["steady_ips"]
    large_note = ""
    if args.large == "none":
        n_large = None
    elif args.large == "auto":
        if ALL_BUT_VAL / rate <= 12 * 60:
            n_large = ALL_BUT_VAL
        else:
            fits = [n for n in CANDIDATES if n / rate <= args.large_budget_min * 60]
            n_large = fits[0] if fits else CANDIDATES[-1]
            large_note = (f"one epoch on {ALL_BUT_VAL:,} images projects to {ALL_BUT_VAL / rate / 60:.1f} min at the "
                          f"small run's {rate:.0f} img/s (> 12 min), so the large run uses a {n_large:,}-image subset "
                          f"and the 45,000/49,500 figures below are LINEAR EXTRAPOLATIONS from it")
    else:
        n_large = int(args.large)
    if n_large:
        x_l, y_l, info = large_set(args.zip, n_large, small, val, cfg.seed)
        say(f"large set: {args.zip}: {info['pool']:,} CIFAR-10 train images decoded in {info['load_s']:.0f} s; "
            f"{info['val_found']} of the {len(val.y)} val images and {info['small_found']} of the {len(small.y)} "
            f"small-set images found by pixel identity; {len(y_l):,} train images "
            f"(per class {np.bincount(y_l, minlength=n_classes).tolist()})")
        if large_note:
            say("NOTE: " + large_note)
        rows.append(one_epoch(cfg, x_l, y_l, val, n_classes, "large"))
        r = rows[-1]
        print(f"  large: {r['n']} images, epoch {r['epoch_s']:.0f} s, val acc {r['val_acc']:.3f} "
              f"[{time.perf_counter() - t_start:.0f} s]", flush=True)
    say()
    head = (f"{'train images':>12} | {'batches':>7} | {'epoch s':>7} {'1st batch s':>11} {'steady img/s':>12} "
            f"{'fit s':>6} | {'val acc':>7} {'val F1':>6} | {'train loss':>10} {'train acc':>9}")
    say(head)
    say("-" * len(head))
    for r in rows:
        say(f"{r['n']:>12,} | {r['batches']:>7} | {r['epoch_s']:>7.0f} {r['first_batch_s']:>11.1f} "
            f"{r['steady_ips']:>12.0f} {r['fit_s']:>6.0f} | {r['val_acc']:>7.3f} {r['val_f1']:>6.3f} | "
            f"{r['train_loss']:>10.3f} {r['train_acc_logged']:>9.3f}")
    se = np.sqrt(0.3 * 0.7 / len(val.y))
    say(f"val acc: {len(val.y)} images, binomial SE about +-{se:.3f} at 30% (chance 0.100). train loss/acc: "
        f"Keras's running means over the epoch (augmented, dropout on).")
    committed = Path(args.data).parents[1] / "artifacts/vision/pretrain" / MODEL / "backbone.json"
    if committed.is_file() and not args.small_limit:
        c = json.loads(committed.read_text())
        f1_c = (c.get("history", {}).get("val_macro_f1") or [None])[0]
        same = c.get("source_data_sha256") == meta["sha256"] and f1_c is not None
        say(f"check: the committed pretrain_vision@{MODEL} run ({committed.relative_to(REPO) if committed.is_relative_to(REPO) else committed}) "
            f"had val macro-F1 {f1_c if f1_c is None else f'{f1_c:.4f}'} after its epoch 1"
            + (f" on the same source_cifar10.npz; this 4,500 run: {rows[0]['val_f1']:.4f}"
               f" ({'identical: same setup' if abs(rows[0]['val_f1'] - f1_c) < 1e-6 else 'differs'})" if same
               else " (different source data; not comparable)")
            + f"; it stopped after {c.get('epochs_run')} epochs with best epoch {c.get('best_epoch')} "
              f"(val acc {c.get('val_accuracy')}).")
    say()
    epochs = own.fit.epochs
    ref = rows[-1]
    ips = ref["steady_ips"]
    say(f"extrapolation (linear in images at the steady rate of the {ref['n']:,}-image run, {ips:.0f} img/s; "
        f"{epochs} epochs = vision_pretrain.alexnet.fit.epochs, patience {own.fit.patience}; not counted: "
        f"~{ref['fit_s'] - ref['n'] / ips:.0f} s per run of build/trace/validation/checkpoint, more with a "
        f"5,000-image validation split):")
    for n in (len(small.y), 45_000, ALL_BUT_VAL):
        per_epoch = n / ips
        say(f"  {n:>6,} train images: {per_epoch / 60:5.1f} min/epoch, {epochs} epochs {epochs * per_epoch / 60:5.1f} min"
            + ("  (45,000 = vision_source.limit_per_class null: 45,000 train / 5,000 val)" if n == 45_000 else ""))
    if len(rows) > 1:
        s, l_ = rows
        say(f"one epoch: {l_['n'] / s['n']:.1f}x the images cost {l_['epoch_s'] / s['epoch_s']:.1f}x the time "
            f"and move val accuracy {s['val_acc']:.3f} -> {l_['val_acc']:.3f} ({l_['val_acc'] - s['val_acc']:+.3f}), "
            f"macro-F1 {s['val_f1']:.3f} -> {l_['val_f1']:.3f}. Note: one epoch of N images is also N/64 optimizer "
            f"steps, so the gain mixes more data with more updates.")
    say(f"total wall time {time.perf_counter() - t_start:.0f} s; load average at end {os.getloadavg()[0]:.2f}; "
        f"other processes at end: {busy_processes()}")
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
