"""Typed params for ECG training and evaluation (params.yaml section `ecg_train`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.params import ParamsError, load_section
from pipeline.training import FitConfig

LOSSES = ("ce", "weighted_ce", "focal")


@dataclass(frozen=True)
class LenetArgs:
    width: int = 2
    dropout: float = 0.3


@dataclass(frozen=True)
class DilatedArgs:
    filters: int = 16
    stem_stride: int = 2
    dropout: float = 0.3


@dataclass(frozen=True)
class AugmentArgs:
    gain: float = 0.1  # per-beat amplitude factor drawn from [1 - gain, 1 + gain]
    noise: float = 0.02  # std of additive Gaussian noise, in input units
    rr_jitter: float = 0.03  # relative std of the noise on RR features


@dataclass(frozen=True)
class EcgTrain:
    models: tuple[str, ...] = ("lenet1d", "dilated1d")
    channels: tuple[str, ...] = ("record_scaled", "record_deviation")
    losses: tuple[str, ...] = ("ce", "focal")
    seed: int = 42
    val_folds: str | tuple[int, ...] = "all"
    alpha: str | tuple[float, ...] = "sqrt_inverse"
    gamma: float = 2.0
    label_smoothing: float = 0.0
    fit: FitConfig = field(default_factory=FitConfig)
    lenet1d: LenetArgs = field(default_factory=LenetArgs)
    dilated1d: DilatedArgs = field(default_factory=DilatedArgs)
    augment: AugmentArgs | None = field(default_factory=AugmentArgs)
    mixed_precision: str = "auto"
    limit_beats: int | None = None  # subsample each split (smoke runs); null = all beats
    bootstrap: int = 1000
    ece_bins: int = 15

    def validate(self) -> None:
        bad = [x for x in self.losses if x not in LOSSES]
        if bad:
            raise ParamsError(f"losses: unknown {bad}; valid: {list(LOSSES)}")
        if self.gamma < 0 or not 0 <= self.label_smoothing < 1:
            raise ParamsError("gamma must be >= 0 and label_smoothing in [0, 1)")
        if self.mixed_precision not in ("auto", "on", "off"):
            raise ParamsError(f"mixed_precision: one of auto/on/off, got {self.mixed_precision!r}")
        if self.val_folds != "all" and (isinstance(self.val_folds, str) or not self.val_folds):
            raise ParamsError(f"val_folds: 'all' or a non-empty list of folds, got {self.val_folds!r}")

    def model_kwargs(self, name: str) -> dict:
        args = getattr(self, name, None)
        return {**(dict(vars(args)) if args is not None else {}), "channels": len(self.channels),
                "augment": dict(vars(self.augment)) if self.augment is not None else None}


def load(path="params.yaml") -> EcgTrain:
    return load_section("ecg_train", EcgTrain, path)
