"""Stage evaluate_deployed_ecg: score on DS2, once, the model `python -m ecg.predict` uses, and the seeds.

* The deployed model: the package (models/ecg), its fold ensemble with the package's own temperature, which
  package_ecg fitted on DS1 out-of-fold predictions of seed ensembles of fold models (the run's and
  replicate_ecg's seeds', averaged; ecg.package.calibration_data), never on DS2.
  Written like every evaluated run (pipeline.evaluate): metrics/ecg/deployed.json, artifacts/ecg/deployed/,
  reports/plots/ecg/deployed/, so the report shows it with its record-bootstrap CIs.
* The seed spread: the same configuration trained with replicate_ecg's other seeds, each fold ensemble scored
  on DS2 beside the packaged one (seed ecg_train.seed): metrics/ecg/seeds.json, with their DS1 out-of-fold
  figures from metrics/ecg/replicate.json. Nothing is chosen on these DS2 figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


from ecg import evaluate as ecg_evaluate
from ecg.package import PackageError, calibration_data, load_package
from ecg.replicate import numbers, summary
from ecg.replicate import spread as _spread
from pipeline import evaluate, tracking
from pipeline.io import file_digest, read_json, write_json
from pipeline.params import ParamsError

NAME = "deployed"
ADAPTER = evaluate.Adapter(
    arm="ecg", run_keys=("model", "loss"), data_dir="data/ecg", split="DS2",
    selected_on="DS1 out-of-fold macro-F1 (run); temperature on DS1 out-of-fold predictions of seed ensembles of "
                "fold models (the run's and replicate_ecg's seeds')",
    load=ecg_evaluate.load, register=ecg_evaluate.register, errors_per_group=2)


def spread(values) -> dict:
    """replicate.spread of the defined values; {"n": 0} when a class's F1 is undefined for every seed (no such
    beats in DS2, e.g. on a few records)."""
    defined = [v for v in values if v is not None]
    return _spread(defined) if defined else {"n": 0}


def seed_scores(replicate_dir: Path, package, x: dict, y, meta: dict, own_seed: int) -> dict:
    """DS2 macro-F1 and per-class F1 of the packaged ensemble and of each seed<s>/model.keras ensemble."""
    import keras

    from pipeline.training import predict_probs

    out = {str(own_seed): summary(y, package.predict(x["beat"], x["rr"], calibrated=False), meta)}
    for path in sorted(replicate_dir.glob("seed*/model.keras"), key=lambda p: int(p.parent.name[4:])):
        model = keras.models.load_model(path, compile=False)
        out[path.parent.name[4:]] = summary(y, predict_probs(model, x, 1024), meta)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/ecg")
    ap.add_argument("--package", default="models/ecg")
    ap.add_argument("--runs-root", default="artifacts/ecg")
    ap.add_argument("--replicate", default="artifacts/ecg_replicate")
    ap.add_argument("--seeds-metrics", default="metrics/ecg/seeds.json")
    args = ap.parse_args(argv)
    try:
        cfg = evaluate.load_params(args.params)
        package = load_package(args.package)
    except (ParamsError, PackageError) as exc:
        print(f"ecg.deployed: error: {exc}", file=sys.stderr)
        return 2
    run = package.spec["provenance"]["run"]
    run_dir = Path(args.runs_root) / run
    fitted_on = str(package.spec.get("temperature_fitted_on", ""))
    try:
        y_val, probs_val, described = calibration_data(run_dir, args.replicate)
    except PackageError as exc:
        print(f"ecg.deployed: error: {exc}", file=sys.stderr)
        return 2
    if fitted_on != described:
        print(f"ecg.deployed: error: {args.package}: temperature fitted on {fitted_on!r}, not on {described!r}; "
              "rerun package_ecg", file=sys.stderr)
        return 2
    trained = read_json(run_dir / "train.json")
    if file_digest(run_dir / "model.keras") != package.spec["provenance"]["model_sha256"]:
        print(f"ecg.deployed: error: {args.package} does not hold {run_dir / 'model.keras'}; rerun package_ecg",
              file=sys.stderr)
        return 2
    inputs = ecg_evaluate.load(Path(args.data), run_dir, trained)
    val = (y_val, probs_val)
    probs = package.predict(inputs.x["beat"], inputs.x["rr"], calibrated=False)
    temperature = float(package.spec["temperature"])
    inputs = dataclasses.replace(inputs, data={
        "package": str(args.package), "deployed_from": run, "model_sha256": package.spec["provenance"]["model_sha256"],
        "temperature_fitted_on": fitted_on, "temperature_calibration": package.spec.get("calibration")})

    def log(metrics, figures):
        return tracking.log_evaluation("ecg", f"{run}-{NAME}", None, metrics, figures, package.model, "ds2.")

    metrics = evaluate.write_outputs(ADAPTER, NAME, cfg, Path("."), trained, inputs, probs, val, log,
                                     temperature=temperature)
    print(evaluate.summary(ADAPTER, NAME, metrics))

    meta = {"classes": list(inputs.classes), "score_classes": list(inputs.scored)}
    ds2 = seed_scores(Path(args.replicate), package, inputs.x, inputs.y, meta, int(trained["seed"]))
    ds1 = read_json(Path(args.replicate) / "replicate.json")
    scored = list(inputs.scored)
    record = {"ds2": {"per_seed": ds2, "spread": {"macro_f1": spread(s["macro_f1"] for s in ds2.values()),
                                                 **{f"{c}_f1": spread(s["f1"][c] for s in ds2.values())
                                                    for c in scored}}},
              "ds1_out_of_fold": {"per_seed": ds1["seeds"], "spread": ds1["spread"]}}
    write_json(args.seeds_metrics, numbers(record))
    s = record["ds2"]["spread"]["macro_f1"]
    print(f"ecg.deployed: DS2 macro-F1 over seeds {sorted(ds2, key=int)}: mean {s['mean']:.4f}, sd {s['sd']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
