"""Stage analyse_ecg: what the trained ECG networks learned, counted without retraining.

    python -m ecg.analyse [--params params.yaml] [--data data/ecg] [--package models/ecg]

For every run in `analyse_ecg.runs` (artifacts/ecg/<run>/):
  dead_units   ReLU units (channels of a conv map, neurons of a dense layer) that are never > 0 on any
               DS1 beat (all of them, or `dead_beats` drawn with `seed`), per fold member and the mean
  capacity     parameters and FLOPs per beat (pipeline.deploy.layer_costs, BatchNorm folded), receptive
               field, and log10 of the Montufar (2017) / Serra et al. (2018) product bound on the number
               of linear regions of one fold member, widths taken per ReLU depth (pipeline.analysis)
  topk         top-1/2/3 accuracy on DS2 from eval.npz (5-class probabilities) with record-bootstrap 95%
               CIs (evaluate.bootstrap, evaluate.seed): a descriptive number, nothing is chosen on it
For the packaged run (models/ecg/package.json provenance.run, or `saliency_run`):
  occlusion    on DS1 beats of each class in `saliency_classes` (at most `saliency_beats` each), the mean
               drop in the probability of the beat's true class when one of `windows` equal time windows
               of every input channel is replaced by the record's median beat there (`fill`), or one RR
               feature by 1.0 (every RR feature is a ratio to a local or record mean: 1.0 is typical).
               Each beat is scored by the fold member that never trained on its DS1 fold (the one whose
               out-of-fold predictions train_ecg wrote), so no beat is in-sample.

Writes metrics/ecg/analysis.json (numbers and plain-words readings computed from them) and
artifacts/ecg/analysis/ (occlusion_<class>.png, occlusion.npz).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

OUT = Path("artifacts/ecg/analysis")
METRICS = Path("metrics/ecg/analysis.json")
RUNS = Path("artifacts/ecg")
MIN_DROP = 0.01   # readings call a drop below this "no dependence"
RR_RATIOS = {"pre_rr_local", "post_rr_local", "pre_rr_record", "post_rr_record", "local_rr_record"}


@dataclass(frozen=True)
class AnalyseParams:
    runs: tuple[str, ...] = ("lenet1d-ce", "lenet1d-focal", "dilated1d-ce", "dilated1d-focal")
    dead_beats: int | None = None       # DS1 beats probed for dead ReLUs (None: every DS1 beat)
    saliency_run: str | None = None     # None: the packaged run (models/ecg/package.json provenance.run)
    saliency_classes: tuple[str, ...] = ("N", "S", "V", "F")
    saliency_beats: int = 300           # DS1 beats per class for occlusion (fewer when the class has fewer)
    windows: int = 12                   # equal occlusion windows over the beat
    fill: Literal["record_median", "zero", "beat_mean"] = "record_median"
    seed: int = 42
    batch_size: int = 1024

    def validate(self) -> None:
        from pipeline.params import ParamsError
        if not self.runs:
            raise ParamsError("runs must name at least one run")
        if self.dead_beats is not None and self.dead_beats < 1:
            raise ParamsError(f"dead_beats must be >= 1 or null, got {self.dead_beats}")
        if self.saliency_beats < 1 or self.windows < 1 or self.batch_size < 1:
            raise ParamsError("saliency_beats, windows and batch_size must be >= 1")


def load(path) -> AnalyseParams:
    from pipeline.params import load_section
    return load_section("analyse_ecg", AnalyseParams, path)


# --------------------------------------------------------------------------- helpers


def _load_model(path: Path):
    import keras

    from ecg import models  # noqa: F401  (registers the custom layers)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the train_ecg stage for this run first")
    return keras.models.load_model(path, compile=False)


def _run_files(run: str) -> dict:
    from pipeline.io import read_json
    d = RUNS / run
    for name in ("model.keras", "train.json", "eval.npz"):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d / name}: missing; run train_ecg/evaluate_ecg for run '{run}' first")
    return {"dir": d, "train": read_json(d / "train.json")}


def _member_folds(model, train: dict) -> list[int]:
    """DS1 validation fold of each fold member, in member order (train_ecg names member i after folds[i])."""
    from pipeline import analysis
    members = analysis.submodels(model)
    folds = sorted(int(k) for k in train["folds"])
    if len(members) != len(folds):
        raise ValueError(f"model has {len(members)} members but train.json lists folds {folds}")
    for i, m in enumerate(members):
        if not m.name.startswith(f"fold{i}_") and len(members) > 1:
            raise ValueError(f"member {i} is named '{m.name}', expected 'fold{i}_...'")
    return folds


def _window_fill(fill: str, beat: np.ndarray, record: np.ndarray, medians: dict) -> np.ndarray:
    """What an occluded window is replaced with, per beat and channel (same shape as `beat`).

    medians: {record: that record's median beat (L, channels)}, used by fill="record_median"."""
    if fill == "zero":
        return np.zeros_like(beat)
    if fill == "beat_mean":
        return np.broadcast_to(beat.mean(axis=1, keepdims=True), beat.shape).copy()
    out = np.empty_like(beat)
    for r in np.unique(record):
        out[record == r] = medians[int(r)]
    return out


def _check_oof(members, folds, arrays: dict, run_dir: Path, n: int = 16) -> float | None:
    """Max |member prob - oof.npz prob| on the first `n` beats of each member's fold: confirms which member
    is out-of-fold for which beats (oof.npz stacks DS1 folds in order, beats in index order)."""
    path = run_dir / "oof.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        oof = z["probs"]
    ds1 = arrays["split"] == 0
    if len(oof) != int(ds1.sum()):
        return None   # trained on a subset (limit_beats): no beat-by-beat match
    worst, start = 0.0, 0
    for member, fold in zip(members, folds):
        idx = np.flatnonzero(ds1 & (arrays["fold"] == fold))
        j = idx[:n]
        p = np.asarray(member.predict([arrays["beat"][j], arrays["rr"][j]], verbose=0))
        worst = max(worst, float(np.abs(p - oof[start:start + len(j)]).max()))
        start += len(idx)
    return worst


def _pick(y: np.ndarray, mask: np.ndarray, cls: int, cap: int, rng) -> np.ndarray:
    idx = np.flatnonzero(mask & (y == cls))
    if len(idx) > cap:
        idx = np.sort(rng.choice(idx, cap, replace=False))
    return idx


# --------------------------------------------------------------------------- parts


def dead_units_part(model, arrays: dict, ds1: np.ndarray, cfg: AnalyseParams) -> dict:
    from pipeline import analysis
    idx = np.flatnonzero(ds1)
    if cfg.dead_beats is not None and len(idx) > cfg.dead_beats:
        idx = np.sort(np.random.default_rng(cfg.seed).choice(idx, cfg.dead_beats, replace=False))
    dead = analysis.dead_units(model, {"beat": arrays["beat"][idx], "rr": arrays["rr"][idx]}, cfg.batch_size)
    return {"beats": int(len(idx)), "layers": dead, **analysis.dead_summary(dead)}


def capacity_part(model, train: dict, fs: float) -> dict:
    from pipeline import analysis, deploy
    members = analysis.submodels(model)
    ens = deploy.layer_costs(model, fold_batchnorm=True)[-1]
    mem = deploy.layer_costs(members[0], fold_batchnorm=True)[-1]
    info = train["model_info"]
    w = analysis.relu_widths(members[0])
    return {"members": len(members), "params_member": int(info["params"]), "params_ensemble": int(model.count_params()),
            "flops_per_beat_member": int(mem["flops"]), "flops_per_beat_ensemble": int(ens["flops"]),
            "receptive_field_samples": int(info["receptive_field_samples"]),
            "receptive_field_ms": float(info.get("receptive_field_ms", 1000 * info["receptive_field_samples"] / fs)),
            "relu_units_member": int(sum(w["widths"])),
            "linear_regions_log10_bound": analysis.linear_region_bound(w["n0"], w["widths"]),
            "region_bound_input": w["n0"], "region_bound_widths": w["widths"], "region_bound_layers": w["layers"]}


def topk_part(run_dir: Path, ev) -> dict:
    from pipeline import analysis
    with np.load(run_dir / "eval.npz") as z:
        missing = [k for k in ("y_true", "probs", "group") if k not in z.files]
        if missing:
            raise KeyError(f"{run_dir / 'eval.npz'}: missing key(s) {missing}; rerun evaluate_ecg")
        y, probs, group = z["y_true"], z["probs"], z["group"]
    ks = tuple(k for k in (1, 2, 3) if k <= probs.shape[1])
    return {"n": int(len(y)), "records": int(len(np.unique(group))),
            **analysis.topk_accuracy(y, probs, ks, groups=group, n_boot=ev.bootstrap, seed=ev.seed)}


def occlusion_part(model, train: dict, run_dir: Path, arrays: dict, meta: dict,
                   cfg: AnalyseParams) -> tuple[dict, dict]:
    from pipeline import analysis
    classes = list(meta["classes"])
    unknown = [c for c in cfg.saliency_classes if c not in classes]
    if unknown:
        raise ValueError(f"analyse_ecg.saliency_classes {unknown} not among meta.json classes {classes}")
    rr_names = list(meta["rr_features"])
    not_ratio = [n for n in rr_names if n not in RR_RATIOS]
    if not_ratio:
        raise ValueError(f"meta.json rr_features {not_ratio}: no neutral value known (only ratios, neutral 1.0)")
    fs, r_peak = float(meta["fs"]), int(meta["r_peak_index"])
    length = arrays["beat"].shape[1]
    slices = analysis.window_slices(length, cfg.windows)
    occlusions = [{"beat": slice(a, b)} for a, b in slices] + [{"rr": j} for j in range(len(rr_names))]
    members = analysis.submodels(model)
    folds = _member_folds(model, train)
    ds1 = arrays["split"] == 0
    oof_diff = _check_oof(members, folds, arrays, run_dir)
    if oof_diff is not None and oof_diff > 1e-3:
        raise AssertionError(f"{run_dir}: fold members do not reproduce oof.npz (max diff {oof_diff:.2g}); "
                             "the member-to-fold map is wrong")
    rng = np.random.default_rng(cfg.seed)
    medians: dict = {}
    out, arrays_out = {}, {}
    for cname in cfg.saliency_classes:
        c = classes.index(cname)
        idx = _pick(arrays["y"], ds1, c, cfg.saliency_beats, rng)
        if not len(idx):
            out[cname] = {"n": 0}
            continue
        p0 = np.empty(len(idx))
        drops = np.empty((len(idx), len(occlusions)))
        for member, fold in zip(members, folds):
            sel = arrays["fold"][idx] == fold
            if not sel.any():
                continue
            j = idx[sel]
            x = {"beat": arrays["beat"][j], "rr": arrays["rr"][j]}
            if cfg.fill == "record_median":
                for r in np.unique(arrays["record"][j]):
                    if int(r) not in medians:
                        medians[int(r)] = np.median(arrays["beat"][ds1 & (arrays["record"] == r)], axis=0)
            base = {"beat": _window_fill(cfg.fill, x["beat"], arrays["record"][j], medians),
                    "rr": np.ones_like(x["rr"])}

            def predict(d, m=member):
                return np.asarray(m.predict([d["beat"], d["rr"]], batch_size=cfg.batch_size, verbose=0))

            p0[sel], drops[sel] = analysis.occlusion_drops(predict, x, np.full(len(j), c), occlusions, base)
        mean = drops.mean(axis=0)
        win = [{"start_ms": 1000 * (a - r_peak) / fs, "stop_ms": 1000 * (b - r_peak) / fs,
                "centre_ms": 1000 * ((a + b - 1) / 2 - r_peak) / fs, "drop": float(mean[i])}
               for i, (a, b) in enumerate(slices)]
        out[cname] = {"n": int(len(idx)), "records": int(len(np.unique(arrays["record"][idx]))),
                      "mean_p_true": float(p0.mean()), "called_right": float(np.mean(p0 > 0.5)),
                      "windows": win,
                      "rr": {n: float(mean[len(slices) + k]) for k, n in enumerate(rr_names)}}
        arrays_out[cname] = {"index": idx, "p0": p0, "drops": drops,
                             "mean_beat": arrays["beat"][idx, :, 0].mean(axis=0)}
    return {"oof_check_max_abs_diff": oof_diff, "classes": out}, arrays_out


def occlusion_figures(occ: dict, arrays_out: dict, meta: dict, run: str, out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path
    fs, r_peak = float(meta["fs"]), int(meta["r_peak_index"])
    paths = []
    for cname, res in occ["classes"].items():
        if not res.get("n"):
            continue
        fig, (ax, ax_rr) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2.2, 1]})
        centres = [w["centre_ms"] for w in res["windows"]]
        widths = [w["stop_ms"] - w["start_ms"] for w in res["windows"]]
        drops = [w["drop"] for w in res["windows"]]
        ax.bar(centres, drops, width=[0.9 * w for w in widths], color="tab:orange", label="drop in p(true class)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("ms from R peak")
        ax.set_ylabel("mean drop in p(true class)")
        twin = ax.twinx()
        beat = arrays_out[cname]["mean_beat"]
        twin.plot(1000 * (np.arange(len(beat)) - r_peak) / fs, beat, color="tab:blue", lw=1.2,
                  label="mean beat (first channel)")
        twin.set_ylabel(meta.get("channels", ["channel 0"])[0], color="tab:blue")
        ax.set_title(f"{run}: class {cname}, {res['n']} DS1 beats, occluded windows")
        names = list(res["rr"])
        ax_rr.barh(names, [res["rr"][n] for n in names], color="tab:green")
        ax_rr.axvline(0, color="black", lw=0.6)
        ax_rr.set_xlabel("drop when set to 1.0")
        ax_rr.set_title("RR features")
        fig.tight_layout()
        path = out_dir / f"occlusion_{cname}.png"
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------- readings


def readings(result: dict) -> list[str]:
    out = []
    for run, r in result["runs"].items():
        d = r["dead_units"]
        worst = max(d["per_layer"].items(), key=lambda kv: kv[1]["mean_fraction"])
        out.append(f"{run}: {100 * d['mean_fraction']:.1f}% of ReLU units never fire on {d['beats']} DS1 beats "
                   f"(mean over {len(d['per_member'])} fold members); most in {worst[0]} "
                   f"({100 * worst[1]['mean_fraction']:.1f}%).")
        c, t = r["capacity"], r["topk"]
        gain = (t["top2"]["value"] - t["top1"]["value"]) / max(1e-12, 1 - t["top1"]["value"])
        out.append(f"{run}: {c['params_member']:,} params and {c['flops_per_beat_member'] / 1e6:.2f} MFLOP per beat per "
                   f"member, receptive field {c['receptive_field_ms']:.0f} ms, region bound 10^{c['linear_regions_log10_bound']:.0f}; "
                   f"DS2 top-1 {t['top1']['value']:.3f}, top-2 {t['top2']['value']:.3f} "
                   f"({100 * gain:.0f}% of top-1 errors have the true class second).")
    occ = result.get("occlusion")
    if occ:
        for cname, res in occ["classes"].items():
            if not res.get("n"):
                continue
            rr_name, rr_drop = max(res["rr"].items(), key=lambda kv: kv[1])
            w = max(res["windows"], key=lambda w: w["drop"])
            head = f"{cname} calls ({occ['run']}, {res['n']} DS1 beats, mean p(true) {res['mean_p_true']:.2f})"
            parts = []
            if rr_drop >= MIN_DROP:
                parts.append(f"most on {rr_name} among RR features (drop {rr_drop:.3f})")
            if w["drop"] >= MIN_DROP:
                parts.append(f"most on the window {w['start_ms']:+.0f}..{w['stop_ms']:+.0f} ms from the R peak "
                             f"(drop {w['drop']:.3f})")
            if parts:
                out.append(f"{head} depend " + " and ".join(parts) + ".")
            missing = [what for what, d in (("RR feature", rr_drop), ("window", w["drop"])) if d < MIN_DROP]
            if missing:
                out.append(f"{head}: no single {' or '.join(missing)} lowers p(true) by {MIN_DROP} or more "
                           f"(fill={occ['fill']}).")
    return out


# --------------------------------------------------------------------------- stage


def run(cfg: AnalyseParams, ev, data_dir: Path, package_dir: Path, out_dir: Path, metrics_path: Path) -> dict:
    from ecg import dataset
    from pipeline.io import ensure_dir, read_json, save_npz, write_json
    t_all = time.perf_counter()
    timings: dict = {}
    trains = {run: _run_files(run) for run in cfg.runs}
    channels = {tuple(t["train"]["channels"]) for t in trains.values()}
    sal_run = cfg.saliency_run or read_json(package_dir / "package.json").get("provenance", {}).get("run")
    if not sal_run:
        raise KeyError(f"{package_dir / 'package.json'}: no provenance.run; set analyse_ecg.saliency_run")
    sal = trains.get(sal_run) or _run_files(sal_run)
    channels.add(tuple(sal["train"]["channels"]))
    t = time.perf_counter()
    data = {}
    for ch in channels:
        arrays, meta = dataset.load_inputs(data_dir, list(ch))
        data[ch] = (arrays, meta)
    timings["load_data_s"] = time.perf_counter() - t
    result: dict = {"runs": {}, "params": asdict(cfg)}
    for name, info in trains.items():
        arrays, meta = data[tuple(info["train"]["channels"])]
        t = time.perf_counter()
        model = _load_model(info["dir"] / "model.keras")
        r = {"dead_units": dead_units_part(model, arrays, arrays["split"] == 0, cfg)}
        timings[f"{name}_dead_units_s"] = time.perf_counter() - t
        t = time.perf_counter()
        r["capacity"] = capacity_part(model, info["train"], float(meta["fs"]))
        r["topk"] = topk_part(info["dir"], ev)
        timings[f"{name}_capacity_topk_s"] = time.perf_counter() - t
        result["runs"][name] = r
        print(f"analyse_ecg {name}: dead {100 * r['dead_units']['mean_fraction']:.1f}%, "
              f"region bound 10^{r['capacity']['linear_regions_log10_bound']:.0f}, "
              f"top1/2/3 {r['topk']['top1']['value']:.3f}/{r['topk']['top2']['value']:.3f}/"
              f"{r['topk']['top3']['value']:.3f} ({timings[f'{name}_dead_units_s']:.0f} s dead units)", flush=True)
    t = time.perf_counter()
    arrays, meta = data[tuple(sal["train"]["channels"])]
    model = _load_model(sal["dir"] / "model.keras")
    occ, occ_arrays = occlusion_part(model, sal["train"], sal["dir"], arrays, meta, cfg)
    ensure_dir(out_dir)
    figures = occlusion_figures(occ, occ_arrays, {**meta, "channels": list(sal["train"]["channels"])}, sal_run, out_dir)
    save_npz(out_dir / "occlusion.npz", **{f"{c}_{k}": v for c, d in occ_arrays.items() for k, v in d.items()})
    timings["occlusion_s"] = time.perf_counter() - t
    result["occlusion"] = {"run": sal_run, "fill": cfg.fill, "windows": cfg.windows, "figures": figures, **occ}
    timings["total_s"] = time.perf_counter() - t_all
    result["method"] = {
        "dead_units": "unit = output channel of a ReLU layer (Activation relu, ReLU, Dense/Conv with relu); dead = "
                      "never > 0 at any position on any probed DS1 beat; counted per fold member",
        "linear_regions": "log10 of prod_l sum_{j=0}^{d_l} C(n_l, j), d_l = min(n_0..n_l) (Montufar 2017; the looser "
                          "form of Serra et al. 2018 Thm 1) for one fold member: n_0 = input values (beat window x "
                          "channels + RR features), n_l = ReLU units at ReLU depth l (conv map: positions x channels; "
                          "parallel layers at the same depth, e.g. rr_dense beside the first conv, summed). Pooling, "
                          "the log-RR skip path and BatchNorm are not modelled: a capacity proxy, not a proven bound "
                          "for these exact graphs",
        "flops": "pipeline.deploy.layer_costs with BatchNorm folded (2 x MACs of conv/dense, 1 per element otherwise)",
        "topk": "DS2, eval.npz probs (temperature-scaled; top-k is unchanged by temperature), all 5 classes; 95% CI "
                "from a record bootstrap (evaluate.bootstrap draws, evaluate.seed)",
        "occlusion": f"fill={cfg.fill}: an occluded window of every channel takes the value of "
                     + {"record_median": "the record's median beat (over its DS1 beats)", "zero": "0",
                        "beat_mean": "the beat's own mean"}[cfg.fill]
                     + "; an RR feature is set to 1.0; each beat scored by its out-of-fold member; drop = p(true) - "
                       "p(true | occluded), averaged over the class's beats. One part at a time: correlated RR features "
                       "(pre_rr_local, pre_rr_record) can stand in for each other, so single-feature drops understate "
                       "what they carry together; with record_median a beat that looks like its record's usual beat "
                       "(most N beats) loses little by construction",
    }
    result["readings"] = readings(result)
    result["timings_s"] = timings
    write_json(metrics_path, result)
    return result


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/ecg")
    ap.add_argument("--package", default="models/ecg")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--metrics", default=str(METRICS))
    args = ap.parse_args(argv)
    from pipeline.evaluate import load_params as load_evaluate
    cfg = load(args.params)
    ev = load_evaluate(args.params)
    result = run(cfg, ev, Path(args.data), Path(args.package), Path(args.out), Path(args.metrics))
    for line in result["readings"]:
        print(line)
    print("analyse_ecg timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["timings_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
