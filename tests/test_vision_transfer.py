"""Two-phase transfer (frozen / finetune), augmentation, backbone checkpoints and vision params."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")

from pipeline.losses import make_loss  # noqa: E402
from pipeline.params import ParamsError, from_dict, read_params  # noqa: E402
from vision import checkpoint, pretrain, train_config  # noqa: E402
from vision.augment import Augment, build_augment  # noqa: E402
from vision.dataset import Images  # noqa: E402
from vision.models import build_backbone, build_classifier, build_head, copy_head  # noqa: E402
from vision.transfer import transfer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIT = {"epochs": 1, "batch_size": 8, "learning_rate": 0.001, "patience": 1}
HEAD = 256 * 16 + 16 + 16 * 2 + 2  # head_units [16] on AlexNet's 256 features, 2 classes


def tiny_splits(rng, size=16):
    def images(n):
        y = np.arange(n) % 2
        x = rng.integers(0, 255, (n, size, size, 1)).astype(np.uint8)
        x[y == 1, : size // 2] = 255
        return Images(x, y.astype(np.int64), np.arange(n))
    return {"train": images(16), "val": images(8)}


def cfg(**over):
    raw = {"head_units": [16], "head_fit": FIT, "mixed_precision": "off", "unfreeze_from": {"alexnet": "block5"},
           "finetune": {"augment": {"flip": {"toy": "vertical"}}, "fit": {**FIT, "learning_rate": 0.01}}, **over}
    return from_dict(train_config.VisionTrain, raw, "vision_train")


def test_frozen_then_finetune_trainable_weights(tmp_path):
    keras.utils.set_random_seed(0)
    start = build_backbone("alexnet", (16, 16, 3)).get_weights()

    def load():
        backbone = build_backbone("alexnet", (16, 16, 3))
        backbone.set_weights(start)
        return backbone

    splits, c, loss = tiny_splits(np.random.default_rng(0)), cfg(), make_loss("ce")
    feats = tmp_path / "features.npz"
    head_run = (tmp_path / "head", "fp-head")
    frozen, rec = transfer("frozen", "alexnet", "toy", load, splits, 2, loss, c, head_run, None, feats)
    assert rec["trainable"]["trainable_params"] == HEAD and rec["trainable"]["trainable_weights"] == 4
    for a, b in zip(frozen.get_layer("alexnet").get_weights(), start):
        np.testing.assert_array_equal(a, b)  # backbone untouched
    assert feats.exists()
    stamp = feats.stat().st_mtime_ns

    def head_stamp():  # the newest checkpoint unit of the head run, and when its best model was written
        unit = sorted((tmp_path / "head").glob("ckpt-*"))[-1]
        return unit.name, (unit / "best.keras").stat().st_mtime_ns

    head_before = head_stamp()
    fine, rec = transfer("finetune", "alexnet", "toy", load, splits, 2, loss, c, head_run, (tmp_path / "ft", "fp"),
                         feats)
    assert feats.stat().st_mtime_ns == stamp  # the cached features were reused
    assert head_stamp() == head_before  # so was the frozen stage's head
    # phase 2: block5 conv kernel (no bias under BN) + head; BN gamma/beta stay frozen
    assert rec["trainable"]["trainable_params"] == 3 * 3 * 384 * 256 + HEAD
    assert rec["trainable"]["trainable_weights"] == 1 + 4
    assert rec["finetune"]["unfreeze_from"] == "block5" and "val_macro_f1" in rec["head"]
    backbone = fine.get_layer("alexnet")
    assert not backbone.get_layer("block5_bn").trainable
    ref = load()
    for layer in backbone.layers:
        for w, w0 in zip(layer.get_weights(), ref.get_layer(layer.name).get_weights()):
            if layer.name == "block5_conv":
                assert not np.allclose(w, w0), "the unfrozen block did not train"
            else:  # earlier blocks and every BN statistic (inference mode) are unchanged
                np.testing.assert_allclose(w, w0, err_msg=layer.name)
    assert [la.name for la in fine.layers[1:4]] == ["aug_flip", "aug_translate", "aug_rotate"]


def test_copy_head_moves_the_warm_head():
    clf = build_classifier(build_backbone("alexnet", (16, 16, 3)), 3, input_shape=(16, 16, 1), head_units=(4,))
    head = build_head(256, 3, head_units=(4,))
    head.set_weights([np.full(w.shape, i + 1.0, np.float32) for i, w in enumerate(head.get_weights())])
    copy_head(head, clf)
    for name in ("head_dense1", "predictions"):
        for a, b in zip(clf.get_layer(name).get_weights(), head.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((5, 256)).astype("float32")
    feats = keras.Model(clf.input, clf.get_layer("head_pool").output)
    images = np.random.default_rng(1).integers(0, 255, (5, 16, 16, 1)).astype("uint8")
    np.testing.assert_allclose(head.predict(feats.predict(images, verbose=0), verbose=0),
                               clf.predict(images, verbose=0), rtol=1e-5)
    assert head.predict(x, verbose=0).shape == (5, 3)


def test_augment_per_dataset_and_identity_at_inference():
    aug = Augment(flip={"retina": "horizontal_and_vertical", "chest": "none"}, translate=0.1, rotate_deg=0,
                  contrast=0.2)
    assert [la.name for la in build_augment(aug, "retina")] == ["aug_flip", "aug_translate", "aug_contrast"]
    assert [la.name for la in build_augment(aug, "chest")] == ["aug_translate", "aug_contrast"]
    assert build_augment(aug, "unlisted")[0].name == "aug_translate"  # unlisted datasets are not flipped
    assert build_augment(Augment(translate=0, rotate_deg=0, contrast=0)) == []
    backbone = build_backbone("alexnet", (16, 16, 3))
    plain = build_classifier(backbone, 2, input_shape=(16, 16, 1), head_units=(4,))
    augmented = build_classifier(backbone, 2, input_shape=(16, 16, 1), head_units=(4,),
                                 augment=build_augment(aug, "retina", seed=1))
    augmented.set_weights(plain.get_weights())
    x = np.random.default_rng(2).integers(0, 255, (3, 16, 16, 1)).astype("uint8")
    np.testing.assert_allclose(augmented.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-6)
    shifted = keras.ops.convert_to_numpy(augmented.get_layer("aug_translate")(x.astype("float32"), training=True))
    assert not np.allclose(shifted, x)
    with pytest.raises(ParamsError, match="flip"):
        from_dict(Augment, {"flip": {"x": "diagonal"}}, "augment")


def test_backbone_checkpoint_rebuilds_under_current_policy(tmp_path):
    backbone = build_backbone("alexnet", (16, 16, 3))
    sha = checkpoint.save_backbone(backbone, tmp_path)
    checkpoint.write_info(tmp_path, {"model": "alexnet", "input_shape": [16, 16, 3], "source": "source:x",
                                     "arch": {"stem": "auto", "norm": "batchnorm"}, "sha256": sha})
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        loaded, info = checkpoint.load_backbone(tmp_path)
        assert loaded.get_layer("block3_conv").compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for a, b in zip(loaded.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    info["sha256"] = "0" * 64
    (tmp_path / "backbone.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="sha256"):
        checkpoint.load_backbone(tmp_path)


def test_saved_models_are_byte_reproducible(tmp_path):
    """Saving the same weights twice (a later second apart) gives the same bytes and sha256, so a stage that
    restores its fit rewrites an identical file; other weights give another hash; the file loads back."""
    import time
    import zipfile
    model = build_classifier(build_backbone("alexnet", (32, 32, 3)), 2, input_shape=(28, 28, 1), head_units=4)
    a = checkpoint.save_model(model, tmp_path / "a.keras")
    time.sleep(1.1)
    b = checkpoint.save_backbone(model, tmp_path / "b")
    assert a == b and (tmp_path / "a.keras").read_bytes() == (tmp_path / "b" / "backbone.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.keras") as z:
        assert {i.date_time for i in z.infolist()} == {checkpoint.FIXED_TIME}
        assert json.loads(z.read("metadata.json"))["keras_version"] == keras.__version__
    loaded = keras.models.load_model(tmp_path / "a.keras", compile=False)
    for u, v in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(u, v)
    model.get_layer("predictions").set_weights([w + 1 for w in model.get_layer("predictions").get_weights()])
    assert checkpoint.save_model(model, tmp_path / "c.keras") != a


def test_imagenet_vgg16_from_local_file(tmp_path, monkeypatch):
    """`imagenet` with env VGG16_WEIGHTS: no download; the checkpoint records the file's hash."""
    weights = tmp_path / "vgg16_notop.weights.h5"
    reference = build_backbone("vgg16", (32, 32, 3))
    reference.save_weights(weights)
    monkeypatch.setenv("VGG16_WEIGHTS", str(tmp_path / "missing.h5"))
    with pytest.raises(FileNotFoundError, match="VGG16_WEIGHTS"):
        checkpoint.imagenet_vgg16_weights()
    monkeypatch.setenv("VGG16_WEIGHTS", str(weights))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    c = replace(train_config.VisionPretrain(), vgg16=train_config.Vgg16Pretrain(weights="imagenet"),
                mixed_precision="off")
    info = pretrain.pretrain("vgg16", c, tmp_path / "no-source-data-needed", tmp_path / "out", tmp_path / "run")
    assert info["source"] == "imagenet" and info["weights_file"] == str(weights)
    assert len(info["weights_sha256"]) == 64 and info["params_count"] == 14_714_688
    loaded, _ = checkpoint.load_backbone(tmp_path / "out")
    np.testing.assert_array_equal(loaded.get_weights()[-1], reference.get_weights()[-1])


def test_imagenet_squeezenet_pretrain_at_its_own_size(tmp_path, monkeypatch):
    """squeezenet `imagenet` from env SQUEEZENET_WEIGHTS, at its own image_size (not the shared one); the
    transfer stages then rebuild exactly those weights at that input side."""
    from vision import squeezenet as sq
    weights = tmp_path / "squeezenet_notop.weights.h5"
    reference = sq.build_squeezenet((40, 40, 3))
    reference.save_weights(weights)  # a Keras-3 weights file of the same layers (the shared h5: test_squeezenet)
    monkeypatch.setenv("SQUEEZENET_WEIGHTS", str(weights))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    c = replace(train_config.VisionPretrain(), mixed_precision="off",
                squeezenet=train_config.SqueezenetPretrain(image_size=48))
    assert c.input_side("squeezenet") == 48 and c.input_side("vgg16") == c.image_size == 32
    small = replace(c, image_size=16)  # fine for alexnet; vgg16 refuses it when its side is asked for
    assert small.input_side("alexnet") == 16
    with pytest.raises(ParamsError, match="vision_pretrain.image_size: 16 px is below vgg16's smallest"):
        small.input_side("vgg16")
    assert c.run_config("squeezenet")["squeezenet"]["image_size"] == 48
    assert "image_size" not in c.run_config("vgg16")["vgg16"]  # the other backbones' fingerprints are unchanged
    info = pretrain.pretrain("squeezenet", c, tmp_path / "no-source-data-needed", tmp_path / "out", tmp_path / "run")
    assert info["source"] == "imagenet" and info["input_shape"] == [48, 48, 3]
    assert info["params_count"] == sq.N_PARAMS and info["weights_file"] == str(weights)
    loaded, _ = checkpoint.load_backbone(tmp_path / "out")
    assert loaded.input_shape == (None, 48, 48, 3)
    for a, b in zip(loaded.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("raw, match", [
    ({"squeezenet": {"image_size": 28}}, "squeezenet.image_size: 28 px is below squeezenet's smallest"),
    ({"squeezenet": {"weights": "source:cifar100"}}, "cifar10"),
    ({"alexnet": {"weights": "imagenet"}}, "no ImageNet weights exist for alexnet"),
    ({"vgg16": {"weights": "source:imagenet21k"}}, "cifar10"),
    ({"resnet": {"weights": "imagenet"}}, "unknown key"),
    ({"vgg16": {"stem": "auto"}}, "unknown key"),
    ({"mixed_precision": "yes"}, "mixed_precision"),
])
def test_pretrain_params_rejected(raw, match):
    with pytest.raises(ParamsError, match=match):
        from_dict(train_config.VisionPretrain, raw, "vision_pretrain")


def test_train_params_rejected():
    with pytest.raises(ParamsError, match="regimes"):
        cfg(regimes=["frozen", "partial"])
    with pytest.raises(ParamsError, match="gamma"):
        cfg(loss={"focal": {"gamma": -1.0}})
    with pytest.raises(ParamsError, match="alpha"):
        cfg(loss={"ce": {"alpha": "inverse"}})  # ce has no class weights: unknown key


@pytest.mark.parametrize("profile", [None, "gpu", "quick"])
def test_profiles_validate(profile, project_params):
    """params.yaml and params.yaml merged with each profile load into the typed sections."""
    from pipeline import profile as profiles
    params = read_params(project_params)
    if profile is not None:
        params = profiles.merged(params, profiles.overrides(profiles.load(profile, ROOT / "profiles"), params))
    path = project_params.parent / "merged.yaml"
    path.write_text(yaml.safe_dump(params))
    pre, tr = train_config.load_pretrain(path), train_config.load_train(path)
    assert pre.alexnet.weights.startswith("source:")
    if profile is None:  # the default runs offline
        assert pre.vgg16.weights == "source:cifar10"
    if profile == "gpu":
        assert pre.vgg16.weights == "imagenet" and pre.image_size >= 128 and tr.unfreeze_from.vgg16 == "block4"
    assert set(params["grid"]["vision"]["models"]) <= set(train_config.BACKBONES)


def test_profile_rejects_unknown_key(tmp_path, project_params):
    from pipeline import profile as profiles
    (tmp_path / "typo.yaml").write_text("vision_train:\n  head_fitt: {epochs: 1}\n")
    with pytest.raises(ParamsError, match="vision_train.head_fitt"):
        profiles.overrides(profiles.load("typo", tmp_path), read_params(project_params))
