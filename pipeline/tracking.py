"""MLflow logging, done explicitly by the stages (no autolog).

The store defaults to sqlite:///mlflow.db at the project root; MLFLOW_TRACKING_URI overrides.
DVC metrics files stay the source of truth; MLflow gets the same numbers.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
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


@contextlib.contextmanager
def run(experiment: str, run_name: str, run_id: str | None = None):
    """Start a new run, or reopen `run_id` if it exists in this store; yields the mlflow module."""
    mlflow = _mlflow()
    mlflow.set_experiment(experiment)
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except Exception:
            run_id = None  # another store (fresh clone): start a new run
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name):
        yield mlflow


def log_params(mlflow, params: dict) -> None:
    flat = {k: (str(v)[:500] if v is not None else "null") for k, v in flatten(params).items()}
    mlflow.log_params(flat)


def metric_key(name: str) -> str:
    """A key MLflow accepts: characters outside [\w-. /:] become '_' ("normal, benign" -> "normal_benign")."""
    return re.sub(r"_+", "_", re.sub(r"[^\w\-./:]", "_", name)).strip("_")


def log_metrics(mlflow, metrics: dict, prefix: str = "") -> None:
    """Numeric leaves of a nested dict; None (undefined) values are skipped, not logged as 0."""
    flat = flatten(metrics, prefix)
    mlflow.log_metrics({metric_key(k): float(v) for k, v in flat.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})


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
