"""Bad inputs and faults for the ECG data stages (ingest_ecg, prepare_ecg), driven through the real code.

Every failing case asserts four things: the stage fails (non-zero exit status from the real CLI,
or an exception from main()), the error names the file or key, the outputs of the previous good
run are byte-identical afterwards, and no partial file is left. Kill cases are slow-marked.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecg import ingest, prepare
from tests.test_ecg_data import make_record

REPO = Path(__file__).resolve().parents[1]
RAW, OUT, METRICS = "data/raw/mitdb", "data/ecg", "reports/ecg/dataset.json"
RECORDS = ("101", "106", "100", "103")  # 101, 106 in DS1; 100, 103 in DS2
PARAMS = {"records": "all", "n_folds": 2}


def write_params(ws: Path, **over) -> Path:
    values = {**PARAMS, "mirror": json.dumps(str(ws.parent / "mirror")), **over}
    path = ws / "params.yaml"
    path.write_text("ecg_data:\n" + "".join(f"  {k}: {v}\n" for k, v in values.items()))
    return path


def stage_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ECG_MIRROR", "PIPELINE_PARAMS")}
    env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(ws: Path) -> dict[str, str]:
    """Every output of both stages: relative path -> sha256."""
    files = [*(ws / RAW).iterdir(), *(ws / OUT).iterdir(), ws / METRICS]
    return {str(p.relative_to(ws)): sha(p) for p in files if p.is_file()}


def partials(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".part" in p.name or p.name.startswith("tmp"))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A mirror and a workspace holding the outputs of one good ingest + prepare run."""
    root = tmp_path_factory.mktemp("good")
    mirror = root / "mirror"
    mirror.mkdir()
    for name in RECORDS:
        make_record(mirror, name, seconds=20)
    files = sorted(p for p in mirror.iterdir() if p.suffix in (".hea", ".dat", ".atr"))
    (mirror / "SHA256SUMS.txt").write_text("".join(f"{sha(p)}  {p.name}\n" for p in files))
    (mirror / "RECORDS").write_text("\n".join(RECORDS) + "\n")
    ws = root / "ws"
    ws.mkdir()
    params = write_params(ws)
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        assert ingest.main(["--params", str(params)]) == 0
        assert prepare.main(["--params", str(params), "--workers", "1"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture()
def ws(good, tmp_path) -> Path:
    """A private copy of the good mirror + workspace; returns the workspace."""
    shutil.copytree(good / "mirror", tmp_path / "mirror")
    shutil.copytree(good / "ws", tmp_path / "ws")
    return tmp_path / "ws"


# ---------------------------------------------------------------- mutations (the bad inputs)

def _edit_header(path: Path, field: int, value: str) -> None:
    lines = path.read_text().splitlines()
    first = lines[0].split()
    first[field] = value
    path.write_text("\n".join([" ".join(first)] + lines[1:]) + "\n")


def header_count_smaller(ws):
    hea = ws / RAW / "100.hea"
    n = int(hea.read_text().split()[3])
    _edit_header(hea, 3, str(n // 2))


def header_claims_128hz(ws):
    _edit_header(ws / RAW / "101.hea", 2, "128")


def short_ds2_record(ws):
    """DS2 reduced to one 3-s record whose only inner beat cannot hold a 3000 ms window."""
    raw = ws / RAW
    fs, n = 360, 3 * 360
    sig = np.zeros((n, 1))
    peaks = np.array([108, 540, 1000])
    for p in peaks:
        sig[max(0, p - 10):p + 11, 0] = 1.0
    wfdb.wrsamp("100", fs=fs, units=["mV"], sig_name=["MLII"], p_signal=sig, fmt=["212"], adc_gain=[200.0],
                baseline=[0], write_dir=str(raw))
    wfdb.wrann("100", "atr", peaks, symbol=["N"] * 3, write_dir=str(raw))
    return {"records": "[101, 106, 100]", "window_ms": 3000}


def corrupt_mirror_without_sums(ws):
    mirror = ws.parent / "mirror"
    (mirror / "SHA256SUMS.txt").unlink()
    dat = mirror / "106.dat"
    data = bytearray(dat.read_bytes())
    data[200] ^= 0xFF
    dat.write_bytes(bytes(data))


def garbled_sums(ws):
    (ws.parent / "mirror" / "SHA256SUMS.txt").write_text("this is not a checksum list\n")


def empty_mirror_records(ws):
    (ws.parent / "mirror" / "RECORDS").write_text("\n")


def missing_mirror_records(ws):
    (ws.parent / "mirror" / "RECORDS").unlink()


def empty_raw_records(ws):
    (ws / RAW / "RECORDS").write_text("")


def offline(ws):
    return {"mirror": "null"}


OFFLINE_ENV = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}

# (id, stage, how, mutate -> optional param overrides, params overrides, env, expected message regex)
CASES = [
    ("dat_longer_than_header", "prepare", "cli", header_count_smaller, {}, {},
     r"100\.dat: header/sample-count mismatch: .*100\.hea declares 3600 samples .*holds"),
    ("header_fs_128_for_360", "prepare", "main", header_claims_128hz, {}, {},
     r"101\.hea: median RR interval .* at the declared 128 Hz .* sampling rate is probably wrong"),
    ("window_ms_huge", "prepare", "cli", None, {"window_ms": 4000000}, {}, r"ecg_data.*window_ms: must lie in 200"),
    ("window_ms_tiny", "prepare", "main", None, {"window_ms": 0.1}, {}, r"ecg_data.*window_ms: must lie in 200"),
    ("n_folds_above_ds1_records", "prepare", "main", None, {"n_folds": 9}, {},
     r"ecg_data\.n_folds: 9 patient-wise folds need at least 9 DS1 records, have 2"),
    ("split_with_zero_beats", "prepare", "main", short_ds2_record, {}, {}, r"split DS2 has 0 beats"),
    ("empty_raw_records", "prepare", "main", empty_raw_records, {}, {}, r"raw/mitdb/RECORDS: empty record list"),
    ("mirror_without_sums_corrupt_dat", "ingest", "cli", corrupt_mirror_without_sums, {}, {},
     r"mirror/SHA256SUMS\.txt: checksum list missing .*ecg_data\.verify: false"),
    ("garbled_sums", "ingest", "main", garbled_sums, {}, {}, r"mirror/SHA256SUMS\.txt: checksum list holds no"),
    ("empty_mirror_records", "ingest", "main", empty_mirror_records, {}, {}, r"mirror/RECORDS: RECORDS list is empty"),
    ("missing_mirror_records", "ingest", "main", missing_mirror_records, {}, {},
     r"mirror/RECORDS: no RECORDS list at the source"),
    ("offline_without_mirror", "ingest", "cli", offline, {}, OFFLINE_ENV,
     r"https://physionet\.org/\S*mitdb/RECORDS: download failed"),
]


@pytest.mark.parametrize("stage,how,mutate,params,env,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_clearly_and_keeps_good_outputs(ws, monkeypatch, stage, how, mutate, params, env, match):
    over = dict(params)
    if mutate is not None:
        over.update(mutate(ws) or {})
    before = snapshot(ws)
    params_file = write_params(ws, **over)
    module = {"ingest": ingest, "prepare": prepare}[stage]
    if how == "cli":
        res = subprocess.run([sys.executable, "-m", f"ecg.{stage}", "--params", str(params_file)], cwd=ws,
                             env=stage_env(**env), capture_output=True, text=True, timeout=180)
        assert res.returncode != 0, res.stdout
        message = res.stderr
    else:
        monkeypatch.chdir(ws)
        monkeypatch.delenv("ECG_MIRROR", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(Exception) as err:
            module.main(["--params", str(params_file), *(["--workers", "1"] if stage == "prepare" else [])])
        message = str(err.value)
    assert re.search(match, message), message
    assert snapshot(ws) == before
    assert partials(ws.parent) == []


# ---------------------------------------------------------------- explicit choices and provenance

def test_verify_false_is_an_explicit_recorded_choice(ws, monkeypatch):
    corrupt_mirror_without_sums(ws)
    (ws / RAW / "106.dat").unlink()  # so the corrupt file is fetched
    params = write_params(ws, verify="false")
    monkeypatch.chdir(ws)
    monkeypatch.delenv("ECG_MIRROR", raising=False)
    assert ingest.main(["--params", str(params)]) == 0
    source = json.loads((ws / RAW / "SOURCE.json").read_text())
    assert source["verify"] is False and source["checksum_list_sha256"] is None
    assert not (ws / RAW / "SHA256SUMS.txt").exists()  # no stale list that suggests verification
    assert prepare.main(["--params", str(params), "--workers", "1"]) == 0
    assert json.loads((ws / OUT / "meta.json").read_text())["raw_source_verified"] is False


def test_changed_mirror_is_a_changed_output(ws, monkeypatch):
    """A different ECG_MIRROR, or a different checksum list, changes SOURCE.json (inside the DVC output)."""
    monkeypatch.chdir(ws)
    monkeypatch.delenv("ECG_MIRROR", raising=False)
    params = write_params(ws)
    assert ingest.main(["--params", str(params)]) == 0
    first = (ws / RAW / "SOURCE.json").read_text()
    moved = ws.parent / "mirror2"
    shutil.copytree(ws.parent / "mirror", moved)
    monkeypatch.setenv("ECG_MIRROR", str(moved))
    assert ingest.main(["--params", str(params)]) == 0
    second = json.loads((ws / RAW / "SOURCE.json").read_text())
    assert second["source"] == str(moved) and json.loads(first)["source"] == str(ws.parent / "mirror")
    sums = moved / "SHA256SUMS.txt"
    sums.write_text(sums.read_text() + f"{'0' * 64}  extra.txt\n")
    assert ingest.main(["--params", str(params)]) == 0
    third = json.loads((ws / RAW / "SOURCE.json").read_text())
    assert third["checksum_list_sha256"] == hashlib.sha256(sums.read_bytes()).hexdigest()
    assert third["checksum_list_sha256"] != second["checksum_list_sha256"]


def test_ingest_removes_stale_partial_files(ws, monkeypatch):
    raw = ws / RAW
    monkeypatch.chdir(ws)
    monkeypatch.delenv("ECG_MIRROR", raising=False)
    assert ingest.main(["--params", str(write_params(ws))]) == 0  # SOURCE.json now names this copy's mirror
    (raw / ".100.dat.k3j2h1.part").write_bytes(b"half a file")
    (raw / ".101.dat.partab12").mkdir()
    (raw / ".101.dat.partab12" / "101.dat").write_bytes(b"half")
    keep = {p.name: sha(p) for p in raw.iterdir() if p.is_file() and ".part" not in p.name}
    assert ingest.main(["--params", str(write_params(ws))]) == 0
    assert partials(ws) == []
    assert {p.name: sha(p) for p in raw.iterdir()} == keep


# ---------------------------------------------------------------- kill -9

def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie waiting for init to reap it runs nothing


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killed_prepare_leaves_no_worker_process(ws):
    raw = ws / RAW
    names = ["101", "106", "108", "109", "112", "114", "100", "103", "105", "111", "113", "117"]
    for name in names:
        make_record(raw, name, seconds=900)
    (raw / "RECORDS").write_text("\n".join(names) + "\n")
    before = {p: sha(ws / p) for p in (f"{OUT}/beats.npz", f"{OUT}/meta.json", METRICS)}
    params = write_params(ws)
    proc = subprocess.Popen([sys.executable, "-m", "ecg.prepare", "--params", str(params), "--workers", "2"], cwd=ws,
                            env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kids: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        kids = [k for k in _children(proc.pid) if _alive(k)]
        if len(kids) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(kids) >= 2, "prepare finished before its pool workers could be seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "pool workers outlived the killed prepare stage"
    assert {p: sha(ws / p) for p in before} == before
    assert partials(ws) == []
