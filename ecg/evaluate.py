"""Stage evaluate_ecg: score one trained (model, loss) on DS2 (pipeline.evaluate does the work).

The temperature is fitted on the out-of-fold DS1 predictions saved by train_ecg (oof.npz); DS2 is
used for nothing but scoring, and records are the bootstrap groups. The input channels and the beat
limit are the ones train_ecg recorded in train.json; the scored classes are meta.json's `score_classes`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ecg import dataset
from pipeline import evaluate
from pipeline.evaluate import Adapter, Inputs, trained_fact

TRAIN_KEYS = ("history", "folds", "val_records")
ALARM_CLASSES = ("S", "V")   # false calls of these classes are counted per hour of DS2 recording
HOURS_METHOD = ("sum over the scored DS2 records of the last scored beat's sample position / fs "
                "(an approximation: meta.json holds no record lengths; slightly under the true length)")


def recording_hours(sample, record, fs) -> float | None:
    """Hours of recording the beats cover: per record, the last beat's sample / fs, summed."""
    sample, record = np.asarray(sample, np.float64), np.asarray(record)
    if not len(sample) or not fs:
        return None
    return float(sum(sample[record == r].max() for r in np.unique(record)) / fs / 3600.0)


def context(arrays: dict, record, sample) -> dict:
    """Each error beat with its neighbours, in mV: the windows (mean removed) of the previous, this and
    the next beat of the same record (NaN where there is none) and their R-peak offsets from this beat
    in samples (RR intervals = offset differences / fs)."""
    rec_all, smp_all, x = arrays["record"], arrays["sample"], arrays["x"]
    windows = np.full((len(record), 3, x.shape[1]), np.nan, np.float32)
    offsets = np.zeros((len(record), 3), np.int64)
    for n, (r, s) in enumerate(zip(record, sample)):
        rows = np.flatnonzero(rec_all == r)
        rows = rows[np.argsort(smp_all[rows], kind="stable")]
        at = int(np.searchsorted(smp_all[rows], s))
        for j, pos in enumerate((at - 1, at, at + 1)):
            if 0 <= pos < len(rows):
                w = x[rows[pos]].astype(np.float64)
                windows[n, j] = w - w.mean()
                offsets[n, j] = int(smp_all[rows[pos]]) - int(s)
    return {"error_context_mv": windows, "error_offsets": offsets}


def load(data_dir: Path, art_dir: Path, trained: dict) -> Inputs:
    train_json = art_dir / "train.json"
    channels = trained_fact(trained, "channels", train_json)
    arrays, meta = dataset.load_inputs(data_dir, channels)
    if trained_fact(trained, "data_sha256", train_json) != meta["beats_sha256"]:
        raise ValueError(f"{train_json}: model was trained on other data than {data_dir / 'beats.npz'}; "
                         "rerun train_ecg")
    if not meta.get("score_classes"):
        raise ValueError(f"{data_dir / 'meta.json'}: no 'score_classes'; rerun the prepare_ecg stage")
    test = dataset.select(arrays, arrays["split"] == 1, trained_fact(trained, "limit_beats", train_json),
                          trained_fact(trained, "seed", train_json))
    with np.load(art_dir / "oof.npz") as oof:
        y_val, probs_val = oof["y"], oof["probs"]
    return Inputs(
        x=test.x, y=test.y, groups=test.record, classes=list(meta["classes"]), scored=list(meta["score_classes"]),
        validation=lambda model: (y_val, probs_val),
        errors=lambda idx: {"error_x": test.x["beat"][idx, :, 0], "error_rr": test.x["rr"][idx],
                            **context(arrays, test.record[idx], test.sample[idx])},
        arrays={"sample": test.sample},
        train={k: trained[k] for k in TRAIN_KEYS if k in trained},
        hours=recording_hours(test.sample, test.record, meta.get("fs")), hours_method=HOURS_METHOD,
        alarm_classes=tuple(c for c in ALARM_CLASSES if c in meta["classes"]))


def register() -> None:
    from ecg import models  # noqa: F401  (registers the custom layers, so the saved model loads)


ADAPTER = Adapter(arm="ecg", run_keys=("model", "loss"), data_dir="data/ecg", split="DS2",
                  selected_on="DS1 out-of-fold predictions (patient-wise cross-validation)", load=load,
                  register=register, errors_per_group=2)


def main(argv=None) -> int:
    return evaluate.main(ADAPTER, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
