"""Typed params for the ECG data stages (params.yaml section `ecg_data`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.params import ParamsError, load_section

# Databases whose layout (one .hea/.dat/.atr per record) the ingest stage knows.
KNOWN_DATABASES = {"mitdb", "svdb", "incartdb", "nstdb", "ltafdb", "edb"}
# Beat window bounds in ms. Below 200 ms the window cannot hold a QRS complex (80-120 ms) with
# any context; above 3000 ms (two RR intervals at 40 bpm) it is mostly neighbouring beats and
# drops every beat within 1.5 s of a record edge. 0.1 ms (a 1-sample window) or 4000000 ms
# (0 beats) are typing errors, not choices.
WINDOW_MS_RANGE = (200.0, 3000.0)


@dataclass(frozen=True)
class EcgData:
    database: str = "mitdb"
    records: str | tuple[int, ...] = "all"
    mirror: str | None = None
    verify: bool = True  # sha256 against the source's SHA256SUMS.txt; false = deliberately unverified
    lead: str = "MLII"
    fallback_leads: tuple[str, ...] = ("V5", "V1", "V2", "V4")
    fs: int = 360
    bandpass_hz: tuple[float, ...] = (0.5, 40.0)
    filter_order: int = 2
    window_ms: float = 700.0
    local_rr_beats: int = 10
    n_folds: int = 4

    def validate(self) -> None:
        if self.database not in KNOWN_DATABASES:
            raise ParamsError(f"database: unknown database '{self.database}'; known: {sorted(KNOWN_DATABASES)}")
        if isinstance(self.records, str) and self.records != "all":
            raise ParamsError(f"records: must be 'all' or a list of record numbers, got {self.records!r}")
        if not isinstance(self.records, str) and len(self.records) == 0:
            raise ParamsError("records: the record list is empty")
        if self.fs <= 0:
            raise ParamsError(f"fs: must be positive, got {self.fs}")
        band = self.bandpass_hz
        if len(band) != 2 or not 0 < band[0] < band[1] < self.fs / 2:
            raise ParamsError(f"bandpass_hz: need [low, high] with 0 < low < high < fs/2, got {list(self.bandpass_hz)}")
        lo, hi = WINDOW_MS_RANGE
        if not lo <= self.window_ms <= hi:
            raise ParamsError(f"window_ms: must lie in {lo}..{hi} ms (a QRS complex with context, at most about "
                              f"two RR intervals at 40 bpm), got {self.window_ms}")
        if self.n_folds < 2:
            raise ParamsError(f"n_folds: need at least 2, got {self.n_folds}")
        if self.local_rr_beats < 1 or self.filter_order < 1:
            raise ParamsError("local_rr_beats and filter_order must be >= 1")

    @property
    def half_window(self) -> int:
        """Samples on each side of the R peak: the window is 2 * half + 1 samples, centred."""
        return int(round(self.window_ms / 2000.0 * self.fs))

    def mirror_dir(self) -> str | None:
        """Local mirror: env ECG_MIRROR wins over the `mirror` param; None means download."""
        return os.environ.get("ECG_MIRROR") or self.mirror


def load(path="params.yaml") -> EcgData:
    return load_section("ecg_data", EcgData, path)
