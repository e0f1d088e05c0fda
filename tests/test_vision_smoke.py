"""End-to-end smoke run of the vision training side on tiny synthetic images (no download).

pretrain_vision (AlexNet, synthetic source set) -> train_vision (frozen and finetune) ->
evaluate_vision, with MLflow in a temporary sqlite store; checks the metrics contract.
"""
import json

import numpy as np
import pytest
import yaml

pytest.importorskip("keras")

from vision import evaluate, pretrain, train  # noqa: E402

FIT = {"epochs": 1, "batch_size": 8, "learning_rate": 0.001, "patience": 1}
CONTRACT = {"accuracy", "auc", "macro_f1", "per_class", "ece", "brier", "nll", "temperature", "ci95", "val_macro_f1"}
INFO = {"dataset", "model", "regime", "loss", "split", "mlflow_run_id"}


def image_set(rng, n, size, channels, n_classes):
    """Class k images are bright in band k: learnable in one epoch, not trivially."""
    y = np.arange(n) % n_classes
    x = rng.integers(0, 80, (n, size, size, channels))
    band = size // n_classes
    for i, k in enumerate(y):
        x[i, k * band:(k + 1) * band] += 150
    return x.astype(np.uint8), y.astype(np.int64)


def write_set(path, rng, sizes, size, channels, classes):
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"x_{split}"], arrays[f"y_{split}"] = image_set(rng, n, size, channels, len(classes))
    np.savez(path.with_suffix(".npz"), **arrays)
    path.with_suffix(".json").write_text(json.dumps({"class_names": classes, "n_classes": len(classes)}))


@pytest.fixture
def project(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    write_set(data / "source_cifar10", rng, (24, 8, 8), 16, 3, ["a", "b", "c"])
    write_set(data / "toy", rng, (16, 10, 12), 12, 1, ["normal", "abnormal, benign"])
    params = {
        "vision_pretrain": {"image_size": 16, "head_units": [8], "mixed_precision": "off",
                            "alexnet": {"weights": "source:cifar10", "fit": FIT},
                            "vgg16": {"weights": "source:cifar10", "fit": FIT}},
        "vision_train": {"head_units": [8], "head_fit": FIT, "unfreeze_from": {"alexnet": "block5"},
                         "finetune": {"fit": FIT, "augment": {"flip": {"toy": "horizontal"}}},
                         "mixed_precision": "off"},
        "evaluate": {"bootstrap": 50},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_pretrain_train_evaluate(project):
    args = ["--params", "params.yaml", "--data", "data"]
    assert pretrain.main(["--model", "alexnet", *args]) == 0
    backbone = json.loads((project / "artifacts/vision/pretrain/alexnet/backbone.json").read_text())
    assert backbone["source"] == "source:cifar10" and len(backbone["sha256"]) == 64
    for regime, loss in (("frozen", "ce"), ("finetune", "focal")):
        stage = ["--dataset", "toy", "--model", "alexnet", "--regime", regime, "--loss", loss, *args]
        assert train.main(stage) == 0
        assert evaluate.main(stage) == 0
        name = f"toy-alexnet-{regime}-{loss}"
        m = json.loads((project / "metrics/vision" / f"{name}.json").read_text())
        info = json.loads((project / "artifacts/vision" / name / "eval.json").read_text())
        assert CONTRACT <= set(m) and INFO <= set(info)
        assert info["split"] == "test" and (info["regime"], info["loss"]) == (regime, loss)
        for key in ("accuracy", "auc", "macro_f1", "val_macro_f1"):
            assert 0 <= m[key] <= 1, key
        assert 0 <= m["ece"]["before"] <= 1 and 0 <= m["ece"]["after"] <= 1
        for key in ("accuracy", "macro_f1"):
            ci = m["ci95"][key]
            assert 0 <= ci["lo"] <= ci["hi"] <= 1
        assert set(m["per_class"]) == {"normal", "abnormal, benign"}  # a comma: not an MLflow key
        for c in m["per_class"].values():
            assert {"se", "ppv", "f1", "spec", "n"} <= set(c) and c["n"] == 6
            assert all(c[k] is None or 0 <= c[k] <= 1 for k in ("se", "ppv", "f1", "spec"))
        m = info  # names and ids live beside the metrics
        assert len(m["mlflow_run_id"]) == 32
        trained = json.loads((project / "artifacts/vision" / name / "train.json").read_text())
        assert trained["model_info"]["backbone_sha256"] == backbone["sha256"]
        assert trained["model_info"]["backbone_source"] == "source:cifar10"
        assert trained["mlflow_run_id"] == m["mlflow_run_id"]  # one MLflow run per combination
        ev = np.load(project / "artifacts/vision" / name / "eval.npz")
        assert ev["probs"].shape == ev["probs_before"].shape == (12, 2)
        assert ev["error_x"].shape[1:] == (12, 12, 1) and len(ev["error_x"]) == len(ev["error_index"]) <= 12
        assert (project / "reports/plots/vision" / name / "confusion.csv").exists()
        assert (project / "reports/plots/vision" / name / "reliability.json").exists()
    fine = json.loads((project / "artifacts/vision/toy-alexnet-finetune-focal/train.json").read_text())
    assert set(fine["finetune"]) >= {"unfreeze_from", "history"} and fine["finetune"]["unfreeze_from"] == "block5"
