"""No-op `dvc status` and `dvc repro` of the whole pipeline: today's tree against a reference commit.

    python benchmarks/dvc_noop.py [--reference ef75b88] [--repeat 5]

Each tree (the working tree and the reference commit's tree) is copied to a temporary folder, every
stage output is replaced by a stand-in file and committed to a fresh dvc.lock (`dvc commit -f`), so
both pipelines are fully up to date; then each command is timed `--repeat` times, alternating the
two trees so that machine load hits both alike. Prints medians and the ratio new/reference.
The reference default, ef75b88, is the last commit before the params/dvc.yaml restructuring
(issue 8 measured 3.3 s and 6 s for its no-op on two machines).

`--floor` adds three synthetic pipelines timed in the same rotation, to show what DVC itself costs:
"floor-1" (one trivial stage: cp, one dep, one out, one key of a one-line params file), "floor-N" (as many
trivial stages as the current pipeline) and "floor-N+params" (the same, each stage reading one key of the
project's params.yaml). The difference between the last two is DVC re-reading params.yaml once per stage.
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


def synthetic_tree(dest: Path, n: int, params_text: str | None) -> None:
    """`n` trivial stages (cp in<i>.txt out<i>.txt), each reading one params key: of a one-line file, or
    (params_text) of that text, where it reads the first top-level section's first key."""
    run(["git", "init", "-q"], dest)
    if params_text is None:
        (dest / "params.yaml").write_text("k: 1\n")
        key = "k"
    else:
        (dest / "params.yaml").write_text(params_text)
        import yaml
        loaded = yaml.safe_load(params_text)
        section = next(iter(loaded))
        key = f"{section}.{next(iter(loaded[section]))}" if isinstance(loaded[section], dict) else section
    stages = []
    for i in range(n):
        (dest / f"in{i}.txt").write_text(f"{i}\n")
        stages.append(f"  s{i}:\n    cmd: cp in{i}.txt out{i}.txt\n    deps: [in{i}.txt]\n"
                      f"    params: [{key}]\n    outs: [out{i}.txt]\n")
    (dest / "dvc.yaml").write_text("stages:\n" + "".join(stages))
    run([*DVC, "init", "-q", "--force"], dest)
    run([*DVC, "repro", "-q"], dest)


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
    ap.add_argument("--floor", action="store_true", help="also time synthetic pipelines of trivial stages")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"reference": Path(tmp) / "reference", "current": Path(tmp) / "current"}
        for name, dest in trees.items():
            dest.mkdir()
            export_tree(dest, args.reference if name == "reference" else None)
            print(f"{name}: {n_stages(dest)} stages, {stand_in_outputs(dest)} outputs committed", flush=True)
        if args.floor:
            n = n_stages(trees["current"])
            for name, count, text in (("floor-1", 1, None), ("floor-N", n, None),
                                      ("floor-N+params", n, (ROOT / "params.yaml").read_text())):
                trees[name] = Path(tmp) / name
                trees[name].mkdir()
                synthetic_tree(trees[name], count, text)
                print(f"{name}: {count} trivial stages", flush=True)
        commands = {"dvc status": [*DVC, "status"], "dvc repro (no-op)": [*DVC, "repro"]}
        times = {(c, t): [] for c in commands for t in trees}
        for _ in range(args.repeat):
            for c, cmd in commands.items():
                for t, dest in trees.items():
                    times[(c, t)].append(time_once(cmd, dest))
        print(f"\nmedian of {args.repeat} runs, same machine, alternating trees:")
        for c in commands:
            med = {t: statistics.median(times[(c, t)]) for t in trees}
            ref, cur = med["reference"], med["current"]
            print(f"  {c:18s} reference {ref:6.2f} s   current {cur:6.2f} s   ratio {cur / ref:5.2f}  "
                  f"(target <= 0.33)")
            for t in trees:
                if t.startswith("floor"):
                    print(f"  {'':18s} {t:15s} {med[t]:6.2f} s   ratio to reference {med[t] / ref:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
