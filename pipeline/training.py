"""The fit loop shared by both arms: seeds, validation macro-F1, early stop, checkpoints, resume.

Resume equals an uninterrupted run, bit for bit (on a deterministic device such as the CPU):

* Every epoch is a pure function of (weights + optimizer state after the previous epoch, seed, epoch):
  its shuffle order comes from a numpy Generator seeded with (seed, epoch), and at its start the global
  seeds (`keras.utils.set_random_seed`) and the state of every `SeedGenerator` in the model (dropout,
  augmentation layers) are reset from (seed, epoch). Where the run started does not matter.
* After every epoch the run folder gets ONE checkpoint unit, `ckpt-<epoch>/`, holding `model.keras`
  (weights and optimizer state), `best.keras` (the best epoch so far) and `state.json` (epoch, best,
  patience counter, history). The unit is written in a hidden temporary folder, flushed, and renamed into
  place in one step, so a kill leaves either the whole unit or none of it. Older units are then removed
  (the previous one is kept as a fallback). On start, the newest complete unit whose fingerprint and seed
  match is trusted; hidden partial folders are deleted; with no usable unit the run starts from scratch.
* Optional per-epoch row sampling (`sampler`) and learning-rate schedule (`schedule`) keep this contract: the
  rows of epoch e are `sampler(seed, e)` (then shuffled as above) and its learning rate is `schedule(e)`,
  pure functions of (seed, epoch). Both default to None: the loop is then exactly the one without them.
  The caller's fingerprint must cover their settings (resume trusts it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from pipeline.evaluation import macro_f1
from pipeline.io import ensure_dir
from pipeline.params import ParamsError

UNIT_RE = re.compile(r"^ckpt-(\d{4,})$")
UNIT_FILES = ("model.keras", "best.keras", "state.json")
KEEP_UNITS = 2  # the newest unit and one fallback


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    patience: int = 5
    min_delta: float = 1e-3

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ParamsError("epochs, batch_size and patience must be >= 1")
        if self.learning_rate <= 0:
            raise ParamsError(f"learning_rate must be positive, got {self.learning_rate}")


def predict_probs(model, x, batch_size: int = 1024) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)


# ---------------------------------------------------------------------------------------------- RNG
def _derive(*parts: int) -> int:
    """A 31-bit seed that depends only on `parts` (numpy SeedSequence, stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def _seed_states(model) -> list:
    """The state variables of every SeedGenerator in `model`, in the model's (architecture-fixed) order."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def seed_epoch(model, seed: int, epoch: int) -> None:
    """Reset all randomness that epoch `epoch` (0-based) may draw on from (seed, epoch) alone."""
    keras.utils.set_random_seed(_derive(seed, epoch))
    for i, var in enumerate(_seed_states(model)):
        var.assign(np.array([_derive(seed, epoch, i + 1), 0], dtype=str(var.dtype)))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle order of epoch `epoch`: a permutation of range(n) from a Generator seeded by (seed, epoch)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(n)


def epoch_rows(sampler, n: int, seed: int, epoch: int) -> np.ndarray:
    """The training rows of epoch `epoch`, shuffled: `sampler(seed, epoch)` (row indices into the training
    set, checked) in the order of `epoch_order` over them."""
    rows = np.asarray(sampler(seed, epoch))
    if rows.ndim != 1 or rows.size == 0 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"sampler {sampler!r} returned {rows.dtype} array of shape {rows.shape} for epoch {epoch}; "
                         "it must return a non-empty 1-D array of integer row indices")
    if rows.min() < 0 or rows.max() >= n:
        raise ValueError(f"sampler {sampler!r} returned row indices outside [0, {n}) for epoch {epoch} "
                         f"(min {rows.min()}, max {rows.max()})")
    return rows[epoch_order(len(rows), seed, epoch)]


class LearningRateSetter(keras.callbacks.Callback):
    """Sets the optimizer's rate at the start of epoch e to `schedule(e)` (a pure function of the epoch, so a
    resumed run continues the same curve) and adds it to the epoch's logs as `learning_rate`. Per epoch, not
    per batch: on the JAX backend the optimizer state lives outside the Keras variables between the batches of
    an epoch, so a rate assigned inside an epoch would not take effect (Keras's LearningRateScheduler sets it
    at on_epoch_begin too). At on_train_begin the rate reads `rest` (the compiled rate), so what callbacks that
    log the optimizer's settings there (MLflow autologging) see is the same for every per-epoch `model.fit`."""

    def __init__(self, schedule, rest: float):
        super().__init__()
        self.schedule, self.rest, self.lr = schedule, float(rest), None

    def on_train_begin(self, logs=None):
        self.model.optimizer.learning_rate = self.rest

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.schedule(epoch))
        if not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"schedule {self.schedule!r} gave learning rate {lr} for epoch {epoch}; "
                             "it must be positive and finite")
        self.model.optimizer.learning_rate = lr
        self.lr = lr

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.lr is not None:
            logs["learning_rate"] = self.lr


def _take(x, idx):
    return {k: np.asarray(v)[idx] for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)[idx]


# ------------------------------------------------------------------------------------ checkpoint units
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _units(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete-looking units (by name), newest first."""
    found = []
    for p in run_dir.iterdir() if run_dir.is_dir() else ():
        m = UNIT_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _read_unit(unit: Path, epoch: int, fingerprint: str, seed: int) -> dict | None:
    """The unit's state if it is complete and belongs to this run; None otherwise."""
    if not all((unit / name).is_file() for name in UNIT_FILES):
        return None
    try:
        state = json.loads((unit / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint or state.get("seed") != seed:
        return None
    if state.get("epoch") != epoch:
        return None
    return state


def write_unit(run_dir: Path, model, state: dict, improved: bool, previous: Path | None) -> Path:
    """Write `ckpt-<epoch>/` (model + optimizer, best model, state.json) as one atomic unit; return it."""
    epoch = int(state["epoch"])
    final = run_dir / f"ckpt-{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".ckpt-{epoch:04d}.", suffix=".part", dir=run_dir))
    try:
        model.save(tmp / "model.keras")
        if improved or previous is None:
            model.save(tmp / "best.keras")
        else:
            try:
                os.link(previous / "best.keras", tmp / "best.keras")  # unchanged best: share the file
            except OSError:
                shutil.copy2(previous / "best.keras", tmp / "best.keras")
        (tmp / "state.json").write_text(json.dumps(state, indent=2, allow_nan=False) + "\n")
        for name in UNIT_FILES:
            _fsync(tmp / name)
        os.chmod(tmp, 0o777 & ~_umask())
        if final.exists():  # a stale unit of the same epoch (e.g. one that did not load): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)  # the commit point
        _fsync(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in _units(run_dir)[KEEP_UNITS:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clean_partial(run_dir: Path) -> None:
    for p in run_dir.glob(".ckpt-*.part"):
        shutil.rmtree(p, ignore_errors=True)


def load_unit(run_dir: Path, fingerprint: str, seed: int):
    """(state, model, unit folder) of the newest usable unit, or None. Unusable units are skipped."""
    for epoch, unit in _units(run_dir):
        state = _read_unit(unit, epoch, fingerprint, seed)
        if state is None:
            continue
        try:
            model = keras.models.load_model(unit / "model.keras")
        except Exception as exc:  # a damaged archive: fall back to the previous unit
            print(f"ignoring checkpoint {unit}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        return state, model, unit
    return None


# ---------------------------------------------------------------------------------------- controller
class CheckpointController(keras.callbacks.Callback):
    """Per epoch: adds val_macro_f1 (over `score_classes`) to the logs, updates best / patience, writes the
    atomic checkpoint unit, and stops training when patience runs out. Must come first among callbacks (only
    the LearningRateSetter, which reads no logs, runs before it), so later ones (e.g. MLflow's) see
    val_macro_f1."""

    def __init__(self, x_val, y_val, score_classes, run_dir: Path, cfg: FitConfig, state: dict,
                 unit: Path | None, expected_steps: int | None = None):
        super().__init__()
        self.x_val, self.y_val, self.classes = x_val, y_val, list(score_classes)
        self.run_dir, self.cfg, self.state, self.unit = run_dir, cfg, state, unit
        self.expected_steps = expected_steps  # batches in a full epoch
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.expected_steps is not None and self._steps < self.expected_steps:
            # another callback stopped training mid-epoch: a partial epoch is never committed
            print(f"epoch {epoch + 1} stopped after {self._steps}/{self.expected_steps} batches: not checkpointed",
                  file=sys.stderr, flush=True)
            return
        logs = logs if logs is not None else {}
        pred = predict_probs(self.model, self.x_val, self.cfg.batch_size * 4).argmax(axis=1)
        score = macro_f1(self.y_val, pred, self.classes) or 0.0
        logs["val_macro_f1"] = score
        st = self.state
        for key, value in logs.items():
            st["history"].setdefault(key, []).append(float(value))
        improved = score > st["best"] + self.cfg.min_delta
        if improved:
            st.update(best=score, best_epoch=epoch + 1, wait=0)
        else:
            st["wait"] += 1
        st["epoch"] = epoch + 1
        self.unit = write_unit(self.run_dir, self.model, st, improved, self.unit)
        print(f"epoch {epoch + 1}: val_macro_f1 {score:.4f} (best {st['best']:.4f} at epoch {st['best_epoch']})",
              flush=True)
        if self.done:
            self.model.stop_training = True

    @property
    def done(self) -> bool:
        return self.state["wait"] >= self.cfg.patience or self.state["epoch"] >= self.cfg.epochs


def fit(build_model, loss, train, val, score_classes, cfg: FitConfig, run_dir: Path, fingerprint: str,
        seed: int = 0, verbose: int | None = None, callbacks=(), sampler=None, schedule=None):
    """Train (or resume) and return (best_model, state). `build_model()` returns an uncompiled model.

    train/val are (x, y_int); x is an array or a dict of arrays. Labels become one-hot here.
    `callbacks` are extra Keras callbacks (e.g. MLflow's), run after the checkpoint controller. The loop
    calls `model.fit` once per epoch (initial_epoch=e, epochs=e+1), so they see on_train_begin/end
    per epoch and on_epoch_* with the true epoch index.

    `sampler` (optional): `sampler(seed, epoch)` returns the training row indices epoch `epoch` (0-based) uses,
    from (seed, epoch) alone (e.g. pipeline.sampling.MajorityUndersampler); None = every row every epoch.
    `schedule` (optional): `schedule(epoch)` returns the learning rate of epoch `epoch` (0-based; e.g.
    pipeline.sampling.CosineSchedule); None = the constant cfg.learning_rate. The validation
    pass, early stopping and patience are unchanged. Put their settings into `fingerprint`.
    """
    run_dir = Path(run_dir)
    ensure_dir(run_dir)
    _clean_partial(run_dir)
    loaded = load_unit(run_dir, fingerprint, seed)
    if loaded is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        ensure_dir(run_dir)
        state = {"fingerprint": fingerprint, "epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0,
                 "history": {}, "config": asdict(cfg), "seed": seed}
        keras.utils.set_random_seed(seed)
        model = build_model()
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss,
                      metrics=["accuracy"], jit_compile=False)
        unit = None
    else:
        state, model, unit = loaded
        print(f"resuming {run_dir} after epoch {state['epoch']}", flush=True)
    x, y = train[0], np.asarray(train[1])
    y_onehot = keras.utils.to_categorical(y, model.output_shape[-1])
    controller = CheckpointController(val[0], val[1], score_classes, run_dir, cfg, state, unit,
                                      expected_steps=-(-len(y) // cfg.batch_size))
    verbose = verbose if verbose is not None else (1 if sys.stdout.isatty() else 2)
    while not controller.done:
        epoch = state["epoch"]
        if sampler is None:
            order = epoch_order(len(y), seed, epoch)
        else:
            order = epoch_rows(sampler, len(y), seed, epoch)
            controller.expected_steps = -(-len(order) // cfg.batch_size)
        seed_epoch(model, seed, epoch)
        first = [] if schedule is None else [LearningRateSetter(schedule, cfg.learning_rate)]
        model.fit(_take(x, order), y_onehot[order], batch_size=cfg.batch_size, initial_epoch=epoch,
                  epochs=epoch + 1, shuffle=False, callbacks=[*first, controller, *callbacks], verbose=verbose)
        if state["epoch"] != epoch + 1:  # a callback stopped training before the epoch ended
            raise RuntimeError(f"epoch {epoch + 1} of {run_dir} did not finish")
    best = keras.models.load_model(controller.unit / "best.keras")
    return best, state
