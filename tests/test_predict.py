"""ecg.package and ecg.predict on small synthetic WFDB records and a tiny untrained-but-real model package."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb

from pipeline.calibration import ece, fit_temperature, fit_temperature_no_worse

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
FS_MODEL = 360
HALF = 126  # 700 ms at 360 Hz, as prepare computes it
CLASSES = ["N", "S", "V", "F", "Q"]
RR = ["pre_rr_local", "post_rr_local", "pre_rr_record", "post_rr_record", "local_rr_record"]
CHANNELS = ["record_scaled", "record_deviation"]


def synthetic_ecg(fs: float, seconds: float = 40.0, seed: int = 0):
    """P-QRS-T complexes (mV) every ~0.8 s with every 7th beat premature and wide ('V'); returns signal, R samples, symbols."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    sig = 0.02 * rng.normal(size=t.size)
    beats, symbols, now, k = [], [], 0.6, 0
    while now < seconds - 0.6:
        premature = k % 7 == 6
        width = 0.030 if premature else 0.012
        sig += (1.6 if premature else 1.2) * np.exp(-0.5 * ((t - now) / width) ** 2)
        sig += 0.3 * np.exp(-0.5 * ((t - now - 0.25) / 0.04) ** 2)      # T wave
        if not premature:
            sig += 0.12 * np.exp(-0.5 * ((t - now + 0.16) / 0.02) ** 2)  # P wave
        beats.append(int(round(now * fs)))
        symbols.append("V" if premature else "N")
        k += 1
        now += 0.55 if (k % 7 == 6) else 0.8 + 0.03 * rng.normal()
    return sig, np.array(beats), symbols


def write_record(folder: Path, name: str, fs: float, leads=("MLII", "V1"), seconds: float = 40.0, signal=None,
                 with_ann: bool = True) -> Path:
    sig, beats, symbols = synthetic_ecg(fs, seconds)
    if signal is not None:
        sig = signal
    cols = [sig if i == 0 else 0.5 * sig + 0.01 for i in range(len(leads))]
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=np.stack(cols, axis=1),
                fmt=["16"] * len(leads), adc_gain=[200.0] * len(leads), baseline=[0] * len(leads),
                write_dir=str(folder))
    if with_ann:
        wfdb.wrann(name, "atr", sample=beats, symbol=symbols, fs=fs, write_dir=str(folder))
    return folder / name


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A package built by ecg.package.build_package from a run folder holding a tiny lenet1d (with BeatAugment)."""
    import keras

    from ecg import models
    from ecg.package import build_package

    tmp = tmp_path_factory.mktemp("pkg")
    run = tmp / "artifacts" / "lenet1d-ce"
    run.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    model, _ = models.build("lenet1d", 2 * HALF + 1, len(RR), len(CLASSES), channels=len(CHANNELS), width=1,
                            augment={"gain": 0.1, "noise": 0.02, "rr_jitter": 0.03})
    rng = np.random.default_rng(0)
    n = 300
    x = {"beat": rng.normal(size=(n, 2 * HALF + 1, len(CHANNELS))).astype("float32"),
         "rr": rng.uniform(0.5, 1.5, (n, len(RR))).astype("float32")}
    y = rng.integers(0, len(CLASSES), n)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=100, verbose=0)
    model.save(run / "model.keras")
    probs = model.predict(x, verbose=0)
    np.savez(run / "oof.npz", y=y, probs=probs, record=np.zeros(n, np.int16))
    (run / "train.json").write_text(json.dumps({"model": "lenet1d", "loss": "ce", "channels": CHANNELS,
                                                "data_sha256": "0" * 64, "val_macro_f1": 0.25,
                                                "mlflow_run_id": None}))
    meta = tmp / "meta.json"
    meta.write_text(json.dumps({
        "database": "synthetic", "fs": FS_MODEL, "window_samples": 2 * HALF + 1, "r_peak_index": HALF,
        "window_ms": 700.0, "classes": CLASSES, "score_classes": CLASSES[:4], "rr_features": RR,
        "bandpass_hz": [0.5, 40.0], "filter_order": 2, "local_rr_beats": 10, "lead": "MLII",
        "fallback_leads": ["V5", "V1", "V2", "V4"]}))
    out = tmp / "package"
    spec = build_package(run, meta, out)
    return {"dir": out, "spec": spec, "run": run, "oof": (y, probs), "meta": meta}


def run_main(argv, capsys):
    from ecg import predict
    rc = predict.main([*map(str, argv), "--workers", "0"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def outputs(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- the package ---------------------------------------------------------------------------------

def test_package_holds_what_predict_needs(package):
    from ecg.package import REQUIRED, read_spec
    spec = read_spec(package["dir"])
    assert set(REQUIRED) <= set(spec)
    assert (spec["fs"], spec["window_samples"], spec["r_peak_index"]) == (FS_MODEL, 2 * HALF + 1, HALF)
    assert spec["channels"] == CHANNELS and spec["classes"] == CLASSES and spec["score_classes"] == CLASSES[:4]
    y, probs = package["oof"]
    # the run's single-model oof.npz without --calibration; the NLL-optimal T only where it lowers their ECE
    fitted = fit_temperature(probs, y)
    assert spec["calibration"]["fitted"] == pytest.approx(fitted)
    assert spec["temperature"] == pytest.approx(fitted if spec["calibration"]["kept"] else 1.0)
    want = fit_temperature_no_worse(probs, y, 15)
    assert spec["calibration"]["kept"] == want["kept"] and spec["calibration"]["ece_bins"] == 15
    assert spec["calibration"]["ece_after"] == pytest.approx(want["ece_after"])
    assert spec["calibration"]["ece_before"] == pytest.approx(ece(probs, y, 15))
    assert "single fold models" in spec["temperature_fitted_on"]
    assert (package["dir"] / "model.keras").read_bytes() == (package["run"] / "model.keras").read_bytes()
    assert spec["provenance"]["run"] == "lenet1d-ce" and len(spec["provenance"]["model_sha256"]) == 64


def test_package_bytes_are_reproducible(package, tmp_path):
    from ecg.package import build_package
    build_package(package["run"], package["meta"], tmp_path / "again")
    for name in ("package.json", "model.keras"):
        assert (tmp_path / "again" / name).read_bytes() == (package["dir"] / name).read_bytes()


def test_package_rebuild_is_atomic_and_failed_build_keeps_the_old(package, tmp_path):
    from ecg.package import PackageError, build_package
    out = tmp_path / "pkg"
    build_package(package["run"], package["meta"], out)
    before = (out / "package.json").read_text()
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "model.keras").write_bytes(b"x")
    (broken / "train.json").write_text("{}")
    with pytest.raises(PackageError, match=r"oof\.npz: missing"):
        build_package(broken, package["meta"], out)
    assert (out / "package.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_select_run_uses_out_of_fold_score(tmp_path):
    from ecg.package import select_run
    for name, f1 in (("a", 0.4), ("b", 0.6), ("c", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.json").write_text(json.dumps({"val_macro_f1": f1}))
    assert select_run([tmp_path / "a", tmp_path / "b", tmp_path / "c"]).name == "b"


def test_package_stage_from_params_refuses_a_run_that_is_not_the_best(package, tmp_path, capsys):
    """package_ecg.run must hold the best DS1 out-of-fold macro-F1 of the runs present (named both ways)."""
    import shutil

    import yaml

    from ecg import package as pkg
    runs = tmp_path / "artifacts" / "ecg"
    shutil.copytree(package["run"], runs / "lenet1d-ce")                      # val_macro_f1 0.25
    (runs / "dilated1d-focal").mkdir(parents=True)
    (runs / "dilated1d-focal" / "train.json").write_text(json.dumps({"val_macro_f1": 0.6}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"package_ecg": {"run": "lenet1d-ce"}}))
    out = tmp_path / "models" / "ecg"
    argv = ["--params", str(params), "--runs-root", str(runs), "--meta", str(package["meta"]), "--out", str(out)]
    assert pkg.main(argv) == 2
    err = capsys.readouterr().err
    assert "package_ecg.run=lenet1d-ce" in err and "0.2500" in err and "dilated1d-focal has 0.6000" in err
    assert not out.exists()
    (runs / "dilated1d-focal" / "train.json").write_text(json.dumps({"val_macro_f1": 0.2}))
    assert pkg.main(argv) == 0
    got = json.loads((out / "package.json").read_text())
    assert got["provenance"] == package["spec"]["provenance"] and got["temperature"] == package["spec"]["temperature"]
    assert "packaging lenet1d-ce" in capsys.readouterr().out
    params.write_text(yaml.safe_dump({"package_ecg": {"run": "lenet1d-ce", "runs": 2}}))
    assert pkg.main(argv) == 2 and "unknown key(s) ['runs'] in 'package_ecg'" in capsys.readouterr().err


# --- predict: happy paths ----------------------------------------------------------------------------

def test_predict_wfdb_other_rate_scores_itself(package, tmp_path, capsys):
    rec = write_record(tmp_path / "db", "r1", fs=250, leads=("V1", "II"))
    rc, out, err = run_main([rec, "--model", package["dir"], "--annotations", "atr", "--out", tmp_path / "o"], capsys)
    assert rc == 0, err
    assert outputs(tmp_path / "o") == ["r1.beats.csv", "r1.pred", "r1.summary.json"]
    summary = json.loads((tmp_path / "o" / "r1.summary.json").read_text())
    assert summary["lead"] == "V1"  # V1 is one of the package's fallbacks, before the II alias
    assert summary["fs"] == 250 and summary["model_fs"] == FS_MODEL
    assert summary["detector"]["name"] == "gqrs"
    assert summary["model"]["run"] == "lenet1d-ce" and summary["model"]["temperature"] == package["spec"]["temperature"]
    det = summary["scoring"]["detection"]
    assert det["se"] == 1.0 and det["+p"] == 1.0  # clean synthetic beats: every one found, nothing extra
    assert summary["scoring"]["n_matched"] == summary["n_classified"]
    assert set(summary["scoring"]["per_class"]) == set(CLASSES)
    assert summary["scoring"]["per_class"]["V"]["n"] > 0
    assert sum(summary["beats_per_class"].values()) == summary["n_classified"]
    hours = summary["duration_s"] / 3600
    assert summary["ectopic_per_hour"]["total"] == pytest.approx(
        sum(summary["beats_per_class"][c] for c in "SVF") / hours)
    lines = (tmp_path / "o" / "r1.beats.csv").read_text().splitlines()
    assert lines[0] == "sample,time_s,label,p_N,p_S,p_V,p_F,p_Q"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == summary["n_classified"]
    assert all(abs(sum(map(float, r[3:])) - 1) < 1e-3 for r in rows)
    assert all(float(r[1]) == pytest.approx(int(r[0]) / 250, abs=1e-4) for r in rows)
    ann = wfdb.rdann(str(tmp_path / "o" / "r1"), "pred")
    assert ann.fs == 250 and list(ann.sample) == [int(r[0]) for r in rows]
    assert list(ann.symbol) == [r[2] for r in rows] and set(ann.symbol) <= set(CLASSES)
    ref = wfdb.rdann(str(rec), "atr").sample  # detected beats sit on the reference R peaks (input's own rate)
    assert np.abs(np.asarray(ann.sample)[:, None] - ref[None, :]).min(axis=1).max() <= 0.03 * 250
    assert "lead V1" in out and "detection Se 1.0000 +P 1.0000" in out


def test_lead_option_and_default_order(package, tmp_path, capsys):
    rec = write_record(tmp_path / "db", "r2", fs=360, leads=("I", "ii"))
    rc, out, err = run_main([rec, "--model", package["dir"], "--out", tmp_path / "o"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "o" / "r2.summary.json").read_text())["lead"] == "ii"  # alias II, any case
    rc, out, err = run_main([rec, "--model", package["dir"], "--out", tmp_path / "o", "--lead", "I"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "o" / "r2.summary.json").read_text())["lead"] == "I"


def test_annotated_beats_match_prepare_exactly(package, tmp_path):
    """On reference beats, predict's model inputs equal prepare_ecg's extract_beats + dataset.beat_channels."""
    from ecg import predict
    from ecg.beats import extract_beats
    from ecg.dataset import beat_channels
    from ecg.reader import read_record
    rec = write_record(tmp_path / "db", "r3", fs=250)
    spec = package["spec"]
    sig = predict.read_input(rec, predict.lead_order(spec, None), None, "atr", None)
    a = predict.analyse(sig, spec, annotated_beats=True)
    ref = extract_beats(read_record(rec, "MLII", ("V5",)), FS_MODEL, (0.5, 40.0), 2, HALF, 10)
    np.testing.assert_array_equal(a.beat, beat_channels(ref["x"], np.zeros(len(ref["x"])), CHANNELS))
    np.testing.assert_array_equal(a.rr, ref["rr"])
    np.testing.assert_array_equal(a.y_ref, ref["y"])
    np.testing.assert_array_equal(np.round(a.sample * FS_MODEL / 250).astype(int), ref["sample"])


def test_csv_and_npy_with_rate(package, tmp_path, capsys):
    sig, _, _ = synthetic_ecg(200)
    csv = tmp_path / "dev.csv"
    csv.write_text("time,MLII\n" + "".join(f"{i / 200:.4f},{v:.5f}\n" for i, v in enumerate(sig)))
    npy = tmp_path / "dev2.npy"
    np.save(npy, sig.astype(np.float32))
    for path, lead in ((csv, "MLII"), (npy, "0")):
        rc, out, err = run_main([path, "--model", package["dir"], "--fs", "200", "--out", tmp_path / "o"], capsys)
        assert rc == 0, err
        s = json.loads((tmp_path / "o" / f"{path.stem}.summary.json").read_text())
        assert s["lead"] == lead and s["fs"] == 200 and s["n_classified"] > 30


def test_folder_of_records_continues_past_a_bad_one(package, tmp_path, capsys):
    db = tmp_path / "db"
    write_record(db, "a1", fs=360)
    write_record(db, "a2", fs=360, leads=("X", "Y"))
    rc, out, err = run_main([db, "--model", package["dir"], "--out", tmp_path / "o"], capsys)
    assert rc == 2
    assert outputs(tmp_path / "o") == ["a1.beats.csv", "a1.pred", "a1.summary.json"]
    assert "a2.hea: no usable lead" in err


# --- bad input ---------------------------------------------------------------------------------------

def _flat(value):
    def make(tmp):
        return write_record(tmp / "db", "bad", fs=360, signal=np.full(360 * 20, value))
    return make


def _nan_run(tmp):
    sig, _, _ = synthetic_ecg(360)
    sig[3600:3700] = np.nan
    folder = tmp / "db"
    folder.mkdir()
    wfdb.wrsamp("bad", fs=360, units=["mV"], sig_name=["MLII"], p_signal=sig[:, None], fmt=["16"],
                adc_gain=[200.0], baseline=[0], write_dir=str(folder))
    return folder / "bad"


def _two_beats(tmp):
    fs, t = 360, np.arange(360 * 10) / 360
    sig = sum(1.2 * np.exp(-0.5 * ((t - c) / 0.012) ** 2) for c in (3.0, 6.0)) + 0.01 * np.sin(t)
    return write_record(tmp / "db", "bad", fs=fs, signal=sig, with_ann=False)


def _not_a_package(tmp):
    (tmp / "notpkg").mkdir()
    (tmp / "notpkg" / "model.keras").write_bytes(b"junk")
    return write_record(tmp / "db", "bad", fs=360)


def _csv_no_rate(tmp):
    sig, _, _ = synthetic_ecg(200, 10)
    path = tmp / "bad.csv"
    path.write_text("\n".join(f"{v:.4f}" for v in sig))
    return path


BAD = {
    "no usable lead": (lambda tmp: write_record(tmp / "db", "bad", fs=360, leads=("ABP", "PLETH")), [],
                       r"bad\.hea: no usable lead: the record has \['ABP', 'PLETH'\]"),
    "rate below 50 Hz": (lambda tmp: write_record(tmp / "db", "bad", fs=40), [],
                         r"bad\.hea: sampling rate 40 Hz is below 50 Hz"),
    "all-zero": (_flat(0.0), [], r"bad\.dat: lead MLII is all zeros; no ECG"),
    "flat line": (_flat(0.7), [], r"bad\.dat: lead MLII is a flat line \(peak-to-peak 0 mV"),
    "NaN run": (_nan_run, [], r"bad\.dat: lead MLII has 100 NaN/invalid samples in 1 run\(s\), first at sample 3600"),
    "fewer than 3 beats": (_two_beats, [], r"bad\.dat: only [0-2] beat\(s\) detected in lead MLII .*need at least 3"),
    "not a model package": (_not_a_package, ["--model", "{tmp}/notpkg"], r"notpkg: not a model package \(no package\.json\)"),
    "csv without rate": (_csv_no_rate, [], r"bad\.csv: a \.csv signal carries no sampling rate; give it with --fs"),
    "csv missing": (lambda tmp: tmp / "absent.csv", ["--fs", "250"], r"absent\.csv: file not found"),
    "annotations missing": (lambda tmp: write_record(tmp / "db", "bad", fs=360, with_ann=False), ["--annotations", "atr"],
                            r"bad\.atr: annotation file missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_file_and_leaves_nothing(case, package, tmp_path, capsys):
    import re
    make, extra, pattern = BAD[case]
    path = make(tmp_path)
    args = [a.format(tmp=tmp_path) for a in extra]
    if "--model" not in args:
        args += ["--model", str(package["dir"])]
    out = tmp_path / "o"
    rc, _, err = run_main([path, *args, "--out", out], capsys)
    assert rc == 2
    assert re.search(pattern, err), err
    assert str(tmp_path) in err  # the full path of the offending file is named
    assert outputs(out) == []  # nothing written, no .part left over


def test_failed_rerun_keeps_earlier_good_output(package, tmp_path, capsys):
    rec = write_record(tmp_path / "db", "r5", fs=360)
    rc, _, err = run_main([rec, "--model", package["dir"], "--out", tmp_path / "o"], capsys)
    assert rc == 0, err
    before = {p: (tmp_path / "o" / p).read_bytes() for p in outputs(tmp_path / "o")}
    write_record(tmp_path / "db", "r5", fs=360, signal=np.zeros(360 * 20))
    rc, _, err = run_main([rec, "--model", package["dir"], "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "all zeros" in err
    assert {p: (tmp_path / "o" / p).read_bytes() for p in outputs(tmp_path / "o")} == before


# --- MLflow --------------------------------------------------------------------------------------------

def test_mlflow_model_loads_in_fresh_process_without_project_imports(package, tmp_path, monkeypatch, request):
    """log_mlflow -> mlflow.pyfunc.load_model in a subprocess that never imports ecg/pipeline itself."""
    import mlflow
    request.addfinalizer(lambda prev=mlflow.get_tracking_uri(): mlflow.set_tracking_uri(prev))

    from ecg.package import input_example, log_mlflow
    monkeypatch.chdir(tmp_path)  # a sqlite store puts artifacts under ./mlruns: keep them in tmp_path
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("ecg-test", (tmp_path / "artifacts").as_uri()))
    with mlflow.start_run() as run:
        model_uri = log_mlflow(package["dir"])
    assert model_uri.startswith("models:/") or model_uri.startswith("runs:/")
    info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.signature is not None and info.saved_input_example_info is not None
    example = input_example(package["spec"], 3)
    np.savez(tmp_path / "x.npz", **example)
    code = (
        # The project is installed in the venv (editable); hide it, so only the model's own code can serve.
        "import os, sys, importlib.util\n"
        f"sys.path = [p for p in sys.path if os.path.realpath(p or '.') != {str(ROOT)!r}]\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in (str(getattr(f, '__module__', '')) + repr(f)).lower()]\n"
        "assert importlib.util.find_spec('ecg') is None, 'project importable: the test would prove nothing'\n"
        "import numpy as np, mlflow\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        f"m = mlflow.pyfunc.load_model('runs:/{run.info.run_id}/model')\n"
        f"p = m.predict(dict(np.load({str(tmp_path / 'x.npz')!r})))\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, p)\n")
    # No project import before the load: the one-liner must work as a user types it, from the model's files.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "p.npy")
    from ecg.package import load_package
    expected = load_package(package["dir"]).predict(example["beat"], example["rr"])  # temperature applied once
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # predict takes the MLflow URI in place of a package folder
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        rec = write_record(tmp_path / "db", "m1", fs=360)
        from ecg import predict
        result = predict.predict(rec, f"runs:/{run.info.run_id}/model", tmp_path / "o", log=lambda *a, **k: None)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert result["records"]["m1"]["model"]["package"] == f"runs:/{run.info.run_id}/model"
    assert result["records"]["m1"]["model"]["run"] == "lenet1d-ce"


def test_predict_from_mlflow_uri_needs_a_logged_package(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    rec = write_record(tmp_path / "db", "r6", fs=360)
    rc, _, err = run_main([rec, "--model", "runs:/0123456789abcdef/model", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "runs:/0123456789abcdef/model: cannot download the MLflow model" in err
    assert outputs(tmp_path / "o") == []
