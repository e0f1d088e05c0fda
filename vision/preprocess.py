"""In-model input preprocessing for classifiers (keras layers only).

channels: "repeat" = a 1-channel (grayscale) input is repeated with a
Concatenate layer to the backbone's 3 channels; "native" = channel counts
must already match.  Normalisation modes (PREPROCESS gives each backbone's):
"imagenet" = x/255 then ImageNet mean/std per RGB channel (AlexNet default);
"caffe" = RGB->BGR and subtract the ImageNet BGR mean on the 0..255 scale,
the convention of Keras's VGG16 ImageNet weights (VGG16 default);
"unit" = x/255 only.
"""
from __future__ import annotations

import keras
import numpy as np

from vision.layers import ReverseChannels

PREPROCESS = {"alexnet": "imagenet", "vgg16": "caffe"}
_MEAN, _STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68])


def match_channels(x, have: int, want: int, mode: str):
    if mode not in ("repeat", "native"):
        raise ValueError(f"unknown channels mode '{mode}'; valid: ['repeat', 'native']")
    if have == want:
        return x
    if mode == "repeat" and have == 1:
        return keras.layers.Concatenate(axis=-1, name="repeat_channels")([x] * want)
    raise ValueError(f"input has {have} channel(s) but the backbone expects {want} "
                     f"(channels='{mode}'; 'repeat' only expands 1 channel)")


def normalise(x, mode: str, n_channels: int):
    if mode == "unit":
        return keras.layers.Rescaling(1 / 255, name="rescale")(x)
    if n_channels != 3:
        raise ValueError(f"preprocess '{mode}' needs 3 channels, got {n_channels}; use 'unit'")
    if mode == "imagenet":
        x = keras.layers.Rescaling(1 / 255, name="rescale")(x)
        return keras.layers.Rescaling((1 / _STD).tolist(), offset=(-_MEAN / _STD).tolist(),
                                      name="normalize")(x)
    if mode == "caffe":
        x = ReverseChannels(name="rgb_to_bgr")(x)
        return keras.layers.Rescaling(1.0, offset=(-_CAFFE_BGR_MEAN).tolist(), name="normalize")(x)
    raise ValueError(f"unknown preprocess '{mode}'; valid: ['imagenet', 'caffe', 'unit']")
