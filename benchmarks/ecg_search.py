"""ECG model/training search on DS1 only (groundwork for issue 10): which variants raise the
patient-wise 4-fold out-of-fold (OOF) macro-F1 over N, S, V, F?

    python benchmarks/ecg_search.py export [--beats data/ecg/beats.npz] [--out artifacts/ecg_search/ds1.npz]
    python benchmarks/ecg_search.py run --data artifacts/ecg_search/ds1.npz --out DIR
                                        [--budget-s 330] [--quick] [--variants a,b,...] [--params params.yaml]
    python benchmarks/ecg_search.py variants          # the variants, in priority order

`export` writes the DS1 rows of the prepared beats (float16 windows, RR features, labels, R-peak
sample, record, fold) to one small file a device call can carry; DS2 rows are never written (and
`run` refuses a file that holds any DS2 record). `run` trains every variant, in priority order, by
patient-wise cross-validation inside DS1: for each DS1 fold k a model trains on the other three folds
for a FIXED number of epochs (no early stopping, so the held-out fold chooses nothing) and predicts
fold k; the OOF predictions of the four folds are scored together (sklearn f1_score, macro over
N, S, V, F; Q beats train and count as errors when predicted as a scored class, never as a class).
DS2 is never read. Results are written after every variant to DIR/ecg_search.json and
DIR/ecg_search.md, so a killed run still leaves its table.

Baselines are the project's models (ecg.models lenet1d, dilated1d) with params.yaml's ecg_train
settings (channels, widths, dropout, augmentation, fit.epochs, fit.batch_size, fit.learning_rate) and
its focal loss (loss.focal: sqrt_inverse class weights, gamma). The focal loss's per-class alpha is
applied as a per-beat sample weight alpha[y] (the same loss for one-hot targets) so that one compiled
training step serves all four folds, whose class counts differ. Levers (issue 10): neighbouring-beat
context, richer RR features from the R-peak samples (no labels), class-balanced sampling (per-epoch
undersampling of N), cosine learning-rate decay with more epochs, a residual 1D CNN, and last label
smoothing and mixup. Then 3 seeds of the best variant, if the budget allows.

Speed: one model is compiled per variant and reused for the four folds (weights, optimizer state and
random-generator states are reset per fold from a fresh build with a fold-derived seed); every training
epoch is trimmed to whole batches and predictions are padded to whole batches, so that no second
shape is compiled. The first epoch of the first fold carries the compile time; `compile s` is that
epoch's time minus the median of the others. Before each variant the remaining budget is checked
against an estimate from the variants measured so far; one that would not fit is skipped (a cheaper
one later may still run), and one that runs past --budget-s + --grace-s is aborted between epochs.

Runs on any Keras 3 backend with keras + keras.ops + numpy (the GPU machine has JAX and no TensorFlow);
float32 policy throughout (ecg.models.BeatAugment draws its noise in float32).

Device run (carry ["artifacts/ecg_search", ".whl"]; .whl holds the keras/namex/optree wheels of
`bash benchmarks/gpu.sh --fetch-wheels`), from the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=$PWD:/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1 &&
    timeout 355 python3 benchmarks/ecg_search.py run --data artifacts/ecg_search/ds1.npz --out $OUT/ecg_search --budget-s 330

`--quick` (2,000 beats per fold, 1 epoch, the first 2 variants) checks the code path on a CPU in well
under a minute; its figures are not measurements.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout that is not pip-installed (GPU machine)
    sys.path.insert(0, str(ROOT))

from ecg.splits import DS1, DS2  # noqa: E402  (pure Python, no Keras)
from pipeline.io import atomic_path, write_json, write_text  # noqa: E402  (numpy only)

CLASSES = ("N", "S", "V", "F", "Q")
SCORE = (0, 1, 2, 3)  # N, S, V, F
FS = 360
EXPORT_KEYS = ("x", "rr", "y", "sample", "record", "fold")
MAX_EXPORT_BYTES = 60_000_000
DEFAULT_EXPORT = "artifacts/ecg_search/ds1.npz"  # /artifacts/ is git-ignored; carry this path
PREDICT_BATCH = 4096


class SearchError(RuntimeError):
    """Bad input for the search; the message names the file or key."""


# ============================================================================================ export
def export(beats_path: Path, out_path: Path, max_bytes: int = MAX_EXPORT_BYTES) -> dict:
    """Write the DS1 rows of `beats_path` (prepare_ecg's beats.npz) to `out_path`; DS2 rows never."""
    beats_path, out_path = Path(beats_path), Path(out_path)
    if not beats_path.is_file():
        raise SearchError(f"{beats_path}: not found (run the prepare_ecg stage first)")
    with np.load(beats_path) as npz:
        missing = [k for k in (*EXPORT_KEYS, "split") if k not in npz.files]
        if missing:
            raise SearchError(f"{beats_path}: missing key(s) {missing}; has {sorted(npz.files)}")
        arrays = {k: npz[k] for k in (*EXPORT_KEYS, "split")}
    n = len(arrays["y"])
    bad = [k for k, v in arrays.items() if len(v) != n]
    if bad:
        raise SearchError(f"{beats_path}: key(s) {bad} do not have {n} rows like 'y'")
    ds1 = arrays["split"] == 0  # prepare_ecg: 0 = DS1, 1 = DS2 (fold -1)
    records = arrays["record"].astype(np.int64)
    wrong = sorted(set(records[ds1].tolist()) - set(DS1))
    if wrong:
        raise SearchError(f"{beats_path}: rows with split 0 hold records {wrong}, which are not de Chazal DS1 records")
    if np.any(arrays["fold"][ds1] < 0):
        raise SearchError(f"{beats_path}: some DS1 rows have no patient-wise fold (fold < 0)")
    out = {k: arrays[k][ds1] for k in EXPORT_KEYS}
    out["x"] = out["x"].astype(np.float16)
    if not np.all(np.isfinite(out["x"])):
        raise SearchError(f"{beats_path}: 'x' does not fit float16 (overflow) in the DS1 rows")
    out["rr"] = out["rr"].astype(np.float32)
    out["y"] = out["y"].astype(np.int8)
    out["sample"] = out["sample"].astype(np.int64)
    out["record"] = out["record"].astype(np.int16)
    out["fold"] = out["fold"].astype(np.int8)
    # The guarantee this file exists for: not one DS2 beat leaves with it.
    assert not np.isin(out["record"], DS2).any(), "DS2 record in the DS1 export"
    assert np.isin(out["record"], DS1).all() and len(out["y"]) == int(ds1.sum())
    info = {"source": str(beats_path), "source_sha256": _sha256(beats_path), "rows": int(ds1.sum()),
            "ds2_rows_dropped": int((~ds1).sum()), "records": sorted({int(r) for r in out["record"]}),
            "folds": sorted({int(f) for f in out["fold"]})}
    out["info"] = np.array(json.dumps(info))  # 0-d unicode array: loads without pickle
    est = sum(v.nbytes for v in out.values())
    if est > max_bytes:
        raise SearchError(f"{out_path}: the DS1 export would take {est / 1e6:.1f} MB, over {max_bytes / 1e6:.0f} MB")
    with atomic_path(out_path, suffix=".npz") as tmp:
        np.savez(tmp, **out)
        size = tmp.stat().st_size
        if size > max_bytes:
            raise SearchError(f"{out_path}: {size / 1e6:.1f} MB, over {max_bytes / 1e6:.0f} MB; not written")
    info["bytes"] = int(size)
    return info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_ds1(path: Path) -> dict:
    """The exported DS1 arrays, rows sorted by (record, sample), windows as float32. Refuses DS2."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"{path}: not found (make it with `python benchmarks/ecg_search.py export`)")
    with np.load(path) as npz:
        missing = [k for k in EXPORT_KEYS if k not in npz.files]
        if missing:
            raise SearchError(f"{path}: missing key(s) {missing}; has {sorted(npz.files)}")
        a = {k: npz[k] for k in EXPORT_KEYS}
        if "split" in npz.files and np.any(npz["split"] != 0):
            raise SearchError(f"{path}: holds rows with split != 0 (DS2); export DS1 only")
    n = len(a["y"])
    if any(len(v) != n for v in a.values()) or a["x"].ndim != 2 or a["rr"].ndim != 2:
        raise SearchError(f"{path}: arrays of inconsistent shapes {({k: v.shape for k, v in a.items()})}")
    rec = a["record"].astype(np.int64)
    if np.isin(rec, DS2).any():
        raise SearchError(f"{path}: holds DS2 records {sorted(set(rec[np.isin(rec, DS2)].tolist()))}; refusing")
    if not np.isin(rec, DS1).all():
        raise SearchError(f"{path}: holds records outside DS1 {sorted(set(rec[~np.isin(rec, DS1)].tolist()))}")
    if np.any(a["fold"] < 0):
        raise SearchError(f"{path}: rows without a fold (fold < 0)")
    if np.any((a["y"] < 0) | (a["y"] >= len(CLASSES))):
        raise SearchError(f"{path}: labels outside 0..{len(CLASSES) - 1}")
    for r in np.unique(rec):
        if len(np.unique(a["fold"][rec == r])) != 1:
            raise SearchError(f"{path}: record {r} spans several folds (folds must be patient-wise)")
    order = np.lexsort((a["sample"], rec))
    a = {k: v[order] for k, v in a.items()}
    a["x"] = a["x"].astype(np.float32)
    a["rr"] = a["rr"].astype(np.float32)
    a["y"] = a["y"].astype(np.int64)
    a["record"] = a["record"].astype(np.int64)
    a["fold"] = a["fold"].astype(np.int64)
    return a


# ============================================================================================ splits
def fold_splits(fold: np.ndarray, record: np.ndarray, keep: np.ndarray | None = None):
    """Yield (k, train_idx, held_out_idx) for each DS1 fold k: train on the other folds, hold out k.

    `keep` (boolean mask) restricts both sides to a subset (quick mode). Raises if a record would sit on
    both sides (folds are patient-wise, so it never should)."""
    fold, record = np.asarray(fold), np.asarray(record)
    keep = np.ones(len(fold), bool) if keep is None else np.asarray(keep, bool)
    for k in sorted(int(f) for f in np.unique(fold[keep])):
        held = keep & (fold == k)
        train = keep & (fold != k)
        shared = set(record[held].tolist()) & set(record[train].tolist())
        if shared:
            raise AssertionError(f"records {sorted(shared)} are in held-out fold {k} and in its training folds")
        if not held.any() or not train.any():
            raise SearchError(f"fold {k}: empty training or held-out side")
        yield k, np.flatnonzero(train), np.flatnonzero(held)


# ========================================================================================= features
def neighbours(record: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row index of the previous and next beat of the same record (rows sorted by record, sample);
    the first/last beat of a record is its own neighbour."""
    n = len(record)
    idx = np.arange(n)
    prev, nxt = idx - 1, idx + 1
    first = np.r_[True, record[1:] != record[:-1]]
    last = np.r_[record[1:] != record[:-1], True]
    prev[first] = idx[first]
    nxt[last] = idx[last]
    return prev, nxt


RICH_RR = ("pre_s", "post_s", "post_over_pre", "pre_over_prev_pre", "pre_over_local_median",
           "post_over_local_median", "local_median_over_record", "pre_over_long_mean", "local_cv", "record_cv")


def rich_rr(sample: np.ndarray, record: np.ndarray, fs: int = FS) -> np.ndarray:
    """Rhythm features from the R-peak samples of each record (no labels), all positive (the model's
    head takes their log): absolute RR in s, the compensatory-pause ratio, prematurity against the
    previous RR, RR against the running median of +-32 beats and the mean of +-128 beats, the local
    median against the record's, local RR variability (CV over +-16 beats) and the record's RR CV.
    Intervals are clipped to 0.15..2.5 s (gaps where annotations stop are not RRs)."""
    from scipy.ndimage import median_filter, uniform_filter1d

    out = np.ones((len(sample), len(RICH_RR)), np.float32)
    for r in np.unique(record):
        idx = np.flatnonzero(record == r)
        if len(idx) < 3:
            continue
        d = np.clip(np.diff(sample[idx].astype(np.float64)) / fs, 0.15, 2.5)
        pre = np.r_[d[0], d]
        post = np.r_[d, d[-1]]
        prev_pre = np.r_[pre[0], pre[:-1]]
        med = float(np.median(d))
        loc_med = median_filter(pre, size=65, mode="nearest")
        long_mean = uniform_filter1d(pre, size=257, mode="nearest")
        m1 = uniform_filter1d(pre, size=33, mode="nearest")
        m2 = uniform_filter1d(pre * pre, size=33, mode="nearest")
        cv = np.sqrt(np.maximum(m2 - m1 * m1, 0.0)) / m1
        feats = [pre, post, post / pre, pre / prev_pre, pre / loc_med, post / loc_med, loc_med / med,
                 pre / long_mean, cv + 0.01, np.full(len(idx), d.std() / d.mean() + 0.01)]
        out[idx] = np.clip(np.stack(feats, axis=1), 0.01, 100.0)
    return out


def make_features(data: dict, channels) -> dict:
    """Everything any variant reads, computed once: the project's beat channels, neighbour channels
    (record_scaled of the previous / next beat), and the rich RR features."""
    from ecg.dataset import beat_channels

    beat = beat_channels(data["x"], data["record"], channels)  # (n, L, C): the project's channels
    scaled = beat_channels(data["x"], data["record"], ["record_scaled"])[..., 0]
    deviation = beat_channels(data["x"], data["record"], ["record_deviation"])[..., 0]
    prev, nxt = neighbours(data["record"])
    return {"beat": beat, "scaled": scaled, "deviation": deviation, "prev": prev, "next": nxt,
            "rr": data["rr"], "rich_rr": rich_rr(data["sample"], data["record"])}


def variant_inputs(v: "Variant", feats: dict) -> dict:
    """The model inputs {"beat": (n, L, C), "rr": (n, k)} of variant `v` for every row."""
    beat = feats["beat"]
    if v.context == "channels":
        beat = np.concatenate([beat, feats["scaled"][feats["prev"]][..., None],
                               feats["scaled"][feats["next"]][..., None]], axis=-1)
    elif v.context == "sequence":
        p, q = feats["prev"], feats["next"]
        seq = [np.concatenate([feats[c][p], feats[c], feats[c][q]], axis=1) for c in ("scaled", "deviation")]
        beat = np.stack(seq, axis=-1)
    rr = np.concatenate([feats["rr"], feats["rich_rr"]], axis=1) if v.rich_rr else feats["rr"]
    return {"beat": np.ascontiguousarray(beat, dtype=np.float32), "rr": np.ascontiguousarray(rr, dtype=np.float32)}


# ========================================================================================= variants
@dataclass(frozen=True)
class Variant:
    name: str
    desc: str
    model: str = "dilated1d"          # lenet1d | dilated1d (ecg.models) | resnet1d (this script)
    context: str = "none"             # none | channels (prev/next beat as 2 more channels) | sequence (prev|beat|next)
    rich_rr: bool = False             # + RICH_RR features
    balance: float | None = None      # fraction of the training N beats drawn afresh each epoch (None: all)
    epochs: int | None = None         # None: params ecg_train.fit.epochs
    schedule: str = "constant"        # constant | cosine (to 1% of the peak over all epochs)
    lr_mult: float = 1.0              # x params ecg_train.fit.learning_rate
    label_smoothing: float | None = None   # None: params loss.focal.label_smoothing
    mixup: float = 0.0                # Beta(a, a) mixup of beats, RR and targets; 0 = off


ALL = dict(context="channels", rich_rr=True, balance=0.25, epochs=24, schedule="cosine", lr_mult=2.0)
VARIANTS = [
    Variant("lenet1d_base", "project lenet1d, focal, params.yaml ecg_train (fixed epochs)", model="lenet1d"),
    Variant("dilated1d_base", "project dilated1d, focal, params.yaml ecg_train (fixed epochs)"),
    Variant("dil_ctx", "dilated1d + previous/next beat (record_scaled) as 2 more channels", context="channels"),
    Variant("dil_rr", "dilated1d + 10 rhythm features from R-peak samples (ratios, +-32/128-beat spans, CV)",
            rich_rr=True),
    Variant("dil_bal", "dilated1d, class-balanced epochs (25% of N drawn each epoch), 24 epochs", balance=0.25,
            epochs=24),
    Variant("dil_cos", "dilated1d, cosine lr decay from 2x lr, 24 epochs", schedule="cosine", lr_mult=2.0, epochs=24),
    Variant("resnet_base", "residual 1D CNN (stem + 4 basic blocks 24-64 filters, k7), project settings",
            model="resnet1d"),
    Variant("dil_all", "dilated1d + ctx + rich RR + balanced 25% N + cosine 2x lr, 24 epochs", **ALL),
    Variant("resnet_all", "resnet1d + ctx + rich RR + balanced 25% N + cosine 2x lr, 24 epochs", model="resnet1d",
            **ALL),
    Variant("lenet_all", "lenet1d + ctx + rich RR + balanced 25% N + cosine 2x lr, 24 epochs", model="lenet1d", **ALL),
    Variant("dil_seq_all", "dil_all with the context as a 3-beat sequence (prev, beat, next concatenated: 759 samples)",
            **{**ALL, "context": "sequence"}),
    Variant("dil_all_ls", "dil_all + label smoothing 0.1", label_smoothing=0.1, **ALL),
    Variant("dil_all_mixup", "dil_all + mixup (Beta 0.2)", mixup=0.2, **ALL),
]
SEEDS_AFTER = "lenet_all"  # the 3-seed runs of the best variant so far come after this one
EXTRA_SEEDS = (1, 2)       # seed 0 is the variant's own run


def variant_by_name(names) -> list[Variant]:
    table = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SearchError(f"unknown variant(s) {unknown}; valid: {list(table)}")
    return [table[n] for n in names]


# =========================================================================================== models
def resnet1d(window: int, n_rr: int, n_classes: int, *, channels: int = 1, filters=(24, 32, 48, 64),
             kernel: int = 7, dropout: float = 0.3, augment: dict | None = None):
    """Small residual 1D CNN: strided stem, one basic block per stage (stride 2 from the 2nd), global
    average+max pooling, then the project's head (log-RR dense + fc 64). Receptive field ~283 samples."""
    import keras
    from keras import layers

    from ecg import models

    (beat_in, rr_in), (beat, rr) = models._inputs(window, n_rr, channels, augment)
    x = layers.Conv1D(filters[0], 7, strides=2, padding="same", use_bias=False, name="stem_conv")(beat)
    x = layers.Activation("relu", name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for i, f in enumerate(filters):
        stride = 1 if i == 0 else 2
        y = layers.Conv1D(f, kernel, strides=stride, padding="same", use_bias=False, name=f"res{i}_conv1")(x)
        y = layers.Activation("relu", name=f"res{i}_relu1")(layers.BatchNormalization(name=f"res{i}_bn1")(y))
        y = layers.Conv1D(f, kernel, padding="same", use_bias=False, name=f"res{i}_conv2")(y)
        y = layers.BatchNormalization(name=f"res{i}_bn2")(y)
        if stride != 1 or x.shape[-1] != f:
            x = layers.Conv1D(f, 1, strides=stride, use_bias=False, name=f"res{i}_proj")(x)
            x = layers.BatchNormalization(name=f"res{i}_proj_bn")(x)
        x = layers.Activation("relu", name=f"res{i}_out")(layers.Add(name=f"res{i}_add")([x, y]))
    x = layers.Concatenate(name="pool")([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    out = models._head(x, rr, n_classes, (64,), dropout)
    return keras.Model([beat_in, rr_in], out, name="resnet1d")


def build_model(v: Variant, cfg, window: int, n_rr: int, channels: int):
    from ecg import models

    kwargs = cfg.model_kwargs(v.model if v.model != "resnet1d" else "dilated1d")
    kwargs["channels"] = channels
    if v.model == "resnet1d":
        return resnet1d(window, n_rr, len(CLASSES), channels=channels, dropout=kwargs["dropout"],
                        augment=kwargs["augment"])
    return models.build(v.model, window, n_rr, len(CLASSES), **kwargs)[0]


# ========================================================================================= training
def _derive(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class Abort(Exception):
    pass


def epoch_indices(train_idx: np.ndarray, y: np.ndarray, balance: float | None, batch: int,
                  rng: np.random.Generator) -> np.ndarray:
    """One epoch's training rows, shuffled: all of them, or all non-N beats plus a fresh random
    `balance` fraction of the N beats; trimmed to whole batches (one compiled shape)."""
    if balance is not None:
        n_idx = train_idx[y[train_idx] == 0]
        rest = train_idx[y[train_idx] != 0]
        take = rng.choice(n_idx, max(1, int(round(balance * len(n_idx)))), replace=False)
        train_idx = np.concatenate([rest, take])
    idx = rng.permutation(train_idx)
    whole = (len(idx) // batch) * batch
    return idx[:whole] if whole else idx


def expected_counts(train_idx: np.ndarray, y: np.ndarray, balance: float | None) -> np.ndarray:
    counts = np.bincount(y[train_idx], minlength=len(CLASSES)).astype(np.float64)
    if balance is not None:
        counts[0] *= balance
    return counts


class Trainer:
    """One compiled model per variant, reused across folds and seeds."""

    def __init__(self, v: Variant, cfg, inputs: dict, splits, y: np.ndarray, batch: int, lr: float, epochs: int):
        import keras

        from pipeline.losses import make_loss

        self.v, self.cfg, self.batch, self.epochs = v, cfg, batch, epochs
        self.window, self.channels = inputs["beat"].shape[1:]
        self.n_rr = inputs["rr"].shape[1]
        focal = cfg.loss.focal
        smoothing = focal.label_smoothing if v.label_smoothing is None else v.label_smoothing
        # alpha = ones: the class weights come per beat as sample weights (see module doc)
        loss = make_loss("focal", class_counts=np.ones(len(CLASSES)), alpha="none", gamma=focal.gamma,
                         label_smoothing=smoothing)
        if v.schedule == "cosine":
            min_steps = min(max(1, int(expected_counts(tr, y, v.balance).sum()) // batch) for _, tr, _ in splits)
            opt_lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * min_steps), alpha=0.01)
        elif v.schedule == "constant":
            opt_lr = lr
        else:
            raise SearchError(f"variant {v.name}: unknown schedule {v.schedule!r}")
        keras.utils.set_random_seed(0)
        self.model = self.build()
        jit = keras.backend.backend() == "jax"
        self.model.compile(optimizer=keras.optimizers.Adam(opt_lr), loss=loss, jit_compile=jit)
        self.model.optimizer.build(self.model.trainable_variables)
        self.opt_init = [np.array(var.numpy()) for var in self.model.optimizer.variables]
        self.params = int(self.model.count_params())

    def build(self):
        return build_model(self.v, self.cfg, self.window, self.n_rr, self.channels)

    def reset(self, seed: int, fold: int):
        """Fresh weights (a new build under a (seed, fold)-derived seed), zeroed optimizer, reseeded RNG states."""
        import keras

        keras.utils.set_random_seed(_derive(seed, fold))
        fresh = self.build()
        self.model.set_weights(fresh.get_weights())
        for var, value in zip(self.model.optimizer.variables, self.opt_init):
            var.assign(value)
        states = [var for var in self.model.variables if "seed_generator_state" in var.name]
        for i, var in enumerate(states):
            var.assign(np.array([_derive(seed, fold, i + 1), 0], dtype=str(var.dtype)))
        if int(np.asarray(self.model.optimizer.iterations)) != 0:
            raise AssertionError("optimizer state was not reset between folds")


def train_variant(v: Variant, cfg, feats: dict, data: dict, splits, args, seed: int, clock, trainer=None):
    """Train and predict the 4 folds of variant `v` at `seed`; returns (record, trainer)."""
    import keras

    from pipeline.losses import class_weights

    y = data["y"]
    t0 = time.monotonic()
    inputs = variant_inputs(v, feats)
    batch = args.batch_size or cfg.fit.batch_size
    lr = cfg.fit.learning_rate * v.lr_mult * math.sqrt(batch / cfg.fit.batch_size)
    epochs = 1 if args.quick else (v.epochs or cfg.fit.epochs)
    if trainer is None:
        trainer = Trainer(v, cfg, inputs, splits, y, batch, lr, epochs)
    model = trainer.model
    oof = np.full((len(y), len(CLASSES)), np.nan, np.float32)
    epoch_times, epoch_beats, predict_times, per_fold = [], [], [], {}
    for k, tr, te in splits:
        assert not set(data["record"][tr].tolist()) & set(data["record"][te].tolist())
        trainer.reset(seed, k)
        counts = expected_counts(tr, y, v.balance)
        scheme = cfg.loss.focal.alpha
        weights = class_weights(counts, list(scheme) if isinstance(scheme, tuple) else scheme).astype(np.float32)
        rng = np.random.default_rng([seed, k, 7])
        fold_times = []
        for epoch in range(epochs):
            if clock.elapsed() > args.budget_s + args.grace_s:
                raise Abort(f"{v.name} seed {seed}: past budget {args.budget_s} + grace {args.grace_s} s at fold {k} "
                            f"epoch {epoch + 1}")
            idx = epoch_indices(tr, y, v.balance, batch, rng)
            xb = {"beat": inputs["beat"][idx], "rr": inputs["rr"][idx]}
            yb = keras.utils.to_categorical(y[idx], len(CLASSES)).astype(np.float32)
            sw = weights[y[idx]]
            if v.mixup:
                lam = rng.beta(v.mixup, v.mixup, len(idx)).astype(np.float32)
                lam = np.maximum(lam, 1 - lam)  # the first beat dominates
                p = rng.permutation(len(idx))
                xb = {"beat": lam[:, None, None] * xb["beat"] + (1 - lam[:, None, None]) * xb["beat"][p],
                      "rr": lam[:, None] * xb["rr"] + (1 - lam[:, None]) * xb["rr"][p]}
                yb = lam[:, None] * yb + (1 - lam[:, None]) * yb[p]
                sw = lam * sw + (1 - lam) * sw[p]
            t = time.monotonic()
            model.fit(xb, yb, sample_weight=sw, batch_size=batch, epochs=1, shuffle=False, verbose=0)
            epoch_times.append(time.monotonic() - t)
            epoch_beats.append(len(idx))
            fold_times.append(round(epoch_times[-1], 3))
        t = time.monotonic()
        oof[te] = predict_padded(model, {"beat": inputs["beat"][te], "rr": inputs["rr"][te]}, args.predict_batch)
        predict_times.append(time.monotonic() - t)
        per_fold[str(k)] = {"train_beats": int(len(tr)), "held_out_beats": int(len(te)),
                            "held_out_records": sorted({int(r) for r in data["record"][te]}),
                            "macro_f1": scores(y[te], oof[te])["macro_f1"], "epoch_s": fold_times,
                            "predict_s": round(predict_times[-1], 3)}
    wall = time.monotonic() - t0
    scored = np.flatnonzero(~np.isnan(oof[:, 0]))
    if len(scored) != len(splits_rows(splits)):
        raise AssertionError(f"{v.name}: OOF predictions missing for some held-out rows")
    if not np.all(np.isfinite(oof[scored])):
        raise SearchError(f"{v.name} seed {seed}: non-finite predictions (training diverged)")
    s = scores(y[scored], oof[scored])
    later = epoch_times[1:] if len(epoch_times) > 1 else epoch_times
    per_beat = np.median(np.asarray(later) / np.asarray(epoch_beats[1:] if len(epoch_times) > 1 else epoch_beats))
    compile_s = max(0.0, epoch_times[0] - per_beat * epoch_beats[0]) if len(epoch_times) > 1 else None
    train_time = sum(later)
    beats_s = sum(epoch_beats[1:] if len(epoch_times) > 1 else epoch_beats) / max(train_time, 1e-9)
    record = {"variant": v.name, "description": v.desc, "seed": seed, "status": "done", **s,
              "epochs": epochs, "batch_size": batch, "learning_rate": lr, "params": trainer.params,
              "inputs": {"beat": list(inputs["beat"].shape[1:]), "rr": int(inputs["rr"].shape[1])},
              "wall_s": round(wall, 2), "compile_s": None if compile_s is None else round(compile_s, 2),
              "first_epoch_s": round(epoch_times[0], 3), "median_epoch_s": round(float(np.median(later)), 3),
              "train_beats_per_s": round(beats_s, 1), "predict_s": round(sum(predict_times), 2),
              "first_predict_s": round(predict_times[0], 3), "beat_epochs": int(sum(epoch_beats)),
              "folds": per_fold, "config": asdict(v)}
    if args.save_oof:
        np.savez_compressed(Path(args.out) / f"oof_{v.name}_s{seed}.npz", probs=oof[scored].astype(np.float16),
                            y=y[scored].astype(np.int8), record=data["record"][scored].astype(np.int16),
                            sample=data["sample"][scored].astype(np.int32))
    return record, trainer


def splits_rows(splits) -> np.ndarray:
    return np.concatenate([te for _, _, te in splits])


def predict_padded(model, x: dict, batch: int) -> np.ndarray:
    """model.predict on inputs padded to whole batches (one compiled shape); padding rows dropped."""
    n = len(x["rr"])
    batch = min(batch, max(n, 1)) if n < batch else batch
    pad = (-n) % batch
    if pad:
        x = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in x.items()}
    return np.asarray(model.predict(x, batch_size=batch, verbose=0), np.float32)[:n]


def scores(y: np.ndarray, probs: np.ndarray) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score

    pred = probs.argmax(axis=1)
    per = f1_score(y, pred, labels=list(SCORE), average=None, zero_division=0)
    return {"macro_f1": float(np.mean(per)), **{f"f1_{CLASSES[c]}": float(per[i]) for i, c in enumerate(SCORE)},
            "confusion": confusion_matrix(y, pred, labels=list(range(len(CLASSES)))).tolist()}


# ============================================================================================ output
def machine_info() -> dict:
    import keras

    info = {"keras": keras.__version__, "backend": keras.backend.backend(), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        if info["backend"] == "jax":
            import jax

            info["jax"] = jax.__version__
            info["devices"] = [f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices()]
        elif info["backend"] == "tensorflow":
            import tensorflow as tf

            info["tensorflow"] = tf.__version__
            info["devices"] = [d.name for d in tf.config.list_physical_devices()]
        elif info["backend"] == "torch":
            import torch

            info["torch"] = torch.__version__
            info["devices"] = ["cuda:" + torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
    except Exception as exc:  # informative only
        info["devices"] = [f"unknown ({type(exc).__name__}: {exc})"]
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def _fmt(x, digits=4):
    return "" if x is None else f"{x:.{digits}f}"


def write_outputs(out: Path, state: dict) -> None:
    write_json(out / "ecg_search.json", state)
    m = state["machine"]
    lines = [f"# ECG search on DS1 ({state['mode']}): patient-wise {state['data']['n_folds']}-fold out-of-fold, "
             f"DS2 never read",
             "",
             f"{state['started']} UTC; keras {m['keras']} on {m['backend']}"
             f"{(' ' + m['jax']) if 'jax' in m else ''}; devices {', '.join(m.get('devices') or [])}"
             f"{('; ' + m['nvidia_smi']) if m.get('nvidia_smi') else ''}",
             f"data: {state['data']['path']} ({state['data']['rows']} DS1 beats, class counts "
             f"{state['data']['class_counts']}, sha256 {state['data']['sha256'][:12]}); params: {state['params_file']}",
             f"budget {state['budget_s']} s; elapsed {state['elapsed_s']:.0f} s; {state['status']}",
             "",
             "Macro-F1 over N, S, V, F of the pooled out-of-fold predictions (sklearn f1_score); fixed epochs, no "
             "early stopping. compile s = first epoch minus the median epoch (per beat); beats/s = training beats "
             "of the epochs after the first / their time.",
             "",
             "| variant | description | OOF macro-F1 | S F1 | V F1 | F F1 | epochs | wall s | compile s | beats/s | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in state["variants"]:
        if r.get("seed", 0) != 0:
            continue
        lines.append(f"| {r['variant']} | {r['description'].replace('|', '/')} | {_fmt(r.get('macro_f1'))} | {_fmt(r.get('f1_S'), 3)} | "
                     f"{_fmt(r.get('f1_V'), 3)} | {_fmt(r.get('f1_F'), 3)} | {r.get('epochs', '')} | "
                     f"{_fmt(r.get('wall_s'), 1)} | {_fmt(r.get('compile_s'), 1)} | "
                     f"{'' if r.get('train_beats_per_s') is None else format(int(r['train_beats_per_s']), ',')} | "
                     f"{r['status']} |")
    if state.get("seeds"):
        sd = state["seeds"]
        lines += ["", f"## Seeds of {sd['variant']} (best seed-0 OOF macro-F1 at the time it was chosen)", "",
                  "| seeds | macro-F1 mean | sd | min | max | S F1 mean | V F1 mean | F F1 mean |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {sd['seeds']} | {_fmt(sd['mean'])} | {_fmt(sd['sd'])} | {_fmt(sd['min'])} | {_fmt(sd['max'])} | "
                  f"{_fmt(sd['f1_S_mean'], 3)} | {_fmt(sd['f1_V_mean'], 3)} | {_fmt(sd['f1_F_mean'], 3)} |"]
    write_text(out / "ecg_search.md", "\n".join(lines) + "\n")


def seed_summary(name: str, runs: list) -> dict:
    f = np.array([r["macro_f1"] for r in runs])
    return {"variant": name, "seeds": [r["seed"] for r in runs], "macro_f1": f.tolist(), "mean": float(f.mean()),
            "sd": float(f.std(ddof=1)) if len(f) > 1 else None, "min": float(f.min()), "max": float(f.max()),
            **{f"f1_{c}_mean": float(np.mean([r[f"f1_{c}"] for r in runs])) for c in ("S", "V", "F")}}


# =============================================================================================== run
class Clock:
    def __init__(self, start: float):
        self.start = start

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def estimate_s(v: Variant, beat_epochs: float, measured: list, default_compile: float) -> float | None:
    """Seconds variant `v` should take, from the variants measured so far; None when nothing is measured."""
    done = [r for r in measured if r["status"] == "done" and r.get("train_beats_per_s")]
    if not done:
        return None
    compiles = [r["compile_s"] + r["first_predict_s"] for r in done if r.get("compile_s") is not None]
    compile_est = max(compiles) if compiles else default_compile
    same = [r for r in done if r["config"]["model"] == v.model and r["config"]["context"] == v.context]
    if same:
        rate = same[-1]["train_beats_per_s"]
    else:
        rate = min(r["train_beats_per_s"] for r in done) / (3.0 if v.context == "sequence" or v.model == "resnet1d"
                                                             else 1.5)
    return compile_est + beat_epochs / rate + 2.0


def planned_beat_epochs(v: Variant, cfg, y, splits, args) -> float:
    epochs = 1 if args.quick else (v.epochs or cfg.fit.epochs)
    total = 0.0
    for _, tr, _ in splits:
        total += expected_counts(tr, y, v.balance).sum() * epochs
    return total


def run(args) -> int:
    start = time.monotonic()
    clock = Clock(start)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from ecg import train_config

    keras.config.set_dtype_policy("float32")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(f"== machine: keras {machine['keras']} backend {machine['backend']} "
          f"{machine.get('jax', machine.get('tensorflow', ''))}; devices {machine.get('devices')}; "
          f"nvidia-smi: {machine.get('nvidia_smi')}; python {machine['python']}; {machine['cpus']} CPUs", flush=True)
    cfg = train_config.load(args.params)
    data = load_ds1(Path(args.data))
    keep = None
    if args.quick:
        rng = np.random.default_rng(0)
        keep = np.zeros(len(data["y"]), bool)
        for f in np.unique(data["fold"]):
            rows = np.flatnonzero(data["fold"] == f)
            keep[rng.choice(rows, min(len(rows), args.quick_beats), replace=False)] = True
    splits = list(fold_splits(data["fold"], data["record"], keep))
    t = time.monotonic()
    feats = make_features(data, cfg.channels)
    print(f"== data: {args.data}: {len(data['y'])} DS1 beats, {len(set(data['record'].tolist()))} records, folds "
          f"{[k for k, _, _ in splits]}, class counts {np.bincount(data['y'], minlength=5).tolist()}; features "
          f"{time.monotonic() - t:.1f} s; elapsed {clock.elapsed():.1f} s", flush=True)
    names = [s for s in args.variants.split(",") if s] if args.variants else None
    plan = variant_by_name(names) if names else (VARIANTS[:2] if args.quick else VARIANTS)
    state = {"mode": "quick (NOT a measurement: tiny subset, 1 epoch)" if args.quick else "full",
             "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": machine,
             "params_file": str(args.params), "budget_s": args.budget_s, "elapsed_s": clock.elapsed(),
             "status": "running",
             "data": {"path": str(args.data), "sha256": _sha256(Path(args.data)), "rows": int(len(data["y"])),
                      "n_folds": len(splits), "class_counts": np.bincount(data["y"], minlength=5).tolist(),
                      "used_rows": int(sum(len(te) for _, _, te in splits)),
                      "folds": {str(k): sorted({int(r) for r in data["record"][te]}) for k, _, te in splits}},
             "ecg_train": {"channels": list(cfg.channels), "fit": asdict(cfg.fit),
                           "augment": None if cfg.augment is None else asdict(cfg.augment),
                           "focal": asdict(cfg.loss.focal)},
             "args": {k: v for k, v in vars(args).items() if k != "func"}, "variants": [], "seeds": None}
    write_outputs(out, state)
    trainers: dict = {}
    default_compile = 20.0

    def attempt(v: Variant, seed: int) -> dict | None:
        est = estimate_s(v, planned_beat_epochs(v, cfg, data["y"], splits, args), state["variants"], default_compile)
        if seed != 0 and v.name in trainers:  # compiled already: no compile in the estimate
            prior = [r for r in state["variants"] if r["variant"] == v.name and r["status"] == "done"]
            est = prior[-1]["wall_s"] - (prior[-1]["compile_s"] or 0) - prior[-1]["first_predict_s"] + 1 if prior else est
        left = args.budget_s - clock.elapsed()
        if est is not None and est > left:
            print(f"-- skip {v.name} seed {seed}: estimated {est:.0f} s, {left:.0f} s of the budget left", flush=True)
            rec = {"variant": v.name, "description": v.desc, "seed": seed, "status": f"skipped (est {est:.0f} s > "
                   f"{max(left, 0):.0f} s left)", "config": asdict(v)}
            state["variants"].append(rec)
            return None
        if left <= 0:
            rec = {"variant": v.name, "description": v.desc, "seed": seed, "status": "skipped (budget spent)",
                   "config": asdict(v)}
            state["variants"].append(rec)
            return None
        print(f"-- {v.name} seed {seed}: {v.desc}" + (f" (estimated {est:.0f} s)" if est else ""), flush=True)
        try:
            rec, trainers[v.name] = train_variant(v, cfg, feats, data, splits, args, seed, clock, trainers.get(v.name))
        except Abort as exc:
            print(f"-- aborted: {exc}", flush=True)
            rec = {"variant": v.name, "description": v.desc, "seed": seed, "status": "aborted (time)",
                   "config": asdict(v)}
        except Exception as exc:  # one broken variant must not cost the others
            import traceback

            traceback.print_exc()
            rec = {"variant": v.name, "description": v.desc, "seed": seed,
                   "status": f"failed: {type(exc).__name__}: {str(exc)[:200]}", "config": asdict(v)}
        state["variants"].append(rec)
        if rec["status"] == "done":
            print(f"   {v.name} seed {seed}: OOF macro-F1 {rec['macro_f1']:.4f} (S {rec['f1_S']:.3f} V {rec['f1_V']:.3f} "
                  f"F {rec['f1_F']:.3f}); {rec['epochs']} epochs, batch {rec['batch_size']}, lr {rec['learning_rate']:.2g}, "
                  f"{rec['params']:,} params; wall {rec['wall_s']:.1f} s, compile ~{_fmt(rec['compile_s'], 1)} s, "
                  f"first predict {rec['first_predict_s']:.2f} s, {rec['train_beats_per_s']:,.0f} beats/s; elapsed "
                  f"{clock.elapsed():.0f} / {args.budget_s} s", flush=True)
        return rec

    def run_seeds():
        done = [r for r in state["variants"] if r["status"] == "done" and r["seed"] == 0]
        if not done or args.no_seeds:
            return
        best = max(done, key=lambda r: r["macro_f1"])
        v = variant_by_name([best["variant"]])[0]
        runs = [best]
        for s in EXTRA_SEEDS:
            rec = attempt(v, s)
            if rec is not None and rec["status"] == "done":
                runs.append(rec)
            state["seeds"] = seed_summary(v.name, runs)
            state["elapsed_s"] = clock.elapsed()
            write_outputs(out, state)

    seeds_done = False
    for v in plan:
        if clock.elapsed() >= args.budget_s:
            state["variants"].append({"variant": v.name, "description": v.desc, "seed": 0,
                                      "status": "skipped (budget spent)", "config": asdict(v)})
        else:
            attempt(v, 0)
        state["elapsed_s"] = clock.elapsed()
        write_outputs(out, state)
        if v.name == SEEDS_AFTER and not args.quick:
            run_seeds()
            seeds_done = True
    if not seeds_done and not args.quick and clock.elapsed() < args.budget_s:
        run_seeds()
    state["status"] = "finished"
    state["elapsed_s"] = clock.elapsed()
    write_outputs(out, state)
    done = [r for r in state["variants"] if r["status"] == "done"]
    print(f"== finished in {clock.elapsed():.0f} s: {len(done)} runs done; table {out / 'ecg_search.md'}", flush=True)
    return 0 if done else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write the DS1 rows of beats.npz to a small carryable file")
    ex.add_argument("--beats", default="data/ecg/beats.npz")
    ex.add_argument("--out", default=DEFAULT_EXPORT)
    ex.add_argument("--max-mb", type=float, default=MAX_EXPORT_BYTES / 1e6)
    rn = sub.add_parser("run", help="train the variants, 4-fold out-of-fold on DS1")
    rn.add_argument("--data", default=DEFAULT_EXPORT)
    rn.add_argument("--out", required=True)
    rn.add_argument("--params", default="params.yaml", help="its ecg_train section gives the baseline settings")
    rn.add_argument("--budget-s", type=float, default=330.0, help="no variant starts that would end after this")
    rn.add_argument("--grace-s", type=float, default=20.0, help="a variant still running at budget + grace is aborted")
    rn.add_argument("--variants", default=None, help="comma-separated names (default: all, in priority order)")
    rn.add_argument("--quick", action="store_true", help="code-path check: few beats per fold, 1 epoch, 2 variants")
    rn.add_argument("--quick-beats", type=int, default=2000, help="beats per fold in --quick")
    rn.add_argument("--batch-size", type=int, default=None, help="override ecg_train.fit.batch_size "
                    "(learning rate scaled by sqrt of the ratio)")
    rn.add_argument("--predict-batch", type=int, default=PREDICT_BATCH)
    rn.add_argument("--no-seeds", action="store_true", help="skip the extra seeds of the best variant")
    rn.add_argument("--save-oof", action=argparse.BooleanOptionalAction, default=True,
                    help="write each run's out-of-fold probabilities to OUT/oof_<variant>_s<seed>.npz")
    sub.add_parser("variants", help="list the variants in priority order")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "export":
            info = export(Path(args.beats), Path(args.out), int(args.max_mb * 1e6))
            print(f"wrote {args.out}: {info['rows']} DS1 beats ({info['bytes'] / 1e6:.1f} MB), records {info['records']}, "
                  f"folds {info['folds']}; {info['ds2_rows_dropped']} DS2 rows left out")
            return 0
        if args.cmd == "variants":
            for i, v in enumerate(VARIANTS, 1):
                print(f"{i:2d}. {v.name:15s} {v.desc}")
            return 0
        return run(args)
    except SearchError as exc:
        print(f"ecg_search: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
