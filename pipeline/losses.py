"""Class-imbalance aware Keras losses for one-hot targets and softmax outputs.

All losses expect probabilities (from_logits=False) and use only `keras` /
`keras.ops`, so they run on the TensorFlow, JAX and torch backends.

Class-weight schemes (`class_weights`), all returned as float64 numpy arrays:
  "none"          all ones
  "inverse"       1 / freq_k, rescaled so the plain mean over classes is 1
  "sqrt_inverse"  1 / sqrt(freq_k), rescaled so the plain mean over classes is 1
  [w_0, ...]      an explicit list, one non-negative float per class, used as is
Counts are clipped to at least 1, so a class absent from training gets a large
but finite weight.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import keras
import numpy as np
from keras import ops

from pipeline.params import ParamsError

LOSSES = ("ce", "weighted_ce", "focal")
SCHEMES = ("none", "inverse", "sqrt_inverse")


def class_weights(counts, scheme="sqrt_inverse") -> np.ndarray:
    """Per-class weights from training class counts (see module doc)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError(f"counts must be finite and non-negative, got {counts.tolist()}")
    if not isinstance(scheme, str):
        weights = np.asarray(scheme, dtype=np.float64)
        if weights.shape != counts.shape:
            raise ValueError(
                f"explicit class weights need {counts.size} values (one per class), got {weights.size}"
            )
        if np.any(weights < 0) or not np.all(np.isfinite(weights)):
            raise ValueError(f"explicit class weights must be finite and >= 0, got {weights.tolist()}")
        return weights
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown class-weight scheme {scheme!r}; valid: {', '.join(SCHEMES)} or a list of floats"
        )
    if scheme == "none":
        return np.ones_like(counts)
    freq = np.maximum(counts, 1.0) / np.maximum(counts, 1.0).sum()
    raw = 1.0 / freq if scheme == "inverse" else 1.0 / np.sqrt(freq)
    return raw / raw.mean()


@keras.saving.register_keras_serializable(package="pipeline")
class WeightedCategoricalCrossentropy(keras.losses.Loss):
    """sum_k w_k * y_k * -log(p_k), with optional label smoothing.

    For a one-hot target this is w_true * CE. With label smoothing the weight
    applies to each smoothed target entry. Probabilities are renormalised and
    clipped to [eps, 1 - eps] exactly as keras' CategoricalCrossentropy does.
    """

    def __init__(self, weights, label_smoothing=0.0, name="weighted_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weights = [float(w) for w in weights]
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.label_smoothing:
            k = ops.cast(ops.shape(y_true)[-1], y_pred.dtype)
            y_true = y_true * (1.0 - self.label_smoothing) + self.label_smoothing / k
        eps = keras.config.epsilon()
        p = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
        p = ops.clip(p, eps, 1.0 - eps)
        w = ops.cast(ops.convert_to_tensor(self.weights), y_pred.dtype)
        return -ops.sum(w * y_true * ops.log(p), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(weights=self.weights, label_smoothing=self.label_smoothing)
        return config


@dataclass(frozen=True)
class CeArgs:
    label_smoothing: float = 0.0

    def validate(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ParamsError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class WeightedCeArgs(CeArgs):
    alpha: str | tuple[float, ...] = "sqrt_inverse"  # a class_weights scheme or one weight per class

    def validate(self) -> None:
        super().validate()
        if isinstance(self.alpha, str) and self.alpha not in SCHEMES:
            raise ParamsError(f"alpha: one of {list(SCHEMES)} or a list of per-class weights, got {self.alpha!r}")
        if not isinstance(self.alpha, str) and any(a < 0 for a in self.alpha):
            raise ParamsError(f"alpha: weights must be >= 0, got {list(self.alpha)}")


@dataclass(frozen=True)
class FocalArgs(WeightedCeArgs):
    gamma: float = 2.0

    def validate(self) -> None:
        super().validate()
        if self.gamma < 0:
            raise ParamsError(f"gamma must be >= 0, got {self.gamma}")


@dataclass(frozen=True)
class LossParams:
    """The `loss` sub-section of a training section: one entry of knobs per loss name."""
    ce: CeArgs = field(default_factory=CeArgs)
    weighted_ce: WeightedCeArgs = field(default_factory=WeightedCeArgs)
    focal: FocalArgs = field(default_factory=FocalArgs)

    def of(self, name: str):
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
        return getattr(self, name)


def loss_from_params(name: str, params: LossParams, class_counts=None):
    """The Keras loss `name` built with its own knobs from params (see LossParams)."""
    kwargs = asdict(params.of(name))
    if isinstance(kwargs.get("alpha"), tuple):
        kwargs["alpha"] = list(kwargs["alpha"])
    return make_loss(name, class_counts=class_counts, **kwargs)


def make_loss(name, *, class_counts=None, alpha="sqrt_inverse", gamma=2.0, label_smoothing=0.0):
    """Build a Keras loss by name: "ce", "weighted_ce" or "focal".

    `alpha` is a `class_weights` scheme or explicit list: the per-class weights
    of "weighted_ce" and the per-class alpha of "focal" (ignored by "ce").
    A named scheme other than "none" needs `class_counts`.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    if name == "ce":
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if class_counts is None:
        if isinstance(alpha, str):
            raise ValueError(f"loss {name!r} with alpha={alpha!r} needs class_counts")
        class_counts = np.ones(len(alpha))
    weights = class_weights(class_counts, alpha).tolist()
    if name == "weighted_ce":
        return WeightedCategoricalCrossentropy(weights, label_smoothing=label_smoothing)
    return keras.losses.CategoricalFocalCrossentropy(
        alpha=weights, gamma=gamma, label_smoothing=label_smoothing
    )
