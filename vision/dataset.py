"""Read an ingested image set (data/vision/<name>.npz + .json) as train / val / test splits."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import sha256_file

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Images:
    x: np.ndarray      # uint8 (n, H, W, C), raw 0..255
    y: np.ndarray      # int64 (n,)
    index: np.ndarray  # row in the split of the .npz: each image is its own bootstrap group


def load(data_dir: Path | str, name: str, limit: int | None = None) -> tuple[dict[str, Images], dict]:
    """{split: Images}, meta (the ingest json plus `sha256` of the .npz).

    ``limit`` keeps the first rows of each split (ingest already shuffled them with its seed).
    """
    stem = Path(data_dir) / name
    for suffix in (".npz", ".json"):
        if not stem.with_suffix(suffix).exists():
            raise FileNotFoundError(f"{stem.with_suffix(suffix)}: missing; run the stage that ingests "
                                    f"'{name}' (ingest_images, or ingest_source_images for source_*)")
    meta = json.loads(stem.with_suffix(".json").read_text())
    meta["sha256"] = sha256_file(stem.with_suffix(".npz"))
    splits = {}
    with np.load(stem.with_suffix(".npz")) as npz:
        for s in SPLITS:
            x, y = npz[f"x_{s}"], npz[f"y_{s}"].astype(np.int64)
            n = len(y) if limit is None else min(limit, len(y))
            splits[s] = Images(x[:n], y[:n], np.arange(n))
    if len(splits["train"].y) == 0 or len(splits["val"].y) == 0:
        raise ValueError(f"{stem}.npz: empty train or validation split")
    return splits, meta
