"""ECG beat classifiers: a registry of builders, each taking the beat window and RR features.

Architectures are data (tuples of layer specs) so the receptive field is computed from the
same configuration that builds the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="ecg")
class BeatAugment(layers.Layer):
    """Training-only jitter of what differs between patients and recordings: per-beat gain,
    additive noise, and a small relative error on the RR features. Identity at inference."""

    def __init__(self, gain=0.1, noise=0.02, rr_jitter=0.03, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.gain, self.noise, self.rr_jitter = gain, noise, rr_jitter
        self.seed_gen = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        beat, rr = inputs
        if not training:
            return beat, rr
        n = ops.shape(beat)[0]
        g = keras.random.uniform((n, 1, 1), 1 - self.gain, 1 + self.gain, seed=self.seed_gen)
        beat = beat * g + self.noise * keras.random.normal(ops.shape(beat), seed=self.seed_gen)
        rr = rr * (1 + self.rr_jitter * keras.random.normal(ops.shape(rr), seed=self.seed_gen))
        return beat, rr

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "gain": self.gain, "noise": self.noise, "rr_jitter": self.rr_jitter}


@dataclass(frozen=True)
class Conv:
    filters: int
    kernel: int
    dilation: int = 1
    stride: int = 1


@dataclass(frozen=True)
class Pool:
    size: int


def receptive_field(spec) -> int:
    """Receptive field in input samples of the last layer in `spec` (convs and pools)."""
    rf, jump = 1, 1
    for layer in spec:
        if isinstance(layer, Conv):
            rf += (layer.kernel - 1) * layer.dilation * jump
            jump *= layer.stride
        else:
            rf += (layer.size - 1) * jump
            jump *= layer.size
    return rf


def lenet1d_spec(width: int = 1) -> tuple:
    """LeNet-5 in 1D: conv, pool, conv, pool (then dense layers in the head)."""
    return (Conv(6 * width, 5), Pool(2), Conv(16 * width, 5), Pool(2))


def dilated1d_spec(window: int, filters: int = 32, kernel: int = 3, stem_stride: int = 2) -> tuple:
    """A strided stem conv, then dilations 1, 2, 4, ... until the receptive field covers the window.

    The stem (kernel 7, stride 2 by default: 360 -> 180 Hz, ample for QRS detail) halves the cost
    of every later layer; there is no pooling before the head.
    """
    spec: list = [Conv(filters, 7, 1, stem_stride)]
    dilation = 1
    while receptive_field(spec) < window:
        spec.append(Conv(filters, kernel, dilation))
        dilation *= 2
    return tuple(spec)


def _inputs(window: int, n_rr: int, channels: int, augment: dict | None):
    """The two inputs, and the tensors the network reads (augmented while training)."""
    beat = keras.Input((window, channels), name="beat")
    rr = keras.Input((n_rr,), name="rr")
    if augment:
        return (beat, rr), BeatAugment(**augment, name="augment")([beat, rr])
    return (beat, rr), (beat, rr)


def _trunk(x, spec, prefix: str):
    for i, layer in enumerate(spec, 1):
        if isinstance(layer, Conv):
            x = layers.Conv1D(layer.filters, layer.kernel, strides=layer.stride, dilation_rate=layer.dilation,
                              padding="same", use_bias=False, name=f"{prefix}{i}_conv")(x)
            x = layers.BatchNormalization(name=f"{prefix}{i}_bn")(x)
            x = layers.Activation("relu", name=f"{prefix}{i}_relu")(x)
        else:
            x = layers.MaxPooling1D(layer.size, name=f"{prefix}{i}_pool")(x)
    return x


def _head(features, rr, n_classes: int, units, dropout: float):
    log_rr = ops.log(ops.maximum(rr, 1e-3))
    rr_feat = layers.Dense(16, activation="relu", name="rr_dense")(log_rr)
    features = layers.Dropout(dropout, name="features_drop")(features)
    x = layers.Concatenate(name="merge")([features, rr_feat, log_rr])
    for i, n in enumerate(units, 1):
        x = layers.Dense(n, activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(dropout, name=f"fc{i}_drop")(x)
    return layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)


def lenet1d(window: int, n_rr: int, n_classes: int, *, channels: int = 1, width: int = 2, dropout: float = 0.3,
            augment: dict | None = None):
    spec = lenet1d_spec(width)
    inputs, (beat, rr) = _inputs(window, n_rr, channels, augment)
    x = _trunk(beat, spec, "block")
    x = layers.Flatten(name="flatten")(x)
    out = _head(x, rr, n_classes, (120, 84), dropout)
    return keras.Model(list(inputs), out, name="lenet1d"), spec


def dilated1d(window: int, n_rr: int, n_classes: int, *, channels: int = 1, filters: int = 32,
              stem_stride: int = 2, dropout: float = 0.3, augment: dict | None = None):
    spec = dilated1d_spec(window, filters, stem_stride=stem_stride)
    inputs, (beat, rr) = _inputs(window, n_rr, channels, augment)
    x = _trunk(beat, spec, "dil")
    x = layers.Concatenate(name="pool")([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    out = _head(x, rr, n_classes, (64,), dropout)
    return keras.Model(list(inputs), out, name="dilated1d"), spec


MODELS = {"lenet1d": lenet1d, "dilated1d": dilated1d}


def build(name: str, window: int, n_rr: int, n_classes: int, **kwargs):
    """Return (model, info) where info has the parameter count and receptive field."""
    if name not in MODELS:
        raise ValueError(f"unknown ECG model '{name}'; valid: {sorted(MODELS)}")
    model, spec = MODELS[name](window, n_rr, n_classes, **kwargs)
    info = {"name": name, "params": int(model.count_params()), "receptive_field_samples": receptive_field(spec),
            "layers": [repr(layer) for layer in spec]}
    if name == "lenet1d":
        info["note"] = "the dense layers after the conv trunk see the whole window"
    return model, info
