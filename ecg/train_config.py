"""Typed params for ECG training (params.yaml section `ecg_train`).

The (model, loss) runs come from `grid.ecg`; a run reads the shared keys, its model's section
and its loss's section only (`run_config`), and dvc.yaml lists exactly those keys.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass

from pipeline.losses import LossParams
from pipeline.params import ParamsError, load_section
from pipeline.training import FitConfig

SHARED_KEYS = ("seed", "channels", "val_folds", "fit", "augment", "mixed_precision", "limit_beats", "sampling",
               "schedule")
SCHEDULES = ("constant", "cosine")


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
class ResnetArgs:
    filters: tuple[int, ...] = (24, 32, 48, 64)  # one basic block per stage; stride 2 from the second stage
    kernel: int = 7
    stem_stride: int = 2
    dropout: float = 0.3

    def validate(self) -> None:
        if not self.filters or min(self.filters) < 1:
            raise ParamsError(f"filters: a non-empty list of positive integers, got {list(self.filters)}")
        if self.kernel < 1 or self.stem_stride < 1:
            raise ParamsError(f"kernel and stem_stride must be >= 1, got {self.kernel}, {self.stem_stride}")


@dataclass(frozen=True)
class SamplingArgs:
    """Class-balanced epochs: every beat of the other classes plus a fresh seeded `keep` fraction of the
    `majority` class's beats each epoch (pipeline.sampling.MajorityUndersampler). keep null = every beat."""
    majority: str = "N"
    keep: float | None = None

    def validate(self) -> None:
        if self.keep is not None and not 0 < self.keep <= 1:
            raise ParamsError(f"keep: null or a fraction in (0, 1], got {self.keep}")


@dataclass(frozen=True)
class ScheduleArgs:
    """Learning rate over training: constant (fit.learning_rate x peak_factor), or cosine decay from
    fit.learning_rate x peak_factor towards 1% of it over fit.epochs (set per epoch;
    pipeline.sampling.CosineSchedule)."""
    kind: str = "constant"
    peak_factor: float = 1.0

    def validate(self) -> None:
        if self.kind not in SCHEDULES:
            raise ParamsError(f"kind: one of {list(SCHEDULES)}, got {self.kind!r}")
        if not self.peak_factor > 0:
            raise ParamsError(f"peak_factor: must be positive, got {self.peak_factor}")


@dataclass(frozen=True)
class AugmentArgs:
    gain: float = 0.1  # per-beat amplitude factor drawn from [1 - gain, 1 + gain]
    noise: float = 0.02  # std of additive Gaussian noise, in input units
    rr_jitter: float = 0.03  # relative std of the noise on RR features


@dataclass(frozen=True)
class EcgTrain:
    seed: int = 42
    channels: tuple[str, ...] = ("record_scaled", "record_deviation")
    val_folds: str | tuple[int, ...] = "all"
    fit: FitConfig = field(default_factory=FitConfig)
    augment: AugmentArgs | None = field(default_factory=AugmentArgs)
    mixed_precision: str = "auto"
    limit_beats: int | None = None  # subsample each split (smoke runs); null = all beats
    sampling: SamplingArgs = field(default_factory=SamplingArgs)
    schedule: ScheduleArgs = field(default_factory=ScheduleArgs)
    lenet1d: LenetArgs = field(default_factory=LenetArgs)
    dilated1d: DilatedArgs = field(default_factory=DilatedArgs)
    resnet1d: ResnetArgs = field(default_factory=ResnetArgs)
    loss: LossParams = field(default_factory=LossParams)

    def validate(self) -> None:
        if self.mixed_precision not in ("auto", "on", "off"):
            raise ParamsError(f"mixed_precision: one of auto/on/off, got {self.mixed_precision!r}")
        if self.val_folds != "all" and (isinstance(self.val_folds, str) or not self.val_folds):
            raise ParamsError(f"val_folds: 'all' or a non-empty list of folds, got {self.val_folds!r}")
        if self.limit_beats is not None and self.limit_beats < 1:
            raise ParamsError(f"limit_beats: null or >= 1, got {self.limit_beats}")

    def model_kwargs(self, name: str) -> dict:
        args = getattr(self, name, None)
        return {**(asdict(args) if args is not None else {}), "channels": len(self.channels),
                "augment": asdict(self.augment) if self.augment is not None else None}

    def run_config(self, model: str, loss: str) -> dict:
        """Exactly the knobs one (model, loss) run reads: its provenance and resume fingerprint."""
        return {**{k: _plain(getattr(self, k)) for k in SHARED_KEYS}, "model": model, model: _plain(getattr(self, model, None)),
                "loss": loss, "loss_args": asdict(self.loss.of(loss))}


def _plain(value):
    return asdict(value) if is_dataclass(value) else value


def load(path="params.yaml") -> EcgTrain:
    return load_section("ecg_train", EcgTrain, path)
