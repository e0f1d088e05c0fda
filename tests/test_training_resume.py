"""Resume equals an uninterrupted run: interrupted at any point, the fit loop ends with identical weights,
optimizer state and metrics; a torn checkpoint unit is never trusted; another fingerprint starts over."""
import json
import shutil

import keras
import numpy as np
import pytest

from ecg import models
from pipeline import training
from pipeline.losses import make_loss
from pipeline.training import FitConfig, fit

CFG = FitConfig(epochs=3, batch_size=32, learning_rate=3e-3, patience=10, min_delta=0.0)
CLASSES = (0, 1, 2)


def _toy(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    beat = rng.normal(size=(n, 33, 1)).astype("float32") + 0.5 * y[:, None, None].astype("float32")
    rr = rng.uniform(0.5, 1.5, size=(n, 5)).astype("float32")
    return {"beat": beat, "rr": rr}, y


def _build():
    # dropout, batch norm and a SeedGenerator-driven augmentation layer: every source of state and randomness
    return models.build("lenet1d", 33, 5, 3, width=1, dropout=0.3,
                        augment={"gain": 0.2, "noise": 0.1, "rr_jitter": 0.05, "seed": 3})[0]


TRAIN, VAL = _toy(), _toy(48, seed=1)


def _run(run_dir, cfg=CFG, fingerprint="fp", seed=7, callbacks=()):
    return fit(_build, make_loss("ce"), TRAIN, VAL, CLASSES, cfg, run_dir, fingerprint, seed=seed, verbose=0,
               callbacks=callbacks)


def _last(run_dir):
    unit = training._units(run_dir)[0][1]
    return keras.models.load_model(unit / "model.keras"), json.loads((unit / "state.json").read_text())


def _assert_same(a_dir, a_best, a_state, b_dir, b_best, b_state):
    assert a_state == b_state  # epochs, best epoch, full history (loss, accuracy, val_macro_f1)
    for x, y in zip(a_best.get_weights(), b_best.get_weights()):
        assert np.array_equal(x, y)
    (a_last, _), (b_last, _) = _last(a_dir), _last(b_dir)
    for x, y in zip(a_last.get_weights(), b_last.get_weights()):
        assert np.array_equal(x, y)
    for x, y in zip(a_last.optimizer.variables, b_last.optimizer.variables):
        assert np.array_equal(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    probe = _Probe()
    best, state = _run(run_dir, callbacks=[probe])
    assert probe.seen == [(0, True), (1, True), (2, True)]  # extra callbacks run, after val_macro_f1 is logged
    return run_dir, best, state


class _Probe(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((epoch, "val_macro_f1" in logs))


class _Stop(keras.callbacks.Callback):
    """Interrupts the run at the end of epoch `epoch` (after its unit is written) or at a batch inside it."""

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, batch, logs=None):
        if self.batch is not None and self._epoch == self.epoch and batch == self.batch:
            raise KeyboardInterrupt(f"simulated kill in epoch {self.epoch + 1}, batch {batch}")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None and epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated kill after epoch {epoch + 1}")


def test_reference_run_trains(reference):
    run_dir, best, state = reference
    assert state["epoch"] == 3 and len(state["history"]["val_macro_f1"]) == 3
    assert state["history"]["loss"][-1] < state["history"]["loss"][0]
    assert 1 <= state["best_epoch"] <= 3
    assert [p.name for _, p in training._units(run_dir)] == ["ckpt-0003", "ckpt-0002"]  # newest + fallback


@pytest.mark.parametrize("stops", [[(0, None)], [(1, 1)], [(0, 2), (1, 0), (1, None)]],
                         ids=["after-epoch1", "mid-epoch2", "three-kills"])
def test_interrupted_runs_end_identical(reference, tmp_path, stops):
    for epoch, batch in stops:
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path, callbacks=[_Stop(epoch, batch)])
        units = training._units(tmp_path)
        done = json.loads((units[0][1] / "state.json").read_text())["epoch"] if units else 0
        assert done == (epoch + 1 if batch is None else epoch)  # only finished epochs are committed
    best, state = _run(tmp_path)
    _assert_same(*reference, tmp_path, best, state)


def test_seeding_depends_on_epoch_only():
    # same (seed, epoch) -> same order and same SeedGenerator states, whatever happened before
    m1, m2 = _build(), _build()
    training.seed_epoch(m1, 7, 3)
    keras.random.normal((5,))  # draw from the global generator in between: must not matter
    training.seed_epoch(m2, 7, 3)
    s1 = [keras.ops.convert_to_numpy(v) for v in training._seed_states(m1)]
    s2 = [keras.ops.convert_to_numpy(v) for v in training._seed_states(m2)]
    assert len(s1) >= 3  # augment + two dropouts at least
    assert all(np.array_equal(a, b) for a, b in zip(s1, s2))
    assert np.array_equal(training.epoch_order(100, 7, 3), training.epoch_order(100, 7, 3))
    assert not np.array_equal(training.epoch_order(100, 7, 3), training.epoch_order(100, 7, 4))
    training.seed_epoch(m2, 7, 4)
    assert not np.array_equal(s1[0], keras.ops.convert_to_numpy(training._seed_states(m2)[0]))


def test_torn_unit_resumes_from_previous_complete_unit(reference, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, callbacks=[_Stop(1)])
    units = training._units(tmp_path)
    assert [p.name for _, p in units] == ["ckpt-0002", "ckpt-0001"]
    (units[0][1] / "state.json").unlink()  # the newest unit is torn: it must not be trusted
    (tmp_path / ".ckpt-0003.abc.part").mkdir()  # a half-written unit from a killed write
    (tmp_path / ".ckpt-0003.abc.part" / "model.keras").write_bytes(b"partial")
    resumed = []
    orig = training.load_unit

    def spy(*a, **kw):
        out = orig(*a, **kw)
        resumed.append(None if out is None else out[0]["epoch"])
        return out

    training.load_unit = spy
    try:
        best, state = _run(tmp_path)
    finally:
        training.load_unit = orig
    assert resumed == [1]
    assert not list(tmp_path.glob(".ckpt-*"))  # partial folders are cleaned
    _assert_same(*reference, tmp_path, best, state)


def test_damaged_model_archive_falls_back(reference, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, callbacks=[_Stop(1)])
    newest = training._units(tmp_path)[0][1]
    assert newest.name == "ckpt-0002"
    (newest / "model.keras").write_bytes(b"not a zip")
    best, state = _run(tmp_path)
    _assert_same(*reference, tmp_path, best, state)


def test_other_fingerprint_or_seed_starts_over(tmp_path):
    cfg = FitConfig(epochs=1, batch_size=32, patience=10)
    _run(tmp_path, cfg=cfg, fingerprint="a")
    marker = tmp_path / "ckpt-0001" / "state.json"
    assert json.loads(marker.read_text())["fingerprint"] == "a"
    starts = []
    orig_build = _build

    def counting_build():
        starts.append(1)
        return orig_build()

    for fp, seed in (("b", 7), ("b", 8)):
        fit(counting_build, make_loss("ce"), TRAIN, VAL, CLASSES, cfg, tmp_path, fp, seed=seed, verbose=0)
        state = json.loads(marker.read_text())
        assert state["fingerprint"] == fp and state["seed"] == seed and len(state["history"]["loss"]) == 1
    assert len(starts) == 2  # both runs built a fresh model: nothing was resumed across fingerprints/seeds


def test_finished_run_is_not_retrained(reference, tmp_path):
    shutil.copytree(reference[0], tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    best, state = _run(tmp_path / "run")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before
    _assert_same(*reference, tmp_path / "run", best, state)


def test_early_stop_state_is_committed(tmp_path):
    cfg = FitConfig(epochs=4, batch_size=32, learning_rate=1e-9, patience=1, min_delta=0.5)
    _, state = _run(tmp_path, cfg=cfg)
    assert state["epoch"] == 2 and state["best_epoch"] == 1 and state["wait"] == 1  # stopped by patience
    unit = training._units(tmp_path)[0][1]
    assert json.loads((unit / "state.json").read_text()) == state


def test_epoch_stopped_midway_by_a_callback_is_not_committed(tmp_path):
    class Halt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    with pytest.raises(RuntimeError, match="epoch 1 .* did not finish"):
        _run(tmp_path, cfg=FitConfig(epochs=1, batch_size=32, patience=10), callbacks=[Halt()])
    assert training._units(tmp_path) == []
