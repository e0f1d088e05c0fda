"""Typed params of the vision training side: sections `vision_pretrain` and `vision_train`.

The (dataset, model, regime, loss) runs come from `grid.vision`; a run reads the shared keys,
its regime's keys, its model's `unfreeze_from` and its loss's section (`run_config`).

Backbone sources (`vision_pretrain.<model>.weights`):
  "source:<dataset>"  pretrain the backbone from scratch on a source set that
                      `vision.ingest --source-set <dataset>` prepared (only cifar10 here)
  "imagenet"          backbones with published ImageNet weights (vgg16, squeezenet): downloaded
                      once into the Keras cache (~/.keras/models, md5-checked), or the local
                      file named by env VGG16_WEIGHTS / SQUEEZENET_WEIGHTS or
                      `vision_pretrain.<model>.weights_file`
A backbone section may set its own `image_size` (squeezenet: ImageNet features need a
larger input than the CIFAR-sized 32 px the others use); null = the shared one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipeline.losses import LossParams
from pipeline.params import ParamsError, load_section
from pipeline.training import FitConfig
from vision.alexnet import NORMS, STEMS
from vision.augment import Augment
from vision.models import BACKBONES, REGIMES

SOURCES = ("cifar10",)  # source sets vision.ingest can prepare
POLICIES = ("auto", "on", "off")


@dataclass(frozen=True)
class BackbonePretrain:
    """vision_pretrain.<model>: where the backbone's starting weights come from, and its own knobs."""
    weights: str = "source:cifar10"     # source:<dataset> (pretrained here) or imagenet
    fit: FitConfig = field(default_factory=FitConfig)


@dataclass(frozen=True)
class AlexnetPretrain(BackbonePretrain):
    stem: str = "auto"                  # auto = the small stem below 128 px
    norm: str = "batchnorm"

    def validate(self) -> None:
        if self.stem not in STEMS or self.norm not in NORMS:
            raise ParamsError(f"stem one of {list(STEMS)}, norm one of {list(NORMS)}")


@dataclass(frozen=True)
class Vgg16Pretrain(BackbonePretrain):
    weights_file: str | None = None     # local notop .h5 for "imagenet"; env VGG16_WEIGHTS overrides


@dataclass(frozen=True)
class SqueezenetPretrain(BackbonePretrain):
    weights: str = "imagenet"
    weights_file: str | None = None     # local notop .h5 for "imagenet"; env SQUEEZENET_WEIGHTS overrides
    image_size: int | None = None       # this backbone's input side; null = vision_pretrain.image_size


@dataclass(frozen=True)
class VisionPretrain:
    seed: int = 0
    image_size: int = 32              # backbone input side; transfer stages resize their images to it
    head_units: tuple[int, ...] = (256,)
    dropout: float = 0.3
    augment: Augment = field(default_factory=lambda: Augment(flip="horizontal", translate=0.1,
                                                            rotate_deg=0.0, contrast=0.0))
    mixed_precision: str = "auto"
    alexnet: AlexnetPretrain = field(default_factory=AlexnetPretrain)
    vgg16: Vgg16Pretrain = field(default_factory=Vgg16Pretrain)
    squeezenet: SqueezenetPretrain = field(default_factory=SqueezenetPretrain)

    def validate(self) -> None:
        for model in BACKBONES:
            own = getattr(self.backbone(model), "image_size", None)
            if own is not None and own < BACKBONES[model].min_size:  # the shared side: checked by pretrain
                raise ParamsError(f"{model}.image_size: {own} px is below {model}'s smallest input side "
                                  f"({BACKBONES[model].min_size} px)")
            source = self.backbone(model).weights
            if source == "imagenet":
                if BACKBONES[model].imagenet is None:
                    raise ParamsError(f"{model}.weights: no ImageNet weights exist for {model}; "
                                      f"use 'source:<dataset>' ({list(SOURCES)})")
            elif source_set(source) not in SOURCES:
                raise ParamsError(f"{model}.weights: {source!r} is not 'imagenet' or "
                                  f"'source:<dataset>' with dataset in {list(SOURCES)}")
        if self.image_size < 8:
            raise ParamsError(f"image_size must be >= 8, got {self.image_size}")
        if self.mixed_precision not in POLICIES:
            raise ParamsError(f"mixed_precision: one of {list(POLICIES)}, got {self.mixed_precision!r}")
        if not 0 <= self.dropout < 1:
            raise ParamsError(f"dropout must be in [0, 1), got {self.dropout}")

    def backbone(self, model: str) -> BackbonePretrain:
        if model not in BACKBONES:
            raise ValueError(f"unknown backbone {model!r}; valid: {list(BACKBONES)}")
        return getattr(self, model)

    def input_side(self, model: str) -> int:
        """The backbone's input side: its own image_size if its section sets one, else the shared one.
        ParamsError naming the key when that side is below the backbone's smallest input."""
        own = getattr(self.backbone(model), "image_size", None)
        side = own or self.image_size
        if side < BACKBONES[model].min_size:
            key = f"vision_pretrain.{model}.image_size" if own else "vision_pretrain.image_size"
            raise ParamsError(f"{key}: {side} px is below {model}'s smallest input side "
                              f"({BACKBONES[model].min_size} px)")
        return side

    def run_config(self, model: str) -> dict:
        """Exactly the knobs the pretrain stage of `model` reads: provenance and resume fingerprint."""
        return {"seed": self.seed, "image_size": self.image_size, "head_units": list(self.head_units),
                "dropout": self.dropout, "augment": asdict(self.augment), "mixed_precision": self.mixed_precision,
                "model": model, model: asdict(self.backbone(model))}


def source_set(source: str) -> str | None:
    """'source:cifar10' -> 'cifar10'; anything else -> None."""
    return source[len("source:"):] if source.startswith("source:") else None


@dataclass(frozen=True)
class UnfreezeFrom:
    alexnet: str | None = "block4"  # null = every block
    vgg16: str | None = "block5"
    squeezenet: str | None = None   # every fire module (no BatchNorm to keep frozen)


@dataclass(frozen=True)
class Finetune:
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=3, batch_size=32, learning_rate=1e-4,
                                                            patience=2))
    augment: Augment = field(default_factory=Augment)


@dataclass(frozen=True)
class Frozen:
    """The frozen regime has no knobs beyond head_fit; the section exists so runs depend on their regime."""


@dataclass(frozen=True)
class VisionTrain:
    seed: int = 42
    head_units: tuple[int, ...] = (256,)
    dropout: float = 0.5
    head_fit: FitConfig = field(default_factory=FitConfig)  # frozen regime and finetune warm-up
    frozen: Frozen = field(default_factory=Frozen)
    finetune: Finetune = field(default_factory=Finetune)
    unfreeze_from: UnfreezeFrom = field(default_factory=UnfreezeFrom)
    mixed_precision: str = "auto"
    limit: int | None = None  # keep the first `limit` rows of every split (smoke runs only)
    loss: LossParams = field(default_factory=LossParams)

    def validate(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ParamsError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.mixed_precision not in POLICIES:
            raise ParamsError(f"mixed_precision: one of {list(POLICIES)}, got {self.mixed_precision!r}")
        if self.limit is not None and self.limit < 1:
            raise ParamsError(f"limit must be null or >= 1, got {self.limit}")

    def head_config(self, loss: str) -> dict:
        """The knobs of the head warm-up (shared by the frozen and finetune runs of one dataset/model/loss)."""
        return {"seed": self.seed, "head_units": list(self.head_units), "dropout": self.dropout,
                "head_fit": asdict(self.head_fit), "mixed_precision": self.mixed_precision, "limit": self.limit,
                "loss": loss, "loss_args": asdict(self.loss.of(loss))}

    def run_config(self, model: str, regime: str, loss: str) -> dict:
        """Exactly the knobs one (model, regime, loss) run reads: provenance and resume fingerprint."""
        out = {**self.head_config(loss), "model": model, "regime": regime}
        if regime == "finetune":
            out.update(finetune=asdict(self.finetune), unfreeze_from=getattr(self.unfreeze_from, model))
        return out


def load_pretrain(path="params.yaml") -> VisionPretrain:
    return load_section("vision_pretrain", VisionPretrain, path)


def load_train(path="params.yaml") -> VisionTrain:
    return load_section("vision_train", VisionTrain, path)
