"""Integration tests on the real MIT-BIH database (local mirror; skipped where absent)."""
from __future__ import annotations

import json
import hashlib
from pathlib import Path

import numpy as np
import pytest
import wfdb

from tests.conftest import committed_text

from ecg import ingest, prepare
from ecg.beats import AAMI_CLASSES, AAMI_MAP, bandpass
from ecg.reader import read_record
from ecg.splits import DS1, DS2
from pipeline.io import read_json

REPO = Path(__file__).resolve().parents[1]
MITDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb"
RECORDS = (101, 106, 100, 103)  # 101, 106 in DS1; 100, 103 in DS2
# de Chazal et al. 2004, Table I: beats per AAMI class in DS1 and DS2.
DECHAZAL = {"DS1": {"N": 45866, "S": 944, "V": 3788, "F": 415, "Q": 8},
            "DS2": {"N": 44259, "S": 1837, "V": 3221, "F": 388, "Q": 7}}

needs_mitdb = pytest.mark.skipif(not (MITDB / "RECORDS").exists(), reason=f"no MIT-BIH mirror at {MITDB}")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mitdb")
    params = tmp / "params.yaml"
    params.write_text(f"ecg_data:\n  records: {list(RECORDS)}\n  mirror: \"{MITDB}\"\n  n_folds: 2\n")
    raw, out, metrics = tmp / "raw", tmp / "ecg", tmp / "dataset.json"
    from ecg import config
    stats = ingest.ingest(config.load(params), raw, ingest.MirrorSource(MITDB))
    prepare.main(["--params", str(params), "--raw", str(raw), "--out", str(out), "--metrics", str(metrics),
                  "--workers", "1"])
    with np.load(out / "beats.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return {"stats": stats, "raw": raw, "arrays": arrays, "meta": read_json(out / "meta.json"),
            "summary": read_json(metrics)}


@needs_mitdb
def test_ingest_verifies_sha256(prepared):
    stats, raw = prepared["stats"], prepared["raw"]
    assert stats == {"records": 4, "fetched": 12, "kept": 0, "verified": True, "stale_removed": 0}
    sums = ingest.parse_sums((MITDB / "SHA256SUMS.txt").read_text())
    names = ingest.record_files([str(r) for r in RECORDS])
    assert sorted(p.name for p in raw.iterdir()) == sorted(names + ["RECORDS", "SHA256SUMS.txt", "SOURCE.json"])
    for name in names:
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == sums[name], name
    assert ingest.parse_sums((raw / "SHA256SUMS.txt").read_text()) == {n: sums[n] for n in names}
    source = read_json(raw / "SOURCE.json")
    assert source["source"] == str(MITDB) and source["verify"] is True
    assert source["checksum_list_sha256"] == hashlib.sha256((MITDB / "SHA256SUMS.txt").read_bytes()).hexdigest()
    assert prepared["meta"]["raw_source_verified"] is True


@needs_mitdb
def test_counts_equal_annotations_minus_edge_beats(prepared):
    meta, arrays, raw = prepared["meta"], prepared["arrays"], prepared["raw"]
    half = meta["r_peak_index"]
    for rec in RECORDS:
        ann = wfdb.rdann(str(raw / str(rec)), "atr")
        n_samples = wfdb.rdheader(str(raw / str(rec))).sig_len
        beats = [(s, AAMI_CLASSES.index(AAMI_MAP[sym])) for s, sym in zip(ann.sample, ann.symbol) if sym in AAMI_MAP]
        dropped = meta["dropped_at_edges"][str(rec)]
        counts = meta["per_record_counts"][str(rec)]
        assert sum(counts) == len(beats) - dropped
        inner = [(s, c) for s, c in beats[1:-1] if s - half >= 0 and s + half < n_samples]
        assert len(inner) == len(beats) - dropped
        assert counts == np.bincount([c for _, c in inner], minlength=5).tolist()
        sel = arrays["record"] == rec
        assert np.bincount(arrays["y"][sel], minlength=5).tolist() == counts
        np.testing.assert_array_equal(arrays["sample"][sel], [s for s, _ in inner])


@needs_mitdb
def test_splits_and_folds(prepared):
    a, summary = prepared["arrays"], prepared["summary"]
    assert summary["records"] == {"DS1": [101, 106], "DS2": [100, 103]}
    fold_lists = list(summary["folds"].values())
    assert sorted(r for f in fold_lists for r in f) == [101, 106]  # each DS1 record in exactly one fold
    for rec in RECORDS:
        sel = a["record"] == rec
        assert sel.any()
        splits, folds = set(a["split"][sel].tolist()), set(a["fold"][sel].tolist())
        assert len(splits) == 1 and len(folds) == 1  # no record in two splits or folds
        if rec in DS2:
            assert splits == {1} and folds == {-1}
        else:
            assert rec in DS1 and splits == {0}
            (fold,) = folds
            assert rec in summary["folds"][str(fold)]


@needs_mitdb
def test_windows_centred_on_annotated_r_peak(prepared):
    meta, a, raw = prepared["meta"], prepared["arrays"], prepared["raw"]
    r = meta["r_peak_index"]
    assert r == round(700 / 2000 * 360) == 126
    assert a["x"].shape == (len(a["y"]), meta["window_samples"]) and meta["window_samples"] == 2 * r + 1
    assert meta["leads"] == {str(rec): "MLII" for rec in RECORDS}
    # The window's centre sample is the filtered signal at the annotated R peak.
    rec = read_record(raw / "100", "MLII")
    sig = bandpass(rec.signal, 360, tuple(meta["bandpass_hz"]), 2)
    sel = a["record"] == 100
    np.testing.assert_allclose(a["x"][sel][:, r], sig[a["sample"][sel]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["x"][sel][:, 0], sig[a["sample"][sel] - r], rtol=1e-5, atol=1e-6)
    # ... and the QRS extreme sits there for nearly all beats (within 30 ms).
    off = np.abs(np.abs(a["x"]).argmax(axis=1) - r)
    assert np.mean(off <= 11) > 0.95


def test_committed_dataset_matches_dechazal():
    summary = json.loads(committed_text("reports/ecg/dataset.json"))  # as committed, whatever an experiment wrote
    for ds, table in DECHAZAL.items():
        for c in ("N", "S", "V", "F"):
            assert abs(summary[ds][c] - table[c]) <= 0.005 * table[c], (ds, c, summary[ds][c], table[c])
        assert abs(summary[ds]["Q"] - table["Q"]) <= 1, (ds, summary[ds]["Q"])
    ds1, ds2 = summary["records"]["DS1"], summary["records"]["DS2"]
    assert sorted(ds1) == sorted(DS1) and sorted(ds2) == sorted(DS2)
    assert not set(ds1) & set(ds2)
    folds = [r for recs in summary["folds"].values() for r in recs]
    assert sorted(folds) == sorted(ds1) and all(summary["folds"].values())
