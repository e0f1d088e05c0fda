"""In-model input preprocessing for classifiers (keras layers only).

channels: "repeat" = a 1-channel (grayscale) input is repeated with a
Concatenate layer to the backbone's 3 channels; "native" = channel counts
must already match.  Normalisation modes (MODES; each backbone's is in
vision.models.BACKBONES):
"imagenet" = x/255 then ImageNet mean/std per RGB channel (AlexNet default);
"caffe" = RGB->BGR and subtract the ImageNet BGR mean on the 0..255 scale,
the convention of Keras's VGG16 ImageNet weights (VGG16 default);
"unit" = x/255 only.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from vision.layers import ReverseChannels


@dataclass(frozen=True)
class Normalisation:
    rescale: bool                 # x/255 first (layer "rescale")
    mean: np.ndarray | None       # per channel, in channel_order, on the scale after rescale
    std: np.ndarray | None        # None: subtract the mean only
    channel_order: str = "rgb"    # "bgr": reverse the channels first (layer "rgb_to_bgr")


MODES = {
    "imagenet": Normalisation(True, np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])),
    "caffe": Normalisation(False, np.array([103.939, 116.779, 123.68]), None, "bgr"),
    "unit": Normalisation(True, None, None),
}


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
    if mode not in MODES:
        raise ValueError(f"unknown preprocess '{mode}'; valid: {list(MODES)}")
    norm = MODES[mode]
    if norm.mean is not None and n_channels != 3:
        raise ValueError(f"preprocess '{mode}' needs 3 channels, got {n_channels}; use 'unit'")
    if norm.channel_order == "bgr":
        x = ReverseChannels(name="rgb_to_bgr")(x)
    if norm.rescale:
        x = keras.layers.Rescaling(1 / 255, name="rescale")(x)
    if norm.mean is None:
        return x
    if norm.std is None:
        return keras.layers.Rescaling(1.0, offset=(-norm.mean).tolist(), name="normalize")(x)
    return keras.layers.Rescaling((1 / norm.std).tolist(), offset=(-norm.mean / norm.std).tolist(),
                                  name="normalize")(x)
