"""`dvc plots show` of the project's plot definitions renders offline, in headless chromium.

The plot properties (template, x, y) are read from the committed dvc.yaml, the templates from
.dvc/plots/, the Vega scripts from the npm packages `make vega` installs (.vega/node_modules, or
VEGA_JS_DIR). The data are small synthetic evaluate outputs written by pipeline.assess.
Skips when chromium or the Vega scripts are missing (the Makefile installs both).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import assess, plots
from tests.conftest import committed_text

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
RUNS = {"ecg": ["N", "S", "V", "F", "Q"], "vision": ["normal", "pneumonia"]}


def _chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


def plot_properties(dvc_yaml: dict) -> dict:
    """File name (confusion.csv, reliability.json) -> its plot properties, from stage or top-level plots."""
    entries = [e for stage in (dvc_yaml.get("stages") or {}).values() for e in (stage.get("plots") or [])]
    entries += list(dvc_yaml.get("plots") or [])
    found = {}
    for entry in entries:
        if isinstance(entry, dict):
            for path, props in entry.items():
                found.setdefault(Path(str(path)).name, {k: v for k, v in (props or {}).items() if k != "cache"})
    return found


def _write_outputs(folder: Path, classes, seed):
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.integers(0, len(classes), n)
    p = rng.dirichlet(np.ones(len(classes)), n)
    p[np.arange(n), y] += 0.4
    p = (p / p.sum(1, keepdims=True)) ** 3
    p /= p.sum(1, keepdims=True)
    scores = assess.score(y, p, y, p, np.arange(n) % 10, classes, classes, n_boot=10, n_bins=10)
    assess.write_plots(scores, classes, folder, folder / "figures", "t")


@pytest.fixture
def offline_template(tmp_path) -> Path:
    js_dir = Path(os.environ.get("VEGA_JS_DIR", ROOT / ".vega/node_modules"))
    if not all((js_dir / rel).is_file() for rel in plots.VEGA_JS):
        pytest.skip(f"Vega scripts not in {js_dir} (run `make vega`)")
    path = tmp_path / "offline.html"
    path.write_text(plots.offline_html_template(js_dir))
    return path


def test_dvc_plots_show_renders_offline(tmp_path, offline_template):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not found (run `make browser`)")
    props = plot_properties(yaml.safe_load(committed_text("dvc.yaml")))
    assert props["confusion.csv"]["template"] == "confusion_counts", props
    assert props["reliability.json"]["template"] == "calibration", props
    proj = tmp_path / "proj"
    (proj / ".dvc").mkdir(parents=True)
    shutil.copytree(ROOT / ".dvc/plots", proj / ".dvc/plots")
    (proj / ".dvc/config").write_text("[core]\n    no_scm = True\n    analytics = false\n")
    declared = []
    for i, (arm, classes) in enumerate(RUNS.items()):
        _write_outputs(proj / arm, classes, i)
        declared += [{f"{arm}/{name}": props[name]} for name in ("confusion.csv", "reliability.json")]
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"plots": declared}))
    out = proj / "out"
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--html-template", str(offline_template),
                           "-o", str(out)], cwd=proj, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    html = (out / "index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html) and "cdn.jsdelivr" not in html  # nothing fetched
    assert html.count('"actual":') == 5 * 5 + 2 * 2  # aggregated counts, one row per cell
    assert html.count('"calibration":') > 4 and "share_of_true_class" in html

    profile = tmp_path / "profile"
    dom = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                          "--dump-dom", (out / "index.html").as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    canvases = re.findall(r'<canvas width="(\d+)" height="(\d+)"', dom.stdout)
    assert len([c for c in canvases if int(c[0]) > 100 and int(c[1]) > 100]) == 4, canvases  # every plot drew
    assert "Error" not in re.sub(r"<script.*?</script>", "", dom.stdout, flags=re.S)
    shot = tmp_path / "plots.png"
    subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                    "--window-size=1200,1600", f"--screenshot={shot}", (out / "index.html").as_uri()],
                   capture_output=True, text=True, timeout=180)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 30_000  # not a blank page
