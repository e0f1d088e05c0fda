"""Report pages in a real browser: Debian's chromium, headless, opened from disk.

Chromium is /usr/bin/chromium (or `chromium` on PATH). Tests never install system packages:
`make test` / `make browser` (and so .ci/run) install Debian's chromium when it is missing;
without it these tests skip, saying so.
Each page is loaded with --dump-dom: the page's own script marks <body> once loaded
(data-report-ready, data-broken-images, data-problems = script errors + blocked fetches),
and --enable-logging=stderr prints every console message, of which there must be none.
The dumped DOM is parsed with html.parser and checked against the metrics files.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.report.stage import build
from tests.test_report import CFG, PageParser, check_run_page, write_fixture

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]
CONSOLE = re.compile(r":CONSOLE[:(]")


def _find() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = _find()
    if found is None:
        pytest.skip("chromium not found (neither /usr/bin/chromium nor `chromium` on PATH); "
                    "install it with `make browser` (as root: apt-get install -y chromium)")
    return found


def browse(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def load(binary: str, profile: Path, page: Path) -> tuple[PageParser, list[str]]:
    """The page's DOM after load, and the console messages it produced."""
    done = browse(binary, profile, "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    return PageParser.parse(done.stdout), [ln for ln in done.stderr.splitlines() if CONSOLE.search(ln)]


def test_console_scan_sees_errors(chromium, tmp_path):
    """Control: a page that logs an error and fetches from the network is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><meta http-equiv="Content-Security-Policy" content="img-src data:">'
                    '<body><img src="https://example.invalid/x.png"><script>console.error("boom")</script>')
    _, console = load(chromium, tmp_path / "profile", page)
    assert any("boom" in ln for ln in console) and any("example.invalid" in ln for ln in console)


def test_report_pages_in_browser(chromium, tmp_path):
    names = write_fixture(tmp_path)
    out = tmp_path / "out"
    build(tmp_path, out, CFG)
    profile = tmp_path / "profile"
    pages = {"index": out / "index.html", "compare": out / "compare.html"}
    pages.update({f"{arm}/{n}": out / "runs" / arm / f"{n}.html" for arm, runs in names.items() for n in runs})
    dom = {}
    for key, path in pages.items():
        dom[key], console = load(chromium, profile, path)
        assert console == [], f"{path.name}: console messages {console}"
        assert dom[key].body.get("data-report-ready") == "yes", f"{path.name}: load marker missing"
        assert dom[key].body.get("data-broken-images") == "0", path.name
        assert dom[key].body.get("data-problems") == "0", path.name
    for arm, runs in names.items():
        for n in runs:
            assert f"runs/{arm}/{n}.html" in dom["index"].links
            metrics = json.loads((tmp_path / "metrics" / arm / f"{n}.json").read_text())
            check_run_page(dom[f"{arm}/{n}"], metrics)
            assert len(dom[f"{arm}/{n}"].images) >= 4  # confusion, reliability, errors (+ history for ECG)
    assert dom["compare"].rows["tiny1d"] == names["ecg"]
    focal = json.loads((tmp_path / "metrics/ecg/tiny1d-focal.json").read_text())
    cell = next(c for c in dom["compare"].cells if c["row"].get("data-run") == "tiny1d-focal" and c["metric"] == "S_f1")
    assert float(cell["value"]) == focal["per_class"]["S"]["f1"]

    shot = tmp_path / "run-page.png"
    browse(chromium, profile, "--window-size=1200,3200", "--hide-scrollbars", f"--screenshot={shot}",
           pages["ecg/tiny1d-focal"].resolve().as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    pdf = tmp_path / "run-page.pdf"
    browse(chromium, profile, "--no-pdf-header-footer", f"--print-to-pdf={pdf}",
           pages["ecg/tiny1d-focal"].resolve().as_uri())
    data = pdf.read_bytes()
    assert data[:5] == b"%PDF-" and len(re.findall(rb"/Type\s*/Page\b", data)) >= 5  # a page per section


def test_clinical_pages_in_browser(chromium, tmp_path, tmp_path_factory):
    """Report v2 in chromium: AUC, operating points, the low-sensitivity banner, kappa and the paired
    differences read from the rendered DOM equal the metrics files; no absolute path in any page;
    screenshots of a binary page, a graded page and the compare page saved for review."""
    from tests.test_report_clinical import ABSOLUTE, _make_built, _make_ecg

    root, names = _make_built(tmp_path_factory.mktemp("clinical-browser"))
    out, profile = root / "out", tmp_path / "profile"
    pages = {n: out / "runs/vision" / f"{n}.html" for n in names} | {"compare": out / "compare.html",
                                                                       "index": out / "index.html"}
    dom = {}
    for key, path in pages.items():
        dom[key], console = load(chromium, profile, path)
        assert console == [] and dom[key].body.get("data-problems") == "0", path.name
        assert dom[key].body.get("data-broken-images") == "0", path.name
        assert str(root) not in dom[key].text and not ABSOLUTE.search(dom[key].text), path.name
    for n in names:
        m = json.loads((root / "metrics/vision" / f"{n}.json").read_text())
        page = dom[n]
        check_run_page(page, m)
        if "auc" in page.ids:
            assert float(page.ids["auc"]["data-value"]) == m["auc"]
            for c in (c for c in page.cells if c["table"] == "operating-points-table"):
                assert float(c["value"]) == m["operating_points"][c["row"]["data-point"]][c["metric"]]
            se = m["per_class"]["malignant"]["se"]
            assert ("low-sensitivity" in page.ids) == (se < 0.8)
            if se < 0.8:
                assert f"{100 * se:.1f}%" in page.text
        else:
            for key in ("kappa_quadratic", "within_one"):
                assert f"{100 * m[key]:.1f}%" in page.text
    fin = json.loads((root / "metrics/vision" / f"{names[1]}.json").read_text())
    fro = json.loads((root / "metrics/vision" / f"{names[0]}.json").read_text())
    diff = 100 * (fin["macro_f1"] - fro["macro_f1"])
    assert f"difference finetune − frozen {diff:+.1f} points" in dom["compare"].text
    for key, size in ((names[0], "1200,4200"), (names[2], "1200,4200"), ("compare", "1200,3000")):
        shot = tmp_path / f"{key}.png"
        browse(chromium, profile, f"--window-size={size}", "--hide-scrollbars", f"--screenshot={shot}",
               pages[key].resolve().as_uri())
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    ecg = _make_ecg(tmp_path_factory.mktemp("ecg-browser"))
    ecg_page = ecg / "out/runs/ecg/tiny1d-ce.html"
    ecg_dom, console = load(chromium, profile, ecg_page)
    assert console == [] and ecg_dom.body.get("data-broken-images") == "0"
    m = json.loads((ecg / "metrics/ecg/tiny1d-ce.json").read_text())
    got = {c["row"]["data-class"]: float(c["value"]) for c in ecg_dom.cells if c["table"] == "alarms-table"}
    assert got == m["alarms_per_hour"] and not ABSOLUTE.search(ecg_dom.text) and str(ecg) not in ecg_dom.text
    shot = tmp_path / "ecg-page.png"
    browse(chromium, profile, "--window-size=1200,5200", "--hide-scrollbars", f"--screenshot={shot}", ecg_page.resolve().as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("REPORT_SHOTS"):  # copy the screenshots out for review
        for shot in tmp_path.glob("*.png"):
            shutil.copy(shot, Path(os.environ["REPORT_SHOTS"]) / shot.name)
