"""Training-time augmentation for medical images, as keras preprocessing layers inside the model.

Layers are active only when the model is called with training=True (fit), so
prediction, evaluation and the saved model are unaffected.  They act on the raw
0..255 image before any resizing.  Defaults are mild on purpose: small shifts
and rotations, a little contrast; flips only where anatomy allows them, which
is a per-dataset choice (a chest X-ray flipped left-right is not a plausible
chest X-ray; a fundus photograph of one eye flipped looks like the other eye).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from pipeline.params import ParamsError

FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")


@dataclass(frozen=True)
class Augment:
    # flip: one mode for every dataset, or {dataset: mode}; unlisted datasets get "none"
    flip: Any = "none"
    translate: float = 0.05   # max shift, fraction of height/width
    rotate_deg: float = 10.0  # max rotation, degrees either way
    contrast: float = 0.1     # max contrast change, fraction

    def validate(self) -> None:
        if not isinstance(self.flip, (str, dict)):
            raise ParamsError(f"flip: a mode or a mapping dataset -> mode, got {self.flip!r}")
        modes = self.flip.values() if isinstance(self.flip, dict) else [self.flip]
        bad = [m for m in modes if m not in FLIPS]
        if bad:
            raise ParamsError(f"flip: unknown mode(s) {bad}; valid: {list(FLIPS)}")
        if not (0 <= self.translate < 0.5 and 0 <= self.rotate_deg <= 180 and 0 <= self.contrast < 1):
            raise ParamsError("need 0 <= translate < 0.5, 0 <= rotate_deg <= 180, 0 <= contrast < 1")

    def flip_for(self, dataset: str | None) -> str:
        return self.flip.get(dataset, "none") if isinstance(self.flip, dict) else self.flip


def build_augment(cfg: Augment, dataset: str | None = None, seed: int | None = None) -> list:
    """Random layers per ``cfg`` (flip mode looked up for ``dataset``), for build_classifier(augment=...)."""
    layers = []
    flip = cfg.flip_for(dataset)
    if flip != "none":
        layers.append(keras.layers.RandomFlip(flip, seed=seed, name="aug_flip"))
    if cfg.translate:
        layers.append(keras.layers.RandomTranslation(cfg.translate, cfg.translate, fill_mode="nearest",
                                                     seed=seed, name="aug_translate"))
    if cfg.rotate_deg:
        layers.append(keras.layers.RandomRotation(cfg.rotate_deg / 360.0, fill_mode="nearest",
                                                  seed=seed, name="aug_rotate"))
    if cfg.contrast:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed,
                                                  name="aug_contrast"))
    return layers
