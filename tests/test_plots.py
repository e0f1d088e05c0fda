import numpy as np

from pipeline.calibration import reliability_bins
from pipeline.plots import (
    dvc_confusion_counts, dvc_reliability_rows, plot_confusion, plot_history, plot_reliability,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png(tmp_path):
    cm = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 3]])  # empty middle row
    p1 = plot_confusion(cm, ["N", "S", "V"], tmp_path / "a" / "cm.png", "test")
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    bins = reliability_bins(probs, np.array([0, 1, 1]), n_bins=5)
    p2 = plot_reliability(bins, bins, 0.2, 0.1, tmp_path / "b" / "rel.png")
    hist = {"loss": [1.0, 0.7], "val_loss": [1.1, 0.9], "val_macro_f1": [0.3, 0.5]}
    p3 = plot_history(hist, tmp_path / "c" / "hist.png")
    for p in (p1, p2, p3):
        assert _is_png(p)


def test_dvc_rows():
    rows = dvc_confusion_counts(np.array([[3, 1], [0, 2]]), ["N", "S"])
    assert rows == [{"actual": "N", "predicted": "N", "count": 3}, {"actual": "N", "predicted": "S", "count": 1},
                    {"actual": "S", "predicted": "N", "count": 0}, {"actual": "S", "predicted": "S", "count": 2}]
    bins = reliability_bins(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]), n_bins=5)
    assert dvc_reliability_rows(bins, "after") == [{"confidence": 0.9, "accuracy": 0.5, "count": 2,
                                                    "calibration": "after"}]


def test_offline_html_template(tmp_path):
    import pytest

    from pipeline.plots import VEGA_JS, offline_html_template
    with pytest.raises(FileNotFoundError, match="vega.min.js: missing; install"):
        offline_html_template(tmp_path)
    for rel in VEGA_JS:
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_text(f"var x = '</script>'; /* {rel} */")
    page = offline_html_template(tmp_path)
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page  # DVC adds no CDN script
    assert page.count("<script>") == 3 and "'<\\/script>'" in page and " src=" not in page
