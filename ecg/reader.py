"""The one narrow reader around wfdb: load a record's signal and its beat annotations."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

# Bytes per sample for WFDB signal formats (header field `fmt`).
_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "61": 2, "80": 1, "160": 2, "212": 1.5, "24": 3, "32": 4, "310": 4 / 3, "311": 4 / 3}


class RecordError(ValueError):
    """A record's files are missing, corrupt or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Record:
    name: str
    fs: float
    lead: str
    signal: np.ndarray  # (n_samples,) float64, physical units (mV)
    ann_samples: np.ndarray  # (n_ann,) int64
    ann_symbols: np.ndarray  # (n_ann,) str


def _check_dat_sizes(base: Path, header) -> None:
    """Compare each .dat file's size with what the header's sample count implies."""
    per_file: dict[str, float] = {}
    for fname, fmt in zip(header.file_name, header.fmt):
        per_file[fname] = per_file.get(fname, 0.0) + _BYTES_PER_SAMPLE.get(str(fmt), 0.0)
    for fname, bytes_per_frame in per_file.items():
        path = base.parent / fname
        if not path.exists():
            raise RecordError(f"{path}: signal file missing (named in {base}.hea)")
        if bytes_per_frame == 0:
            continue  # unknown format: let wfdb decide
        offset = _byte_offset(header, fname)
        expected = offset + int(np.ceil(header.sig_len * bytes_per_frame))
        actual = path.stat().st_size
        if actual < expected:
            raise RecordError(
                f"{path}: truncated or header/sample-count mismatch: {base}.hea declares {header.sig_len} "
                f"samples ({expected} bytes) but the file has {actual} bytes")
        if actual - expected >= np.ceil(bytes_per_frame):  # more than format padding: samples would be ignored
            held = int((actual - offset) // bytes_per_frame)
            raise RecordError(
                f"{path}: header/sample-count mismatch: {base}.hea declares {header.sig_len} samples "
                f"({expected} bytes) but the file holds {actual} bytes (~{held} samples); "
                f"the rest of the signal would be silently ignored")


def _byte_offset(header, fname: str) -> int:
    offsets = getattr(header, "byte_offset", None) or []
    for name, off in zip(header.file_name, offsets):
        if name == fname and off:
            return int(off)
    return 0


def pick_lead(names, preferred: str, fallbacks) -> str:
    for lead in (preferred, *fallbacks):
        if lead in names:
            return lead
    raise RecordError(f"no lead among {[preferred, *fallbacks]} in channels {list(names)}")


def read_record(path: str | os.PathLike, lead: str = "MLII", fallbacks=(), ann_ext: str = "atr") -> Record:
    """Read one record: the chosen lead (fallbacks in order if absent) and its annotations."""
    base = Path(path)
    hea = base.with_name(base.name + ".hea")
    if not hea.exists():
        raise RecordError(f"{hea}: header file missing")
    try:
        header = wfdb.rdheader(str(base))
    except Exception as exc:  # wfdb raises assorted types on bad headers
        raise RecordError(f"{hea}: unreadable header: {exc}") from None
    if not header.fs or header.fs <= 0 or header.sig_len in (None, 0):
        raise RecordError(f"{hea}: invalid sampling rate {header.fs} or sample count {header.sig_len}")
    _check_dat_sizes(base, header)
    try:
        chosen = pick_lead(header.sig_name, lead, fallbacks)
    except RecordError as exc:
        raise RecordError(f"{hea}: {exc}") from None
    channel = header.sig_name.index(chosen)
    try:
        rec = wfdb.rdrecord(str(base), channels=[channel])
    except Exception as exc:
        raise RecordError(f"{base}.dat: unreadable signal: {exc}") from None
    signal = rec.p_signal[:, 0].astype(np.float64)
    ann_path = base.with_name(f"{base.name}.{ann_ext}")
    if not ann_path.exists():
        raise RecordError(f"{ann_path}: annotation file missing")
    try:
        ann = wfdb.rdann(str(base), ann_ext)
    except Exception as exc:
        raise RecordError(f"{ann_path}: unreadable annotations: {exc}") from None
    return Record(base.name, float(header.fs), chosen, signal,
                  np.asarray(ann.sample, dtype=np.int64), np.asarray(ann.symbol, dtype=object))
