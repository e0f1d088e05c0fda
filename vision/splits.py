"""Turn whatever splits a source has into shuffled train/val/test arrays.

Every split is shuffled with a seeded generator (file order is never trusted:
the PneumoniaMNIST mirror's train split ends with 826 rows of class 0).
Missing val/test splits are carved from the front of the shuffled train (or
"all") split by fraction; carving is random, not stratified.  ``limit`` then
keeps at most that many rows of each split (a smoke-run subset).  An empty
split is an error naming the source and the split: nothing downstream can use it.
"""
from __future__ import annotations

import numpy as np

from vision.readers import SPLITS, shuffle_split

ALIASES = {"valid": "val", "validation": "val", "training": "train", "testing": "test"}
ORDER = ("all",) + SPLITS


def finish_splits(splits: dict, *, seed: int, limit: int | None = None,
                  val_fraction: float = 0.1, test_fraction: float = 0.2, where: str = ""
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return {"train","val","test": (images, labels)} shuffled, carved, limited."""
    named = {}
    for name, arrays in splits.items():
        key = ALIASES.get(name.lower(), name.lower())
        if key not in ORDER or key in named:
            raise ValueError(f"{where}: split '{name}' is not one of train/val/test "
                             f"(or a tree without a split level)")
        named[key] = arrays
    if "all" in named and len(named) > 1:
        raise ValueError(f"{where}: mixes a split-less layout with splits {sorted(named)}")
    shuffled = {k: shuffle_split(*v, seed=[seed, ORDER.index(k)]) for k, v in named.items()}
    pool_key = "all" if "all" in shuffled else "train"
    if pool_key not in shuffled:
        raise ValueError(f"{where}: no train split (found {sorted(named)})")
    x, y = shuffled.pop(pool_key)
    total = len(x)
    for key, frac in (("test", test_fraction), ("val", val_fraction)):
        if key not in shuffled:
            n = int(round(frac * total))
            shuffled[key] = (x[:n], y[:n])
            x, y = x[n:], y[n:]
    shuffled["train"] = (x, y)
    if limit is not None:
        shuffled = {k: (a[:limit], b[:limit]) for k, (a, b) in shuffled.items()}
    counts = {k: len(shuffled[k][1]) for k in SPLITS}
    empty = [k for k, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"{where}: split '{empty[0]}' is empty (rows per split: {counts})")
    return {k: shuffled[k] for k in SPLITS}
