"""Generalisation checks of a model package through the full predict path (detected beats, no annotations used).

    python -m ecg.generalise rerecorded --model models/ecg --raw data/raw/mitdb --out metrics/ecg/rerecorded.json
    python -m ecg.generalise robustness --model models/ecg --raw data/raw/mitdb --noise-dir ../shared/data/nstdb \
        --out metrics/ecg/robustness.json --plot reports/plots/ecg/robustness.csv

* rerecorded: every record (default: the DS2 records present) is written out again as a WFDB record at
  each rate (default 128 and 250 Hz; polyphase resampling, annotations rescaled) with its lead renamed
  (default "ECG"), then analysed by ecg.predict: beats detected, classified, matched to the reference
  within 150 ms. Beside each rate: the same rate on the reference beats ("annotated"), and the
  original record on the reference beats ("reference_annotated"): the gap between "annotated" and the
  detected figures is what detection costs (missed and extra beats, R-peak offsets changing windows
  and RR features); the gap between "reference_annotated" and "annotated" is what the rate costs.
* robustness: real noise records of the MIT-BIH Noise Stress Test Database (bw: baseline wander,
  ma: muscle artefact) are added to each record at each SNR (default 24, 18, 12, 6, 0, -6 dB), over the
  whole record, with the SNR defined as nst(1) does (see `noise_gain`); each noisy record is written as
  WFDB and analysed like above. "clean" is the record itself through the same path.

Figures are pooled over records: detection Se/+P from summed TP/FN/FP, per-class Se/+P/F1 and macro-F1
(meta's scored classes, from the package) from the summed confusion matrix of matched beats.
Records are read with ecg.reader (the package's lead order); nothing here is tuned on what it measures.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

from ecg import predict
from ecg.beats import AAMI_MAP
from ecg.package import PackageError, read_spec, resolve
from ecg.reader import RecordError, read_record
from pipeline.io import atomic_path, write_json

RATES = (128, 250)
SNR_DB = (24, 18, 12, 6, 0, -6)
NOISES = ("bw", "ma")
QRS_HALF_S = 0.05       # peak-to-peak QRS amplitude measured within +-50 ms of each reference beat
NOISE_CHUNK_S = 1.0     # noise power measured in 1 s chunks
TRIM = 0.05             # largest and smallest 5% of the measurements discarded


class GeneraliseError(ValueError):
    """Bad input to a generalisation check; the message names the file."""


# --- signal manipulation -------------------------------------------------------------------------

def resample_record(sig: np.ndarray, samples: np.ndarray, fs_in: float, fs_out: int):
    """Polyphase resampling of a record and its annotation positions (rounded, kept inside the signal)."""
    from scipy import signal as sps
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    out = sps.resample_poly(sig, ratio.numerator, ratio.denominator)
    pos = np.clip(np.round(np.asarray(samples) * (fs_out / fs_in)).astype(np.int64), 0, len(out) - 1)
    return out, pos


def _trimmed_mean(values: np.ndarray) -> float:
    values = np.sort(np.asarray(values, dtype=np.float64))
    k = int(len(values) * TRIM)
    kept = values[k:len(values) - k] if len(values) > 2 * k else values
    return float(kept.mean())


def signal_power(sig: np.ndarray, beats: np.ndarray, fs: float) -> float:
    """nst's signal 'power': (mean QRS peak-to-peak amplitude)^2 / 8, the power of a sine of that amplitude.

    Peak-to-peak amplitudes are taken within +-50 ms of each reference beat; the largest and smallest 5%
    are discarded before averaging.
    """
    half = max(1, int(round(QRS_HALF_S * fs)))
    beats = beats[(beats - half >= 0) & (beats + half < len(sig))]
    if len(beats) == 0:
        raise GeneraliseError("no reference beat lies inside the signal; cannot measure the QRS amplitude")
    windows = sig[beats[:, None] + np.arange(-half, half + 1)[None, :]]
    return _trimmed_mean(np.ptp(windows, axis=1)) ** 2 / 8.0


def noise_power(noise: np.ndarray, fs: float) -> float:
    """nst's noise power: mean-square amplitude (chunk mean removed) in 1 s chunks, trimmed mean over chunks."""
    n = max(1, int(round(NOISE_CHUNK_S * fs)))
    chunks = noise[: len(noise) // n * n].reshape(-1, n)
    if len(chunks) == 0:
        raise GeneraliseError("noise record shorter than one measurement chunk")
    return _trimmed_mean(((chunks - chunks.mean(axis=1, keepdims=True)) ** 2).mean(axis=1))


def noise_gain(sig: np.ndarray, beats: np.ndarray, noise: np.ndarray, fs: float, snr_db: float) -> float:
    """Scale of the noise so that 10 log10(S / (gain^2 N)) = snr_db, S and N as nst(1) measures them."""
    return float(np.sqrt(signal_power(sig, beats, fs) / (noise_power(noise, fs) * 10 ** (snr_db / 10.0))))


def add_noise(sig, beats, noise, fs, snr_db):
    """The record plus the noise (repeated from its start if shorter, as nst rewinds) at `snr_db`."""
    reps = int(np.ceil(len(sig) / len(noise)))
    noise = np.tile(noise, reps)[: len(sig)]
    noise = noise - noise.mean()  # nst cancels offsets: the baseline of the record is kept
    return sig + noise_gain(sig, beats, noise, fs, snr_db) * noise


def load_noise(noise_dir: Path, name: str, fs: float) -> np.ndarray:
    """Channel 0 of an NSTDB noise record, at rate `fs`."""
    import wfdb
    base = noise_dir / name
    if not base.with_suffix(".hea").exists():
        raise GeneraliseError(f"{base}.hea: noise record missing (robustness.mirror / --noise-dir)")
    try:
        rec = wfdb.rdrecord(str(base), channels=[0])
    except Exception as exc:
        raise GeneraliseError(f"{base}.dat: unreadable noise record: {exc}") from None
    noise = rec.p_signal[:, 0].astype(np.float64)
    if not np.isfinite(noise).all():
        raise GeneraliseError(f"{base}.dat: NaN samples in the noise record")
    if rec.fs != fs:
        noise, _ = resample_record(noise, np.zeros(0, np.int64), rec.fs, int(round(fs)))
    return noise


# --- one record ----------------------------------------------------------------------------------

def _write(folder: Path, name: str, sig: np.ndarray, fs: float, lead: str, samples, symbols) -> Path:
    import wfdb
    amp = max(float(np.abs(sig).max()), 1e-3)
    gain = min(1000.0, 30000.0 / amp)  # 16-bit: keep the signal inside the format's range
    wfdb.wrsamp(name, fs=fs, units=["mV"], sig_name=[lead], p_signal=sig[:, None], fmt=["16"], adc_gain=[gain],
                baseline=[0], write_dir=str(folder))
    wfdb.wrann(name, "atr", sample=np.asarray(samples, np.int64), symbol=list(symbols), fs=fs, write_dir=str(folder))
    return folder / name


def _analyse_written(path: Path, spec: dict, annotated: bool = False) -> predict.Analysed:
    sig = predict.read_input(path, predict.lead_order(spec, None), None, "atr", None)
    return predict.analyse(sig, spec, annotated_beats=annotated)


def variants(kind: str, raw: Path, record: str, spec: dict, options: dict) -> list:
    """[(key, Analysed)] of one record: every rate (rerecorded) or every noise and SNR (robustness)."""
    rec = read_record(raw / record, spec["lead"], tuple(spec["fallback_leads"]))
    beats = rec.ann_samples[np.array([s in AAMI_MAP for s in rec.ann_symbols], bool)]
    out = []
    with tempfile.TemporaryDirectory(prefix=f"generalise-{record}-") as tmp:
        tmp = Path(tmp)
        if kind == "rerecorded":
            base = _write(tmp, f"{record}_orig", rec.signal, rec.fs, rec.lead, rec.ann_samples, rec.ann_symbols)
            out.append(("reference_annotated", _analyse_written(base, spec, annotated=True)))
            for rate in options["rates"]:
                sig, pos = resample_record(rec.signal, rec.ann_samples, rec.fs, rate)
                path = _write(tmp, f"{record}_{rate}", sig, rate, options["lead_name"], pos, rec.ann_symbols)
                out.append((f"{rate}", _analyse_written(path, spec)))
                out.append((f"{rate}/annotated", _analyse_written(path, spec, annotated=True)))
        else:
            path = _write(tmp, f"{record}_clean", rec.signal, rec.fs, rec.lead, rec.ann_samples, rec.ann_symbols)
            out.append(("clean", _analyse_written(path, spec)))
            for name, noise in options["noises"].items():
                for snr in options["snr_db"]:
                    noisy = add_noise(rec.signal, beats, noise, rec.fs, snr)
                    path = _write(tmp, f"{record}_{name}{snr:+g}".replace("+", "p").replace("-", "m"), noisy,
                                  rec.fs, rec.lead, rec.ann_samples, rec.ann_symbols)
                    out.append((f"{name}/{snr:g}", _analyse_written(path, spec)))
    for _, a in out:  # the temporary files are gone: keep only what scoring needs
        a.sig.signal = np.zeros(0)
    return out


def _job(args):
    kind, raw, record, spec, options = args
    try:
        return variants(kind, raw, record, spec, options)
    except (RecordError, predict.PredictError, GeneraliseError) as exc:
        return exc


# --- pooling -------------------------------------------------------------------------------------

def pool_scores(scores: list, classes: list, scored: list) -> dict:
    """Detection Se/+P from summed counts; per-class and macro-F1 from the summed confusion matrix."""
    from pipeline.evaluation import class_metrics, macro_f1_from_confusion
    cm = np.sum([np.asarray(s["confusion"]) for s in scores], axis=0)
    out = {}
    dets = [s["detection"] for s in scores if s.get("detection")]
    if dets:
        tp, fn, fp = (sum(d[k] for d in dets) for k in ("tp", "fn", "fp"))
        out["detection"] = {"se": tp / (tp + fn) if tp + fn else None, "+p": tp / (tp + fp) if tp + fp else None,
                            "tp": tp, "fn": fn, "fp": fp}
    out["macro_f1"] = macro_f1_from_confusion(cm, [classes.index(c) for c in scored])
    out["per_class"] = {}
    for i, c in enumerate(classes):
        m = class_metrics(cm, i)
        out["per_class"][c] = {"se": m["se"], "+p": m["ppv"], "f1": m["f1"], "n": int(cm[i].sum())}
    out["n_matched"] = int(cm.sum())
    out["n_records"] = len(scores)
    return out


def nest(flat: dict) -> dict:
    """{"bw/24": x, "128/annotated": y} -> {"bw": {"24": x}, "128": {"annotated": y}}; a key that is both a
    leaf and a parent ("128" and "128/annotated") keeps its leaf's fields beside the child."""
    out: dict = {}
    for key, value in flat.items():
        node, parts = out, key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node.setdefault(parts[-1], {}).update(value)
    return out


def run(kind: str, model: str, raw: Path, records: list, options: dict, workers: int = 2, log=print) -> dict:
    pkg_path, origin = resolve(model)
    spec = read_spec(pkg_path)
    jobs = [(kind, raw, r, spec, options) for r in records]
    pool = None
    if workers > 1 and len(jobs) > 1:  # forked before Keras is imported here
        from ecg.prepare import die_with_parent
        pool = ProcessPoolExecutor(min(workers, len(jobs)), initializer=die_with_parent, initargs=(os.getpid(),))
        results = pool.map(_job, jobs)
    else:
        results = (_job(j) for j in jobs)
    from ecg.package import load_package
    try:
        package = load_package(pkg_path)
        per_key: dict = {}
        for record, res in zip(records, results):
            if isinstance(res, Exception):
                raise GeneraliseError(f"record {record}: {res}")
            for key, a in res:
                labels = package.predict(a.beat, a.rr).argmax(axis=1)
                per_key.setdefault(key, []).append(predict.self_score(a, labels, spec))
            log(f"ecg.generalise {kind}: record {record} done ({len(res)} variants)")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    classes, scored = list(spec["classes"]), list(spec["score_classes"])
    pooled = {key: pool_scores(scores, classes, scored) for key, scores in per_key.items()}
    return {"metrics": nest(pooled), "model": {"package": origin, **spec["provenance"]}, "records": records}


def plot_rows(metrics: dict) -> str:
    """CSV for the DVC plot: macro-F1 and S/V F1 against SNR, one line per noise."""
    lines = ["noise,snr_db,macro_f1,f1_S,f1_V"]
    for noise, levels in metrics.items():
        if noise == "clean":
            continue
        for snr, m in sorted(levels.items(), key=lambda kv: -float(kv[0])):
            f = lambda c: "" if m["per_class"][c]["f1"] is None else f"{m['per_class'][c]['f1']:.4f}"  # noqa: E731
            lines.append(f"{noise},{snr},{m['macro_f1'] if m['macro_f1'] is not None else ''},{f('S')},{f('V')}")
    return "\n".join(lines) + "\n"


def default_records(raw: Path) -> list:
    from ecg.splits import dechazal_split
    listing = raw / "RECORDS"
    if not listing.exists():
        raise GeneraliseError(f"{listing}: missing; run ingest_ecg or pass --records")
    ds2 = dechazal_split([r for r in listing.read_text().split() if r.isdigit()])["DS2"]
    if not ds2:
        raise GeneraliseError(f"{listing}: no DS2 record present")
    return [str(r) for r in ds2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ecg.generalise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("rerecorded", "robustness"))
    ap.add_argument("--model", default="models/ecg")
    ap.add_argument("--raw", default="data/raw/mitdb", help="folder of the WFDB records (with RECORDS)")
    ap.add_argument("--records", nargs="+", default=None, help="record names (default: the DS2 records present)")
    ap.add_argument("--rates", nargs="+", type=int, default=list(RATES))
    ap.add_argument("--lead-name", default="ECG", help="lead name written into the re-recorded headers")
    ap.add_argument("--noise-dir", default=os.environ.get("NSTDB_MIRROR"), help="folder with bw/ma (env NSTDB_MIRROR)")
    ap.add_argument("--noises", nargs="+", default=list(NOISES))
    ap.add_argument("--snr", nargs="+", type=float, default=list(SNR_DB))
    ap.add_argument("--out", required=True, help="metrics JSON")
    ap.add_argument("--info", default=None, help="JSON with the model's provenance, records and options")
    ap.add_argument("--plot", default=None, help="robustness: CSV of macro-F1 and S/V F1 against SNR")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    try:
        raw = Path(args.raw)
        records = args.records or default_records(raw)
        if args.kind == "rerecorded":
            bad = [r for r in args.rates if r < predict.MIN_FS]
            if bad:
                raise GeneraliseError(f"--rates {bad}: below {predict.MIN_FS:g} Hz")
            options = {"rates": args.rates, "lead_name": args.lead_name}
        else:
            if not args.noise_dir:
                raise GeneraliseError("robustness needs --noise-dir (or env NSTDB_MIRROR): folder with the NSTDB noise records")
            import wfdb
            fs = wfdb.rdheader(str(raw / records[0])).fs
            options = {"noises": {n: load_noise(Path(args.noise_dir), n, fs) for n in args.noises},
                       "snr_db": args.snr}
        result = run(args.kind, args.model, raw, records, options, args.workers)
    except (GeneraliseError, PackageError, RecordError, predict.PredictError) as exc:
        print(f"ecg.generalise: error: {exc}", file=sys.stderr)
        return 2
    write_json(args.out, result["metrics"])  # numbers only, like every metrics file
    if args.info:
        write_json(args.info, {"model": result["model"], "records": result["records"], "options": {
            k: v for k, v in vars(args).items() if k not in ("out", "info", "plot")},
            "wall_s": time.perf_counter() - t0})
    if args.plot and args.kind == "robustness":
        with atomic_path(args.plot, suffix=".csv") as tmp:
            tmp.write_text(plot_rows(result["metrics"]))
    print(f"ecg.generalise {args.kind}: {len(records)} records -> {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
