"""kill -9 a real training process at every epoch boundary, mid-epoch and inside the checkpoint write, resume
until it finishes, and require the final weights, optimizer state and metrics to equal an uninterrupted run's
(CPU, TensorFlow backend). Slow: every kill costs a fresh Python + Keras process."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4

WORKER = textwrap.dedent(r'''
    import json, os, signal, sys
    from pathlib import Path
    import keras, numpy as np
    sys.path.insert(0, sys.argv[4])
    from ecg import models
    from pipeline import training
    from pipeline.losses import make_loss

    run_dir, out, kill = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    EPOCHS = int(os.environ["KILL_TEST_EPOCHS"])

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    what, _, arg = kill.partition(":")
    callbacks = []

    class Hook(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if what == "batch" and [self.epoch, batch] == [int(v) for v in arg.split(",")]:
                die()
        def on_epoch_end(self, epoch, logs=None):  # runs after the controller committed the unit
            if what == "end" and epoch == int(arg):
                die()
    callbacks.append(Hook())

    if what == "save":  # model.keras of unit <arg> written, best.keras and state.json not yet
        orig_save = keras.Model.save
        def save(self, path, *a, **kw):
            orig_save(self, path, *a, **kw)
            p = Path(path)
            if p.name == "model.keras" and p.parent.name.startswith(f".ckpt-{int(arg):04d}."):
                die()
        keras.Model.save = save
    if what == "rename":  # the whole unit written, not yet renamed into place
        orig_rename = os.rename
        def rename(src, dst, *a, **kw):
            if Path(dst).name == f"ckpt-{int(arg):04d}":
                die()
            return orig_rename(src, dst, *a, **kw)
        training.os.rename = rename

    rng = np.random.default_rng(0)
    n = 192
    y = rng.integers(0, 3, n)
    x = {"beat": (rng.normal(size=(n, 33, 1)) + 0.5 * y[:, None, None]).astype("float32"),
         "rr": rng.uniform(0.5, 1.5, size=(n, 5)).astype("float32")}
    val = ({k: v[:64] for k, v in x.items()}, y[:64])
    build = lambda: models.build("lenet1d", 33, 5, 3, width=1, dropout=0.3,
                                 augment={"gain": 0.2, "noise": 0.1, "rr_jitter": 0.05, "seed": 3})[0]
    cfg = training.FitConfig(epochs=EPOCHS, batch_size=16, learning_rate=3e-3, patience=10, min_delta=0.0)
    best, state = training.fit(build, make_loss("ce"), (x, y), val, (0, 1, 2), cfg, run_dir, "fp", seed=5,
                               verbose=0, callbacks=callbacks)
    unit = training._units(run_dir)[0][1]
    last = keras.models.load_model(unit / "model.keras")
    arrays = {f"best{i}": w for i, w in enumerate(best.get_weights())}
    arrays.update({f"last{i}": w for i, w in enumerate(last.get_weights())})
    arrays.update({f"opt{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(last.optimizer.variables)})
    arrays["probs"] = training.predict_probs(best, val[0])
    np.savez(out.with_suffix(".npz"), **arrays)
    out.with_suffix(".json").write_text(json.dumps(state))
''')


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KILL_TEST_EPOCHS=str(EPOCHS), CUDA_VISIBLE_DEVICES="",
               KERAS_BACKEND="tensorflow", PYTHONHASHSEED="0")
    return env


def _start(script, run_dir, out, kill="none"):
    return subprocess.Popen([sys.executable, str(script), str(run_dir), str(out), kill, str(ROOT)], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(script, run_dir, out, kill="none"):
    proc = _start(script, run_dir, out, kill)
    log, _ = proc.communicate(timeout=300)
    return proc.returncode, log


def _load(out):
    with np.load(out.with_suffix(".npz")) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(out.with_suffix(".json").read_text())


def _assert_identical(a, b):
    (wa, sa), (wb, sb) = a, b
    assert sa == sb  # epochs run, best epoch, best score, full per-epoch history
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), f"{k} differs: max |diff| {np.abs(wa[k] - wb[k]).max()}"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    script = d / "worker.py"
    script.write_text(WORKER)
    rc, log = _run(script, d / "ref-run", d / "ref")
    assert rc == 0, log
    return script, _load(d / "ref")


def _kill_chain():
    """Kill points in the order a resumed run reaches them: mid-epoch, inside the unit write, after commit."""
    chain = []
    for e in range(EPOCHS):
        chain += [f"batch:{e},5", f"save:{e + 1}", f"rename:{e + 1}"]
        if e < EPOCHS - 1:
            chain.append(f"end:{e}")
    return chain


def test_kill_at_every_boundary_and_mid_epoch(worker, tmp_path):
    script, reference = worker
    assert reference[1]["epoch"] == EPOCHS
    run_dir, out = tmp_path / "run", tmp_path / "out"
    for kill in _kill_chain():
        rc, log = _run(script, run_dir, out, kill)
        assert rc == -signal.SIGKILL, f"{kill}: expected a kill, got rc {rc}\n{log}"
        assert not out.with_suffix(".npz").exists()
    rc, log = _run(script, run_dir, out)
    assert rc == 0, log
    assert "resuming" in log
    _assert_identical(_load(out), reference)


def test_kill_at_random_times(worker, tmp_path):
    """External kill -9 at arbitrary moments (wherever they land), then resume to the end."""
    script, reference = worker
    run_dir, out = tmp_path / "run", tmp_path / "out"
    rng = np.random.default_rng(11)
    kills = 0
    for _ in range(EPOCHS + 2):
        before = {p.name for p in run_dir.glob("ckpt-*")}
        proc = _start(script, run_dir, out)
        start = time.monotonic()
        # let it commit at least one more epoch (progress), then kill at a random moment of the next one
        while (proc.poll() is None and {p.name for p in run_dir.glob("ckpt-*")} <= before
               and time.monotonic() - start < 240):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=300)
        if proc.returncode == 0:
            break
    else:
        rc, log = _run(script, run_dir, out)
        assert rc == 0, log
    assert kills >= 1
    _assert_identical(_load(out), reference)
