"""The index page's deployment section (Section kind "compression") from a small hand-written
deploy.json, rendered by the real report stage: variant table grouped by family, goal sentence,
distillation / pruning / roofline / quantization tables, and older or broken files as sentences."""
from __future__ import annotations

import copy
import re

import pytest

from pipeline.io import write_json
from pipeline.report.sections import Section
from pipeline.report.stage import ReportParams, build
from tests.test_report import PageParser, as_value

CFG = ReportParams(max_errors=2, arms=("ecg",))
DEPLOY = "metrics/ecg/deploy.json"


def _variant(family, f1, diff, lo, hi, bytes_, lat1, params=1000, nonzero=None, **extra):
    cls = {c: {"f1": f1 + d, "se": f1, "ppv": f1} for c, d in zip("NSVF", (0.3, -0.1, 0.1, -0.4))}
    return {"family": family, "description": f"a {family} model", "file": f"/tmp/x/{family}.keras",
            "macro_f1": f1, "ci95": {"macro_f1": {"lo": f1 - 0.05, "hi": f1 + 0.04}}, "per_class": cls,
            "class_ci95": {}, "diff_vs_teacher": diff, "diff_ci95": {"lo": lo, "hi": hi},
            "ece_before": 0.11, "ece_after": 0.03, "temperature": 1.3, "val_macro_f1": f1 + 0.05,
            "params": params, "nonzero_params": params if nonzero is None else nonzero, "bytes": bytes_,
            "gzip_bytes": bytes_ // 3, "latency_ms_b1": lat1, "latency_ms_b1024": lat1 / 20, **extra}


def _layer(name, kind, flops, bytes_, bound):
    return {"name": name, "type": kind, "params": 10, "nonzero_params": 10, "macs": flops // 2, "flops": flops,
            "bytes": bytes_, "intensity": flops / bytes_, "attainable_gflops": 50.0, "bound": bound,
            "roofline_s_per_item": flops / 50e9}


def deploy() -> dict:
    total = {**_layer("TOTAL", "total", 12_000, 3_000, "compute"), "ridge_intensity": 3.84}
    return {
        "teacher": {"run": "net-focal", "params": 4000, "val_fold": 0},
        # written out of family order on purpose: the table groups them
        "variants": {
            "teacher_int8": _variant("int8", 0.61, 0.001, -0.002, 0.005, 30_000, 0.15, params=4000),
            "teacher": _variant("reference", 0.62, 0.0, 0.0, 0.0, 900_000, 3.5, params=4000),
            "member": _variant("member", 0.60, -0.02, -0.05, 0.01, 150_000, 3.0),
            "student_w4_kd": _variant("distilled", 0.58, -0.04, -0.09, -0.01, 40_000, 1.0, params=300),
            "student_w4_hard": _variant("hard", 0.55, -0.07, -0.12, -0.02, 40_000, 1.0, params=300),
            "member_s0.5": _variant("pruned", 0.59, -0.03, -0.07, 0.02, 150_000, 2.4, nonzero=520,
                                    sparsity=0.5, naive_speedup=2.0, measured_speedup_b1=1.25),
            "combined": _variant("combined", 0.57, -0.05, -0.1, -0.01, 39_000, 0.9, params=300, nonzero=160,
                                 sparsity=0.5),
        },
        "selection": {"grid": [{"width": 4, "T": 2.0, "alpha": 0.5, "val_macro_f1": 0.61},
                               {"width": 4, "T": 4.0, "alpha": 0.9, "val_macro_f1": 0.66}],
                      "chosen": {"T": 4.0, "alpha": 0.9}, "teacher_val_macro_f1": 0.7, "combined_width": 4,
                      "rule": "best validation macro-F1"},
        "structured_keep": {},
        "roofline": {"machine": {"peak_gflops": 190.0, "peak_gflops_1thread": 98.0, "bandwidth_gbs": 25.6,
                                 "method": "numpy matmul 1024x1024", "cpu": "x86_64"},
                     "roof": {"peak_gflops": 98.0, "bandwidth_gbs": 25.6},
                     "layers": {"member_b1": [_layer("conv_a", "Conv1D", 10_000, 1_000, "compute"),
                                              _layer("dense_b", "Dense", 2_000, 2_000, "memory"), total],
                                "member_b1024": [_layer("conv_a", "Conv1D", 10_000, 500, "compute"), total]}},
        "explanation": {"roofline": "ROOFLINE-TEXT the member is compute-bound.",
                        "sparsity": "SPARSITY-TEXT zeros are still multiplied."},
        "sparse_speedup": {"layer": "conv_a", "rows_per_item": 100, "timings": [
            {"sparsity": 0.5, "batch": 1, "rows": 100, "nnz": 50, "dense_s": 4e-6, "sparse_s": 1.6e-5,
             "speedup": 0.25, "naive_speedup": 2.0},
            {"sparsity": 0.5, "batch": 1024, "rows": 102400, "nnz": 50, "dense_s": 1e-3, "sparse_s": 2e-3,
             "speedup": 0.5, "naive_speedup": 2.0}]},
        "quantization_noise": {"member": {"predicted_val": {"weights": True, "activations": True, "draws": 2,
                                                            "flip_rate": 0.011, "mean_abs_dp": 0.007,
                                                            "macro_f1_change": -0.0125,
                                                            "macro_f1_change_sd": 0.001, "n_beats": 1000},
                                          "measured_val": -0.008, "measured_ds2": -0.003}},
        "goal": {"max_bytes": 50_000, "max_f1_drop": 0.02, "max_latency_ms": 0.2, "met_by": ["teacher_int8"]},
        "pareto": ["combined", "teacher_int8", "teacher"],
        "timings_s": {"total_s": 600.0},
    }


def _render(root, data) -> tuple[PageParser, str]:
    if data is not None:
        write_json(root / DEPLOY, data)
    build(root, root / "out", CFG)
    html = (root / "out/index.html").read_text()
    section = html[html.index('<section id="section-deployment">'):]
    return PageParser.parse(section[:section.index("</section>")]), html


def test_variant_table_goal_and_roofline(tmp_path):
    d = deploy()
    page, html = _render(tmp_path, d)
    cells = [c for c in page.cells if c["table"] == "table-deployment"]
    # one row per variant, grouped by family in the fixed order, whatever the file's order
    rows = list(dict.fromkeys(c["row"]["data-variant"] for c in cells))
    assert rows == ["teacher", "member", "student_w4_kd", "student_w4_hard", "member_s0.5", "teacher_int8", "combined"]
    for c in cells:
        v = d["variants"][c["row"]["data-variant"]]
        if c["metric"] == "macro_f1":
            assert as_value(c["value"]) == v["macro_f1"]
        if c["metric"] == "bytes":
            assert as_value(c["value"]) == v["bytes"]
    assert re.findall(r'<tbody data-family="([^"]+)"', html) == ["reference", "member", "distilled", "hard",
                                                                 "pruned", "int8", "combined"]
    text = page.text
    # summary: the reference with its CI, size and latency; the goal and who meets it
    assert "DS2 macro-F1 of 62.0% (95% CI 57.0–66.0%)" in text and "900,000 bytes on disk" in text
    assert "3.5 ms per beat at batch 1" in text
    goal = page.ids["deployment-goal"] and text[text.index("Goal:"):]
    assert goal.startswith("Goal: at most 50,000 bytes on disk, a DS2 macro-F1 at most 2.0 percentage points below")
    assert "at most 0.2 ms per beat at batch 1. Met by teacher_int8 (30,000 bytes" in goal
    # the smallest file whose interval overlaps the reference's [57%, 66%]: teacher_int8 [56%, 65%], 30,000 bytes
    overlap = text[text.index("The smallest model whose"):]
    assert overlap.startswith("The smallest model whose DS2 macro-F1 interval overlaps the reference's: teacher_int8 "
                              "(30,000 bytes")
    # a difference whose CI excludes 0 is marked, one whose CI covers 0 is not; pruned shows nonzero params
    row = lambda name: html[html.index(f'data-variant="{name}"'):].split("</tr>")[0]  # noqa: E731
    assert "-4.0 pp&nbsp;*" in row("student_w4_kd") and "-9.0 to -1.0 pp" in row("student_w4_kd")
    assert "*" not in row("member") and "-2.0 pp" in row("member")
    assert "nonzero of 1,000" in row("member_s0.5") and ">520<" in row("member_s0.5")
    assert "batch 1024" in text and ">0.175<" in row("teacher")          # 3.5 ms / 20 at batch 1024
    # distillation: grid with the chosen pair, distilled vs labels-alone of the same size
    assert "T = 4.0, alpha = 0.9" in text
    grid = html[html.index('id="deployment-grid"'):].split("</table>")[0]
    assert grid.count('class="chosen"') == 1 and "66.0%" in grid
    pair = html[html.index('data-pair="student_w4_kd"'):].split("</tr>")[0]
    assert "student_w4_hard" in pair and "58.0%" in pair and "55.0%" in pair
    # pruning: naive vs measured speedups, CSR timings and the explanation
    pruning = html[html.index('id="deployment-pruning"'):].split("</table>")[0]
    assert "2.00×" in pruning and "1.25×" in pruning
    sparse = html[html.index('id="deployment-sparse"'):].split("</table>")[0]
    assert "16" in sparse and "0.25×" in sparse and "2,000" in sparse     # 1.6e-5 s = 16 µs; 2e-3 s = 2,000 µs
    assert "SPARSITY-TEXT" in text
    # roofline: machine peaks, the per-layer table of member_b1 with its TOTAL row and the ridge
    assert "98.0 GFLOP/s on one thread" in text and "190.0 GFLOP/s on all threads" in text and "25.6 GB/s" in text
    assert "Ridge point: 3.84 FLOP/byte" in text and "ROOFLINE-TEXT" in text
    roof = html[html.index('id="deployment-roofline"'):].split("</table>")[0]
    assert re.findall(r'data-layer="([^"]+)"', roof) == ["conv_a", "dense_b", "TOTAL"]
    assert "12,000" in roof and "memory" in roof
    # quantization: predicted vs measured
    q = html[html.index('id="deployment-quantization"'):].split("</table>")[0]
    assert "-1.2 pp" in q or "-1.3 pp" in q
    assert "-0.8 pp" in q and "-0.3 pp" in q
    assert "/tmp/x" not in html and str(tmp_path) not in html


def test_no_variant_meets_goal_names_the_trade_off_front(tmp_path):
    d = deploy()
    d["goal"]["met_by"] = []
    page, _ = _render(tmp_path, d)
    text = page.text
    assert "No variant meets it." in text
    front = text[text.index("The best size/accuracy trade-offs"):]
    assert front.index("combined (39,000 bytes") < front.index("teacher_int8 (30,000") < front.index("teacher (900,000")


def test_older_file_without_roofline_and_other_parts_still_renders(tmp_path):
    d = deploy()
    for key in ("roofline", "selection", "quantization_noise", "sparse_speedup", "goal", "pareto", "explanation"):
        del d[key]
    for v in d["variants"].values():
        del v["latency_ms_b1024"], v["ece_after"]
    page, html = _render(tmp_path, d)
    assert "deployment-no-roofline" in page.ids and 'id="deployment-roofline"' not in html
    assert 'metrics/ecg/deploy.json has no "roofline"' in page.text
    assert 'has no "goal"' in page.text and "Goal:" not in page.text
    assert "DS2 macro-F1 of 62.0%" in page.text                 # the summary's reference part still there
    cells = [c for c in page.cells if c["table"] == "table-deployment"]
    assert len({c["row"]["data-variant"] for c in cells}) == 7


@pytest.mark.parametrize("data, reason", [
    (None, "metrics/ecg/deploy.json does not exist"),
    ({"variants": {}}, 'holds no "variants"'),
    ({"variants": {"teacher": {"family": "reference", "macro_f1": "high", "params": None,
                               "per_class": [1, 2], "diff_ci95": {"lo": None}}},
      "roofline": {"layers": {"member_b1": "nothing"}}, "pareto": "teacher"}, None),
])
def test_missing_empty_or_odd_file_is_a_sentence(tmp_path, data, reason):
    page, html = _render(tmp_path, copy.deepcopy(data))
    if reason is None:   # odd values read as n/a, never a crash
        assert 'data-variant="teacher"' in html and "n/a" in page.text
    else:
        assert "absent-deployment" in page.ids and reason in page.text


def test_unknown_section_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown kind 'pie'"):
        Section("k", "t", "p.json", "i", "a", kind="pie")
