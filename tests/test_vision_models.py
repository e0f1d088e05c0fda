import numpy as np
import pytest

keras = pytest.importorskip("keras")

from vision.layers import LocalResponseNorm  # noqa: E402
from vision.models import (  # noqa: E402
    BACKBONES, REGIMES, BackboneSpec, build_backbone, build_classifier, set_trainable,
)
from vision.preprocess import MODES  # noqa: E402

# (kernel, in_channels, filters) of AlexNet's five convs, as published
CONVS = [(11, 3, 96), (5, 96, 256), (3, 256, 384), (3, 384, 384), (3, 384, 256)]


def conv_params(bias=True):
    return sum(k * k * cin * cout + (cout if bias else 0) for k, cin, cout in CONVS)


def test_alexnet_imagenet_stem_shapes_and_params():
    model = build_backbone("alexnet", (227, 227, 3), stem="imagenet", norm="none")
    expected = {
        "block1_conv": (55, 55, 96), "block1_pool": (27, 27, 96),
        "block2_conv": (27, 27, 256), "block2_pool": (13, 13, 256),
        "block3_conv": (13, 13, 384), "block4_conv": (13, 13, 384),
        "block5_conv": (13, 13, 256), "block5_pool": (6, 6, 256),
    }
    for name, shape in expected.items():
        assert tuple(model.get_layer(name).output.shape[1:]) == shape, name
    assert conv_params() == 3_747_200
    assert model.count_params() == conv_params()


def test_alexnet_batchnorm_and_lrn_variants():
    bn = build_backbone("alexnet", (227, 227, 3), stem="imagenet")
    channels = sum(c for _, _, c in CONVS)
    # convs lose their (redundant) bias; BN adds gamma, beta, moving mean, moving var
    assert bn.count_params() == conv_params(bias=False) + 4 * channels
    assert bn.get_layer("block1_bn") is not None
    lrn = build_backbone("alexnet", (227, 227, 3), stem="imagenet", norm="lrn")
    names = [layer.name for layer in lrn.layers]
    assert names.index("block1_relu") < names.index("block1_lrn") < names.index("block1_pool")
    assert "block3_lrn" not in names and lrn.count_params() == conv_params()
    with pytest.raises(ValueError, match="batchnorm"):
        build_backbone("alexnet", (64, 64, 3), norm="layernorm")


def test_lrn_matches_naive_formula():
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 7)).astype("float32") * 30
    got = keras.ops.convert_to_numpy(LocalResponseNorm()(x))
    want = np.empty_like(x)
    for c in range(7):
        lo, hi = max(0, c - 2), min(7, c + 3)
        want[..., c] = x[..., c] / (2 + 1e-4 * (x[..., lo:hi] ** 2).sum(-1)) ** 0.75
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_alexnet_small_stem_keeps_spatial_size():
    model = build_backbone("alexnet", (32, 32, 3), stem="small")
    assert tuple(model.output.shape[1:]) == (8, 8, 256)
    assert "block1_pool" not in [layer.name for layer in model.layers]
    auto = build_backbone("alexnet", (32, 32, 3))  # auto -> small
    assert tuple(auto.output.shape[1:]) == (8, 8, 256)
    assert tuple(build_backbone("alexnet", (28, 28, 1)).output.shape[1:]) == (7, 7, 256)
    with pytest.raises(ValueError, match="67"):
        build_backbone("alexnet", (32, 32, 3), stem="imagenet")


def test_vgg16_builds_without_weights_at_32px():
    model = build_backbone("vgg16", (32, 32, 3), weights=None)
    assert tuple(model.output.shape[1:]) == (1, 1, 512)
    assert model.count_params() == 14_714_688
    with pytest.raises(ValueError, match="stem"):
        build_backbone("vgg16", (32, 32, 3), stem="small")


def test_registry_error_lists_names():
    with pytest.raises(ValueError) as exc:
        build_backbone("resnet50", (32, 32, 3))
    assert all(name in str(exc.value) for name in ("alexnet", "vgg16"))


def test_weights_file_missing_and_round_trip(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_backbone("alexnet", (32, 32, 3), weights=tmp_path / "none.weights.h5")
    first = build_backbone("alexnet", (32, 32, 3))
    path = tmp_path / "alex.weights.h5"
    first.save_weights(path)
    again = build_backbone("alexnet", (32, 32, 3), weights=path)
    x = np.random.default_rng(1).random((1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(first.predict(x, verbose=0), again.predict(x, verbose=0), atol=1e-5)


def test_trainable_regimes():
    model = build_classifier(build_backbone("alexnet", (32, 32, 3)), 3, head_units=(16,))
    head = (256 * 16 + 16) + (16 * 3 + 3)
    frozen = set_trainable(model, "frozen")
    assert frozen["trainable_params"] == head and frozen["trainable_weights"] == 4
    fine = set_trainable(model, "finetune", unfreeze_from="block4")
    # block4/5 conv kernels (no bias under BN) + head; BN layers stay frozen
    assert fine["trainable_params"] == 3 * 3 * 384 * 384 + 3 * 3 * 384 * 256 + head
    assert fine["trainable_weights"] == 6
    assert not model.get_layer("alexnet").get_layer("block5_bn").trainable
    assert set_trainable(model, "frozen") == frozen  # undoes the per-layer unfreezing
    every = set_trainable(model, "finetune")  # None = every block; BN still frozen
    assert every["non_trainable_params"] == 4 * 1376 and every["trainable_weights"] == 5 + 4
    assert set_trainable(model, "finetune", "block5")["trainable_params"] < fine["trainable_params"]
    with pytest.raises(ValueError, match="block1"):
        set_trainable(model, "finetune", unfreeze_from="block9")
    with pytest.raises(ValueError, match="frozen"):
        set_trainable(model, "partial")
    assert REGIMES == ("frozen", "finetune")
    with pytest.raises(ValueError, match="finetune"):
        set_trainable(model, "full")  # the dead regime is gone


def test_vgg16_finetune_counts():
    model = build_classifier(build_backbone("vgg16", (32, 32, 3)), 2, head_units=8)
    head = 512 * 8 + 8 + 8 * 2 + 2
    assert set_trainable(model, "frozen")["trainable_params"] == head
    block5 = 3 * (3 * 3 * 512 * 512 + 512)
    assert set_trainable(model, "finetune", "block5")["trainable_params"] == block5 + head


def test_grayscale_is_resized_and_repeated_inside_model():
    model = build_classifier(build_backbone("alexnet", (32, 32, 3)), 2, input_shape=(28, 28, 1))
    probe = keras.Model(model.input, model.get_layer("repeat_channels").output)
    x = np.random.default_rng(2).integers(0, 256, (2, 28, 28, 1)).astype("uint8")
    rep = probe.predict(x, verbose=0)
    assert rep.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(rep[..., 0], rep[..., 1])
    np.testing.assert_array_equal(rep[..., 0], rep[..., 2])
    with pytest.raises(ValueError, match="channel"):
        build_classifier(build_backbone("alexnet", (32, 32, 3)), 2,
                         input_shape=(32, 32, 1), channels="native")


def test_output_is_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(build_backbone("alexnet", (32, 32, 3)), 2)
        assert model.get_layer("head_dense1").compute_dtype == "float16"
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_classifier_save_and_load(tmp_path):
    model = build_classifier(build_backbone("alexnet", (32, 32, 3), norm="lrn"), 2, head_units=4)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("name", BACKBONES)
def test_registry_smoke_predict(name):
    """Every registered backbone, at its smallest input, from 1-channel raw pixels to probabilities."""
    spec = BACKBONES[name]
    side = spec.min_size
    backbone = build_backbone(name, (side, side, 3))
    assert backbone.name == name
    assert sorted({f"block{i}" for i in _blocks(backbone)}) == list(spec.blocks)
    model = build_classifier(backbone, 3, input_shape=(side, side, 1), head_units=(8,), dropout=0.5)
    x = np.random.default_rng(4).integers(0, 256, (2, side, side, 1)).astype("uint8")
    p = model.predict(x, verbose=0)
    assert p.shape == (2, 3) and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    for block in (spec.blocks[0], spec.blocks[-1]):
        set_trainable(model, "finetune", unfreeze_from=block)


def _blocks(backbone):
    import re
    return {int(m.group(1)) for layer in backbone.layers if (m := re.match(r"block(\d+)_", layer.name))}


def test_registry_table_shape():
    assert list(BACKBONES) == ["alexnet", "vgg16", "squeezenet"] and "vgg16" in BACKBONES and "VGG16" not in BACKBONES
    for name, spec in BACKBONES.items():
        assert isinstance(spec, BackboneSpec) and spec.name == name and spec.preprocess in MODES
        assert spec.min_size <= spec.native_size
    assert BACKBONES["alexnet"].channel_order == "rgb" and BACKBONES["vgg16"].channel_order == "bgr"
    assert dict(BACKBONES["alexnet"].arch) == {"stem": "auto", "norm": "batchnorm"}
    assert not BACKBONES["vgg16"].arch and BACKBONES["alexnet"].imagenet is None
    assert BACKBONES["vgg16"].imagenet.env == "VGG16_WEIGHTS"
    sq = BACKBONES["squeezenet"]
    assert (sq.imagenet.env, sq.min_size, sq.preprocess, sq.channel_order) == ("SQUEEZENET_WEIGHTS", 31, "caffe", "bgr")
    assert sq.blocks == tuple(f"block{i}" for i in range(1, 6)) and not sq.arch
    with pytest.raises(ValueError, match="too small"):  # 28 px MedMNIST must be resized up
        build_backbone("squeezenet", (28, 28, 3))
    with pytest.raises(ValueError, match="fixed stem"):
        build_backbone("squeezenet", (32, 32, 3), stem="small")
    with pytest.raises(ValueError, match="alexnet.*vgg16"):
        BACKBONES["vgg"]  # exact names only
    with pytest.raises(ValueError):  # below its min_size
        build_backbone("vgg16", (BACKBONES["vgg16"].min_size - 1,) * 2 + (3,))


def test_registry_is_a_plain_names_tuple_for_configs():
    """vision.train_config uses BACKBONES as a dataclass default; asdict/json must see the names."""
    import dataclasses
    import json

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        models: tuple = BACKBONES

    d = dataclasses.asdict(Cfg())
    assert type(d["models"]) is tuple and json.dumps(d) == '{"models": ["alexnet", "vgg16", "squeezenet"]}'


# Sums of the seeded (keras.utils.set_random_seed(0)) initial weights of
# build_classifier(build_backbone(name, (32, 32, 3)), 3, input_shape=(28, 28, 1), head_units=(16,)),
# recorded before the registry refactor (issue 8): same architecture, layer order and init order.
SEEDED = {
    "alexnet": (29, 59301.5928, ["image", "resize", "repeat_channels", "rescale", "normalize", "alexnet",
                                 "head_pool", "head_dense1", "head_dropout1", "predictions"]),
    "vgg16": (30, 203103.0206, ["image", "resize", "repeat_channels", "rgb_to_bgr", "normalize", "vgg16",
                                "head_pool", "head_dense1", "head_dropout1", "predictions"]),
}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="recorded with the TensorFlow backend RNG")
@pytest.mark.parametrize("name", sorted(SEEDED))
def test_seeded_weights_unchanged(name):
    n, abs_sum, layers = SEEDED[name]
    keras.utils.set_random_seed(0)
    model = build_classifier(build_backbone(name, (32, 32, 3)), 3, input_shape=(28, 28, 1), head_units=(16,))
    weights = model.get_weights()
    assert [layer.name for layer in model.layers] == layers and len(weights) == n
    assert sum(np.abs(w).astype(np.float64).sum() for w in weights) == pytest.approx(abs_sum, rel=1e-7)


@pytest.mark.parametrize("name, want", [
    ("alexnet", [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]),  # imagenet mean/std
    ("vgg16", [0 - 103.939, 0 - 116.779, 255 - 123.68]),  # caffe: BGR, mean-subtracted
    ("squeezenet", [0 - 103.939, 0 - 116.779, 255 - 123.68]),  # caffe, as published
])
def test_per_model_normalisation_inside_model(name, want):
    model = build_classifier(build_backbone(name, (32, 32, 3)), 2, head_units=4)
    probe = keras.Model(model.input, model.get_layer("normalize").output)
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[..., 0] = 255  # pure red
    np.testing.assert_allclose(probe.predict(x, verbose=0)[0, 0, 0], want, rtol=1e-5)
