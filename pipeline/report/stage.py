"""Stage report: reports/index.html, reports/compare.html and reports/runs/<arm>/<run>.html.

Reads only files (metrics, eval.json / eval.npz, and what each arm's descriptor loads); never
retrains or predicts. Which arms: params `report.arms`, else every metrics/<arm>/ folder whose
package has a `report` module.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.params import PARAMS_FILE, ParamsError, load_section
from pipeline.report import render
from pipeline.report.arm import discover_arms, load_arm
from pipeline.report.runs import ReportError, discover


@dataclass(frozen=True)
class ReportParams:
    max_errors: int = 12                  # most confident errors shown per run
    arms: tuple[str, ...] | None = None   # arm packages with a `report` descriptor; null = found under metrics/

    def validate(self) -> None:
        if self.max_errors < 0:
            raise ParamsError(f"max_errors must be >= 0, got {self.max_errors}")


def build(root: Path, out: Path, cfg: ReportParams) -> list[Path]:
    """Render every page from the files under `root` into `out`; return the written paths."""
    try:
        arms = {a.name: a for a in map(load_arm, cfg.arms if cfg.arms is not None else discover_arms(root))}
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    runs = discover(root, list(arms.values()))
    env = render.environment(arms.values())
    written = [render.write(env, "run.html", out / render.href(r), render.run_context(r, cfg.max_errors))
               for rs in runs.values() for r in rs]
    written.append(render.write(env, "compare.html", out / "compare.html", render.compare_context(arms, runs, root)))
    written.append(render.write(env, "index.html", out / "index.html", render.index_context(arms, runs, root)))
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=str(PARAMS_FILE))
    ap.add_argument("--root", default=".", help="folder holding metrics/, artifacts/, data/")
    ap.add_argument("--out", default="reports")
    args = ap.parse_args(argv)
    try:
        cfg = load_section("report", ReportParams, args.params)
        written = build(Path(args.root), Path(args.out), cfg)
    except (ReportError, ParamsError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    print(f"report: wrote {len(written)} pages, index {written[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
