"""Read the prepared beats and cut them into train / validation / test by record."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import sha256_file


@dataclass(frozen=True)
class Beats:
    x: dict  # {"beat": (n, L, 1), "rr": (n, k)}
    y: np.ndarray
    record: np.ndarray
    sample: np.ndarray


def load(data_dir: Path | str = "data/ecg"):
    data_dir = Path(data_dir)
    for name in ("beats.npz", "meta.json"):
        if not (data_dir / name).exists():
            raise FileNotFoundError(f"{data_dir / name}: missing; run the prepare_ecg stage first")
    meta = json.loads((data_dir / "meta.json").read_text())
    with np.load(data_dir / "beats.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta["beats_sha256"] = sha256_file(data_dir / "beats.npz")
    return arrays, meta


CHANNELS = ("centred", "record_scaled", "record_deviation")


def beat_channels(x: np.ndarray, record: np.ndarray, names) -> np.ndarray:
    """Model input channels from raw windows (n, L) -> (n, L, len(names)).

    centred: window minus its mean (mV). record_scaled: centred / the record's median
    peak-to-peak amplitude (removes gain differences between patients). record_deviation:
    record_scaled minus the record's median beat (what sets this beat apart from the patient's
    usual beat). Record statistics use no labels, only the record's own signal.
    """
    unknown = [n for n in names if n not in CHANNELS]
    if unknown or not names:
        raise ValueError(f"beat channels {list(names)}: unknown {unknown}; valid: {list(CHANNELS)}")
    centred = x - x.mean(axis=1, keepdims=True)
    scaled, deviation = np.empty_like(centred), np.empty_like(centred)
    for r in np.unique(record):
        m = record == r
        scaled[m] = centred[m] / max(float(np.median(np.ptp(centred[m], axis=1))), 1e-6)
        deviation[m] = scaled[m] - np.median(scaled[m], axis=0)
    table = {"centred": centred, "record_scaled": scaled, "record_deviation": deviation}
    return np.stack([table[n] for n in names], axis=-1).astype(np.float32)


def load_inputs(data_dir: Path | str, channels):
    """Prepared arrays with the model's beat channels computed once for every beat."""
    arrays, meta = load(data_dir)
    arrays["beat"] = beat_channels(arrays["x"], arrays["record"], channels)
    meta["channels"] = list(channels)
    return arrays, meta


def score_indices(meta: dict) -> tuple[int, ...]:
    """Indices of the classes scored in macro-F1, as prepare wrote them to meta.json."""
    if "score_classes" not in meta:
        raise KeyError("meta.json has no 'score_classes'; rerun the prepare_ecg stage")
    unknown = [c for c in meta["score_classes"] if c not in meta["classes"]]
    if unknown:
        raise ValueError(f"meta.json: score_classes {unknown} are not among classes {meta['classes']}")
    return tuple(meta["classes"].index(c) for c in meta["score_classes"])


def select(arrays: dict, mask: np.ndarray, limit: int | None = None, seed: int = 0) -> Beats:
    idx = np.flatnonzero(mask)
    if limit is not None and len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, limit, replace=False))
    return Beats({"beat": arrays["beat"][idx], "rr": arrays["rr"][idx]},
                 arrays["y"][idx].astype(np.int64), arrays["record"][idx], arrays["sample"][idx])


def cv_folds(arrays: dict, val_folds) -> list[int]:
    """The DS1 folds to hold out in turn: 'all' or an explicit list."""
    present = sorted(int(f) for f in np.unique(arrays["fold"][arrays["split"] == 0]))
    if val_folds == "all":
        return present
    missing = sorted(set(val_folds) - set(present))
    if missing:
        raise ValueError(f"val_folds {missing} not among the prepared DS1 folds {present}")
    return list(val_folds)


def splits(arrays: dict, val_folds, limit: int | None = None, seed: int = 0):
    """train = DS1 outside the validation folds, val = DS1 validation folds, test = DS2."""
    is_val = np.isin(arrays["fold"], list(val_folds)) & (arrays["split"] == 0)
    train = select(arrays, (arrays["split"] == 0) & ~is_val, limit, seed)
    val = select(arrays, is_val, limit, seed)
    test = select(arrays, arrays["split"] == 1, limit, seed)
    overlap = (set(train.record) & set(val.record)) | (set(test.record) & (set(train.record) | set(val.record)))
    if overlap:
        raise AssertionError(f"records {sorted(overlap)} fall in two splits")
    if len(train.y) == 0 or len(val.y) == 0:
        raise ValueError(f"validation folds {list(val_folds)} leave an empty train or validation set")
    return train, val, test
