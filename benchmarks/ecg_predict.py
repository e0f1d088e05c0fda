"""Benchmark of `python -m ecg.predict` on a folder of MIT-BIH records, beats detected (no annotations).

Runs predict in a fresh process (start-up included) on the chosen records of the mirror, linked into a
temporary folder, and prints the split: imports, model load, detection, features, classification,
writing, and the total wall time; then extrapolates to all 48 records (24 h of ECG) against the
issue's target of 2 minutes on the 2-core machine.

    python benchmarks/ecg_predict.py --model <package> [--records 100 208 232] [--workers 2]
    python benchmarks/ecg_predict.py --run artifacts/ecg/lenet1d-ce     # packages that run first (temp)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S, N_MITDB = 120.0, 48

DRIVER = """
import json, sys, time
t0 = time.perf_counter()
from ecg import predict
r = predict.predict(sys.argv[1], sys.argv[2], sys.argv[3], workers=int(sys.argv[4]), log=lambda *a, **k: None)
r["timing"]["driver_s"] = time.perf_counter() - t0
print("TIMING " + json.dumps({"timing": r["timing"], "records": len(r["records"]), "errors": r["errors"],
      "beats": sum(s["n_classified"] for s in r["records"].values())}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model package folder")
    ap.add_argument("--run", help="trained run folder to package into a temporary folder first")
    ap.add_argument("--meta", default=str(REPO / "data/ecg/meta.json"))
    ap.add_argument("--mirror", default=os.environ.get("ECG_MIRROR", str(REPO.parent / "shared/data/mitdb")))
    ap.add_argument("--records", nargs="+", default=None, help="default: every record in the mirror's RECORDS")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    mirror = Path(args.mirror)
    records = args.records or (mirror / "RECORDS").read_text().split()
    with tempfile.TemporaryDirectory(prefix="ecg-predict-bench-") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            if args.run is None:
                ap.error("give --model PACKAGE or --run artifacts/ecg/<run>")
            sys.path.insert(0, str(REPO))
            from ecg.package import build_package
            model = str(tmp / "package")
            build_package(args.run, args.meta, model)
        folder = tmp / "records"
        folder.mkdir()
        for rec in records:
            for ext in ("hea", "dat"):  # no .atr: beats are detected
                (folder / f"{rec}.{ext}").symlink_to(mirror / f"{rec}.{ext}")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", DRIVER, str(folder), model, str(tmp / "out"), str(args.workers)],
                              cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    result = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("TIMING ")][-1][7:])
    t, n = result["timing"], result["records"]
    load = os.getloadavg()[0]
    print(f"ecg.predict on {n} MIT-BIH record(s) ({result['beats']} beats classified), {args.workers} worker(s), "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    rows = [("process start (interpreter, before ecg.predict)", wall - t["driver_s"]),
            ("imports (ecg.predict + keras)", t["imports_s"]), ("model load", t["model_load_s"]),
            ("read (in workers, wall summed)", t["read_s"]), ("detection (in workers, wall summed)", t["detection_s"]),
            ("detection (in workers, CPU summed)", t["detection_cpu_s"]),
            ("features (in workers, wall summed)", t["features_s"]), ("waiting for workers (wall)", t["wait_for_workers_s"]),
            ("classification", t["classification_s"]), ("writing", t["writing_s"]), ("total wall", wall)]
    for name, value in rows:
        print(f"  {name:48s} {value:7.2f} s")
    per_record_cpu = (t["read_s"] + t["detection_s"] + t["features_s"]) / n
    per_record_main = (t["classification_s"] + t["writing_s"]) / n
    fixed = wall - t["driver_s"] + t["imports_s"] + t["model_load_s"]
    # Workers and the classifying main process share the cores: CPU-bound, the per-record work divides by them.
    cores = max(1, min(max(args.workers, 1) + 1, os.cpu_count() or 1))
    estimate = fixed + N_MITDB * (per_record_cpu + per_record_main) / cores
    print(f"  per record: {per_record_cpu:.2f} s in workers, {per_record_main:.2f} s classify+write")
    print(f"  extrapolated to all {N_MITDB} records: ~{estimate:.0f} s wall (target {TARGET_S:.0f} s); "
          f"fixed start-up {fixed:.1f} s")
    if result["errors"]:
        print(f"  errors: {result['errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
