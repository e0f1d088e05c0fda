"""Analyse an ECG recording end to end: read, pick a lead, detect beats, classify them (AAMI N/S/V/F/Q).

    python -m ecg.predict RECORD [--model DIR|runs:/<id>/model] [--lead NAME] [--annotations EXT]
                                 [--out DIR] [--fs HZ] [--detector gqrs|xqrs] [--workers N]

RECORD is a WFDB record path without extension (`../shared/data/mitdb/100`), a folder of WFDB records
(every `<name>.hea`; with --fs also every .csv/.npy), or a CSV/.npy signal with its rate given by --fs
(CSV: one column per lead, optional header row naming the leads; .npy: (n,) or (n, leads)).

* The model is a package folder (python -m ecg.package) or an MLflow model logged from one; the
  package fixes the rate, window, band-pass, RR features and input channels the model was trained with.
* Lead: --lead NAME (or a column index for headerless CSV/.npy); otherwise the first present of the
  package's training lead and fallbacks (MLII, V5, V1, V2, V4 for MIT-BIH), then II, ML2, ECG, ECG1
  (case-insensitive). A single-lead CSV/.npy is used as is. The chosen lead is printed and reported.
* The signal is resampled to the model's rate and band-passed exactly as prepare_ecg does
  (ecg.beats.extract_beats); windows, RR features and the record-level input channels
  (ecg.dataset.beat_channels) are computed by the same functions training used.
* Beats are detected with wfdb.processing's GQRS (ecg.detect). With --annotations EXT the reference
  beats of `<record>.EXT` score the run the AAMI EC57 way (beats matched within 150 ms: detection
  Se/+P, per-class Se/+P/F1 of the matched beats). --annotated-beats classifies the reference beat
  positions instead of detected ones (the setting of the DS2 metrics).
* Writes, atomically, per record: `<out>/<record>.beats.csv` (sample,time_s,label,p_N..p_Q; samples
  at the input's own rate), `<out>/<record>.pred` (WFDB annotations with AAMI symbols) and
  `<out>/<record>.summary.json` (written last). A record that fails leaves none of them.
"""
from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from ecg import detect as qrs  # noqa: E402
from ecg.beats import AAMI_CLASSES, AAMI_MAP, extract_beats  # noqa: E402
from ecg.dataset import beat_channels  # noqa: E402
from ecg.package import PackageError, read_spec, resolve  # noqa: E402
from ecg.reader import Record, RecordError  # noqa: E402
from pipeline.io import atomic_path, ensure_dir, write_json  # noqa: E402

# Tried after the package's own lead order, case-insensitively: lead II under the names other
# PhysioNet databases and devices use, then generic single-channel names.
LEAD_ALIASES = ("II", "ML2", "ECG", "ECG1")
MIN_FS = 50.0
FLAT_MV = 0.01          # a whole signal with less peak-to-peak amplitude (mV) is flat, not an ECG
MATCH_WINDOW_S = 0.150  # AAMI EC57 beat-matching window
ARRAY_SUFFIXES = (".csv", ".npy")


class PredictError(ValueError):
    """Input that cannot be analysed; the message names the file."""


@dataclass
class Signal:
    name: str                      # output file stem
    source: Path                   # the file errors about the recording name (.hea, .csv, .npy)
    data_file: Path                # the file holding the samples
    fs: float
    lead: str
    leads: list
    signal: np.ndarray
    ann_samples: np.ndarray | None = None
    ann_symbols: np.ndarray | None = None
    ann_file: Path | None = None


@dataclass
class Analysed:
    """A record's beats ready for the model (everything but classification)."""
    sig: Signal
    sample: np.ndarray             # classified beats, at the input's own rate
    beat: np.ndarray               # (n, L, C) model input
    rr: np.ndarray                 # (n, k) model input
    y_ref: np.ndarray | None       # AAMI class of the reference beat (annotated-beats mode)
    detected: np.ndarray | None    # every detected beat (detection mode)
    n_dropped: int
    timing: dict = field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------------------

def lead_order(spec: dict, requested: str | None) -> list:
    if requested is not None:
        return [requested]
    order = []
    for name in (spec["lead"], *spec["fallback_leads"], *LEAD_ALIASES):
        if name.lower() not in [o.lower() for o in order]:
            order.append(name)
    return order


def choose_lead(names: list, order: list, source: Path, allow_single: bool = False) -> int:
    lowered = [str(n).strip().lower() for n in names]
    for want in order:
        if str(want).lower() in lowered:
            return lowered.index(str(want).lower())
    if allow_single and len(names) == 1 and len(order) > 1:
        return 0
    hint = "choose one with --lead NAME" if len(order) > 1 else "--lead names none of them"
    raise PredictError(f"{source}: no usable lead: the record has {list(names)}; tried {order}; {hint}")


def read_wfdb(base: Path, order: list, ann_ext: str | None) -> Signal:
    import wfdb

    from ecg.reader import _check_dat_sizes
    hea = base.with_name(base.name + ".hea")
    if not hea.exists():
        raise PredictError(f"{hea}: header file missing (RECORD is a WFDB record path without extension)")
    try:
        header = wfdb.rdheader(str(base))
    except Exception as exc:  # wfdb raises assorted types on bad headers
        raise PredictError(f"{hea}: unreadable header: {exc}") from None
    if not header.fs or header.fs <= 0 or not header.sig_len or not header.sig_name:
        raise PredictError(f"{hea}: invalid sampling rate {header.fs}, sample count {header.sig_len} "
                           f"or no signals {header.sig_name}")
    check_rate(float(header.fs), hea)
    try:
        _check_dat_sizes(base, header)
    except RecordError as exc:
        raise PredictError(str(exc)) from None
    channel = choose_lead(list(header.sig_name), order, hea)
    try:
        rec = wfdb.rdrecord(str(base), channels=[channel])
    except Exception as exc:
        raise PredictError(f"{base.parent / header.file_name[channel]}: unreadable signal: {exc}") from None
    sig = Signal(base.name, hea, base.parent / header.file_name[channel], float(header.fs),
                 header.sig_name[channel], list(header.sig_name), rec.p_signal[:, 0].astype(np.float64))
    if ann_ext:
        ann_file = base.with_name(f"{base.name}.{ann_ext}")
        if not ann_file.exists():
            raise PredictError(f"{ann_file}: annotation file missing (--annotations {ann_ext})")
        try:
            ann = wfdb.rdann(str(base), ann_ext)
        except Exception as exc:
            raise PredictError(f"{ann_file}: unreadable annotations: {exc}") from None
        sig.ann_samples = np.asarray(ann.sample, np.int64)
        sig.ann_symbols = np.asarray(ann.symbol, dtype=object)
        sig.ann_file = ann_file
    return sig


def read_array(path: Path, fs: float | None, requested: str | None, order: list) -> Signal:
    if fs is None:
        raise PredictError(f"{path}: a {path.suffix} signal carries no sampling rate; give it with --fs HZ")
    check_rate(float(fs), path)
    if path.suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise PredictError(f"{path}: unreadable .npy: {exc}") from None
        if data.ndim == 1:
            data = data[:, None]
        if data.ndim != 2 or data.shape[0] == 0:
            raise PredictError(f"{path}: need an (n,) or (n, leads) array, got shape {data.shape}")
        names = [str(i) for i in range(data.shape[1])]
        header = False
    else:
        import pandas as pd
        try:
            frame = pd.read_csv(path, header=None, comment="#", skipinitialspace=True)
        except Exception as exc:
            raise PredictError(f"{path}: unreadable CSV: {exc}") from None
        first = pd.to_numeric(frame.iloc[0], errors="coerce") if len(frame) else None
        header = first is not None and bool(first.isna().all())
        if header:
            names = [str(c).strip() for c in frame.iloc[0]]
            frame = frame.iloc[1:]
        else:
            names = [str(i) for i in range(frame.shape[1])]
        if len(frame) == 0:
            raise PredictError(f"{path}: no samples")
        data = frame.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    if requested is not None and not header and requested.isdigit():
        order = [requested]
    channel = choose_lead(names, order, path, allow_single=True)
    return Signal(path.stem, path, path, float(fs), names[channel], names, np.asarray(data[:, channel], np.float64))


def read_input(path: Path, order: list, requested: str | None, ann_ext: str | None, fs: float | None) -> Signal:
    if path.suffix.lower() in ARRAY_SUFFIXES:
        if not path.is_file():
            raise PredictError(f"{path}: file not found")
        if ann_ext:
            raise PredictError(f"{path}: --annotations needs a WFDB record, not a {path.suffix} file")
        return read_array(path, fs, requested, order)
    if fs is not None:
        raise PredictError(f"{path}: --fs applies to CSV/.npy signals only; a WFDB header states its own rate")
    return read_wfdb(path, order, ann_ext)


def list_inputs(path: Path, fs: float | None) -> list:
    """The records RECORD names: itself, or every WFDB record (and with --fs every CSV/.npy) of a folder."""
    if not path.is_dir():
        return [path]
    found = [p.with_suffix("") for p in sorted(path.glob("*.hea"))]
    if fs is not None:
        found += sorted(p for p in path.iterdir() if p.suffix.lower() in ARRAY_SUFFIXES)
    if not found:
        raise PredictError(f"{path}: folder holds no WFDB records (*.hea)" + ("" if fs else
                           " (CSV/.npy signals are read from a folder only with --fs)"))
    return found


# --- checks ----------------------------------------------------------------------------------------

def check_rate(fs: float, source: Path) -> None:
    if not fs >= MIN_FS:
        raise PredictError(f"{source}: sampling rate {fs:g} Hz is below {MIN_FS:g} Hz; QRS complexes "
                           f"(80-120 ms) cannot be resolved")


def check_signal(sig: Signal) -> None:
    x = sig.signal
    bad = ~np.isfinite(x)
    if bad.any():
        edges = np.diff(np.concatenate([[0], bad.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        longest = int((ends - starts).max())
        raise PredictError(
            f"{sig.data_file}: lead {sig.lead} has {int(bad.sum())} NaN/invalid samples in {len(starts)} run(s), "
            f"first at sample {starts[0]} ({starts[0] / sig.fs:.1f} s), longest {longest} samples; "
            f"fill or cut the gaps first")
    if len(x) == 0 or float(np.ptp(x)) < FLAT_MV:
        what = "all zeros" if not np.any(x) else f"a flat line (peak-to-peak {float(np.ptp(x)):.3g} mV < {FLAT_MV} mV)"
        raise PredictError(f"{sig.data_file}: lead {sig.lead} is {what}; no ECG to analyse")


# --- analysis --------------------------------------------------------------------------------------

def analyse(sig: Signal, spec: dict, detector: str = qrs.DEFAULT, annotated_beats: bool = False) -> Analysed:
    """Checks, beat positions (detected or annotated), windows, RR features and model inputs of one record."""
    timing = {}
    check_signal(sig)
    half = int(spec["r_peak_index"])
    if spec["window_samples"] != 2 * half + 1:
        raise PackageError(f"package: window_samples {spec['window_samples']} is not 2 * r_peak_index + 1")
    detected = None
    t, cpu = time.perf_counter(), time.process_time()
    if annotated_beats:
        if sig.ann_samples is None:
            raise PredictError(f"{sig.source}: --annotated-beats needs --annotations EXT")
        is_beat = np.array([s in AAMI_MAP for s in sig.ann_symbols], bool)
        positions, symbols = sig.ann_samples[is_beat], sig.ann_symbols[is_beat]
        where = sig.ann_file
    else:
        positions = qrs.detect(sig.signal, sig.fs, detector)
        detected = positions
        symbols = np.full(len(positions), "N", dtype=object)  # placeholder labels: extract_beats wants some
        where = sig.data_file
    timing["detect_s"], timing["detect_cpu_s"] = time.perf_counter() - t, time.process_time() - cpu
    if len(positions) < 3:
        raise PredictError(f"{where}: only {len(positions)} beat(s) {'annotated' if annotated_beats else 'detected'} "
                           f"in lead {sig.lead} ({len(sig.signal) / sig.fs:.1f} s); need at least 3")
    t = time.perf_counter()
    # The record goes through prepare_ecg's own function: same resampling, band-pass, RR features, windows.
    stem = str(sig.source.with_suffix("")) if sig.source.suffix == ".hea" else str(sig.source)
    rec = Record(stem, sig.fs, sig.lead, sig.signal, positions.astype(np.int64), symbols)
    try:
        beats = extract_beats(rec, int(spec["fs"]), spec["bandpass_hz"], int(spec["filter_order"]), half,
                              int(spec["local_rr_beats"]))
    except (RecordError, ValueError) as exc:
        msg = str(exc)
        if sig.source.suffix != ".hea":
            msg = msg.replace(f"{stem}.hea", str(sig.source)).replace(f"{stem}.dat", str(sig.source))
        raise PredictError(msg) from None
    if len(beats["sample"]) == 0:
        raise PredictError(f"{where}: none of the {len(positions)} beats has a full {spec['window_ms']:g} ms "
                           f"window and both neighbours; the record is too short")
    # Back to the input's own sample numbers: extract_beats keeps beats 1..n-2 that fit a window.
    ratio = spec["fs"] / sig.fs
    inner = positions[1:-1]
    idx = np.searchsorted(np.round(inner * ratio).astype(np.int64), beats["sample"])
    if idx.max(initial=0) >= len(inner) or not np.array_equal(np.round(inner[idx] * ratio).astype(np.int64),
                                                               beats["sample"]):
        raise RuntimeError(f"{sig.source}: beat positions could not be mapped back to the input rate")
    beat = beat_channels(beats["x"], np.zeros(len(beats["x"]), np.int64), spec["channels"])
    timing["features_s"] = time.perf_counter() - t
    return Analysed(sig, inner[idx], beat, beats["rr"], beats["y"].astype(np.int64) if annotated_beats else None,
                    detected, int(len(positions) - len(idx)), timing)


def class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list, scored: list) -> dict:
    from pipeline.evaluation import class_metrics, confusion, macro_f1_from_confusion
    k = len(classes)
    cm = confusion(y_true, y_pred, k)
    per_class = {}
    for i, c in enumerate(classes):
        m = class_metrics(cm, i)
        per_class[c] = {"se": m["se"], "+p": m["ppv"], "f1": m["f1"], "n": int(cm[i].sum())}
    return {"n_matched": int(len(y_true)),
            "macro_f1": macro_f1_from_confusion(cm, [classes.index(c) for c in scored]),
            "per_class": per_class, "confusion": cm.tolist()}


def self_score(a: Analysed, labels: np.ndarray, spec: dict) -> dict:
    """AAMI EC57 scoring against the reference beats: detection Se/+P, per-class Se/+P/F1 of matched beats."""
    from wfdb.processing import compare_annotations
    sig, classes = a.sig, list(spec["classes"])
    if a.y_ref is not None:  # classified the reference beats themselves
        return {"reference": str(sig.ann_file), "beats": "annotated",
                **class_table(a.y_ref, labels, classes, spec["score_classes"])}
    is_beat = np.array([s in AAMI_MAP for s in sig.ann_symbols], bool)
    ref = sig.ann_samples[is_beat]
    ref_cls = np.array([AAMI_CLASSES.index(AAMI_MAP[s]) for s in sig.ann_symbols[is_beat]], np.int64)
    window = int(round(MATCH_WINDOW_S * sig.fs))
    out = {"reference": str(sig.ann_file), "beats": "detected", "match_window_s": MATCH_WINDOW_S}
    if len(ref) == 0:
        out["detection"] = None
        return out
    det = compare_annotations(ref, a.detected, window)
    out["detection"] = {"se": float(det.sensitivity), "+p": float(det.positive_predictivity),
                        "tp": int(det.tp), "fn": int(det.fn), "fp": int(det.fp), "n_reference": int(len(ref))}
    cls = compare_annotations(ref, a.sample, window)
    m = np.asarray(cls.matching_sample_nums)
    ok = m >= 0
    out.update(class_table(ref_cls[ok], labels[m[ok]], classes, spec["score_classes"]))
    out["n_classified_unmatched"] = int(len(a.sample) - ok.sum())
    return out


def summarise(a: Analysed, labels: np.ndarray, spec: dict, provenance: dict, detector: str,
              annotated_beats: bool) -> dict:
    sig, classes = a.sig, list(spec["classes"])
    hours = len(sig.signal) / sig.fs / 3600.0
    counts = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    per_hour = {c: counts[c] / hours for c in classes}
    ectopic = [c for c in ("S", "V", "F") if c in classes]
    return {
        "record": sig.name, "input": str(sig.source), "fs": sig.fs, "model_fs": spec["fs"],
        "duration_s": len(sig.signal) / sig.fs, "lead": sig.lead, "leads_available": sig.leads,
        "beats": "annotated" if annotated_beats else "detected",
        "detector": None if annotated_beats else qrs.describe(detector),
        "n_beats_found": int(len(a.detected) if a.detected is not None else len(a.sample) + a.n_dropped),
        "n_classified": int(len(labels)),
        "n_unclassified": a.n_dropped,  # first/last beat (one RR missing) and beats without a full window
        "beats_per_class": counts,
        "beats_per_hour": per_hour,
        "ectopic_per_hour": {**{c: per_hour[c] for c in ectopic},
                             "total": sum(counts[c] for c in ectopic) / hours},
        "ectopic_classes": ectopic,
        "model": provenance,
    }


# --- writing ---------------------------------------------------------------------------------------

def write_outputs(out: Path, a: Analysed, labels: np.ndarray, probs: np.ndarray, spec: dict, summary: dict) -> None:
    """beats.csv, .pred, then summary.json, each renamed into place only once all three are written."""
    import wfdb
    name, classes = a.sig.name, list(spec["classes"])
    ensure_dir(out)
    header = "sample,time_s,label," + ",".join(f"p_{c}" for c in classes)
    lab = np.asarray(classes, dtype=object)[labels]
    rows = "".join(f"{s},{s / a.sig.fs:.4f},{c}," + ",".join(f"{p:.5f}" for p in pr) + "\n"
                   for s, c, pr in zip(a.sample.tolist(), lab, probs.tolist()))
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=out))
    try:
        # wfdb.wrann validates symbols and the record name; written in scratch, renamed below.
        wfdb.wrann(name, "pred", sample=a.sample.astype(np.int64), symbol=list(lab), fs=a.sig.fs,
                   write_dir=str(scratch))
        with atomic_path(out / f"{name}.beats.csv", suffix=".csv") as csv_tmp, \
                atomic_path(out / f"{name}.pred") as pred_tmp:
            csv_tmp.write_text(header + "\n" + rows)
            os.replace(scratch / f"{name}.pred", pred_tmp)
        write_json(out / f"{name}.summary.json", summary)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- driver ----------------------------------------------------------------------------------------

def _prepare_one(path: Path, spec: dict, order: list, requested, ann_ext, fs, detector, annotated_beats):
    t = time.perf_counter()
    sig = read_input(path, order, requested, ann_ext, fs)
    read_s = time.perf_counter() - t
    a = analyse(sig, spec, detector, annotated_beats)
    a.timing["read_s"] = read_s
    return a


def _name(path: Path) -> str:
    return path.stem if path.suffix.lower() in ARRAY_SUFFIXES else path.name


def _worker(args):
    try:
        return _prepare_one(*args)
    except (PredictError, PackageError, RecordError) as exc:
        return exc


def predict(record: Path | str, model: str, out: Path | str = "predictions", lead: str | None = None,
            annotations: str | None = None, fs: float | None = None, detector: str = qrs.DEFAULT,
            annotated_beats: bool = False, workers: int = 0, log=print) -> dict:
    """Analyse RECORD (a record, a CSV/.npy signal or a folder); returns {"records": {...}, "errors": {...}, "timing": {...}}."""
    t_start = time.perf_counter()
    timing = {"imports_s": t_start - _T0, "model_load_s": 0.0, "detection_s": 0.0, "classification_s": 0.0,
              "writing_s": 0.0}
    record, out = Path(record), Path(out)
    if detector not in qrs.DETECTORS:
        raise PredictError(f"--detector {detector}: unknown; valid: {list(qrs.DETECTORS)}")
    pkg_path, origin = resolve(model)
    spec = read_spec(pkg_path)
    order = lead_order(spec, lead)
    paths = list_inputs(record, fs)
    jobs = [(p, spec, order, lead, annotations, fs, detector, annotated_beats) for p in paths]
    pool = None
    if workers > 1 and len(jobs) > 1:  # detection in worker processes while this one imports Keras
        from ecg.prepare import die_with_parent
        pool = ProcessPoolExecutor(min(workers, len(jobs)), initializer=die_with_parent, initargs=(os.getpid(),))
        pending = pool.map(_worker, jobs)
    else:  # read and detect first: bad input is reported before Keras is imported
        pending = [_worker(j) for j in jobs]
        if all(isinstance(a, Exception) for a in pending):
            for a in pending:
                print(f"ecg.predict: error: {a}", file=sys.stderr, flush=True)
            timing["total_s"] = time.perf_counter() - _T0
            return {"records": {}, "errors": {_name(p): str(a) for p, a in zip(paths, pending)}, "timing": timing}
    try:
        t = time.perf_counter()
        import keras  # noqa: F401
        timing["imports_s"] += time.perf_counter() - t
        t = time.perf_counter()
        from ecg.package import load_package
        package = load_package(pkg_path)
        timing["model_load_s"] = time.perf_counter() - t
        provenance = {"package": origin, **spec["provenance"], "temperature": spec["temperature"]}
        results, errors = {}, {}
        timing.update(detection_s=0.0, detection_cpu_s=0.0, features_s=0.0, read_s=0.0, classification_s=0.0, writing_s=0.0)
        t_wait = time.perf_counter()
        for path, a in zip(paths, pending):
            name = _name(path)
            if isinstance(a, Exception):  # earlier outputs of this record, if any, stay as they were
                errors[name] = str(a)
                print(f"ecg.predict: error: {a}", file=sys.stderr, flush=True)
                continue
            timing["detection_s"] += a.timing["detect_s"]
            timing["detection_cpu_s"] += a.timing["detect_cpu_s"]
            timing["features_s"] += a.timing["features_s"]
            timing["read_s"] += a.timing["read_s"]
            t = time.perf_counter()
            probs = package.predict(a.beat, a.rr)
            labels = probs.argmax(axis=1)
            timing["classification_s"] += time.perf_counter() - t
            t = time.perf_counter()
            summary = summarise(a, labels, spec, provenance, detector, annotated_beats)
            if a.sig.ann_samples is not None:
                summary["scoring"] = self_score(a, labels, spec)
            write_outputs(out, a, labels, probs, spec, summary)
            timing["writing_s"] += time.perf_counter() - t
            results[name] = summary
            log(report_line(summary))
        timing["wait_for_workers_s"] = time.perf_counter() - t_wait - timing["classification_s"] - timing["writing_s"]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    timing["total_s"] = time.perf_counter() - _T0
    return {"records": results, "errors": errors, "timing": timing}


def report_line(s: dict) -> str:
    counts = " ".join(f"{c}={n}" for c, n in s["beats_per_class"].items())
    line = (f"{s['record']}: lead {s['lead']} (of {', '.join(map(str, s['leads_available']))}), {s['fs']:g} Hz -> "
            f"{s['model_fs']} Hz, {s['beats']} beats ({s['detector']['name'] if s['detector'] else 'reference'}) "
            f"{s['n_classified']} classified: {counts}; ectopic {s['ectopic_per_hour']['total']:.0f}/h")
    sc = s.get("scoring")
    if sc:
        if sc.get("detection"):
            line += f"; detection Se {sc['detection']['se']:.4f} +P {sc['detection']['+p']:.4f}"
        if sc.get("macro_f1") is not None:
            line += f"; macro-F1 {sc['macro_f1']:.3f} on {sc['n_matched']} matched beats"
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ecg.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("record", help="WFDB record path without extension, a folder of records, or a CSV/.npy signal")
    ap.add_argument("--model", default="models/ecg", help="model package folder or runs:/<id>/model (default: %(default)s)")
    ap.add_argument("--lead", default=None, help="lead to analyse (default: the documented order)")
    ap.add_argument("--annotations", default=None, metavar="EXT",
                    help="reference annotation extension (e.g. atr): score detection and classification")
    ap.add_argument("--annotated-beats", action="store_true",
                    help="classify the reference beats of --annotations instead of detected ones")
    ap.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    ap.add_argument("--fs", type=float, default=None, help="sampling rate in Hz of a CSV/.npy signal")
    ap.add_argument("--detector", default=qrs.DEFAULT, choices=qrs.DETECTORS)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes reading and detecting beats in a folder (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.annotated_beats and not args.annotations:
        ap.error("--annotated-beats needs --annotations EXT")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        result = predict(args.record, args.model, args.out, args.lead, args.annotations, args.fs, args.detector,
                         args.annotated_beats, args.workers)
    except (PredictError, PackageError, RecordError) as exc:
        print(f"ecg.predict: error: {exc}", file=sys.stderr)
        return 2
    t = result["timing"]
    print(f"ecg.predict: {len(result['records'])} record(s) -> {args.out}, {len(result['errors'])} failed; "
          f"{t['total_s']:.1f} s wall (imports {t['imports_s']:.1f}, model load {t['model_load_s']:.1f}, "
          f"detection {t['detection_s']:.1f}, classification {t['classification_s']:.1f}, "
          f"writing {t['writing_s']:.1f})")
    return 2 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
