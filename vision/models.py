"""Backbone registry, classifier head and trainability regimes (keras + keras.ops only).

BACKBONES is the one table of backbones: name -> BackboneSpec (builder, native/min
input size, preprocessing mode with its mean/std/channel order, the block names
set_trainable's unfreeze_from accepts, the builder args and their defaults, and
where ImageNet weights come from if they exist).  Iterating it yields the names.

A classifier takes raw images (pixel values 0..255, any numeric dtype) of the
data's shape and does all preprocessing inside the model (vision.preprocess:
resize, channels "repeat"/"native", per-model normalisation), so the pretrain,
train and evaluate stages cannot disagree about it; then backbone -> global
average pooling -> [Dense(relu) -> Dropout] per head_units -> Dense softmax
in float32 (safe under mixed precision).  Optional ``augment`` layers
(vision.augment: random flips/shifts/rotations/contrast, active only in
training) sits right after the input.  ``build_head`` builds the same head
on pooled features (cached-feature training); ``copy_head`` moves its
weights into a classifier.

After set_trainable, compile the model (again) for the change to take effect.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import keras
import numpy as np

from vision import squeezenet
from vision.alexnet import build_alexnet
from vision.preprocess import MODES, match_channels, normalise

REGIMES = ("frozen", "finetune")


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a backbone's ImageNet weights come from (vision.checkpoint.imagenet_weights)."""
    url: str
    md5: str   # the hash Keras's own loader checks (keras.utils.get_file file_hash)
    env: str   # env var naming a local copy (overrides everything, nothing is downloaded)


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it and what it expects (one row of BACKBONES)."""
    name: str
    build: Callable[..., keras.Model]  # (input_shape, *, weights: Path|None, **arch) -> backbone
    native_size: int                   # input side of the published architecture
    min_size: int                      # smallest input side the builder accepts with default `arch`
    preprocess: str                    # normalisation mode, vision.preprocess.MODES
    blocks: tuple[str, ...]            # valid set_trainable(..., unfreeze_from=...) values
    arch: Mapping = field(default_factory=dict)  # builder kwargs (params section <name>) and defaults
    imagenet: PretrainedWeights | None = None    # ImageNet weights exist (pretrain source "imagenet")

    @property
    def mean(self):
        return MODES[self.preprocess].mean

    @property
    def std(self):
        return MODES[self.preprocess].std

    @property
    def channel_order(self) -> str:
        return MODES[self.preprocess].channel_order


class Registry(tuple):
    """The backbone table: iterates, ``in`` and json-dumps as the tuple of names; ``BACKBONES[name]``
    (exact name) gives the BackboneSpec, an unknown name raises ValueError listing the valid ones.
    A tuple so that it is a valid dataclass default (vision.train_config) and asdict/json see names."""

    def __new__(cls, specs=()):
        specs = list(specs)
        if not all(isinstance(s, BackboneSpec) for s in specs):  # dataclasses.asdict rebuilds from names
            return tuple(specs)
        self = super().__new__(cls, (s.name for s in specs))
        self._specs = MappingProxyType({s.name: s for s in specs})
        return self

    def __getitem__(self, key):
        if not isinstance(key, str):
            return super().__getitem__(key)
        try:
            return self._specs[key]
        except KeyError:
            raise ValueError(f"unknown backbone '{key}'; valid names: {list(self)}") from None

    def get(self, name: str, default=None):
        return self._specs.get(name, default)

    def items(self) -> Iterator[tuple[str, BackboneSpec]]:
        return iter(self._specs.items())

    def specs(self) -> tuple[BackboneSpec, ...]:
        return tuple(self._specs.values())

    def __reduce__(self):  # pickle/deepcopy by reference to the module's one table
        return "BACKBONES"


def _build_alexnet(input_shape, *, weights=None, stem="auto", norm="batchnorm"):
    model = build_alexnet(input_shape, stem=stem, norm=norm)
    if weights is not None:
        model.load_weights(str(weights))
    return model


def _build_vgg16(input_shape, *, weights=None, stem="auto", norm="batchnorm"):
    del norm  # Keras's unmodified VGG16 has no normalisation layers
    if stem not in ("auto", "imagenet"):
        raise ValueError(f"vgg16 has a fixed stem; stem must be 'auto' or 'imagenet', got '{stem}'")
    return keras.applications.VGG16(include_top=False, input_shape=input_shape,
                                    weights=None if weights is None else str(weights))


def _build_squeezenet(input_shape, *, weights=None, stem="auto", norm="batchnorm"):
    del norm  # SqueezeNet v1.1 has no normalisation layers
    if stem not in ("auto", "imagenet"):
        raise ValueError(f"squeezenet has a fixed stem; stem must be 'auto' or 'imagenet', got '{stem}'")
    return squeezenet.build_squeezenet(input_shape, weights=weights)


_BLOCKS5 = tuple(f"block{i}" for i in range(1, 6))

BACKBONES = Registry([
    BackboneSpec("alexnet", _build_alexnet, native_size=227, min_size=1, preprocess="imagenet",
                 blocks=_BLOCKS5, arch=MappingProxyType({"stem": "auto", "norm": "batchnorm"})),
    BackboneSpec("vgg16", _build_vgg16, native_size=224, min_size=32, preprocess="caffe", blocks=_BLOCKS5,
                 imagenet=PretrainedWeights(
                     url="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                         "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     md5="6d6bbae143d832006294945121d1f1fc", env="VGG16_WEIGHTS")),
    BackboneSpec("squeezenet", _build_squeezenet, native_size=squeezenet.NATIVE_SIZE, min_size=squeezenet.MIN_SIZE,
                 preprocess=squeezenet.PREPROCESS, blocks=squeezenet.BLOCKS,
                 imagenet=PretrainedWeights(url=squeezenet.WEIGHTS_URL, md5=squeezenet.WEIGHTS_MD5,
                                            env=squeezenet.WEIGHTS_ENV)),
])


def build_backbone(name: str, input_shape, *, stem: str = "auto", norm: str = "batchnorm",
                   weights: str | Path | None = None) -> keras.Model:
    """Return the convolutional backbone ``name`` (features, no head).

    ``stem``/``norm`` configure AlexNet (see vision.alexnet); VGG16 (Keras's
    unmodified architecture) and SqueezeNet v1.1 (vision.squeezenet) have no
    normalisation layers, so ``norm`` is unused, and accept only stem "auto"/"imagenet".  ``weights``: None (random init)
    or the path of a weights file; nothing is ever downloaded.
    """
    spec = BACKBONES[name]
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: backbone weights file not found "
                                f"(only local files are accepted, nothing is downloaded)")
    input_shape = tuple(int(d) for d in input_shape)
    return spec.build(input_shape, weights=weights, stem=stem, norm=norm)


def build_classifier(backbone: keras.Model, n_classes: int, *, input_shape=None,
                     dropout: float = 0.5, head_units: int | Sequence[int] = (256,),
                     channels: str = "repeat", preprocess: str | None = None,
                     augment: Sequence[keras.layers.Layer] = (),
                     name: str | None = None) -> keras.Model:
    """Wrap ``backbone`` into a classifier for raw 0..255 images of ``input_shape``."""
    target = tuple(backbone.input_shape[1:])
    input_shape = tuple(int(d) for d in (input_shape or target))
    spec = BACKBONES.get(backbone.name)
    preprocess = preprocess or (spec.preprocess if spec else "unit")
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for layer in augment:
        x = layer(x)
    if input_shape[:2] != target[:2]:
        x = keras.layers.Resizing(target[0], target[1], name="resize")(x)
    x = match_channels(x, input_shape[-1], target[-1], channels)
    x = normalise(x, preprocess, target[-1])
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = _head(x, n_classes, head_units, dropout)
    return keras.Model(inputs, outputs, name=name or f"{backbone.name}_classifier")


def build_head(n_features: int, n_classes: int, *, dropout: float = 0.5,
               head_units: int | Sequence[int] = (256,)) -> keras.Model:
    """The classifier's head alone, on pooled backbone features (``head_pool`` output)."""
    inputs = keras.Input(shape=(int(n_features),), name="features")
    return keras.Model(inputs, _head(inputs, n_classes, head_units, dropout), name="head")


def copy_head(head: keras.Model, classifier: keras.Model) -> None:
    """Copy the weights of ``build_head``'s layers into the same-named classifier layers."""
    for layer in head.layers:
        if layer.weights:
            classifier.get_layer(layer.name).set_weights(layer.get_weights())


def _head(x, n_classes: int, head_units, dropout: float):
    units = (head_units,) if isinstance(head_units, int) else tuple(head_units)
    for i, u in enumerate(units, start=1):
        x = keras.layers.Dense(u, activation="relu", name=f"head_dense{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"head_dropout{i}")(x)
    if not units:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(n_classes, activation="softmax", dtype="float32",
                              name="predictions")(x)


def _block_index(layer_name: str) -> int | None:
    m = re.match(r"block(\d+)_", layer_name)
    return int(m.group(1)) if m else None


def _parse_block(value) -> int | None:
    m = re.fullmatch(r"(?:block)?(\d+)", str(value))
    return int(m.group(1)) if m else None


def find_backbone(model: keras.Model) -> keras.Model:
    """The nested backbone model of a classifier (or ``model`` itself if it is one)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) == 1:
        return nested[0]
    if not nested and any(_block_index(layer.name) for layer in model.layers):
        return model
    raise ValueError(f"model '{model.name}' has {len(nested)} nested models; expected one backbone")


def set_trainable(model: keras.Model, regime: str, unfreeze_from: str | int | None = None) -> dict:
    """Set trainability and return weight/parameter counts.

    "frozen": backbone not trainable, head trainable.  "finetune": backbone
    layers of block ``unfreeze_from`` (e.g. "block4") and later trainable,
    earlier ones frozen (None = all blocks); BatchNormalization layers stay
    frozen (inference mode).
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime '{regime}'; valid: {list(REGIMES)}")
    backbone = find_backbone(model)
    _set(model, True)
    if regime == "frozen":
        _set(backbone, False)
    elif regime == "finetune":
        blocks = sorted({b for layer in backbone.layers if (b := _block_index(layer.name))})
        start = blocks[0] if unfreeze_from is None else _parse_block(unfreeze_from)
        if start not in blocks:
            raise ValueError(f"unfreeze_from={unfreeze_from!r} is not a block of "
                             f"'{backbone.name}'; valid: {[f'block{b}' for b in blocks]}")
        for layer in backbone.layers:
            b = _block_index(layer.name)
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            _set(layer, b is not None and b >= start and not is_bn)
    return weight_counts(model)


def _set(layer, value: bool) -> None:
    # Call the property setter directly, on every nested layer: on the
    # TensorFlow backend `layer.trainable = True` is skipped when the layer is
    # already True (KerasAutoTrackable.__setattr__ short-circuits `x.a = x.a`),
    # so it would not reach sublayers that were frozen individually before.
    type(layer).trainable.fset(layer, bool(value))
    for sub in getattr(layer, "layers", ()):
        _set(sub, value)


def weight_counts(model: keras.Model) -> dict:
    count = lambda ws: int(sum(np.prod(w.shape) for w in ws))  # noqa: E731
    return {"trainable_weights": len(model.trainable_weights),
            "non_trainable_weights": len(model.non_trainable_weights),
            "trainable_params": count(model.trainable_weights),
            "non_trainable_params": count(model.non_trainable_weights)}
