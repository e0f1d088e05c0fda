"""analyse_vision: corruptions, top-k, the gradient dispatch, Grad-CAM, shared-prefix prediction, the stage."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from keras import ops

from pipeline import saliency
from pipeline.params import ParamsError
from vision import analyse

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------ corruptions

def _images(n=4, side=12, channels=1):
    return RNG.integers(0, 256, (n, side, side, channels)).astype(np.uint8)


def test_severity_zero_is_identity():
    x = _images()
    for kind in ("noise", "blur"):
        out = analyse.corrupted(x, kind, 0.0, seed=1)
        assert out.dtype == np.float32 and np.array_equal(out, x.astype(np.float32))


@pytest.mark.parametrize("kind, sigmas", [("noise", (5.0, 10.0, 20.0, 40.0, 80.0)), ("blur", (0.4, 0.6, 0.8, 1.0, 2.0))])
def test_strength_grows_with_severity(kind, sigmas):
    x = np.full((8, 16, 16, 1), 128, np.uint8)
    x[:, ::2] = 60                                   # stripes: blur flattens them, noise is not clipped much
    change = [np.abs(analyse.corrupted(x, kind, s, seed=3) - x).mean() for s in sigmas]
    assert all(a < b for a, b in zip(change, change[1:])), change


def test_noise_is_clipped_and_reproducible():
    x = np.concatenate([np.zeros((2, 8, 8, 3), np.uint8), np.full((2, 8, 8, 3), 255, np.uint8)])
    out = analyse.corrupted(x, "noise", 80.0, seed=7)
    assert out.min() >= 0 and out.max() <= 255
    assert (out[:2] == 0).mean() > 0.3 and (out[2:] == 255).mean() > 0.3   # about half the draws clipped
    assert np.array_equal(out, analyse.corrupted(x, "noise", 80.0, seed=7))
    assert not np.array_equal(out, analyse.corrupted(x, "noise", 80.0, seed=8))


def test_blur_keeps_images_and_channels_apart():
    x = np.zeros((2, 9, 9, 2), np.uint8)
    x[1, 4, 4, 1] = 255                              # one bright pixel: second image, second channel
    out = analyse.corrupted(x, "blur", 1.0, seed=0)
    assert out[0].max() == 0 and out[1, ..., 0].max() == 0
    assert out[1, 4, 4, 1] == out[1, ..., 1].max() < 255 and out[1, 4, 5, 1] > 0
    assert out[1, ..., 1].sum() == pytest.approx(255, rel=1e-3)   # mass kept (reflect border far away)


def test_unknown_corruption_and_bad_params():
    with pytest.raises(ValueError, match="unknown corruption"):
        analyse.corrupted(_images(), "fog", 1.0, seed=0)
    with pytest.raises(ParamsError, match="noise_sigma"):
        analyse.Config(noise_sigma=(20.0, 10.0)).validate()
    with pytest.raises(ParamsError, match="max_images"):
        analyse.Config(max_images=0).validate()


# ----------------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("n_classes", [2, 4])
def test_auc_draws_match_evaluation_roc_auc_on_each_draw(n_classes):
    from pipeline import clinical, evaluation

    y = np.array([0, 1] * 5 + [n_classes - 1] * 2)
    probs = RNG.dirichlet(np.ones(n_classes), len(y))
    probs[:4] = probs[4:8]                           # tied scores
    draws = np.stack(list(clinical.group_draws(np.arange(len(y)), 40, 0)))
    draws[0] = 0                                     # a draw with one class only: undefined
    got = analyse.auc_draws(y, probs, draws)
    want = [evaluation.roc_auc(y[d], probs[d]) for d in draws]
    assert np.isnan(got[0]) and want[0] is None
    np.testing.assert_allclose(got[1:], np.array(want[1:], float), rtol=1e-12)


# ------------------------------------------------------------------------------------------ top-k

def test_topk_hand_example(tmp_path):
    probs = np.array([[.6, .2, .1, .05, .05],    # true 0: rank 1
                      [.5, .3, .1, .05, .05],    # true 1: rank 2
                      [.4, .3, .2, .05, .05],    # true 2: rank 3
                      [.4, .3, .2, .06, .04]])   # true 3: rank 4
    y = np.arange(4)
    for name, p in (("five", probs), ("two", probs[:, :2] / probs[:, :2].sum(1, keepdims=True))):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "eval.npz", y_true=y % p.shape[1], probs=p)
    runs = [{"name": n, "dir": tmp_path / n} for n in ("five", "two")]
    out = analyse.topk(runs, analyse.Config(bootstrap=50))
    assert list(out) == ["five"]                      # two classes: no top-k
    assert {k: v["value"] for k, v in out["five"].items()} == {"top1": 0.25, "top2": 0.5, "top3": 0.75}
    ci = out["five"]["top2"]["ci95"]
    assert 0 <= ci["lo"] <= 0.5 <= ci["hi"] <= 1


# -------------------------------------------------------------------------- gradients and Grad-CAM

def test_gradients_dispatch_on_running_backend():
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    g = saliency.gradients(lambda v: ops.sum(v ** 2) + ops.sum(3.0 * v), x)
    np.testing.assert_allclose(g, 2 * x + 3, rtol=1e-5)


def _spot_model(side=8, at=(2, 5)):
    """Output depends on the feature map at one location only (Cropping2D keeps that pixel)."""
    inp = keras.Input((side, side, 1))
    feat = keras.layers.Conv2D(2, 1, activation="relu", name="conv")(inp)
    x = keras.layers.Cropping2D(((at[0], side - at[0] - 1), (at[1], side - at[1] - 1)))(feat)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out)


def test_gradient_through_rewired_chain_lives_at_the_one_location():
    model = _spot_model()
    chain = saliency.layer_chain(model)
    feats = ops.convert_to_numpy(saliency.apply_chain(chain[:1], RNG.uniform(1, 2, (2, 8, 8, 1)).astype("float32")))
    g = saliency.gradients(lambda a: ops.sum(saliency.apply_chain(chain[1:], a, logits=True)[:, 0]), feats)
    mask = np.abs(g).sum(axis=(0, 3)) > 0
    assert mask[2, 5] and mask.sum() == 1


def _nested_classifier(side=8):
    """image -> Rescaling -> [backbone: block1_conv 1x1 (identity, relu)] -> GAP -> Dense: class c reads channel c."""
    b_in = keras.Input((side, side, 2))
    b_out = keras.layers.Conv2D(2, 1, activation="relu", name="block1_conv")(b_in)
    backbone = keras.Model(b_in, b_out, name="tiny")
    inp = keras.Input((side, side, 2), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inp)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    out = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out)
    backbone.get_layer("block1_conv").set_weights([np.eye(2, dtype="float32")[None, None], np.zeros(2, "float32")])
    model.get_layer("predictions").set_weights([4 * np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    return model


def test_grad_cam_peaks_where_the_class_evidence_is():
    model = _nested_classifier()
    x = RNG.uniform(0, 20, (2, 8, 8, 2)).astype("float32")
    x[:, 1, 6, 0] = 255                               # class 0's channel: bright at (1, 6)
    x[:, 5, 2, 1] = 255                               # class 1's channel: bright at (5, 2)
    chain = saliency.layer_chain(model)
    assert [layer.name for layer in chain] == ["rescale", "block1_conv", "head_pool", "predictions"]
    np.testing.assert_allclose(ops.convert_to_numpy(saliency.apply_chain(chain, x)),
                               model.predict(x, verbose=0), atol=1e-6)
    index = saliency.cam_layer_index(chain)
    assert chain[index].name == "block1_conv"
    cams = saliency.grad_cam(chain, x, [0, 1], index)
    assert np.unravel_index(cams[0].argmax(), cams[0].shape) == (1, 6)
    assert np.unravel_index(cams[1].argmax(), cams[1].shape) == (5, 2)
    up = saliency.upsample(cams, (16, 16))
    assert up.shape == (2, 16, 16) and up.max() == pytest.approx(1.0) and up.min() >= 0


def test_cam_layer_extends_through_bn_relu_and_respects_min_side():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Concatenate(name="repeat")([inp, inp, inp])
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.MaxPooling2D(name="p1")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.MaxPooling2D(4, name="p2")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    chain = saliency.layer_chain(model)
    assert chain[0].name == "repeat"
    assert chain[saliency.cam_layer_index(chain)].name == "c2"
    assert chain[saliency.cam_layer_index(chain, min_side=8)].name == "r1"
    x = RNG.uniform(0, 255, (3, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(saliency.chain_model(chain, (8, 8, 1)).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="side >= 9"):
        saliency.cam_layer_index(chain, min_side=9)


def test_branching_part_is_one_segment_link():
    """A branch-and-join (as in a SqueezeNet fire module) between two cut tensors is one Segment link; the
    rebuilt chain model is flat (every layer its own) and predicts as the original; Grad-CAM can cut there."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 1, name="stem")(inp)
    a, b = keras.layers.Conv2D(2, 1, name="left")(x), keras.layers.Conv2D(2, 3, padding="same", name="right")(x)
    x = keras.layers.Concatenate(name="join")([a, b])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="out")(x))
    chain = saliency.layer_chain(model)
    assert [link.name for link in chain] == ["stem", "left..join", "pool", "out"]
    seg = chain[1]
    assert isinstance(seg, saliency.Segment) and [w.name for w in seg.layers] == ["left", "right", "join"]
    assert len(seg.get_weights()) == 4 and seg.get_config()["layers"][2]["class"] == "Concatenate"
    flat = saliency.chain_model(chain, (6, 6, 2))
    assert {"left", "right", "join"} <= {layer.name for layer in flat.layers}
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(flat.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert saliency.cam_layer_index(chain) == 1 and saliency.grad_cam(chain, x, [0, 1, 0], 1).shape == (3, 6, 6)


def test_nested_model_inside_a_branch_is_not_a_chain():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(2)(inner_in), name="inner")
    inp = keras.Input((4,))
    a, b = inner(inp), keras.layers.Dense(2)(inp)
    with pytest.raises(ValueError, match="not a chain"):
        saliency.layer_chain(keras.Model(inp, keras.layers.Add()([a, b])))


# -------------------------------------------------------------------------- shared-prefix prediction

def _pair(seeds=(1, 2)):
    """Classifiers with the same first conv (same weights) and different heads."""
    conv = keras.layers.Conv2D(3, 3, activation="relu", name="conv")
    models = []
    for seed in seeds:
        inp = keras.Input((6, 6, 1))
        x = keras.layers.Rescaling(1 / 255, name="rescale")(inp)
        x = keras.layers.Flatten(name="flat")(conv(x))
        out = keras.layers.Dense(2, activation="softmax", name="predictions",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
        models.append(keras.Model(inp, out))
    return models


def test_prefix_tree_shares_identical_layers_and_predicts_like_each_model():
    a, b = _pair()
    tree = analyse.prefix_tree({"a": analyse.inference_chain(a), "b": analyse.inference_chain(b)})
    assert [layer.name for layer in tree.layers] == ["rescale", "conv", "flat"]
    assert tree.leaves == [] and len(tree.children) == 2
    x = RNG.integers(0, 256, (5, 6, 6, 1)).astype("float32")
    out = tree.predict(x)
    np.testing.assert_allclose(out["a"], a.predict(x, verbose=0), atol=1e-5)
    np.testing.assert_allclose(out["b"], b.predict(x, verbose=0), atol=1e-5)
    assert not np.allclose(out["a"], out["b"])


def test_prefix_tree_groups_runs_that_branch_at_different_depths():
    a, b = _pair()
    (c,) = _pair(seeds=(3,))                          # its own conv: shares only the rescaling
    d = keras.models.clone_model(a)
    d.set_weights(a.get_weights())                    # a copy of a (other layer objects): one leaf with a
    tree = analyse.prefix_tree({k: analyse.inference_chain(m) for k, m in zip("abcd", (a, b, c, d))})
    assert [layer.name for layer in tree.layers] == ["rescale"] and tree.leaves == []
    shared, alone = tree.children
    assert [layer.name for layer in shared.layers] == ["conv", "flat"] and len(alone.children) == 0
    assert sorted(leaf for child in shared.children for leaf in child.leaves) == ["a", "b", "d"]
    assert ["a", "d"] in [child.leaves for child in shared.children] and alone.leaves == ["c"]
    x = RNG.integers(0, 256, (4, 6, 6, 1)).astype("float32")
    out = tree.predict(x)
    for key, model in zip("abcd", (a, b, c, d)):
        np.testing.assert_allclose(out[key], model.predict(x, verbose=0), atol=1e-5)


# ----------------------------------------------------------------------------------------- stage

def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained runs"):
        analyse.find_runs(tmp_path)


@pytest.mark.slow
def test_stage_end_to_end_on_tiny_runs(tmp_path):
    from vision import layers  # noqa: F401
    from vision.models import build_classifier

    n_cls, side = 3, 12
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 30), ("val", 9), ("test", 15)):
        arrays[f"y_{split}"] = np.arange(n) % n_cls
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, side, side, 1)).astype(np.uint8)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "toy.npz", **arrays)
    (data / "toy.json").write_text(json.dumps({"dataset": "toy", "class_names": ["a", "b", "c"]}))
    runs = tmp_path / "runs"
    b_in = keras.Input((side, side, 3))
    b_out = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv")(b_in)
    backbone = keras.Model(b_in, keras.layers.MaxPooling2D(name="block1_pool")(b_out), name="toynet")
    for regime in ("frozen", "finetune"):
        model = build_classifier(backbone, n_cls, input_shape=(side, side, 1), preprocess="unit", head_units=(5,))
        folder = runs / f"toy-toynet-{regime}-ce"
        folder.mkdir(parents=True)
        model.save(folder / "model.keras")
        (folder / "train.json").write_text(json.dumps({"dataset": "toy", "model": "toynet", "regime": regime,
                                                       "loss": "ce", "limit": None}))
        probs = model.predict(arrays["x_test"], verbose=0)
        np.savez(folder / "eval.npz", y_true=arrays["y_test"], probs=probs)
    params = tmp_path / "params.yaml"
    params.write_text("analyse_vision:\n  bootstrap: 5\n  noise_sigma: [10.0, 20.0, 30.0, 40.0, 50.0]\n"
                      "  gradcam_per_class: 1\n  gradcam_min_side: 2\n  dead_images: 10\n")
    out, metrics = tmp_path / "analysis", tmp_path / "analysis.json"
    assert analyse.main(["--params", str(params), "--runs", str(runs), "--data", str(data),
                         "--out", str(out), "--metrics", str(metrics)]) == 0
    result = json.loads(metrics.read_text())
    rob = result["robustness"]["toy-toynet-frozen-ce"]
    assert set(rob) == {"clean", "noise", "blur"} and set(rob["noise"]) == {f"s{i}" for i in range(1, 6)}
    assert rob["noise"]["s5"]["sigma"] == 50.0 and rob["clean"]["accuracy"]["ci"] is not None
    assert sum(rob["blur"]["s2"]["predicted_share"].values()) == pytest.approx(1.0)
    assert result["class_names"] == {"toy": ["a", "b", "c"]}
    assert set(result["robustness_summary"]) == {"toynet-frozen", "toynet-finetune"}
    assert result["robustness_by_dataset"]["toy"]["n_runs"] == 2
    assert result["robustness_by_dataset"]["toy"]["noise_top_accuracy_drop"] == pytest.approx(
        np.mean([result["robustness"][r]["noise"]["s5"]["accuracy_drop"]["value"] for r in result["robustness"]]))
    assert set(result["topk"]["toy-toynet-finetune-ce"]) == {"top1", "top2"}
    assert result["gradcam"]["toy-toynet-frozen-ce"]["layer"] == "block1_conv"
    cap = result["capacity"]["toy-toynet-frozen-ce"]
    assert cap["params"] > 0 and 0 <= cap["dead_fraction"] <= 1
    assert (out / "gradcam" / "toy-toynet-frozen-ce.png").stat().st_size > 1000
    assert (out / "robustness.png").is_file() and not (out / "eval.json").exists()
    assert set(result["readings"]) >= {"strongest_effect", "noise_vs_blur", "backbones_and_regimes", "topk", "capacity", "dead_units"}
    assert set(result["method"]) >= {"robustness", "topk", "gradcam", "capacity", "dead_units"}
    assert result["timings_s"]["total_s"] > 0
    # the report's vision-analysis section reads every part it expects from this file
    from pipeline.report.sections import analysis
    from vision.report import SECTIONS

    section = next(s for s in SECTIONS if s.path == "metrics/analysis/vision.json")
    view, reason = analysis(result, "metrics/analysis/vision.json", tmp_path, section)
    assert reason is None and not [n for n in view["notes"] if "has no" in n], view["notes"]
    assert view["robustness"]["kinds"] and view["topk"]["rows"] and view["dead_units"]["groups"]
