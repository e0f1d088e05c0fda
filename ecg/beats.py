"""From a record to beats: filter, resample, AAMI labels, centred windows, RR features."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import signal as sps

from ecg.reader import Record, RecordError

AAMI_CLASSES = ("N", "S", "V", "F", "Q")
# Classes scored in macro-F1 (de Chazal 2004 / AAMI practice): Q (paced, fusion of paced, unclassifiable)
# is too rare in DS1/DS2 to score. Written to meta.json as `score_classes`; downstream reads it there.
SCORE_CLASSES = ("N", "S", "V", "F")
# AAMI EC57 grouping of every WFDB beat code (wfdb.io.annotation.ann_label_table; tests walk it).
# MIT-BIH uses only the codes of the first five lines. B, n, r and ? occur in other PhysioNet
# databases (INCART, SVDB, LTDB...) and join the class of their MIT-BIH counterparts, as EC57 groups
# them: bundle branch block beats (L, R) and escape beats of supraventricular origin (e, j) are N,
# premature ventricular beats are V whatever their timing, beats left unclassified are Q.
AAMI_MAP = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",
    "A": "S", "a": "S", "J": "S", "S": "S",
    "V": "V", "E": "V",
    "F": "F",
    "/": "Q", "f": "Q", "Q": "Q",
    # not in MIT-BIH: left or right bundle branch block (unspecified), supraventricular escape,
    # R-on-T premature ventricular contraction, beat not classified during learning
    "B": "N", "n": "N", "r": "V", "?": "Q",
}
# WFDB annotation codes that mark no beat (rhythm, noise, signal quality, comments, waves).
NON_BEAT_SYMBOLS = set('[]!x()ptu`\'^|~+sT*D="@')
RR_FEATURES = ("pre_rr_local", "post_rr_local", "pre_rr_record", "post_rr_record", "local_rr_record")


def class_index(symbols: np.ndarray, source: str) -> np.ndarray:
    """AAMI class index per symbol, -1 for non-beat annotations; unknown symbols are an error."""
    unknown = sorted({s for s in symbols if s not in AAMI_MAP and s not in NON_BEAT_SYMBOLS})
    if unknown:
        raise RecordError(f"{source}: unknown annotation symbol(s) {unknown}")
    lookup = {s: AAMI_CLASSES.index(c) for s, c in AAMI_MAP.items()}
    return np.array([lookup.get(s, -1) for s in symbols], dtype=np.int64)


def check_finite(sig: np.ndarray, source: str) -> None:
    bad = np.flatnonzero(~np.isfinite(sig))
    if bad.size:
        raise RecordError(f"{source}: {bad.size} NaN/invalid samples, first at sample {bad[0]} "
                          f"(signal gap or invalid-sample marker); clean or exclude this record")


def resample(sig: np.ndarray, samples: np.ndarray, fs_in: float, fs_out: int):
    """Polyphase resampling of the signal and rescaling of annotation positions."""
    if fs_in == fs_out:
        return sig, samples
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    out = sps.resample_poly(sig, ratio.numerator, ratio.denominator)
    pos = np.round(samples * (fs_out / fs_in)).astype(np.int64)
    return out, np.clip(pos, 0, len(out) - 1)


def sosfilt_zi(sos: np.ndarray) -> np.ndarray:
    """scipy.signal.sosfilt_zi in closed form for second-order sections, without LAPACK.

    scipy solves a 2x2 system per section with np.linalg.solve, whose last bits depend on the
    OpenBLAS kernel picked at run time for the CPU (SkylakeX vs Haswell/Zen gave different
    beats.npz bytes). The closed form uses only IEEE +-*/, so every machine gets the same bits.
    """
    zi = np.empty((len(sos), 2))
    scale = 1.0
    for k, section in enumerate(np.asarray(sos, dtype=np.float64)):
        b, a = section[:3] / section[3], section[3:] / section[3]
        # lfilter_zi: (I - companion(a).T) @ z = b[1:] - a[1:] * b[0], solved by hand for n = 2.
        r0, r1 = b[1] - a[1] * b[0], b[2] - a[2] * b[0]
        z0 = (r0 + r1) / (1.0 + a[1] + a[2])
        zi[k] = scale * z0, scale * (r1 - a[2] * z0)
        scale *= b.sum() / a.sum()
    return zi


def sosfiltfilt(sos: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """scipy.signal.sosfiltfilt (odd padding, default pad length) with the BLAS-free sosfilt_zi above."""
    ntaps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    edge = 3 * ntaps
    if len(sig) <= edge:
        raise ValueError(f"signal of {len(sig)} samples is too short for the filter padding ({edge})")
    ext = np.concatenate([2 * sig[:1] - sig[edge:0:-1], sig, 2 * sig[-1:] - sig[-2:-edge - 2:-1]])
    zi = sosfilt_zi(sos)
    y, _ = sps.sosfilt(sos, ext, zi=zi * ext[:1])
    y, _ = sps.sosfilt(sos, y[::-1], zi=zi * y[-1:])
    return y[::-1][edge:-edge]


def bandpass(sig: np.ndarray, fs: int, band, order: int) -> np.ndarray:
    """Zero-phase Butterworth band-pass: removes baseline wander (low) and muscle/mains noise (high)."""
    sos = sps.butter(order, band, btype="bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, sig)


def rr_features(beat_samples: np.ndarray, fs: int, local_beats: int) -> np.ndarray:
    """RR features for beats 1..n-2 (the first and last have no previous/next RR).

    pre/post RR normalised by the local mean (mean of the last `local_beats` RR intervals
    up to this beat) and by the record mean; plus local mean / record mean.
    """
    rr = np.diff(beat_samples) / fs  # rr[i] = interval between beat i and i+1
    pre, post = rr[:-1], rr[1:]
    csum = np.concatenate([[0.0], np.cumsum(rr)])
    idx = np.arange(len(pre))  # pre[i] is rr[i]; local mean over rr[max(0,i-k+1)..i]
    lo = np.maximum(0, idx - local_beats + 1)
    local = (csum[idx + 1] - csum[lo]) / (idx + 1 - lo)
    record = rr.mean()
    return np.stack([pre / local, post / local, pre / record, post / record, local / record], axis=1)


# Median RR over a whole record at the header's sampling rate must lie in this range (seconds):
# 42..240 bpm. MIT-BIH records span 0.53..1.20 s; a header claiming 128 Hz for a 360 Hz signal
# stretches every interval 2.8x (>= 1.50 s on all 48 records), and one claiming too high a rate
# squeezes them below 0.25 s. Median heart rates outside this range over a Holter record are
# not physiological for these databases, so the header's rate is taken to be wrong.
MEDIAN_RR_RANGE_S = (0.25, 1.43)


def check_rate_plausible(beat_samples: np.ndarray, fs: float, source: str) -> None:
    """Reject a record whose beat spacing at the header's rate is not a plausible heart rate."""
    if len(beat_samples) < 3:
        return
    rr = float(np.median(np.diff(beat_samples))) / fs
    lo, hi = MEDIAN_RR_RANGE_S
    if not lo <= rr <= hi:
        raise RecordError(
            f"{source}: median RR interval {rr:.3f} s ({60 / rr:.0f} bpm) at the declared {fs:g} Hz is outside "
            f"{lo}..{hi} s ({60 / hi:.0f}..{60 / lo:.0f} bpm); the header's sampling rate is probably wrong")


def extract_beats(rec: Record, fs: int, band, order: int, half: int, local_beats: int) -> dict:
    """All AAMI-labelled beats of a record with a full window and both neighbouring RRs."""
    source = f"{rec.name}.dat"
    check_finite(rec.signal, source)
    labels = class_index(rec.ann_symbols, f"{rec.name}.atr")
    if rec.fs < 50:
        raise RecordError(f"{rec.name}.hea: unexpected sampling rate {rec.fs} Hz (below 50 Hz)")
    check_rate_plausible(rec.ann_samples[labels >= 0], rec.fs, f"{rec.name}.hea")
    sig, samples = resample(rec.signal, rec.ann_samples, rec.fs, fs)
    sig = bandpass(sig, fs, band, order)
    is_beat = labels >= 0
    beat_samples, beat_labels = samples[is_beat], labels[is_beat]
    if len(beat_samples) < 3:
        raise RecordError(f"{rec.name}.atr: fewer than 3 beat annotations")
    rr = rr_features(beat_samples, fs, local_beats)
    centre, lab = beat_samples[1:-1], beat_labels[1:-1]
    keep = (centre - half >= 0) & (centre + half < len(sig))
    centre, lab, rr = centre[keep], lab[keep], rr[keep]
    offsets = np.arange(-half, half + 1)
    windows = sig[centre[:, None] + offsets[None, :]].astype(np.float32)
    return {"x": windows, "rr": rr.astype(np.float32), "y": lab.astype(np.int8),
            "sample": centre.astype(np.int64), "dropped_edge": int((~keep).sum()) + 2}
