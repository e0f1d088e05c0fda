"""Multi-worker data-parallel training (pipeline.distributed): TF_CONFIG parsing, the non-chief worker's folder,
the checkpoint agreement check, and two real worker processes on 127.0.0.1 training the real `ecg.train` stage
against a single-process run with the same global batch."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import distributed
from pipeline.distributed import Task, task_from_tf_config
from tests.conftest import committed_text

ROOT = Path(__file__).resolve().parents[1]


def tf_config(n, index, ports, task_type="worker", chief=False):
    hosts = [f"127.0.0.1:{p}" for p in ports]
    cluster = {"chief": hosts[:1], "worker": hosts[1:]} if chief else {"worker": hosts}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


# ------------------------------------------------------------------------------------------ TF_CONFIG
def test_tf_config_parsing():
    assert task_from_tf_config(None) is None and task_from_tf_config("") is None
    t = task_from_tf_config(tf_config(2, 0, [1, 2]))
    assert (t.size, t.is_chief, t.process_id, t.label) == (2, True, 0, "worker-0")
    t = task_from_tf_config(tf_config(2, 1, [1, 2]))
    assert (t.is_chief, t.process_id) == (False, 1)
    # with an explicit chief, worker 0 is not the chief, and JAX process ids count the chief first
    t = task_from_tf_config(tf_config(3, 0, [1, 2, 3], chief=True))
    assert (t.size, t.is_chief, t.process_id) == (3, False, 1)
    c = task_from_tf_config(tf_config(3, 0, [1, 2, 3], task_type="chief", chief=True))
    assert c.is_chief and c.process_id == 0 and c.workers[0] == "127.0.0.1:1"


@pytest.mark.parametrize("text, match", [
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG.cluster"),
    ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG.task"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}', "'ps'"),
    ('{"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker", "index": 0}}', "TF_CONFIG.cluster.worker"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "TF_CONFIG.task.type"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "TF_CONFIG.task.index"),
])
def test_tf_config_errors_name_the_key(text, match):
    with pytest.raises(ValueError, match=match):
        task_from_tf_config(text)


def test_launcher_rejects_bad_tf_config(monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(SystemExit):
        distributed.main(["ecg.train"])
    assert "TF_CONFIG.cluster" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the non-chief's folder
def test_worker_folder_links_inputs_and_keeps_outputs_private(tmp_path):
    root = tmp_path / "proj"
    (root / "data/ecg").mkdir(parents=True)
    (root / "data/ecg/beats.npz").write_bytes(b"beats")
    (root / "params.yaml").write_text("a: 1\n")
    unit = root / "artifacts/checkpoints/ecg/run/fold0/ckpt-0001"
    unit.mkdir(parents=True)
    (unit / "state.json").write_text('{"epoch": 1}')
    (root / "artifacts/checkpoints/ecg/run/fold0/.ckpt-0002.x.part").mkdir()
    (root / "artifacts/vision/pretrain").mkdir(parents=True)
    (root / "artifacts/vision/pretrain/backbone.keras").write_bytes(b"weights")
    (root / "metrics").mkdir()
    (root / "mlflow.db").write_bytes(b"db")

    folder = distributed.worker_folder(root, Task("worker", 1, ("a:1", "b:1")))
    assert folder == root / ".distributed/worker-1"
    assert (folder / "params.yaml").is_symlink() and (folder / "data").is_symlink()
    assert (folder / "data/ecg/beats.npz").read_bytes() == b"beats"
    assert not (folder / "metrics").exists() and not (folder / "mlflow.db").exists()  # outputs: its own
    mirrored = folder / "artifacts/vision/pretrain/backbone.keras"
    assert mirrored.read_bytes() == b"weights" and not mirrored.is_symlink()
    assert mirrored.stat().st_ino == (root / "artifacts/vision/pretrain/backbone.keras").stat().st_ino
    assert not list(folder.rglob("*.part"))  # a half-written unit is not mirrored
    assert distributed.checkpoint_digest(folder) == distributed.checkpoint_digest(root)

    # the worker writes by atomic rename (as every stage does): the chief's file is untouched
    tmp = mirrored.with_name(".tmp-backbone")
    tmp.write_bytes(b"worker's own")
    os.replace(tmp, mirrored)
    assert (root / "artifacts/vision/pretrain/backbone.keras").read_bytes() == b"weights"

    # a later launch re-mirrors: what the chief has now, not what the worker left
    (unit / "state.json").write_text('{"epoch": 1, "changed": true}')
    (root / "artifacts/checkpoints/ecg/run/fold0/ckpt-0001/extra").write_text("x")
    again = distributed.worker_folder(root, Task("worker", 1, ("a:1", "b:1")))
    assert (again / "artifacts/checkpoints/ecg/run/fold0/ckpt-0001/extra").exists()
    assert distributed.checkpoint_digest(again) == distributed.checkpoint_digest(root)
    assert distributed.checkpoint_digest(root) != distributed.checkpoint_digest(tmp_path / "nothing")


def test_different_checkpoints_stop_the_launch(monkeypatch):
    monkeypatch.setattr(distributed, "gathered_digests", lambda strategy, d: [d, "0" * 24])
    with pytest.raises(RuntimeError, match="different checkpoints"):
        distributed.check_same_checkpoints(None, "1" * 24)
    monkeypatch.setattr(distributed, "gathered_digests", lambda strategy, d: [d, d])
    distributed.check_same_checkpoints(None, "1" * 24)


# ------------------------------------------------------------------------------- two real processes
WINDOW, PER_RECORD = 64, 160
RECORDS = [100, 101, 102, 103, 200]


def write_project(root: Path) -> None:
    """A tiny prepared ECG set (DS1 records 100-103 in two folds) and params for a deterministic lenet1d."""
    from pipeline.io import save_npz, sha256_file, write_json
    rng = np.random.default_rng(0)
    record = np.repeat(RECORDS, PER_RECORD)
    y = rng.choice(5, size=len(record), p=[0.5, 0.2, 0.2, 0.07, 0.03])
    t = np.linspace(-1, 1, WINDOW)
    x = (np.exp(-(t[None] / (0.1 + 0.05 * y[:, None])) ** 2) * (1 + (y[:, None] == 2))
         + 0.1 * rng.normal(size=(len(record), WINDOW))).astype(np.float32)
    rr = (0.8 + 0.2 * rng.random((len(record), 5)) - 0.2 * (y[:, None] == 1)).astype(np.float32)
    save_npz(root / "data/ecg/beats.npz", x=x, rr=rr, y=y.astype(np.int8), record=record.astype(np.int16),
             sample=np.arange(len(record)) * 300, split=(record >= 200).astype(np.int8),
             fold=np.where(record >= 200, -1, record % 2).astype(np.int8))
    leads = {str(r): "MLII" for r in RECORDS}
    write_json(root / "data/ecg/meta.json", {
        "database": "test", "fs": 128, "window_samples": WINDOW, "r_peak_index": WINDOW // 2, "window_ms": 500.0,
        "classes": ["N", "S", "V", "F", "Q"], "score_classes": ["N", "S", "V", "F"], "bandpass_hz": [0.5, 40.0],
        "rr_features": ["pre_rr_local", "post_rr_local", "pre_rr_record", "post_rr_record", "local_rr_record"],
        "leads": leads, "beats_sha256": sha256_file(root / "data/ecg/beats.npz")})
    params = yaml.safe_load(committed_text("params.yaml"))
    params["ecg_train"].update(
        seed=3, val_folds="all", mixed_precision="off", limit_beats=None,
        fit={"epochs": 3, "batch_size": 64, "learning_rate": 0.002, "patience": 5, "min_delta": 0.0},
        augment={"gain": 0.0, "noise": 0.0, "rr_jitter": 0.0},  # no randomness inside the step: exact comparison
        sampling={"majority": "N", "keep": None})  # every beat each epoch (the tolerances below were measured so)
    params["ecg_train"]["lenet1d"] = {"width": 1, "dropout": 0.0}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def env_for(root: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "MLFLOW_TRACKING_URI")}
    env.update({"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
                "CUDA_VISIBLE_DEVICES": "", **extra})
    return env


STAGE = ["ecg.train", "--model", "lenet1d", "--loss", "ce"]


def start_workers(root: Path, ports, logs):
    procs = []
    for i in range(len(ports)):
        log = open(logs / f"worker{i}.log", "a")
        procs.append(subprocess.Popen([sys.executable, "-m", "pipeline.distributed", *STAGE], cwd=root,
                                      env=env_for(root, TF_CONFIG=tf_config(len(ports), i, ports)),
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def stop_all(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)


def wait_all(procs, logs, timeout=420):
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1, deadline - time.time()))
    finally:
        stop_all(procs)
    tails = "\n".join(f"--- {f.name}\n" + f.read_text()[-3000:] for f in sorted(logs.glob("*.log")))
    assert all(p.returncode == 0 for p in procs), tails


def results(run: Path):
    train = json.loads((run / "train.json").read_text())
    with np.load(run / "oof.npz") as z:
        return train, z["probs"], z["y"]


def assert_same_training(a: Path, b: Path, exact: bool):
    """exact: the same run, resumed after a kill or not: per-epoch losses within 1e-5 relative, validation macro-F1
    histories and best epochs equal, out-of-fold probabilities within 1e-4 (measured: 0 for the resumed fold,
    6e-5 for the next fold, which the fresh process trains: float rounding of the multi-process CPU kernels).

    Not exact, the stated tolerance of 2 workers against 1 process with the same global batch: the ECG models'
    BatchNormalization normalises each replica's half batch by its own statistics (TF's default, unsynchronised
    batch norm), so the runs differ slightly: per-epoch losses within 5% relative, out-of-fold probabilities
    within 0.05, out-of-fold macro-F1 within 0.05, the same number of epochs. (Without batch norm they agree to
    float rounding: test_fit_loop_under_two_workers_is_exact.)"""
    (ta, pa, ya), (tb, pb, yb) = results(a), results(b)
    tol = 1e-5 if exact else 5e-2
    assert ta["folds"].keys() == tb["folds"].keys()
    for fold in ta["folds"]:
        fa, fb = ta["folds"][fold], tb["folds"][fold]
        assert fa["epochs_run"] == fb["epochs_run"]
        np.testing.assert_allclose(fa["history"]["loss"], fb["history"]["loss"], rtol=tol)
        if exact:
            assert fa["best_epoch"] == fb["best_epoch"]
            np.testing.assert_allclose(fa["history"]["val_macro_f1"], fb["history"]["val_macro_f1"], atol=1e-9)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(pa, pb, atol=1e-4 if exact else 0.05)
    assert ta["val_macro_f1"] == pytest.approx(tb["val_macro_f1"], abs=1e-9 if exact else 0.05)


@pytest.mark.slow
def test_two_workers_equal_one_process_and_resume_after_a_kill(tmp_path):
    single, multi, killed = tmp_path / "single", tmp_path / "multi", tmp_path / "killed"
    for root in (single, multi, killed):
        write_project(root)
        (root / "logs").mkdir()
    run = Path("artifacts/ecg/lenet1d-ce")

    # one process, global batch 64
    done = subprocess.run([sys.executable, "-m", "pipeline.distributed", *STAGE], cwd=single, env=env_for(single),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "replicas in sync" not in done.stdout  # no TF_CONFIG: the stage ran as `python -m ecg.train`

    # two workers, global batch 64 (32 each)
    logs = multi / "logs"
    wait_all(start_workers(multi, free_ports(2), logs), logs)
    assert "2 replicas in sync" in (logs / "worker0.log").read_text()
    assert_same_training(single / run, multi / run, exact=False)
    # chief-only writing: the chief's outputs and MLflow store in the project, the worker's in its own folder
    assert (multi / run / "model.keras").is_file() and (multi / "mlflow.db").is_file()
    worker = multi / ".distributed/worker-1"
    assert (worker / run / "train.json").is_file() and (worker / "mlflow.db").is_file()
    assert not (multi / "artifacts/checkpoints/ecg/lenet1d-ce").exists()  # finished: nothing left to resume

    # kill both workers once the chief has committed an epoch of fold 0, then launch again: same result
    logs = killed / "logs"
    procs = start_workers(killed, free_ports(2), logs)
    unit = killed / "artifacts/checkpoints/ecg/lenet1d-ce/fold0/ckpt-0001"
    try:
        deadline = time.time() + 300
        while not unit.is_dir() and time.time() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        assert unit.is_dir(), "no checkpoint appeared"
    finally:
        stop_all(procs)
    assert not (killed / run / "train.json").exists()
    wait_all(start_workers(killed, free_ports(2), logs), logs)
    assert "resuming" in (logs / "worker0.log").read_text() and "resuming" in (logs / "worker1.log").read_text()
    assert_same_training(multi / run, killed / run, exact=True)


FIT_STAGE = '''
"""A stage without batch norm or dropout, through the shared fit loop: its weights and history to out.npz."""
import sys
from pathlib import Path
import keras, numpy as np
from pipeline import training
from pipeline.losses import make_loss


def main(argv):
    rng = np.random.default_rng(0)
    n = 256
    y = rng.integers(0, 3, n)
    x = {"beat": (rng.normal(size=(n, 24, 1)) + 0.4 * y[:, None, None]).astype("float32"),
         "rr": rng.uniform(0.5, 1.5, size=(n, 4)).astype("float32")}
    val = ({k: v[:96] for k, v in x.items()}, y[:96])

    def build():
        beat, rr = keras.Input((24, 1), name="beat"), keras.Input((4,), name="rr")
        h = keras.layers.Conv1D(4, 5, activation="relu")(beat)
        h = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling1D()(h), rr])
        return keras.Model([beat, rr], keras.layers.Dense(3, activation="softmax")(h))

    cfg = training.FitConfig(epochs=3, batch_size=32, learning_rate=1e-2, patience=5, min_delta=0.0)
    best, state = training.fit(build, make_loss("ce"), (x, y), val, (0, 1, 2), cfg, Path("artifacts/checkpoints/t"),
                               "fp", seed=7, verbose=0)
    Path("artifacts").mkdir(exist_ok=True)
    np.savez("artifacts/out.npz", loss=state["history"]["loss"], f1=state["history"]["val_macro_f1"],
             *best.get_weights())
    return 0
'''


def assert_fit_stage_exact(tmp_path, exe: str, backend: str) -> None:
    """FIT_STAGE through the launcher: 1 process, then 2 workers on 127.0.0.1 with the same global batch; the
    weights and histories agree to float rounding, and the two workers hold the same model."""
    def env(root, **kw):
        e = env_for(root, KERAS_BACKEND=backend, **kw)
        e["PYTHONPATH"] = f"{ROOT}{os.pathsep}{root}"
        return e

    single, multi = tmp_path / "single", tmp_path / "multi"
    for root in (single, multi):
        (root / "logs").mkdir(parents=True)
        (root / "fitstage.py").write_text(FIT_STAGE)
    done = subprocess.run([exe, "-m", "pipeline.distributed", "fitstage"], cwd=single, env=env(single),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ports = free_ports(2)
    procs = [subprocess.Popen([exe, "-m", "pipeline.distributed", "fitstage"], cwd=multi,
                              env=env(multi, TF_CONFIG=tf_config(2, i, ports)),
                              stdout=open(multi / f"logs/worker{i}.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True) for i in range(2)]
    wait_all(procs, multi / "logs")
    with np.load(single / "artifacts/out.npz") as a, np.load(multi / "artifacts/out.npz") as b, \
            np.load(multi / ".distributed/worker-1/artifacts/out.npz") as w:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
            np.testing.assert_array_equal(b[key], w[key], err_msg=key)  # the workers hold the same model


@pytest.mark.slow
def test_fit_loop_under_two_workers_is_exact(tmp_path):
    """The shared fit loop (per-epoch shuffle, seeds, validation macro-F1 from a gathered predict, checkpoint
    units) on 2 workers equals 1 process with the same global batch to float rounding, for a model without
    batch norm."""
    assert_fit_stage_exact(tmp_path, sys.executable, "tensorflow")


def jax_python() -> str | None:
    """An interpreter with JAX (the project's own when JAX is installed, or PIPELINE_JAX_PYTHON), else None."""
    exe = os.environ.get("PIPELINE_JAX_PYTHON") or sys.executable
    ok = subprocess.run([exe, "-c", "import jax, keras"], capture_output=True,
                        env={**os.environ, "KERAS_BACKEND": "jax"}).returncode == 0
    return exe if ok else None


@pytest.mark.slow
def test_fit_loop_under_two_jax_processes_is_exact(tmp_path):
    """The JAX path: keras.distribution.initialize + DataParallel over 2 processes on 127.0.0.1, each feeding its
    share of every batch; predictions gathered on every process. Equal to one JAX process to float rounding.
    Skipped where JAX is not installed (the project's CI runs TensorFlow); run it with PIPELINE_JAX_PYTHON set to
    an interpreter that has jax and keras."""
    exe = jax_python()
    if exe is None:
        pytest.skip("JAX is not installed (set PIPELINE_JAX_PYTHON to an interpreter with jax + keras)")
    assert_fit_stage_exact(tmp_path, exe, "jax")
