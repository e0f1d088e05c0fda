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
        # drawn in the inputs' dtypes (float16 under mixed_float16; float32 otherwise, as before)
        bt, rt = keras.backend.standardize_dtype(beat.dtype), keras.backend.standardize_dtype(rr.dtype)
        g = keras.random.uniform((n, 1, 1), 1 - self.gain, 1 + self.gain, dtype=bt, seed=self.seed_gen)
        beat = beat * g + self.noise * keras.random.normal(ops.shape(beat), dtype=bt, seed=self.seed_gen)
        rr = rr * (1 + self.rr_jitter * keras.random.normal(ops.shape(rr), dtype=rt, seed=self.seed_gen))
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


@dataclass(frozen=True)
class Residual:
    """A basic residual block: conv(kernel, stride) -> conv(kernel) plus a shortcut (1x1 conv when the
    shape changes). Its receptive field is that of the two convs (the shortcut's is smaller)."""
    filters: int
    kernel: int
    stride: int = 1


def receptive_field(spec) -> int:
    """Receptive field in input samples of the last layer in `spec` (convs, residual blocks and pools)."""
    rf, jump = 1, 1
    for layer in spec:
        if isinstance(layer, Residual):
            rf += (layer.kernel - 1) * jump
            jump *= layer.stride
            rf += (layer.kernel - 1) * jump
        elif isinstance(layer, Conv):
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


def resnet1d_spec(filters=(24, 32, 48, 64), kernel: int = 7, stem_stride: int = 2) -> tuple:
    """A strided stem conv (kernel 7), then one basic residual block per stage, stride 2 from the second stage
    (the defaults: receptive field 283 samples, 786 ms at 360 Hz, covering the 253-sample window)."""
    return (Conv(filters[0], 7, 1, stem_stride),
            *(Residual(f, kernel, 1 if i == 0 else 2) for i, f in enumerate(filters)))


def _inputs(window: int, n_rr: int, channels: int, augment: dict | None):
    """The two inputs, and the tensors the network reads (augmented while training)."""
    beat = keras.Input((window, channels), name="beat")
    rr = keras.Input((n_rr,), name="rr")
    if augment:
        return (beat, rr), BeatAugment(**augment, name="augment")([beat, rr])
    return (beat, rr), (beat, rr)


def _trunk(x, spec, prefix: str):
    for i, layer in enumerate(spec, 1):
        if isinstance(layer, Residual):
            x = _residual(x, layer, f"{prefix}{i}")
        elif isinstance(layer, Conv):
            x = layers.Conv1D(layer.filters, layer.kernel, strides=layer.stride, dilation_rate=layer.dilation,
                              padding="same", use_bias=False, name=f"{prefix}{i}_conv")(x)
            x = layers.BatchNormalization(name=f"{prefix}{i}_bn")(x)
            x = layers.Activation("relu", name=f"{prefix}{i}_relu")(x)
        else:
            x = layers.MaxPooling1D(layer.size, name=f"{prefix}{i}_pool")(x)
    return x


def _residual(x, block: Residual, name: str):
    y = layers.Conv1D(block.filters, block.kernel, strides=block.stride, padding="same", use_bias=False,
                      name=f"{name}_conv1")(x)
    y = layers.Activation("relu", name=f"{name}_relu1")(layers.BatchNormalization(name=f"{name}_bn1")(y))
    y = layers.Conv1D(block.filters, block.kernel, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if block.stride != 1 or x.shape[-1] != block.filters:
        x = layers.Conv1D(block.filters, 1, strides=block.stride, use_bias=False, name=f"{name}_proj")(x)
        x = layers.BatchNormalization(name=f"{name}_proj_bn")(x)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, y]))


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


def resnet1d(window: int, n_rr: int, n_classes: int, *, channels: int = 1, filters=(24, 32, 48, 64),
             kernel: int = 7, stem_stride: int = 2, dropout: float = 0.3, augment: dict | None = None):
    """Small residual 1D CNN (benchmarks/ecg_search.py's, registered): strided stem, one basic block per
    stage, global average + max pooling, then the project's head (log-RR dense + fc 64)."""
    spec = resnet1d_spec(tuple(filters), kernel, stem_stride)
    inputs, (beat, rr) = _inputs(window, n_rr, channels, augment)
    x = _trunk(beat, spec, "res")
    x = layers.Concatenate(name="pool")([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    out = _head(x, rr, n_classes, (64,), dropout)
    return keras.Model(list(inputs), out, name="resnet1d"), spec


MODELS = {"lenet1d": lenet1d, "dilated1d": dilated1d, "resnet1d": resnet1d}


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
