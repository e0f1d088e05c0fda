"""vision.squeezenet: SqueezeNet v1.1 architecture, block names, the Keras-2 h5 loader and the weights lookup."""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from vision import squeezenet as sq
from vision.models import set_trainable

SHARED_H5 = Path("/work/shared/weights") / sq.WEIGHTS_FILENAME
if not SHARED_H5.is_file():
    SHARED_H5 = Path(__file__).resolve().parents[2] / "shared" / "weights" / sq.WEIGHTS_FILENAME
needs_shared = pytest.mark.skipif(not SHARED_H5.is_file(), reason=f"{SHARED_H5} not present")

PUBLISHED = ["conv1"] + [f"fire{i}/{part}" for i in range(2, 10)
                         for part in ("squeeze1x1", "expand1x1", "expand3x3")]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return sq.build_squeezenet((32, 32, 3))


def write_keras2_h5(path: Path, layers: dict[str, list[np.ndarray]], *, extra_names=()) -> Path:
    """A Keras-2 style weights h5: attrs layer_names, per layer group weight_names '<layer>_1/kernel:0'."""
    with h5py.File(path, "w") as f:
        names = ["input_1", *layers, *extra_names]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for lname, arrays in layers.items():
            g = f.create_group(lname)
            wnames = [f"{lname}_1/{k}:0".encode() for k in ("kernel", "bias")[:len(arrays)]]
            g.attrs["weight_names"] = np.array(wnames)
            for wn, a in zip(wnames, arrays):
                g.create_dataset(wn.decode(), data=a)
    return path


def published_weights(model) -> dict[str, list[np.ndarray]]:
    return {n: model.get_layer(sq.layer_name(n)).get_weights() for n in PUBLISHED}


def test_architecture_params_and_output(model):
    assert model.name == "squeezenet"
    assert model.count_params() == sq.N_PARAMS == 722_496
    assert model.output_shape == (None, 1, 1, 512)
    weighted = [layer for layer in model.layers if layer.weights]
    assert len(weighted) == 25
    assert all(isinstance(layer, keras.layers.Conv2D) for layer in weighted)
    # no top: the last layer is fire9's concat, nothing with 1000 units anywhere
    assert model.layers[-1].name == "block5_fire9_concat"
    assert model.get_layer("block1_conv1").strides == (2, 2)
    assert model.get_layer("block2_fire2_expand3x3").padding == "same"


def test_min_input_size():
    assert sq.MIN_SIZE == sq.min_input_side() == 31
    assert sq.build_squeezenet((31, 31, 3)).output_shape == (None, 1, 1, 512)
    assert sq.build_squeezenet((64, 40, 3)).output_shape == (None, 3, 1, 512)
    with pytest.raises(ValueError, match="smallest side is 31"):
        sq.build_squeezenet((28, 28, 3))
    with pytest.raises(ValueError, match="smallest side is 31"):
        sq.build_squeezenet((30, 64, 3))


def test_block_names_cover_blocks_and_unfreeze_from(model):
    blocks = {}
    for layer in model.layers[1:]:
        m = re.match(r"block(\d+)_", layer.name)
        assert m, f"layer {layer.name} has no block prefix"
        blocks.setdefault(f"block{m.group(1)}", []).append(layer.name)
    assert tuple(sorted(blocks)) == sq.BLOCKS == ("block1", "block2", "block3", "block4", "block5")
    assert blocks["block1"][0] == "block1_conv1"
    assert {n.split("_")[1] for n in blocks["block4"] if "fire" in n} == {"fire6", "fire7"}
    assert {n.split("_")[1] for n in blocks["block5"]} == {"fire8", "fire9"}
    clone = sq.build_squeezenet((32, 32, 3))
    counts = set_trainable(clone, "finetune", unfreeze_from="block4")
    trainable = {layer.name for layer in clone.layers if layer.trainable and layer.weights}
    assert trainable == {sq.layer_name(n) for n in PUBLISHED if n[:5] in ("fire6", "fire7", "fire8", "fire9")}
    assert counts["trainable_weights"] == 24
    with pytest.raises(ValueError, match="block6"):
        set_trainable(clone, "finetune", unfreeze_from="block6")


def test_layer_name_mapping():
    assert sq.layer_name("conv1") == "block1_conv1"
    assert sq.layer_name("fire2/squeeze1x1") == "block2_fire2_squeeze1x1"
    assert sq.layer_name("fire5/expand3x3") == "block3_fire5_expand3x3"
    assert sq.layer_name("fire9/expand1x1") == "block5_fire9_expand1x1"
    for bad in ("conv10", "fire10/squeeze1x1", "fire2/concat"):
        with pytest.raises(ValueError, match=re.escape(bad)):
            sq.layer_name(bad)


def test_h5_round_trip_loads_every_layer(model, tmp_path):
    src = write_keras2_h5(tmp_path / "w.h5", published_weights(model))
    keras.utils.set_random_seed(1)
    other = sq.build_squeezenet((32, 32, 3))
    report = sq.load_imagenet_h5(other, src)
    assert report["layers_matched"] == 25 and report["params_loaded"] == 722_496
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    # build_squeezenet(weights=) takes the same file
    third = sq.build_squeezenet((40, 40, 3), weights=src)
    np.testing.assert_array_equal(third.get_layer("block5_fire9_expand3x3").get_weights()[0],
                                  model.get_layer("block5_fire9_expand3x3").get_weights()[0])


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"no weights for layer\(s\) \['block5_fire9_expand3x3'\]"),
    ("extra", r"h5 layer 'fire10/squeeze1x1' matches no layer"),
    ("shape", r"h5 layer 'fire4/squeeze1x1' kernel has shape \(1, 1, 128, 33\)"),
    ("no_bias", r"h5 layer 'conv1' lacks \['bias'\]"),
])
def test_wrong_or_partial_h5_fails_naming_the_layer(model, tmp_path, case, pattern):
    layers = published_weights(model)
    if case == "missing":
        del layers["fire9/expand3x3"]
    elif case == "extra":
        layers["fire10/squeeze1x1"] = [np.zeros((1, 1, 512, 64), "float32"), np.zeros(64, "float32")]
    elif case == "shape":
        layers["fire4/squeeze1x1"] = [np.zeros((1, 1, 128, 33), "float32"), np.zeros(33, "float32")]
    elif case == "no_bias":
        layers["conv1"] = layers["conv1"][:1]
    bad = write_keras2_h5(tmp_path / f"{case}.h5", layers)
    target = sq.build_squeezenet((32, 32, 3))
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(ValueError, match=pattern) as err:
        sq.load_imagenet_h5(target, bad)
    assert str(bad) in str(err.value)
    for a, b in zip(before, target.get_weights()):   # nothing half-loaded
        np.testing.assert_array_equal(a, b)


def test_not_a_keras2_h5(model, tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="no 'layer_names'"):
        sq.load_imagenet_h5(model, plain)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk.h5: not a readable HDF5"):
        sq.load_imagenet_h5(model, junk)


@needs_shared
def test_shared_imagenet_h5_every_layer_matched(tmp_path):
    target = sq.build_squeezenet((32, 32, 3))
    report = sq.load_imagenet_h5(target, SHARED_H5)
    assert report["layers_matched"] == 25
    assert report["params_loaded"] == 722_496 == target.count_params()
    assert report["md5"] == sq.WEIGHTS_MD5
    with h5py.File(SHARED_H5, "r") as f:
        g = f["fire9/expand3x3"]
        kernel = np.asarray(g[[n for n in g.attrs["weight_names"] if n.endswith(b"kernel:0")][0].decode()])
    np.testing.assert_array_equal(target.get_layer("block5_fire9_expand3x3").kernel.numpy(), kernel)
    # ImageNet features of a caffe-preprocessed grey image are finite and not all zero
    x = np.full((1, 64, 64, 3), 128.0, "float32") - np.array([103.939, 116.779, 123.68], "float32")
    feats = sq.build_squeezenet((64, 64, 3), weights=SHARED_H5).predict(x, verbose=0)
    assert np.isfinite(feats).all() and feats.max() > 0


def test_weights_path_md5(tmp_path, monkeypatch):
    monkeypatch.delenv(sq.WEIGHTS_ENV, raising=False)
    bad = tmp_path / sq.WEIGHTS_FILENAME
    bad.write_bytes(b"definitely not the weights")
    with pytest.raises(ValueError, match=re.escape(f"{bad}: md5 ")):
        sq.imagenet_weights_path(bad)
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        sq.imagenet_weights_path(tmp_path / "nope.h5")
    monkeypatch.setenv(sq.WEIGHTS_ENV, str(bad))        # the env var wins over `local`, and is checked too
    with pytest.raises(ValueError, match="differs from the published"):
        sq.imagenet_weights_path(SHARED_H5)
    monkeypatch.delenv(sq.WEIGHTS_ENV)
    if SHARED_H5.is_file():
        assert sq.imagenet_weights_path(SHARED_H5) == SHARED_H5


def test_weights_path_download_uses_url_and_md5(tmp_path, monkeypatch):
    monkeypatch.delenv(sq.WEIGHTS_ENV, raising=False)
    calls = []

    def fake_get_file(fname, origin, **kw):
        calls.append((fname, origin, kw))
        return str(tmp_path / fname)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    assert sq.imagenet_weights_path() == tmp_path / sq.WEIGHTS_FILENAME
    assert calls == [(sq.WEIGHTS_FILENAME, sq.WEIGHTS_URL, {"cache_subdir": "models", "file_hash": sq.WEIGHTS_MD5})]

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(OSError, match="SQUEEZENET_WEIGHTS"):
        sq.imagenet_weights_path()
