"""Changing one knob makes stale exactly the stages that read it (checked with `dvc status` on a copy
of the project whose outputs are stand-in files committed to a fresh dvc.lock)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.dvc_noop import export_tree, stand_in_outputs

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]
pytestmark = pytest.mark.slow


def dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([*DVC, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, f"dvc {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The project's files, every stage output replaced by a stand-in, all committed to a fresh dvc.lock
    (the same stand-in project benchmarks/dvc_noop.py times)."""
    dest = tmp_path_factory.mktemp("project")
    export_tree(dest, None)
    stand_in_outputs(dest)  # asserts the committed copy is up to date
    return dest


def _stale(dest: Path) -> set[str]:
    return set(json.loads(dvc(dest, "status", "--json")))


def _edit(dest: Path, path: list, value) -> None:
    params = yaml.safe_load((dest / "params.yaml").read_text())
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def copy(project, tmp_path) -> Path:
    dest = tmp_path / "p"
    shutil.copytree(project, dest, symlinks=True)
    return dest


def test_bootstrap_reruns_only_evaluation(copy):
    """Every stage that draws record/image bootstraps reruns, no training; the report reads the CIs evaluate
    wrote, so it reruns only once evaluate has rewritten them."""
    _edit(copy, ["evaluate", "bootstrap"], 500)
    stale = _stale(copy)
    assert {s.split("@")[0] for s in stale} == {"evaluate_ecg", "evaluate_vision", "evaluate_rerecorded_ecg",
                                                "evaluate_robustness_ecg", "evaluate_external_ecg",
                                                "evaluate_deployed_ecg", "compress_ecg", "analyse_ecg",
                                                "insight_ecg"}, stale
    # (the last three score record-bootstrap CIs too; insight_ecg restores its fits from checkpoints)
    grid = yaml.safe_load((copy / "params.yaml").read_text())["grid"]
    n_ecg = len(grid["ecg"]["models"]) * len(grid["ecg"]["losses"])
    n_vision = len(grid["vision"]["datasets"]) * len(grid["vision"]["models"]) * len(grid["vision"]["regimes"]) \
        * len(grid["vision"]["losses"])
    assert len(stale) == n_ecg + n_vision + 4 + 3, stale


def test_gamma_reruns_only_focal_runs(copy):
    _edit(copy, ["ecg_train", "loss", "focal", "gamma"], 1.0)
    stale = _stale(copy)
    assert stale, "changing gamma must make the focal runs stale"
    # the focal runs, and the stages that retrain the packaged run (dilated1d-focal) or variants of it with its loss
    assert {s for s in stale if "focal" not in s} == {"insight_ecg", "replicate_ecg"}, stale
    assert {s.split("@")[0] for s in stale if "focal" in s} == {"train_ecg"}, stale


def test_new_grid_entry_adds_stages_and_changes_no_other(copy):
    _edit(copy, ["grid", "ecg", "losses"], ["ce", "focal", "weighted_ce"])
    stale = _stale(copy)
    assert stale, "the new runs must show as stale"
    assert all("weighted_ce" in s for s in stale), stale
