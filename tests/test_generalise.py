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


def assert_numbers_only(obj, where="metrics"):
    """DVC metrics: nested mappings of numbers (null where undefined), nothing else."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str)
            assert_numbers_only(v, f"{where}.{k}")
    else:
        assert obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool)), f"{where}: {obj!r}"


def write_params(path, **sections):
    import yaml
    base = {"evaluate": {"bootstrap": 50, "ece_bins": 10, "seed": 3}}
    path.write_text(yaml.safe_dump({**base, **sections}))
    return path


def test_record_bootstrap_brackets_and_reuses_the_shared_draws():
    from pipeline.evaluation import bootstrap_confusion_ci, class_metrics
    classes, scored = ["N", "S", "V", "F", "Q"], ["N", "S", "V", "F"]
    rng = np.random.default_rng(0)
    cms = [rng.integers(0, 30, (5, 5)) for _ in range(6)]
    got = generalise.record_bootstrap(cms, classes, scored, n_boot=200, seed=5)
    # the same intervals from label arrays through the shared function
    y_t, y_p, g = [], [], []
    for i, cm in enumerate(cms):
        for a in range(5):
            for b in range(5):
                y_t += [a] * int(cm[a, b]); y_p += [b] * int(cm[a, b]); g += [i] * int(cm[a, b])
    ref = bootstrap_confusion_ci(np.array(y_t), np.array(y_p), np.array(g), 5,
                                 {"v": lambda c: class_metrics(c, 2)["f1"]}, n_boot=200, seed=5)
    assert [got["per_class"]["V"]["f1"]["lo"], got["per_class"]["V"]["f1"]["hi"]] == pytest.approx(ref["v"])
    pooled = generalise.pool_scores([{"confusion": c.tolist()} for c in cms], classes, scored, 200, 5)
    assert pooled["ci95"] == got
    assert got["macro_f1"]["lo"] <= pooled["macro_f1"] <= got["macro_f1"]["hi"]


def test_params_sections_reject_unknown_keys(tmp_path, capsys):
    bad = write_params(tmp_path / "p.yaml", ecg_generalise={"rates": [128], "lead_name": "ECG", "workers": 0,
                                                            "rate": 5})
    rc = generalise.main(["rerecorded", "--params", str(bad), "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "unknown key(s) ['rate'] in 'ecg_generalise'" in capsys.readouterr().err
    low = write_params(tmp_path / "q.yaml", ecg_generalise={"rates": [20], "lead_name": "ECG", "workers": 0})
    rc = generalise.main(["rerecorded", "--params", str(low), "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "ecg_generalise" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_robustness_mirror_env_overrides(monkeypatch):
    cfg = generalise.RobustnessParams(mirror="/params/mirror")
    monkeypatch.delenv("NSTDB_MIRROR", raising=False)
    assert cfg.mirror_dir() == "/params/mirror"
    monkeypatch.setenv("NSTDB_MIRROR", "/env/mirror")
    assert cfg.mirror_dir() == "/env/mirror"


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
    assert set(m) == {"128", "250", "annotated"}
    assert "detection" not in m["annotated"] and m["annotated"]["n_records"] == 2
    for rate in ("128", "250"):
        assert m[rate]["detection"]["se"] >= 0.98 and m[rate]["detection"]["+p"] >= 0.98
        assert set(m[rate]["per_class"]) == set(CLASSES) and m[rate]["n_records"] == 2
        assert "annotated" in m[rate] and "detection" not in m[rate]["annotated"]
        assert m[rate]["per_class"]["V"]["n"] > 0
        ci = m[rate]["ci95"]
        assert set(ci["per_class"]) == set(CLASSES[:4])
        if m[rate]["macro_f1"] is not None and ci["macro_f1"] is not None:
            assert ci["macro_f1"]["lo"] <= ci["macro_f1"]["hi"]
    assert_numbers_only(m)
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


def test_rerecorded_from_params(package, database, tmp_path):
    params = write_params(tmp_path / "params.yaml",
                          ecg_generalise={"rates": [250], "lead_name": "ml2", "workers": 0})
    out, info = tmp_path / "rr.json", tmp_path / "info.json"
    rc = generalise.main(["rerecorded", "--params", str(params), "--model", str(package["dir"]), "--raw",
                          str(database), "--records", "s1", "I01", "--out", str(out), "--info", str(info)])
    assert rc == 0
    assert set(json.loads(out.read_text())) == {"250", "annotated"}
    opts = json.loads(info.read_text())["options"]
    assert opts["rates"] == [250] and opts["lead_name"] == "ml2" and opts["bootstrap"] == 50 and opts["seed"] == 3


def test_external_without_databases_writes_empty(tmp_path):
    params = write_params(tmp_path / "params.yaml", ecg_external={"databases": []})
    out = tmp_path / "external.json"
    assert generalise.main(["external", "--params", str(params), "--model", str(tmp_path / "unused"),
                            "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {}


def test_external_databases_other_rate_and_lead_names(package, tmp_path):
    """Two tiny databases at 257 Hz and 500 Hz, non-MIT lead names and non-integer ids (INCART's I01)."""
    from tests.test_predict import write_record
    inc, other = tmp_path / "incart", tmp_path / "other"
    for name in ("I01", "I02"):
        write_record(inc, name, fs=257, leads=("I", "II", "V1"), seconds=30.0)
    (inc / "RECORDS").write_text("I01\nI02\n")
    write_record(other, "a-7", fs=500, leads=("ECG1", "ECG2"), seconds=30.0)  # no RECORDS list: *.hea
    params = write_params(tmp_path / "params.yaml", ecg_external={"databases": [
        {"name": "incartdb", "lead": "II", "mirror": str(inc)}, {"name": "mydb", "lead": None, "mirror": str(other)}]})
    out = tmp_path / "external.json"
    rc = generalise.main(["external", "--params", str(params), "--model", str(package["dir"]), "--out", str(out),
                          "--workers", "0", "--info", str(tmp_path / "info.json")])
    assert rc == 0
    m = json.loads(out.read_text())
    assert set(m) == {"incartdb", "mydb"}
    assert_numbers_only(m)
    for db, n in (("incartdb", 2), ("mydb", 1)):
        det, ann = m[db]["detected"], m[db]["annotated"]
        assert det["detection"]["se"] >= 0.98 and det["n_records"] == n
        assert set(ann["per_class"]) == set(CLASSES) and ann["per_class"]["V"]["n"] > 0
        assert set(ann["ci95"]["per_class"]) == set(CLASSES[:4])
        for key in ("ece", "brier", "nll"):
            assert set(ann[key]) == {"before", "after"}
        assert ann["temperature"] == pytest.approx(package["spec"]["temperature"])
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["records"]["incartdb"]["records"] == ["I01", "I02"] and info["records"]["mydb"]["records"] == ["a-7"]


def test_external_missing_database_is_named(package, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", ecg_external={"databases": [
        {"name": "svdb", "mirror": str(tmp_path / "nowhere")}]})
    out = tmp_path / "external.json"
    rc = generalise.main(["external", "--params", str(params), "--model", str(package["dir"]), "--out", str(out)])
    assert rc == 2 and "nowhere: database folder missing" in capsys.readouterr().err and not out.exists()


def test_scoring_params_mirror_the_evaluate_section():
    import dataclasses

    from pipeline.evaluate import EvaluateParams
    fields = lambda cls: [(f.name, f.type, f.default) for f in dataclasses.fields(cls)]  # noqa: E731
    assert fields(generalise.ScoringParams) == fields(EvaluateParams)
