"""Deployment toolbox: TFLite export/runner, latency, roofline costs, sparse matmul, quantization noise."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers, ops

from pipeline import deploy

ROOT = Path(__file__).resolve().parents[1]


def _tiny(window=32, seed=0):
    """Two named inputs like the ECG models: conv trunk on "beat", log-RR dense on "rr"."""
    keras.utils.set_random_seed(seed)
    beat = keras.Input((window, 2), name="beat")
    rr = keras.Input((5,), name="rr")
    x = layers.Conv1D(4, 3, padding="same", dilation_rate=2, use_bias=False, name="conv")(beat)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("relu", name="relu")(x)
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    log_rr = ops.log(ops.maximum(rr, 1e-3))
    r = layers.Dense(32, activation="relu", name="rr_dense")(log_rr)
    x = layers.Concatenate(name="merge")([x, r])
    x = layers.Dense(256, activation="relu", name="fc")(x)  # enough weights for int8 to shrink the file
    x = layers.Dropout(0.2, name="drop")(x)
    out = layers.Dense(3, activation="softmax", name="probs")(x)
    return keras.Model([beat, rr], out, name="tiny")


def _data(n=512, window=32, seed=1):
    """Class 0/1/2 set by which of the first three RR features is largest plus a beat offset."""
    rng = np.random.default_rng(seed)
    rr = rng.uniform(0.3, 2.0, size=(n, 5)).astype("float32")
    y = rr[:, :3].argmax(1)
    beat = rng.normal(size=(n, window, 2)).astype("float32") + (y[:, None, None] - 1).astype("float32")
    return {"beat": beat, "rr": rr}, y


@pytest.fixture(scope="module")
def trained():
    model = _tiny()
    x, y = _data()
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    return model, x, y


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, x, _ = trained
    folder = tmp_path_factory.mktemp("tflite")
    f32, i8 = folder / "f32.tflite", folder / "int8.tflite"
    size_f32 = deploy.export_tflite(model, f32)
    size_i8 = deploy.export_tflite(model, i8, int8_representative=x, n_rep=200)
    return {"f32": f32, "int8": i8, "size_f32": size_f32, "size_int8": size_i8}


def _keras(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_float_export_matches_keras_in_either_dict_order(trained, exported):
    model, x, _ = trained
    assert exported["size_f32"] == exported["f32"].stat().st_size > 0
    assert not [p for p in exported["f32"].parent.iterdir() if p.name.startswith(".")]  # no temp left
    runner = deploy.TFLiteRunner(exported["f32"])
    assert sorted(runner.input_names) == ["beat", "rr"]
    want = _keras(model, x)
    forward = runner.predict({"beat": x["beat"], "rr": x["rr"]}, batch_size=100)  # batch resizes incl. a tail
    backward = runner.predict({"rr": x["rr"], "beat": x["beat"]}, batch_size=512)
    np.testing.assert_allclose(forward, want, atol=1e-5)
    np.testing.assert_allclose(backward, want, atol=1e-5)


def test_inputs_of_equal_shape_are_mapped_by_name(tmp_path):
    """Both inputs (n, 5): a positional mix-up would run silently, so compare with Keras."""
    a, b = keras.Input((5,), name="beat"), keras.Input((5,), name="rr")
    out = layers.Dense(2, name="d")(layers.Concatenate()([a, 3.0 * b + 1.0]))
    model = keras.Model([a, b], out)
    rng = np.random.default_rng(0)
    x = {"rr": rng.normal(size=(7, 5)).astype("float32"), "beat": rng.normal(size=(7, 5)).astype("float32")}
    deploy.export_tflite(model, tmp_path / "m.tflite")
    got = deploy.TFLiteRunner(tmp_path / "m.tflite").predict(x)
    np.testing.assert_allclose(got, _keras(model, x), atol=1e-5)
    swapped = {"beat": x["rr"], "rr": x["beat"]}
    assert not np.allclose(_keras(model, swapped), got, atol=1e-3)  # the test can tell a swap


def test_int8_export_is_smaller_and_agrees(trained, exported):
    model, x, y = trained
    want = _keras(model, x)
    assert (want.argmax(1) == y).mean() > 0.8  # the toy model learned something worth agreeing on
    assert exported["size_int8"] < 0.6 * exported["size_f32"]  # weights 4x smaller, fixed overhead ~10 kB
    got = deploy.TFLiteRunner(exported["int8"]).predict(x)
    assert got.dtype == np.float32 and got.shape == want.shape  # float in/out, quantized inside
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.95
    assert np.abs(got - want).max() < 0.2


def test_size_breakdown(exported):
    f32 = deploy.tflite_size_breakdown(exported["f32"])
    i8 = deploy.tflite_size_breakdown(exported["int8"])
    assert f32["file_bytes"] == exported["size_f32"] and f32["quant_param_bytes"] == 0
    assert f32["constant_bytes"] >= 4 * 256 * 36  # the fc kernel in float32
    assert 256 * 36 <= i8["constant_bytes"] < f32["constant_bytes"] / 2 and i8["quant_param_bytes"] > 0
    assert f32["other_bytes"] > 0 and i8["other_bytes"] > 0


def test_int8_needs_every_input_in_the_representative_data(trained, tmp_path):
    model, x, _ = trained
    with pytest.raises(KeyError, match="rr"):
        deploy.export_tflite(model, tmp_path / "m.tflite", int8_representative={"beat": x["beat"]})
    assert not (tmp_path / "m.tflite").exists()


def test_runner_names_a_missing_key(exported, trained):
    _, x, _ = trained
    runner = deploy.TFLiteRunner(exported["f32"])
    with pytest.raises(KeyError, match="'rr'"):
        runner.predict({"beat": x["beat"]})
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        deploy.TFLiteRunner(exported["f32"].parent / "nope.tflite")


def test_latency_per_item(trained, exported):
    model, x, _ = trained
    for fn in (deploy.keras_fn(model), deploy.keras_fn(model, jit_compile=True), deploy.tflite_fn(deploy.TFLiteRunner(exported["f32"]))):
        np.testing.assert_allclose(fn({k: v[:3] for k, v in x.items()}), _keras(model, {k: v[:3] for k, v in x.items()}),
                                   atol=1e-5)
        for batch in (1, 64):
            out = deploy.latency_per_item(fn, x, batch, repeats=5, warmup=1)
            assert out["batch"] == batch and out["repeats"] == 5
            assert 0 < out["min_s"] <= out["median_s"] <= out["p90_s"]
            assert out["median_call_s"] == pytest.approx(out["median_s"] * batch)
    small = {k: v[:2] for k, v in x.items()}  # fewer rows than the batch: rows are reused
    assert deploy.latency_per_item(deploy.keras_fn(model, compiled=False), small, 5, repeats=2, warmup=0)["batch"] == 5


def _hand_net():
    inp = keras.Input((10, 2), name="beat")
    x = layers.Conv1D(4, 3, padding="same", name="conv")(inp)  # 10 * 4 * 3 * 2 = 240 MACs
    x = layers.BatchNormalization(name="bn")(x)
    s = layers.Conv1D(4, 3, strides=2, padding="valid", name="strided")(x)  # out 4: 4*4*3*4 = 192 MACs
    d = layers.Conv1D(2, 3, dilation_rate=2, padding="valid", name="dilated")(x)  # out 6: 6*2*3*4 = 144
    x = layers.Concatenate()([layers.Flatten()(s), layers.Flatten()(d)])  # 16 + 12 = 28 features
    x = layers.Dense(8, name="fc")(x)  # 224 MACs
    out = layers.Dense(3, name="out")(x)  # 8 features -> 3: 24 MACs
    return keras.Model(inp, out, name="hand")


def test_layer_costs_by_hand():
    model = _hand_net()
    rows = {r["name"]: r for r in deploy.layer_costs(model, batch=1)}
    assert list(rows) == ["conv", "bn", "strided", "dilated", "fc", "out", "TOTAL"]
    assert [rows[n]["macs"] for n in ("conv", "strided", "dilated", "fc", "out")] == [240, 192, 144, 224, 24]
    assert rows["conv"]["flops"] == 480 and rows["out"]["flops"] == 48
    assert rows["bn"]["flops"] == 2 * 10 * 4 and rows["bn"]["params"] == 16
    assert rows["conv"]["params"] == 3 * 2 * 4 + 4 and rows["out"]["params"] == 27
    # bytes at batch 1: weights + input + output activations, float32
    assert rows["conv"]["bytes"] == (28 + 20 + 40) * 4
    assert rows["out"]["intensity"] == pytest.approx(48 / ((27 + 8 + 3) * 4))
    assert rows["TOTAL"]["macs"] == 240 + 192 + 144 + 224 + 24
    assert rows["TOTAL"]["params"] == model.count_params()
    # a larger batch amortises the weights
    big = {r["name"]: r for r in deploy.layer_costs(model, batch=100, bytes_per_value=1)}
    assert big["conv"]["bytes"] == pytest.approx(28 / 100 + 60)
    # roofline: a low ridge makes everything compute bound, a huge one memory bound
    for peak, bound in ((1.0, "compute"), (1e6, "memory")):
        rows = deploy.layer_costs(model, peaks={"peak_gflops": peak, "bandwidth_gbs": 10.0})
        assert {r["bound"] for r in rows} == {bound}
        assert all(r["attainable_gflops"] <= peak + 1e-9 for r in rows)
    folded = [r["name"] for r in deploy.layer_costs(model, fold_batchnorm=True)]
    assert "bn" not in folded and "conv" in folded
    conv = rows[0]
    assert conv["attainable_gflops"] == pytest.approx(conv["intensity"] * 10.0)
    assert conv["roofline_s_per_item"] == pytest.approx(conv["flops"] / (conv["attainable_gflops"] * 1e9))


def test_layer_costs_recurse_into_ensembles():
    members = [_hand_net() for _ in range(2)]
    for i, m in enumerate(members):
        m.name = f"fold{i}"
    inp = keras.Input((10, 2), name="beat")
    ens = keras.Model(inp, layers.Average()([m(inp) for m in members]))
    rows = deploy.layer_costs(ens)
    names = [r["name"] for r in rows]
    assert "fold0/conv" in names and "fold1/out" in names
    assert rows[-1]["macs"] == 2 * 824 and rows[-1]["params"] == ens.count_params()
    members[0].get_layer("fc").kernel.assign(np.zeros((28, 8), "float32"))
    rows = {r["name"]: r for r in deploy.layer_costs(ens)}
    assert rows["fold0/fc"]["nonzero_params"] == 0 < rows["fold1/fc"]["nonzero_params"]


def test_machine_peaks_quick():
    peaks = deploy.machine_peaks(seconds=0.3, n_matmul=256, stream_mb=8)
    assert peaks["peak_gflops"] > 0.1 and peaks["bandwidth_gbs"] > 0.1
    assert "matmul" in peaks["method"]


def test_magnitude_prune_and_sparse_speedup():
    w = np.arange(1, 21, dtype="float32").reshape(4, 5) * np.where(np.arange(20) % 2, 1, -1).reshape(4, 5)
    pruned = deploy.magnitude_prune(w, 0.5)
    assert np.count_nonzero(pruned) == 10
    assert np.all(np.abs(w[pruned != 0]) > np.abs(w[pruned == 0]).max())  # the largest survive
    rng = np.random.default_rng(0)
    rows = deploy.sparse_dense_speedup(rng.normal(size=(48, 16)), (0.0, 0.9), batches=(1, 8), rows_per_item=3,
                                       repeats=3)
    assert [(r["sparsity"], r["batch"]) for r in rows] == [(0.0, 1), (0.9, 1), (0.0, 8), (0.9, 8)]
    for r in rows:
        assert r["rows"] == 3 * r["batch"]
        assert r["nnz"] == round((1 - r["sparsity"]) * 48 * 16)
        assert r["dense_s"] > 0 and r["sparse_s"] > 0
        assert r["naive_speedup"] == pytest.approx(1 / (1 - r["sparsity"]))
        assert r["speedup"] == pytest.approx(r["dense_s"] / r["sparse_s"])


def test_matmul_view_of_conv_and_dense():
    model = _hand_net()
    w, rows = deploy.matmul_view(model.get_layer("strided"))
    assert w.shape == (3 * 4, 4) and rows == 4
    w, rows = deploy.matmul_view(model.get_layer("out"))
    assert w.shape == (8, 3) and rows == 1
    with pytest.raises(ValueError, match="bn"):
        deploy.matmul_view(model.get_layer("bn"))


def test_quant_step_by_hand():
    w = np.array([[1.0, -2.0], [0.5, 4.0]])
    np.testing.assert_allclose(deploy.quant_step(w, 8), [[1 / 127, 4 / 127]])
    np.testing.assert_allclose(deploy.quant_step(w, 8, per_channel=False), [[4 / 127]])
    np.testing.assert_allclose(deploy.quant_step(w, 4, symmetric=False, per_channel=False), [[6 / 15]])
    np.testing.assert_allclose(deploy.quant_step(np.array([1.0, 3.0]), 8, symmetric=False, per_channel=False),
                               [3 / 255])  # the range always holds 0
    assert deploy.quant_step(w, 8).shape == (1, 2)


def test_quant_noise_scales_with_bits_and_restores_weights(trained):
    model, x, _ = trained
    before = [np.array(v) for v in model.get_weights()]
    clean = _keras(model, x)
    exact = deploy.predict_quant_noise(model, x, bits=30, draws=2)
    assert exact["n_kernels"] == 4
    assert exact["mean_abs_dp"] < 1e-6 and exact["flip_rate"] == 0
    coarse = deploy.predict_quant_noise(model, x, bits=2, draws=3)
    fine = deploy.predict_quant_noise(model, x, bits=8, draws=3)
    assert coarse["mean_abs_dp"] > fine["mean_abs_dp"] > 0
    assert coarse["flip_rate"] > fine["flip_rate"]
    assert coarse["pred_draws"].shape == (3, len(clean))
    np.testing.assert_array_equal(coarse["pred_clean"], clean.argmax(1))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(_keras(model, x), clean, atol=1e-6)


def test_activation_noise_adds_to_weight_noise(trained):
    model, x, _ = trained
    acts = deploy.predict_quant_noise(model, x, bits=4, draws=2, weights=False, activations=True)
    assert acts["n_kernels"] == 0 and acts["mean_abs_dp"] > 0
    none = deploy.predict_quant_noise(model, x, bits=4, draws=1, weights=False, activations=False)
    assert none["mean_abs_dp"] == 0 and none["flip_rate"] == 0
    fine = deploy.predict_quant_noise(model, x, bits=16, draws=1, weights=False, activations=True)
    assert fine["mean_abs_dp"] < acts["mean_abs_dp"] / 10


def test_module_imports_without_tensorflow():
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "from pipeline import deploy\n"
            "try:\n    deploy.TFLiteRunner('x.tflite')\nexcept RuntimeError as e:\n    print('ERR', e)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ERR" in done.stdout and "TensorFlow" in done.stdout
