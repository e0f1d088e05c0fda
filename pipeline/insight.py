"""Model surgery for the insight studies (issue 14), on any built Keras model, without touching the builders.

`with_activation(model, "leaky_relu")` rebuilds a model with every plain ReLU (Activation('relu'), ReLU(),
and Dense/Conv layers built with activation='relu') replaced by another activation. The builders keep
their defaults, so the trained stages do not change; an activation param in the builders themselves waits
for the next full retrain (editing a builder makes every trained stage stale).

Domain-free: keras only.
"""
from __future__ import annotations

import keras

from pipeline.analysis import is_relu

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "elu", "silu")
_LEAKY: dict = {}


def leaky_relu_fn(negative_slope: float = 0.01):
    """A named, registered leaky ReLU of a fixed slope, for Dense/Conv layers' `activation` (a lambda would not
    survive model.save / load_model). A process that loads such a model calls this with the same slope first
    (0.01 is registered on import)."""
    slope = float(negative_slope)
    if slope not in _LEAKY:
        name = f"leaky_relu_{slope:g}".replace(".", "p").replace("-", "m")

        def fn(x):
            return keras.activations.leaky_relu(x, negative_slope=slope)

        fn.__name__ = name
        _LEAKY[slope] = keras.saving.register_keras_serializable(package="pipeline_insight", name=name)(fn)
    return _LEAKY[slope]


leaky_relu_fn(0.01)


def _replacement(layer, activation: str, negative_slope: float):
    """A fresh layer that does what `layer` does with its ReLU replaced, or None when it has none."""
    if not is_relu(layer):
        return None
    if isinstance(layer, (keras.layers.ReLU, keras.layers.Activation)):
        if activation == "leaky_relu":
            return keras.layers.LeakyReLU(negative_slope=negative_slope, name=layer.name)
        return keras.layers.Activation(activation, name=layer.name)
    cfg = layer.get_config()
    cfg["activation"] = leaky_relu_fn(negative_slope) if activation == "leaky_relu" else activation
    return layer.__class__.from_config(cfg)


def with_activation(model: keras.Model, activation: str = "leaky_relu", negative_slope: float = 0.01
                    ) -> keras.Model:
    """A copy of `model` (fresh weights, same architecture and layer names) with every plain ReLU replaced.

    Nested Functional sub-models are rebuilt too. Raises ValueError for an unknown activation, or when the
    model has no ReLU to replace (the study would compare a model with itself)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    replaced = []

    def clone(layer):
        if isinstance(layer, keras.Model):
            return with_activation(layer, activation, negative_slope)
        new = _replacement(layer, activation, negative_slope)
        if new is None:
            return layer.__class__.from_config(layer.get_config())
        replaced.append(layer.name)
        return new

    out = keras.models.clone_model(model, clone_function=clone)
    if not replaced and not any(isinstance(layer, keras.Model) for layer in model.layers):
        raise ValueError(f"model '{model.name}' has no ReLU to replace")
    return out
