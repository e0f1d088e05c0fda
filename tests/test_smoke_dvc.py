"""Smoke `dvc repro` of the whole pipeline on a tiny configuration (few records/images, 1 epoch).

Runs in a copy of the project's tracked files, with MLflow logging to a temporary store.
Needs the local mirrors in ../shared (CI has them); skipped otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

TINY = {
    "ecg_data": {"records": [101, 106, 108, 100, 103], "n_folds": 2},
    "ecg_train": {"losses": ["ce", "focal"], "limit_beats": 3000, "bootstrap": 50,
                  "fit": {"epochs": 1, "batch_size": 256, "learning_rate": 0.001, "patience": 1, "min_delta": 0.001}},
    "report": {"bootstrap": 50},
}


def tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, overrides in TINY.items():
        if section in params:
            params[section].update(overrides)
    vision = {
        "vision_data": {"datasets": ["breastmnist"], "limit": 48},
        "vision_pretrain": {"limit_per_class": 4},
        "vision_train": {"losses": ["ce"], "limit": 48, "bootstrap": 50},
    }
    for section, overrides in vision.items():
        if section in params:
            params[section].update(overrides)
    if "vision_pretrain" in params:
        for fit in params["vision_pretrain"]["fit"].values():
            fit["epochs"] = 1
    if "vision_train" in params:
        params["vision_train"]["head_fit"]["epochs"] = 1
        params["vision_train"]["finetune"]["fit"]["epochs"] = 1
    return params


def copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for generated in ("metrics", "reports/plots", "dvc.lock"):  # the smoke run makes its own
        shutil.rmtree(dest / generated, ignore_errors=True) if (dest / generated).is_dir() else \
            (dest / generated).unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_dvc_repro(tmp_path):
    if not (SHARED / "mitdb" / "RECORDS").exists():
        pytest.skip(f"local mirror {SHARED} absent")
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_project(proj)
    (proj / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    env = dict(os.environ, ECG_MIRROR=str(SHARED / "mitdb"), MEDMNIST_MIRROR=str(SHARED / "medmnist"),
               CIFAR10_ZIP=str(SHARED / "cifar10" / "cifar10_jpg.zip"),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONPATH=str(proj))
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    run = subprocess.run(["dvc", "repro"], cwd=proj, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for name in ("lenet1d-ce", "lenet1d-focal", "dilated1d-ce", "dilated1d-focal"):
        m = json.loads((proj / "metrics" / "ecg" / f"{name}.json").read_text())
        assert m["split"] == "DS2" and m["selected_on"] == "DS1 validation"
        assert set(m["per_class"]) == {"N", "S", "V", "F"}
        assert 0 <= m["macro_f1"] <= 1 and 0 <= m["ece"]["after"] <= 1 and m["temperature"] > 0
        assert m["mlflow_run_id"] and len(m["ci95"]["macro_f1"]) == 2
    assert (proj / "reports" / "index.html").exists()
    status = subprocess.run(["dvc", "status"], cwd=proj, env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
