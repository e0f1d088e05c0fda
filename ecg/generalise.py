"""Generalisation checks of a model package through the full predict path (detected beats, no annotations used).

    python -m ecg.generalise rerecorded --params params.yaml --out metrics/ecg/rerecorded.json
    python -m ecg.generalise robustness --params params.yaml --noise-dir data/raw/nstdb \
        --out metrics/ecg/robustness.json --plot reports/plots/ecg/robustness.csv
    python -m ecg.generalise external --params params.yaml --out metrics/ecg/external.json

Knobs: params sections `ecg_generalise` (rates, lead_name, workers), `ecg_robustness` (noises, snr_db,
workers; source/mirror are ecg.ingest_noise's), `ecg_external` (databases: [{name, lead, mirror}]) and
`evaluate` (bootstrap, seed, ece_bins: the same record bootstrap as evaluate_ecg). Without --params the
flags or their defaults apply. The model is models/ecg (package_ecg) unless --model says otherwise.

* rerecorded: every DS2 record is written out again as a WFDB record at each rate (polyphase
  resampling, annotations rescaled) with its lead renamed, then analysed by ecg.predict: beats
  detected, classified, matched to the reference within 150 ms. Beside each rate, "<rate>/annotated":
  the same re-recorded signal classified on the reference beats; top-level "annotated": the original
  record on the reference beats (the setting of the DS2 metrics of evaluate_ecg). The gap between
  "<rate>/annotated" and "<rate>" is what detection costs (missed and extra beats, R-peak offsets
  changing windows and RR features); the gap between "annotated" and "<rate>/annotated" is what the
  rate costs.
* robustness: real noise records of the MIT-BIH Noise Stress Test Database (bw: baseline wander,
  ma: muscle artefact) are added to each record at each SNR (24, 18, 12, 6, 0, -6 dB), over the
  whole record, with the SNR defined as nst(1) does (see `noise_gain`); each noisy record is written as
  WFDB and analysed like above. "clean" is the record itself through the same path.
* external: every record of each configured database (record ids need not be integers) is analysed at
  its own rate and lead names: "detected" (detection Se/+P, classes of matched beats) and "annotated"
  (reference beats; plus ECE/Brier/NLL before and after the package's DS1-fitted temperature).
  No database configured: {}.

Figures are pooled over records: detection Se/+P from summed TP/FN/FP, per-class Se/+P/F1 and macro-F1
(the package's scored classes) from the summed confusion matrix of matched beats; "ci95" holds 95%
record-bootstrap intervals {lo, hi} of macro-F1 and each scored class's F1 (records resampled).
Nothing here is tuned on what it measures.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ecg import predict
from ecg.beats import AAMI_MAP
from ecg.ingest_noise import RobustnessParams
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


# --- params (params.yaml sections ecg_generalise, ecg_robustness, ecg_external; bootstrap from evaluate) --

def _check_workers(workers: int) -> None:
    from pipeline.params import ParamsError
    if workers < 0:
        raise ParamsError(f"workers must be >= 0, got {workers}")


@dataclass(frozen=True)
class GeneraliseParams:
    """`ecg_generalise`: the re-recorded DS2 check."""
    rates: tuple[int, ...] = RATES          # Hz the DS2 records are written out again at
    lead_name: str = "ECG"                  # the lead's name in the re-recorded headers
    workers: int = 2                        # processes reading and detecting (0/1 = this process)

    def validate(self) -> None:
        from pipeline.params import ParamsError
        bad = [r for r in self.rates if r < predict.MIN_FS]
        if not self.rates or bad:
            raise ParamsError(f"rates must be a non-empty list of rates >= {predict.MIN_FS:g} Hz, got {list(self.rates)}")
        if not self.lead_name.strip():
            raise ParamsError("lead_name must not be empty")
        _check_workers(self.workers)


@dataclass(frozen=True)
class ExternalDb:
    """One entry of `ecg_external.databases`: every record of it is a test record."""
    name: str                               # PhysioNet slug, e.g. incartdb, svdb
    lead: str | None = None                 # lead to analyse (null: predict's documented order)
    mirror: str | None = None               # folder of its WFDB records (null: data/raw/<name>)
    annotations: str = "atr"                # reference beat annotation extension

    def folder(self) -> Path:
        return Path(self.mirror) if self.mirror else Path("data/raw") / self.name


@dataclass(frozen=True)
class ExternalParams:
    """`ecg_external`: other annotated databases the packaged model is scored on (default none)."""
    databases: tuple[ExternalDb, ...] = ()

    def validate(self) -> None:
        from pipeline.params import ParamsError
        names = [d.name for d in self.databases]
        if len(set(names)) != len(names):
            raise ParamsError(f"database names must be unique, got {names}")


SECTIONS = {"rerecorded": ("ecg_generalise", GeneraliseParams), "robustness": ("ecg_robustness", RobustnessParams),
            "external": ("ecg_external", ExternalParams)}


@dataclass(frozen=True)
class ScoringParams:
    """The `evaluate` section (bootstrap, ece_bins, seed), read here with the same keys, defaults and checks as
    pipeline.evaluate.EvaluateParams (tested equal) without importing the evaluate stage's modules (plots,
    tracking, training), which would make these long stages depend on them."""
    bootstrap: int = 1000
    ece_bins: int = 15
    seed: int = 42

    def validate(self) -> None:
        from pipeline.params import ParamsError
        if self.bootstrap < 1 or self.ece_bins < 1:
            raise ParamsError(f"bootstrap and ece_bins must be >= 1, got {self.bootstrap}, {self.ece_bins}")


def load_params(kind: str, path):
    """(the kind's section, the `evaluate` section: bootstrap, seed, ece_bins) of a params file."""
    from pipeline.params import load_section
    name, cls = SECTIONS[kind]
    return load_section(name, cls, path), load_section("evaluate", ScoringParams, path)


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
    """[(key, Analysed)] of one record: every rate (rerecorded), every noise and SNR (robustness), or the
    record as it is on detected and on reference beats (external)."""
    if kind == "external":
        path = raw / record
        order = predict.lead_order(spec, None)
        if options.get("lead"):
            order = [options["lead"]] + [o for o in order if o.lower() != options["lead"].lower()]
        sig = predict.read_input(path, order, None, options.get("annotations", "atr"), None)
        out = [("detected", predict.analyse(sig, spec)), ("annotated", predict.analyse(sig, spec, annotated_beats=True))]
        sig.signal = np.zeros(0)
        return out
    rec = read_record(raw / record, spec["lead"], tuple(spec["fallback_leads"]))
    beats = rec.ann_samples[np.array([s in AAMI_MAP for s in rec.ann_symbols], bool)]
    out = []
    with tempfile.TemporaryDirectory(prefix=f"generalise-{Path(record).name}-") as tmp:
        tmp = Path(tmp)
        stem = Path(record).name
        if kind == "rerecorded":
            base = _write(tmp, f"{stem}_orig", rec.signal, rec.fs, rec.lead, rec.ann_samples, rec.ann_symbols)
            out.append(("annotated", _analyse_written(base, spec, annotated=True)))
            for rate in options["rates"]:
                sig, pos = resample_record(rec.signal, rec.ann_samples, rec.fs, rate)
                path = _write(tmp, f"{stem}_{rate}", sig, rate, options["lead_name"], pos, rec.ann_symbols)
                out.append((f"{rate}", _analyse_written(path, spec)))
                out.append((f"{rate}/annotated", _analyse_written(path, spec, annotated=True)))
        else:
            path = _write(tmp, f"{stem}_clean", rec.signal, rec.fs, rec.lead, rec.ann_samples, rec.ann_symbols)
            out.append(("clean", _analyse_written(path, spec)))
            for name, noise in options["noises"].items():
                for snr in options["snr_db"]:
                    noisy = add_noise(rec.signal, beats, noise, rec.fs, snr)
                    path = _write(tmp, f"{stem}_{name}{snr:+g}".replace("+", "p").replace("-", "m"), noisy,
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

def _interval(ci) -> dict | None:
    return None if ci is None else {"lo": float(ci[0]), "hi": float(ci[1])}


def record_bootstrap(confusions: list, classes: list, scored: list, n_boot: int, seed: int) -> dict:
    """95% record-bootstrap intervals of macro-F1 and each scored class's F1 from per-record confusions.

    Records are resampled with replacement (pipeline.evaluation.bootstrap_confusion_ci: the same draws
    as evaluate_ecg for the same seed and record count); intervals are {lo, hi}, null when undefined.
    """
    from pipeline.evaluation import bootstrap_confusion_ci, class_metrics, macro_f1_from_confusion
    k = len(classes)
    y_true, y_pred, groups = [], [], []
    for g, cm in enumerate(confusions):
        cm = np.asarray(cm, np.int64).reshape(k, k)
        t, p = np.nonzero(cm)
        counts = cm[t, p]
        y_true.append(np.repeat(t, counts))
        y_pred.append(np.repeat(p, counts))
        groups.append(np.full(int(counts.sum()), g))
    y_true, y_pred, groups = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (y_true, y_pred, groups))
    idx = [classes.index(c) for c in scored]
    if len(y_true) == 0:
        return {"macro_f1": None, "per_class": {c: {"f1": None} for c in scored}}
    fns = {"macro_f1": lambda c: macro_f1_from_confusion(c, idx)}
    for c, i in zip(scored, idx):
        fns[f"{c}\0f1"] = lambda cm, i=i: class_metrics(cm, i)["f1"]
    ci = bootstrap_confusion_ci(y_true, y_pred, groups, k, fns, n_boot=n_boot, seed=seed)
    return {"macro_f1": _interval(ci["macro_f1"]),
            "per_class": {c: {"f1": _interval(ci[f"{c}\0f1"])} for c in scored}}


def pool_scores(scores: list, classes: list, scored: list, n_boot: int = 1000, seed: int = 42) -> dict:
    """Detection Se/+P from summed counts; per-class and macro-F1 from the summed confusion matrix of
    matched beats; record-bootstrap 95% CIs of macro-F1 and the scored classes' F1."""
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
    out["ci95"] = record_bootstrap([s["confusion"] for s in scores], classes, scored, n_boot, seed)
    out["n_matched"] = int(cm.sum())
    out["n_records"] = len(scores)
    return out


def calibration(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, temperature: float, n_bins: int) -> dict:
    """ECE, Brier and NLL before and after the package's temperature (fitted on DS1 out-of-fold only)."""
    from pipeline import calibration as cal
    if len(y) == 0:
        return {}
    return {"ece": {"before": cal.ece(raw, y, n_bins), "after": cal.ece(calibrated, y, n_bins)},
            "brier": {"before": cal.brier(raw, y), "after": cal.brier(calibrated, y)},
            "nll": {"before": cal.nll(raw, y), "after": cal.nll(calibrated, y)},
            "temperature": float(temperature)}


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


def run(kind: str, model: str, raw: Path, records: list, options: dict, workers: int = 2, log=print,
        n_boot: int = 1000, seed: int = 42, ece_bins: int = 15) -> dict:
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
    calib: dict = {}
    try:
        package = load_package(pkg_path)
        per_key: dict = {}
        for record, res in zip(records, results):
            if isinstance(res, Exception):
                raise GeneraliseError(f"record {record}: {res}")
            for key, a in res:
                raw_p = package.predict(a.beat, a.rr, calibrated=False)
                labels = raw_p.argmax(axis=1)  # the temperature never changes the argmax
                per_key.setdefault(key, []).append(predict.self_score(a, labels, spec))
                if kind == "external" and a.y_ref is not None:
                    from pipeline.calibration import apply_temperature
                    got = calib.setdefault(key, {"y": [], "raw": [], "cal": []})
                    got["y"].append(a.y_ref)
                    got["raw"].append(raw_p)
                    got["cal"].append(apply_temperature(raw_p, spec["temperature"]))
            log(f"ecg.generalise {kind}: record {record} done ({len(res)} variants)")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    classes, scored = list(spec["classes"]), list(spec["score_classes"])
    pooled = {key: pool_scores(scores, classes, scored, n_boot, seed) for key, scores in per_key.items()}
    for key, got in calib.items():
        pooled[key].update(calibration(np.concatenate(got["y"]), np.concatenate(got["raw"]),
                                       np.concatenate(got["cal"]), spec["temperature"], ece_bins))
    return {"metrics": nest(pooled), "model": {"package": origin, **spec["provenance"]}, "records": records}


def plot_rows(metrics: dict) -> str:
    """CSV for the DVC plot: macro-F1 and S/V F1 against SNR, one line per noise (long format)."""
    lines = ["noise,snr_db,macro_f1,f1_S,f1_V"]
    for noise, levels in metrics.items():
        if noise == "clean":
            continue
        for snr, m in sorted(levels.items(), key=lambda kv: -float(kv[0])):
            f = lambda c: "" if m["per_class"][c]["f1"] is None else f"{m['per_class'][c]['f1']:.4f}"  # noqa: E731
            lines.append(f"{noise},{snr},{'' if m['macro_f1'] is None else format(m['macro_f1'], '.4f')},"
                         f"{f('S')},{f('V')}")
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


def database_records(folder: Path) -> list:
    """Every record of an external database: its RECORDS list, else every *.hea (ids need not be integers)."""
    if not folder.is_dir():
        raise GeneraliseError(f"{folder}: database folder missing (ecg_external.databases[].mirror, or fetch it "
                              f"into data/raw/<name>)")
    listing = folder / "RECORDS"
    records = listing.read_text().split() if listing.exists() else sorted(p.stem for p in folder.glob("*.hea"))
    if not records:
        raise GeneraliseError(f"{folder}: no records (no RECORDS list and no *.hea)")
    return records


def external(cfg: ExternalParams, model: str, workers: int, n_boot: int, seed: int, ece_bins: int, log=print) -> dict:
    """{"<database>": {"detected": {...}, "annotated": {... ece/brier/nll before/after}}}; {} when none is set."""
    out, info = {}, {}
    for db in cfg.databases:
        folder = db.folder()
        records = database_records(folder)
        res = run("external", model, folder, records, {"lead": db.lead, "annotations": db.annotations}, workers,
                  log, n_boot, seed, ece_bins)
        out[db.name] = res["metrics"]
        info[db.name] = {"folder": str(folder), "records": records, "lead": db.lead, "model": res["model"]}
    return {"metrics": out, "databases": info}


def _pick(flag, section, name, default):
    if flag is not None:
        return flag
    if section is not None and hasattr(section, name):
        return getattr(section, name)
    return default


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ecg.generalise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("rerecorded", "robustness", "external"))
    ap.add_argument("--params", default=None,
                    help="params file: knobs from ecg_generalise / ecg_robustness / ecg_external and the bootstrap "
                         "from evaluate (flags below override; without it, the flags or their defaults)")
    ap.add_argument("--model", default="models/ecg")
    ap.add_argument("--raw", default="data/raw/mitdb", help="folder of the WFDB records (with RECORDS)")
    ap.add_argument("--records", nargs="+", default=None, help="record names (default: the DS2 records present)")
    ap.add_argument("--rates", nargs="+", type=int, default=None, help=f"default {list(RATES)}")
    ap.add_argument("--lead-name", default=None, help="lead name written into the re-recorded headers (default ECG)")
    ap.add_argument("--noise-dir", default=None,
                    help="folder with the noise records (default: data/raw/nstdb written by ecg.ingest_noise)")
    ap.add_argument("--noises", nargs="+", default=None, help=f"default {list(NOISES)}")
    ap.add_argument("--snr", nargs="+", type=float, default=None, help=f"default {list(SNR_DB)}")
    ap.add_argument("--bootstrap", type=int, default=None, help="record-bootstrap resamples (default 1000)")
    ap.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 42)")
    ap.add_argument("--out", required=True, help="metrics JSON")
    ap.add_argument("--info", default=None, help="JSON with the model's provenance, records and options")
    ap.add_argument("--plot", default=None, help="robustness: CSV of macro-F1 and S/V F1 against SNR")
    ap.add_argument("--workers", type=int, default=None, help="processes reading and detecting (default 2)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    from pipeline.params import ParamsError
    try:
        section, evaluate = load_params(args.kind, args.params) if args.params else (None, None)
    except ParamsError as exc:
        print(f"ecg.generalise: error: {exc}", file=sys.stderr)
        return 2
    n_boot = _pick(args.bootstrap, evaluate, "bootstrap", 1000)
    seed = _pick(args.seed, evaluate, "seed", 42)
    ece_bins = evaluate.ece_bins if evaluate is not None else 15
    workers = _pick(args.workers, section, "workers", min(2, os.cpu_count() or 1))
    options: dict = {}
    try:
        if args.kind == "external":
            cfg = section if section is not None else ExternalParams()
            result = external(cfg, args.model, workers, n_boot, seed, ece_bins)
            records = result["databases"]
        else:
            raw = Path(args.raw)
            records = args.records or default_records(raw)
            if args.kind == "rerecorded":
                rates = list(_pick(args.rates, section, "rates", RATES))
                bad = [r for r in rates if r < predict.MIN_FS]
                if bad:
                    raise GeneraliseError(f"--rates {bad}: below {predict.MIN_FS:g} Hz")
                options = {"rates": rates, "lead_name": _pick(args.lead_name, section, "lead_name", "ECG")}
            else:
                noise_dir = Path(args.noise_dir or "data/raw/nstdb")
                import wfdb
                fs = wfdb.rdheader(str(raw / records[0])).fs
                options = {"noises": {n: load_noise(noise_dir, n, fs) for n in _pick(args.noises, section, "noises", NOISES)},
                           "snr_db": [float(x) for x in _pick(args.snr, section, "snr_db", SNR_DB)]}
            result = run(args.kind, args.model, raw, records, options, workers, n_boot=n_boot, seed=seed)
    except (GeneraliseError, PackageError, RecordError, predict.PredictError) as exc:
        print(f"ecg.generalise: error: {exc}", file=sys.stderr)
        return 2
    write_json(args.out, result["metrics"])  # numbers only, like every metrics file
    if args.info:
        write_json(args.info, {"model": result.get("model"), "records": records, "options": {
            "rates": options.get("rates"), "lead_name": options.get("lead_name"),
            "noises": list(options.get("noises", {})), "snr_db": options.get("snr_db"),
            "bootstrap": n_boot, "seed": seed, "workers": workers}, "wall_s": time.perf_counter() - t0})
    if args.plot and args.kind == "robustness":
        with atomic_path(args.plot, suffix=".csv") as tmp:
            tmp.write_text(plot_rows(result["metrics"]))
    print(f"ecg.generalise {args.kind}: {len(records)} records/databases -> {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
