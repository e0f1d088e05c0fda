"""Benchmark of the ECG data stages against the targets of the spec.

Into a temporary folder: ingest all MIT-BIH records from the local mirror, prepare them
(records: all), then a second ingest that must fetch nothing. From the repo with a
completed (up-to-date) pipeline, also a no-op `dvc repro`.

    python benchmarks/ecg_data.py            # mirror: $ECG_MIRROR or ../shared/data/mitdb
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ecg import ingest, prepare  # noqa: E402

TARGET_DATA_S = 10.0  # ingest + prepare of all records
TARGET_NOOP_S = 2.0  # second ingest / no-op dvc repro

PARAMS = """ecg_data:
  database: mitdb
  records: all
  mirror: {mirror}
"""


def timed(fn, *args):
    buf = StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(buf):
        fn(*args)
    return time.perf_counter() - t0, buf.getvalue().strip()


def dvc_noop() -> tuple[float | None, str]:
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    dvc = [str(REPO / ".venv" / "bin" / "dvc")] if (REPO / ".venv" / "bin" / "dvc").exists() else ["dvc"]
    if not (REPO / "dvc.lock").exists():
        return None, "skipped: no dvc.lock (pipeline never run)"
    st = subprocess.run(dvc + ["status", "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    if st.returncode != 0:
        return None, f"skipped: dvc status failed: {st.stderr.strip()[:200]}"
    if json.loads(st.stdout or "{}"):
        return None, "skipped: pipeline not up to date (dvc repro would not be a no-op)"
    t0 = time.perf_counter()
    run = subprocess.run(dvc + ["repro"], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        return None, f"failed: {run.stderr.strip()[:200]}"
    ran = [line for line in run.stdout.splitlines() if line.startswith("Running stage")]
    return wall, "no-op" if not ran else f"NOT a no-op: {ran}"


def main() -> int:
    mirror = Path(os.environ.get("ECG_MIRROR") or REPO.parent / "shared" / "data" / "mitdb").resolve()
    if not (mirror / "RECORDS").exists():
        print(f"no MIT-BIH mirror at {mirror} (set ECG_MIRROR)")
        return 1
    workers = min(2, os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ecg_bench_") as tmp:
        tmp = Path(tmp)
        params = tmp / "params.yaml"
        params.write_text(PARAMS.format(mirror=json.dumps(str(mirror))))
        raw, out = tmp / "raw", tmp / "ecg"
        args_ingest = ["--params", str(params), "--out", str(raw)]
        t_ing, msg_ing = timed(ingest.main, args_ingest)
        t_prep, msg_prep = timed(prepare.main, ["--params", str(params), "--raw", str(raw), "--out", str(out),
                                                "--metrics", str(tmp / "dataset.json"), "--workers", str(workers)])
        t_noop, msg_noop = timed(ingest.main, args_ingest)
    print(msg_ing)
    print(msg_prep)
    print(msg_noop)
    noop_ok = "(0 files fetched" in msg_noop
    total = t_ing + t_prep
    rows.append(("ingest (records: all, from mirror)", t_ing, None, ""))
    rows.append((f"prepare (records: all, workers {workers})", t_prep, None, ""))
    rows.append(("ingest + prepare", total, TARGET_DATA_S, ""))
    rows.append(("second ingest (no-op)", t_noop, TARGET_NOOP_S, "fetched nothing" if noop_ok else "FETCHED FILES"))
    t_dvc, note = dvc_noop()
    rows.append(("dvc repro (no-op, repo)", t_dvc, TARGET_NOOP_S, note))

    print(f"\n{'step':<38} {'wall s':>8} {'target s':>9}  verdict")
    print("-" * 78)
    ok = noop_ok
    for name, wall, target, extra in rows:
        w = f"{wall:8.2f}" if wall is not None else f"{'-':>8}"
        t = f"{target:9.1f}" if target is not None else f"{'':>9}"
        verdict = ""
        if target is not None and wall is not None:
            verdict = "ok" if wall <= target else "OVER"
            ok &= wall <= target
        print(f"{name:<38} {w} {t}  {verdict} {extra}".rstrip())
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
