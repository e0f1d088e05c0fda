"""Sections that grow with the pipeline: an arm's descriptor names metrics files that later stages
write (Section); each is shown when its file exists, else a sentence says why it is absent.

kind "table" (default): a table row is every object in the file holding a `macro_f1`, labelled by its
key path; its columns are macro-F1 (with `ci95.macro_f1`), the detection Se/+P when present, each
class's F1 and, when present, the number of groups. Any other numbers of a row (e.g. size, latency) are
listed beside it.

kind "compression": the file a compression stage writes (variants of one reference model with size,
latency, accuracy and the paired difference to the reference; the distillation grid, pruning speedups,
a roofline per layer, the quantization-noise prediction, a deployment goal). `compression()` turns it
into the view that templates/compression.html renders; every part it lacks (an older file) becomes
a sentence instead of a table.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import read_json

KINDS = ("table", "compression")


@dataclass(frozen=True)
class Section:
    key: str            # html id
    title: str
    path: str           # metrics file, relative to the project root
    intro: str          # what it shows, in plain words
    absent: str         # why there is no table when the file does not exist
    kind: str = "table"           # how the file is shown: one of KINDS
    test_name: str = "test set"   # the held-out data the file's scores come from, as the arm calls it
    unit: str = "item"            # one sample, in plain words (singular): latencies are per unit

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"section '{self.key}': unknown kind {self.kind!r} (known: {', '.join(KINDS)})")


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


# ---- kind "compression" -------------------------------------------------------------------------

# variant families in the order the table groups them, with a heading in plain words
FAMILIES = (("reference", "Reference: the deployed model"),
            ("export", "Exports of the reference"),
            ("member", "Single network of the reference"),
            ("distilled", "Distilled students (trained on the reference's soft outputs)"),
            ("hard", "Students of the same size trained on labels alone"),
            ("pruned", "Magnitude-pruned (zeros stored, same shapes)"),
            ("structured", "Channel-pruned (smaller layers)"),
            ("int8", "Full-integer int8 exports"),
            ("combined", "Combined: distilled, pruned and quantized"))
LATENCY_KEY = re.compile(r"^latency_ms_b(\d+)$")


def _d(obj, *keys) -> dict:
    """obj[k0][k1]... when every step is a dict, else {}."""
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else {}


def _f(v) -> float | None:
    """A finite number, else None (null, text, bool, NaN all read as missing)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def _ci(obj) -> dict | None:
    """{"lo", "hi"} when both bounds are numbers, else None."""
    if not isinstance(obj, dict):
        return None
    lo, hi = _f(obj.get("lo")), _f(obj.get("hi"))
    return None if lo is None or hi is None else {"lo": lo, "hi": hi}


def _large_batch(variants: dict) -> int | None:
    sizes = {int(m.group(1)) for v in variants.values() if isinstance(v, dict)
             for k in v if (m := LATENCY_KEY.match(k))}
    sizes.discard(1)
    return max(sizes) if sizes else None


def _variant(name: str, v: dict, classes: list, batch: int | None, met: set, pareto: set) -> dict:
    params, nonzero = _f(v.get("params")), _f(v.get("nonzero_params"))
    diff_ci = _ci(v.get("diff_ci95"))
    family = str(v.get("family") or "other")
    return {"name": name, "family": family, "description": str(v.get("description") or ""),
            "reference": family == "reference",
            "params": params, "nonzero": nonzero if params is not None and nonzero is not None and nonzero < params
            else None,
            "sparsity": _f(v.get("sparsity")),
            "bytes": _f(v.get("bytes")), "gzip_bytes": _f(v.get("gzip_bytes")),
            "lat1": _f(v.get("latency_ms_b1")), "lat_big": _f(v.get(f"latency_ms_b{batch}")) if batch else None,
            "macro": _f(v.get("macro_f1")), "ci": _ci(_d(v, "ci95").get("macro_f1")),
            "diff": _f(v.get("diff_vs_teacher")), "diff_ci": diff_ci,
            "differs": diff_ci is not None and (diff_ci["lo"] > 0 or diff_ci["hi"] < 0),
            "f1": {c: _f(_d(v, "per_class", c).get("f1")) for c in classes},
            "ece_before": _f(v.get("ece_before")), "ece_after": _f(v.get("ece_after")),
            "temperature": _f(v.get("temperature")), "val_macro_f1": _f(v.get("val_macro_f1")),
            "naive_speedup": _f(v.get("naive_speedup")), "measured_speedup_b1": _f(v.get("measured_speedup_b1")),
            "meets": name in met, "pareto": name in pareto, "missing": False}


def _missing(path: str, key: str, what: str) -> str:
    return (f"{path} has no \"{key}\" ({what} is not shown; the file was probably written by an older version "
            "of its stage).")


def _distillation(d: dict, rows: dict, path: str, notes: list) -> dict | None:
    sel = d.get("selection")
    if not isinstance(sel, dict):
        notes.append(_missing(path, "selection", "the distillation grid"))
        return None
    chosen = _d(sel, "chosen")
    T, alpha = _f(chosen.get("T")), _f(chosen.get("alpha"))
    grid = [{"width": _f(g.get("width")), "T": _f(g.get("T")), "alpha": _f(g.get("alpha")),
             "val": _f(g.get("val_macro_f1")),
             "chosen": T is not None and _f(g.get("T")) == T and _f(g.get("alpha")) == alpha}
            for g in sel.get("grid") or [] if isinstance(g, dict)]
    # distilled vs hard-label students: the same network, so the same parameter count
    hard = [r for r in rows.values() if r["family"] == "hard"]
    pairs = []
    for r in (r for r in rows.values() if r["family"] == "distilled"):
        twin = next((h for h in hard if h["params"] is not None and h["params"] == r["params"]), None)
        pairs.append({"kd": r, "hard": twin})
    return {"grid": grid, "T": T, "alpha": alpha, "teacher_val": _f(sel.get("teacher_val_macro_f1")),
            "combined_width": _f(sel.get("combined_width")), "rule": str(sel.get("rule") or ""), "pairs": pairs}


def _pruning(d: dict, rows: dict, path: str, notes: list) -> dict:
    sparse = [r for r in rows.values() if r["sparsity"] is not None and r["family"] in ("pruned", "combined")]
    for r in sparse:
        if r["naive_speedup"] is None and r["sparsity"] < 1:
            r["naive_speedup"] = 1.0 / (1.0 - r["sparsity"])
    keep = d.get("structured_keep") if isinstance(d.get("structured_keep"), dict) else {}
    structured = [{"row": r, "keep": []} for r in rows.values() if r["family"] == "structured"]
    for s in structured:   # the keep table whose sparsity the variant's name ends with, when one does
        key = next((k for k in keep if s["row"]["name"].endswith(str(k))), None)
        if key is not None and isinstance(keep[key], dict):
            s["keep"] = [(layer, n) for layer, n in keep[key].items()]
    sp = d.get("sparse_speedup")
    timings = None
    if isinstance(sp, dict):
        timings = {"layer": str(sp.get("layer") or "?"), "rows_per_item": _f(sp.get("rows_per_item")),
                   "rows": sorted(({k: _f(t.get(k)) for k in ("sparsity", "batch", "dense_s", "sparse_s", "speedup",
                                                              "naive_speedup", "nnz")}
                                   for t in sp.get("timings") or [] if isinstance(t, dict)),
                                  key=lambda t: (t["sparsity"] or 0.0, t["batch"] or 0.0))}
    else:
        notes.append(_missing(path, "sparse_speedup", "the sparse-matmul timing"))
    text = _d(d, "explanation").get("sparsity")
    return {"variants": sparse, "structured": structured, "timings": timings,
            "text": text if isinstance(text, str) else None}


def _layer(row: dict) -> dict:
    return {"name": str(row.get("name") or "?"), "type": str(row.get("type") or ""),
            **{k: _f(row.get(k)) for k in ("params", "macs", "flops", "bytes", "intensity", "attainable_gflops",
                                           "roofline_s_per_item", "ridge_intensity")},
            "bound": str(row.get("bound") or "n/a")}


def _roofline(d: dict, path: str, notes: list) -> dict | None:
    roof = d.get("roofline")
    if not isinstance(roof, dict):
        notes.append(_missing(path, "roofline", "the roofline analysis"))
        return None
    machine = _d(roof, "machine")
    layers = _d(roof, "layers")
    tables = {k: [_layer(r) for r in v if isinstance(r, dict)] for k, v in layers.items() if isinstance(v, list)}
    # the per-layer table: the first batch-1 model (the compression stage lists its base network first)
    shown = next((k for k in tables if k.endswith("_b1")), next(iter(tables), None))
    rows = tables.get(shown, [])
    total = next((r for r in rows if r["name"] == "TOTAL"), None)
    totals = [{"model": k, **next(r for r in v if r["name"] == "TOTAL")} for k, v in tables.items()
              if any(r["name"] == "TOTAL" for r in v)]
    ridge = total and total["ridge_intensity"]
    peak, bw = _f(_d(roof, "roof").get("peak_gflops")), _f(_d(roof, "roof").get("bandwidth_gbs"))
    if ridge is None and peak is not None and bw:
        ridge = peak / bw
    text = _d(d, "explanation").get("roofline")
    return {"machine": {k: _f(machine.get(k)) for k in ("peak_gflops_1thread", "peak_gflops", "bandwidth_gbs")},
            "method": str(machine.get("method") or ""), "cpu": str(machine.get("cpu") or ""),
            "roof_peak": peak, "roof_bw": bw, "model": shown, "layers": [r for r in rows if r["name"] != "TOTAL"],
            "total": total, "ridge": ridge, "totals": totals, "text": text if isinstance(text, str) else None}


def _quantization(d: dict, path: str, notes: list) -> list | None:
    q = d.get("quantization_noise")
    if not isinstance(q, dict):
        notes.append(_missing(path, "quantization_noise", "the quantization-noise prediction"))
        return None
    out = []
    for model, v in q.items():
        v = v if isinstance(v, dict) else {}
        pred = _d(v, "predicted_val")
        # the measured change on the test data: "measured_<test set name>"
        measured_test = v.get("measured_test", next((x for k, x in v.items()
                                                    if k.startswith("measured_") and k != "measured_val"), None))
        out.append({"model": str(model), "predicted": _f(pred.get("macro_f1_change")),
                    "predicted_sd": _f(pred.get("macro_f1_change_sd")), "flip_rate": _f(pred.get("flip_rate")),
                    "draws": _f(pred.get("draws")), "measured_val": _f(v.get("measured_val")),
                    "measured_test": _f(measured_test)})
    return out


def compression(d, path: str) -> tuple[dict | None, str | None]:
    """(view, None) of a compression stage's file, or (None, why nothing can be shown)."""
    variants = d.get("variants") if isinstance(d, dict) else None
    if not isinstance(variants, dict) or not any(isinstance(v, dict) for v in variants.values()):
        return None, f"{path} holds no \"variants\" (nothing to show yet)."
    variants = {str(k): v for k, v in variants.items() if isinstance(v, dict)}
    notes: list[str] = []
    goal = d.get("goal") if isinstance(d.get("goal"), dict) else None
    if goal is None:
        notes.append(_missing(path, "goal", "the deployment goal"))
    met = [str(n) for n in (goal or {}).get("met_by") or []]
    pareto = [str(n) for n in d.get("pareto") or []] if isinstance(d.get("pareto"), list) else []
    classes = list(dict.fromkeys(c for v in variants.values() for c in _d(v, "per_class")))
    batch = _large_batch(variants)
    rows = {n: _variant(n, v, classes, batch, set(met), set(pareto)) for n, v in variants.items()}
    order = [f for f, _ in FAMILIES] + [r["family"] for r in rows.values() if r["family"] not in dict(FAMILIES)]
    labels = dict(FAMILIES)
    groups = [{"family": f, "label": labels.get(f, f.capitalize()),
               "rows": [r for r in rows.values() if r["family"] == f]} for f in dict.fromkeys(order)]
    reference = next((r for r in rows.values() if r["reference"]), None)
    view = {
        "classes": classes, "batch": batch, "groups": [g for g in groups if g["rows"]], "reference": reference,
        "goal": None if goal is None else {"max_bytes": _f(goal.get("max_bytes")),
                                           "max_f1_drop": _f(goal.get("max_f1_drop")),
                                           "max_latency_ms": _f(goal.get("max_latency_ms"))},
        "met": [rows.get(n) or {"name": n, "missing": True} for n in met],
        "pareto": [rows.get(n) or {"name": n, "missing": True} for n in pareto],
        "any_differs": any(r["differs"] for r in rows.values() if not r["reference"]),
    }
    if reference is None:
        notes.append(f"{path}: no variant has family \"reference\", so the summary has no reference model.")
    ref_ci = reference["ci"] if reference else None
    overlapping = [r for r in rows.values() if ref_ci and not r["reference"] and r["ci"] and r["bytes"] is not None
                   and r["ci"]["hi"] >= ref_ci["lo"] and r["ci"]["lo"] <= ref_ci["hi"]]
    view["smallest_overlapping"] = min(overlapping, key=lambda r: r["bytes"]) if overlapping else None
    view["distillation"] = _distillation(d, rows, path, notes)
    view["pruning"] = _pruning(d, rows, path, notes)
    view["roofline"] = _roofline(d, path, notes)
    view["quantization"] = _quantization(d, path, notes)
    total = _f(_d(d, "timings_s").get("total_s"))
    view["minutes"] = None if total is None else total / 60
    view["notes"] = notes
    return view, None


# ---- loading ------------------------------------------------------------------------------------

def load(root: Path, sections) -> list[dict]:
    """{"section", "rows", "classes", "detection", "view", "reason"} for each declared section:
    "rows"/"classes"/"detection" for kind "table", "view" for kind "compression"; "reason" when
    nothing can be shown."""
    out = []
    for s in sections:
        entry = {"section": s, "rows": [], "classes": [], "detection": False, "view": None, "reason": None}
        out.append(entry)
        path = root / s.path
        if not path.is_file():
            entry["reason"] = f"{s.path} does not exist: {s.absent}"
            continue
        try:
            data = read_json(path)
        except ValueError as exc:
            entry["reason"] = f"{s.path} is unreadable ({type(exc).__name__})"
            continue
        if s.kind == "compression":
            try:
                entry["view"], entry["reason"] = compression(data, s.path)
            except (TypeError, AttributeError, KeyError, ValueError) as exc:   # a shape this reader does not know
                entry["reason"] = f"{s.path} could not be read as a compression result ({type(exc).__name__}: {exc})"
            continue
        rows = _rows(data)
        entry.update(rows=rows, classes=list(dict.fromkeys(c for r in rows for c in r["f1"])),
                     detection=any(r["det_se"] is not None for r in rows),
                     reason=None if rows else f"{s.path} holds no results yet (e.g. nothing configured).")
    return out
