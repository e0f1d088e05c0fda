"""Report stage on small synthetic runs it writes itself, plus the committed files when present.

`write_fixture` and `PageParser` are shared with tests/test_report_browser.py.
"""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ecg.evaluate import ADAPTER as ECG
from ecg.report import REPORT as ECG_REPORT
from pipeline.evaluate import EvaluateParams, Inputs, write_outputs
from pipeline.io import write_json
from pipeline.report import compare, tables
from pipeline.report.runs import ReportError, Run, load_metrics, load_run
from pipeline.report.stage import ReportParams, build, main
from vision.evaluate import ADAPTER as VISION
from vision.report import REPORT as VISION_REPORT

ROOT = Path(__file__).resolve().parents[1]
ECG_CLASSES = ["N", "S", "V", "F", "Q"]
EVAL = EvaluateParams(bootstrap=200, ece_bins=10, seed=42)
CFG = ReportParams(max_errors=4, arms=("ecg", "vision"))
VOID = {"img", "meta", "br", "hr", "input", "link", "col", "source", "wbr"}


def _probs(rng, y, n_classes, sharp, never=None):
    logits = rng.normal(0.0, 1.0, (len(y), n_classes))
    logits[np.arange(len(y)), y] += sharp
    if never is not None:
        logits[:, never] = -30.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _write_run(root, adapter, name, rng, classes, scored, p, groups, sharp, never, trained, errors, **facts):
    """Synthetic predictions through the evaluate stage's own writer (MLflow replaced by a stub)."""
    n = len(groups)
    y, yv = rng.choice(len(classes), size=n, p=p), rng.choice(len(classes), size=n, p=p)
    probs, pv = _probs(rng, y, len(classes), sharp, never), _probs(rng, yv, len(classes), sharp, never)
    inputs = Inputs(x=None, y=y, groups=groups, classes=classes, scored=scored, validation=None,
                    errors=lambda idx: {"error_x": errors(len(idx))}, **facts)
    write_outputs(adapter, name, EVAL, root, trained, inputs, probs, (yv, pv),
                  lambda metrics, figures: (f"run-{name}", f"models:/{name}"))
    return name


def _ecg_run(root, rng, loss, never, val, sharp):
    t = np.linspace(-1, 1, 253)
    history = {"loss": [1.0, 0.6, 0.5], "val_macro_f1": [0.3, 0.5, 0.55]}
    fit = {"history": history, "best_epoch": 3, "epochs_run": 3, "val_macro_f1": 0.55}
    train = {"history": history, "val_records": [104, 105]}
    if loss == "focal":  # cross-validated training: one fit per held-out fold
        train["folds"] = {"0": fit, "1": dict(fit, best_epoch=2)}
    trained = {"model": "tiny1d", "loss": loss, "val_macro_f1": val,
               "model_info": {"name": "tiny1d", "params": 1234, "receptive_field_samples": 9}}
    return _write_run(root, ECG, f"tiny1d-{loss}", rng, ECG_CLASSES, ECG_CLASSES[:4], [0.78, 0.09, 0.08, 0.04, 0.01],
                      np.repeat(np.arange(100, 106), 100), sharp, never, trained,
                      lambda k: np.exp(-(t / 0.05) ** 2)[None, :] * (1 + rng.random((k, 1))), train=train)


def _vision_run(root, rng, regime, val, sharp):
    classes = ["normal", "pneumonia"]
    trained = {"dataset": "pneumoniamnist", "model": "tinynet", "regime": regime, "loss": "ce", "val_macro_f1": val,
               "model_info": {"params": 5000, "input_size": [28, 28, 1], "backbone_source": "cifar10"}}
    data = {"dataset": "pneumoniamnist", "channels": 1, "image_size": [28, 28],
            "n_per_class": {s: {"normal": n // 3, "pneumonia": n - n // 3}
                            for s, n in (("train", 900), ("val", 100), ("test", 300))}}
    return _write_run(root, VISION, f"pneumoniamnist-tinynet-{regime}-ce", rng, classes, classes, [0.4, 0.6],
                      np.arange(300), sharp, None, trained,
                      lambda k: rng.integers(0, 255, (k, 28, 28, 1)).astype(np.uint8), data=data, positive="pneumonia")


_MADE: dict = {}  # vision flag -> (folder, names): each fixture is made once per session, then copied


def write_fixture(root: Path, vision: bool = True) -> dict:
    """Synthetic ECG (and vision) runs under root; returns {arm: [run names]}."""
    if vision not in _MADE:
        made = Path(tempfile.mkdtemp(prefix="report-fixture-"))
        atexit.register(shutil.rmtree, made, True)
        _MADE[vision] = made, _make_fixture(made, vision)
    made, names = _MADE[vision]
    shutil.copytree(made, root, dirs_exist_ok=True)
    return names


def _make_fixture(root: Path, vision: bool) -> dict:
    rng = np.random.default_rng(0)
    write_json(root / "data/ecg/meta.json", {
        "database": "mitdb", "fs": 360, "window_samples": 253, "r_peak_index": 126, "window_ms": 700.0,
        "classes": ECG_CLASSES, "score_classes": ECG_CLASSES[:4], "bandpass_hz": [0.5, 40.0],
        "excluded_paced": [102, 104, 107, 217], "leads": {str(r): "MLII" for r in range(100, 112)}})
    write_json(root / "reports/ecg/dataset.json", {
        "DS1": dict(zip(ECG_CLASSES, [500, 50, 40, 20, 5])), "DS2": dict(zip(ECG_CLASSES, [470, 54, 48, 24, 4])),
        "records": {"DS1": [101, 106, 201], "DS2": [100, 103, 202]}, "folds": {"0": [101], "1": [106, 201]}})
    runs = {"ecg": [_ecg_run(root, rng, "ce", None, 0.61, 2.5), _ecg_run(root, rng, "focal", 3, 0.58, 2.0)]}
    if vision:
        runs["vision"] = [_vision_run(root, rng, "frozen", 0.7, 1.0), _vision_run(root, rng, "finetune", 0.8, 3.0)]
    return runs


class PageParser(HTMLParser):
    """Collects links, images, data-value cells (with their row's data-class) and body attributes."""

    def __init__(self):
        super().__init__()
        self.stack, self.links, self.images, self.cells, self.ids, self.body = [], [], [], [], {}, {}
        self.rows: dict[str, list] = {}
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "body":
            self.body = a
        if "id" in a:
            self.ids[a["id"]] = a
        row = next((s for s in reversed(self.stack) if s[0] == "tr"), None)
        table = next((s for s in reversed(self.stack) if s[0] == "table"), None)
        if tag == "tr" and table is not None and ("data-class" in a or "data-run" in a):
            self.rows.setdefault(table[1].get("id") or table[1].get("data-block"), []).append(
                a.get("data-class") or a.get("data-run"))
        if "data-metric" in a and row is not None:
            self.cells.append({"table": table[1].get("id") if table else None, "row": row[1],
                               "metric": a["data-metric"], "value": a.get("data-value")})
        if tag not in VOID:
            self.stack.append((tag, a))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if not (self.stack and self.stack[-1][0] in ("script", "style")):
            self.text.append(data)

    @classmethod
    def parse(cls, html: str) -> "PageParser":
        p = cls()
        p.feed(html)
        p.text = " ".join(" ".join(p.text).split())
        return p


def as_value(text):
    return None if text == "null" else float(text)


def check_run_page(page: PageParser, metrics: dict):
    """Headline rows are the metrics file's classes and every value matches it."""
    assert as_value(page.ids["macro-f1"]["data-value"]) == pytest.approx(metrics["macro_f1"], abs=0) \
        if metrics["macro_f1"] is not None else page.ids["macro-f1"]["data-value"] == "null"
    assert page.rows["headline-table"] == list(metrics["per_class"])
    for c in (x for x in page.cells if x["table"] == "headline-table"):
        row = metrics["per_class"][c["row"]["data-class"]]
        assert as_value(c["value"]) == row[c["metric"]], (c, row)


def _html(path):
    return PageParser.parse(path.read_text())


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A built report over ECG and vision fixture runs: (root, {arm: names}); read-only."""
    root = tmp_path_factory.mktemp("full")
    names = write_fixture(root)
    build(root, root / "out", CFG)
    return root, names


@pytest.fixture(scope="module")
def ecg_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("ecg_only")
    write_fixture(root, vision=False)
    build(root, root / "out", CFG)
    return root


def test_pages_match_metrics_and_index_links_all(full):
    tmp_path, names = full
    assert len(list((tmp_path / "out").rglob("*.html"))) == 6
    index = _html(tmp_path / "out/index.html")
    for arm, runs in names.items():
        for name in runs:
            assert f"runs/{arm}/{name}.html" in index.links
            metrics = json.loads((tmp_path / "metrics" / arm / f"{name}.json").read_text())
            page = _html(tmp_path / "out" / "runs" / arm / f"{name}.html")
            check_run_page(page, metrics)
            assert all(src.startswith("data:image/png;base64,") for src in page.images) and page.images
            assert not [u for u in page.links if u.startswith(("http:", "https:", "//"))]
            info = json.loads((tmp_path / "artifacts" / arm / name / "eval.json").read_text())
            assert info["mlflow_run_id"] == f"run-{name}" and info["mlflow_run_id"] in page.text
            assert _numbers_only(metrics), metrics


def _numbers_only(obj) -> bool:
    if isinstance(obj, dict):
        return all(_numbers_only(v) for v in obj.values())
    return obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool))


def test_metrics_vocabulary_is_shared(full):
    """Both arms' metrics files use one vocabulary, intervals as {lo, hi}; strings live in eval.json."""
    tmp_path, names = full
    files = {arm: json.loads((tmp_path / "metrics" / arm / f"{runs[0]}.json").read_text()) for arm, runs in names.items()}
    for arm, m in files.items():
        assert {"accuracy", "macro_f1", "per_class", "ece", "brier", "nll", "temperature", "ci95",
                "val_macro_f1"} <= set(m), arm
        assert all(set(row) == {"se", "ppv", "f1", "spec", "n"} for row in m["per_class"].values())
        assert set(m["ci95"]["macro_f1"]) == {"lo", "hi"} and m["ci95"]["macro_f1"]["lo"] <= m["macro_f1"]
    assert "auc" in files["vision"] and "auc" not in files["ecg"]
    assert list(files["ecg"]["per_class"]) == ["N", "S", "V", "F"]  # meta.json's score_classes: Q unscored


def test_undefined_value_shows_reason_not_zero(ecg_only):
    tmp_path = ecg_only
    metrics = json.loads((tmp_path / "metrics/ecg/tiny1d-focal.json").read_text())
    assert metrics["per_class"]["F"]["ppv"] is None  # F is never predicted in this run
    page = _html(tmp_path / "out/runs/ecg/tiny1d-focal.html")
    cell = next(c for c in page.cells if c["row"].get("data-class") == "F" and c["metric"] == "ppv")
    assert cell["value"] == "null"
    assert "no beat was predicted as F, so +P is undefined" in page.text
    assert "No beat was predicted as F" in page.text  # failure modes
    assert "out-of-fold" in page.text and page.rows.get("folds") is None and "folds" in page.ids
    assert "Recordings 104, 105 are held out of training" in _html(tmp_path / "out/runs/ecg/tiny1d-ce.html").text


def test_vision_absent_index_says_so(ecg_only):
    tmp_path = ecg_only
    index = _html(tmp_path / "out/index.html")
    assert "empty-vision" in index.ids and "empty-ecg" not in index.ids
    assert "No vision runs yet" in _html(tmp_path / "out/compare.html").text


def test_compare_highlights_validation_choice(full):
    tmp_path, _ = full
    html = (tmp_path / "out/compare.html").read_text()
    page = PageParser.parse(html)
    assert page.rows["tiny1d"] == ["tiny1d-ce", "tiny1d-focal"]
    assert 'data-run="tiny1d-ce" class="chosen"' in html  # val 0.61 > 0.58, whatever test says
    assert 'data-run="pneumoniamnist-tinynet-finetune-ce" class="chosen"' in html
    assert "focal" in page.text and "S F1: focal" in page.text and "never on the test set" in page.text


def test_bad_metrics_files_name_the_file(tmp_path):
    missing = tmp_path / "metrics/ecg/gone.json"
    with pytest.raises(ReportError, match="gone.json"):
        load_metrics(missing)
    bad = tmp_path / "bad.json"
    for text, message in (("{not json", "malformed"), ("[1, 2]", "JSON object"),
                          ('{"model": "m", "per_class": {"N": {"f1": 1}}}', "missing key 'macro_f1'"),
                          ('{"model": "m", "macro_f1": "0.5", "per_class": {"N": {"f1": 1}}}', "number or null"),
                          ('{"model": "m", "macro_f1": 0.5, "per_class": {"N": {"se": 1}}}', "at least 'f1'")):
        bad.write_text(text)
        with pytest.raises(ReportError, match=message) as info:
            load_metrics(bad)
        assert str(bad) in str(info.value)


def test_missing_or_stringy_inputs_are_named(tmp_path):
    write_fixture(tmp_path, vision=False)
    (tmp_path / "metrics/ecg/external.json").write_text('{"records": "another stage\'s metrics"}')  # not a run
    build(tmp_path, tmp_path / "out", CFG)
    assert not (tmp_path / "out/runs/ecg/external.html").exists()
    (tmp_path / "metrics/ecg/tiny1d-ce.json").unlink()
    with pytest.raises(ReportError, match="metrics/ecg/tiny1d-ce.json: file not found"):
        build(tmp_path, tmp_path / "out", CFG)
    path = tmp_path / "metrics/ecg/tiny1d-focal.json"
    path.write_text(path.read_text().replace('"macro_f1": {', '"macro_f1": [0.1, 0.2], "x": {', 1))
    with pytest.raises(ReportError, match="ci95.macro_f1' must be {lo, hi}"):
        load_metrics(path)


def test_missing_eval_npz_degrades_and_bad_one_is_named(tmp_path):
    write_fixture(tmp_path, vision=False)
    eval_npz = tmp_path / "artifacts/ecg/tiny1d-ce/eval.npz"
    eval_npz.unlink()
    build(tmp_path, tmp_path / "out", CFG)
    page = _html(tmp_path / "out/runs/ecg/tiny1d-ce.html")
    assert "eval.npz not found" in page.text and "confusion-table" not in page.ids
    info = json.loads((tmp_path / "artifacts/ecg/tiny1d-ce/eval.json").read_text())
    assert tables.ci_text(info["class_ci95"]["S"]["f1"]) in page.text  # intervals come from eval.json
    check_run_page(page, json.loads((tmp_path / "metrics/ecg/tiny1d-ce.json").read_text()))
    eval_npz.write_bytes(b"not a zip")
    with pytest.raises(ReportError, match="tiny1d-ce/eval.npz"):
        build(tmp_path, tmp_path / "out", CFG)


def test_stage_main_fails_naming_malformed_file(tmp_path, capsys):
    write_fixture(tmp_path, vision=False)
    (tmp_path / "params.yaml").write_text("report: {max_errors: 2, arms: [ecg]}\n")
    args = ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    (tmp_path / "metrics/ecg/tiny1d-ce.json").write_text('{"model": ')
    assert main(args) == 1
    assert "tiny1d-ce.json" in capsys.readouterr().err


def test_text_is_escaped(tmp_path):
    write_fixture(tmp_path, vision=False)
    path = tmp_path / "artifacts/ecg/tiny1d-ce/eval.json"
    path.write_text(path.read_text().replace('"model": "tiny1d"', '"model": "<b>x</b>"'))
    build(tmp_path, tmp_path / "out", CFG)
    html = (tmp_path / "out/runs/ecg/tiny1d-ce.html").read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


def test_failure_modes_and_contrast_wording():
    run = Run(ECG_REPORT, "x", Path("x.json"), {"per_class": {c: {"f1": None} for c in "NSVF"}},
              classes=ECG_CLASSES)
    cm = np.array([[90, 2, 3, 0, 0], [30, 10, 0, 0, 0], [1, 0, 19, 0, 0], [3, 0, 2, 0, 0], [0, 0, 0, 0, 1]])
    modes = tables.failure_modes(run, cm)
    assert modes[0] == "No beat was predicted as F: all 5 test beats of class F were missed."
    assert "Beats of class S are most often called N (75.0% of them: 30 of 40)." in modes
    assert "do not overlap: a is better" in compare.contrast("F1", ("a", 0.8, _ci(0.7, 0.9)), ("b", 0.5, _ci(0.4, 0.6)))
    assert "cannot tell them apart" in compare.contrast("F1", ("a", 0.6, _ci(0.4, 0.7)), ("b", 0.5, _ci(0.4, 0.6)))
    assert "no call" in compare.contrast("F1", ("a", None, None), ("b", 0.5, _ci(0.4, 0.6)))


def _ci(lo, hi):
    return {"lo": lo, "hi": hi}


def test_page_intervals_are_the_evaluate_stage_ones(ecg_only):
    """The report recomputes no bootstrap: each per-class interval on the page is eval.json's."""
    run = load_run(ecg_only, ECG_REPORT, ecg_only / "metrics/ecg/tiny1d-ce.json")
    page = (ecg_only / "out/runs/ecg/tiny1d-ce.html").read_text()
    for c in "NSVF":
        for key, _ in tables.COLUMNS:
            ci = run.info["class_ci95"][c][key]
            assert ci is None or tables.ci_text(ci) in page, (c, key)
    assert run.info["evaluate"]["bootstrap"] == EVAL.bootstrap and "200 resamples" in page


def _evaluated_runs():
    """(metrics file, eval.json) of each run the evaluate stages left in this working copy."""
    files = [(ROOT / "metrics" / p.parts[-3] / f"{p.parent.name}.json", p)
             for p in sorted((ROOT / "artifacts").glob("*/*/eval.json"))]
    old = [m.name for m, _ in files if m.is_file() and not _numbers_only(json.loads(m.read_text()))]
    return files, old


@pytest.mark.skipif(not _evaluated_runs()[0], reason="no evaluated runs in this working copy")
def test_report_on_the_working_copy_runs(tmp_path):
    files, old = _evaluated_runs()
    if old:
        pytest.skip(f"metrics files predate the numbers-only vocabulary (rerun the evaluate stages): {old[:3]}")
    written = build(ROOT, tmp_path, ReportParams())
    index = _html(tmp_path / "index.html")
    for metrics_path, _ in files:
        rel = f"runs/{metrics_path.parent.name}/{metrics_path.stem}.html"
        assert rel in index.links and tmp_path / rel in written
        check_run_page(_html(tmp_path / rel), json.loads(metrics_path.read_text()))


class _FakeRun:
    def __init__(self, model, regime, macro, ci, val):
        self.name = f"ds-{model}-{regime}-ce"
        self.arm = VISION_REPORT
        self.info = {"dataset": "ds", "model": model, "regime": regime, "loss": "ce"}
        self.metrics = {"macro_f1": macro, "accuracy": macro, "ci95": {"macro_f1": _ci(*ci), "accuracy": _ci(*ci)},
                        "val_macro_f1": val, "per_class": {"a": {"f1": macro, "n": 10}}}
        self.scored = ["a"]

    def get(self, key):
        return self.metrics[key] if key in self.metrics else self.info.get(key)

    def class_ci(self, cls, key):
        return None


def test_compare_vision_backbones_and_regimes():
    runs = [_FakeRun("alexnet", "frozen", 0.9, [0.85, 0.95], 0.8), _FakeRun("vgg16", "frozen", 0.6, [0.5, 0.7], 0.7),
            _FakeRun("alexnet", "finetune", 0.7, [0.6, 0.8], 0.6), _FakeRun("vgg16", "finetune", 0.65, [0.55, 0.75], 0.9)]
    blocks = {b["title"]: b for b in compare.blocks(VISION_REPORT, runs)}
    assert set(blocks) == {"ds · alexnet · ce", "ds · vgg16 · ce", "ds · finetune · ce (backbones compared)",
                           "ds · frozen · ce (backbones compared)"}
    frozen = blocks["ds · frozen · ce (backbones compared)"]
    assert frozen["vary"] == "model" and [r["label"] for r in frozen["rows"]] == ["alexnet", "vgg16"]
    assert "do not overlap: alexnet is better" in frozen["answers"][0]
    # the validation choice is one run per dataset, whatever the block
    assert [r["name"] for b in blocks.values() for r in b["rows"] if r["chosen"]] == ["ds-vgg16-finetune-ce"] * 2


def test_report_package_names_no_arm():
    """pipeline/report is domain-free: arm names and domain words live in the arms' descriptors."""
    words = ("ecg", "vision", "beat", "aami", "r peak", "mit-bih", "recording", "medmnist", "pneumonia")
    folder = ROOT / "pipeline/report"
    for path in [*folder.rglob("*.py"), *folder.rglob("*.html")]:
        text = path.read_text().lower()
        assert not [w for w in words if w in text], (path, [w for w in words if w in text])
