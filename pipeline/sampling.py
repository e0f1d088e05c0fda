"""Per-epoch row samplers and learning-rate schedules for `pipeline.training.fit(sampler=, schedule=)`.

Both are pure functions of the epoch (and the seed), so an interrupted run that resumes at epoch e draws the
same rows and follows the same rate curve as one that never stopped. Schedules are per epoch (see
pipeline.training.LearningRateSetter for why not per batch).
"""
from __future__ import annotations

import math

import numpy as np

SAMPLER_SALT = 0x5A3D  # keeps the sampler's stream apart from the shuffle's (epoch_order uses [seed, epoch])


class MajorityUndersampler:
    """Every row of the other classes, plus a fresh random `keep` fraction of the `majority` class's rows each
    epoch (drawn without replacement from a Generator seeded with (seed, epoch)). Rows come back sorted;
    `fit` shuffles them."""

    def __init__(self, y, majority: int, keep: float):
        y = np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"MajorityUndersampler: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
            raise ValueError(f"MajorityUndersampler: keep must be a fraction in (0, 1], got {keep!r}")
        self.majority, self.keep = int(majority), float(keep)
        self.majority_rows = np.flatnonzero(y == self.majority)
        if len(self.majority_rows) == 0:
            raise ValueError(f"MajorityUndersampler: majority class {self.majority} has no training rows "
                             f"(labels present: {sorted(set(y.tolist()))})")
        self.other_rows = np.flatnonzero(y != self.majority)
        self.take = max(1, int(round(self.keep * len(self.majority_rows))))
        self.n_classes = int(y.max()) + 1
        self._counts = np.bincount(y, minlength=self.n_classes)

    def __call__(self, seed: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), SAMPLER_SALT])
        drawn = rng.choice(self.majority_rows, self.take, replace=False)
        return np.sort(np.concatenate([self.other_rows, drawn]))

    def epoch_counts(self, n_classes: int | None = None) -> np.ndarray:
        """Rows per class in every epoch (the same each epoch)."""
        counts = np.zeros(max(n_classes or 0, self.n_classes), np.int64)
        counts[: self.n_classes] = self._counts
        counts[self.majority] = self.take
        return counts

    def __len__(self) -> int:
        return len(self.other_rows) + self.take

    def __repr__(self) -> str:
        return f"MajorityUndersampler(majority={self.majority}, keep={self.keep}, rows per epoch={len(self)})"


class CosineSchedule:
    """Cosine decay over `epochs` epochs: epoch e (0-based) gets peak * (final + (1 - final) * (1 + cos(pi e /
    epochs)) / 2), so epoch 0 trains at `peak` and the rate reaches `final * peak` at e = epochs (flat after)."""

    def __init__(self, peak: float, epochs: int, final: float = 0.01):
        if not (isinstance(peak, (int, float)) and math.isfinite(peak) and peak > 0):
            raise ValueError(f"CosineSchedule: peak learning rate must be positive, got {peak!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"CosineSchedule: epochs must be an integer >= 1, got {epochs!r}")
        if not 0 < final <= 1:
            raise ValueError(f"CosineSchedule: final must be a fraction in (0, 1], got {final!r}")
        self.peak, self.epochs, self.final = float(peak), epochs, float(final)

    def __call__(self, t: float) -> float:
        frac = min(max(float(t) / self.epochs, 0.0), 1.0)
        return self.peak * (self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * frac)))

    def __repr__(self) -> str:
        return f"CosineSchedule(peak={self.peak}, epochs={self.epochs}, final={self.final})"


class ConstantSchedule:
    """The same rate throughout."""

    def __init__(self, lr: float):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"ConstantSchedule: learning rate must be positive, got {lr!r}")
        self.lr = float(lr)

    def __call__(self, t: float) -> float:
        return self.lr

    def __repr__(self) -> str:
        return f"ConstantSchedule({self.lr})"
