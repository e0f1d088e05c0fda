"""Probability calibration: ECE, Brier, NLL, reliability bins, temperature scaling.

`probs` is an (n, k) array of class probabilities, `y` an (n,) int label array.
Bins are equal-width on the top-label confidence (max prob): bin i covers
(i/n_bins, (i+1)/n_bins], with a confidence of exactly 0 put in the first bin.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

_EPS = 1e-12


def _check(probs, y):
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if probs.ndim != 2 or y.ndim != 1 or len(probs) != len(y):
        raise ValueError(f"need probs (n, k) and y (n,), got {probs.shape} and {y.shape}")
    if len(y) == 0:
        raise ValueError("empty input")
    if y.min() < 0 or y.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {y.min()}..{y.max()}")
    return probs, y.astype(np.int64)


def _binned(probs, y, n_bins):
    probs, y = _check(probs, y)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return edges, count, conf_sum, acc_sum


def ece(probs, y, n_bins=15) -> float:
    """Top-label expected calibration error: sum_b (n_b / n) |acc_b - conf_b|."""
    _, count, conf_sum, acc_sum = _binned(probs, y, n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / count.sum())


def reliability_bins(probs, y, n_bins=15) -> dict:
    """Per-bin lists: bin_lower, bin_upper, confidence, accuracy (None if empty), count."""
    edges, count, conf_sum, acc_sum = _binned(probs, y, n_bins)
    mean = lambda s, c: float(s / c) if c else None  # noqa: E731
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "confidence": [mean(s, c) for s, c in zip(conf_sum, count)],
        "accuracy": [mean(s, c) for s, c in zip(acc_sum, count)],
        "count": count.astype(int).tolist(),
    }


def brier(probs, y) -> float:
    """Multi-class Brier score: mean over samples of sum_k (p_k - onehot_k)^2."""
    probs, y = _check(probs, y)
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def nll(probs, y) -> float:
    """Mean negative log-likelihood of the true class, p clipped at 1e-12."""
    probs, y = _check(probs, y)
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], _EPS, 1.0)).mean())


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs, T) -> np.ndarray:
    """softmax(log(p) / T); T > 1 softens, T < 1 sharpens, T = 1 is identity."""
    if not T > 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    probs = np.asarray(probs, dtype=np.float64)
    return _softmax(np.log(np.clip(probs, _EPS, 1.0)) / T)


def fit_temperature(probs, y) -> float:
    """Temperature T in [0.05, 20] minimising the NLL of apply_temperature(probs, T)."""
    probs, y = _check(probs, y)
    logp = np.log(np.clip(probs, _EPS, 1.0))
    rows = np.arange(len(y))

    def objective(log_t):
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float((np.log(np.exp(z).sum(axis=1)) - z[rows, y]).mean())

    res = minimize_scalar(objective, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


def fit_temperature_no_worse(probs, y, n_bins=15) -> dict:
    """fit_temperature, kept only when it lowers the ECE of (probs, y) themselves; else T = 1 (no scaling).

    The fitted T minimises NLL, which can raise the ECE (a model whose error is a class-prior shift, not a
    uniform over- or under-confidence). Returns {temperature, fitted, ece_before, ece_after, kept}; `fitted` is
    the NLL optimum, `temperature` what to apply.
    """
    probs, y = _check(probs, y)
    fitted = fit_temperature(probs, y)
    before, after = ece(probs, y, n_bins), ece(apply_temperature(probs, fitted), y, n_bins)
    kept = after < before
    return {"temperature": fitted if kept else 1.0, "fitted": fitted, "ece_before": before,
            "ece_after": after if kept else before, "kept": bool(kept)}
