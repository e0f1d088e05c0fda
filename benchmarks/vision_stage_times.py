"""Wall time of each train_vision run as the pipeline ran it, read from the MLflow store (no retraining).

    python benchmarks/vision_stage_times.py [--model squeezenet] [--runs artifacts/vision]

train_vision opens one MLflow run per (dataset, model, regime, loss), with a nested run per phase ("head":
the head on cached backbone features; "finetune": backbone blocks + head on images). For the newest finished
run of each name this prints the run's wall seconds, each phase's seconds, the epochs the phase ran
(artifacts/vision/<run>/train.json) and the training images/s of the fine-tune phase
(train images x epochs / phase seconds). A phase restored from its checkpoint (a rerun) takes about 0 s; the
frozen and finetune runs of one (dataset, model, loss) share their head phase, so only the first of them
trains it, and only the first run of a (dataset, model) computes the cached features (before its head phase).
The run's own end time is not the training's: evaluate_vision reopens the run to log its test metrics. So the
stage's wall time is bounded by "to next s": from this run's start to the next train_vision run's start, when
`dvc repro` ran the train stages one after another (process start-up and model saving included).
Uses MLFLOW_TRACKING_URI, else sqlite:///mlflow.db at the project root, as the stages do.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def newest_runs(experiment: str = "vision") -> dict:
    """{run label without the version suffix: {"seconds", "start"}} of the newest FINISHED run per label."""
    from pipeline import tracking

    mlflow = tracking._mlflow()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment '{experiment}' in {tracking.tracking_uri()}")
    frame = mlflow.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"], max_results=5000)
    out = {}
    for _, row in frame.iterrows():
        label = str(row["tags.mlflow.runName"]).split(" @ ")[0]
        if label not in out and row["end_time"] is not None:
            out[label] = {"seconds": (row["end_time"] - row["start_time"]).total_seconds(), "start": row["start_time"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="only this backbone (default: all)")
    ap.add_argument("--runs", default=str(ROOT / "artifacts" / "vision"))
    args = ap.parse_args(argv)
    runs = newest_runs()
    starts = sorted(v["start"] for k, v in runs.items() if " " not in k)
    rows = []
    for train_json in sorted(Path(args.runs).glob("*/train.json")):
        rec = json.loads(train_json.read_text())
        name = train_json.parent.name
        if args.model and rec["model"] != args.model or name not in runs:
            continue
        head, ft = runs.get(f"{name} head", {}).get("seconds"), runs.get(f"{name} finetune", {}).get("seconds")
        epochs = (rec.get("finetune") or {}).get("epochs_run")
        rate = rec["n"]["train"] * epochs / ft if ft and epochs else None
        start = runs[name]["start"]
        later = [t for t in starts if t > start]
        slot = (later[0] - start).total_seconds() if later else None
        rows.append((name, slot, head, ft, epochs, rate, str(start)[:16]))
    if not rows:
        raise SystemExit(f"no finished train_vision runs found for {args.runs} in the MLflow store")
    print(f"{'run':<44}{'to next s':>10}{'head s':>8}{'finetune s':>11}{'ft epochs':>10}{'ft img/s':>10}  started (UTC)")
    for name, slot, head, ft, epochs, rate, start in rows:
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        print(f"{name:<44}{fmt(slot, '.1f'):>10}{fmt(head, '.1f'):>8}{fmt(ft, '.1f'):>11}{fmt(epochs, 'd'):>10}"
              f"{fmt(rate, ',.0f'):>10}  {start}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
