"""Stage goal_vision: issue 12's goal table, read from files only (no training, no predicting).

    python -m vision.goal [--params params.yaml] [--runs artifacts/vision] [--metrics metrics/analysis/goal_vision.json]

Every trained and evaluated vision run (artifacts/vision/<dataset>-<model>-<regime>-<loss>/ with train.json and
eval.npz) belongs to a backbone *family*, read from train.json's backbone.source: "imagenet" (published ImageNet
weights, e.g. squeezenet) or "source:cifar10" (pretrained here on CIFAR-10: alexnet, vgg16). Runs of any other source
are counted and left out.

  chosen              per dataset and family ONE run, chosen on validation only: the highest train.json
                      val_macro_f1 (ties: the first by run name). The test split never takes part in a choice.
  goal                per dataset the run chosen on validation over both families, against the published 28 px
                      anchors (params goal_vision.anchors): test accuracy and AUC above both?
  anchors             the same calls for each family's chosen run: point estimate above the anchor, and the 95% CI's
                      lower bound above it.
  imagenet_vs_cifar   the ImageNet-chosen run minus the CIFAR-chosen run on the same test images: accuracy, AUC and
                      macro-F1 differences with paired image-bootstrap 95% CIs; "separates" when the CI excludes 0.
  frozen_vs_finetune  for one backbone (goal_vision.regime_model, default squeezenet), per dataset and loss: the
                      frozen and fine-tuned runs' test scores, their paired differences (finetune minus frozen) and
                      their validation macro-F1. Training time is not in train.json and is not reported here.

Scores come from evaluate_vision's eval.npz (y_true, probs) with evaluate_vision's own functions
(pipeline.evaluation: accuracy, macro_f1 over every class, roc_auc = AUC of the positive class for two classes, macro
one-vs-rest over the classes present otherwise), so the point values equal metrics/vision/<run>.json. CIs: percentile
(pipeline.clinical.percentile) over `bootstrap` image-bootstrap draws (pipeline.clinical.group_draws, every test image
its own group), the same draws for every run of a dataset, so each difference is paired; AUC per draw by
vision.analyse.auc_draws.

Output: metrics/analysis/goal_vision.json (parts "setting", "goal", "chosen", "anchors", "imagenet_vs_cifar",
"frozen_vs_finetune", plus "readings" and "method"), written atomically.
"""
from __future__ import annotations

import argparse
import sys
import time
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from pipeline import clinical, evaluation
from pipeline.io import read_json, write_json
from pipeline.params import ParamsError, load_section
from vision.analyse import auc_draws

RUN_KEYS = ("dataset", "model", "regime", "loss")
# family key -> (backbone.source in train.json, words)
FAMILIES = {"imagenet": ("imagenet", "ImageNet"), "cifar": ("source:cifar10", "CIFAR-10 (pretrained here)")}
METRICS = ("accuracy", "auc", "macro_f1")
GOAL_METRICS = ("accuracy", "auc")
EPS = 1e-9   # a CI bound within EPS of 0 (or of an anchor) does not count as beyond it


# ------------------------------------------------------------------------------------------ params

@dataclass(frozen=True)
class Anchor:
    accuracy: float       # the published test accuracy to beat
    auc: float            # the published test AUC to beat
    source: str = ""      # where the number comes from

    def validate(self) -> None:
        for key in ("accuracy", "auc"):
            v = getattr(self, key)
            if not 0 < v < 1:
                raise ParamsError(f"{key} must lie in (0, 1), got {v}")


@dataclass(frozen=True)
class Anchors:
    """The best 28 px entries of the MedMNIST v2 / MedMNIST+ tables (issue 12), one per dataset; a dataset left out
    has no anchor (None). Typed Anchor, not Anchor | None, so a bad entry's error names the key inside it."""
    pneumoniamnist: Anchor = None  # type: ignore[assignment]
    breastmnist: Anchor = None  # type: ignore[assignment]
    retinamnist: Anchor = None  # type: ignore[assignment]

    def get(self, dataset: str) -> Anchor | None:
        return getattr(self, dataset, None) if dataset in {f.name for f in fields(self)} else None


@dataclass(frozen=True)
class Config:
    seed: int = 0                        # image-bootstrap draws (the same for every run of a dataset)
    bootstrap: int = 1000                # image-bootstrap resamples for the 95% CIs
    regime_model: str = "squeezenet"     # backbone whose frozen and fine-tuned runs are compared
    anchors: Anchors = field(default_factory=Anchors)

    def validate(self) -> None:
        if self.bootstrap < 1:
            raise ParamsError(f"bootstrap must be >= 1, got {self.bootstrap}")
        if not self.regime_model:
            raise ParamsError("regime_model must name a backbone (e.g. squeezenet)")


def load_config(path="params.yaml") -> Config:
    return load_section("goal_vision", Config, path)


# ------------------------------------------------------------------------------------------ reading runs

def find_runs(root: Path) -> list[dict]:
    """Every run folder under root with a train.json: {name, dir, dataset, model, regime, loss, val_macro_f1,
    source, family}; a train.json lacking one of these is an error naming the file."""
    root = Path(root)
    runs = []
    for train_json in sorted(root.glob("*/train.json")):
        trained = read_json(train_json)
        if not isinstance(trained, dict):
            raise ValueError(f"{train_json}: not a JSON object (written by train_vision)")
        missing = [k for k in RUN_KEYS if not isinstance(trained.get(k), str)]
        if missing:
            raise ValueError(f"{train_json}: missing {missing} (written by train_vision)")
        val = trained.get("val_macro_f1")
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not np.isfinite(val):
            raise ValueError(f"{train_json}: 'val_macro_f1' must be a number, got {val!r} (written by train_vision)")
        backbone = trained.get("backbone")
        source = backbone.get("source") if isinstance(backbone, dict) else None
        if not isinstance(source, str):
            raise ValueError(f"{train_json}: no 'backbone.source' (written by train_vision from pretrain_vision's "
                             "backbone.json); rerun train_vision")
        family = next((k for k, (src, _) in FAMILIES.items() if src == source), None)
        runs.append({"name": train_json.parent.name, "dir": train_json.parent, "val_macro_f1": float(val),
                     "source": source, "family": family, **{k: trained[k] for k in RUN_KEYS}})
    if not runs:
        raise FileNotFoundError(f"{root}: no trained runs (*/train.json); run train_vision and evaluate_vision first")
    return runs


def load_eval(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, probs) of a run's eval.npz, checked; a clear error naming the file otherwise."""
    path = Path(run["dir"]) / "eval.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run evaluate_vision for {run['name']}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz archive (written by evaluate_vision)")
    with npz:
        missing = [k for k in ("y_true", "probs") if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing} (written by evaluate_vision)")
        try:
            y, probs = np.asarray(npz["y_true"]), np.asarray(npz["probs"], np.float64)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"{path}: unreadable arrays ({type(exc).__name__}: {exc})") from None
    if y.ndim != 1 or probs.ndim != 2 or len(y) != len(probs) or probs.shape[1] < 2 or not len(y):
        raise ValueError(f"{path}: y_true {y.shape} and probs {probs.shape} must be (n,) and (n, classes >= 2)")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= probs.shape[1]:
        raise ValueError(f"{path}: y_true must be integer labels in [0, {probs.shape[1]})")
    if not np.isfinite(probs).all():
        raise ValueError(f"{path}: probs holds non-finite values")
    return y.astype(np.int64), probs


# ------------------------------------------------------------------------------------------ choice

def choose(candidates: list[dict]) -> dict | None:
    """The run with the highest validation macro-F1; ties go to the first by run name. Test scores are never read."""
    best = None
    for r in sorted(candidates, key=lambda r: r["name"]):
        if best is None or r["val_macro_f1"] > best["val_macro_f1"]:
            best = r
    return best


# ------------------------------------------------------------------------------------------ statistics

def image_draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) image-bootstrap indices (clinical.group_draws, every image its own group)."""
    return np.stack(list(clinical.group_draws(np.arange(n), n_boot, seed)))


def score(y, probs, draws) -> dict:
    """metric -> (point value, per-draw values) for accuracy, AUC and macro-F1 (every class scored), with
    pipeline.evaluation's definitions (those of metrics/vision/<run>.json)."""
    classes = list(range(probs.shape[1]))
    pred = probs.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    f1 = [evaluation.macro_f1(y[d], pred[d], classes) for d in draws]
    return {"accuracy": (evaluation.accuracy(y, pred), correct[draws].mean(axis=1)),
            "auc": (evaluation.roc_auc(y, probs), auc_draws(y, probs, draws)),
            "macro_f1": (evaluation.macro_f1(y, pred, classes), np.array([np.nan if v is None else v for v in f1]))}


def value_ci(point, per_draw) -> dict:
    return {"value": point, "ci95": clinical.percentile(per_draw)}


def difference(a: tuple, b: tuple) -> dict:
    """a minus b with the paired CI (per-draw differences on the same resampled images)."""
    value = None if a[0] is None or b[0] is None else a[0] - b[0]
    return {"value": value, "ci95": clinical.percentile(a[1] - b[1])}


def differences(a: dict, b: dict, suffix: str) -> dict:
    """Per metric: "<metric><suffix>" the paired difference a minus b, "<metric>_call" whether its CI excludes 0."""
    out = {}
    for m in METRICS:
        d = difference(a[m], b[m])
        out.update({f"{m}{suffix}": d, f"{m}_call": call(d["ci95"])})
    return out


def call(ci) -> str:
    """"separates" when the CI excludes 0 (by more than float rounding: equal scores can differ by 1e-17)."""
    if ci is None:
        return "undefined"
    return "separates" if ci["lo"] > EPS or ci["hi"] < -EPS else "does not separate"


# ------------------------------------------------------------------------------------------ the stage

class Dataset:
    """The scored runs of one dataset, on one shared set of image-bootstrap draws."""

    def __init__(self, name: str, cfg: Config):
        self.name, self.cfg = name, cfg
        self.y = self.first = self.draws = None
        self.scores: dict = {}

    def score(self, run: dict) -> dict:
        if run["name"] not in self.scores:
            y, probs = load_eval(run)
            if self.y is None:
                self.y, self.first = y, run
                self.draws = image_draws(len(y), self.cfg.bootstrap, self.cfg.seed)
            elif len(y) != len(self.y) or not np.array_equal(y, self.y):
                raise ValueError(f"{Path(run['dir']) / 'eval.npz'} and {Path(self.first['dir']) / 'eval.npz'}: "
                                 f"different test labels ({len(y)} vs {len(self.y)} images) for {self.name}; "
                                 "the runs were scored on different test sets (e.g. another image limit): "
                                 "retrain and evaluate them alike")
            self.scores[run["name"]] = score(y, probs, self.draws)
        return self.scores[run["name"]]


def run_scores(s: dict) -> dict:
    return {f"test_{m}": value_ci(*s[m]) for m in METRICS}


def anchor_calls(s: dict, anchor: Anchor) -> dict:
    out = {}
    for m in GOAL_METRICS:
        point, draws = s[m]
        ci = clinical.percentile(draws)
        target = getattr(anchor, m)
        out.update({f"anchor_{m}": target, f"test_{m}": {"value": point, "ci95": ci},
                    f"beats_{m}": point is not None and point > target,
                    f"ci_lo_above_{m}": ci is not None and ci["lo"] > target})
    out["beats_both"] = out["beats_accuracy"] and out["beats_auc"]
    out["ci_lo_above_both"] = out["ci_lo_above_accuracy"] and out["ci_lo_above_auc"]
    return out


def analyse(runs: list[dict], cfg: Config, root: Path) -> dict:
    datasets = sorted({r["dataset"] for r in runs})
    sets = {d: Dataset(d, cfg) for d in datasets}
    other = sorted(r["name"] for r in runs if r["family"] is None)
    chosen, picks, missing = {}, {}, []
    for d in datasets:
        for fam, (source, words) in FAMILIES.items():
            cands = [r for r in runs if r["dataset"] == d and r["family"] == fam]
            pick = choose(cands)
            if pick is None:
                missing.append(f"{d} has no {words} run (train.json backbone.source '{source}') under {root}: its "
                               f"{words} choice, the ImageNet-minus-CIFAR difference and the {words} anchor calls "
                               "are absent.")
                continue
            picks[(d, fam)] = pick
            chosen[f"{d} / {fam}"] = {"run": pick["name"], "model": pick["model"], "regime": pick["regime"],
                                      "loss": pick["loss"], "candidates": len(cands),
                                      "val_macro_f1": pick["val_macro_f1"],
                                      **run_scores(sets[d].score(pick))}

    goal, anchors = {}, {}
    for d in datasets:
        anchor = cfg.anchors.get(d)
        overall = choose([p for (ds, _), p in picks.items() if ds == d])
        if anchor is None:
            missing.append(f"{d}: no anchor in goal_vision.anchors, so no goal call.")
            continue
        for fam in FAMILIES:
            if (d, fam) in picks:
                p = picks[(d, fam)]
                anchors[f"{d} / {fam}"] = {"run": p["name"], **anchor_calls(sets[d].score(p), anchor)}
        if overall is not None:
            goal[d] = {"run": overall["name"], "family": overall["family"], "val_macro_f1": overall["val_macro_f1"],
                       **anchor_calls(sets[d].score(overall), anchor), "anchor_source": anchor.source}

    versus = {}
    for d in datasets:
        a, b = picks.get((d, "imagenet")), picks.get((d, "cifar"))
        if a is None or b is None:
            versus[d] = {"note": f"not compared: {d} lacks a {'ImageNet' if a is None else 'CIFAR-10'} run"}
            continue
        sa, sb = sets[d].score(a), sets[d].score(b)
        versus[d] = {"imagenet_run": a["name"], "cifar_run": b["name"],
                     **differences(sa, sb, "_diff")}

    regimes = {}
    for d in datasets:
        for loss in sorted({r["loss"] for r in runs if r["dataset"] == d and r["model"] == cfg.regime_model}):
            pair = {reg: [r for r in runs if r["dataset"] == d and r["model"] == cfg.regime_model
                          and r["loss"] == loss and r["regime"] == reg] for reg in ("frozen", "finetune")}
            if not pair["frozen"] or not pair["finetune"]:
                lacking = "frozen" if not pair["frozen"] else "finetune"
                regimes[f"{d} / {loss}"] = {"note": f"no {lacking} {cfg.regime_model} run with loss {loss}"}
                continue
            fr, ft = pair["frozen"][0], pair["finetune"][0]
            sf, st = sets[d].score(fr), sets[d].score(ft)
            regimes[f"{d} / {loss}"] = {
                "frozen_val_macro_f1": fr["val_macro_f1"], "finetune_val_macro_f1": ft["val_macro_f1"],
                **{f"frozen_test_{m}": value_ci(*sf[m]) for m in METRICS},
                **{f"finetune_test_{m}": value_ci(*st[m]) for m in METRICS},
                **differences(st, sf, "_gain")}
        if not any(r["dataset"] == d and r["model"] == cfg.regime_model for r in runs):
            missing.append(f"{d} has no {cfg.regime_model} run: no frozen-vs-fine-tuned comparison.")

    setting = {"runs": len(runs), "runs_imagenet": sum(r["family"] == "imagenet" for r in runs),
               "runs_cifar": sum(r["family"] == "cifar" for r in runs), "runs_other_source": len(other),
               **{f"test_images_{d}": int(len(s.y)) for d, s in sets.items() if s.y is not None},
               "bootstrap": cfg.bootstrap, "seed": cfg.seed, "regime_model": cfg.regime_model}
    out = {"setting": setting, "goal": goal, "chosen": chosen, "anchors": anchors, "imagenet_vs_cifar": versus,
           "frozen_vs_finetune": regimes}
    out["readings"] = readings(out, datasets, missing, cfg)
    empty = {"goal": "no dataset has both a chosen run and an anchor", "chosen": "no run of a known family",
             "anchors": "no dataset has both a chosen run and an anchor",
             "frozen_vs_finetune": f"no {cfg.regime_model} run"}
    for part, why in empty.items():   # an empty part would read as missing in the report: say why instead
        if not out[part]:
            out[part] = {"none": {"note": f"{why} (see readings: missing)"}}
    out["method"] = methods(cfg)
    return out


# ------------------------------------------------------------------------------------------ words

def _ci_text(d: dict, fmt: str = "{:.3f}") -> str:
    if d.get("value") is None:
        return "n/a"
    ci = d.get("ci95")
    return fmt.format(d["value"]) + ("" if not ci else f" [{fmt.format(ci['lo'])}, {fmt.format(ci['hi'])}]")


def readings(out: dict, datasets: list, missing: list, cfg: Config) -> dict:
    r = {}
    for d in datasets:
        g = out["goal"].get(d)
        if g is None:
            continue
        fam = FAMILIES[g["family"]][1]
        verdict = "met" if g["beats_both"] else "not met"
        r[f"goal_{d}"] = (
            f"{d}: goal {verdict}. The run chosen on validation, {g['run']} ({fam}, val macro-F1 "
            f"{g['val_macro_f1']:.3f}), reaches test accuracy {_ci_text(g['test_accuracy'])} against "
            f"{g['anchor_accuracy']:.3f} and AUC {_ci_text(g['test_auc'])} against {g['anchor_auc']:.3f}"
            + (" (both CIs' lower bounds above the anchors)." if g["ci_lo_above_both"] else "."))
    rows = out["imagenet_vs_cifar"]
    compared = [d for d in datasets if "note" not in rows.get(d, {"note": ""})]
    if compared:
        parts, bar = [], {}
        for m in GOAL_METRICS:
            bar[m] = len(compared) == len(datasets) and all(
                (rows[d][f"{m}_diff"]["ci95"] or {}).get("lo", -1) > EPS for d in compared)
        for d in compared:
            parts.append(f"{d} accuracy {_ci_text(rows[d]['accuracy_diff'], '{:+.3f}')}, AUC "
                         f"{_ci_text(rows[d]['auc_diff'], '{:+.3f}')}")
        short = "" if len(compared) == len(datasets) else f" (only {len(compared)} of {len(datasets)} sets compared)"
        r["intermediate_bar"] = (
            "ImageNet choice minus CIFAR choice on the same test images: " + "; ".join(parts) + ". "
            + ("Bar met: the ImageNet choice beats the CIFAR choice on every set with separating CIs on both accuracy "
               "and AUC." if all(bar.values()) else
               f"Bar not met{short}: separating positive CIs on every set for accuracy "
               f"{'yes' if bar['accuracy'] else 'no'}, for AUC {'yes' if bar['auc'] else 'no'}."))
    reg = {k: v for k, v in out["frozen_vs_finetune"].items() if "note" not in v}
    if reg:
        val_pref = sum(v["finetune_val_macro_f1"] > v["frozen_val_macro_f1"] for v in reg.values())
        sep = [f"{k} {_ci_text(v['macro_f1_gain'], '{:+.3f}')}" for k, v in reg.items()
               if v["macro_f1_call"] == "separates"]
        r["frozen_vs_finetune"] = (
            f"{cfg.regime_model}: validation macro-F1 prefers fine-tuning in {val_pref} of {len(reg)} (dataset, loss) "
            "pairs; test macro-F1 gain of fine-tuning over frozen: "
            + "; ".join(f"{k} {_ci_text(v['macro_f1_gain'], '{:+.3f}')}" for k, v in reg.items()) + ". "
            + (f"Separating CIs: {'; '.join(sep)}." if sep else "No test macro-F1 difference has a CI excluding 0."))
    if missing:
        r["missing"] = " ".join(missing)
    return r


def methods(cfg: Config) -> dict:
    draws = (f"95% CIs: percentiles of {cfg.bootstrap} image-bootstrap draws (seed {cfg.seed}), the same draws for "
             "every run of a dataset")
    return {
        "chosen": ("Per dataset and backbone family (train.json backbone.source: 'imagenet' = published ImageNet "
                   "weights, 'source:cifar10' = pretrained here on CIFAR-10), the run with the highest validation "
                   "macro-F1 (train.json val_macro_f1; ties: the first by run name) over every backbone, regime and "
                   "loss of the family. The test split is never used to choose. Test scores from evaluate_vision's "
                   "eval.npz: accuracy, macro-F1 over every class, AUC (positive class for two classes, macro "
                   f"one-vs-rest otherwise), as in metrics/vision. {draws}."),
        "goal": ("The run chosen on validation over both families, against the best 28 px entry of the MedMNIST v2 / "
                 "MedMNIST+ tables (goal_vision.anchors): met when its test accuracy and AUC are both above the "
                 "anchors (point estimates); 'CI lower bound above' when the 95% CI's lower end is above too."),
        "anchors": "Each family's chosen run against the anchors, with the same two calls.",
        "imagenet_vs_cifar": (f"ImageNet-chosen run minus CIFAR-chosen run on the same test images; {draws}, so the "
                              "CI is paired. 'separates': the CI excludes 0."),
        "frozen_vs_finetune": (f"{cfg.regime_model}'s frozen-backbone and fine-tuned runs per dataset and loss: test "
                               f"scores and the paired difference finetune minus frozen ({draws}); validation "
                               "macro-F1 of each from train.json. Training time is not recorded in train.json: see the "
                               "runs in MLflow."),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="artifacts/vision", help="folder of the trained and evaluated runs")
    ap.add_argument("--metrics", default="metrics/analysis/goal_vision.json")
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    t0 = time.perf_counter()
    runs = find_runs(Path(args.runs))
    metrics = analyse(runs, cfg, Path(args.runs))
    metrics["timings_s"] = {"total_s": round(time.perf_counter() - t0, 1)}
    write_json(args.metrics, metrics)
    print(f"goal_vision: {len(runs)} runs -> {args.metrics}")
    for k, text in metrics["readings"].items():
        print(f"  {k}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
