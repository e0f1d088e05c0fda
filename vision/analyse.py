"""Stage analyse_vision: what the trained vision networks learned, read without retraining.

    python -m vision.analyse [--params params.yaml] [--runs artifacts/vision] [--data data/vision]

For every trained run (artifacts/vision/<dataset>-<model>-<regime>-<loss>/ with train.json, model.keras
and eval.npz):
  robustness  accuracy and AUC (macro one-vs-rest when multi-class) on the test images under Gaussian
              noise (sigma on the 0..255 scale) and Gaussian blur (sigma in pixels, per image and
              channel), five severities each, clipped to 0..255; 95% CIs over images, the same draws
              for every run and severity (paired). Summarised per (model, regime): mean accuracy and
              AUC drop under noise vs under blur, over datasets, losses and severities. Default
              severities: CIFAR-10-C's (Hendrycks & Dietterich 2019; its 32 px images are the closest
              to 28 px): noise 0.04..0.10 x 255, blur 0.4..1.0 px.
  top-k       top-1/2/3 accuracy of the multi-class (>= 3 classes) runs, from eval.npz.
  Grad-CAM    maps of the last backbone conv block with a map side >= gradcam_min_side, for the most
              confident correct and wrong test images of each class (gradcam/<run>.png).
  capacity    parameters and FLOPs per image (pipeline.deploy.layer_costs); dead ReLU units per layer
              on training images (pipeline.analysis.dead_units).
Scores are the models' own outputs (before evaluate_vision's temperature; the clean accuracy equals its).
Outputs: metrics/analysis/vision.json (numbers and plain-words readings), artifacts/analysis/vision/
(figures, run.json with provenance and wall times). Runs of one dataset share the predictions of their
identical leading layers (the frozen backbone blocks), so each corrupted set is pushed through them once.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline import clinical, evaluation
from pipeline.io import atomic_path, read_json, write_json
from pipeline.params import ParamsError, load_section

RUN_KEYS = ("dataset", "model", "regime", "loss")
TOPK = (1, 2, 3)
BATCH = 128


@dataclass(frozen=True)
class Config:
    seed: int = 0
    bootstrap: int = 200                      # image-bootstrap resamples for the 95% CIs
    max_images: int | None = None             # first N test images per dataset; None = the full test sets
    noise_sigma: tuple[float, ...] = (10.2, 15.3, 20.4, 22.95, 25.5)   # CIFAR-10-C gaussian_noise x 255
    blur_sigma: tuple[float, ...] = (0.4, 0.6, 0.7, 0.8, 1.0)          # CIFAR-10-C gaussian_blur, pixels
    gradcam_per_class: int = 2                # correct and as many wrong test images per class
    gradcam_min_side: int = 4                 # CAM layer: last conv block whose map side is >= this
    dead_images: int = 256                    # training images for the dead-ReLU count

    def validate(self) -> None:
        if self.bootstrap < 1 or self.gradcam_per_class < 0 or self.gradcam_min_side < 1 or self.dead_images < 1:
            raise ParamsError("bootstrap, gradcam_min_side and dead_images must be >= 1, gradcam_per_class >= 0")
        if self.max_images is not None and self.max_images < 1:
            raise ParamsError(f"max_images must be null or >= 1, got {self.max_images}")
        for key in ("noise_sigma", "blur_sigma"):
            values = getattr(self, key)
            if not values or any(v <= 0 for v in values) or list(values) != sorted(values):
                raise ParamsError(f"{key} must be increasing positive severities, got {list(values)}")


# ----------------------------------------------------------------------------------- corruptions

def gaussian_noise(x, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """x + N(0, sigma^2) per pixel (0..255 scale), clipped to 0..255; float32. sigma 0: x unchanged."""
    x = np.asarray(x, np.float32)
    if sigma == 0:
        return x.copy()
    return np.clip(x + rng.normal(0.0, sigma, x.shape).astype(np.float32), 0, 255)


def gaussian_blur(x, sigma: float) -> np.ndarray:
    """Gaussian filter of width sigma pixels over each image's rows and columns (channels and images
    apart; scipy.ndimage.gaussian_filter, reflect borders), clipped to 0..255; float32."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(x, np.float32)
    if sigma == 0:
        return x.copy()
    return np.clip(gaussian_filter(x, sigma=(0, sigma, sigma, 0)), 0, 255)


def corrupted(x, kind: str, sigma: float, seed: int) -> np.ndarray:
    if kind == "noise":
        return gaussian_noise(x, sigma, np.random.default_rng(seed))
    if kind == "blur":
        return gaussian_blur(x, sigma)
    raise ValueError(f"unknown corruption '{kind}'; valid: noise, blur")


# ------------------------------------------------------------------------------------- statistics

def with_ci(values: np.ndarray, draws: np.ndarray) -> dict:
    """Mean of per-image values and its bootstrap 95% CI."""
    return {"value": float(values.mean()), "ci": clinical.percentile(values[draws].mean(axis=1))}


def auc_draws(y, probs, draws) -> np.ndarray:
    """pipeline.evaluation.roc_auc on every bootstrap draw at once (NaN where undefined): the weighted
    Mann-Whitney statistic (ties count one half), weights = how often each image was drawn. Binary: the
    class-1 column; multi-class: the mean over the classes present in the draw of one-vs-rest AUCs."""
    y, probs, draws = np.asarray(y, np.int64), np.asarray(probs, np.float64), np.asarray(draws)
    n, n_draws = len(y), len(draws)
    w = np.bincount((draws + n * np.arange(n_draws)[:, None]).ravel(), minlength=n_draws * n)
    w = w.reshape(n_draws, n).astype(np.float64)
    aucs = []
    for k in ([1] if probs.shape[1] == 2 else range(probs.shape[1])):
        values, inverse = np.unique(probs[:, k], return_inverse=True)
        onehot = np.zeros((n, len(values)))
        onehot[np.arange(n), inverse] = 1.0
        pos, neg = w @ (onehot * (y == k)[:, None]), w @ (onehot * (y != k)[:, None])
        below = np.cumsum(neg, axis=1) - neg
        den = pos.sum(axis=1) * neg.sum(axis=1)
        aucs.append(np.where(den > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / np.where(den > 0, den, 1), np.nan))
    aucs = np.array(aucs)
    defined = np.isfinite(aucs).any(axis=0)
    out = np.full(n_draws, np.nan)
    out[defined] = np.nanmean(aucs[:, defined], axis=0)
    return out


def score(y, probs, draws, clean_correct=None, clean_auc=None) -> dict:
    """Accuracy and AUC with CIs; with the clean results, the (paired) drops from clean."""
    pred = np.asarray(probs).argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    out = {"accuracy": with_ci(correct, draws),
           "predicted_share": {str(k): float(np.mean(pred == k)) for k in range(np.shape(probs)[1])},
           "auc": {"value": evaluation.roc_auc(y, probs),
                   "ci": clinical.percentile(auc_draws(y, probs, draws))}}
    if clean_correct is not None:
        out["accuracy_drop"] = with_ci(clean_correct - correct, draws)
        auc = out["auc"]["value"]
        out["auc_drop"] = None if auc is None or clean_auc is None else clean_auc - auc
    return out


# ----------------------------------------------------------------------------- shared prediction

def inference_chain(model) -> list:
    """The classifier's layers as one chain, without the augmentation layers (identity at inference)."""
    from pipeline.saliency import layer_chain

    return [layer for layer in layer_chain(model) if not type(layer).__name__.startswith("Random")]


def same_layer(a, b) -> bool:
    if a is b:
        return True
    ca, cb = ({k: v for k, v in layer.get_config().items() if k != "trainable"} for layer in (a, b))
    if type(a) is not type(b) or ca != cb:
        return False
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(u, v) for u, v in zip(wa, wb))


@dataclass
class Node:
    """Layers every run below this node shares; `leaves`: runs whose chain ends here."""
    layers: list
    leaves: list = field(default_factory=list)
    children: list = field(default_factory=list)
    models: dict = field(default_factory=dict)   # input shape -> built chain model

    def predict(self, x, batch: int = BATCH) -> dict:
        if self.layers:
            from pipeline.saliency import chain_model

            shape = tuple(x.shape[1:])
            if shape not in self.models:
                self.models[shape] = chain_model(self.layers, shape)
            x = np.asarray(self.models[shape].predict(x, batch_size=batch, verbose=0))
        out = {run: x.astype(np.float64) for run in self.leaves}
        for child in self.children:
            out.update(child.predict(x, batch))
        return out


def prefix_tree(chains: dict) -> Node:
    """A trie of the runs' layer chains: identical leading layers (same config and weights) are one node."""
    seqs = list(chains.values())
    p = 0
    while all(len(c) > p for c in seqs) and all(same_layer(seqs[0][p], c[p]) for c in seqs[1:]):
        p += 1
    node = Node(list(seqs[0][:p]), [run for run, c in chains.items() if len(c) == p])
    groups: list[dict] = []
    for run, chain in chains.items():
        if len(chain) == p:
            continue
        for g in groups:
            if same_layer(next(iter(g.values()))[0], chain[p]):
                g[run] = chain[p:]
                break
        else:
            groups.append({run: chain[p:]})
    node.children = [prefix_tree(g) for g in groups]
    return node


# -------------------------------------------------------------------------------------- the stage

def find_runs(root: Path) -> list[dict]:
    """Every trained and evaluated run under root: {name, dir, trained (train.json), dataset, model, ...}."""
    runs = []
    for train_json in sorted(Path(root).glob("*/train.json")):
        folder = train_json.parent
        if not (folder / "model.keras").is_file() or not (folder / "eval.npz").is_file():
            continue
        trained = read_json(train_json)
        missing = [k for k in RUN_KEYS if k not in trained]
        if missing:
            raise ValueError(f"{train_json}: missing {missing} (written by train_vision)")
        runs.append({"name": folder.name, "dir": folder, "trained": trained, **{k: trained[k] for k in RUN_KEYS}})
    if not runs:
        raise FileNotFoundError(f"{root}: no trained runs (*/train.json + model.keras + eval.npz); "
                                "run train_vision and evaluate_vision first")
    return runs


def robustness(runs, models, chains, x, y, cfg: Config, name: str) -> tuple[dict, dict]:
    """Per run: clean and corrupted scores; also the clean probabilities (run -> (n, k))."""
    tree = prefix_tree(chains)
    check = tree.predict(x[:8])
    for r in runs:
        direct = np.asarray(models[r["name"]].predict(x[:8], verbose=0), np.float64)
        if not np.allclose(check[r["name"]], direct, atol=1e-4):
            raise RuntimeError(f"{r['name']}: the re-wired layer chain disagrees with model.predict")
    draws = np.stack(list(clinical.group_draws(np.arange(len(y)), cfg.bootstrap, cfg.seed)))
    clean = tree.predict(x)
    out = {run: {"clean": score(y, p, draws)} for run, p in clean.items()}
    clean_correct = {run: (p.argmax(axis=1) == y).astype(np.float64) for run, p in clean.items()}
    for kind, sigmas in (("noise", cfg.noise_sigma), ("blur", cfg.blur_sigma)):
        for s, sigma in enumerate(sigmas, start=1):
            probs = tree.predict(corrupted(x, kind, sigma, seed=_seed(cfg.seed, name, s)))
            for run, p in probs.items():
                out[run].setdefault(kind, {})[f"s{s}"] = {"sigma": sigma, **score(
                    y, p, draws, clean_correct[run], out[run]["clean"]["auc"]["value"])}
    return out, clean


def _seed(seed: int, name: str, severity: int) -> int:
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity]).generate_state(1)[0])


def summarise(runs, rob: dict, cfg: Config) -> dict:
    """Per model-regime: mean accuracy/AUC drop under noise and blur (over datasets, losses, severities)."""
    groups = defaultdict(list)
    for r in runs:
        groups[f"{r['model']}-{r['regime']}"].append(rob[r["name"]])
    out = {}
    for key, items in sorted(groups.items()):
        row = {"n_runs": len(items)}
        for kind, sigmas in (("noise", cfg.noise_sigma), ("blur", cfg.blur_sigma)):
            sev = [f"s{s}" for s in range(1, len(sigmas) + 1)]
            acc = np.array([[it[kind][s]["accuracy_drop"]["value"] for s in sev] for it in items])
            auc = np.array([[np.nan if it[kind][s]["auc_drop"] is None else it[kind][s]["auc_drop"] for s in sev]
                            for it in items])
            row[f"{kind}_accuracy_drop"] = float(acc.mean())
            row[f"{kind}_auc_drop"] = float(np.nanmean(auc)) if np.isfinite(auc).any() else None
            row[f"{kind}_accuracy_drop_by_severity"] = dict(zip(sev, acc.mean(axis=0).round(6).tolist()))
        out[key] = row
    return out


def by_dataset(runs, rob: dict, cfg: Config) -> dict:
    """Per dataset: mean accuracy and AUC drop over its runs at the strongest severity of each corruption."""
    out = {}
    for ds in sorted({r["dataset"] for r in runs}):
        items = [rob[r["name"]] for r in runs if r["dataset"] == ds]
        row = {"n_runs": len(items)}
        for kind, sigmas in (("noise", cfg.noise_sigma), ("blur", cfg.blur_sigma)):
            top = [it[kind][f"s{len(sigmas)}"] for it in items]
            aucs = [t["auc_drop"] for t in top if t["auc_drop"] is not None]
            row[f"{kind}_top_accuracy_drop"] = float(np.mean([t["accuracy_drop"]["value"] for t in top]))
            row[f"{kind}_top_auc_drop"] = float(np.mean(aucs)) if aucs else None
            clean = np.mean([list(it["clean"]["predicted_share"].values()) for it in items], axis=0)
            shifted = np.mean([list(t["predicted_share"].values()) for t in top], axis=0)
            k = int(np.argmax(np.abs(shifted - clean)))
            row[f"{kind}_top_most_shifted_class"] = k
            row[f"{kind}_top_share_clean"], row[f"{kind}_top_share"] = float(clean[k]), float(shifted[k])
        out[ds] = row
    return out


def topk(runs, cfg: Config) -> dict:
    """Top-k accuracy (k < number of classes) of every run with >= 3 classes, from its eval.npz."""
    from pipeline.analysis import topk_accuracy

    out = {}
    for r in runs:
        with np.load(r["dir"] / "eval.npz") as npz:
            y, probs = npz["y_true"].astype(np.int64), npz["probs"]
        if probs.shape[1] >= 3:
            out[r["name"]] = topk_accuracy(y, probs, [k for k in TOPK if k < probs.shape[1]],
                                           groups=np.arange(len(y)), n_boot=cfg.bootstrap, seed=cfg.seed)
    return out


def gradcam(run: dict, chain, x, y, probs, cfg: Config, classes, out_dir: Path) -> dict:
    from pipeline import saliency

    index = saliency.cam_layer_index(chain, cfg.gradcam_min_side)
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    picks = {}  # (class, "correct"/"wrong") -> image indices, most confident first
    for c in range(probs.shape[1]):
        for kind, mask in (("correct", (y == c) & (pred == c)), ("wrong", (y == c) & (pred != c))):
            idx = np.flatnonzero(mask)
            picks[c, kind] = idx[np.argsort(-conf[idx], kind="stable")][:cfg.gradcam_per_class]
    chosen = np.concatenate(list(picks.values())).astype(np.int64)
    maps = saliency.upsample(saliency.grad_cam(chain, x[chosen], pred[chosen], index), x.shape[1:3]) \
        if len(chosen) else np.zeros((0, *x.shape[1:3]))
    lookup = dict(zip(chosen.tolist(), maps))
    frac = {}
    for kind in ("correct", "wrong"):
        kept = [lookup[int(i)] for (_, k), idx in picks.items() if k == kind for i in idx]
        shares = saliency.centre_fraction(np.stack(kept)) if kept else np.array([np.nan])
        frac[kind] = float(np.nanmean(shares)) if np.isfinite(shares).any() else None
    figure = out_dir / "gradcam" / f"{run['name']}.png"
    _plot_cams(figure, picks, lookup, x, pred, conf, classes, f"{run['name']}: Grad-CAM at {chain[index].name}")
    return {"layer": chain[index].name, "map_side": [int(d) for d in chain[index].output.shape[1:3]],
            "n_images": int(len(chosen)),
            **{f"centre_fraction_{k}": v for k, v in frac.items()}}


def _plot_cams(path: Path, picks, lookup, x, pred, conf, classes, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cls = max(c for c, _ in picks) + 1
    cols = max((len(picks[c, "correct"]) + len(picks[c, "wrong"]) for c in range(n_cls)), default=0)
    fig, axes = plt.subplots(n_cls, max(cols, 1), figsize=(1.6 * max(cols, 1), 1.7 * n_cls), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for c in range(n_cls):
        for j, (kind, i) in enumerate([("correct", i) for i in picks[c, "correct"]] +
                                      [("wrong", i) for i in picks[c, "wrong"]]):
            ax, img = axes[c, j], x[i].astype(np.float32) / 255.0
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.imshow(lookup[int(i)], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.set_title(f"{str(classes[c])[:10]}{' ok' if kind == 'correct' else ' -> ' + str(classes[pred[i]])[:8]}"
                         f" {conf[i]:.2f}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def capacity(model, chain, x_train, cfg: Config) -> dict:
    """Parameters and FLOPs per image; dead ReLU units on the first `dead_images` training images.

    pipeline.analysis.dead_units probes a model's own ReLU layers, so it is handed a fresh flat copy
    of the inference chain (preprocessing, backbone and head in one model, the same weights)."""
    import keras

    from pipeline.analysis import dead_units
    from pipeline.deploy import layer_costs
    from pipeline.saliency import chain_model

    total = layer_costs(model)[-1]
    flat = chain_model(chain, x_train.shape[1:], name="classifier")
    clone = keras.models.clone_model(flat)
    clone.set_weights(flat.get_weights())
    dead = dead_units(clone, x_train[:cfg.dead_images], BATCH)
    units = sum(v["units"] for v in dead.values())
    return {"params": int(total["params"]), "flops_per_image": int(total["flops"]),
            "relu_units": int(units), "dead_fraction": sum(v["dead"] for v in dead.values()) / units if units else None,
            "dead_fraction_by_layer": {k.split("/", 1)[1]: v["fraction"] for k, v in dead.items()}}


def readings(summary: dict, top: dict, cams: dict, cap: dict, runs, per_data: dict | None = None,
             classes: dict | None = None) -> dict:
    out = {}
    worst = [(v[f"{kind}_top_accuracy_drop"], ds, kind, v[f"{kind}_top_auc_drop"])
             for ds, v in (per_data or {}).items() for kind in ("noise", "blur")]
    if worst:
        acc, ds, kind, auc = max(worst)
        v = per_data[ds]
        name = (classes or {}).get(ds, [])
        k = v[f"{kind}_top_most_shifted_class"]
        label = name[k] if k < len(name) else k
        text = (f"At the strongest severity, accuracy falls most on {ds} under {kind}: by {acc:.3f} on average over "
                f"its runs (the share of images called '{label}' goes from {v[f'{kind}_top_share_clean']:.2f} to "
                f"{v[f'{kind}_top_share']:.2f}), while its AUC falls by {_f(auc)}")
        if auc is not None and acc >= 0.05 and acc > 3 * max(auc, 0.0):
            text += (": the ranking of the images mostly survives while the calls move across the decision threshold "
                     "(the operating point shifts more than information is lost)")
        out["strongest_effect"] = text + "."
    lines = [f"{k} {v['noise_accuracy_drop']:+.3f} under noise vs {v['blur_accuracy_drop']:+.3f} under blur "
             f"(AUC {_f(v['noise_auc_drop'])} vs {_f(v['blur_auc_drop'])}; {v['n_runs']} runs)" for k, v in summary.items()]
    out["noise_vs_blur"] = ("Mean drop from clean accuracy over datasets, losses and the five severities (negative: "
                            "accuracy rose): " + "; ".join(lines) + ".")
    regimes = sorted({k.split("-", 1)[1] for k in summary})
    models = sorted({k.split("-", 1)[0] for k in summary})
    cmp = []
    for regime in regimes:
        have = {m: summary[f"{m}-{regime}"] for m in models if f"{m}-{regime}" in summary}
        if len(have) >= 2:
            for kind in ("noise", "blur"):
                worst = max(have, key=lambda m: have[m][f"{kind}_accuracy_drop"])
                cmp.append(f"{regime}: {worst} is hurt most by {kind}")
    for m in models:
        if all(f"{m}-{r}" in summary for r in ("frozen", "finetune")):
            fz, ft = summary[f"{m}-frozen"], summary[f"{m}-finetune"]
            cmp.append(f"{m}: fine-tuning changes the noise drop by {ft['noise_accuracy_drop'] - fz['noise_accuracy_drop']:+.3f} "
                       f"and the blur drop by {ft['blur_accuracy_drop'] - fz['blur_accuracy_drop']:+.3f}")
    out["backbones_and_regimes"] = ("; ".join(cmp) + ". A drop much larger under noise than under blur means the "
                                    "decision leans on fine, high-frequency (texture-like) detail that added noise "
                                    "swamps while mild blur keeps the coarse shape; a balanced or blur-dominated drop "
                                    "points to coarser cues. Accuracy drops can hide behind a class prior (a network "
                                    "that falls back to the majority class keeps its accuracy): read the AUC drops too.")
    if top:
        best = max(top, key=lambda r: top[r]["top1"]["value"])
        gain = np.mean([v["top2"]["value"] - v["top1"]["value"] for v in top.values()])
        out["topk"] = (f"Best multi-class top-1: {best} at {top[best]['top1']['value']:.3f}, top-2 "
                       f"{top[best]['top2']['value']:.3f}, top-3 {top[best].get('top3', {}).get('value', float('nan')):.3f}; "
                       f"the second guess adds {gain:.3f} accuracy on average over {len(top)} runs (graded "
                       f"classes: a near miss is usually the neighbouring grade).")
    by_model = defaultdict(list)
    for r in runs:
        v = cams.get(r["name"], {}).get("centre_fraction_correct")
        if v is not None:
            by_model[r["model"]].append(v)
    if by_model:
        out["gradcam"] = "Share of Grad-CAM mass in the central quarter of the image (uniform map = 0.25), correct " \
                         "images: " + ", ".join(f"{m} {np.mean(v):.2f}" for m, v in sorted(by_model.items())) + "."
    per_model = {r["model"]: cap[r["name"]] for r in runs if r["name"] in cap}
    out["capacity"] = "Per image: " + ", ".join(f"{m} {c['params'] / 1e6:.1f} M params, {c['flops_per_image'] / 1e9:.2f} GFLOPs"
                                                for m, c in sorted(per_model.items())) + "."
    dead = defaultdict(list)
    for r in runs:
        if cap.get(r["name"], {}).get("dead_fraction") is not None:
            dead[f"{r['model']}-{r['regime']}"].append(cap[r["name"]]["dead_fraction"])
    if dead:
        out["dead_units"] = ("Dead ReLU units (never positive on the training images probed), mean share: "
                             + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in sorted(dead.items())) + ".")
    return out


def _f(v):
    return "n/a" if v is None else f"{v:+.3f}"


def analyse(runs, data_dir: Path, out_dir: Path, cfg: Config) -> tuple[dict, dict]:
    import keras

    from vision import dataset, layers  # noqa: F401  (layers: registers the custom layers for loading)

    rob, cams, cap, clock, n_images, class_names = {}, {}, {}, defaultdict(float), {}, {}
    by_data = defaultdict(list)
    for r in runs:
        by_data[r["dataset"]].append(r)
    for name, group in sorted(by_data.items()):
        limits = {r["trained"].get("limit") for r in group}
        if len(limits) > 1:
            raise ValueError(f"runs of '{name}' were trained with different image limits {sorted(limits, key=str)}; "
                             "their test sets differ: retrain them alike")
        limit = limits.pop()
        splits, meta = dataset.load(data_dir, name, limit)
        for r in group:
            if r["trained"].get("data_sha256") not in (None, meta["sha256"]):
                raise ValueError(f"{r['dir'] / 'train.json'}: trained on other data than {data_dir / name}.npz")
        test, class_names[name] = splits["test"], list(meta["class_names"])
        n = len(test.y) if cfg.max_images is None else min(cfg.max_images, len(test.y))
        x, y, n_images[name] = test.x[:n], test.y[:n], n
        models = {r["name"]: keras.models.load_model(r["dir"] / "model.keras", compile=False) for r in group}
        t = time.perf_counter()
        chains = {run: inference_chain(m) for run, m in models.items()}
        scores, clean = robustness(group, models, chains, x, y, cfg, name)
        rob.update(scores)
        clock["robustness_s"] += time.perf_counter() - t
        t = time.perf_counter()
        for r in group:
            cams[r["name"]] = gradcam(r, chains[r["name"]], x, y, clean[r["name"]], cfg, meta["class_names"], out_dir)
        clock["gradcam_s"] += time.perf_counter() - t
        t = time.perf_counter()
        for r in group:
            cap[r["name"]] = capacity(models[r["name"]], chains[r["name"]], splits["train"].x, cfg)
        clock["capacity_s"] += time.perf_counter() - t
        keras.backend.clear_session()
    t = time.perf_counter()
    top = topk(runs, cfg)
    summary = summarise(runs, rob, cfg)
    per_data = by_dataset(runs, rob, cfg)
    _plot_robustness(out_dir / "robustness.png", runs, rob, cfg)
    clock["summary_s"] += time.perf_counter() - t
    metrics = {"corruptions": {"noise": {"sigma": list(cfg.noise_sigma), "unit": "intensity, 0..255 scale"},
                               "blur": {"sigma": list(cfg.blur_sigma), "unit": "pixels"}},
               "n_test_images": n_images, "class_names": class_names, "robustness_summary": summary,
               "robustness_by_dataset": per_data, "robustness": rob, "topk": top,
               "gradcam": cams, "capacity": cap, "readings": readings(summary, top, cams, cap, runs, per_data, class_names),
               "method": methods(cfg)}
    return metrics, {"seconds": dict(clock)}


def methods(cfg: Config) -> dict:
    """How each part was measured, in plain words (shown beside it in the report)."""
    return {
        "robustness": (f"Test images corrupted at five severities, clipped to 0..255: Gaussian noise of sd "
                       f"{', '.join(f'{v:g}' for v in cfg.noise_sigma)} on the 0..255 scale (one draw per severity, "
                       f"the same for every run) and Gaussian blur of sd {', '.join(f'{v:g}' for v in cfg.blur_sigma)} "
                       "pixels (each image and channel apart); the CIFAR-10-C ladders, set for 32 px images. Accuracy "
                       "and AUC (macro one-vs-rest when multi-class) of the model's own outputs; 95% CIs from "
                       f"{cfg.bootstrap} image-bootstrap draws, the same draws for every run and severity; the accuracy "
                       "drop's CI is paired (same images clean and corrupted)."),
        "topk": f"Top-k accuracy from evaluate_vision's test probabilities (eval.npz), {cfg.bootstrap} image-bootstrap draws.",
        "gradcam": (f"Grad-CAM (Selvaraju et al. 2017) at the last backbone conv block whose map side is at least "
                    f"{cfg.gradcam_min_side} (VGG16's last conv is 2x2 at 32 px, so block4_conv3), for the predicted "
                    f"class's pre-softmax score; the {cfg.gradcam_per_class} most confident correct and wrong test images "
                    "of each true class. Centre share: the map's mass inside the central square of half the side."),
        "capacity": ("Parameters and FLOPs per image (2 x multiply-accumulates of conv and dense layers, "
                     "BatchNorm 2 per element) from pipeline.deploy.layer_costs."),
        "dead_units": (f"A ReLU unit (channel) is dead when it is never positive at any position on the first "
                       f"{cfg.dead_images} training images (pipeline.analysis.dead_units)."),
    }


def _plot_robustness(path: Path, runs, rob: dict, cfg: Config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in runs})
    fig, axes = plt.subplots(len(datasets), 2, figsize=(8, 2.6 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        for j, (kind, sigmas) in enumerate((("noise", cfg.noise_sigma), ("blur", cfg.blur_sigma))):
            ax = axes[i, j]
            groups = defaultdict(list)
            for r in runs:
                if r["dataset"] == ds:
                    res = rob[r["name"]]
                    groups[f"{r['model']}-{r['regime']}"].append(
                        [res["clean"]["accuracy"]["value"]] + [res[kind][f"s{s}"]["accuracy"]["value"]
                                                               for s in range(1, len(sigmas) + 1)])
            for key, vals in sorted(groups.items()):
                ax.plot([0, *sigmas], np.mean(vals, axis=0), marker="o", label=key)
            ax.set_title(f"{ds}: Gaussian {kind}", fontsize=9)
            ax.set_xlabel("sigma (0..255)" if kind == "noise" else "sigma (pixels)", fontsize=8)
            ax.set_ylabel("accuracy (mean over losses)", fontsize=8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="artifacts/vision", help="folder of the trained runs")
    ap.add_argument("--data", default="data/vision")
    ap.add_argument("--out", default="artifacts/analysis/vision")
    ap.add_argument("--metrics", default="metrics/analysis/vision.json")
    args = ap.parse_args(argv)
    cfg = load_section("analyse_vision", Config, args.params)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    runs = find_runs(Path(args.runs))
    metrics, info = analyse(runs, Path(args.data), Path(args.out), cfg)
    info["seconds"]["total_s"] = time.perf_counter() - start
    metrics["timings_s"] = {k: round(v, 1) for k, v in info["seconds"].items()}
    write_json(Path(args.out) / "run.json", {"params": asdict(cfg), "runs": [r["name"] for r in runs],
                                             "cpu_count": os.cpu_count(), **info})
    write_json(args.metrics, metrics)
    print(f"analyse_vision: {len(runs)} runs in {info['seconds']['total_s']:.0f} s -> {args.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
