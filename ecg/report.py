"""What the report stage needs to know about the ECG arm (pipeline.report never names an arm)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.report.arm import ArmReport, Plan
from pipeline.report.figures import strip, trace
from pipeline.report.runs import optional_json

META = Path("data/ecg/meta.json")           # written by prepare_ecg
SPLITS = Path("reports/ecg/dataset.json")   # class counts per split, records, folds (prepare_ecg)


def load_data(root: Path, info: dict, notes: list) -> dict:
    return {"meta": optional_json(root / META, notes, META) or {},
            "splits": optional_json(root / SPLITS, notes, SPLITS) or {}}


def render_error(x, data, extra=None) -> tuple:
    """The beat with its neighbours in mV against seconds from its R peak, and its RR intervals
    (evaluate_ecg saves error_context_mv / error_offsets); older eval.npz: the beat window alone."""
    meta = data.get("meta") or {}
    fs, centre = meta.get("fs"), meta.get("r_peak_index", len(x) // 2)
    extra = extra or {}
    if fs and "error_context_mv" in extra and "error_offsets" in extra:
        off = np.asarray(extra["error_offsets"], np.int64)
        have = [np.isfinite(np.asarray(w, np.float64)).any() for w in extra["error_context_mv"]]
        pre = f"{1000 * -off[0] / fs:.0f} ms" if have[0] else "n/a"
        post = f"{1000 * off[2] / fs:.0f} ms" if have[2] else "n/a"
        return (strip(extra["error_context_mv"], off, fs, centre, "amplitude (mV)",
                      "seconds from this beat's R peak", "R"), "strip",
                f"RR before {pre}, after {post}")
    t = np.arange(len(x)) - centre
    return (trace(x, t * 1000.0 / fs, "ms from R peak", "R") if fs else
            trace(x, t, "samples from R peak", "R")), "trace"


REPORT = ArmReport(
    name="ecg", title="ECG beat classification", unit="beat", group="record", keys=("model", "loss"),
    template=Path(__file__).with_name("report.html"),
    question="does focal loss help the rare beat classes?",
    plans=(Plan(fixed=("model",), vary="loss", pairs=(("focal", "ce"),), focus="rare"),),
    choice=(), load_data=load_data, render_error=render_error, group_table=True,
    error_caption=("Each plot shows the misclassified beat (dark, its R peak at 0 s) between the previous and "
                   "next beats of the same recording (grey), in mV, so its prematurity can be judged; at most "
                   "two examples per recording."))
