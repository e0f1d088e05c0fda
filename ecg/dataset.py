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


def select(arrays: dict, mask: np.ndarray, limit: int | None = None, seed: int = 0) -> Beats:
    idx = np.flatnonzero(mask)
    if limit is not None and len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, limit, replace=False))
    return Beats({"beat": arrays["x"][idx, :, None], "rr": arrays["rr"][idx]},
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
