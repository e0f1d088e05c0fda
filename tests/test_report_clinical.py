"""Report v2 on synthetic runs: AUC and operating points against the metrics files, the red
low-sensitivity warning, ordinal grades, paired comparisons, and no absolute path in any page."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pipeline.report.stage import ReportParams, build
from tests.test_report import _probs, _html, as_value
from pipeline.evaluate import EvaluateParams, Inputs, write_outputs
from vision.evaluate import ADAPTER as VISION

EVAL = EvaluateParams(bootstrap=100, ece_bins=10, seed=42)
ABSOLUTE = re.compile(r"(?<![\w.:/])/(?:work|tmp|home|root|Users|mnt|var|srv)/")


def _run(root, rng, dataset, regime, classes, p, sharp, positive=None, ordinal=False, n=240):
    same = np.random.default_rng(sum(map(ord, dataset)))   # one test set per dataset, as in the pipeline
    y, yv = same.choice(len(classes), size=n, p=p), same.choice(len(classes), size=n, p=p)
    probs, pv = _probs(rng, y, len(classes), sharp), _probs(rng, yv, len(classes), sharp)
    name = f"{dataset}-tinynet-{regime}-ce"
    trained = {"dataset": dataset, "model": "tinynet", "regime": regime, "loss": "ce", "val_macro_f1": 0.6,
               "model_info": {"params": 5000}}
    data = {"dataset": dataset, "source": f"/work/shared/data/medmnist/{dataset}.npz", "channels": 1,
            "image_size": [28, 28]}
    inputs = Inputs(x=None, y=y, groups=np.arange(n), classes=classes, scored=classes, validation=None,
                    errors=lambda idx: {"error_x": rng.integers(0, 255, (len(idx), 28, 28, 1)).astype(np.uint8)},
                    data=data, positive=positive, ordinal=ordinal)
    write_outputs(VISION, name, EVAL, root, trained, inputs, probs, (yv, pv), lambda m, f: ("id", "uri"))
    return name


def _make_built(root):
    """Two BreastMNIST-like runs (one with low malignant sensitivity), two RetinaMNIST-like runs; built report."""
    rng = np.random.default_rng(3)
    breast = ["malignant", "normal, benign"]
    names = [_run(root, rng, "breastmnist", "frozen", breast, [0.27, 0.73], 0.3, positive="malignant"),
             _run(root, rng, "breastmnist", "finetune", breast, [0.27, 0.73], 4.0, positive="malignant"),
             _run(root, rng, "retinamnist", "frozen", list("01234"), [0.4, 0.15, 0.2, 0.15, 0.1], 1.5, ordinal=True),
             _run(root, rng, "retinamnist", "finetune", list("01234"), [0.4, 0.15, 0.2, 0.15, 0.1], 2.5, ordinal=True)]
    build(root, root / "out", ReportParams(max_errors=4, arms=("vision",)))
    return root, names


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _make_built(tmp_path_factory.mktemp("clinical"))


def _metrics(root, name):
    return json.loads((root / "metrics/vision" / f"{name}.json").read_text())


def _page(root, name):
    return _html(root / "out/runs/vision" / f"{name}.html")


def test_binary_page_auc_and_operating_points_match_metrics(built):
    root, names = built
    for name in names[:2]:
        m, page = _metrics(root, name), _page(root, name)
        assert as_value(page.ids["auc"]["data-value"]) == m["auc"]
        assert f"{100 * m['auc']:.1f}%" in page.text and f"{100 * m['ci95']['auc']['lo']:.1f}" in page.text
        cells = [c for c in page.cells if c["table"] == "operating-points-table"]
        assert {c["row"]["data-point"] for c in cells} == set(m["operating_points"]) == {"in_use", "se95_val"}
        for c in cells:
            assert as_value(c["value"]) == m["operating_points"][c["row"]["data-point"]][c["metric"]]
        assert any(src.startswith("data:image/png") for src in page.images)  # the ROC figure among them


def test_low_sensitivity_is_a_red_banner_with_the_number(built):
    root, names = built
    weak, strong = (_metrics(root, n)["per_class"]["malignant"]["se"] for n in names[:2])
    assert weak < 0.8 <= strong
    page = _page(root, names[0])
    assert as_value(page.ids["low-sensitivity"]["data-value"]) == weak
    assert page.ids["low-sensitivity"]["class"] == "alarm" and f"{100 * weak:.1f}%" in page.text
    assert "low-sensitivity" not in _page(root, names[1]).ids


def test_retina_grades_and_ordinal_metrics(built):
    root, names = built
    for name in names[2:]:
        m, page = _metrics(root, name), _page(root, name)
        html = (root / "out/runs/vision" / f"{name}.html").read_text()
        for key in ("kappa_quadratic", "within_one"):
            hit = re.search(rf'<tr data-metric="{key}">.*?data-value="([^"]+)"', html, re.S)
            assert hit and as_value(hit.group(1)) == m[key]
            assert m["ci95"][key]["lo"] <= m[key] <= m["ci95"][key]["hi"]
        assert "diabetic retinopathy severity" in page.text and "proliferative retinopathy" in page.text
        assert "auc" not in page.ids and "low-sensitivity" not in page.ids


def test_no_absolute_path_and_no_mangled_sentences(built):
    root, _ = built
    pages = list((root / "out").rglob("*.html"))
    assert len(pages) == 6
    for path in pages:
        text = path.read_text()
        assert str(root) not in text and not ABSOLUTE.search(text), path
        assert "move together" not in text and not re.search(r"all \d[\d,]* \d \w+s", text), path
        assert "ECE before scaling" not in text or re.search(r"ECE before scaling <strong>[\d.]+%", text)


def test_compare_uses_paired_bootstrap(built):
    """The compare page's differences are the paired bootstrap of the two runs' eval.npz (recomputed here)."""
    from pipeline import clinical

    root, names = built
    html = (root / "out/compare.html").read_text()
    rows = re.findall(r'<tr data-pair="([^"]+)" data-what="([^"]+)" data-diff="([^"]+)" data-lo="([^"]+)" '
                      r'data-hi="([^"]+)"', html)
    assert rows and "paired bootstrap" in html
    z = {n: np.load(root / "artifacts/vision" / n / "eval.npz") for n in names[:2]}
    fin, fro = z[names[1]], z[names[0]]
    want = clinical.paired_differences(fin["y_true"], fin["probs"].argmax(1), fro["probs"].argmax(1), fin["group"],
                                       {"macro_f1": lambda cm: clinical.macro_f1(cm, [0, 1])}, EVAL.bootstrap,
                                       EVAL.seed, 2)["macro_f1"]
    got = [r for r in rows if r[0] == "finetune|frozen" and r[1] == "macro_f1"]
    assert got, rows
    m_fin, m_fro = _metrics(root, names[1]), _metrics(root, names[0])
    assert float(got[0][2]) == pytest.approx(m_fin["macro_f1"] - m_fro["macro_f1"]) == pytest.approx(want["diff"])
    assert (float(got[0][3]), float(got[0][4])) == pytest.approx((want["ci"]["lo"], want["ci"]["hi"]))
    assert "finetune is better" in html and "overlap" not in html


def test_compare_flags_degenerate_runs(tmp_path):
    rng = np.random.default_rng(5)
    breast = ["malignant", "normal, benign"]
    a = _run(tmp_path, rng, "breastmnist", "frozen", breast, [0.27, 0.73], 3.0, positive="malignant")
    # a run that never calls malignant
    y = np.random.default_rng(sum(map(ord, "breastmnist"))).choice(2, size=240, p=[0.27, 0.73])
    probs = np.tile([0.1, 0.9], (240, 1))
    inputs = Inputs(x=None, y=y, groups=np.arange(240), classes=breast, scored=breast, validation=None,
                    errors=lambda idx: {}, positive="malignant")
    write_outputs(VISION, "breastmnist-tinynet-finetune-ce", EVAL, tmp_path,
                  {"dataset": "breastmnist", "model": "tinynet", "regime": "finetune", "loss": "ce", "val_macro_f1": 0.4},
                  inputs, probs, (y, probs), lambda m, f: ("id", "uri"))
    build(tmp_path, tmp_path / "out", ReportParams(max_errors=2, arms=("vision",)))
    html = (tmp_path / "out/compare.html").read_text()
    assert 'data-run="breastmnist-tinynet-finetune-ce" class="degenerate"' in html
    assert "degenerate: malignant is never predicted" in html and f'data-run="{a}" class="chosen"' in html
    page = _page(tmp_path, "breastmnist-tinynet-finetune-ce")
    assert "degenerate" in page.ids and "Low sensitivity for malignant" in page.text


def _make_ecg(root):
    """One ECG run with alarm hours and neighbour context, its report built."""
    from ecg.evaluate import ADAPTER as ECG
    from pipeline.io import write_json

    rng = np.random.default_rng(7)
    classes = ["N", "S", "V", "F", "Q"]
    write_json(root / "data/ecg/meta.json", {"fs": 360, "r_peak_index": 126, "window_samples": 253,
                                              "classes": classes, "score_classes": classes[:4]})
    groups = np.repeat(np.arange(100, 106), 80)
    y = rng.choice(5, size=len(groups), p=[0.7, 0.12, 0.1, 0.05, 0.03])
    probs, pv = _probs(rng, y, 5, 1.2), _probs(rng, y, 5, 1.2)
    t = np.linspace(-1, 1, 253)

    def errors(idx):
        beat = np.exp(-(t / 0.05) ** 2)
        return {"error_x": np.tile(beat, (len(idx), 1)),
                "error_context_mv": np.tile(beat, (len(idx), 3, 1)).astype(np.float32),
                "error_offsets": np.tile([-288, 0, 216], (len(idx), 1))}

    inputs = Inputs(x=None, y=y, groups=groups, classes=classes, scored=classes[:4], validation=None,
                    errors=errors, hours=3.0, hours_method="test approximation", alarm_classes=("S", "V"))
    (root / "artifacts/ecg/tiny1d-ce").mkdir(parents=True)
    (root / "artifacts/ecg/tiny1d-ce/model.keras").write_bytes(b"model")
    write_outputs(ECG, "tiny1d-ce", EVAL, root, {"model": "tiny1d", "loss": "ce", "val_macro_f1": 0.5,
                                                 "data_sha256": "ab" * 32,
                                                 "model_info": {"params": 1234, "receptive_field_ms": 250.0}}, inputs,
                  probs, (y, pv), lambda m, f: ("id", "uri"))
    build(root, root / "out", ReportParams(max_errors=12, arms=("ecg",)))
    return root


@pytest.fixture(scope="module")
def ecg_built(tmp_path_factory):
    return _make_ecg(tmp_path_factory.mktemp("ecg-clinical"))


def test_ecg_page_alarms_records_and_gallery(ecg_built):
    root = ecg_built
    m = json.loads((root / "metrics/ecg/tiny1d-ce.json").read_text())
    html = (root / "out/runs/ecg/tiny1d-ce.html").read_text()
    page = _html(root / "out/runs/ecg/tiny1d-ce.html")
    alarms = {c["row"]["data-class"]: as_value(c["value"]) for c in page.cells if c["table"] == "alarms-table"}
    assert alarms == m["alarms_per_hour"] and set(alarms) == {"S", "V"}
    with np.load(root / "artifacts/ecg/tiny1d-ce/eval.npz") as z:
        y, pred, g = z["y_true"], z["probs"].argmax(1), z["group"]
        err_groups = g[z["error_index"]]
    assert max(np.bincount(err_groups)) <= 2 and len(err_groups) == 12
    cells = [c for c in page.cells if c["table"] == "per-group-table"]
    assert {c["row"]["data-group"] for c in cells} == {str(r) for r in range(100, 106)}
    for c in cells:
        r, (cls, key) = int(c["row"]["data-group"]), c["metric"].split("_")
        k = ["N", "S", "V", "F"].index(cls)
        t, p = (y == k) & (g == r), (pred == k) & (g == r)
        want = (t & p).sum() / (t.sum() if key == "se" else p.sum()) if (t if key == "se" else p).any() else None
        assert as_value(c["value"]) == (None if want is None else pytest.approx(want))
    assert html.count('<figure class="strip">') == 12 and "RR before 800 ms, after 600 ms" in html
    assert "in mV" in html


def test_technical_appendix(ecg_built):
    import hashlib

    page = _html(ecg_built / "out/runs/ecg/tiny1d-ce.html")
    text = (ecg_built / "out/runs/ecg/tiny1d-ce.html").read_text()
    appendix = text[text.index('<section id="appendix">'):]
    assert hashlib.sha256(b"model").hexdigest() in appendix and "ab" * 32 in appendix
    assert "1,234" in appendix and "Receptive field (ms)" in appendix and 'id="mlflow-run-id">id<' in appendix
    assert text.index('id="per-class"') < text.index('id="appendix"') and page.ids["appendix"]


def test_grown_sections_shown_when_present_else_absent_with_reason(tmp_path):
    """rerecorded.json (the shape ecg.generalise writes) becomes a table; robustness.json absent says why;
    external.json {} says it holds no results."""
    import shutil

    from pipeline.io import write_json

    root = tmp_path / "r"
    shutil.copytree(_make_ecg(tmp_path / "e"), root)
    cls = lambda f1: {c: {"se": f1, "+p": f1, "f1": f1, "n": 10} for c in "NSVFQ"}  # noqa: E731
    ci = {"macro_f1": {"lo": 0.5, "hi": 0.7}, "per_class": {}}
    write_json(root / "metrics/ecg/rerecorded.json", {
        "annotated": {"macro_f1": 0.62, "per_class": cls(0.6), "ci95": ci, "n_matched": 100, "n_records": 22},
        "128": {"detection": {"se": 0.999, "+p": 0.994, "tp": 5, "fn": 1, "fp": 2}, "macro_f1": 0.61,
                "per_class": cls(0.5), "ci95": ci, "n_records": 22,
                "annotated": {"macro_f1": 0.6, "per_class": cls(0.4), "ci95": ci}}})
    write_json(root / "metrics/ecg/external.json", {})
    build(root, root / "out", ReportParams(max_errors=2, arms=("ecg",)))
    page = _html(root / "out/index.html")
    html = (root / "out/index.html").read_text()
    rows = re.findall(r'<tr data-row="([^"]+)"><td[^>]*>[^<]*</td><td data-metric="macro_f1" data-value="([^"]+)"', html)
    assert rows == [("annotated", "0.62"), ("128", "0.61"), ("128 / annotated", "0.6")]
    assert "99.9%" in page.text and "61.0%" in page.text
    assert "absent-robustness" in page.ids and "metrics/ecg/robustness.json does not exist" in page.text
    assert "absent-external" in page.ids and "holds no results" in page.text
    assert "absent-deployment" in page.ids
    assert str(root) not in html


def test_rhythm_context_from_wfdb_rhythm_annotations(tmp_path):
    """The ECG descriptor reads each record's rhythm annotations ('+' with aux_note) and reports the share of time."""
    import wfdb

    from ecg.report import rhythm_context

    fs, n = 360, 360 * 100
    wfdb.wrsamp("r1", fs=fs, units=["mV"], sig_name=["MLII"], p_signal=np.zeros((n, 1)), fmt=["16"],
                write_dir=str(tmp_path))
    wfdb.wrann("r1", "atr", np.array([0, 100, n // 4, 30000]), symbol=["+", "N", "+", "N"],
               aux_note=["(N", "", "(AFIB", ""], write_dir=str(tmp_path))
    assert rhythm_context(tmp_path / "r1") == "atrial fibrillation 75%, sinus 25%"
    assert rhythm_context(tmp_path / "missing") is None
