"""ECG beat classifiers: a registry of builders, each taking the beat window and RR features.

Architectures are data (tuples of layer specs) so the receptive field is computed from the
same configuration that builds the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="ecg")
class CenterBeat(layers.Layer):
    """Remove each window's mean (residual baseline) so amplitude offsets between patients vanish."""

    def call(self, x):
        return x - ops.mean(x, axis=1, keepdims=True)


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


def dilated1d_spec(window: int, filters: int = 32, kernel: int = 3) -> tuple:
    """Dilations 1, 2, 4, ... until the receptive field covers the whole window."""
    spec: list = []
    dilation = 1
    while receptive_field(spec) < window:
        spec.append(Conv(filters, kernel, dilation))
        dilation *= 2
    return tuple(spec)


def _inputs(window: int, n_rr: int):
    beat = keras.Input((window, 1), name="beat")
    rr = keras.Input((n_rr,), name="rr")
    return beat, rr


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
    rr_feat = layers.Dense(16, activation="relu", name="rr_dense")(ops.log(ops.maximum(rr, 1e-3)))
    x = layers.Concatenate(name="merge")([features, rr_feat])
    for i, n in enumerate(units, 1):
        x = layers.Dense(n, activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(dropout, name=f"fc{i}_drop")(x)
    return layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)


def lenet1d(window: int, n_rr: int, n_classes: int, *, width: int = 2, dropout: float = 0.3):
    spec = lenet1d_spec(width)
    beat, rr = _inputs(window, n_rr)
    x = _trunk(CenterBeat(name="center")(beat), spec, "block")
    x = layers.Flatten(name="flatten")(x)
    out = _head(x, rr, n_classes, (120, 84), dropout)
    return keras.Model([beat, rr], out, name="lenet1d"), spec


def dilated1d(window: int, n_rr: int, n_classes: int, *, filters: int = 32, dropout: float = 0.3):
    spec = dilated1d_spec(window, filters)
    beat, rr = _inputs(window, n_rr)
    x = _trunk(CenterBeat(name="center")(beat), spec, "dil")
    x = layers.Concatenate(name="pool")([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    out = _head(x, rr, n_classes, (64,), dropout)
    return keras.Model([beat, rr], out, name="dilated1d"), spec


MODELS = {"lenet1d": lenet1d, "dilated1d": dilated1d}


def build(name: str, window: int, n_rr: int, n_classes: int, **kwargs):
    """Return (model, info) where info has the parameter count and receptive field."""
    if name not in MODELS:
        raise ValueError(f"unknown ECG model '{name}'; valid: {sorted(MODELS)}")
    model, spec = MODELS[name](window, n_rr, n_classes, **kwargs)
    return model, {"name": name, "params": int(model.count_params()), "receptive_field_samples": receptive_field(spec)}
