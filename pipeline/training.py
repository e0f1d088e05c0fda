"""The fit loop shared by both arms: seeds, validation macro-F1, early stop, checkpoints, resume.

A run directory holds `last.keras` + `state.json` after every epoch, so an interrupted run
continues from its last finished epoch when started again with the same fingerprint
(hash of params and data). `best.keras` holds the weights with the best validation macro-F1.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from pipeline.evaluation import macro_f1
from pipeline.io import atomic_path, ensure_dir, write_json
from pipeline.params import ParamsError


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


class ValMacroF1(keras.callbacks.Callback):
    """Adds val_macro_f1 (over `score_classes`) to the logs; saves state for resume and early stop."""

    def __init__(self, x_val, y_val, score_classes, run_dir: Path, cfg: FitConfig, state: dict):
        super().__init__()
        self.x_val, self.y_val, self.classes = x_val, y_val, list(score_classes)
        self.run_dir, self.cfg, self.state = run_dir, cfg, state

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        pred = predict_probs(self.model, self.x_val, self.cfg.batch_size * 4).argmax(axis=1)
        score = macro_f1(self.y_val, pred, self.classes) or 0.0
        logs["val_macro_f1"] = score
        st = self.state
        for key, value in logs.items():
            st["history"].setdefault(key, []).append(float(value))
        if score > st["best"] + self.cfg.min_delta:
            st.update(best=score, best_epoch=epoch + 1, wait=0)
            with atomic_path(self.run_dir / "best.keras", suffix=".keras") as tmp:
                self.model.save(tmp)
        else:
            st["wait"] += 1
        st["epoch"] = epoch + 1
        with atomic_path(self.run_dir / "last.keras", suffix=".keras") as tmp:
            self.model.save(tmp)
        write_json(self.run_dir / "state.json", st)  # written last: it vouches for last.keras
        print(f"epoch {epoch + 1}: val_macro_f1 {score:.4f} (best {st['best']:.4f} at epoch {st['best_epoch']})",
              flush=True)
        if st["wait"] >= self.cfg.patience:
            self.model.stop_training = True


def _load_state(run_dir: Path, fingerprint: str) -> dict | None:
    path = run_dir / "state.json"
    if not path.exists() or not (run_dir / "last.keras").exists():
        return None
    state = json.loads(path.read_text())
    return state if state.get("fingerprint") == fingerprint else None


def fit(build_model, loss, train, val, score_classes, cfg: FitConfig, run_dir: Path, fingerprint: str,
        seed: int = 0, verbose: int | None = None):
    """Train (or resume) and return (best_model, state). `build_model()` returns an uncompiled model.

    train/val are (x, y_int); x is an array or a dict of arrays. Labels become one-hot here.
    """
    ensure_dir(run_dir)
    n_classes = None
    state = _load_state(run_dir, fingerprint)
    if state is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        ensure_dir(run_dir)
        state = {"fingerprint": fingerprint, "epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0,
                 "history": {}, "config": asdict(cfg), "seed": seed}
        keras.utils.set_random_seed(seed)
        model = build_model()
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss,
                      metrics=["accuracy"], jit_compile=False)
    else:
        print(f"resuming {run_dir} after epoch {state['epoch']}", flush=True)
        keras.utils.set_random_seed(seed + state["epoch"])
        model = keras.models.load_model(run_dir / "last.keras")
    n_classes = model.output_shape[-1]
    done = state["wait"] >= cfg.patience or state["epoch"] >= cfg.epochs
    if not done:
        callback = ValMacroF1(val[0], val[1], score_classes, run_dir, cfg, state)
        model.fit(train[0], keras.utils.to_categorical(train[1], n_classes), batch_size=cfg.batch_size,
                  epochs=cfg.epochs, initial_epoch=state["epoch"], shuffle=True, callbacks=[callback],
                  verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2))
    best = keras.models.load_model(run_dir / "best.keras")
    return best, state
