"""Stage prepare_ecg: records -> beat windows, RR features, AAMI labels, DS1/DS2 and folds.

Writes data/ecg/beats.npz (arrays), data/ecg/meta.json (what later stages need to know)
and the DVC metric reports/ecg/dataset.json. With --shards DIR it also writes the same beats as a
pipeline.shards shard set (whole records per shard, index.json with meta.json inside) for streamed
training; without it the outputs are byte-for-byte what they were.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from ecg import config
from ecg.beats import AAMI_CLASSES, RR_FEATURES, SCORE_CLASSES, extract_beats
from ecg.reader import RecordError, read_record
from ecg.splits import PACED, balanced_folds, dechazal_split
from pipeline.io import ensure_dir, save_npz, write_json


def die_with_parent(parent: int) -> None:
    """Pool worker initializer: SIGKILL this worker when the stage process dies (even by kill -9).

    Linux prctl(PR_SET_PDEATHSIG); elsewhere a no-op. If the parent is already gone, exit now.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def _one_record(rec: int, raw: Path, cfg: config.EcgData) -> dict:
    record = read_record(raw / str(rec), cfg.lead, cfg.fallback_leads)
    beats = extract_beats(record, cfg.fs, cfg.bandpass_hz, cfg.filter_order, cfg.half_window, cfg.local_rr_beats)
    beats["record"] = rec
    beats["lead"] = record.lead
    return beats


def available_records(raw: Path, cfg: config.EcgData) -> list[int]:
    listing = raw / "RECORDS"
    if not listing.exists():
        raise RecordError(f"{listing}: missing; run the ingest_ecg stage first")
    present = [int(r) for r in listing.read_text().split()]
    if cfg.records != "all":
        missing = sorted(set(cfg.records) - set(present))
        if missing:
            raise RecordError(f"{listing}: records {missing} requested in params but not ingested")
        present = [r for r in present if r in set(cfg.records)]
    if not present:
        raise RecordError(f"{listing}: empty record list")
    return present


def check_folds(n_folds: int, ds1_counts: dict[int, np.ndarray]) -> int:
    """ecg_data.n_folds must not exceed the DS1 records; warn when a scored class is too rare to reach every fold."""
    if n_folds > len(ds1_counts):
        raise RecordError(f"ecg_data.n_folds: {n_folds} patient-wise folds need at least {n_folds} DS1 records, "
                          f"have {len(ds1_counts)} ({sorted(ds1_counts)}); lower ecg_data.n_folds")
    for i, c in enumerate(SCORE_CLASSES):
        having = sum(1 for v in ds1_counts.values() if v[i] > 0)
        if having < n_folds:
            print(f"prepare_ecg: warning: ecg_data.n_folds={n_folds} but only {having} DS1 record(s) hold class "
                  f"{c}; some validation folds will have no {c} beats", file=sys.stderr)
    return n_folds


def prepare(cfg: config.EcgData, raw: Path, workers: int = 2):
    split = dechazal_split(available_records(raw, cfg))
    records = split["DS1"] + split["DS2"]
    if not split["DS1"] or not split["DS2"]:
        raise RecordError(f"{raw}: need records in both DS1 and DS2, have DS1={split['DS1']} DS2={split['DS2']}")
    work = partial(_one_record, raw=raw, cfg=cfg)
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            per_record = list(pool.map(work, records))
    else:
        per_record = [work(r) for r in records]
    k = len(AAMI_CLASSES)
    counts = {b["record"]: np.bincount(b["y"], minlength=k) for b in per_record}
    ds1_counts = {r: counts[r] for r in split["DS1"]}
    scored = [AAMI_CLASSES.index(c) for c in SCORE_CLASSES]
    n_folds = check_folds(cfg.n_folds, {r: c[scored] for r, c in ds1_counts.items()})
    folds = balanced_folds({r: c[scored] for r, c in ds1_counts.items()}, n_folds)
    fold_of = {r: f for f, recs in folds.items() for r in recs}
    arrays = {
        "x": np.concatenate([b["x"] for b in per_record]),
        "rr": np.concatenate([b["rr"] for b in per_record]),
        "y": np.concatenate([b["y"] for b in per_record]),
        "sample": np.concatenate([b["sample"] for b in per_record]),
        "record": np.concatenate([np.full(len(b["y"]), b["record"], np.int16) for b in per_record]),
    }
    in_ds2 = np.isin(arrays["record"], split["DS2"])
    arrays["split"] = in_ds2.astype(np.int8)  # 0 = DS1, 1 = DS2
    arrays["fold"] = np.array([fold_of.get(int(r), -1) for r in arrays["record"]], np.int8)
    summary = {
        name: {c: int(sum(counts[r][i] for r in split[name])) for i, c in enumerate(AAMI_CLASSES)}
        for name in ("DS1", "DS2")
    }
    for name, n in (("DS1", int((~in_ds2).sum())), ("DS2", int(in_ds2.sum()))):
        if n == 0:
            raise RecordError(f"{raw}: split {name} has 0 beats (records {split[name]}, "
                              f"ecg_data.window_ms={cfg.window_ms}); refusing to write an empty split")
    for f, recs in folds.items():
        if not np.isin(arrays["record"], recs).any():
            raise RecordError(f"{raw}: DS1 fold {f} (records {recs}) has 0 beats; refusing to write it")
    summary["records"] = split
    summary["folds"] = {str(f): recs for f, recs in folds.items()}
    meta = {
        "database": cfg.database, "fs": cfg.fs, "window_samples": 2 * cfg.half_window + 1,
        "r_peak_index": cfg.half_window, "window_ms": cfg.window_ms, "classes": list(AAMI_CLASSES),
        "score_classes": list(SCORE_CLASSES),
        "rr_features": list(RR_FEATURES), "bandpass_hz": list(cfg.bandpass_hz),
        "leads": {str(b["record"]): b["lead"] for b in per_record},
        "excluded_paced": list(PACED), "dropped_at_edges": {str(b["record"]): b["dropped_edge"] for b in per_record},
        "per_record_counts": {str(r): c.tolist() for r, c in counts.items()},
    }
    meta["raw_source_verified"] = raw_verified(raw)
    return arrays, meta, summary


def raw_verified(raw: Path) -> bool | None:
    """Whether ingest sha256-verified the raw files (its SOURCE.json); None if ingest wrote none."""
    path = raw / "SOURCE.json"
    if not path.exists():
        return None
    try:
        return bool(json.loads(path.read_text())["verify"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"{path}: malformed ingest record ({exc}); rerun ingest_ecg") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default=None, help="default: data/raw/<database>")
    ap.add_argument("--out", default="data/ecg")
    ap.add_argument("--metrics", default="reports/ecg/dataset.json")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--shards", default=None, metavar="DIR",
                    help="also write the beats as shards + index.json here (off by default)")
    ap.add_argument("--shard-size", type=int, default=0, metavar="N",
                    help="with --shards: pack whole records into shards of up to N beats (0: one shard per record)")
    args = ap.parse_args(argv)
    if args.shard_size < 0:
        ap.error(f"--shard-size must be >= 0, got {args.shard_size}")
    cfg = config.load(args.params)
    out = ensure_dir(args.out)
    ensure_dir(Path(args.metrics).parent)
    for stale in (*out.glob(".beats.npz.*.part*"), *out.glob(".meta.json.*.part*"),
                  *Path(args.metrics).parent.glob(f".{Path(args.metrics).name}.*.part*")):
        stale.unlink(missing_ok=True)  # left by a killed run (pipeline.io.atomic_path)
    t0 = time.perf_counter()
    arrays, meta, summary = prepare(cfg, Path(args.raw or f"data/raw/{cfg.database}"), args.workers)
    save_npz(out / "beats.npz", **arrays)
    write_json(out / "meta.json", meta)
    write_json(args.metrics, summary)
    if args.shards:
        from pipeline.shards import write_shards  # here: the default path does not import Keras
        index = write_shards(args.shards, arrays, shard_size=args.shard_size or None, by="record", meta=meta)
        print(f"prepare_ecg: {index['rows']} beats in {len(index['shards'])} shards under {args.shards}")
    print(f"prepare_ecg: {len(arrays['y'])} beats from {len(meta['leads'])} records in "
          f"{time.perf_counter() - t0:.1f} s; DS1 {summary['DS1']} DS2 {summary['DS2']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
