"""DS1-only calibration levers for the packaged ECG configuration (issue 10): what a temperature alone can reach,
and what a class-prior correction or a per-class bias would add. Reads out-of-fold predictions only; DS2 is
never read, so anything chosen here may be adopted without touching the test split.

Rows: the run's single fold models (oof.npz), the mean of the 3 seeds' fold models (the run's and replicate_ecg's
seed<s>/oof.npz), each with the N probability multiplied by 2 or 4 (undoing part of the class-balanced sampling,
which shows the training N beats at keep = 0.25 of their rate), and vector scaling (a temperature plus one bias
per class, fitted by NLL; it changes calls). Columns: DS1 out-of-fold macro-F1 (N, S, V, F) of the calls, ECE
before and after a temperature fitted on the same predictions (pipeline.calibration.fit_temperature_no_worse).
In-sample for the temperature and the bias: an optimistic bound, not an estimate.

    python benchmarks/ecg_calibration_ds1.py [--run artifacts/ecg/dilated1d-focal] [--replicate artifacts/ecg_replicate]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import calibration as cal  # noqa: E402
from pipeline.evaluation import macro_f1  # noqa: E402

SCORED = (0, 1, 2, 3)   # N, S, V, F


def vector_scaling(probs, y):
    """Temperature and per-class bias minimising NLL; returns the rescaled probabilities."""
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    rows = np.arange(len(y))

    def nll(w):
        z = logp / np.exp(w[0]) + w[1:]
        z = z - z.max(axis=1, keepdims=True)
        return float((np.log(np.exp(z).sum(axis=1)) - z[rows, y]).mean())

    w = minimize(nll, np.zeros(1 + probs.shape[1]), method="L-BFGS-B").x
    z = logp / np.exp(w[0]) + w[1:]
    q = np.exp(z - z.max(axis=1, keepdims=True))
    return q / q.sum(axis=1, keepdims=True)


def row(name, probs, y, bins):
    t = cal.fit_temperature_no_worse(probs, y, bins)
    return (f"| {name} | {macro_f1(y, probs.argmax(axis=1), SCORED):.4f} | {100 * t['ece_before']:.2f}% | "
            f"{100 * t['ece_after']:.2f}% | {t['temperature']:.3f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="artifacts/ecg/dilated1d-focal")
    ap.add_argument("--replicate", default="artifacts/ecg_replicate")
    ap.add_argument("--bins", type=int, default=15)
    args = ap.parse_args(argv)
    own = np.load(Path(args.run) / "oof.npz")
    y = own["y"]
    seeds = [own["probs"]] + [np.load(p)["probs"] for p in sorted(Path(args.replicate).glob("seed*/oof.npz"))]
    print("| DS1 out-of-fold predictions | macro-F1 | ECE | ECE after T | T |\n|---|---|---|---|---|")
    for name, probs in ((f"{Path(args.run).name}, single fold models", own["probs"]),
                        (f"mean of {len(seeds)} seeds' fold models", np.mean(seeds, axis=0))):
        print(row(name, probs, y, args.bins))
        for factor in (2.0, 4.0):
            q = probs.copy()
            q[:, 0] *= factor
            print(row(f"{name}, N x{factor:g}", q / q.sum(axis=1, keepdims=True), y, args.bins))
        print(row(f"{name}, vector scaling (T + class bias)", vector_scaling(probs, y), y, args.bins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
