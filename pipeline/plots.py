"""PNG figures (confusion, reliability, training history) and the rows of the DVC plot files.

Every plot function creates the parent folder, saves a PNG at `path`, closes
the figure and returns `path` as a Path.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _heatmap(ax, data, class_names, fmt, title):
    ax.imshow(data, cmap="Blues", vmin=0)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    top = np.nanmax(data) if np.isfinite(data).any() else 0
    for (i, j), v in np.ndenumerate(data):
        text = "-" if np.isnan(v) else format(v, fmt)
        ax.text(j, i, text, ha="center", va="center",
                color="white" if top and v > top / 2 else "black", fontsize=8)


def plot_confusion(cm, class_names, path, title="Confusion matrix") -> Path:
    """Counts (left) and row-normalised rates (right; '-' for empty rows)."""
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, cm / rows, np.nan)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(class_names), 2 + 0.8 * len(class_names)))
    _heatmap(axes[0], cm, class_names, "d", "counts")
    _heatmap(axes[1], norm, class_names, ".2f", "row-normalised (recall)")
    fig.suptitle(title)
    return _save(fig, path)


def _bin_points(bins):
    pts = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
    return np.array(pts, dtype=float).reshape(-1, 2)


def plot_reliability(bins_before, bins_after, ece_before, ece_after, path) -> Path:
    """Reliability diagram (accuracy vs confidence per non-empty bin), before/after."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    for bins, ece, style, label in ((bins_before, ece_before, "o-", "before"),
                                    (bins_after, ece_after, "s-", "after")):
        pts = _bin_points(bins)
        ax.plot(pts[:, 0], pts[:, 1], style, ms=4, label=f"{label} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_history(history, path) -> Path:
    """Loss curves (left) and every other per-epoch metric (right) from a Keras history dict."""
    loss_keys = [k for k in history if k.endswith("loss")]
    other = [k for k in history if k not in loss_keys]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, keys, title in ((axes[0], loss_keys, "loss"), (axes[1], other, "metrics")):
        for k in keys:
            values = list(history[k])
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=k)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if keys:
            ax.legend(fontsize=8)
    return _save(fig, path)


def dvc_confusion_counts(cm, class_names) -> list[dict]:
    """One {"actual", "predicted", "count"} row per cell of the confusion matrix (zeros included),
    for the `confusion_counts` DVC template (.dvc/plots/confusion_counts.json)."""
    cm = np.asarray(cm, dtype=np.int64)
    names = list(class_names)
    return [{"actual": names[i], "predicted": names[j], "count": int(cm[i, j])}
            for i in range(len(names)) for j in range(len(names))]


def dvc_reliability_rows(bins, calibration: str) -> list[dict]:
    """{"confidence", "accuracy", "count", "calibration"} per non-empty reliability bin, for the
    `reliability` DVC template (one line per calibration value, plus the diagonal)."""
    return [{"confidence": float(c), "accuracy": float(a), "count": int(n), "calibration": calibration}
            for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"]) if n]
