"""vision.forgetting: variants by block, the probe/forgetting arithmetic, an end-to-end tiny run, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")

from pipeline.params import ParamsError, from_dict  # noqa: E402
from vision import checkpoint, forgetting  # noqa: E402
from vision.forgetting import FROZEN, Config  # noqa: E402
from vision.models import build_backbone  # noqa: E402

FIT = {"epochs": 1, "batch_size": 8, "learning_rate": 0.001, "patience": 1}


def config(**over) -> Config:
    return from_dict(Config, {"head_units": [8], "head_fit": FIT, "finetune_epochs": 1, "finetune_batch_size": 8,
                              "mixed_precision": "off", "bootstrap": 40, "dataset": "toy", **over},
                     "forgetting_vision")


# ------------------------------------------------------------------------------------------ variants

def test_variants_named_and_ordered_by_block():
    cfg = config(unfreeze_from=["block1", "block5", "block4"], learning_rates=[1e-4, 1e-3])
    v = forgetting.variants(cfg)
    assert [x["name"] for x in v] == ["from_block5-lr0.0001", "from_block5-lr0.001", "from_block4-lr0.0001",
                                      "from_block4-lr0.001", "from_block1-lr0.0001", "from_block1-lr0.001"]
    assert [x["blocks_unfrozen"] for x in v] == [1, 1, 2, 2, 5, 5]
    assert {x["unfreeze_from"] for x in v} == {"block1", "block4", "block5"}
    t = forgetting.train_config(cfg, "block4", 1e-3)
    assert t.unfreeze_from.alexnet == "block4" and t.finetune.fit.learning_rate == 1e-3
    assert t.finetune.fit.epochs == 1 and t.head_fit.epochs == 1 and t.seed == cfg.seed


@pytest.mark.parametrize("over, key", [({"unfreeze_from": ["block9"]}, "unfreeze_from"),
                                       ({"unfreeze_from": ["block5", "block5"]}, "unfreeze_from"),
                                       ({"learning_rates": [0.0]}, "learning_rates"),
                                       ({"model": "resnet"}, "model"),
                                       ({"loss": "hinge"}, "loss"),
                                       ({"source_train": 0}, "source_train"),
                                       ({"probe_c": -1}, "probe_c"),
                                       ({"epochs": 3}, "epochs")])
def test_bad_params_name_the_key(over, key):
    with pytest.raises(ParamsError, match=key):
        config(**over)


def test_unknown_block_lists_the_valid_ones():
    with pytest.raises(ParamsError, match="block1.*block5"):
        config(unfreeze_from=["conv3"])


# ------------------------------------------------------------------------------------------ arithmetic

def _blobs(rng, n, k=4, d=6):
    y = np.arange(n) % k
    centres = np.eye(k, d) * 6.0
    return centres[y] + rng.normal(0, 1.0, (n, d)), y


def test_forgetting_identical_features_forget_nothing_exactly():
    rng = np.random.default_rng(0)
    xtr, ytr = _blobs(rng, 120)
    xva, yva = _blobs(rng, 60)
    orig = {"train": xtr, "val": xva}
    fg = forgetting.forgetting(config(), orig, {"same": {"train": xtr.copy(), "val": xva.copy()}}, ytr, yva)
    assert fg["before"].mean() > 0.9   # the probe reads the source task
    np.testing.assert_array_equal(fg["old_readout"]["same"], fg["before"])
    np.testing.assert_array_equal(fg["refit"]["same"], fg["before"])
    s = forgetting.source_scores(fg, forgetting.draws_for(60, 50, 0))["same"]
    assert s["loss_old_readout"]["value"] == 0.0 and s["loss_old_readout"]["ci95"] == {"lo": 0.0, "hi": 0.0}


def test_moved_readout_is_lost_to_the_old_probe_but_recovered_by_a_refit():
    rng = np.random.default_rng(1)
    xtr, ytr = _blobs(rng, 160)
    xva, yva = _blobs(rng, 80)
    perm = [2, 3, 0, 1, 4, 5]   # the same information on other feature axes: the old readout misreads every class
    after = {"moved": {"train": xtr[:, perm], "val": xva[:, perm]},
             "erased": {"train": rng.normal(size=xtr.shape), "val": rng.normal(size=xva.shape)}}
    fg = forgetting.forgetting(config(), {"train": xtr, "val": xva}, after, ytr, yva)
    s = forgetting.source_scores(fg, forgetting.draws_for(80, 100, 0))
    before = fg["before"].mean()
    assert s["moved"]["accuracy_old_readout"]["value"] < 0.1
    assert s["moved"]["loss_old_readout"]["value"] == pytest.approx(before - fg["old_readout"]["moved"].mean())
    assert s["moved"]["accuracy_refit"]["value"] == pytest.approx(before, abs=0.03)   # nothing lost from the features
    assert s["erased"]["accuracy_refit"]["value"] < 0.5   # information gone: the refit cannot recover it
    lo, hi = s["moved"]["loss_old_readout"]["ci95"].values()
    assert lo <= s["moved"]["loss_old_readout"]["value"] <= hi and lo > 0


def test_target_gains_are_paired_differences_from_frozen():
    y = np.array([0, 1] * 20)
    good = np.eye(2)[y]
    half = np.eye(2)[np.where(np.arange(40) < 20, y, 1 - y)]
    out = forgetting.target_scores(y, {FROZEN: half, "tuned": good}, forgetting.draws_for(40, 60, 0), (0, 1))
    assert out[FROZEN]["accuracy_gain"] == {"value": 0.0, "ci95": {"lo": 0.0, "hi": 0.0}}
    assert out["tuned"]["accuracy"]["value"] == 1.0
    assert out["tuned"]["accuracy_gain"]["value"] == pytest.approx(0.5)
    assert out["tuned"]["macro_f1_gain"]["value"] == pytest.approx(1.0 - out[FROZEN]["macro_f1"]["value"])


# ------------------------------------------------------------------------------------------ end to end

def image_set(rng, n, size, channels, n_classes):
    y = np.arange(n) % n_classes
    x = rng.integers(0, 80, (n, size, size, channels))
    band = max(size // n_classes, 1)
    for i, k in enumerate(y):
        x[i, (k * band) % size:(k * band) % size + band] += 150
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
    write_set(data / "source_cifar10", rng, (40, 30, 4), 8, 3, list("abcde"))
    write_set(data / "toy", rng, (16, 10, 12), 8, 1, ["normal", "abnormal"])
    keras.utils.set_random_seed(0)
    backbone = build_backbone("alexnet", (8, 8, 3))
    bdir = tmp_path / "pretrain" / "alexnet"
    sha = checkpoint.save_backbone(backbone, bdir)
    checkpoint.write_info(bdir, {"model": "alexnet", "input_shape": [8, 8, 3], "arch": {"stem": "auto",
                                 "norm": "batchnorm"}, "source": "source:cifar10", "sha256": sha})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(root: Path, **over) -> Path:
    section = {"head_units": [8], "head_fit": FIT, "finetune_epochs": 1, "finetune_batch_size": 8,
               "mixed_precision": "off", "bootstrap": 40, "dataset": "toy", "unfreeze_from": ["block5", "block1"],
               "learning_rates": [0.05], "source_train": None, **over}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({"forgetting_vision": section}))
    return path


ARGS = ["--data", "data", "--backbones", "pretrain", "--checkpoints", "ckpt", "--out", "out", "--metrics", "m.json"]


@pytest.mark.slow
def test_lr_zero_forgets_nothing_and_lr_positive_moves_the_features(project):
    """Fine-tuning at learning rate 0 leaves every weight as it was: the source probe's accuracy is unchanged
    exactly, and the medical scores equal the frozen head's; a positive rate changes the unfrozen blocks."""
    cfg = Config(head_units=(8,), dataset="toy", head_fit=forgetting.FitConfig(**FIT), finetune_epochs=1,
                 finetune_batch_size=8, mixed_precision="off", bootstrap=30, unfreeze_from=("block1",),
                 learning_rates=(0.0, 0.05), source_train=None)
    m = forgetting.run(cfg, Path("data"), Path("pretrain/alexnet"), Path("out"), Path("ckpt"))
    zero, moved = m["source"]["from_block1-lr0"], m["source"]["from_block1-lr0.05"]
    before = m["setting"]["source_accuracy_before"]
    assert zero["accuracy_old_readout"]["value"] == before and zero["loss_old_readout"]["value"] == 0.0
    assert zero["loss_refit"] == {"value": 0.0, "ci95": {"lo": 0.0, "hi": 0.0}}
    assert m["target"]["from_block1-lr0"]["test_macro_f1_gain"]["value"] == 0.0
    assert m["source"][FROZEN]["loss_old_readout"]["value"] == 0.0
    # lr 0 keeps the original weights: it shares the original's cache entry (2 entries, not 3)
    assert len(list(Path("ckpt/source_features").glob("*.npz"))) == 2
    assert moved["accuracy_old_readout"]["value"] is not None


@pytest.mark.slow
def test_end_to_end_outputs_and_rerun_restores(project, capsys):
    write_params(project)
    assert forgetting.main(["--params", "params.yaml", *ARGS]) == 0
    m = json.loads(Path("m.json").read_text())
    assert set(m["target"]) == {FROZEN, "from_block5-lr0.05", "from_block1-lr0.05"} == set(m["source"])
    row = m["target"]["from_block1-lr0.05"]
    assert row["blocks_unfrozen"] == 5 and row["learning_rate"] == 0.05
    for key in ("val_macro_f1", "val_macro_f1_gain", "test_accuracy", "test_macro_f1_gain"):
        assert set(row[key]) == {"value", "ci95"}
    assert set(m["source"]["from_block5-lr0.05"]) >= {"accuracy_old_readout", "loss_old_readout", "accuracy_refit",
                                                      "loss_refit"}
    assert m["target"][FROZEN]["blocks_unfrozen"] == 0 and m["target"][FROZEN]["test_macro_f1_gain"]["value"] == 0.0
    assert {"most_forgetting", "gain_without_loss", "readout_vs_representation"} <= set(m["readings"])
    assert all(isinstance(t, str) and t for t in m["readings"].values()) and {"target", "source"} <= set(m["method"])
    assert Path("out/forgetting.png").read_bytes().startswith(b"\x89PNG")
    for name in ("head", "from_block5-lr0.05", "from_block1-lr0.05"):
        assert list(Path("ckpt", name).glob("ckpt-*")), name
    capsys.readouterr()
    assert forgetting.main(["--params", "params.yaml", *ARGS]) == 0   # rerun: every fit restored, same numbers
    assert "resuming ckpt/from_block1-lr0.05" in capsys.readouterr().out
    again = json.loads(Path("m.json").read_text())
    assert again["target"] == m["target"] and again["source"] == m["source"]
    assert (m["setting"]["fits_found_in_checkpoints"], again["setting"]["fits_found_in_checkpoints"]) == \
        ("0 of 3", "3 of 3")
    from pipeline.report.sections import _table   # the report's generic analysis tables read both parts

    for part in ("target", "source"):
        assert [r["label"] for r in _table(m[part], {})["rows"]] == [FROZEN, "from_block5-lr0.05", "from_block1-lr0.05"]
    assert _table(m["setting"], {})["line"]


# ------------------------------------------------------------------------------------------ bad input

def test_missing_backbone_names_the_folder(project):
    write_params(project)
    with pytest.raises(FileNotFoundError, match="nothere/alexnet"):
        forgetting.main(["--params", "params.yaml", *ARGS[:2], "--backbones", "nothere", *ARGS[4:]])
    assert not Path("m.json").exists()


def test_missing_dataset_names_the_file(project):
    write_params(project, dataset="nosuchset")
    with pytest.raises(FileNotFoundError, match="nosuchset.npz"):
        forgetting.main(["--params", "params.yaml", *ARGS])
    assert not Path("m.json").exists()


def test_wrong_backbone_model_is_refused(project):
    write_params(project, model="vgg16")
    folder = Path("pretrain/vgg16")
    folder.mkdir(parents=True)
    (folder / "backbone.json").write_text(json.dumps({"model": "alexnet", "sha256": "x", "input_shape": [8, 8, 3]}))
    (folder / "backbone.keras").write_bytes(b"")
    with pytest.raises(ValueError, match="backbone.json.*'alexnet'"):
        forgetting.main(["--params", "params.yaml", *ARGS])
    assert not Path("m.json").exists()


def test_missing_section_names_it(project):
    Path("params.yaml").write_text(yaml.safe_dump({"other": {}}))
    with pytest.raises(ParamsError, match="forgetting_vision"):
        forgetting.main(["--params", "params.yaml", *ARGS])
