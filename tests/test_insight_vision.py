"""vision.insight: the 7x7 + 5x5 surgery, the cost counters, the bootstrap metrics, an end-to-end tiny run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")

from pipeline import calibration, evaluation  # noqa: E402
from pipeline.params import ParamsError  # noqa: E402
from vision import insight  # noqa: E402


def _stem(backbone, upto="block1_conv"):
    """The backbone's input -> `upto` output, as a model."""
    return keras.Model(backbone.input, backbone.get_layer(upto).output)


def test_receptive_field_hand_computed():
    assert insight.receptive_field([(11, 4)]) == (11, 4)
    assert insight.receptive_field([(7, 1), (5, 4)]) == (11, 4)
    assert insight.receptive_field([(5, 1), (7, 4)]) == (11, 4)
    assert insight.receptive_field([(11, 4), (3, 2)]) == (19, 8)     # conv1 + AlexNet's 3x3/2 pool
    assert insight.receptive_field([(3, 1), (3, 1), (3, 1)]) == (7, 1)


def test_surgery_keeps_receptive_field_stride_and_resolution():
    from vision.alexnet import build_alexnet

    base = build_alexnet((67, 67, 3), stem="imagenet", norm="none")
    stack = insight.stacked_first_layer(base, (7, 5), mid_filters=4)
    names = [layer.name for layer in stack.layers]
    assert names[1:4] == ["block1a_conv", "block1a_relu", "block1_conv"]      # norm none: no BN between
    assert stack.get_layer("block1a_conv").kernel_size == (7, 7) and stack.get_layer("block1a_conv").strides == (1, 1)
    assert stack.get_layer("block1_conv").kernel_size == (5, 5) and stack.get_layer("block1_conv").strides == (4, 4)
    # the rest of the network is unchanged: same layer names and output shapes after block1_conv
    for layer in base.layers[2:]:
        assert tuple(stack.get_layer(layer.name).output.shape) == tuple(layer.output.shape)
    # by hand: (67 - 11) // 4 + 1 = 15 for both
    assert tuple(base.get_layer("block1_conv").output.shape[1:3]) == (15, 15)
    assert tuple(stack.get_layer("block1_conv").output.shape[1:3]) == (15, 15)
    geo = insight.block_geometry(stack)
    assert (geo["receptive_field"], geo["stride"], geo["output_resolution"]) == (11, 4, "15x15x96")
    assert (geo["receptive_field_with_pool"], geo["stride_with_pool"]) == (19, 8)


@pytest.mark.parametrize("side,out_side", [(11, 1), (15, 2), (19, 3)])
def test_surgery_receptive_field_by_impulse(side, out_side):
    """Positive weights, zero input plus one bright pixel: output (i, j) responds exactly when the pixel lies in
    rows 4i..4i+10 and columns 4j..4j+10 (receptive field 11, stride 4), for the original and the stack."""
    # the builder refuses < 67 px for the whole net: the first block alone, with the builder's layer config
    inp = keras.Input((side, side, 3))
    x = keras.layers.Conv2D(2, 11, strides=4, padding="valid", name="block1_conv")(inp)
    big = keras.Model(inp, keras.layers.ReLU(name="block1_relu")(x))
    stack = insight.stacked_first_layer(big, (7, 5), mid_filters=3)
    for model in (big, stack):
        for layer in model.layers:
            if layer.weights:
                layer.set_weights([np.ones_like(w) for w in layer.get_weights()[:1]] +
                                  [np.zeros_like(w) for w in layer.get_weights()[1:]])
        assert tuple(model.output.shape[1:3]) == (out_side, out_side)
        for (r, c) in [(0, 0), (10, 10), (side - 1, side - 1), (4, side // 2)]:
            x = np.zeros((1, side, side, 3), np.float32)
            x[0, r, c] = 1.0
            hit = np.asarray(model.predict(x, verbose=0))[0, ..., 0] > 0
            rows = np.array([4 * i <= r <= 4 * i + 10 for i in range(out_side)])
            cols = np.array([4 * j <= c <= 4 * j + 10 for j in range(out_side)])
            assert np.array_equal(hit, rows[:, None] & cols[None, :]), (model.name, r, c)


def test_surgery_rejects_what_it_cannot_split():
    inp = keras.Input((20, 20, 3))
    m = keras.Model(inp, keras.layers.Conv2D(2, 11, strides=4, padding="same", name="block1_conv")(inp))
    with pytest.raises(ValueError, match="padding"):
        insight.stacked_first_layer(m, (7, 5))
    m = keras.Model(inp, keras.layers.Conv2D(2, 11, strides=4, name="block1_conv")(inp))
    with pytest.raises(ValueError, match="receptive field 10"):
        insight.stacked_first_layer(m, (6, 5))
    m = keras.Model(inp, keras.layers.Conv2D(2, 3, name="conv")(inp))
    with pytest.raises(ValueError, match="block1_conv"):
        insight.stacked_first_layer(m, (7, 5))


def test_costs_hand_computed_tiny_conv():
    """Conv 3x3, 2 -> 4 channels, valid, on 5x5: output 3x3x4; MACs 3*3*4 outputs x 3*3*2 taps = 648;
    FLOPs 1,296; params 3*3*2*4 + 4 = 76. BN on it: 4 x 4 params, 2 x 36 FLOPs. ReLU: 36 values."""
    inp = keras.Input((5, 5, 2))
    x = keras.layers.Conv2D(4, 3, name="block1_conv")(inp)
    x = keras.layers.BatchNormalization(name="block1_bn")(x)
    x = keras.layers.ReLU(name="block1_relu")(x)
    x = keras.layers.MaxPooling2D(3, name="block1_pool")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(3, name="out")(x)
    c = insight.costs(keras.Model(inp, x))
    assert c["block1_params"] == 76 + 16
    assert c["block1_flops"] == 1296 + 72
    assert c["block1_activation_values"] == 3 * 36          # conv, BN, ReLU outputs; the pool is left out
    assert c["block1_largest_map_values"] == 36
    assert c["params"] == 76 + 16 + (4 * 3 + 3)
    assert c["flops_per_image"] == 1296 + 72 + 2 * 4 * 3


def test_metric_draws_match_the_shared_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    p[np.arange(200), y] += 0.5
    p /= p.sum(axis=1, keepdims=True)
    draws = insight.draw_indices(200, 50, 1)
    stats = insight.metric_draws(y, p, draws, 10)
    assert stats["ece"][0] == pytest.approx(calibration.ece(p, y, 10))
    assert stats["nll"][0] == pytest.approx(calibration.nll(p, y))
    assert stats["macro_f1"][0] == pytest.approx(evaluation.macro_f1(y, p.argmax(1), [0, 1, 2]))
    assert stats["auc"][0] == pytest.approx(evaluation.roc_auc(y, p))
    for i in (0, 17):   # each bootstrap value equals the metric on that draw's images
        idx = draws[i]
        assert stats["ece"][1][i] == pytest.approx(calibration.ece(p[idx], y[idx], 10))
        assert stats["nll"][1][i] == pytest.approx(calibration.nll(p[idx], y[idx]))
        assert stats["accuracy"][1][i] == pytest.approx(np.mean(p[idx].argmax(1) == y[idx]))
        assert stats["macro_f1"][1][i] == pytest.approx(evaluation.macro_f1(y[idx], p[idx].argmax(1), [0, 1, 2]))
    same = insight.share_changed(p.argmax(1), p.argmax(1), draws)
    assert same["value"] == 0 and same["ci95"] == {"lo": 0.0, "hi": 0.0}


def test_leaky_copy_same_start_and_survives_save(tmp_path):
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="block1_conv")(inp)
    x = keras.layers.ReLU(name="block1_relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5, activation="relu", name="head_dense1")(x)
    m = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="predictions")(x))
    leaky = insight.leaky_copy(m, 0.1)
    for a, b in zip(m.get_weights(), leaky.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert type(leaky.get_layer("block1_relu")).__name__ == "LeakyReLU"
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    leaky.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(back.predict(x, verbose=0), leaky.predict(x, verbose=0), atol=1e-6)
    assert set(insight._activation_layers(back)) == {"block1_relu", "head_dense1"}
    assert set(insight.never_positive(back, x)) == {"block1_relu", "head_dense1"}


def test_never_positive_counts_dead_channels():
    inp = keras.Input((4, 4, 1))
    conv = keras.layers.Conv2D(3, 1, name="c")
    x = keras.layers.ReLU(name="r")(conv(inp))
    m = keras.Model(inp, x)
    conv.set_weights([np.array([1.0, -1.0, 0.0]).reshape(1, 1, 1, 3), np.zeros(3)])
    out = insight.never_positive(m, np.ones((2, 4, 4, 1), np.float32), ["r"])
    assert out["r"] == {"units": 3, "dead": 2, "fraction": 2 / 3}


def test_filter_grid_shape_and_scaling():
    w = np.random.default_rng(0).normal(size=(3, 3, 3, 10))
    g = insight.filter_grid(w, gray=False)
    cols = int(np.ceil(np.sqrt(15)))
    assert g.shape == (int(np.ceil(10 / cols)) * 4 + 1, cols * 4 + 1, 3) and g.min() >= 0 and g.max() <= 1
    assert insight.filter_grid(w, max_filters=4, gray=True).ndim == 2


# ---------------------------------------------------------------------------------- params / bad input

def _params(tmp_path, **section):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"insight_vision": section}))
    return path


def test_params_errors_name_the_key(tmp_path):
    with pytest.raises(ParamsError, match="missing section 'insight_vision'"):
        (tmp_path / "p.yaml").write_text("other: {}\n")
        insight.load_config(tmp_path / "p.yaml")
    with pytest.raises(ParamsError, match="stack_kernels"):
        insight.load_config(_params(tmp_path, scratch={"stack_kernels": [7, 3]}))
    with pytest.raises(ParamsError, match="smoothing.eps"):
        insight.load_config(_params(tmp_path, smoothing={"eps": [0.05, 0.1]}))
    with pytest.raises(ParamsError, match="studies"):
        insight.load_config(_params(tmp_path, studies=["nope"]))
    with pytest.raises(ParamsError, match="insight_vision.bootstrap"):
        insight.load_config(_params(tmp_path, bootstrap="many"))
    with pytest.raises(ParamsError, match="unknown key"):
        insight.load_config(_params(tmp_path, typo=1))


# ---------------------------------------------------------------------------------- end to end

def _tiny_set(root, name, n=(64, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, m in zip(("train", "val", "test"), n):
        y = rng.integers(0, 2, m)
        x = rng.integers(0, 60, (m, 28, 28, 1))
        x[y == 1, 8:20, 8:20] += 150                 # class 1: a bright square
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.astype(np.uint8), y
    np.savez(root / f"{name}.npz", **arrays)
    (root / f"{name}.json").write_text(json.dumps({"dataset": name, "class_names": ["a", "b"], "n_classes": 2,
                                                   "channels": 1, "image_size": [28, 28]}))


def _tiny_runs(runs, dataset):
    from pipeline.io import sha256_file
    from vision.checkpoint import save_backbone, write_info
    from vision.models import build_backbone, build_classifier

    keras.utils.set_random_seed(0)
    bb = build_backbone("alexnet", (16, 16, 3))
    folder = runs / "pretrain" / "alexnet"
    sha = save_backbone(bb, folder)
    write_info(folder, {"model": "alexnet", "input_shape": [16, 16, 3], "arch": {"stem": "auto", "norm": "batchnorm"},
                        "source": "source:cifar10", "sha256": sha})
    ft_bb = keras.models.clone_model(bb)
    ft_bb.set_weights(bb.get_weights())
    w = ft_bb.get_layer("block4_conv").get_weights()
    ft_bb.get_layer("block4_conv").set_weights([w[0] + 0.01])
    for layer in ft_bb.layers:
        layer.trainable = layer.name.startswith(("block4", "block5"))
    clf = build_classifier(ft_bb, 2, input_shape=(28, 28, 1))
    (runs / f"{dataset}-alexnet-finetune-ce").mkdir(parents=True)
    clf.save(runs / f"{dataset}-alexnet-finetune-ce" / "model.keras")
    assert sha256_file(folder / "backbone.keras") == sha


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path):
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    data.mkdir()
    _tiny_set(data, "tiny")
    _tiny_runs(runs, "tiny")
    fit = {"epochs": 1, "batch_size": 32, "learning_rate": 0.001, "patience": 1, "min_delta": 0.001}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "vision_train": {"head_fit": fit, "seed": 1},
        "insight_vision": {"bootstrap": 30, "dead_images": 16,
                           "smoothing": {"dataset": "tiny", "eps": [0.0, 0.1]},
                           "scratch": {"dataset": "tiny", "image_size": 67, "mid_filters": 4, "fit": fit,
                                       "train_limit": 48},
                           "filters": {"models": ["alexnet"], "finetune_dataset": "tiny", "max_filters": 16}}}))
    metrics = tmp_path / "m.json"
    args = ["--params", str(params), "--data", str(data), "--runs", str(runs), "--out", str(out),
            "--metrics", str(metrics), "--checkpoints", str(tmp_path / "ckpt")]
    assert insight.main(args) == 0
    m = json.loads(metrics.read_text())
    assert set(m["readings"]) == {"smoothing_vs_temperature", "smoothing_top1", "kernels", "leaky_relu", "filters"}
    assert set(m["label_smoothing"]) == {"eps=0 before TS", "eps=0 after TS", "eps=0.1 before TS", "eps=0.1 after TS"}
    row = m["label_smoothing"]["eps=0.1 after TS"]
    assert row["temperature"] > 0 and set(row["ece"]) == {"value", "ci95"} and set(row["ece"]["ci95"]) == {"lo", "hi"}
    vs = m["label_smoothing_vs_temperature"]["eps=0.1"]
    assert 0 <= vs["top1_changed_vs_eps0"]["value"] <= 1
    k = m["kernels"]
    big, small = k["11x11/4"], k["7x7/1 + 5x5/4"]
    assert big["receptive_field"] == small["receptive_field"] == 11 and big["stride"] == small["stride"] == 4
    assert big["output_resolution"] == small["output_resolution"] == "15x15x96"
    assert big["block1_params"] == 11 * 11 * 3 * 96 + 4 * 96
    assert small["block1_params"] == 7 * 7 * 3 * 4 + 4 * 4 + 5 * 5 * 4 * 96 + 4 * 96
    # by hand at 67 px: 11x11/4 -> 15x15x96: 2 x 225 x 96 x 363 + BN 2 x 225 x 96
    assert big["block1_flops"] == 2 * 225 * 96 * 363 + 2 * 225 * 96
    # 7x7/1 -> 61x61x4 (+ BN), then 5x5/4 -> 15x15x96 (+ BN)
    assert small["block1_flops"] == 2 * 61 * 61 * 4 * 147 + 2 * 61 * 61 * 4 + 2 * 225 * 96 * 100 + 2 * 225 * 96
    assert small["block1_activation_values"] == 3 * 61 * 61 * 4 + 3 * 225 * 96
    dead = m["dead_units"]
    assert set(dead) == {"alexnet-scratch-relu", "alexnet-scratch-leaky_relu"}
    assert list(dead["alexnet-scratch-relu"]["layers"]) == list(dead["alexnet-scratch-leaky_relu"]["layers"])
    assert len(dead["alexnet-scratch-relu"]["layers"]) == 6          # 5 conv blocks + the head
    f = m["filters"]
    ft = f["alexnet fine-tuned (tiny, ce)"]
    assert ft["mean_abs_change_from_pretrained"] == 0 and ft["first_layer_trainable_in_finetune"] is False
    assert ft["largest_relative_change"].startswith("block4_conv")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(["smoothing_reliability.png", "kernels_cost.png", "leaky_dead_units.png",
                           "filters_alexnet_pretrained.png", "filters_alexnet_finetuned.png",
                           "filters_scratch_relu11.png", "filters_scratch_stack.png"])
    # a rerun restores every fit from its checkpoints and gives the same numbers
    first = metrics.read_text()
    assert insight.main(args) == 0
    again = json.loads(metrics.read_text())
    assert again["kernels"]["11x11/4"]["macro_f1"] == json.loads(first)["kernels"]["11x11/4"]["macro_f1"]
    assert again["label_smoothing"] == json.loads(first)["label_smoothing"]
    # the training cost is the one measured when the fit trained, not the restore's
    assert again["kernels"]["11x11/4"]["train_wall_s"] == json.loads(first)["kernels"]["11x11/4"]["train_wall_s"] > 0
    assert again["kernels"]["11x11/4"]["epochs_run"] == 1


def test_missing_inputs_name_the_file(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    _tiny_set(data, "tiny", n=(8, 4, 4))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"vision_train": {}, "insight_vision": {"studies": ["smoothing"],
                                                                             "smoothing": {"dataset": "tiny"}}}))
    with pytest.raises(FileNotFoundError, match=r"pretrain/alexnet/backbone\.json"):
        insight.main(["--params", str(params), "--data", str(data), "--runs", str(runs), "--out", str(tmp_path / "o"),
                      "--metrics", str(tmp_path / "m.json"), "--checkpoints", str(tmp_path / "c")])
    assert not (tmp_path / "m.json").exists()
    params.write_text(yaml.safe_dump({"insight_vision": {"studies": ["filters"], "filters": {"models": ["alexnet"]}}}))
    with pytest.raises(FileNotFoundError, match=r"pretrain/alexnet/backbone\.keras"):
        insight.main(["--params", str(params), "--data", str(data), "--runs", str(runs), "--out", str(tmp_path / "o"),
                      "--metrics", str(tmp_path / "m.json")])
    params.write_text(yaml.safe_dump({"insight_vision": {"studies": ["kernels"], "scratch": {"dataset": "nope"}}}))
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        insight.main(["--params", str(params), "--data", str(data), "--runs", str(runs), "--out", str(tmp_path / "o"),
                      "--metrics", str(tmp_path / "m.json")])
