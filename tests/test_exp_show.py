"""The documented `dvc exp show` commands give a readable table (README, "Comparing experiments").

A throw-away git + DVC project with evaluate-style metrics files (the real vocabulary, written by
pipeline.assess) for a few runs of each arm; the full table is hundreds of columns wide, the
documented ones a handful.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipeline import assess

# The commands the README documents (arguments after `dvc exp show`).
HEADLINE_ECG = ["--drop", ".*", "--keep", "Experiment|Created|metrics/ecg/.*:(macro_f1|val_macro_f1)$"]
HEADLINE_ALL = ["--drop", ".*", "--keep", "Experiment|Created|.*:macro_f1$"]
WHAT_CHANGED = ["--only-changed", "--drop", r".*:(per_class|ci95|ece|brier|nll)\."]
RUNS = {"ecg": (["lenet1d-ce", "lenet1d-focal", "dilated1d-ce", "dilated1d-focal"], list("NSVFQ"), list("NSVF")),
        "vision": (["breastmnist-alexnet-frozen-ce", "breastmnist-alexnet-finetune-ce"],
                   ["malignant", "normal, benign"], ["malignant", "normal, benign"])}


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _dvc(cwd, *args) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _columns(cwd, *args) -> list[str]:
    return next(csv.reader(io.StringIO(_dvc(cwd, "exp", "show", "--csv", "--no-pager", *args))))


def _metrics(seed, classes, scored) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), 300)
    p = rng.dirichlet(np.ones(len(classes)), 300)
    p[np.arange(300), y] += 0.5
    p /= p.sum(1, keepdims=True)
    s = assess.score(y, p, y, p, np.arange(300) % 10, classes, scored, n_boot=10, auc=len(classes) == 2)
    return {**s.metrics, "val_macro_f1": 0.5}


@pytest.mark.slow
def test_documented_exp_show_is_readable(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    _dvc(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("evaluate: {bootstrap: 10, ece_bins: 15, seed: 0}\nreport: {max_errors: 3}\n")
    stages = {}
    for i, (arm, (names, classes, scored)) in enumerate(RUNS.items()):
        for j, name in enumerate(names):
            path = tmp_path / "metrics" / arm / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_metrics(10 * i + j, classes, scored)))
        stages[f"evaluate_{arm}"] = {"foreach": names, "do": {
            "cmd": "true", "params": ["evaluate"],
            "metrics": [{f"metrics/{arm}/${{item}}.json": {"cache": False}}]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "runs")

    full = _columns(tmp_path)
    assert len(full) > 150  # the unreadable default
    ecg = _columns(tmp_path, *HEADLINE_ECG)
    assert ecg[:2] == ["Experiment", "Created"] and len(ecg) == 2 + 2 * 4
    assert all(c.startswith("metrics/ecg/") for c in ecg[2:])
    headline = _columns(tmp_path, *HEADLINE_ALL)
    assert len(headline) == 2 + 4 + 2 and all(c.endswith(":macro_f1") for c in headline[2:])
    # after a change of one knob, only the params and metrics that moved are left
    (tmp_path / "params.yaml").write_text("evaluate: {bootstrap: 20, ece_bins: 15, seed: 0}\nreport: {max_errors: 3}\n")
    (tmp_path / "metrics/ecg/lenet1d-ce.json").write_text(json.dumps(_metrics(99, list("NSVFQ"), list("NSVF"))))
    changed = _columns(tmp_path, *WHAT_CHANGED)
    assert "evaluate.bootstrap" in changed and not any("vision" in c for c in changed), changed
    assert len(changed) <= 8 and "metrics/ecg/lenet1d-ce.json:macro_f1" in changed, changed
