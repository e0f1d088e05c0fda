"""Bad params for every stage: a clear error naming the key, before any output is touched.

The data-side catalogues are tests/test_bad_inputs_ecg.py and tests/test_bad_inputs_vision.py;
this module covers the training / evaluation / grid params.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError

ROOT = Path(__file__).resolve().parents[1]


def loaders():
    from ecg import config as ecg_config
    from ecg import train_config as ecg_train
    from pipeline import evaluate
    from vision import train_config as vision_train
    return {
        "ecg_data": ecg_config.load,
        "ecg_train": ecg_train.load,
        "evaluate": evaluate.load_params,
        "vision_pretrain": vision_train.load_pretrain,
        "vision_train": vision_train.load_train,
    }


def write_params(project_params: Path, edit) -> Path:
    params = yaml.safe_load(project_params.read_text())
    edit(params)
    project_params.write_text(yaml.safe_dump(params, sort_keys=False))
    return project_params


@pytest.mark.parametrize("section", ["ecg_data", "ecg_train", "evaluate", "vision_pretrain", "vision_train"])
def test_every_section_rejects_a_misspelt_key(section, project_params):
    path = write_params(project_params, lambda p: p[section].update({"bootstarp": 1}))
    with pytest.raises(ParamsError, match=r"bootstarp.*" + section):
        loaders()[section](path)


@pytest.mark.parametrize("section, edit, key", [
    ("evaluate", lambda p: p["evaluate"].update(bootstrap=-5), "bootstrap"),
    ("evaluate", lambda p: p["evaluate"].update(ece_bins=0), "ece_bins"),
    ("ecg_train", lambda p: p["ecg_train"]["loss"]["focal"].update(gamma=-1.0), "gamma"),
    ("ecg_train", lambda p: p["ecg_train"]["loss"]["weighted_ce"].update(alpha="balanced"), "alpha"),
    ("ecg_train", lambda p: p["ecg_train"]["loss"]["ce"].update(alpha="inverse"), "alpha"),  # ce has no weights
    ("ecg_train", lambda p: p["ecg_train"].update(limit_beats=0), "limit_beats"),
    ("vision_train", lambda p: p["vision_train"].update(dropout=1.5), "dropout"),
    ("vision_pretrain", lambda p: p["vision_pretrain"]["alexnet"].update(weights="imagenet"), "alexnet"),
])
def test_out_of_range_values_name_the_key(section, edit, key, project_params):
    path = write_params(project_params, edit)
    with pytest.raises(ParamsError, match=key):
        loaders()[section](path)


@pytest.mark.parametrize("module, args, valid", [
    ("ecg.train", ["--model", "seed", "--loss", "ce"], "lenet1d"),
    ("ecg.train", ["--model", "lenet1d", "--loss", "dice"], "weighted_ce"),
    ("vision.train", ["--dataset", "breastmnist", "--model", "alexnet", "--regime", "full", "--loss", "ce"],
     "finetune"),
])
def test_stage_cli_rejects_unknown_names_listing_valid_ones(module, args, valid, tmp_path):
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "unknown --" in out.stderr and valid in out.stderr, out.stderr[-2000:]


def test_bad_evaluate_params_fail_before_touching_outputs(project_params, tmp_path):
    """`evaluate.bootstrap: -5` stops the real stage with the key named; the old metrics file stays."""
    path = write_params(project_params, lambda p: p["evaluate"].update(bootstrap=-5))
    metrics = ROOT / "metrics" / "ecg" / "lenet1d-ce.json"
    before = metrics.read_bytes() if metrics.exists() else None
    out = subprocess.run([sys.executable, "-m", "ecg.evaluate", "--model", "lenet1d", "--loss", "ce",
                          "--params", str(path)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert out.returncode != 0
    assert "bootstrap" in out.stderr and "evaluate" in out.stderr, out.stderr[-2000:]
    assert (metrics.read_bytes() if metrics.exists() else None) == before


def test_weighted_ce_model_loads_for_scoring_without_the_loss_module(tmp_path):
    """`grid.ecg.losses: [weighted_ce]` trains and must also evaluate: the evaluate path loads the saved model
    for scoring only (compile=False), so the custom loss class need not be importable there."""
    import keras

    from ecg import models
    from pipeline.losses import make_loss

    model, _ = models.build("lenet1d", 65, 5, 5, channels=2, width=1, augment=None)
    model.compile(optimizer="adam", loss=make_loss("weighted_ce", class_counts=[50, 5, 5, 2, 1]))
    model.save(tmp_path / "model.keras")
    code = ("import sys, keras, numpy as np\n"
            "import ecg.models  # the custom layers, as the ECG adapter registers them\n"
            "assert 'pipeline.losses' not in sys.modules\n"
            "src = open(sys.argv[2]).read()\n"
            "assert 'compile=False' in src.split('def evaluate(')[1].split('def ')[0]\n"
            "m = keras.models.load_model(sys.argv[1], compile=False)\n"
            "print(m.predict({'beat': np.zeros((3, 65, 2), 'float32'), 'rr': np.ones((3, 5), 'float32')}, verbose=0).shape)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.keras"), str(ROOT / "pipeline" / "evaluate.py")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(3, 5)" in out.stdout
    # the failure this avoids: the default compile=True load in a process without pipeline.losses
    strict = subprocess.run([sys.executable, "-c", "import sys, keras, ecg.models; keras.models.load_model(sys.argv[1])",
                             str(tmp_path / "model.keras")], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert strict.returncode != 0 and "WeightedCategoricalCrossentropy" in strict.stderr
