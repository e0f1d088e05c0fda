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

kind "analysis": the file a model-analysis stage writes (what trained networks learned, without
retraining). `analysis()` reads the parts it knows by their shape, wherever the file keeps them, per
run either under "runs"/<run>/<part> or under <part>/<run>: plain-words "readings" (a list, or a dict
of titled sentences), "capacity" (parameters, FLOPs per unit, receptive field, linear-region bound),
"dead_units" (share of never-firing ReLU units per layer), "topk" (top-k accuracy with CIs),
"robustness" (scores per corruption and severity, with its "robustness_summary"), "occlusion" (drops of
the true class's probability when windows or single features are occluded, and its figures) and each
"method" text beside its part. Any other part holding a table of numbers is shown as one; PNG figures
the file lists, or that the Section's `figures` globs find, are embedded as data URIs. The parts the
Section expects (`parts`) that the file lacks become sentences.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import read_json

KINDS = ("table", "compression", "analysis")


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
    # kind "analysis": plain words for the file's keys (part names, feature groups, ...) as (key, words)
    labels: tuple = ()
    # kind "analysis": PNG files to embed, (part, glob relative to the project root); a part the file
    # does not have shows them at the end
    figures: tuple = ()
    # kind "analysis": the parts the stage writes; each one the file lacks is named in a sentence
    parts: tuple = ()
    # kind "analysis": the folder of each run's metrics file (<folder>/<run>.json, for its test macro-F1);
    # empty = the analysis file's own folder
    run_metrics: str = ""

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


# ---- kind "analysis" ----------------------------------------------------------------------------

TOPK_KEY = re.compile(r"^top(\d+)$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the parts analysis() reads by shape; any other dict-of-dicts part becomes a generic table
KNOWN_PARTS = ("runs", "readings", "method", "params", "timings_s", "capacity", "dead_units", "topk",
               "robustness", "robustness_summary", "occlusion")
# method texts shown beside each part (the rest are listed at the end)
METHOD_KEYS = {"capacity": ("capacity", "params", "flops", "receptive_field", "linear_regions"),
               "dead_units": ("dead_units", "dead_relu"), "topk": ("topk", "top_k"),
               "robustness": ("robustness", "corruptions"), "occlusion": ("occlusion", "saliency")}


def _label(labels: dict, key) -> str:
    key = str(key)
    return labels.get(key) or key.replace("_", " ")


def _value_ci(obj) -> dict | None:
    """{"value", "ci"} of {"value": x, "ci95"|"ci": {"lo", "hi"}}, or of a bare number; None if not a number."""
    if isinstance(obj, dict):
        v = _f(obj.get("value"))
        return None if v is None else {"value": v, "ci": _ci(obj.get("ci95", obj.get("ci")))}
    v = _f(obj)
    return None if v is None else {"value": v, "ci": None}


def _per_run(d: dict, key: str) -> dict:
    """run -> d["runs"][run][key], else d[key][run] (each a dict)."""
    out = {str(r): v[key] for r, v in _d(d, "runs").items() if isinstance(v, dict) and isinstance(v.get(key), dict)}
    part = d.get(key)
    if isinstance(part, dict) and part and all(isinstance(v, dict) for v in part.values()):
        for r, v in part.items():
            out.setdefault(str(r), v)
    return out


def _scalar_text(v) -> str | None:
    """A plain rendering of a number, text, bool, or short list / dict of numbers; None for anything else."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}" if v == 0 or abs(v) >= 1e-3 else f"{v:.2e}"
    if v is None:
        return "n/a"
    if isinstance(v, list) and len(v) <= 24 and all(isinstance(x, (int, float, str)) for x in v):
        return ", ".join(_scalar_text(x) for x in v)
    if isinstance(v, dict) and len(v) <= 24 and all(isinstance(x, (int, float, str)) or x is None for x in v.values()):
        return "; ".join(f"{k} {_scalar_text(x)}" for k, x in v.items())
    return None


def _readings(d: dict, labels: dict) -> list[dict]:
    r = d.get("readings")
    if isinstance(r, list):
        return [{"label": None, "text": str(x)} for x in r if isinstance(x, str) and x.strip()]
    if isinstance(r, dict):
        return [{"label": _label(labels, k), "text": str(x)} for k, x in r.items() if isinstance(x, str) and x.strip()]
    if isinstance(r, str) and r.strip():
        return [{"label": None, "text": r}]
    return []


def _methods(d: dict, labels: dict) -> dict:
    m = d.get("method")
    if isinstance(m, str):
        return {"method": ("Method", m)}
    if not isinstance(m, dict):
        return {}
    return {str(k): (_label(labels, k), str(v)) for k, v in m.items() if isinstance(v, str) and v.strip()}


def _take_methods(methods: dict, part: str) -> list:
    keys = METHOD_KEYS.get(part, (part,))
    return [methods.pop(k) for k in list(methods) if k in keys or k.startswith(part)]


def _figure(path: Path, caption: str, notes: list, where: str) -> dict | None:
    try:
        data = path.read_bytes()
    except OSError:
        notes.append(f"{where} names the figure {path}, which does not exist (not shown).")
        return None
    if not data.startswith(PNG_MAGIC):
        notes.append(f"{where}: {path} is not a PNG file (not shown).")
        return None
    from pipeline.report.figures import png_uri   # matplotlib is imported only when a figure is shown
    return {"uri": png_uri(data), "caption": caption, "name": path.name}


def _listed_figures(block, root: Path, path: str, notes: list, seen: set) -> list:
    out = []
    listed = block.get("figures") if isinstance(block, dict) else None
    for p in listed if isinstance(listed, list) else []:
        if not isinstance(p, str):
            continue
        f = Path(p) if Path(p).is_absolute() else root / p
        if f.resolve() in seen:
            continue
        seen.add(f.resolve())
        fig = _figure(f, Path(p).stem.replace("_", " "), notes, path)
        if fig:
            out.append(fig)
    return out


def _globbed_figures(section, root: Path, seen: set, notes: list) -> dict:
    out: dict = {}
    for part, pattern in section.figures:
        for f in sorted(root.glob(pattern)):
            if f.resolve() in seen or not f.is_file():
                continue
            seen.add(f.resolve())
            fig = _figure(f, str(f.relative_to(root).with_suffix("")).rsplit("/", 1)[-1].replace("_", " "),
                          notes, section.path)
            if fig:
                out.setdefault(str(part), []).append(fig)
    return out


def _run_macro(root: Path, path: str, run: str, entry: dict, folder: str = "") -> dict | None:
    """A run's test macro-F1 (with CI): the analysis file's own, else the run's metrics file in `folder`
    (default: beside the analysis file)."""
    own = _value_ci({"value": entry.get("macro_f1"), "ci95": _d(entry, "ci95").get("macro_f1")})
    if own:
        return own
    f = root / (folder or Path(path).parent) / f"{run}.json"
    if not f.is_file():
        return None
    try:
        m = read_json(f)
    except ValueError:
        return None
    return _value_ci({"value": m.get("macro_f1"), "ci95": _d(m, "ci95").get("macro_f1")}) if isinstance(m, dict) else None


def _first(obj: dict, *keys):
    return next((obj[k] for k in keys if _f(obj.get(k)) is not None), None)


def _capacity(d: dict, root: Path, path: str, unit: str, folder: str = "") -> dict | None:
    caps = _per_run(d, "capacity")
    if not caps:
        return None
    rows = []
    for run, c in caps.items():
        flops = _first(c, f"flops_per_{unit}_member", f"flops_per_{unit}",
                       *(k for k in c if k.startswith("flops_per_") and k.endswith("_member")),
                       *(k for k in c if k.startswith("flops_per_")))
        rows.append({"run": run, "params": _first(c, "params_member", "params"),
                     "params_all": _f(c.get("params_ensemble")), "members": _f(c.get("members")),
                     "mflops": None if flops is None else flops / 1e6,
                     "rf_ms": _f(c.get("receptive_field_ms")), "rf_samples": _f(c.get("receptive_field_samples")),
                     "regions": _f(c.get("linear_regions_log10_bound")), "relu": _first(c, "relu_units_member", "relu_units"),
                     "macro": _run_macro(root, path, run, _d(d, "runs", run), folder)})
    shown = {k for k in ("params", "members", "mflops", "rf_ms", "regions", "relu", "macro")
             if any(r[k] is not None for r in rows)}
    return {"rows": rows, "shown": shown, "per_member": any(r["members"] for r in rows)}


def _dead_layers(dead: dict) -> dict:
    """layer -> (mean, max) share of dead units, from per_layer, else from member/layer entries."""
    per = _d(dead, "per_layer")
    if per:
        return {str(k): (_f(_d(per, k).get("mean_fraction")), _f(_d(per, k).get("max_fraction"))) for k in per}
    groups: dict = {}
    for k, v in _d(dead, "layers").items():
        frac = _f(v.get("fraction")) if isinstance(v, dict) else _f(v)
        if frac is not None:
            groups.setdefault(str(k).rsplit("/", 1)[-1], []).append(frac)
    return {k: (sum(v) / len(v), max(v)) for k, v in groups.items()}


def _dead_units(d: dict) -> dict | None:
    rows = []
    for run, dead in _per_run(d, "dead_units").items():
        probe = [(k, v) for k, v in dead.items() if isinstance(v, int) and not isinstance(v, bool)]
        rows.append({"run": run, "mean": _f(dead.get("mean_fraction")), "layers": _dead_layers(dead),
                     "members": len(_d(dead, "per_member")) or None,
                     "probe": ", ".join(f"{v:,} {k}" for k, v in probe)})
    for run, c in _per_run(d, "capacity").items():   # dead shares kept beside the capacity numbers
        if run in {r["run"] for r in rows} or not isinstance(c.get("dead_fraction_by_layer"), dict):
            continue
        rows.append({"run": run, "mean": _f(c.get("dead_fraction")), "members": None, "probe": "",
                     "layers": {str(k): (_f(v), None) for k, v in c["dead_fraction_by_layer"].items()}})
    if not rows:
        return None
    groups: dict = {}   # runs with the same layers share a table
    for r in rows:
        groups.setdefault(tuple(r["layers"]), []).append(r)
    return {"groups": [{"layers": list(k), "rows": v, "max": any(x[1] is not None for r in v for x in r["layers"].values())}
                       for k, v in groups.items()]}


def _topk(d: dict) -> dict | None:
    rows = []
    for run, t in _per_run(d, "topk").items():
        values = {int(m.group(1)): _value_ci(v) for k, v in t.items() if (m := TOPK_KEY.match(str(k)))}
        if not values:
            continue
        counts = [(k, v) for k, v in t.items() if isinstance(v, int) and not isinstance(v, bool)]
        rows.append({"run": run, "scores": values, "counts": ", ".join(f"{v:,} {'items' if k == 'n' else k}"
                                                                       for k, v in counts)})
    if not rows:
        return None
    return {"ks": sorted({k for r in rows for k in r["scores"]}), "rows": rows,
            "counts": any(r["counts"] for r in rows)}


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _robustness(d: dict, labels: dict) -> dict | None:
    rob = d.get("robustness")
    if not isinstance(rob, dict) or not any(isinstance(v, dict) for v in rob.values()):
        return None
    rob = {str(k): v for k, v in rob.items() if isinstance(v, dict)}
    baseline = next((k for v in rob.values() for k in ("clean", "baseline", "none") if isinstance(v.get(k), dict)), None)
    kinds = list(dict.fromkeys(k for v in rob.values() for k, x in v.items()
                               if k != baseline and isinstance(x, dict) and any(isinstance(s, dict) for s in x.values())))
    metrics = list(dict.fromkeys(m for v in rob.values() for m, x in _d(v, baseline).items() if _value_ci(x)))
    info = _d(d, "corruptions")
    tables = []
    for kind in kinds:
        sevs = sorted({str(s) for v in rob.values() for s, x in _d(v, kind).items() if isinstance(x, dict)}, key=_natural)
        heads = []
        for s in sevs:
            first = next((_d(v, kind, s) for v in rob.values() if _d(v, kind, s)), {})
            params = [f"{k} {_scalar_text(x)}" for k, x in first.items() if isinstance(x, (int, float))
                      and not isinstance(x, bool) and not k.endswith("_drop")]
            heads.append({"key": s, "params": ", ".join(params)})
        rows = []
        for run, v in rob.items():
            cells = {s: {m: _value_ci(_d(v, kind, s).get(m)) for m in metrics} for s in sevs}
            for s in sevs:
                cells[s]["drop"] = {m: _value_ci(_d(v, kind, s).get(f"{m}_drop")) for m in metrics}
            rows.append({"run": run, "baseline": {m: _value_ci(_d(v, baseline).get(m)) for m in metrics},
                         "cells": cells})
        unit = _d(info, kind).get("unit")
        tables.append({"kind": kind, "label": _label(labels, kind), "unit": unit if isinstance(unit, str) else "",
                       "severities": heads, "rows": rows})
    summary = _table(d.get("robustness_summary"), labels) if isinstance(d.get("robustness_summary"), dict) else None
    return {"baseline": baseline, "metrics": metrics, "metric_labels": [_label(labels, m) for m in metrics],
            "kinds": tables, "summary": summary}


def _cell_text(x) -> str | None:
    """A table cell: a value with its 95% CI ({"value", "ci95"|"ci"}) as "v (lo to hi)", else _scalar_text."""
    if isinstance(x, dict) and "value" in x and ("ci95" in x or "ci" in x):
        vc = _value_ci(x)
        if vc is None:
            return "n/a"
        text = _scalar_text(vc["value"])
        ci = vc["ci"]
        return f"{text} ({_scalar_text(ci['lo'])} to {_scalar_text(ci['hi'])})" if ci else text
    return _scalar_text(x)


def _table(part, labels: dict) -> dict | None:
    """A dict of dicts as a table (rows: its keys; columns: the scalar entries and values with CIs), or a dict
    of scalars as one line; None when it is neither."""
    if not isinstance(part, dict) or not part:
        return None
    if all(isinstance(v, dict) for v in part.values()):
        cols = list(dict.fromkeys(k for v in part.values() for k, x in v.items() if _cell_text(x) is not None))
        if not cols:
            return None
        rows = [{"label": str(r), "cells": {c: _cell_text(v[c]) if c in v else None for c in cols}}
                for r, v in part.items()]
        return {"columns": [(c, _label(labels, c)) for c in cols], "rows": rows, "line": None}
    items = [(k, _scalar_text(v)) for k, v in part.items()]
    if all(t is not None for _, t in items):
        return {"columns": [], "rows": [], "line": "; ".join(f"{_label(labels, k)}: {t}" for k, t in items)}
    return None


def _occlusion(d: dict, root: Path, path: str, labels: dict, notes: list, seen: set) -> dict | None:
    occ = d.get("occlusion")
    if not isinstance(occ, dict):
        return None
    classes = {str(k): v for k, v in _d(occ, "classes").items() if isinstance(v, dict)}
    facts = [(_label(labels, k), _scalar_text(v)) for k, v in occ.items()
             if k not in ("classes", "figures") and isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    info = [{"cls": c, **{k: _f(v.get(k)) for k in ("n", "mean_p_true", "called_right")},
             "others": ", ".join(f"{_label(labels, k)} {_scalar_text(x)}" for k, x in v.items()
                                 if k not in ("n", "mean_p_true", "called_right") and isinstance(x, (int, float))
                                 and not isinstance(x, bool))} for c, v in classes.items()]
    # occluded windows: one row per window (the first class's window edges), a column per class
    wins = []
    first = next((v.get("windows") for v in classes.values() if isinstance(v.get("windows"), list)), None) or []
    for i, w in enumerate(first):
        w = w if isinstance(w, dict) else {}
        lo, hi = _f(w.get("start_ms")), _f(w.get("stop_ms"))
        label = f"{lo:+.0f} to {hi:+.0f} ms" if lo is not None and hi is not None else f"window {i + 1}"
        drops = {}
        for c, v in classes.items():
            ws = v.get("windows") if isinstance(v.get("windows"), list) else []
            drops[c] = _f(ws[i].get("drop")) if i < len(ws) and isinstance(ws[i], dict) else None
        wins.append({"label": label, "drops": drops})
    # single-feature occlusions: every dict of numbers under a class (e.g. one per feature group)
    groups = list(dict.fromkeys(k for v in classes.values() for k, x in v.items()
                                if isinstance(x, dict) and x and all(_f(y) is not None for y in x.values())))
    features = []
    for g in groups:
        names = list(dict.fromkeys(n for v in classes.values() for n in _d(v, g)))
        features.append({"key": g, "label": _label(labels, g),
                         "rows": [{"name": n, "drops": {c: _f(_d(v, g).get(n)) for c, v in classes.items()}}
                                  for n in names]})
    return {"facts": [(k, t) for k, t in facts if t is not None], "classes": list(classes), "info": info,
            "windows": wins, "features": features,
            "figures": _listed_figures(occ, root, path, notes, seen)}


def analysis(d, path: str, root: Path, section: Section) -> tuple[dict | None, str | None]:
    """(view, None) of a model-analysis stage's file, or (None, why nothing can be shown)."""
    if not isinstance(d, dict) or not d:
        return None, f"{path} holds no analyses (an empty or non-object file)."
    labels = {str(k): str(v) for k, v in section.labels}
    notes: list[str] = []
    seen: set = set()
    methods = _methods(d, labels)
    view = {"readings": _readings(d, labels), "notes": notes,
            "capacity": _capacity(d, root, path, section.unit, section.run_metrics), "dead_units": _dead_units(d), "topk": _topk(d),
            "robustness": _robustness(d, labels), "occlusion": _occlusion(d, root, path, labels, notes, seen)}
    present = {k for k, v in view.items() if v}
    # any other part holding a table of numbers
    others = []
    for key, part in d.items():
        if key in KNOWN_PARTS or (key == "capacity" and view["capacity"]):
            continue
        table = _table(part, labels)
        if table:
            others.append({"key": str(key), "label": _label(labels, key), "table": table,
                           "figures": _listed_figures(part, root, path, notes, seen) if isinstance(part, dict) else []})
            present.add(str(key))
    view["others"] = others
    globbed = _globbed_figures(section, root, seen, notes)
    for part in ("capacity", "dead_units", "topk", "robustness", "occlusion"):
        if view[part]:
            view[part]["methods"] = _take_methods(methods, part)
            view[part].setdefault("figures", [])
            view[part]["figures"] = view[part]["figures"] + globbed.pop(part, [])
    for o in others:
        o["methods"] = _take_methods(methods, o["key"])
        o["figures"] = o["figures"] + globbed.pop(o["key"], [])
    view["gallery"] = [f for figs in globbed.values() for f in figs]
    view["methods"] = list(methods.values())
    if view["readings"]:
        present.add("readings")
    if view["methods"] or any(v.get("methods") for v in [view[p] for p in ("capacity", "dead_units", "topk",
                                                                         "robustness", "occlusion") if view[p]] + others):
        present.add("method")
    for part in section.parts:
        if part not in present:
            notes.append(_missing(path, part, _label(labels, part)))
    total = _f(_d(d, "timings_s").get("total_s"))
    view["minutes"] = None if total is None else total / 60
    if not present:
        return None, f"{path} holds none of the analyses this report knows (keys: {', '.join(map(str, d))})."
    return view, None


# ---- loading ------------------------------------------------------------------------------------

def load(root: Path, sections) -> list[dict]:
    """{"section", "rows", "classes", "detection", "view", "reason"} for each declared section:
    "rows"/"classes"/"detection" for kind "table", "view" for kinds "compression" and "analysis"; "reason" when
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
        if s.kind in ("compression", "analysis"):
            try:
                entry["view"], entry["reason"] = (compression(data, s.path) if s.kind == "compression"
                                                  else analysis(data, s.path, root, s))
            except (TypeError, AttributeError, KeyError, ValueError) as exc:   # a shape this reader does not know
                entry["reason"] = (f"{s.path} could not be read as {'an' if s.kind[0] in 'aeiou' else 'a'} {s.kind} "
                                   f"result ({type(exc).__name__}: {exc})")
            continue
        rows = _rows(data)
        entry.update(rows=rows, classes=list(dict.fromkeys(c for r in rows for c in r["f1"])),
                     detection=any(r["det_se"] is not None for r in rows),
                     reason=None if rows else f"{s.path} holds no results yet (e.g. nothing configured).")
    return out
