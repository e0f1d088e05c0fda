"""The index page's model-analysis sections (Section kind "analysis") from small hand-written
analysis.json files, rendered by the real report stage: readings first, capacity / dead-unit / top-k /
robustness / occlusion tables, embedded figures and method texts; older files and broken ones become
sentences, never a crash."""
from __future__ import annotations

import base64
import copy
import struct
import zlib

import pytest

from pipeline.io import write_json
from pipeline.report.sections import Section
from pipeline.report.stage import ReportParams, build
from tests.test_report import PageParser, as_value

ECG = "metrics/ecg/analysis.json"
VISION = "metrics/analysis/vision.json"


def _png(tag: int) -> bytes:
    """A valid 1x1 grey PNG whose pixel value is `tag` (so two figures differ)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes([0, tag]))) + chunk(b"IEND", b""))


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _dead(fc1_fractions):
    layers = {}
    for m, f in enumerate(fc1_fractions):
        layers[f"fold{m}_net/conv_relu"] = {"units": 8, "dead": 0, "fraction": 0.0}
        layers[f"fold{m}_net/fc1"] = {"units": 10, "dead": int(10 * f), "fraction": f}
    mean = sum(fc1_fractions) / len(fc1_fractions)
    return {"beats": 5000, "layers": layers,
            "per_member": {f"fold{m}_net": {"units": 18, "dead": int(10 * f), "fraction": 10 * f / 18}
                           for m, f in enumerate(fc1_fractions)},
            "per_layer": {"conv_relu": {"mean_fraction": 0.0, "max_fraction": 0.0, "members": 2},
                          "fc1": {"mean_fraction": mean, "max_fraction": max(fc1_fractions), "members": 2}},
            "mean_fraction": 10 * mean / 18}


def _topk(t1, t2, t3):
    return {"n": 900, "records": 7, **{f"top{k}": {"value": v, "ci95": {"lo": v - 0.05, "hi": min(v + 0.01, 1.0)}}
                                       for k, v in ((1, t1), (2, t2), (3, t3))}}


def _capacity(params, flops, rf_ms, bound):
    return {"members": 2, "params_member": params, "params_ensemble": 2 * params, "flops_per_beat_member": flops,
            "flops_per_beat_ensemble": 2 * flops, "receptive_field_samples": 16, "receptive_field_ms": rf_ms,
            "relu_units_member": 400, "linear_regions_log10_bound": bound}


def _windows(peak):
    return [{"start_ms": -100.0 + 50 * i, "stop_ms": -50.0 + 50 * i, "centre_ms": -75.0 + 50 * i,
             "drop": peak if i == 2 else 0.001 * i} for i in range(4)]


def ecg_analysis(fig_paths) -> dict:
    return {
        "runs": {"neta-ce": {"dead_units": _dead([0.2, 0.4]), "capacity": _capacity(12345, 2_500_000, 44.4, 1322.6),
                             "topk": _topk(0.91, 0.97, 0.99)},
                 "netb-focal": {"dead_units": _dead([0.1, 0.1]), "capacity": _capacity(999, 1_230_000, 719.4, 3494.2),
                                "topk": _topk(0.88, 0.95, 0.985)}},
        "params": {"windows": 4},
        "occlusion": {"run": "netb-focal", "fill": "record_median", "windows": 4, "figures": fig_paths,
                      "oof_check_max_abs_diff": 0.0,
                      "classes": {"N": {"n": 50, "records": 3, "mean_p_true": 0.8, "called_right": 0.9,
                                        "windows": _windows(0.002),
                                        "rr": {"pre_rr_local": -0.004, "post_rr_local": 0.0005}},
                                  "S": {"n": 40, "records": 2, "mean_p_true": 0.5, "called_right": 0.55,
                                        "windows": _windows(0.03),
                                        "rr": {"pre_rr_local": 0.2468, "post_rr_local": 0.0021}}}},
        "method": {"dead_units": "DEAD-METHOD never > 0 on any probed beat",
                   "flops": "FLOPS-METHOD two per multiply-add",
                   "topk": "TOPK-METHOD record bootstrap",
                   "occlusion": "OCCLUSION-METHOD window set to the record median",
                   "extra_note": "EXTRA-METHOD a method with no table of its own"},
        "readings": ["READING-ONE neta-ce has many dead units.", "READING-TWO S calls depend on pre_rr_local."],
        "timings_s": {"total_s": 90.0},
    }


def _section(html: str, key: str) -> tuple[PageParser, str]:
    part = html[html.index(f'<section id="section-{key}">'):]
    part = part[:part.index("</section>")]
    return PageParser.parse(part), part


def _cells(page, table, metric=None):
    return {(c["row"].get("data-run") or c["row"].get("data-feature"), c["metric"]): c["value"]
            for c in page.cells if c["table"] == table and (metric is None or c["metric"] == metric)}


def _build(root, arms=("ecg",)):
    build(root, root / "out", ReportParams(max_errors=2, arms=arms))
    return (root / "out/index.html").read_text()


def _ecg_root(tmp_path):
    rel = "artifacts/ecg/analysis/occlusion_N.png"
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes(_png(10))
    absolute = tmp_path / "elsewhere" / "occlusion_S.png"
    absolute.parent.mkdir()
    absolute.write_bytes(_png(200))
    write_json(tmp_path / "metrics/ecg/neta-ce.json",
               {"macro_f1": 0.61, "ci95": {"macro_f1": {"lo": 0.55, "hi": 0.66}}, "per_class": {}})
    return [rel, str(absolute)]


def test_ecg_analysis_tables_figures_and_readings(tmp_path):
    figs = _ecg_root(tmp_path)
    d = ecg_analysis(figs)
    write_json(tmp_path / ECG, d)
    page, part = _section(_build(tmp_path), "analysis")
    text = page.text
    assert "Not shown" not in text and 'class="note"' not in part
    # readings first, in the file's order, before any table
    assert text.index("READING-ONE") < text.index("READING-TWO") < text.index("Capacity")
    assert part.index('id="analysis-readings"') < part.index("<table")

    # capacity: per-member params and FLOPs, receptive field, region bound, DS2 macro-F1 from the run's metrics
    cap = "table-analysis-capacity"
    assert page.rows[cap] == ["neta-ce", "netb-focal"]
    cells = _cells(page, cap)
    assert as_value(cells["neta-ce", "params"]) == 12345 and as_value(cells["netb-focal", "params"]) == 999
    assert as_value(cells["neta-ce", "macro_f1"]) == 0.61 and cells["netb-focal", "macro_f1"] == "null"
    assert "MFLOP per beat" in text and "DS2 macro-F1" in text and "61.0% 55.0–66.0%" in text
    assert "24,690" in text   # params of all members
    assert "10<sup>1,323</sup>" in part and "10<sup>3,494</sup>" in part and "719.4" in text

    # dead units: run x layer, the mean over members (and the worst member), the overall share
    dead = _cells(page, "table-analysis-dead")
    assert as_value(dead["neta-ce", "dead:fc1"]) == pytest.approx(0.3)
    assert as_value(dead["netb-focal", "dead:fc1"]) == pytest.approx(0.1)
    assert as_value(dead["neta-ce", "dead:conv_relu"]) == 0.0
    assert as_value(dead["neta-ce", "dead_all"]) == pytest.approx(d["runs"]["neta-ce"]["dead_units"]["mean_fraction"])
    assert "max 40.0%" in text and "on 5,000 beats" in text

    # top-k with CIs and what was scored
    top = _cells(page, "table-analysis-topk")
    assert [as_value(top["neta-ce", f"top{k}"]) for k in (1, 2, 3)] == [0.91, 0.97, 0.99]
    assert as_value(top["netb-focal", "top3"]) == 0.985
    assert "Top-3 (95% CI)" in text and "86.0–92.0%" in text and "900 items, 7 records" in text

    # occlusion: both listed figures embedded as data URIs (relative to the root, and absolute), in order
    assert page.images == [_uri(_png(10)), _uri(_png(200))]
    assert "model: netb-focal" in text and "record_median" in text
    rr = _cells(page, "table-analysis-occlusion-rr")
    assert as_value(rr["pre_rr_local", "S"]) == pytest.approx(0.2468)
    assert as_value(rr["post_rr_local", "N"]) == pytest.approx(0.0005)
    assert "<strong>+0.247</strong>" in part          # a drop of at least 0.01 stands out
    assert "RR-interval features" in text             # the arm's words for the file's key "rr"
    assert "+0 to +50 ms" in text and "+0.030" in text   # the window table

    # each method text beside its part, the rest at the end
    for m in ("DEAD-METHOD", "FLOPS-METHOD", "TOPK-METHOD", "OCCLUSION-METHOD", "EXTRA-METHOD"):
        assert m in text
    assert text.index("FLOPS-METHOD") < text.index("Dead ReLU units") < text.index("DEAD-METHOD") \
        < text.index("Top-k accuracy") < text.index("TOPK-METHOD") < text.index("OCCLUSION-METHOD") \
        < text.index("EXTRA-METHOD")
    assert "took 1.5 minutes" in text


def test_older_ecg_file_without_some_parts_still_renders(tmp_path):
    figs = _ecg_root(tmp_path)
    d = ecg_analysis(figs)
    for key in ("occlusion", "method", "readings", "timings_s"):
        del d[key]
    del d["runs"]["netb-focal"]["topk"]
    old = d["runs"]["neta-ce"]["dead_units"]
    del old["per_layer"], old["mean_fraction"]   # only member/layer counts: the mean per layer is computed
    d["runs"]["netb-focal"]["capacity"] = {"params_member": 999}
    write_json(tmp_path / ECG, d)
    page, part = _section(_build(tmp_path), "analysis")
    text = page.text
    for key in ("readings", "occlusion", "method"):
        assert f'{ECG} has no "{key}"' in text
    assert page.images == []
    assert page.rows["table-analysis-topk"] == ["neta-ce"]
    dead = _cells(page, "table-analysis-dead")
    assert as_value(dead["neta-ce", "dead:fc1"]) == pytest.approx(0.3) and dead["neta-ce", "dead_all"] == "null"
    cap = _cells(page, "table-analysis-capacity")
    assert as_value(cap["netb-focal", "params"]) == 999
    assert "n/a" in part   # netb-focal's missing FLOPs, receptive field, bound


def test_missing_figure_and_unusable_files_are_sentences(tmp_path):
    d = ecg_analysis(["artifacts/ecg/analysis/occlusion_V.png"])
    write_json(tmp_path / ECG, d)
    page, _ = _section(_build(tmp_path), "analysis")
    assert "names the figure" in page.text and "occlusion_V.png" in page.text and "does not exist" in page.text
    assert page.ids["table-analysis-occlusion-rr"]   # the rest of the part is still shown

    write_json(tmp_path / ECG, ["not", "an", "object"])
    page, _ = _section(_build(tmp_path), "analysis")
    assert "Not shown" in page.text and "no analyses" in page.text

    write_json(tmp_path / ECG, {"something_else": [1, 2, 3]})
    page, _ = _section(_build(tmp_path), "analysis")
    assert "holds none of the analyses" in page.text and "something_else" in page.text

    (tmp_path / ECG).unlink()
    page, _ = _section(_build(tmp_path), "analysis")
    assert "analysis.json does not exist" in page.text and "analyse_ecg" in page.text


def _score(acc, auc, drop=None, auc_drop=None, **extra):
    out = {"accuracy": {"value": acc, "ci": {"lo": acc - 0.1, "hi": acc + 0.05}},
           "auc": {"value": auc, "ci": {"lo": auc - 0.08, "hi": auc + 0.04}}, **extra}
    if drop is not None:
        out["accuracy_drop"] = {"value": drop, "ci": {"lo": drop - 0.02, "hi": drop + 0.02}}
        out["auc_drop"] = auc_drop
    return out


def vision_analysis() -> dict:
    def rob(base):
        return {"clean": _score(base, 0.8),
                "noise": {f"s{s}": _score(base - 0.05 * s, 0.8 - 0.02 * s, 0.05 * s, 0.02 * s, sigma=10.0 * s)
                          for s in (1, 2)},
                "blur": {f"s{s}": _score(base - 0.01 * s, 0.8 - 0.01 * s, 0.01 * s, 0.01 * s, sigma=0.5 * s)
                         for s in (1, 2)}}
    runs = ("setx-alex-frozen-ce", "setx-vgg-finetune-ce")
    return {"corruptions": {"noise": {"sigma": [10.0, 20.0], "unit": "intensity, 0..255 scale"},
                            "blur": {"sigma": [0.5, 1.0], "unit": "pixels"}},
            "n_test_images": {"setx": 40},
            "robustness_summary": {"alex-frozen": {"n_runs": 1, "noise_accuracy_drop": 0.075, "noise_auc_drop": 0.03,
                                                   "blur_accuracy_drop": 0.015, "blur_auc_drop": 0.015}},
            "robustness": {runs[0]: rob(0.7), runs[1]: rob(0.6)},
            "topk": {runs[0]: {"top1": {"value": 0.51, "ci95": {"lo": 0.46, "hi": 0.56}},
                               "top2": {"value": 0.72, "ci95": {"lo": 0.66, "hi": 0.74}}}},
            "gradcam": {r: {"layer": "block5_relu", "map_side": [16, 16], "n_images": 12,
                            "centre_fraction_correct": 0.45, "centre_fraction_wrong": 0.43} for r in runs},
            "capacity": {runs[0]: {"params": 3786149, "flops_per_image": 2850425344, "relu_units": 1632,
                                   "dead_fraction": 0.08, "dead_fraction_by_layer": {"block1_relu": 0.0, "head": 0.5}},
                         runs[1]: {"params": 14847301, "flops_per_image": 626656256, "relu_units": 4480,
                                   "dead_fraction": 0.12, "dead_fraction_by_layer": {"block1_conv1": 0.0,
                                                                                    "head": 0.7}}},
            "readings": {"noise_vs_blur": "NOISE-VS-BLUR noise hurts more than blur.",
                         "topk": "TOPK-READING the second guess adds 0.2."}}


def test_vision_analysis_robustness_topk_gradcam(tmp_path):
    d = vision_analysis()
    write_json(tmp_path / VISION, d)
    for name, tag in (("robustness.png", 1), ("gradcam/setx-alex-frozen-ce.png", 2),
                      ("gradcam/setx-vgg-finetune-ce.png", 3)):
        (tmp_path / "artifacts/analysis/vision" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "artifacts/analysis/vision" / name).write_bytes(_png(tag))
    write_json(tmp_path / "metrics/vision/setx-vgg-finetune-ce.json",
               {"macro_f1": 0.4, "ci95": {"macro_f1": {"lo": 0.3, "hi": 0.5}}})
    page, part = _section(_build(tmp_path, ("vision",)), "vision-analysis")
    text = page.text
    # titled readings first
    assert text.index("Noise vs blur: NOISE-VS-BLUR") < text.index("Top-k accuracy: TOPK-READING") < text.index("Capacity")
    # robustness per kind: clean and each severity with its CI; the summary table
    noise = _cells(page, "table-vision-analysis-robustness-noise")
    assert as_value(noise["setx-alex-frozen-ce", "noise:s2"]) == pytest.approx(0.6)
    assert as_value(noise["setx-vgg-finetune-ce", "noise:s1"]) == pytest.approx(0.55)
    blur = _cells(page, "table-vision-analysis-robustness-blur")
    assert as_value(blur["setx-alex-frozen-ce", "blur:s1"]) == pytest.approx(0.69)
    assert "Gaussian noise" in text and "intensity, 0..255 scale" in text and "sigma 20" in text
    assert "0.500 to 0.650" in text   # accuracy 0.6 at noise s2 with its CI
    summary = part[part.index('id="table-vision-analysis-robustness-summary"'):].split("</table>")[0]
    assert 'data-run="alex-frozen"' in summary and '<td data-metric="noise_accuracy_drop">0.075</td>' in summary
    assert "noise: AUC drop" in text
    # top-k of the multi-class run only
    assert page.rows["table-vision-analysis-topk"] == ["setx-alex-frozen-ce"]
    assert "51.0%" in text and "46.0–56.0%" in text
    # capacity per image (MFLOP), macro-F1 from the run's metrics; dead shares grouped by layer set
    cap = _cells(page, "table-vision-analysis-capacity")
    assert as_value(cap["setx-alex-frozen-ce", "params"]) == 3786149
    assert as_value(cap["setx-vgg-finetune-ce", "macro_f1"]) == 0.4
    assert "MFLOP per image" in text and "2,850" in text
    assert as_value(_cells(page, "table-vision-analysis-dead")["setx-alex-frozen-ce", "dead:head"]) == 0.5
    assert as_value(_cells(page, "table-vision-analysis-dead-2")["setx-vgg-finetune-ce", "dead:head"]) == 0.7
    # Grad-CAM numbers as a table, its figures and the robustness figure embedded
    assert page.rows["table-vision-analysis-gradcam"] == ["setx-alex-frozen-ce", "setx-vgg-finetune-ce"]
    assert "Grad-CAM" in text and "block5_relu" in text and "16, 16" in text
    assert sorted(page.images) == sorted(_uri(_png(t)) for t in (1, 2, 3))
    assert part.index(_uri(_png(1))) < part.index("table-vision-analysis-gradcam") < part.index(_uri(_png(2)))
    assert "test images per dataset: setx 40" in text.lower() or "Test images per dataset" in text
    assert 'class="note"' not in part


def test_vision_older_file_without_robustness(tmp_path):
    d = vision_analysis()
    for key in ("robustness", "robustness_summary", "gradcam"):
        del d[key]
    write_json(tmp_path / VISION, d)
    page, _ = _section(_build(tmp_path, ("vision",)), "vision-analysis")
    assert f'{VISION} has no "robustness"' in page.text and f'{VISION} has no "gradcam"' in page.text
    assert page.rows["table-vision-analysis-topk"] == ["setx-alex-frozen-ce"]
    assert page.images == []


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        Section("x", "X", "metrics/x.json", "", "", kind="analyses")
    assert copy.copy(Section("x", "X", "metrics/x.json", "", "", kind="analysis")).kind == "analysis"


@pytest.mark.parametrize("arm, path, edit", [
    ("ecg", ECG, lambda d: d["occlusion"].update(figures=7, classes=["N", "S"])),
    ("ecg", ECG, lambda d: d["runs"].update({"neta-ce": None, "netb-focal": {"topk": {"top1": "bad"}, "dead_units": 3}})),
    ("ecg", ECG, lambda d: d.update(readings={"a": 1, "b": None}, method=["x"], timings_s="soon")),
    ("vision", VISION, lambda d: d["robustness"].update({"setx-alex-frozen-ce": {"clean": None, "noise": {"s1": 4}}})),
    ("vision", VISION, lambda d: d.update(robustness_summary=[1, 2], gradcam={"r": {"layer": None}}, capacity="n/a")),
])
def test_odd_shapes_render_without_crashing(tmp_path, arm, path, edit):
    d = ecg_analysis(["a.png"]) if arm == "ecg" else vision_analysis()
    edit(d)
    write_json(tmp_path / path, d)
    html = _build(tmp_path, (arm,))
    page, _ = _section(html, "analysis" if arm == "ecg" else "vision-analysis")
    assert "could not be read" not in page.text and "Not shown" not in page.text
    assert page.ids   # something of the file is still shown


def test_generic_table_shows_values_with_their_ci():
    from pipeline.report.sections import _table
    t = _table({"eps0": {"temperature": 1.2, "ece": {"value": 0.1, "ci95": {"lo": 0.05, "hi": 0.2}}},
                "eps1": {"ece": {"value": None, "ci95": None}}}, {})
    assert [c for c, _ in t["columns"]] == ["temperature", "ece"]
    assert t["rows"][0]["cells"]["ece"] == "0.1 (0.05 to 0.2)"
    assert t["rows"][1]["cells"] == {"temperature": None, "ece": "n/a"}
