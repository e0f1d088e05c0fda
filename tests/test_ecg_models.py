"""ECG model registry, receptive fields, and the resumable fit loop."""
import json

import keras
import numpy as np
import pytest

from ecg import models
from ecg.models import Conv, Pool, receptive_field
from pipeline.losses import make_loss
from pipeline.training import FitConfig, fit


def test_receptive_field_by_hand():
    # conv k5 -> 5; pool 2 -> 5 + 1 = 6 (jump 2); conv k5 -> 6 + 4*2 = 14; pool 2 -> 14 + 1*2 = 16
    assert receptive_field(models.lenet1d_spec()) == 16
    # dilated k3, dilations 1, 2, 4: 1 + 2*(1 + 2 + 4) = 15
    assert receptive_field((Conv(8, 3, 1), Conv(8, 3, 2), Conv(8, 3, 4))) == 15
    # a strided conv multiplies the jump of later layers
    assert receptive_field((Conv(4, 3, stride=2), Conv(4, 3))) == 1 + 2 + 2 * 2
    assert receptive_field((Pool(3),)) == 3


def test_dilated_covers_the_window():
    # stem k7 stride 2 -> 7, jump 2; then k3 dilations 1..32 add 2 * 2 * (1 + 2 + ... + 32) = 252
    spec = models.dilated1d_spec(253)
    assert receptive_field(spec) == 7 + 252
    assert spec[0] == Conv(32, 7, 1, 2)
    assert [c.dilation for c in spec[1:]] == [1, 2, 4, 8, 16, 32]
    for window in (129, 253, 301):
        spec = models.dilated1d_spec(window, stem_stride=1)
        assert receptive_field(spec) >= window
        assert receptive_field(spec[:-1]) < window  # no layer more than needed
        assert [c.dilation for c in spec[1:]] == [2 ** i for i in range(len(spec) - 1)]


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown ECG model 'resnet'.*dilated1d.*lenet1d"):
        models.build("resnet", 253, 5, 5)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_predicts_probabilities(name):
    model, info = models.build(name, 65, 5, 5, channels=2)
    x = {"beat": np.random.default_rng(0).normal(size=(3, 65, 2)).astype("float32"),
         "rr": np.ones((3, 5), "float32")}
    p = model.predict(x, verbose=0)
    assert p.shape == (3, 5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert info["params"] == model.count_params() > 0
    spec = {"lenet1d": lambda: models.lenet1d_spec(2), "dilated1d": lambda: models.dilated1d_spec(65, 16),
            "resnet1d": lambda: models.resnet1d_spec()}[name]()
    assert info["receptive_field_samples"] == receptive_field(spec)


def _toy(n=256, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    beat = rng.normal(size=(n, 33, 1)).astype("float32") + y[:, None, None].astype("float32")
    return {"beat": beat, "rr": np.ones((n, 5), "float32")}, y


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch, at_batch):
        super().__init__()
        self.epoch, self.at_epoch, self.at_batch = 0, at_epoch, at_batch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.at_epoch and batch == self.at_batch:
            raise KeyboardInterrupt("simulated kill mid-epoch")


def test_fit_resumes_after_interruption(tmp_path, monkeypatch):
    x, y = _toy()
    cfg = FitConfig(epochs=4, batch_size=32, patience=10)
    build = lambda: models.build("lenet1d", 33, 5, 3, width=1)[0]  # noqa: E731
    loss = make_loss("ce")
    interrupt = _Interrupt(at_epoch=2, at_batch=3)
    original_fit = keras.Model.fit

    def fit_with_kill(self, *a, **kw):
        kw["callbacks"] = list(kw.get("callbacks", [])) + [interrupt]
        return original_fit(self, *a, **kw)

    monkeypatch.setattr(keras.Model, "fit", fit_with_kill)
    with pytest.raises(KeyboardInterrupt):
        fit(build, loss, (x, y), (x, y), (0, 1, 2), cfg, tmp_path, "fp", seed=1, verbose=0)
    state = json.loads(sorted(tmp_path.glob("ckpt-*/state.json"))[-1].read_text())
    assert state["epoch"] == 2  # epochs 1 and 2 finished, the third was cut
    monkeypatch.setattr(keras.Model, "fit", original_fit)
    seen = []
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, **kw: seen.append(kw["initial_epoch"])
                        or original_fit(self, *a, **kw))
    _, state = fit(build, loss, (x, y), (x, y), (0, 1, 2), cfg, tmp_path, "fp", seed=1, verbose=0)
    assert seen == [2, 3]  # continued from the last finished epoch (one fit call per epoch), not from scratch
    assert state["epoch"] == 4 and len(state["history"]["val_macro_f1"]) == 4


def test_fit_restarts_when_fingerprint_changes(tmp_path):
    x, y = _toy(64)
    cfg = FitConfig(epochs=1, batch_size=32)
    build = lambda: models.build("lenet1d", 33, 5, 3, width=1)[0]  # noqa: E731
    fit(build, make_loss("ce"), (x, y), (x, y), (0, 1, 2), cfg, tmp_path, "a", verbose=0)
    _, state = fit(build, make_loss("ce"), (x, y), (x, y), (0, 1, 2), cfg, tmp_path, "b", verbose=0)
    assert state["fingerprint"] == "b" and state["epoch"] == 1


def test_residual_receptive_field_by_hand():
    # stem k7 s2 -> 7, jump 2; block k7 s1: 2 convs, 6*2 each -> 31; block k7 s2: 6*2 -> 43, jump 4, 6*4 -> 67
    assert receptive_field(models.resnet1d_spec((8, 8), kernel=7)) == 67
    assert receptive_field(models.resnet1d_spec()) == 283  # the defaults cover the 253-sample (700 ms) window
    assert receptive_field((models.Residual(4, 3, 2), models.Residual(4, 3))) == 1 + 2 + 2 * 2 + 2 * 2 * 2


def test_resnet1d_builds_trains_and_reports_like_the_others():
    from ecg import train_config

    kwargs = train_config.EcgTrain().model_kwargs("resnet1d")  # the dataclass defaults, augmentation on
    assert kwargs["augment"] and kwargs["filters"] == (24, 32, 48, 64)
    model, info = models.build("resnet1d", 253, 5, 5, **kwargs)
    assert info["name"] == "resnet1d" and info["params"] == model.count_params() > 0
    assert info["receptive_field_samples"] == 283 and len(info["layers"]) == 5
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 4  # one shortcut per block
    x, y = _toy(64)
    x = {"beat": np.repeat(np.pad(x["beat"], ((0, 0), (0, 220), (0, 0))), 2, axis=-1), "rr": x["rr"]}
    model.compile(keras.optimizers.Adam(1e-3), make_loss("ce"), jit_compile=False)
    before = [w.copy() for w in model.get_weights()]
    out = model.train_on_batch(x, keras.utils.to_categorical(y, 5))
    assert np.isfinite(out if np.isscalar(out) else out[0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    p = model.predict(x, verbose=0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_augmented_model_trains_under_mixed_float16():
    """BeatAugment draws its gain and noise in the inputs' dtype, so mixed_float16 training works (on the CPU
    here; the same code path as the GPU's)."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, _ = models.build("lenet1d", 33, 5, 3, width=1, augment={"gain": 0.1, "noise": 0.02, "rr_jitter": 0.03})
        assert model.get_layer("augment").compute_dtype == "float16"
        x, y = _toy(32)
        model.compile(keras.optimizers.Adam(1e-3), make_loss("ce"), jit_compile=False)
        before = [w.copy() for w in model.get_weights()]
        out = model.train_on_batch(x, keras.utils.to_categorical(y, 3))
        assert np.isfinite(out if np.isscalar(out) else out[0])
        assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
        half = [keras.ops.cast(x["beat"], "float16"), keras.ops.cast(x["rr"], "float16")]
        beat, rr = model.get_layer("augment")(half, training=True)
        assert keras.backend.standardize_dtype(beat.dtype) == "float16" == keras.backend.standardize_dtype(rr.dtype)
        assert model.predict(x, verbose=0).dtype == np.float32  # the softmax stays float32
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.mixed_precision.global_policy().name == previous
