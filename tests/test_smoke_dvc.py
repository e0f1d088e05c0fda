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

from pipeline import profile
from pipeline.tracking import flatten as tracking_flatten
from tests.conftest import committed_text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SQUEEZENET_H5 = ROOT.parent / "shared" / "weights" / "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"

# Only what differs from the committed params.yaml: a few records and images, one epoch.
TINY = {
    "grid": {"vision": {"datasets": ["breastmnist"], "models": ["alexnet", "vgg16", "squeezenet"],
                        "regimes": ["frozen", "finetune"], "losses": ["ce"]}},
    "ecg_data": {"records": [101, 106, 108, 100, 103], "n_folds": 3},   # 3: the nested cross-validation's least
    "ecg_replicate": {"seeds": [43]},
    # every beat per epoch: balanced epochs make the tiny set pick lenet1d-ce (compress_ecg cannot channel-prune it)
    "ecg_train": {"limit_beats": 3000, "sampling": {"majority": "N", "keep": None},
                  "fit": {"epochs": 1, "batch_size": 256, "learning_rate": 0.001, "patience": 1, "min_delta": 0.001}},
    "evaluate": {"bootstrap": 50},
    "vision_data": {"limit": 48},
    "vision_source": {"limit_per_class": 4},
    "vision_pretrain": {"squeezenet": {"image_size": 40}},  # ImageNet weights, loaded not trained; small input
    "vision_train": {"limit": 48},
    "ecg_generalise": {"rates": [128]},
    "ecg_robustness": {"noises": ["ma"], "snr_db": [6]},
    "compress_ecg": {"student": {"widths": [3]},
                     "distill": {"select_width": 3, "temperatures": [2.0], "alphas": [0.9],
                                 "fit": {"epochs": 1, "batch_size": 512, "learning_rate": 0.003, "patience": 1,
                                         "min_delta": 0.001}},
                     "prune": {"sparsities": [0.5],
                               "fit": {"epochs": 1, "batch_size": 256, "learning_rate": 0.0003, "patience": 1,
                                       "min_delta": 0.001}},
                     "representative": 64, "noise_draws": 1,
                     "latency": {"repeats": 5, "warmup": 1, "large_batch": 64}},
    "analyse_ecg": {"dead_beats": 2000, "saliency_beats": 20, "windows": 4},
    "goal_vision": {"bootstrap": 20},
    "analyse_vision": {"bootstrap": 20, "noise_sigma": [25.5], "blur_sigma": [1.0], "dead_images": 16},
    "insight_ecg": {"smoothing": [0.0, 0.1],
                    "fit": {"epochs": 1, "batch_size": 256, "learning_rate": 0.001, "patience": 1, "min_delta": 0.001}},
    "insight_vision": {"bootstrap": 20, "dead_images": 16,
                       "smoothing": {"dataset": "breastmnist", "model": "alexnet", "eps": [0.0, 0.1]},
                       "scratch": {"dataset": "breastmnist", "image_size": 67,
                                   "fit": {"epochs": 1, "batch_size": 32, "learning_rate": 0.001, "patience": 1,
                                           "min_delta": 0.001}},
                       "filters": {"finetune_dataset": "breastmnist", "max_filters": 16}},
    "forgetting_vision": {"unfreeze_from": ["block5"], "learning_rates": [0.001], "finetune_epochs": 1,
                          "head_fit": {"epochs": 1, "batch_size": 32, "learning_rate": 0.001, "patience": 1,
                                       "min_delta": 0.001},
                          "source_train": 30, "bootstrap": 20},
}


def tiny_params() -> dict:
    committed = yaml.safe_load(committed_text("params.yaml"))
    params = profile.merged(committed, profile.overrides(TINY, committed))  # a profile, checked key by key
    for model in params["grid"]["vision"]["models"]:
        if "fit" in params["vision_pretrain"][model]:
            params["vision_pretrain"][model]["fit"]["epochs"] = 1
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
               CIFAR10_ZIP=str(SHARED / "cifar10" / "cifar10_jpg.zip"), NSTDB_MIRROR=str(SHARED / "nstdb"),
               SQUEEZENET_WEIGHTS=os.environ.get("SQUEEZENET_WEIGHTS", str(SQUEEZENET_H5)),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONPATH=str(proj))
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    # as a researcher would: train, choose the package's run on DS1 out-of-fold macro-F1, then the rest
    run = subprocess.run(["dvc", "repro", "train_ecg"], cwd=proj, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    oof = {p.parent.name: json.loads(p.read_text())["val_macro_f1"] for p in (proj / "artifacts" / "ecg").glob("*/train.json")}
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["package_ecg"]["run"] = max(oof, key=oof.get)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = subprocess.run(["dvc", "repro"], cwd=proj, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for name in ("lenet1d-ce", "lenet1d-focal", "dilated1d-ce", "dilated1d-focal"):
        m = json.loads((proj / "metrics" / "ecg" / f"{name}.json").read_text())
        info = json.loads((proj / "artifacts" / "ecg" / name / "eval.json").read_text())
        assert info["split"] == "DS2" and "DS1" in info["selected_on"] and info["mlflow_run_id"]
        assert set(m["per_class"]) == {"N", "S", "V", "F"}
        assert 0 <= m["macro_f1"] <= 1 and 0 <= m["ece"]["after"] <= 1 and m["temperature"] > 0
        assert m["ci95"]["macro_f1"]["lo"] <= m["macro_f1"] <= m["ci95"]["macro_f1"]["hi"]
        assert not [k for k, v in tracking_flatten(m).items() if v is not None and not isinstance(v, (int, float))], m
    deployed_ds2 = json.loads((proj / "metrics" / "ecg" / "deployed.json").read_text())
    spec = json.loads((proj / "models" / "ecg" / "package.json").read_text())
    assert "artifacts/ecg_replicate/seed43/oof.npz" in spec["temperature_fitted_on"]
    assert deployed_ds2["temperature"] == spec["temperature"] and set(deployed_ds2["per_class"]) == {"N", "S", "V", "F"}
    seeds = json.loads((proj / "metrics" / "ecg" / "seeds.json").read_text())
    assert set(seeds["ds2"]["per_seed"]) == set(seeds["ds1_out_of_fold"]["per_seed"]) == {"42", "43"}
    robustness = json.loads((proj / "metrics" / "ecg" / "robustness.json").read_text())
    assert set(robustness) == {"clean", "ma"} and set(robustness["ma"]) == {"6"}
    assert 0 <= robustness["ma"]["6"]["macro_f1"] <= 1
    assert set(json.loads((proj / "metrics" / "ecg" / "rerecorded.json").read_text())) == {"annotated", "128"}
    deployed = json.loads((proj / "metrics" / "ecg" / "deploy.json").read_text())
    assert {"teacher", "teacher_int8", "member", "member_int8", "student_w3_kd", "student_w3_hard", "member_s0.5",
            "member_ch0.5", "combined", "combined_int8"} <= set(deployed["variants"])
    for name, row in deployed["variants"].items():
        assert 0 <= row["macro_f1"] <= 1 and row["bytes"] > 0 and row["latency_ms_b1"] > 0, name
    assert deployed["variants"]["member_s0.5"]["sparsity"] >= 0.49
    analysis = json.loads((proj / "metrics" / "ecg" / "analysis.json").read_text())
    assert set(analysis["runs"]) == {"lenet1d-ce", "lenet1d-focal", "dilated1d-ce", "dilated1d-focal"}
    assert analysis["readings"] and (proj / "artifacts" / "ecg" / "analysis").is_dir()
    vision_analysis = json.loads((proj / "metrics" / "analysis" / "vision.json").read_text())
    assert vision_analysis["readings"] and (proj / "artifacts" / "analysis" / "vision").is_dir()
    squeeze = json.loads((proj / "artifacts" / "vision" / "pretrain" / "squeezenet" / "backbone.json").read_text())
    assert squeeze["source"] == "imagenet" and squeeze["input_shape"] == [40, 40, 3]
    for regime in ("frozen", "finetune"):  # ImageNet squeezenet through train, evaluate and the analyses
        name = f"breastmnist-squeezenet-{regime}-ce"
        assert 0 <= json.loads((proj / "metrics" / "vision" / f"{name}.json").read_text())["macro_f1"] <= 1
        layer = vision_analysis["gradcam"][name]["layer"]  # a fire module (a branching Segment link)
        assert "_fire" in layer and layer.endswith("_concat"), layer
    goal = json.loads((proj / "metrics" / "analysis" / "goal_vision.json").read_text())
    assert goal["readings"] and "breastmnist" in json.dumps(goal["imagenet_vs_cifar"])
    assert (proj / "reports" / "index.html").exists()
    status = subprocess.run(["dvc", "status"], cwd=proj, env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
