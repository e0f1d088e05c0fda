"""Find and read evaluated runs: the metrics file, and eval.json / eval.npz beside the model.

    metrics/<arm>/<name>.json           numbers (the DVC metrics file)
    artifacts/<arm>/<name>/eval.json    names, ids, classes, per-class CIs, training facts
    artifacts/<arm>/<name>/eval.npz     labels, probabilities, groups, most confident errors

A missing or malformed metrics file or eval.json is an error that names it. A missing eval.npz or
arm data file only leaves out the parts that need it, with a note saying so.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io import read_json
from pipeline.report.arm import ArmReport

CLASS_KEYS = ("se", "ppv", "f1", "spec")


class ReportError(ValueError):
    """Bad input to the report; the message names the file."""


@dataclass
class Run:
    arm: ArmReport
    name: str
    metrics_path: Path
    metrics: dict
    info: dict = field(default_factory=dict)       # eval.json
    arrays: dict | None = None     # eval.npz: y_true, probs, probs_before, group, error_index, error_x
    data: dict = field(default_factory=dict)       # what the arm's loader read
    classes: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def scored(self) -> list[str]:
        return list(self.metrics["per_class"])

    @property
    def train(self) -> dict:
        return self.info.get("train") or {}

    def get(self, key):
        """A value of the metrics file, else of eval.json."""
        return self.metrics[key] if key in self.metrics else self.info.get(key)

    def class_ci(self, cls: str, key: str) -> dict | None:
        return ((self.info.get("class_ci95") or {}).get(cls) or {}).get(key)

    @property
    def n_boot(self):
        return (self.info.get("evaluate") or {}).get("bootstrap")


def _number_or_null(value, path, key):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ReportError(f"{path}: '{key}' must be a number or null, got {value!r}")


def _interval(ci, path, key):
    if ci is not None and not (isinstance(ci, dict) and set(ci) == {"lo", "hi"}):
        raise ReportError(f"{path}: '{key}' must be {{lo, hi}} or null, got {ci!r}")


def _object(path: Path) -> dict:
    try:
        m = read_json(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ReportError(str(exc)) from None
    if not isinstance(m, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(m).__name__}")
    return m


def load_metrics(path: Path) -> dict:
    """The metrics json, checked for the keys the report reads (numbers or null only)."""
    m = _object(path)
    for key in ("macro_f1", "per_class"):
        if key not in m:
            raise ReportError(f"{path}: missing key '{key}'")
    _number_or_null(m["macro_f1"], path, "macro_f1")
    if not isinstance(m["per_class"], dict) or not m["per_class"]:
        raise ReportError(f"{path}: 'per_class' must be a non-empty object of classes")
    for cls, row in m["per_class"].items():
        if not isinstance(row, dict) or "f1" not in row:
            raise ReportError(f"{path}: per_class['{cls}'] must be an object with at least 'f1'")
        for key in (*CLASS_KEYS, "n"):
            _number_or_null(row.get(key), path, f"per_class.{cls}.{key}")
    for key, ci in (m.get("ci95") or {}).items():
        _interval(ci, path, f"ci95.{key}")
    return m


def load_info(path: Path, arm: ArmReport) -> dict:
    """eval.json, checked for the keys the report reads."""
    info = _object(path)
    missing = [k for k in ("classes", *arm.keys) if k not in info]
    if missing:
        raise ReportError(f"{path}: missing key(s) {missing}")
    for cls, row in (info.get("class_ci95") or {}).items():
        for key, ci in (row or {}).items():
            _interval(ci, path, f"class_ci95.{cls}.{key}")
    return info


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
    if probs.ndim != 2 or len(probs) != len(y) or probs.shape[1] != n_labels:
        raise ReportError(f"{path}: probs {probs.shape} do not fit y_true {y.shape} and {n_labels} classes")
    if len(y) and (y.min() < 0 or y.max() >= n_labels):
        raise ReportError(f"{path}: y_true holds labels outside 0..{n_labels - 1}")
    arrays.update(y_true=y, probs=probs)
    return arrays


def optional_json(path: Path, notes: list, shown: Path | str | None = None):
    """A json file an arm's loader reads, or None with a note when it is absent (the note names
    `shown`, a path relative to the project, so no page shows a path of the build machine)."""
    if not path.is_file():
        notes.append(f"{shown or path.name} not found: the parts that need it are left out.")
        return None
    try:
        return read_json(path)
    except ValueError as exc:
        raise ReportError(str(exc)) from None


def load_run(root: Path, arm: ArmReport, metrics_path: Path) -> Run:
    run = Run(arm, metrics_path.stem, metrics_path, load_metrics(metrics_path))
    art = root / "artifacts" / arm.name / run.name
    run.info = load_info(art / "eval.json", arm)
    run.classes = list(run.info["classes"])
    unknown = [c for c in run.scored if c not in run.classes]
    if unknown:
        raise ReportError(f"{metrics_path}: classes {unknown} are not in {art / 'eval.json'} classes {run.classes}")
    run.data = arm.load_data(root, run.info, run.notes) or {}
    run.arrays = load_eval(art / "eval.npz", len(run.classes))
    if run.arrays is None:
        run.notes.append(f"artifacts/{arm.name}/{run.name}/eval.npz not found: no confusion matrix, reliability diagram "
                         "or error examples.")
    return run


def discover(root: Path, arms: list[ArmReport]) -> dict[str, list[Run]]:
    """arm name -> its runs, one per eval.json the evaluate stage wrote (empty list when none)."""
    return {arm.name: [load_run(root, arm, arm.metrics_file(root, run)) for run in arm.run_names(root)]
            for arm in arms}
