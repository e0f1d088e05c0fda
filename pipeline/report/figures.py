"""Figures of one run as base64 PNG data URIs (matplotlib, Agg), so pages need no other file.

Confusion, reliability and training-history figures reuse pipeline.plots. Error examples are
drawn by the arm's descriptor (`render_error`), with the helpers `trace` (a 1-D sample against
a time axis, with a marker) and `image` (a 2-D or 3-D sample).
"""
from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipeline import calibration as cal  # noqa: E402
from pipeline import plots  # noqa: E402


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fig_uri(fig, dpi: int = 90) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return png_uri(buf.getvalue())


def _via_file(plot_fn, *args, **kwargs) -> str:
    """Run a pipeline.plots function (which saves to a path) and return its PNG as a URI."""
    with tempfile.TemporaryDirectory() as tmp:
        return png_uri(plot_fn(*args, path=Path(tmp) / "figure.png", **kwargs).read_bytes())


def confusion(cm, classes, title: str) -> str:
    return _via_file(plots.plot_confusion, cm, classes, title=title)


def reliability(run) -> str | None:
    a = run.arrays
    if a is None:
        return None
    n_bins = (run.info.get("evaluate") or {}).get("ece_bins") or 15
    y, after = a["y_true"], a["probs"]
    before = a["probs_before"].astype(np.float64) if "probs_before" in a else after
    ece = run.get("ece") or {}
    ece_before = ece.get("before") if ece.get("before") is not None else cal.ece(before, y, n_bins)
    ece_after = ece.get("after") if ece.get("after") is not None else cal.ece(after, y, n_bins)
    return _via_file(plots.plot_reliability, cal.reliability_bins(before, y, n_bins),
                     cal.reliability_bins(after, y, n_bins), ece_before, ece_after)


def roc(run, positive: str, points: list) -> str | None:
    """ROC curve of the class of interest, with the operating points (test se / 1 - spec) marked."""
    from pipeline import clinical

    a = run.arrays
    if a is None or positive not in run.classes:
        return None
    y_pos = a["y_true"] == run.classes.index(positive)
    if y_pos.all() or not y_pos.any():
        return None
    fpr, tpr = clinical.roc(y_pos, a["probs"][:, run.classes.index(positive)])
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 100], [0, 100], "k:", lw=1, label="chance")
    ax.plot(100 * fpr, 100 * tpr, lw=1.5, color="#1f4e79", label="ROC (test)")
    for p, marker in zip(points, "os^D"):
        if p.get("se") is not None and p.get("spec") is not None:
            ax.plot(100 * (1 - p["spec"]), 100 * p["se"], marker, ms=7, label=p["key"].replace("_", " "))
    ax.set_xlabel("1 - specificity (%)")
    ax.set_ylabel(f"sensitivity for {positive} (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=7)
    return _fig_uri(fig)


def history(train: dict | None) -> str | None:
    """Training curves; with cross-validation (train["folds"]) one curve per fold and metric."""
    folds = (train or {}).get("folds") or {}
    if len(folds) > 1:
        curves = {f"fold {k} {m}": v for k, f in folds.items() for m, v in (f.get("history") or {}).items()}
    else:
        curves = (train or {}).get("history") or {}
    return _via_file(plots.plot_history, curves) if curves else None


def trace(x, t, xlabel: str, marker: str = "") -> str:
    """A 1-D sample against the axis values `t`, with a dashed line (and `marker` text) at t = 0."""
    fig, ax = plt.subplots(figsize=(2.6, 1.7))
    ax.plot(t, x, lw=1.0, color="#1f4e79")
    ax.axvline(0, color="#c0392b", ls="--", lw=0.8)
    if marker:
        ax.text(0, 1.0, f" {marker}", color="#c0392b", fontsize=7, va="top", transform=ax.get_xaxis_transform())
    ax.set_xlabel(xlabel, fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, symmetric=True))
    ax.tick_params(labelsize=6)
    ax.set_yticks([])
    return _fig_uri(fig)


def strip(windows, offsets, fs: float, centre: int, ylabel: str, xlabel: str, marker: str = "") -> str:
    """Consecutive windows (previous, this, next) placed at their offsets (samples from this one's
    centre) on one time axis in seconds, with a labelled amplitude axis; NaN windows are skipped."""
    fig, ax = plt.subplots(figsize=(4.2, 1.9))
    for j, (w, off) in enumerate(zip(windows, offsets)):
        w = np.asarray(w, np.float64)
        if not np.isfinite(w).any():
            continue
        t = (np.arange(len(w)) - centre + off) / fs
        ax.plot(t, w, lw=1.0 if j == 1 else 0.8, color="#1f4e79" if j == 1 else "#7f8c8d")
        ax.axvline(off / fs, color="#c0392b" if j == 1 else "#aab7b8", ls="--", lw=0.7)
    if marker:
        ax.text(0, 1.0, f" {marker}", color="#c0392b", fontsize=7, va="top", transform=ax.get_xaxis_transform())
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3, lw=0.4)
    return _fig_uri(fig)


def image(x) -> str:
    """A 2-D (grey) or 3-D (H, W, C) sample, contrast-stretched."""
    x = np.asarray(x, dtype=np.float64)
    x = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    fig, ax = plt.subplots(figsize=(1.6, 1.6))
    ax.imshow(x, cmap="gray" if x.ndim == 2 else None, interpolation="nearest")
    ax.axis("off")
    return _fig_uri(fig)


def _default_render(x, data) -> tuple[str, str]:
    if np.ndim(x) == 1:
        return trace(x, np.arange(len(x)) - len(x) // 2, "samples from centre"), "trace"
    return image(x), "image"


def errors(run, max_n: int) -> list[dict]:
    """The most confident errors: {"uri", "true", "pred", "confidence", "group", "kind", "note"}; the arm's
    render_error(x, data, extra) gets the example's other error_* arrays of eval.npz in `extra` and
    returns (uri, kind) or (uri, kind, note)."""
    a = run.arrays
    if a is None or "error_x" not in a or "error_index" not in a:
        return []
    render = run.arm.render_error or (lambda x, data, extra: _default_render(x, data))
    n_err = len(a["error_index"])
    per_example = [k for k in a if k.startswith("error_") and k not in ("error_x", "error_index")
                   and len(a[k]) == n_err]
    out = []
    for n, (i, x) in enumerate(zip(a["error_index"][:max_n], a["error_x"][:max_n])):
        p = a["probs"][int(i)]
        pred = int(p.argmax())
        uri, kind, *note = render(x, run.data, {k: a[k][n] for k in per_example})
        out.append({"uri": uri, "kind": kind, "note": note[0] if note else "",
                    "true": run.classes[int(a["y_true"][int(i)])],
                    "pred": run.classes[pred], "confidence": float(p[pred]),
                    "group": str(a["group"][int(i)]) if "group" in a else None})
    return out
