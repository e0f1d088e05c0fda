"""fit(sampler=, schedule=): class-balanced epochs and a learning-rate schedule that keep the loop's contract
(resume equals an uninterrupted run), default to exactly the loop without them, and the ECG params that
drive them (ecg_train.sampling / ecg_train.schedule)."""
import json
import math

import keras
import numpy as np
import pytest
import yaml

from ecg import models, train_config
from ecg.train import epoch_sampler, lr_schedule
from pipeline import training
from pipeline.losses import make_loss
from pipeline.params import ParamsError, from_dict
from pipeline.sampling import ConstantSchedule, CosineSchedule, MajorityUndersampler
from pipeline.training import FitConfig, fit

CFG = FitConfig(epochs=3, batch_size=16, learning_rate=3e-3, patience=10, min_delta=0.0)
CLASSES = (0, 1, 2)


def _toy(n, seed, majority_share=0.75):
    """Imbalanced toy beats: class 0 is the majority."""
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(n) < majority_share, 0, rng.integers(1, 3, n))
    beat = rng.normal(size=(n, 33, 1)).astype("float32") + 0.5 * y[:, None, None].astype("float32")
    rr = rng.uniform(0.5, 1.5, size=(n, 5)).astype("float32")
    return {"beat": beat, "rr": rr}, y


TRAIN, VAL = _toy(96, 0), _toy(40, 1)


def _build():
    # dropout, batch norm and a SeedGenerator-driven augmentation layer: every source of state and randomness
    return models.build("lenet1d", 33, 5, 3, width=1, dropout=0.3,
                        augment={"gain": 0.2, "noise": 0.1, "rr_jitter": 0.05, "seed": 3})[0]


SAMPLER = MajorityUndersampler(TRAIN[1], majority=0, keep=0.5)
SCHEDULE = CosineSchedule(6e-3, CFG.epochs)


def _run(run_dir, callbacks=(), **kw):
    return fit(_build, make_loss("ce"), TRAIN, VAL, CLASSES, CFG, run_dir, "fp", seed=7, verbose=0,
               callbacks=callbacks, **kw)


def _last(run_dir):
    unit = training._units(run_dir)[0][1]
    return keras.models.load_model(unit / "model.keras"), json.loads((unit / "state.json").read_text())


class _Stop(keras.callbacks.Callback):
    def __init__(self, epoch, batch=None):
        super().__init__()
        self.epoch, self.batch, self._epoch = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.batch is not None and self._epoch == self.epoch and batch == self.batch:
            raise KeyboardInterrupt("simulated kill mid-epoch")

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None and epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated kill after epoch {epoch + 1}")


class _Probe(keras.callbacks.Callback):
    """Per batch: (epoch, batch, learning rate in force); per epoch: batches run."""

    def __init__(self):
        super().__init__()
        self.rates, self.batches, self.at_train_begin, self._epoch = [], {}, [], 0

    def on_train_begin(self, logs=None):  # where MLflow autologging reads the optimizer's settings
        self.at_train_begin.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.batches[epoch] = 0

    def on_train_batch_begin(self, batch, logs=None):
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.rates.append((self._epoch, batch, lr))
        self.batches[self._epoch] += 1


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Today's loop: the new arguments omitted."""
    d = tmp_path_factory.mktemp("plain")
    best, state = _run(d)
    return d, best, state


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """An uninterrupted run with the sampler and the schedule on."""
    d = tmp_path_factory.mktemp("sampled")
    probe = _Probe()
    best, state = _run(d, callbacks=[probe], sampler=SAMPLER, schedule=SCHEDULE)
    return d, best, state, probe


def _weights_close(a, b, atol=1e-6):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def _history_close(a, b, atol=1e-6):
    assert a["history"].keys() == b["history"].keys()
    for key in a["history"]:
        np.testing.assert_allclose(a["history"][key], b["history"][key], atol=atol, rtol=0, err_msg=key)
    assert {k: v for k, v in a.items() if k != "history"} == {k: v for k, v in b.items() if k != "history"}


# ------------------------------------------------------------------------------------- defaults unchanged
def test_none_equals_the_loop_without_the_arguments(plain, tmp_path):
    d, best, state = plain
    best2, state2 = _run(tmp_path, sampler=None, schedule=None)
    assert state2 == state  # bit for bit: history, best epoch, config
    assert "learning_rate" not in state["history"]
    for x, y in zip(best.get_weights(), best2.get_weights()):
        assert np.array_equal(x, y)
    for x, y in zip(_last(d)[0].optimizer.variables, _last(tmp_path)[0].optimizer.variables):
        assert np.array_equal(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y))


def test_sampler_and_schedule_change_training(plain, sampled):
    assert sampled[2]["history"]["loss"] != plain[2]["history"]["loss"]


# ------------------------------------------------------------------------------------------ resume exact
@pytest.mark.parametrize("stops", [[(0, None)], [(1, 2)], [(0, None), (1, None)]],
                         ids=["after-epoch1", "mid-epoch2", "after-epoch1-and-2"])
def test_resumed_run_equals_uninterrupted_with_sampler_and_schedule(sampled, tmp_path, stops):
    for epoch, batch in stops:
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path, callbacks=[_Stop(epoch, batch)], sampler=SAMPLER, schedule=SCHEDULE)
    probe = _Probe()
    best, state = _run(tmp_path, callbacks=[probe], sampler=SAMPLER, schedule=SCHEDULE)
    _history_close(sampled[2], state)
    _weights_close(sampled[1], best)
    _weights_close(_last(sampled[0])[0], _last(tmp_path)[0])
    # the resumed part followed the same learning-rate curve as the uninterrupted run
    resumed_from = stops[-1][0] + 1 if stops[-1][1] is None else stops[-1][0]
    assert probe.rates == [r for r in sampled[3].rates if r[0] >= resumed_from]


def test_the_schedule_sets_the_rate_of_every_epoch(sampled):
    _, _, state, probe = sampled
    batches = -(-len(SAMPLER) // CFG.batch_size)
    assert probe.batches == {e: batches for e in range(CFG.epochs)}  # epochs of the sampled size, not of all rows
    assert len(probe.rates) == CFG.epochs * batches
    for epoch, batch, lr in probe.rates:
        assert lr == pytest.approx(SCHEDULE(epoch), rel=1e-6)
    assert probe.at_train_begin == [pytest.approx(CFG.learning_rate)] * CFG.epochs  # the same for every fit call
    np.testing.assert_allclose(state["history"]["learning_rate"], [SCHEDULE(e) for e in range(CFG.epochs)], rtol=1e-6)
    assert SCHEDULE(0) == pytest.approx(6e-3) and SCHEDULE(0) > SCHEDULE(1) > SCHEDULE(2)


class _Grab(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([keras.ops.convert_to_numpy(w) for w in self.model.trainable_weights])  # not BN statistics


def schedule_effect(run_dir) -> list:
    """Largest weight change of epochs 2 and 3 when epoch 2 trains at rate 1e-12 and epoch 3 at 1e-2."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 64)
    x = {"beat": rng.normal(size=(64, 33, 1)).astype("float32"), "rr": np.ones((64, 5), "float32")}
    grab = _Grab()
    cfg = FitConfig(epochs=3, batch_size=16, learning_rate=1e-3, patience=10, min_delta=0.0)
    fit(lambda: models.build("lenet1d", 33, 5, 3, width=1, dropout=0.0)[0], make_loss("ce"), (x, y), (x, y),
        CLASSES, cfg, run_dir, "fp", seed=0, verbose=0, callbacks=[grab], schedule=lambda e: 1e-12 if e == 1 else 1e-2)
    w = grab.weights
    return [max(float(np.abs(a - b).max()) for a, b in zip(w[i], w[i - 1])) for i in (1, 2)]


def test_the_schedule_takes_effect_in_training(tmp_path):
    """Every batch of an epoch trains at the epoch's rate: a near-zero-rate epoch leaves the weights as they were."""
    still, moved = schedule_effect(tmp_path)
    assert still < 1e-8 and moved > 1e-4, (still, moved)


def test_the_schedule_takes_effect_on_jax(tmp_path):
    """The same on the JAX backend, whose optimizer state lives outside the Keras variables within an epoch
    (an interpreter with JAX: the project's own, or PIPELINE_JAX_PYTHON; skipped without one)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = os.environ.get("PIPELINE_JAX_PYTHON") or sys.executable
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    if subprocess.run([exe, "-c", "import jax, keras"], capture_output=True, env=env).returncode != 0:
        pytest.skip(f"no JAX in {exe}")
    root = str(Path(__file__).resolve().parents[1])
    code = ("import sys, keras; sys.path.insert(0, sys.argv[1]); from tests.test_training_sampling import "
            "schedule_effect; print(keras.backend.backend(), *schedule_effect(sys.argv[2]))")
    done = subprocess.run([exe, "-c", code, root, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    backend, still, moved = done.stdout.split()[-3:]
    assert backend == "jax" and float(still) < 1e-8 and float(moved) > 1e-4, done.stdout


def test_early_stopping_still_applies_with_sampler_and_schedule(tmp_path):
    cfg = FitConfig(epochs=4, batch_size=16, learning_rate=1e-9, patience=1, min_delta=0.5)
    _, state = fit(_build, make_loss("ce"), TRAIN, VAL, CLASSES, cfg, tmp_path, "fp", seed=7, verbose=0,
                   sampler=SAMPLER, schedule=ConstantSchedule(1e-9))
    assert state["epoch"] == 2 and state["best_epoch"] == 1 and state["wait"] == 1


# ----------------------------------------------------------------------------------------------- sampler
def test_sampler_keeps_every_minority_row_and_redraws_the_majority():
    y = np.array([0] * 200 + [1] * 15 + [2] * 7 + [3] * 1)
    s = MajorityUndersampler(y, majority=0, keep=0.25)
    minority = set(np.flatnonzero(y != 0).tolist())
    drawn = []
    for epoch in range(4):
        rows = s(11, epoch)
        assert len(rows) == len(s) == 23 + 50 and len(set(rows.tolist())) == len(rows)  # no duplicates
        assert minority <= set(rows.tolist())
        assert (y[rows] == 0).sum() == 50
        assert s.epoch_counts(4).tolist() == [50, 15, 7, 1]
        drawn.append(frozenset(rows[y[rows] == 0].tolist()))
        assert np.array_equal(rows, s(11, epoch))  # (seed, epoch) alone decide
        assert np.array_equal(rows, MajorityUndersampler(y, 0, 0.25)(11, epoch))  # a fresh object too
    assert len(set(drawn)) == 4  # a different majority subset each epoch
    assert not np.array_equal(s(11, 0), s(12, 0))  # and per seed
    assert len(MajorityUndersampler(y, 0, 1.0)(3, 0)) == len(y)


def test_fit_trains_on_the_sampler_rows_in_a_shuffled_order():
    rows = SAMPLER(7, 2)
    order = training.epoch_rows(SAMPLER, len(TRAIN[1]), 7, 2)
    assert sorted(order.tolist()) == rows.tolist() and not np.array_equal(order, rows)
    assert np.array_equal(order, training.epoch_rows(SAMPLER, len(TRAIN[1]), 7, 2))


@pytest.mark.parametrize("bad, match", [
    (lambda seed, epoch: np.array([0, 1, 500]), r"outside \[0, 96\)"),
    (lambda seed, epoch: np.array([], dtype=int), "non-empty 1-D array"),
    (lambda seed, epoch: np.array([0.5, 1.0]), "integer row indices"),
])
def test_a_bad_sampler_is_refused(tmp_path, bad, match):
    with pytest.raises(ValueError, match=f"sampler .*{match}"):
        _run(tmp_path, sampler=bad)
    assert training._units(tmp_path) == []


def test_a_bad_schedule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="schedule .* gave learning rate -1.0"):
        _run(tmp_path, schedule=lambda t: -1.0)


def test_sampler_and_schedule_arguments_are_checked():
    y = np.array([0, 0, 1])
    with pytest.raises(ValueError, match="keep must be a fraction"):
        MajorityUndersampler(y, 0, 0.0)
    with pytest.raises(ValueError, match="majority class 2 has no training rows"):
        MajorityUndersampler(y, 2, 0.5)
    with pytest.raises(ValueError, match="peak learning rate"):
        CosineSchedule(0.0, 3)
    with pytest.raises(ValueError, match="epochs"):
        CosineSchedule(1e-3, 0)


def test_cosine_schedule_shape():
    s = CosineSchedule(2e-3, 24)
    assert s(0) == pytest.approx(2e-3)
    assert s(12) == pytest.approx(2e-3 * (0.01 + 0.99 * 0.5))
    assert s(24) == pytest.approx(2e-5) and s(30) == pytest.approx(2e-5)
    assert all(s(t) > s(t + 0.5) for t in np.arange(0, 23.5, 0.5))
    assert math.isclose(ConstantSchedule(1e-3)(5.5), 1e-3)


# ---------------------------------------------------------------------------------------------- ECG params
def _ecg(**section):
    return from_dict(train_config.EcgTrain, section, "ecg_train")


def test_ecg_defaults_give_todays_loop():
    cfg = _ecg()
    assert epoch_sampler(cfg, np.array([0, 1, 0]), ["N", "S"]) is None
    assert lr_schedule(cfg) is None
    cfg = _ecg(sampling={"majority": "N", "keep": None}, schedule={"kind": "constant", "peak_factor": 1.0})
    assert epoch_sampler(cfg, np.array([0, 1, 0]), ["N", "S"]) is None and lr_schedule(cfg) is None


def test_ecg_params_build_the_sampler_and_schedule():
    cfg = _ecg(fit={"epochs": 24, "learning_rate": 1e-3}, sampling={"majority": "N", "keep": 0.25},
               schedule={"kind": "cosine", "peak_factor": 2.0})
    y = np.array([1] * 5 + [0] * 40 + [2] * 3)
    s = epoch_sampler(cfg, y, ["N", "S", "V"])
    assert isinstance(s, MajorityUndersampler) and s.majority == 0 and len(s) == 8 + 10
    sched = lr_schedule(cfg)
    assert isinstance(sched, CosineSchedule) and sched(0) == pytest.approx(2e-3) and sched.epochs == 24
    assert lr_schedule(_ecg(schedule={"kind": "constant", "peak_factor": 0.5}))(7) == pytest.approx(5e-4)
    run = cfg.run_config("dilated1d", "focal")  # both are part of the resume fingerprint and provenance
    assert run["sampling"] == {"majority": "N", "keep": 0.25}
    assert run["schedule"] == {"kind": "cosine", "peak_factor": 2.0}


@pytest.mark.parametrize("section, key", [
    ({"sampling": {"majority": "N", "keep": 1.5}}, r"ecg_train\.sampling.*keep"),
    ({"sampling": {"majority": "N", "keep": 0}}, r"ecg_train\.sampling.*keep"),
    ({"sampling": {"keep": 0.5, "fraction": 0.5}}, r"unknown key.*fraction.*ecg_train\.sampling"),
    ({"schedule": {"kind": "linear"}}, r"ecg_train\.schedule.*kind.*linear"),
    ({"schedule": {"kind": "cosine", "peak_factor": 0.0}}, r"ecg_train\.schedule.*peak_factor"),
    ({"schedule": {"kind": "cosine", "peak_factor": "2x"}}, r"ecg_train\.schedule\.peak_factor"),
])
def test_bad_ecg_settings_name_the_key(section, key):
    with pytest.raises(ParamsError, match=key):
        _ecg(**section)


def test_unknown_majority_class_names_the_key():
    cfg = _ecg(sampling={"majority": "Q", "keep": 0.5})
    with pytest.raises(ValueError, match=r"ecg_train\.sampling\.majority: 'Q'"):
        epoch_sampler(cfg, np.array([0, 1]), ["N", "S"])


def test_dvc_yaml_lists_every_shared_key():
    """train_ecg lists every shared key run_config reads (a changed sampling/schedule reruns train_ecg)."""
    from pathlib import Path

    stage = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]["train_ecg"]
    params = stage.get("do", stage)["params"]
    assert {"ecg_train.sampling", "ecg_train.schedule"} <= {f"ecg_train.{k}" for k in train_config.SHARED_KEYS}
    assert {f"ecg_train.{k}" for k in train_config.SHARED_KEYS} <= set(params)


def test_schedule_and_sampler_under_mixed_float16(tmp_path):
    """Under mixed_float16 the optimizer is a LossScaleOptimizer: the rate reaches its inner optimizer."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        cfg = FitConfig(epochs=2, batch_size=32, learning_rate=1e-3, patience=10, min_delta=0.0)
        _, state = fit(_build, make_loss("ce"), TRAIN, VAL, CLASSES, cfg, tmp_path, "fp", seed=7, verbose=0,
                       sampler=SAMPLER, schedule=CosineSchedule(2e-3, 2))
        last, _ = _last(tmp_path)
        assert isinstance(last.optimizer, keras.optimizers.LossScaleOptimizer)
        inner = float(keras.ops.convert_to_numpy(last.optimizer.inner_optimizer.learning_rate))
        assert inner == pytest.approx(CosineSchedule(2e-3, 2)(1), rel=1e-6)
        assert np.all(np.isfinite(state["history"]["loss"]))
    finally:
        keras.mixed_precision.set_global_policy(previous)
