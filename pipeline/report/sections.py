"""Sections that grow with the pipeline: an arm's descriptor names metrics files that later stages
write (Section); each is shown as a table when its file exists, else a sentence says why it is absent.

A table row is every object in the file holding a `macro_f1`, labelled by its key path; its columns
are macro-F1 (with `ci95.macro_f1`), the detection Se/+P when present, each class's F1 and, when
present, the number of groups. Any other numbers of a row (e.g. size, latency) are listed beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.io import read_json


@dataclass(frozen=True)
class Section:
    key: str            # html id
    title: str
    path: str           # metrics file, relative to the project root
    intro: str          # what it shows, in plain words
    absent: str         # why there is no table when the file does not exist


def _rows(obj, path=()) -> list[dict]:
    if not isinstance(obj, dict):
        return []
    if "macro_f1" in obj:
        ci = (obj.get("ci95") or {}).get("macro_f1")
        det = obj.get("detection") or {}
        per = obj.get("per_class") or {}
        extra = {k: v for k, v in obj.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and k not in ("macro_f1",)}
        row = {"label": " / ".join(path) or "all", "macro": (obj.get("macro_f1"), ci),
               "det_se": det.get("se"), "det_ppv": det.get("+p", det.get("ppv")),
               "f1": {c: (r or {}).get("f1") for c, r in per.items()}, "extra": extra}
        return [row] + [r for k, v in obj.items() if k not in ("per_class", "ci95", "detection")
                        for r in _rows(v, (*path, str(k)))]
    return [r for k, v in obj.items() for r in _rows(v, (*path, str(k)))]


def load(root: Path, sections) -> list[dict]:
    """{"section", "rows", "classes", "detection", "reason"} for each declared section."""
    out = []
    for s in sections:
        path = root / s.path
        if not path.is_file():
            out.append({"section": s, "rows": [], "classes": [], "detection": False,
                        "reason": f"{s.path} does not exist: {s.absent}"})
            continue
        try:
            rows = _rows(read_json(path))
        except ValueError as exc:
            out.append({"section": s, "rows": [], "classes": [], "detection": False,
                        "reason": f"{s.path} is unreadable ({type(exc).__name__})"})
            continue
        classes = list(dict.fromkeys(c for r in rows for c in r["f1"]))
        out.append({"section": s, "rows": rows, "classes": classes,
                    "detection": any(r["det_se"] is not None for r in rows),
                    "reason": None if rows else f"{s.path} holds no results yet (e.g. nothing configured)."})
    return out
