"""What the report stage needs to know about the ECG arm (pipeline.report never names an arm)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io import read_json
from pipeline.report.arm import ArmReport, Plan
from pipeline.report.figures import strip, trace
from pipeline.report.runs import optional_json
from pipeline.report.sections import Section

META = Path("data/ecg/meta.json")           # written by prepare_ecg
SPLITS = Path("reports/ecg/dataset.json")   # class counts per split, records, folds (prepare_ecg)
RAW = Path("data/raw/mitdb")                # ingest_ecg: the .atr files carry the rhythm annotations

# WFDB rhythm codes (aux_note of '+' annotations) in plain words
RHYTHMS = {"(N": "sinus", "(AFIB": "atrial fibrillation", "(AFL": "atrial flutter", "(AB": "atrial bigeminy",
           "(B": "ventricular bigeminy", "(T": "ventricular trigeminy", "(VT": "ventricular tachycardia",
           "(VFL": "ventricular flutter", "(IVR": "idioventricular", "(SVTA": "supraventricular tachyarrhythmia",
           "(NOD": "nodal (junctional)", "(BII": "2nd degree heart block", "(PREX": "pre-excitation (WPW)",
           "(SBR": "sinus bradycardia", "(P": "paced"}


def rhythm_context(record_path: Path) -> str | None:
    """Share of the recording's time in each annotated rhythm, largest first ("sinus 91%, atrial
    fibrillation 9%"); None when the record or its annotations are missing."""
    import wfdb

    try:
        header = wfdb.rdheader(str(record_path))
        ann = wfdb.rdann(str(record_path), "atr")
    except (FileNotFoundError, OSError, ValueError):
        return None
    starts = [(int(s), (note or "").strip("\x00 ")) for s, sym, note in zip(ann.sample, ann.symbol, ann.aux_note)
              if sym == "+" and note]
    if not starts or not header.sig_len:
        return None
    time = {}
    for (s, code), nxt in zip(starts, [s for s, _ in starts[1:]] + [header.sig_len]):
        name = RHYTHMS.get(code, code.lstrip("("))
        time[name] = time.get(name, 0) + max(nxt - s, 0)
    total = sum(time.values()) or 1
    parts = sorted(time.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {100 * t / total:.0f}%" for name, t in parts if 100 * t / total >= 0.5)


def changes(root: Path) -> list[str]:
    """The comparison page's 'what changed' lines: goal_ecg's readings against the model packaged before issue 10."""
    path = root / "metrics/analysis/goal_ecg.json"
    if not path.is_file():
        return []
    readings = read_json(path).get("readings") or {}
    return [text for key, text in readings.items() if key == "goal" or key.startswith("changed ")]


def load_data(root: Path, info: dict, notes: list) -> dict:
    raw = root / RAW
    records = sorted(p.stem for p in raw.glob("*.atr")) if raw.is_dir() else []
    context = {r: c for r in records if (c := rhythm_context(raw / r)) is not None}
    if not context:
        notes.append(f"{RAW}: no rhythm annotations found; the per-record table shows no rhythm context")
    return {"meta": optional_json(root / META, notes, META) or {},
            "splits": optional_json(root / SPLITS, notes, SPLITS) or {},
            "group_context": context}


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


SECTIONS = (
    Section("ecg-goal", "Goal: the deployed model against the best honest inter-patient results (issue 10)",
            "metrics/analysis/goal_ecg.json",
            "The model python -m ecg.predict uses (the packaged fold ensemble with its own temperature) scored once on "
            "DS2: macro-F1 over N, S, V, F and each class's F1 with 95% record-bootstrap CIs, against issue 10's "
            "targets, published inter-patient results and the model packaged before (what changed; 'CIs separate' "
            "when the two intervals do not overlap). Then calibration (ECE before and after temperature scaling, the "
            "temperature fitted on DS1 out-of-fold predictions of 3-seed ensembles of fold models), the spread over "
            "3 seeds, "
            "and every DS1 out-of-fold figure tried (the choice is made on DS1 only).",
            "the goal_ecg stage (python -m ecg.goal) has not been run.",
            kind="analysis", test_name="DS2", unit="beat", run_metrics="metrics/ecg",
            labels=(("setting", "setting"), ("goal", "goal on DS2"), ("what_changed", "what changed since the model "
                    "packaged before issue 10"), ("calibration", "calibration"), ("seeds", "seeds"),
                    ("seed_spread", "spread over seeds"), ("experiments", "DS1 out-of-fold experiments"),
                    ("deployed", "deployed"), ("reference", "before issue 10"), ("met", "met"),
                    ("met_by_ci", "met by CI"), ("goal_at_most", "goal (at most)"), ("before", "before"),
                    ("after", "now"), ("difference", "difference"), ("cis_separate", "CIs separate"),
                    ("ece_before", "ECE before TS"), ("ece_after", "ECE after TS"), ("temperature", "T"),
                    ("worse_after_scaling", "worse after TS"),
                    ("ece_under_single_model_temperature", "ECE under the single-model T"),
                    ("single_model_temperature", "single-model T"), ("ds1_macro_f1", "DS1 OOF macro-F1"),
                    ("ds2_macro_f1", "DS2 macro-F1"), ("comparable", "same training loop"), ("chosen", "packaged"),
                    ("epochs", "epochs"), ("what", "what"), ("machine", "machine")),
            parts=("readings", "goal", "what_changed", "calibration", "seeds", "seed_spread", "experiments")),
    Section("robustness", "Robustness: performance against noise (SNR)", "metrics/ecg/robustness.json",
            "The packaged model on DS2 records with real noise from the MIT-BIH Noise Stress Test Database "
            "(bw: baseline wander, ma: muscle artefact) added at falling signal-to-noise ratios (dB); beats are "
            "detected, not taken from the annotations.",
            "the robustness stage (python -m ecg.generalise robustness) has not been run."),
    Section("rerecorded", "Re-recorded: the same records at other sampling rates", "metrics/ecg/rerecorded.json",
            "DS2 records resampled to other rates (Hz) and analysed end to end (beat detection, then "
            "classification); 'annotated' rows classify the reference beats instead.",
            "the rerecorded stage (python -m ecg.generalise rerecorded) has not been run."),
    Section("external", "Cross-database: other ECG databases", "metrics/ecg/external.json",
            "The packaged model on other annotated databases, at their own rates and leads.",
            "the external stage (python -m ecg.generalise external) has not been run."),
    Section("deployment", "Deployment: size, latency and accuracy of compressed models", "metrics/ecg/deploy.json",
            "The packaged model (the reference, or teacher) against smaller versions of it on DS2: students distilled "
            "from it or trained on labels alone, magnitude- and channel-pruned copies of one of its fold networks, "
            "and LiteRT int8 exports. Beside each: parameters, bytes on disk, latency per beat (ms) on this CPU, the "
            "paired difference to the teacher and the calibration error. Every choice was made on one DS1 "
            "validation fold; DS2 was scored once per variant, after all choices.",
            "the compress_ecg stage (python -m ecg.compress) has not been run.",
            kind="compression", test_name="DS2", unit="beat"),
    Section("analysis", "Model analyses: capacity, dead units, top-k and occlusion", "metrics/ecg/analysis.json",
            "What the trained networks learned, read without retraining: their size and cost per beat, the share of "
            "ReLU units that never fire on DS1, top-k accuracy on DS2 and, for the packaged model, how much each part "
            "of the beat window and each RR feature matters to its calls on DS1 beats (each scored by the fold member "
            "that did not train on it).",
            "the analyse_ecg stage (python -m ecg.analyse) has not been run.",
            kind="analysis", test_name="DS2", unit="beat",
            labels=(("rr", "RR-interval features (each set to 1.0, a typical ratio)"), ("fill", "occluded samples take"),
                    ("windows", "equal windows over the beat"), ("run", "model"),
                    ("oof_check_max_abs_diff", "largest out-of-fold check difference"),
                    ("dead_units", "dead ReLU units"), ("topk", "top-k accuracy"), ("linear_regions", "linear regions")),
            parts=("readings", "capacity", "dead_units", "topk", "occlusion", "method")),
    Section("insight", "Training choices: label smoothing, leaky ReLU and the first kernel", "metrics/analysis/insight_ecg.json",
            "The packaged model retrained in variants on the DS1 folds except one (early stopping and the temperature "
            "on that fold), each scored once on DS2: label smoothing (eps) against temperature scaling, leaky ReLU "
            "against ReLU (and how many ReLU units never fire on DS1), and the 7-sample stride-2 first convolution "
            "against a stack of 3 then 5 samples with the same receptive field and stride.",
            "the insight_ecg stage (python -m ecg.insight) has not been run.",
            kind="analysis", test_name="DS2", unit="beat",
            labels=(("smoothing", "label smoothing and temperature scaling"), ("leaky", "leaky ReLU against ReLU"),
                    ("dead_per_layer", "units that never fire on DS1, per layer"),
                    ("kernel", "long first kernel against stacked short kernels"),
                    ("ece_before", "ECE before TS"), ("ece_after", "ECE after TS"), ("nll_before", "NLL before TS"),
                    ("nll_after", "NLL after TS"), ("temperature", "T (validation fold)"),
                    ("top1_changed_vs_eps0", "top-1 changed vs eps=0"), ("macro_f1_diff_vs_eps0", "macro-F1 minus eps=0"),
                    ("macro_f1_diff_vs_relu", "macro-F1 minus ReLU"), ("macro_f1_diff_vs_long", "macro-F1 minus long kernel"),
                    ("leaky_never_positive_fraction", "leaky: never positive"), ("relu_dead_fraction", "ReLU: dead")),
            figures=(("smoothing", "artifacts/analysis/insight_ecg/reliability_*.png"),
                     ("smoothing", "artifacts/analysis/insight_ecg/ece_smoothing.png"),
                     ("leaky", "artifacts/analysis/insight_ecg/dead_relu.png"),
                     ("kernel", "artifacts/analysis/insight_ecg/kernel.png")),
            parts=("readings", "smoothing", "leaky", "dead_per_layer", "kernel", "method")),
)


REPORT = ArmReport(
    name="ecg", title="ECG beat classification", unit="beat", group="record", keys=("model", "loss"),
    template=Path(__file__).with_name("report.html"),
    question="does focal loss help the rare beat classes?",
    plans=(Plan(fixed=("model",), vary="loss", pairs=(("focal", "ce"),), focus="rare"),),
    choice=(), load_data=load_data, render_error=render_error, group_table=True, sections=SECTIONS, changes=changes,
    error_caption=("Each plot shows the misclassified beat (dark, its R peak at 0 s) between the previous and "
                   "next beats of the same recording (grey), in mV, so its prematurity can be judged; at most "
                   "two examples per recording."))
