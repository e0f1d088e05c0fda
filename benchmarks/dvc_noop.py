"""No-op `dvc status` and `dvc repro` of the whole pipeline: today's tree against a reference commit.

    python benchmarks/dvc_noop.py [--reference ef75b88] [--repeat 5]

Each tree (the working tree and the reference commit's tree) is copied to a temporary folder, every
stage output is replaced by a stand-in file and committed to a fresh dvc.lock (`dvc commit -f`), so
both pipelines are fully up to date; then each command is timed `--repeat` times, alternating the
two trees so that machine load hits both alike. Prints medians and the ratio new/reference.
The reference default, ef75b88, is the last commit before the params/dvc.yaml restructuring
(issue 8 measured 3.3 s and 6 s for its no-op on two machines).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def run(cmd, cwd, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed in {cwd}:\n{out.stdout}\n{out.stderr}")
    return out


def export_tree(dest: Path, rev: str | None) -> None:
    """Files of git revision `rev` (None: the working tree's tracked and unignored files)."""
    if rev is None:
        names = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT).stdout
        for name in filter(None, names.split("\0")):
            if (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    else:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for generated in ("dvc.lock",):
        (dest / generated).unlink(missing_ok=True)
    run(["git", "init", "-q"], dest)


def stand_in_outputs(dest: Path) -> int:
    code = ("import json, sys; from dvc.repo import Repo; r = Repo(sys.argv[1]); "
            "print(json.dumps([[str(o.def_path) for s in r.index.stages for o in s.outs], "
            "[str(d.def_path) for s in r.index.stages for d in s.deps]]))")
    outs, deps = json.loads(run([sys.executable, "-c", code, str(dest)], dest).stdout)
    for out in outs:
        path = dest / out
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix:
            path.write_text("stand-in\n")
        else:
            path.mkdir(exist_ok=True)
            (path / "stand-in").write_text("stand-in\n")
    # a dep on one file inside another stage's output folder (e.g. models/ecg/package.json) needs that file
    for dep in deps:
        path = dest / dep
        if not path.exists() and any(Path(dep).is_relative_to(o) for o in outs if not Path(o).suffix):
            path.write_text("stand-in\n")
    run([*DVC, "commit", "--force"], dest)
    status = run([*DVC, "status", "--json"], dest).stdout
    assert json.loads(status) == {}, f"{dest}: not up to date after commit: {status[:500]}"
    return len(outs)


def n_stages(dest: Path) -> int:
    return len(run([*DVC, "stage", "list", "--name-only"], dest).stdout.split())


def time_once(cmd, cwd) -> float:
    t0 = time.perf_counter()
    run(cmd, cwd)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default="ef75b88")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"reference": Path(tmp) / "reference", "current": Path(tmp) / "current"}
        for name, dest in trees.items():
            dest.mkdir()
            export_tree(dest, args.reference if name == "reference" else None)
            print(f"{name}: {n_stages(dest)} stages, {stand_in_outputs(dest)} outputs committed", flush=True)
        commands = {"dvc status": [*DVC, "status"], "dvc repro (no-op)": [*DVC, "repro"]}
        times = {(c, t): [] for c in commands for t in trees}
        for _ in range(args.repeat):
            for c, cmd in commands.items():
                for t, dest in trees.items():
                    times[(c, t)].append(time_once(cmd, dest))
        print(f"\nmedian of {args.repeat} runs, same machine, alternating trees:")
        for c in commands:
            ref, cur = (statistics.median(times[(c, t)]) for t in trees)
            print(f"  {c:18s} reference {ref:6.2f} s   current {cur:6.2f} s   ratio {cur / ref:5.2f}  "
                  f"(target <= 0.33)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
