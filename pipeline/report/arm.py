"""What an arm tells the report about itself (its descriptor); the report knows nothing else of it.

Each arm package has a module `<arm>.report` with `REPORT = ArmReport(...)`; the stage imports the
arms that params.yaml `report.arms` names (default: every folder under metrics/ with such a module).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Plan:
    """One kind of comparison block: runs sharing `fixed` keys, compared across values of `vary`."""
    fixed: tuple[str, ...]
    vary: str
    pairs: tuple | None = None   # (a, b) label pairs to contrast; None: every pair
    focus: str = "all"           # per-class F1 columns: "all" scored classes, or "rare" (all but the largest)
    suffix: str = ""             # added to the block title


@dataclass(frozen=True)
class ArmReport:
    name: str                     # folder under metrics/ and artifacts/
    title: str                    # heading, e.g. the task in plain words
    unit: str                     # one sample, in plain words (singular)
    group: str                    # what the bootstrap resamples, in plain words (singular)
    keys: tuple[str, ...]         # eval.json keys naming a run, in title order
    template: Path                # Jinja macros: data_section(run), intended_use(), limits(run)
    question: str = ""            # what the comparison page answers for this arm
    plans: tuple[Plan, ...] = ()
    choice: tuple[str, ...] = ()  # keys grouping the runs that compete for the validation choice
    load_data: Callable = lambda root, info, notes: {}   # (root, eval.json, notes) -> data for the template
    render_error: Callable | None = None   # (x, data, extra) -> (PNG data URI, kind[, note]) of one error example
    group_table: bool = False     # a per-group table (samples, Se/+P per class) on each run page
    sections: tuple = ()          # pipeline.report.sections.Section: later stages' metrics files (index page)
    error_caption: str = ""       # what one error example shows
    changes: Callable = lambda root: []   # root -> sentences for the comparison page: what changed since a
                                          # frozen reference, and whether the intervals separate

    def run_names(self, root: Path) -> list[str]:
        """Runs the evaluate stage wrote: artifacts/<arm>/<run>/eval.json (other json files under
        metrics/<arm>/, e.g. another stage's metrics, are not runs)."""
        return sorted(p.parent.name for p in (root / "artifacts" / self.name).glob("*/eval.json"))

    def metrics_file(self, root: Path, run: str) -> Path:
        return root / "metrics" / self.name / f"{run}.json"


def load_arm(name: str) -> ArmReport:
    """The descriptor `REPORT` of module `<name>.report`; a clear error when there is none."""
    try:
        module = importlib.import_module(f"{name}.report")
    except ModuleNotFoundError as exc:
        raise ValueError(f"arm '{name}': no module {name}.report ({exc})") from None
    report = getattr(module, "REPORT", None)
    if not isinstance(report, ArmReport):
        raise ValueError(f"arm '{name}': {name}.report has no REPORT descriptor")
    return report


def discover_arms(root: Path) -> list[str]:
    """Arms with a metrics folder and a report descriptor module, sorted by name."""
    out = []
    for folder in sorted(p for p in (root / "metrics").glob("*") if p.is_dir()):
        try:
            found = importlib.util.find_spec(f"{folder.name}.report") is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out.append(folder.name)
    return out
