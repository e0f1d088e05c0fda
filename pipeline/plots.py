"""PNG figures (confusion, reliability, training history) and the rows of the DVC plot files.

Every plot function creates the parent folder, saves a PNG at `path`, closes
the figure and returns `path` as a Path.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402
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
    names = [textwrap.fill(str(c), 10) for c in class_names]   # long names ("normal, benign") must not overlap
    ax.set_xticks(ticks, names, fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
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
    k = max(len(class_names), 3)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.8 * k, 2 + 0.8 * k), layout="constrained")
    _heatmap(axes[0], cm, class_names, "d", "counts")
    _heatmap(axes[1], norm, class_names, ".0%", "share of the true class")
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
        ax.plot(pts[:, 0], pts[:, 1], style, ms=4, label=f"{label} (ECE {100 * ece:.1f}%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))   # percent, like every other figure of the report
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
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


# ---------------------------------------------------------------------------------- dvc plots, offline
# `dvc plots show` writes a page that loads Vega from a CDN, so it is blank offline. This page has the
# same placeholder ({plot_divs}) for `--html-template`, with Vega, Vega-Lite and Vega-Embed inlined from
# their npm packages (installed by `make vega` into .vega/node_modules). It has no {scripts}
# placeholder, so DVC adds no CDN script.
VEGA_DIR = Path(os.environ.get("VEGA_JS_DIR", ".vega/node_modules"))
VEGA_JS = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")
OFFLINE_TEMPLATE = Path(".vega/dvc-plots-offline.html")
_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots</title>
<style>body { font-family: sans-serif; } table { border-spacing: 15px; }</style>
@SCRIPTS@
</head>
<body>
{plot_divs}
</body>
</html>
"""


def offline_html_template(js_dir: Path | str = VEGA_DIR) -> str:
    """The page text, with each Vega script inlined; a clear error naming a missing script."""
    scripts = []
    for rel in VEGA_JS:
        path = Path(js_dir) / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; install the Vega packages with `make vega` "
                                    "(npm install --prefix .vega vega@5 vega-lite@5 vega-embed@6)")
        code = path.read_text(encoding="utf-8").replace("</script", "<\\/script")
        scripts.append(f"<script>/* {rel} */\n{code}\n</script>")
    return _PAGE.replace("@SCRIPTS@", "\n".join(scripts))


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Write the offline page for `dvc plots show --html-template`.")
    ap.add_argument("--js-dir", default=str(VEGA_DIR), help="node_modules folder holding vega, vega-lite, vega-embed")
    ap.add_argument("--out", default=str(OFFLINE_TEMPLATE))
    args = ap.parse_args(argv)
    from pipeline.io import write_text

    write_text(args.out, offline_html_template(args.js_dir))
    print(f"wrote {args.out}; view the plots offline with: dvc plots show --html-template {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
