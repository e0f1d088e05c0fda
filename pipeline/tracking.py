"""MLflow logging, done explicitly by the stages (no autolog).

The store defaults to sqlite:///mlflow.db at the project root; MLFLOW_TRACKING_URI overrides.
DVC metrics files stay the source of truth; MLflow gets the same numbers.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from pathlib import Path

PIP_REQUIREMENTS = ["keras>=3.3", "tensorflow>=2.16", "numpy"]


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def _mlflow():
    import mlflow  # imported lazily: slow, and only the tracking stages need it
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def code_version() -> dict:
    """Where a run comes from: the DVC experiment name (set by `dvc exp run`) and the git revision."""
    out = {"dvc_exp": os.environ.get("DVC_EXP_NAME") or None, "git_rev": None, "git_dirty": None}
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            out["git_rev"] = rev.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=10)
            out["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def run_label(name: str, version: dict | None = None) -> str:
    """'<run> @ <dvc experiment or git revision>', so runs of one (model, loss) can be told apart."""
    version = version or code_version()
    where = version["dvc_exp"] or (version["git_rev"] and version["git_rev"] + ("+dirty" if version["git_dirty"] else ""))
    return f"{name} @ {where}" if where else name


@contextlib.contextmanager
def run(experiment: str, run_name: str, run_id: str | None = None, nested: bool = False):
    """Start a new run, or reopen `run_id` if it exists in this store; yields the mlflow module.

    New runs are named `run_label(run_name)` and tagged with the DVC experiment and git revision.
    """
    mlflow = _mlflow()
    mlflow.set_experiment(experiment)
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except Exception:
            run_id = None  # another store (fresh clone): start a new run
    version = code_version()
    tags = None if run_id else {"pipeline.run": run_name, **{f"pipeline.{k}": str(v) for k, v in version.items()
                                                             if v is not None}}
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_label(run_name, version),
                          nested=nested, tags=tags):
        yield mlflow


def log_dataset(mlflow, path: Path | str, digest: str, name: str, context: str, features, targets=None) -> None:
    """Record a prepared data file as an MLflow dataset input (source path, content digest, schema)."""
    dataset = mlflow.data.from_numpy(features, source=str(Path(path).resolve()), targets=targets, name=name,
                                     digest=digest[:36])
    mlflow.log_input(dataset, context=context)


def epoch_logger():
    """MLflow's Keras callback: per-epoch curves appear live in the active run."""
    from mlflow.keras import MlflowCallback
    return MlflowCallback(log_every_epoch=True)


@contextlib.contextmanager
def phase_run(experiment: str, name: str):
    """A nested run (a fold, a training phase) under the active run; yields [MLflow's Keras callback]."""
    with run(experiment, name, nested=True):
        yield [epoch_logger()]


def log_params(mlflow, params: dict) -> None:
    flat = {k: (str(v)[:500] if v is not None else "null") for k, v in flatten(params).items()}
    mlflow.log_params(flat)


def metric_key(name: str) -> str:
    r"""A key MLflow accepts: characters outside [\w-. /:] become '_' ("normal, benign" -> "normal_benign")."""
    return re.sub(r"_+", "_", re.sub(r"[^\w\-./:]", "_", name)).strip("_")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def log_metrics(mlflow, metrics: dict, prefix: str = "") -> None:
    """Numeric leaves of a nested dict; None (undefined) values are skipped, not logged as 0.

    A [lo, hi] pair (a confidence interval) is logged as `<key>.lo` and `<key>.hi`.
    """
    flat = {}
    for k, v in flatten(metrics, prefix).items():
        if isinstance(v, (list, tuple)) and len(v) == 2:
            flat.update({f"{k}.lo": v[0], f"{k}.hi": v[1]})
        else:
            flat[k] = v
    mlflow.log_metrics({metric_key(k): float(v) for k, v in flat.items() if _number(v)})


def log_history(mlflow, history: dict) -> None:
    for key, values in history.items():
        for step, value in enumerate(values, 1):
            mlflow.log_metric(f"train.{key}", float(value), step=step)


def log_keras_model(mlflow, model, name: str = "model") -> str:
    """Log with MLflow's Keras flavor; returns the model URI (loads back with mlflow.keras.load_model)."""
    info = mlflow.keras.log_model(model, name=name, pip_requirements=PIP_REQUIREMENTS)
    return info.model_uri


def log_evaluation(experiment: str, name: str, run_id: str | None, metrics: dict, figures, model,
                   prefix: str) -> tuple[str, str]:
    """Add an evaluation (metrics, figures, model) to the training run; returns (run_id, model_uri)."""
    with run(experiment, name, run_id) as mlflow:
        log_metrics(mlflow, metrics, prefix)
        for fig in figures:
            mlflow.log_artifact(str(fig), "figures")
        uri = log_keras_model(mlflow, model)
        return mlflow.active_run().info.run_id, uri
