"""Stage report: reports/index.html, reports/compare.html and reports/runs/<arm>/<run>.html.

Reads only files (metrics, artifacts, dataset json); never retrains or predicts.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.params import PARAMS_FILE, ParamsError, load_section
from pipeline.report import render, tables
from pipeline.report.runs import ReportError, discover


@dataclass(frozen=True)
class ReportParams:
    bootstrap: int = 1000   # group-bootstrap resamples for per-class CIs
    seed: int = 42
    ece_bins: int = 15
    max_errors: int = 12

    def validate(self) -> None:
        if self.bootstrap < 1 or self.ece_bins < 1 or self.max_errors < 0:
            raise ParamsError("bootstrap and ece_bins must be >= 1, max_errors >= 0")


def build(root: Path, out: Path, cfg: ReportParams) -> list[Path]:
    """Render every page from the files under `root` into `out`; return the written paths."""
    arms = discover(root)
    for run in (r for runs in arms.values() for r in runs):
        run.cis = tables.class_cis(run, cfg.bootstrap, cfg.seed)
    env = render.environment()
    written = [render.write(env, "run.html", out / render.href(r), render.run_context(r, cfg))
               for runs in arms.values() for r in runs]
    written.append(render.write(env, "compare.html", out / "compare.html", render.compare_context(arms)))
    written.append(render.write(env, "index.html", out / "index.html", render.index_context(arms)))
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
