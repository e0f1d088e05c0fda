"""ecg.generalise on tiny synthetic databases: re-recorded rates, NSTDB-style noise at set SNRs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import wfdb

from ecg import generalise
from tests.test_predict import CLASSES, package, synthetic_ecg, write_record  # noqa: F401  (fixture)


def write_noise(folder, name, kind, fs=360, seconds=25.0, seed=1):
    rng = np.random.default_rng(seed)
    n = int(fs * seconds)
    if kind == "bw":
        sig = np.cumsum(rng.normal(0, 0.01, n)) + 0.3 * np.sin(2 * np.pi * 0.3 * np.arange(n) / fs)  # wander
    else:
        sig = rng.normal(0, 0.05, n)
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV", "mV"], sig_name=["noise1", "noise2"], p_signal=np.stack([sig, sig], 1),
                fmt=["16", "16"], adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(folder))


def test_noise_gain_follows_the_nst_definition():
    fs = 360
    t = np.arange(fs * 20) / fs
    beats = np.arange(fs, len(t) - fs, fs)
    sig = np.zeros_like(t)
    for b in beats:  # QRS-like bumps of exactly 1.0 mV peak-to-peak
        sig[b - 3:b + 4] = [0, 0.25, 0.75, 1.0, 0.75, 0.25, 0]
    noise = np.random.default_rng(0).normal(0, 0.2, len(t))
    assert generalise.signal_power(sig, beats, fs) == pytest.approx(1.0 / 8)
    assert generalise.noise_power(noise, fs) == pytest.approx(0.04, rel=0.05)
    for snr in (24, 0, -6):
        noisy = generalise.add_noise(sig, beats, noise, fs, snr)
        added = noisy - sig
        measured = 10 * np.log10(generalise.signal_power(sig, beats, fs) / generalise.noise_power(added, fs))
        assert measured == pytest.approx(snr, abs=1e-6)
        assert abs(added.mean()) < 1e-12  # offsets cancelled


def test_resample_record_keeps_annotations_on_their_beats():
    sig, beats, _ = synthetic_ecg(360, 20)
    out, pos = generalise.resample_record(sig, beats, 360, 128)
    assert len(out) == pytest.approx(len(sig) * 128 / 360, abs=1)
    assert np.all(np.abs(out[pos] - sig[beats]) < 0.35)  # still on the R peak after resampling


@pytest.fixture
def database(tmp_path):
    db = tmp_path / "db"
    for name in ("s1", "I01"):  # non-integer record ids must work
        write_record(db, name, fs=360, seconds=25.0)
    (db / "RECORDS").write_text("s1\nI01\n")
    return db


def test_rerecorded_metrics(package, database, tmp_path):
    out = tmp_path / "m" / "rerecorded.json"
    rc = generalise.main(["rerecorded", "--model", str(package["dir"]), "--raw", str(database), "--records", "s1",
                          "I01", "--rates", "128", "250", "--out", str(out), "--info", str(tmp_path / "info.json"),
                          "--workers", "0"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert set(m) == {"128", "250", "reference_annotated"}
    for rate in ("128", "250"):
        assert m[rate]["detection"]["se"] >= 0.98 and m[rate]["detection"]["+p"] >= 0.98
        assert set(m[rate]["per_class"]) == set(CLASSES) and m[rate]["n_records"] == 2
        assert "annotated" in m[rate] and "detection" not in m[rate]["annotated"]
        assert m[rate]["per_class"]["V"]["n"] > 0
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["records"] == ["s1", "I01"] and info["model"]["run"] == "lenet1d-ce"


def test_robustness_metrics_and_plot(package, database, tmp_path):
    noise = tmp_path / "nstdb"
    write_noise(noise, "bw", "bw")
    write_noise(noise, "ma", "ma", seconds=10.0)  # shorter than the records: repeated, as nst rewinds
    out, plot = tmp_path / "robustness.json", tmp_path / "plots" / "robustness.csv"
    rc = generalise.main(["robustness", "--model", str(package["dir"]), "--raw", str(database), "--records", "s1",
                          "I01", "--noise-dir", str(noise), "--snr", "24", "-6", "--out", str(out), "--plot",
                          str(plot), "--workers", "0"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert set(m) == {"clean", "bw", "ma"} and set(m["bw"]) == {"24", "-6"}
    assert m["clean"]["detection"]["se"] >= 0.98 and m["bw"]["24"]["detection"]["se"] >= 0.98
    rows = plot.read_text().splitlines()
    assert rows[0] == "noise,snr_db,macro_f1,f1_S,f1_V" and len(rows) == 5
    assert [r.split(",")[:2] for r in rows[1:]] == [["bw", "24"], ["bw", "-6"], ["ma", "24"], ["ma", "-6"]]


def test_missing_noise_record_is_named(package, database, tmp_path, capsys):
    out = tmp_path / "robustness.json"
    rc = generalise.main(["robustness", "--model", str(package["dir"]), "--raw", str(database), "--records", "s1",
                          "--noise-dir", str(tmp_path / "none"), "--out", str(out), "--workers", "0"])
    assert rc == 2 and "none/bw.hea: noise record missing" in capsys.readouterr().err
    assert not out.exists()
