"""Record-level splits: de Chazal 2004 DS1/DS2 and patient-wise folds inside DS1."""
from __future__ import annotations

import numpy as np

# de Chazal, O'Dwyer, Reilly (2004), IEEE TBME 51(7). Paced records 102, 104, 107, 217 excluded.
DS1 = (101, 106, 108, 109, 112, 114, 115, 116, 118, 119, 122, 124, 201, 203, 205, 207, 208, 209, 215, 220, 223, 230)
DS2 = (100, 103, 105, 111, 113, 117, 121, 123, 200, 202, 210, 212, 213, 214, 219, 221, 222, 228, 231, 232, 233, 234)
PACED = (102, 104, 107, 217)


def dechazal_split(records) -> dict[str, list[int]]:
    """DS1 and DS2 restricted to the records present; paced and unlisted records go nowhere."""
    present = {int(r) for r in records}
    return {"DS1": [r for r in DS1 if r in present], "DS2": [r for r in DS2 if r in present]}


def balanced_folds(counts: dict[int, np.ndarray], n_folds: int) -> dict[int, list[int]]:
    """Assign whole records to folds so each fold gets a similar share of every class.

    Records are placed greedily, those richest in rare classes first, each into the fold
    where it adds least to the sum over classes of squared per-class shares (shares are
    relative to each class total, so N, S, V and F weigh alike). Deterministic.
    """
    if len(counts) < n_folds:
        raise ValueError(f"{len(counts)} records cannot fill {n_folds} folds")
    totals = np.maximum(sum(counts.values()), 1).astype(float)
    rarity = 1.0 / totals
    order = sorted(counts, key=lambda r: (-(counts[r] * rarity).max(), r))
    load = np.zeros((n_folds, len(totals)))
    sizes = np.zeros(n_folds, dtype=int)
    folds: dict[int, list[int]] = {k: [] for k in range(n_folds)}
    for rec in order:
        share = counts[rec] / totals
        cost = (load * share).sum(axis=1) + 1e-9 * sizes  # no BLAS: same bits on every CPU
        k = int(np.argmin(cost))
        load[k] += share
        sizes[k] += 1
        folds[k].append(rec)
    return {k: sorted(v) for k, v in folds.items()}
