"""Small custom layers written with keras.ops only (run on any Keras backend)."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vision")
class LocalResponseNorm(keras.layers.Layer):
    """Across-channel LRN of Krizhevsky et al. (2012), channels-last.

    b_c = a_c / (k + alpha * sum_{|j-c| <= n//2} a_j^2) ** beta, with the
    paper's k=2, n=5, alpha=1e-4, beta=0.75 (alpha multiplies the sum, as in
    the paper and in TensorFlow's local_response_normalization).
    """

    def __init__(self, depth: int = 5, k: float = 2.0, alpha: float = 1e-4,
                 beta: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        if depth < 1 or depth % 2 == 0:
            raise ValueError(f"LRN depth must be odd and >= 1, got {depth}")
        self.depth, self.k, self.alpha, self.beta = depth, k, alpha, beta

    def call(self, x):
        half = self.depth // 2
        channels = x.shape[-1]
        sq = ops.pad(ops.square(x), [[0, 0], [0, 0], [0, 0], [half, half]])
        total = sq[..., 0:channels]
        for i in range(1, self.depth):
            total = total + sq[..., i:i + channels]
        return x / ops.power(self.k + self.alpha * total, self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "k": self.k,
                "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package="vision")
class ReverseChannels(keras.layers.Layer):
    """RGB <-> BGR (reverse the last axis), for caffe-style VGG preprocessing."""

    def call(self, x):
        return ops.flip(x, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape
