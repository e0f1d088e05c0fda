"""Jinja2 environment (autoescape on, strict undefined) and the context of each page."""
from __future__ import annotations

from pathlib import Path, PurePath

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, StrictUndefined

from pipeline.io import write_text
from pipeline.report import clinical, compare, figures, sections, tables

TEMPLATES = Path(__file__).parent / "templates"
INFO_LABELS = {"name": "Architecture", "params": "Parameters",
               "receptive_field_samples": "Receptive field (samples)",
               "receptive_field_ms": "Receptive field (ms)"}


def _num(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{v:,.1f}"


def environment(arms) -> Environment:
    """Shared templates, plus each arm's macros file as '<arm>/<file name>'."""
    loader = ChoiceLoader([FileSystemLoader(TEMPLATES), PrefixLoader(
        {arm.name: FileSystemLoader(arm.template.parent) for arm in arms})])
    env = Environment(loader=loader, autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(basename=lambda v: PurePath(str(v).replace("\\", "/")).name, pct=tables.pct, ci=tables.ci_text, num=_num,
                       dec=lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}")
    return env


def title(run) -> str:
    return " · ".join(str(run.get(k)) for k in run.arm.keys if run.get(k) is not None) or run.name


def href(run) -> str:
    return f"runs/{run.arm.name}/{run.name}.html"


def _shown(v) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) or v is None:
        return _num(v)
    if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
        return " × ".join(_num(x) for x in v)
    return None


def model_info(run) -> list[tuple[str, str]]:
    """(label, text) of each plain model_info entry of eval.json."""
    info = run.info.get("model_info") or {}
    rows = [(INFO_LABELS.get(k, k.replace("_", " ").capitalize()), _shown(v)) for k, v in info.items()]
    return [(label, text) for label, text in rows if text is not None]


def confusion_rows(cm, classes) -> list[dict]:
    rows = []
    for k, c in enumerate(classes):
        n = int(cm[k].sum())
        rows.append({"cls": c, "n": n, "cells": [{"count": int(v), "rate": v / n if n else None} for v in cm[k]]})
    return rows


def run_context(run, max_errors: int) -> dict:
    cm = tables.confusion(run)
    binary = clinical.binary(run)
    return {
        "binary": binary, "ordinal": clinical.ordinal(run), "degenerate": clinical.degenerate(run),
        "alarms": clinical.alarms(run), "group_rows": clinical.group_table(run),
        "roc_uri": binary and figures.roc(run, binary["positive"], binary["points"]),
        "run": run, "title": title(run), "root": "../../", "arm_template": f"{run.arm.name}/{run.arm.template.name}",
        "macro": tables.overall(run, "macro_f1"), "accuracy": tables.overall(run, "accuracy"),
        "columns": tables.COLUMNS, "rows": tables.headline(run), "n_boot": run.n_boot,
        "confusion": None if cm is None else confusion_rows(cm, run.classes),
        "confusion_uri": None if cm is None else figures.confusion(cm, run.classes, title(run)),
        "failure_modes": tables.failure_modes(run, cm),
        "reliability_uri": figures.reliability(run), "ece": run.get("ece") or {},
        "temperature": run.get("temperature"),
        "errors": figures.errors(run, max_errors),
        "history_uri": figures.history(run.train), "train": run.train, "model_info": model_info(run),
        "folds": sorted((run.train.get("folds") or {}).items()),
        "mlflow_run_id": run.get("mlflow_run_id"),
        "hashes": [(k, v) for k, v in (run.info.get("hashes") or {}).items() if v],
    }


def index_context(arms: dict, runs: dict, root: Path = Path(".")) -> dict:
    picked = {name: compare.chosen(rs) for name, rs in runs.items()}
    return {"root": "", "arms": [
        {"arm": arms[name], "name": name, "sections": sections.load(root, arms[name].sections), "runs": [
            {"title": title(r), "href": href(r), "macro": tables.overall(r, "macro_f1"),
             "val": r.get("val_macro_f1"), "chosen": r.name in picked[name], "name": r.name} for r in rs]}
        for name, rs in runs.items()]}


def compare_context(arms: dict, runs: dict, root: Path = Path(".")) -> dict:
    return {"root": "", "arms": [{"arm": arms[name], "blocks": compare.blocks(arms[name], rs),
                                  "changes": arms[name].changes(root)} for name, rs in runs.items()]}


def write(env: Environment, template: str, path: Path, context: dict) -> Path:
    write_text(path, env.get_template(template).render(**context))
    return path
