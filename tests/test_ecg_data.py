"""Unit tests of the ECG data path on small synthetic WFDB records written by the tests."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecg import config, ingest, prepare
from ecg.beats import AAMI_CLASSES, class_index, extract_beats, rr_features
from ecg.ingest import IngestError, MirrorSource
from ecg.reader import RecordError, read_record
from ecg.splits import DS1, DS2, PACED, balanced_folds, dechazal_split
from pipeline.io import OutputError, ensure_dir, save_npz
from pipeline.params import ParamsError, from_dict

BAND, ORDER, LOCAL = (0.5, 40.0), 2, 10
# Beat symbols cycled over the synthetic R peaks (every AAMI class present).
BEAT_CYCLE = ("N", "N", "A", "V", "N", "F", "Q", "N", "L", "E")


def _peaks(fs: float, seconds: float) -> np.ndarray:
    """Irregular but deterministic R-peak positions, RR 0.7-0.95 s, >= 0.6 s from both ends."""
    n = int(seconds * fs)
    out, t, k = [], 0.6, 0
    while t < seconds - 0.6:
        out.append(int(round(t * fs)))
        t += 0.8 + 0.15 * np.sin(1.7 * k)
        k += 1
    return np.array([p for p in out if p < n], dtype=np.int64)


def make_record(folder: Path, name: str, fs: int = 360, seconds: float = 30.0, fmt: str = "212",
                sig_name=("MLII", "V5"), beat_symbols=None, nan_run=None):
    """Write <folder>/<name>.hea/.dat/.atr: Gaussian R peaks on baseline drift; return (peaks, symbols)."""
    n = int(seconds * fs)
    t = np.arange(n) / fs
    peaks = _peaks(fs, seconds)
    sigma = 0.010 * fs  # ~10 ms wide R wave
    qrs = np.zeros(n)
    for p in peaks:
        lo, hi = max(0, p - int(6 * sigma)), min(n, p + int(6 * sigma) + 1)
        qrs[lo:hi] += np.exp(-0.5 * ((np.arange(lo, hi) - p) / sigma) ** 2)
    drift = 0.4 * np.sin(2 * np.pi * 0.15 * t) + 0.1 * t / seconds
    chans = [1.2 * qrs + drift, -0.6 * qrs + 0.5 * drift]  # second lead: inverted, smaller R
    p_signal = np.stack(chans[: len(sig_name)] + [0.3 * qrs + drift] * (len(sig_name) - 2), axis=1)
    if nan_run is not None:
        p_signal[nan_run[0]:nan_run[1], 0] = np.nan
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(sig_name), sig_name=list(sig_name), p_signal=p_signal,
                fmt=[fmt] * len(sig_name), adc_gain=[200.0] * len(sig_name), baseline=[0] * len(sig_name),
                write_dir=str(folder))
    symbols = list(beat_symbols) if beat_symbols is not None else [BEAT_CYCLE[i % len(BEAT_CYCLE)]
                                                                   for i in range(len(peaks))]
    # Non-beat annotations: a rhythm change at the start, a noise marker between two beats.
    ann = sorted([(int(p), s) for p, s in zip(peaks, symbols)]
                 + [(1, "+"), (int((peaks[3] + peaks[4]) // 2), "~")])
    wfdb.wrann(name, "atr", np.array([a[0] for a in ann]), symbol=[a[1] for a in ann], write_dir=str(folder))
    return peaks, np.array(symbols, dtype=object)


def beats_of(folder: Path, name: str, fs: int = 360, window_ms: float = 700.0, lead="MLII", fallbacks=()):
    rec = read_record(folder / name, lead, fallbacks)
    half = config.EcgData(fs=fs, window_ms=window_ms).half_window
    return rec, half, extract_beats(rec, fs, BAND, ORDER, half, LOCAL)


# ---------------------------------------------------------------- windows, RR, labels

@pytest.mark.parametrize("window_ms,fs,half", [(700, 360, 126), (701, 360, 126), (705, 360, 127),
                                               (250, 360, 45), (700, 128, 45), (600, 250, 75)])
def test_half_window_is_rounded_half_of_window(window_ms, fs, half):
    cfg = config.EcgData(window_ms=window_ms, fs=fs)
    assert cfg.half_window == half == round(window_ms / 2000 * fs)


@pytest.mark.parametrize("fmt", ["212", "16"])
def test_windows_are_centred_on_r_peaks(tmp_path, fmt):
    peaks, symbols = make_record(tmp_path, "100", fmt=fmt)
    rec, half, b = beats_of(tmp_path, "100")
    assert rec.lead == "MLII" and rec.fs == 360
    assert b["x"].shape == (len(peaks) - 2, 2 * half + 1) and b["x"].dtype == np.float32
    np.testing.assert_array_equal(b["sample"], peaks[1:-1])  # first and last beats dropped
    assert b["dropped_edge"] == 2
    argmax = b["x"].argmax(axis=1)
    assert np.all(np.abs(argmax - half) <= 1), argmax - half
    # Labels follow the beat annotations (non-beat '+', '~' are not beats).
    expected = [AAMI_CLASSES.index({"L": "N", "E": "V", "A": "S"}.get(s, s)) for s in symbols[1:-1]]
    np.testing.assert_array_equal(b["y"], expected)
    # Baseline drift is filtered out: windows are zero-mean-ish away from the peak.
    assert abs(float(np.median(b["x"][:, :20]))) < 0.05


def test_beats_too_close_to_an_edge_are_dropped(tmp_path):
    make_record(tmp_path, "100", seconds=10)
    rec = read_record(tmp_path / "100", "MLII")
    # Annotation at sample 40 (second beat) cannot have a full +-126 window: dropped.
    samples = np.array([5, 40, 400, 700, 1000, 3500 - 60, 3500 - 5])
    rec = type(rec)(rec.name, rec.fs, rec.lead, rec.signal[:3500], samples, np.array(["N"] * len(samples), object))
    b = extract_beats(rec, 360, BAND, ORDER, 126, LOCAL)
    np.testing.assert_array_equal(b["sample"], [400, 700, 1000])
    assert b["dropped_edge"] == 4  # first, last, and two edge beats
    assert len(b["rr"]) == len(b["y"]) == len(b["x"]) == 3


def test_rr_features_match_hand_calculation():
    fs = 100
    beats = np.array([0, 100, 220, 310, 460, 550])  # RR = 1.0, 1.2, 0.9, 1.5, 0.9 s; record mean 1.1
    got = rr_features(beats, fs, local_beats=2)
    m = 1.1
    expected = [
        # pre/local, post/local, pre/record, post/record, local/record
        [1.0 / 1.0, 1.2 / 1.0, 1.0 / m, 1.2 / m, 1.0 / m],      # beat 1: local = mean(1.0)
        [1.2 / 1.1, 0.9 / 1.1, 1.2 / m, 0.9 / m, 1.1 / m],      # beat 2: local = mean(1.0, 1.2)
        [0.9 / 1.05, 1.5 / 1.05, 0.9 / m, 1.5 / m, 1.05 / m],   # beat 3: local = mean(1.2, 0.9)
        [1.5 / 1.2, 0.9 / 1.2, 1.5 / m, 0.9 / m, 1.2 / m],      # beat 4: local = mean(0.9, 1.5)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got.shape == (len(beats) - 2, 5)  # first and last beat have no pre/post RR


def test_rr_features_in_extract_beats_ignore_non_beat_annotations(tmp_path):
    peaks, _ = make_record(tmp_path, "100")
    _, _, b = beats_of(tmp_path, "100")
    np.testing.assert_allclose(b["rr"], rr_features(peaks, 360, LOCAL), rtol=1e-6)


@pytest.mark.parametrize("symbols,cls", [("NLRej", "N"), ("AaJS", "S"), ("VE", "V"), ("F", "F"), ("/fQ", "Q")])
def test_aami_mapping(symbols, cls):
    idx = class_index(np.array(list(symbols), dtype=object), "x.atr")
    assert [AAMI_CLASSES[i] for i in idx] == [cls] * len(symbols)


def test_non_beat_symbols_are_skipped():
    idx = class_index(np.array(list("+~|\"x![]()ptu^sT"), dtype=object), "x.atr")
    assert np.all(idx == -1)


def test_unknown_symbol_raises_naming_atr_and_symbol():
    """Every code of WFDB's table is mapped or known as a non-beat (tests/test_aami_table.py); a code outside
    it (wfdb.wrann cannot even write one) is an error naming the file and the code."""
    with pytest.raises(RecordError, match=r"100\.atr.*'Z'"):
        class_index(np.array(["N", "Z", "N"], dtype=object), "100.atr")


# ---------------------------------------------------------------- resampling, leads

def test_resampling_from_128_hz(tmp_path):
    peaks, _ = make_record(tmp_path, "100", fs=128)
    rec, half, b = beats_of(tmp_path, "100", fs=360)
    assert rec.fs == 128 and half == 126
    assert b["x"].shape[1] == 2 * 126 + 1
    np.testing.assert_array_equal(b["sample"], np.round(peaks[1:-1] * 360 / 128).astype(int))
    assert np.all(np.abs(b["x"].argmax(axis=1) - half) <= 2)
    # RR features are in seconds, so invariant to the rate.
    np.testing.assert_allclose(b["rr"], rr_features(peaks, 128, LOCAL), rtol=2e-2)


def test_lead_fallback_uses_first_present_fallback(tmp_path):
    make_record(tmp_path, "100", sig_name=("V1", "V5"))
    rec = read_record(tmp_path / "100", "MLII", ("V5", "V1", "V2", "V4"))
    assert rec.lead == "V5"
    v5 = wfdb.rdrecord(str(tmp_path / "100")).p_signal[:, 1]
    np.testing.assert_array_equal(rec.signal, v5)


def test_no_usable_lead_names_header(tmp_path):
    make_record(tmp_path, "100", sig_name=("V1", "V2"))
    with pytest.raises(RecordError, match=r"100\.hea.*no lead"):
        read_record(tmp_path / "100", "MLII", ("V5",))


# ---------------------------------------------------------------- bad input

def test_truncated_dat_names_file(tmp_path):
    make_record(tmp_path, "100")
    dat = tmp_path / "100.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 2])
    with pytest.raises(RecordError, match=r"100\.dat: truncated"):
        read_record(tmp_path / "100", "MLII")


def test_header_sample_count_mismatch_names_files(tmp_path):
    make_record(tmp_path, "100", seconds=10)
    hea = tmp_path / "100.hea"
    lines = hea.read_text().splitlines()
    first = lines[0].split()
    assert first[3] == "3600"
    first[3] = "3700"
    hea.write_text("\n".join([" ".join(first)] + lines[1:]) + "\n")
    with pytest.raises(RecordError, match=r"100\.dat.*mismatch.*100\.hea declares 3700"):
        read_record(tmp_path / "100", "MLII")


def test_missing_atr_names_file(tmp_path):
    make_record(tmp_path, "100")
    (tmp_path / "100.atr").unlink()
    with pytest.raises(RecordError, match=r"100\.atr: annotation file missing"):
        read_record(tmp_path / "100", "MLII")


def test_missing_header_names_file(tmp_path):
    with pytest.raises(RecordError, match=r"100\.hea: header file missing"):
        read_record(tmp_path / "100", "MLII")


def test_nan_run_names_file(tmp_path):
    make_record(tmp_path, "100", fmt="16", nan_run=(1000, 1100))
    rec = read_record(tmp_path / "100", "MLII")  # wfdb writes the invalid-sample marker, reads NaN
    assert np.isnan(rec.signal).sum() == 100
    with pytest.raises(RecordError, match=r"100\.dat: 100 NaN/invalid samples, first at sample 1000"):
        extract_beats(rec, 360, BAND, ORDER, 126, LOCAL)


def write_params(path: Path, **ecg) -> Path:
    lines = ["ecg_data:"] + [f"  {k}: {v}" for k, v in ecg.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("key,value,match", [
    ("records", "[]", r"records: the record list is empty"),
    ("records", "some", r"records: must be 'all'"),
    ("database", "nosuchdb", r"database: unknown database 'nosuchdb'"),
    ("window_ms", "-5", r"window_ms: must lie in 200.0\.\.3000\.0 ms"),
    ("window_ms", "0.1", r"window_ms: must lie in"),
    ("window_ms", "4000000", r"window_ms: must lie in"),
    ("verify", "maybe", r"'ecg_data\.verify' must be true or false"),
    ("class_map", "aami", r"unknown key\(s\) \['class_map'\] in 'ecg_data'"),
    ("split", "dechazal2004", r"unknown key\(s\) \['split'\] in 'ecg_data'"),
    ("window_sz", "700", r"unknown key\(s\) \['window_sz'\] in 'ecg_data'"),
    ("bandpass_hz", "[40, 0.5]", r"bandpass_hz"),
    ("n_folds", "1", r"n_folds"),
    ("fs", "fast", r"'ecg_data\.fs' must be an integer"),
])
def test_invalid_params_name_the_key(tmp_path, key, value, match):
    with pytest.raises(ParamsError, match=match):
        config.load(write_params(tmp_path / "params.yaml", **{key: value}))
    import yaml
    raw = yaml.safe_load(f"{key}: {value}")
    with pytest.raises(ParamsError, match=match):
        from_dict(config.EcgData, raw, "ecg_data")


def test_valid_params_load(tmp_path):
    cfg = config.load(write_params(tmp_path / "params.yaml", records="[100, 101]", window_ms=600))
    assert cfg.records == (100, 101) and cfg.window_ms == 600.0 and cfg.half_window == 108


def test_repo_params_are_valid(project_params):
    cfg = config.load(project_params)
    assert cfg.records == "all" and cfg.lead == "MLII" and cfg.half_window == 126


def test_empty_records_listing_names_file(tmp_path):
    (tmp_path / "RECORDS").write_text("\n")
    with pytest.raises(RecordError, match=r"RECORDS: empty record list"):
        prepare.available_records(tmp_path, config.EcgData())


def test_records_not_ingested_name_file(tmp_path):
    (tmp_path / "RECORDS").write_text("100\n101\n")
    with pytest.raises(RecordError, match=r"RECORDS: records \[103\] requested"):
        prepare.available_records(tmp_path, config.EcgData(records=(100, 103)))


def test_unwritable_output_under_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / "file.txt" / "sub"
    with pytest.raises(OutputError, match=r"file\.txt/sub"):
        ensure_dir(target)
    with pytest.raises(OutputError, match=r"file\.txt/sub"):
        prepare.main(["--params", str(write_params(tmp_path / "p.yaml", records="[101, 100]")),
                      "--raw", str(tmp_path), "--out", str(target), "--metrics", str(tmp_path / "m.json")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write a 0o500 folder")
def test_unwritable_output_folder_chmod(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="locked"):
            ensure_dir(locked)
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- ingest

def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def mirror(tmp_path) -> Path:
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in ("101", "106", "100"):
        make_record(folder, name, seconds=10)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".hea", ".dat", ".atr"))
    (folder / "SHA256SUMS.txt").write_text("".join(f"{sha(p)}  {p.name}\n" for p in files))
    (folder / "RECORDS").write_text("101\n106\n100\n")
    return folder


def test_ingest_fetches_then_keeps(mirror, tmp_path):
    out = tmp_path / "raw"
    cfg = config.EcgData()
    stats = ingest.ingest(cfg, out, MirrorSource(mirror))
    assert stats == {"records": 3, "fetched": 9, "kept": 0, "verified": True, "stale_removed": 0}
    for r in ("101", "106", "100"):
        for ext in ("hea", "dat", "atr"):
            assert sha(out / f"{r}.{ext}") == sha(mirror / f"{r}.{ext}")
    assert (out / "RECORDS").read_text().split() == ["101", "106", "100"]
    assert ingest.parse_sums((out / "SHA256SUMS.txt").read_text()) == ingest.parse_sums(
        (mirror / "SHA256SUMS.txt").read_text())
    files = ingest.record_files(["101", "106", "100"])
    inodes = {f: (out / f).stat().st_ino for f in files}
    stats = ingest.ingest(cfg, out, MirrorSource(mirror))
    assert stats == {"records": 3, "fetched": 0, "kept": 9, "verified": True, "stale_removed": 0}
    assert inodes == {f: (out / f).stat().st_ino for f in files}  # not rewritten


def test_ingest_selected_records_via_main(mirror, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", records="[106]", mirror=f'"{mirror}"')
    out = tmp_path / "raw"
    assert ingest.main(["--params", str(params), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["106.atr", "106.dat", "106.hea", "RECORDS", "SHA256SUMS.txt", "SOURCE.json"]
    assert "3 files fetched" in capsys.readouterr().out


def test_ingest_corrupt_mirror_file_raises_and_leaves_nothing(mirror, tmp_path):
    bad = mirror / "106.dat"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "raw"
    with pytest.raises(IngestError, match=r"106\.dat: SHA256 mismatch"):
        ingest.ingest(config.EcgData(), out, MirrorSource(mirror))
    assert not (out / "106.dat").exists()
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temp files left over
    assert not (out / "RECORDS").exists()  # the output is not marked complete


def test_ingest_refetches_truncated_output(mirror, tmp_path):
    out = tmp_path / "raw"
    ingest.ingest(config.EcgData(), out, MirrorSource(mirror))
    dest = out / "100.dat"
    dest.write_bytes(dest.read_bytes()[:1000])
    stats = ingest.ingest(config.EcgData(), out, MirrorSource(mirror))
    assert stats["fetched"] == 1 and stats["kept"] == 8
    assert sha(dest) == sha(mirror / "100.dat")


def test_ingest_missing_mirror_file_names_it(mirror, tmp_path):
    (mirror / "100.atr").unlink()
    with pytest.raises(IngestError, match=r"100\.atr: missing in local mirror"):
        ingest.ingest(config.EcgData(), tmp_path / "raw", MirrorSource(mirror))


# ---------------------------------------------------------------- prepare: outputs, atomicity

@pytest.fixture()
def raw4(tmp_path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("101", "106", "100", "103"):  # two DS1, two DS2
        make_record(raw, name, seconds=20)
    (raw / "RECORDS").write_text("100\n101\n103\n106\n")
    return raw


def run_prepare(tmp_path, raw, **params):
    out, metrics = tmp_path / "ecg", tmp_path / "reports" / "dataset.json"
    p = write_params(tmp_path / "params.yaml", **params)
    prepare.main(["--params", str(p), "--raw", str(raw), "--out", str(out), "--metrics", str(metrics),
                  "--workers", "1"])
    return out, metrics


def test_prepare_writes_consistent_outputs(tmp_path, raw4):
    from pipeline.io import read_json
    out, metrics = run_prepare(tmp_path, raw4, records="all", n_folds=2)
    meta, summary = read_json(out / "meta.json"), read_json(metrics)
    with np.load(out / "beats.npz") as z:
        d = {k: z[k] for k in z.files}
    assert meta["window_samples"] == d["x"].shape[1] == 2 * meta["r_peak_index"] + 1 == 253
    assert np.all(np.abs(d["x"].argmax(axis=1) - meta["r_peak_index"]) <= 1)
    assert summary["records"] == {"DS1": [101, 106], "DS2": [100, 103]}
    assert sorted(r for f in summary["folds"].values() for r in f) == [101, 106]
    for r in (100, 103):
        sel = d["record"] == r
        assert np.all(d["split"][sel] == 1) and np.all(d["fold"][sel] == -1)
    for r in (101, 106):
        sel = d["record"] == r
        assert np.all(d["split"][sel] == 0) and len(set(d["fold"][sel])) == 1 and d["fold"][sel][0] >= 0
        assert r in summary["folds"][str(d["fold"][sel][0])]
    total = {c: summary["DS1"][c] + summary["DS2"][c] for c in AAMI_CLASSES}
    assert sum(total.values()) == len(d["y"])
    assert total == {c: int((d["y"] == i).sum()) for i, c in enumerate(AAMI_CLASSES)}
    assert meta["leads"] == {"101": "MLII", "106": "MLII", "100": "MLII", "103": "MLII"}


def test_prepare_failing_midway_leaves_no_outputs(tmp_path, raw4):
    dat = raw4 / "103.dat"  # the last record processed (DS1 first, then DS2 100, 103)
    dat.write_bytes(dat.read_bytes()[:500])
    with pytest.raises(RecordError, match=r"103\.dat"):
        run_prepare(tmp_path, raw4, records="all", n_folds=2)
    assert not (tmp_path / "ecg" / "beats.npz").exists()
    assert not (tmp_path / "ecg" / "meta.json").exists()
    assert not (tmp_path / "reports" / "dataset.json").exists()
    assert list((tmp_path / "ecg").iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_savez(path, **arrays):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_npz(tmp_path / "beats.npz", x=np.zeros(3))
    assert list(tmp_path.iterdir()) == []


def test_prepare_needs_both_ds1_and_ds2(tmp_path, raw4):
    with pytest.raises(RecordError, match="need records in both DS1 and DS2"):
        run_prepare(tmp_path, raw4, records="[101, 106]")


# ---------------------------------------------------------------- splits

def test_dechazal_lists():
    assert len(DS1) == len(set(DS1)) == 22 and len(DS2) == len(set(DS2)) == 22
    assert not set(DS1) & set(DS2)
    assert set(PACED) == {102, 104, 107, 217}
    assert not set(PACED) & (set(DS1) | set(DS2))
    every = [int(r) for r in "100 101 102 103 104 105 106 107 108 109 111 112 113 114 115 116 117 118 119 121 "
             "122 123 124 200 201 202 203 205 207 208 209 210 212 213 214 215 217 219 220 221 222 223 228 230 "
             "231 232 233 234".split()]
    split = dechazal_split(every)
    assert set(split["DS1"]) | set(split["DS2"]) | set(PACED) == set(every)
    assert dechazal_split([100, 101, 102, 999]) == {"DS1": [101], "DS2": [100]}


def test_balanced_folds_partition_deterministic():
    rng = np.random.default_rng(0)
    counts = {r: rng.integers(0, [2000, 100, 300, 40]) for r in DS1}
    folds = balanced_folds(counts, 4)
    assigned = [r for recs in folds.values() for r in recs]
    assert sorted(assigned) == sorted(DS1)  # every record exactly once
    assert set(folds) == {0, 1, 2, 3} and all(folds.values())
    shuffled = {r: counts[r] for r in reversed(list(counts))}
    assert balanced_folds(shuffled, 4) == folds == balanced_folds(counts, 4)
    # Each class is shared out: no fold has more than 60% of any class.
    total = sum(counts.values())
    for recs in folds.values():
        assert np.all(sum(counts[r] for r in recs) <= 0.6 * total)


def test_balanced_folds_too_few_records():
    with pytest.raises(ValueError, match="cannot fill"):
        balanced_folds({101: np.array([1, 0, 0, 0])}, 2)


def test_balanced_folds_spread_each_class():
    # Two records per class, each holding only that class: the two never share a fold. Placement
    # is greedy in record order (equal rarity), ties going to the emptier, then the lower fold.
    eye = np.eye(4, dtype=int) * 50
    counts = {101: eye[0], 106: eye[1], 108: eye[2], 109: eye[3],
              112: eye[0], 114: eye[1], 115: eye[2], 116: eye[3]}
    folds = balanced_folds(counts, 4)
    assert folds == {0: [101, 114], 1: [106, 112], 2: [108, 116], 3: [109, 115]}
    for recs in folds.values():
        assert all(sum(counts[r] for r in recs) <= 50)  # no fold holds both records of a class
