"""Find and read evaluated runs: metrics/<arm>/<name>.json plus artifacts/<arm>/<name>/.

A missing or malformed metrics file is an error that names it. A missing eval.npz,
train.json or dataset file only leaves out the parts that need it, with a note saying so.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io import read_json

CLASS_KEYS = ("se", "recall", "sensitivity", "ppv", "precision", "f1", "spec", "specificity")


class ReportError(ValueError):
    """Bad input to the report; the message names the file."""


@dataclass(frozen=True)
class Arm:
    name: str                  # folder under metrics/ and artifacts/
    title: str
    unit: str                  # one sample, in plain words
    group: str                 # what the bootstrap resamples
    variant: tuple[str, ...]   # metrics keys that name a run beside "model"


ARMS = {
    "ecg": Arm("ecg", "ECG beat classification", "beat", "record", ("loss",)),
    "vision": Arm("vision", "Medical image classification", "image", "image", ("dataset", "regime", "loss")),
}


@dataclass
class Run:
    arm: Arm
    name: str
    metrics_path: Path
    metrics: dict
    train: dict | None = None
    arrays: dict | None = None     # eval.npz: y_true, probs, probs_before, group, error_index, error_x
    data: dict = field(default_factory=dict)
    classes: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    cis: dict = field(default_factory=dict)   # "<class>.<metric>" -> [lo, hi], set by the stage

    @property
    def scored(self) -> list[str]:
        return list(self.metrics["per_class"])

    def get(self, key):
        return self.metrics.get(key)


def _number_or_null(value, path, key):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ReportError(f"{path}: '{key}' must be a number or null, got {value!r}")


def load_metrics(path: Path) -> dict:
    """The metrics json, checked for the keys the report reads."""
    try:
        m = read_json(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ReportError(str(exc)) from None
    if not isinstance(m, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(m).__name__}")
    for key in ("model", "macro_f1", "per_class"):
        if key not in m:
            raise ReportError(f"{path}: missing key '{key}'")
    _number_or_null(m["macro_f1"], path, "macro_f1")
    if not isinstance(m["per_class"], dict) or not m["per_class"]:
        raise ReportError(f"{path}: 'per_class' must be a non-empty object of classes")
    for cls, row in m["per_class"].items():
        if not isinstance(row, dict) or "f1" not in row:
            raise ReportError(f"{path}: per_class['{cls}'] must be an object with at least 'f1'")
        for key in CLASS_KEYS:
            _number_or_null(row.get(key), path, f"per_class.{cls}.{key}")
    for key, ci in (m.get("ci95") or {}).items():
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2):
            raise ReportError(f"{path}: ci95['{key}'] must be [lo, hi] or null, got {ci!r}")
    return m


def load_eval(path: Path, n_labels: int) -> dict | None:
    """eval.npz arrays, or None when the file is absent; malformed files are errors."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ReportError(f"{path}: unreadable eval.npz: {exc}") from None
    for key in ("y_true", "probs"):
        if key not in arrays:
            raise ReportError(f"{path}: missing array '{key}' (has {sorted(arrays)})")
    y, probs = arrays["y_true"].astype(np.int64), arrays["probs"].astype(np.float64)
    if probs.ndim == 1:  # binary: probability of class 1
        probs = np.stack([1 - probs, probs], axis=1)
    if probs.ndim != 2 or len(probs) != len(y) or probs.shape[1] < n_labels:
        raise ReportError(f"{path}: probs {probs.shape} do not fit y_true {y.shape} and {n_labels} classes")
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ReportError(f"{path}: y_true holds labels outside 0..{probs.shape[1] - 1}")
    arrays.update(y_true=y, probs=probs)
    return arrays


def _optional_json(path: Path, notes: list):
    if not path.is_file():
        notes.append(f"{path} not found: the parts that need it are left out.")
        return None
    try:
        return read_json(path)
    except ValueError as exc:
        raise ReportError(str(exc)) from None


def load_data(root: Path, arm: Arm, metrics: dict, notes: list) -> tuple[dict, list]:
    """The arm's dataset description and its class names (empty when unknown)."""
    if arm.name == "ecg":
        meta = _optional_json(root / "data/ecg/meta.json", notes) or {}
        splits = _optional_json(root / "reports/ecg/dataset.json", notes) or {}
        return {"meta": meta, "splits": splits}, list(meta.get("classes", []))
    meta = _optional_json(root / "data" / arm.name / f"{metrics.get('dataset')}.json", notes) or {}
    return {"meta": meta}, list(meta.get("class_names", []))


def load_run(root: Path, arm: Arm, metrics_path: Path) -> Run:
    metrics = load_metrics(metrics_path)
    run = Run(arm, metrics_path.stem, metrics_path, metrics)
    run.data, classes = load_data(root, arm, metrics, run.notes)
    classes = classes or run.scored
    unknown = [c for c in run.scored if c not in classes]
    if unknown:
        raise ReportError(f"{metrics_path}: classes {unknown} are not in the dataset's classes {classes}")
    art = root / "artifacts" / arm.name / run.name
    train_path = art / "train.json"
    run.train = _optional_json(train_path, run.notes)
    run.arrays = load_eval(art / "eval.npz", len(classes))
    if run.arrays is None:
        run.notes.append(f"{art / 'eval.npz'} not found: no confusion matrix, intervals, "
                         "reliability diagram or error examples.")
    else:
        n = run.arrays["probs"].shape[1]
        classes = classes + [f"class {k}" for k in range(len(classes), n)]
    run.classes = classes
    return run


def discover(root: Path) -> dict[str, list[Run]]:
    """arm name -> its runs, one per metrics/<arm>/*.json (empty list when none)."""
    return {name: [load_run(root, arm, p) for p in sorted((root / "metrics" / name).glob("*.json"))]
            for name, arm in ARMS.items()}
