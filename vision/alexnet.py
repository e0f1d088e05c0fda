"""AlexNet convolutional backbone (Krizhevsky, Sutskever & Hinton, 2012).

Published layout (single tower: the paper's two-GPU grouping of conv2/4/5 is
an engineering artefact and is not reproduced, so conv parameters are the
ungrouped 3,747,200):

    block1_conv 96 11x11 /4 (valid) -> block1_pool 3x3 /2 (overlapping)
    block2_conv 256 5x5             -> block2_pool 3x3 /2
    block3_conv 384 3x3, block4_conv 384 3x3, block5_conv 256 3x3 -> block5_pool 3x3 /2

The 4096-4096 dropout-0.5 head is built by models.build_classifier
(head_units=(4096, 4096), dropout=0.5).

norm: "batchnorm" (default): conv (no bias) -> BatchNormalization -> ReLU in
every block; LRN is replaced because BN trains faster and is a standard Keras
layer.  "lrn": the paper's conv -> ReLU -> local response norm in blocks 1-2
(vision.layers.LocalResponseNorm, keras.ops).  "none": conv -> ReLU.

stem: "imagenet" keeps conv1 11x11 stride 4 and valid 3x3/2 pools (needs
inputs >= 67 px).  "small" uses a 3x3 stride-1 conv1, drops block1_pool and
pads the two remaining pools ("same"), so 28-64 px inputs keep a 7-16 px map.
"auto" picks "imagenet" when min(H, W) >= AUTO_IMAGENET_MIN, else "small".
"""
from __future__ import annotations

import keras

from vision.layers import LocalResponseNorm

NORMS = ("batchnorm", "lrn", "none")
STEMS = ("auto", "imagenet", "small")
AUTO_IMAGENET_MIN = 128
# (filters, kernel) of blocks 2..5
_BLOCKS = ((256, 5), (384, 3), (384, 3), (256, 3))


def resolve_stem(stem: str, input_shape) -> str:
    if stem not in STEMS:
        raise ValueError(f"unknown stem '{stem}'; valid: {list(STEMS)}")
    h, w = int(input_shape[0]), int(input_shape[1])
    if stem == "auto":
        return "imagenet" if min(h, w) >= AUTO_IMAGENET_MIN else "small"
    if stem == "imagenet":
        side = min(h, w)
        size = (side - 11) // 4 + 1
        for _ in range(3):
            size = (size - 3) // 2 + 1
        if size < 1:
            raise ValueError(f"stem 'imagenet' reduces {h}x{w} input to nothing "
                             f"(needs >= 67 px); use stem 'small' or 'auto'")
    return stem


def build_alexnet(input_shape, *, stem: str = "auto", norm: str = "batchnorm",
                  name: str = "alexnet") -> keras.Model:
    """Return a keras.Model mapping images (already preprocessed) to block5_pool features."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm '{norm}'; valid: {list(NORMS)}")
    stem = resolve_stem(stem, input_shape)
    small = stem == "small"
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    first = (96, 3, 1, "same") if small else (96, 11, 4, "valid")
    x = _conv_block(inputs, 1, *first, norm=norm)
    if not small:
        x = _pool(x, 1, "valid")
    for i, (filters, kernel) in enumerate(_BLOCKS, start=2):
        x = _conv_block(x, i, filters, kernel, 1, "same", norm=norm)
        if i in (2, 5):
            x = _pool(x, i, "same" if small else "valid")
    return keras.Model(inputs, x, name=name)


def _conv_block(x, i: int, filters: int, kernel: int, stride: int, padding: str, *, norm: str):
    bn = norm == "batchnorm"
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=not bn,
                            name=f"block{i}_conv")(x)
    if bn:
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
    x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    if norm == "lrn" and i <= 2:
        x = LocalResponseNorm(name=f"block{i}_lrn")(x)
    return x


def _pool(x, i: int, padding: str):
    return keras.layers.MaxPooling2D(3, strides=2, padding=padding, name=f"block{i}_pool")(x)
