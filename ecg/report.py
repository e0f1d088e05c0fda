"""What the report stage needs to know about the ECG arm (pipeline.report never names an arm)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.report.arm import ArmReport, Plan
from pipeline.report.figures import trace
from pipeline.report.runs import optional_json

META = Path("data/ecg/meta.json")           # written by prepare_ecg
SPLITS = Path("reports/ecg/dataset.json")   # class counts per split, records, folds (prepare_ecg)


def load_data(root: Path, info: dict, notes: list) -> dict:
    return {"meta": optional_json(root / META, notes, META) or {},
            "splits": optional_json(root / SPLITS, notes, SPLITS) or {}}


def render_error(x, data) -> tuple[str, str]:
    """A beat window against ms from its R peak (sample numbers when meta.json is missing)."""
    meta = data.get("meta") or {}
    fs, centre = meta.get("fs"), meta.get("r_peak_index", len(x) // 2)
    t = np.arange(len(x)) - centre
    return (trace(x, t * 1000.0 / fs, "ms from R peak", "R") if fs else
            trace(x, t, "samples from R peak", "R")), "trace"


REPORT = ArmReport(
    name="ecg", title="ECG beat classification", unit="beat", group="record", keys=("model", "loss"),
    template=Path(__file__).with_name("report.html"),
    question="does focal loss help the rare beat classes?",
    plans=(Plan(fixed=("model",), vary="loss", pairs=(("focal", "ce"),), focus="rare"),),
    choice=(), load_data=load_data, render_error=render_error,
    error_caption="Each plot is one beat window with the R peak at the centre (dashed line).")
