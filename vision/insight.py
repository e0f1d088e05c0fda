"""Stage insight_vision (issue 14, vision arm): four studies that train small variants and read them once on test.

    python -m vision.insight [--params params.yaml] [--data data/vision] [--runs artifacts/vision]
                             [--out artifacts/analysis/insight_vision] [--metrics metrics/analysis/insight_vision.json]

  smoothing  label smoothing eps in `smoothing.eps` on one frozen-backbone head (default: the CIFAR-pretrained
             AlexNet on PneumoniaMNIST), trained on the cached backbone features exactly as vision.transfer does
             (vision_train's head_fit, head_units, dropout, seed). A temperature per eps is fitted on validation;
             test ECE, NLL, macro-F1, accuracy and AUC before and after it; does smoothing replace temperature
             scaling (ECE at eps > 0 before TS against eps = 0 after TS, paired) and does it move top-1 calls
             (share of test images whose argmax differs from eps = 0).
  kernels    AlexNet's first layer (11x11 stride 4, valid) against a stack of `scratch.stack_kernels` (7x7 stride 1
             -> BatchNorm -> ReLU -> 5x5 stride 4: the same receptive field 11 and stride 4, so the same output
             resolution), the rest of the network the registered alexnet builder's (stem "imagenet"), both
             trained from scratch from the same seed on one medical set upsampled inside the model to
             `scratch.image_size`. Parameters, FLOPs per image, first-block activation memory, output resolution,
             test accuracy / macro-F1 / AUC and the paired differences.
  leaky      the same from-scratch 11x11 network with every ReLU (trunk and head) replaced by leaky_relu
             (pipeline.insight.with_activation), started from the same initial weights: units never positive on
             training images per activation layer, and test macro-F1 with a paired CI.
  filters    first-conv-layer filters (ZFNet-style grids) of the CIFAR-pretrained backbones, one fine-tuned run of
             each and the two from-scratch first layers of `kernels`, with the weight change from pretrained to
             fine-tuned.

Choices (checkpoints, temperatures) use validation only; the test split is read once per variant; 95% CIs from
an image bootstrap (`bootstrap` draws, the same draws for every variant: differences are paired). Every fit goes
through pipeline.training.fit with its checkpoints under artifacts/checkpoints/vision/insight/<variant>, so a
rerun restores instead of retraining. Outputs: the metrics JSON (readings, method texts, dict-of-dicts parts
{variant: {metric: {"value", "ci95": {"lo", "hi"}}}}) and PNG figures + run.json under --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io import atomic_path, fingerprint, read_json, write_json
from pipeline.params import ParamsError, load_section
from pipeline.training import FitConfig

SECTION = "insight_vision"
STUDIES = ("smoothing", "kernels", "leaky", "filters")
CHECKPOINTS = Path("artifacts/checkpoints/vision/insight")
METRICS = ("accuracy", "macro_f1", "auc", "ece", "nll")


# ------------------------------------------------------------------------------------------ params

@dataclass(frozen=True)
class Smoothing:
    dataset: str = "pneumoniamnist"
    model: str = "alexnet"                     # backbone whose frozen head is trained (cached features)
    eps: tuple[float, ...] = (0.0, 0.05, 0.1)  # label smoothing of the plain CE loss; must include 0

    def validate(self) -> None:
        if 0.0 not in self.eps or any(not 0 <= e < 1 for e in self.eps) or len(set(self.eps)) != len(self.eps):
            raise ParamsError(f"smoothing.eps: distinct values in [0, 1) including 0, got {list(self.eps)}")


@dataclass(frozen=True)
class Scratch:
    """The from-scratch AlexNet of the kernels and leaky studies."""
    dataset: str = "pneumoniamnist"
    image_size: int = 96                        # side the 28 px images are upsampled to inside the model
    stack_kernels: tuple[int, int] = (7, 5)     # first kernel (stride 1) and second kernel (conv1's stride)
    mid_filters: int = 48                       # channels between the two stacked convs (full setting: 96)
    head_units: tuple[int, ...] = (256,)
    dropout: float = 0.5
    negative_slope: float = 0.01                # leaky_relu's slope
    train_limit: int | None = None              # first N training images (null = all)
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=5, batch_size=64, learning_rate=1e-3,
                                                            patience=2, min_delta=1e-3))

    def validate(self) -> None:
        k1, k2 = self.stack_kernels
        if k1 < 1 or k2 < 1 or k1 + k2 - 1 != 11:
            raise ParamsError(f"scratch.stack_kernels: two kernels with k1 + k2 - 1 = 11 (AlexNet's receptive "
                              f"field), got {list(self.stack_kernels)}")
        if self.image_size < 67:
            raise ParamsError(f"scratch.image_size must be >= 67 (AlexNet's 11x11/4 stem needs it), got {self.image_size}")
        if self.mid_filters < 1 or not 0 <= self.dropout < 1 or self.negative_slope <= 0:
            raise ParamsError("scratch: mid_filters >= 1, dropout in [0, 1), negative_slope > 0")
        if self.train_limit is not None and self.train_limit < 1:
            raise ParamsError(f"scratch.train_limit must be null or >= 1, got {self.train_limit}")


@dataclass(frozen=True)
class Filters:
    models: tuple[str, ...] = ("alexnet", "vgg16")   # CIFAR-pretrained backbones shown
    finetune_dataset: str = "pneumoniamnist"           # fine-tuned run <dataset>-<model>-finetune-<loss>
    finetune_loss: str = "ce"
    max_filters: int = 96                              # filters drawn per grid


@dataclass(frozen=True)
class Config:
    seed: int = 0
    bootstrap: int = 1000        # image-bootstrap draws for the 95% CIs
    ece_bins: int = 15
    dead_images: int = 512       # training images probed for never-positive units
    studies: tuple[str, ...] = STUDIES
    smoothing: Smoothing = field(default_factory=Smoothing)
    scratch: Scratch = field(default_factory=Scratch)
    filters: Filters = field(default_factory=Filters)

    def validate(self) -> None:
        if self.bootstrap < 1 or self.ece_bins < 1 or self.dead_images < 1:
            raise ParamsError("bootstrap, ece_bins and dead_images must be >= 1")
        bad = [s for s in self.studies if s not in STUDIES]
        if bad or not self.studies:
            raise ParamsError(f"studies: a non-empty subset of {list(STUDIES)}, got {list(self.studies)}")


def load_config(path) -> Config:
    return load_section(SECTION, Config, path)


# -------------------------------------------------------------------------------------- statistics

def draw_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) image indices drawn with replacement; the draws of pipeline.clinical.group_draws for
    one group per image (so every variant scored on the same test set is resampled identically)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, n) for _ in range(n_boot)])


def _weights(draws: np.ndarray, n: int) -> np.ndarray:
    w = np.bincount((draws + n * np.arange(len(draws))[:, None]).ravel(), minlength=len(draws) * n)
    return w.reshape(len(draws), n).astype(np.float64)


def metric_draws(y, probs, draws: np.ndarray, n_bins: int = 15) -> dict:
    """{metric: (value on all images, array of the value on every bootstrap draw)} for accuracy, macro-F1
    (all classes; a class without support or calls in a draw is skipped, as pipeline.evaluation does), AUC
    (pipeline.evaluation.roc_auc; macro one-vs-rest when multi-class), top-label ECE (equal-width bins as
    pipeline.calibration.ece) and NLL (pipeline.calibration.nll)."""
    from pipeline import calibration, evaluation
    from vision.analyse import auc_draws

    y, probs = np.asarray(y, np.int64), np.asarray(probs, np.float64)
    n, k = probs.shape
    w = _weights(draws, n)
    pred = probs.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    nll_i = -np.log(np.clip(probs[np.arange(n), y], 1e-12, 1.0))
    conf = probs.max(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    onehot = np.eye(n_bins)[np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)]
    ece_d = np.abs(w @ (onehot * correct[:, None]) - w @ (onehot * conf[:, None])).sum(axis=1) / n
    f1s = []
    for c in range(k):
        tp, fp, fn = (w @ ((pred == c) & (y == c)), w @ ((pred == c) & (y != c)), w @ ((pred != c) & (y == c)))
        den = 2 * tp + fp + fn
        f1s.append(np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan))
    f1s = np.array(f1s)
    defined = np.isfinite(f1s).any(axis=0)
    f1_d = np.full(len(draws), np.nan)
    f1_d[defined] = np.nanmean(f1s[:, defined], axis=0)
    return {"accuracy": (float(correct.mean()), w @ correct / n),
            "macro_f1": (evaluation.macro_f1(y, pred, list(range(k))), f1_d),
            "auc": (evaluation.roc_auc(y, probs), auc_draws(y, probs, draws)),
            "ece": (calibration.ece(probs, y, n_bins), ece_d),
            "nll": (calibration.nll(probs, y), w @ nll_i / n)}


def ci95(values) -> dict | None:
    vals = np.asarray(values, np.float64)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return None
    return {"lo": float(np.percentile(vals, 2.5)), "hi": float(np.percentile(vals, 97.5))}


def cell(value, draws) -> dict:
    return {"value": None if value is None else float(value), "ci95": ci95(draws)}


def cells(stats: dict) -> dict:
    return {m: cell(*stats[m]) for m in METRICS if m in stats}


def paired(a: dict, b: dict, metric: str, metric_b: str | None = None) -> dict:
    """a[metric] minus b[metric_b] with the CI of the paired bootstrap (same draws for both)."""
    va, da = a[metric]
    vb, db = b[metric_b or metric]
    return cell(None if va is None or vb is None else va - vb, da - db)


def share_changed(pred_a, pred_b, draws) -> dict:
    changed = (np.asarray(pred_a) != np.asarray(pred_b)).astype(np.float64)
    return cell(changed.mean(), _weights(draws, len(changed)) @ changed / len(changed))


def _fmt(c: dict, digits: int = 3) -> str:
    if c is None or c.get("value") is None:
        return "n/a"
    ci = c.get("ci95")
    return f"{c['value']:.{digits}f}" + (f" [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]" if ci else "")


# ---------------------------------------------------------------------------------- receptive field

def receptive_field(layers) -> tuple[int, int]:
    """(receptive field, stride) of a chain of (kernel, stride) layers, input side: r += (k - 1) * j; j *= s."""
    r, j = 1, 1
    for k, s in layers:
        r += (int(k) - 1) * j
        j *= int(s)
    return r, j


def _spatial(layer) -> tuple[int, int] | None:
    """(kernel, stride) of a Conv2D / pooling layer (square), None for other layers."""
    name = type(layer).__name__
    if name == "Conv2D":
        return int(layer.kernel_size[0]), int(layer.strides[0])
    if name in ("MaxPooling2D", "AveragePooling2D"):
        return int(layer.pool_size[0]), int(layer.strides[0])
    return None


def block_geometry(backbone, block: str = "block1") -> dict:
    """Receptive field and stride of `block`'s convolutions (and through its pool), and the output shapes."""
    layers = [layer for layer in backbone.layers if layer.name.startswith(f"{block}_") or
              layer.name.startswith(f"{block}a_")]
    convs = [_spatial(layer) for layer in layers if type(layer).__name__ == "Conv2D"]
    allsp = [g for g in (_spatial(layer) for layer in layers) if g]
    relu = backbone.get_layer(f"{block}_relu")
    out = {"receptive_field": receptive_field(convs)[0], "stride": receptive_field(convs)[1],
           "receptive_field_with_pool": receptive_field(allsp)[0], "stride_with_pool": receptive_field(allsp)[1],
           "output_resolution": "x".join(str(int(d)) for d in relu.output.shape[1:])}
    pool = [layer for layer in layers if type(layer).__name__.endswith("Pooling2D")]
    if pool:
        out["after_pool"] = "x".join(str(int(d)) for d in pool[-1].output.shape[1:])
    return out


# --------------------------------------------------------------------------------------- surgery

def stacked_first_layer(backbone, kernels=(7, 5), mid_filters: int = 48, name: str | None = None):
    """A copy of `backbone` (a chain from the registered alexnet builder) whose block1_conv (k x k, stride s,
    valid) is replaced by conv k1 x k1 stride 1 -> [BatchNorm] -> ReLU -> conv k2 x k2 stride s with
    k1 + k2 - 1 = k: the same receptive field, stride and (valid padding) output resolution. The new first conv
    and its BN/ReLU are named block1a_*, the second keeps the name block1_conv; every other layer is a fresh
    copy of the original's config (fresh weights). Raises ValueError when the model is not such a chain."""
    import keras

    first = next((layer for layer in backbone.layers if layer.name == "block1_conv"), None)
    if first is None or type(first).__name__ != "Conv2D":
        raise ValueError(f"model '{backbone.name}' has no Conv2D 'block1_conv' to split")
    k, s = int(first.kernel_size[0]), int(first.strides[0])
    k1, k2 = (int(v) for v in kernels)
    if k1 + k2 - 1 != k:
        raise ValueError(f"kernels {k1}x{k1} + {k2}x{k2} (stride 1, then {s}) give receptive field {k1 + k2 - 1}, "
                         f"not block1_conv's {k}")
    if first.padding != "valid":
        raise ValueError(f"block1_conv has padding '{first.padding}'; the split keeps the resolution for 'valid' only")
    has_bn = any(layer.name == "block1_bn" for layer in backbone.layers)
    inputs = keras.Input(shape=tuple(backbone.input_shape[1:]), name="image")
    x, prev = inputs, None
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            prev = layer
            continue
        if prev is not None and not isinstance(prev, keras.layers.InputLayer):
            inp = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
            if inp is not prev.output:
                raise ValueError(f"layer '{layer.name}' of '{backbone.name}' does not take '{prev.name}''s output; "
                                 "the surgery needs a chain")
        cfg = layer.get_config()
        if layer is first:
            use_bias = bool(cfg["use_bias"])
            x = keras.layers.Conv2D(mid_filters, k1, strides=1, padding="valid", use_bias=use_bias,
                                    name="block1a_conv")(x)
            if has_bn:
                x = keras.layers.BatchNormalization(name="block1a_bn")(x)
            x = keras.layers.ReLU(name="block1a_relu")(x)
            cfg.update(kernel_size=(k2, k2), strides=(s, s))
        x = layer.__class__.from_config(cfg)(x)
        prev = layer
    return keras.Model(inputs, x, name=name or backbone.name)


def leaky_copy(model, slope: float):
    """pipeline.insight.with_activation(model, 'leaky_relu') with the original's weights (the same start)."""
    from pipeline.insight import with_activation

    out = with_activation(model, "leaky_relu", slope)
    out.set_weights(model.get_weights())
    return out


def _is_activation(layer) -> bool:
    """A layer whose output is an activation that can (ReLU) or cannot (leaky) die."""
    import keras

    from pipeline.analysis import is_relu

    act = getattr(layer, "activation", None)
    return bool(is_relu(layer) or isinstance(layer, keras.layers.LeakyReLU)
                or getattr(act, "__name__", "").startswith("leaky_relu"))


def _activation_layers(model) -> list[str]:
    from pipeline.saliency import layer_chain

    return [layer.name for layer in layer_chain(model) if _is_activation(layer)]


def _rewire(layers, input_shape, keep=lambda layer: False):
    """Call a chain of layers on a fresh input (inference mode, as pipeline.saliency.apply_chain does);
    return (input, output, {name: output of each layer with keep(layer)})."""
    import keras

    from pipeline.saliency import _copies

    inp = keras.Input(shape=tuple(int(d) for d in input_shape))
    t, kept = inp, {}
    for layer in layers:
        k = _copies(layer)
        t = layer([t] * k, training=False) if k else layer(t, training=False)
        if keep(layer):
            kept[layer.name] = t
    return inp, t, kept


def never_positive(model, x, names=None, batch_size: int = 256) -> dict:
    """{layer: {units, dead, fraction}} for the activation layers (`names`, default every ReLU / leaky ReLU) of a
    chain model (nested models flattened): units (channels) whose output is never > 0 on any row of x at any
    position. The same rule as pipeline.analysis.dead_units, which sees plain ReLUs only."""
    import keras
    from keras import ops

    from pipeline.saliency import layer_chain

    chain = layer_chain(model)
    names = list(names) if names is not None else [layer.name for layer in chain if _is_activation(layer)]
    inp, _, kept = _rewire(chain, x.shape[1:], lambda layer: layer.name in names)
    missing = [n for n in names if n not in kept]
    if missing:
        raise ValueError(f"model '{model.name}' has no layer(s) {missing} in its chain")
    peaks = []
    for n in names:
        t = kept[n]
        axes = tuple(range(1, len(t.shape) - 1))
        peaks.append(ops.max(t, axis=axes) if axes else t)
    values = keras.Model(inp, peaks).predict(x, batch_size=batch_size, verbose=0)
    values = values if isinstance(values, (list, tuple)) else [values]
    out = {}
    for n, v in zip(names, values):
        alive = np.asarray(v).max(axis=0) > 0
        out[n] = {"units": int(alive.size), "dead": int((~alive).sum()), "fraction": float((~alive).mean())}
    return out


def backbone_dead_units(model, x) -> dict:
    """pipeline.analysis.dead_units of a classifier's nested backbone, fed the classifier's own preprocessing of
    x: {layer: {...}} (the shared counter, to check never_positive against)."""
    from pipeline.analysis import dead_units
    from vision.models import find_backbone

    backbone = find_backbone(model)
    before = []
    for layer in model.layers:
        if layer is backbone:
            break
        if type(layer).__name__ != "InputLayer":
            before.append(layer)
    inp, out, _ = _rewire(before, x.shape[1:])
    import keras

    pre = keras.Model(inp, out).predict(x, batch_size=256, verbose=0)
    return {k.split("/", 1)[1]: v for k, v in dead_units(backbone, pre).items()}


# ------------------------------------------------------------------------------------------ costs

def costs(model, block: str = "block1") -> dict:
    """Parameters and FLOPs per image (pipeline.deploy.layer_costs: 2 x MACs of conv/dense, BN 2 per element),
    and the first block's share: its parameters, FLOPs and activation values per image (every conv, BN and
    ReLU output of the block before its pool, float32: what training keeps for the backward pass)."""
    from pipeline.deploy import layer_costs

    rows = layer_costs(model)
    total = rows[-1]
    mine = [r for r in rows[:-1] if r["name"].split("/")[-1].startswith((f"{block}_", f"{block}a_"))]
    acts = 0
    largest = 0
    for name, layer in _leaf_layers(model):
        if name.startswith((f"{block}_", f"{block}a_")) and not type(layer).__name__.endswith("Pooling2D"):
            size = int(np.prod([int(d) for d in layer.output.shape[1:]]))
            acts += size
            largest = max(largest, size)
    return {"params": int(total["params"]), "flops_per_image": int(total["flops"]),
            f"{block}_params": int(sum(r["params"] for r in mine)), f"{block}_flops": int(sum(r["flops"] for r in mine)),
            f"{block}_activation_values": acts, f"{block}_activation_kib": acts * 4 / 1024,
            f"{block}_largest_map_values": largest}


def _leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _leaf_layers(layer)
        else:
            yield layer.name, layer


# ------------------------------------------------------------------------------------------- study 1

def study_smoothing(cfg: Config, params_path, data_dir: Path, runs_dir: Path, ckpt: Path, out_dir: Path) -> dict:
    import keras

    from pipeline import calibration, device
    from pipeline.losses import make_loss
    from pipeline.training import fit, predict_probs
    from vision import dataset, train_config
    from vision.checkpoint import load_backbone
    from vision.models import build_head
    from vision.transfer import cached_features, make_classifier

    sm = cfg.smoothing
    tcfg = train_config.load_train(params_path)
    splits, meta = dataset.load(data_dir, sm.dataset, tcfg.limit)
    backbone_dir = runs_dir / "pretrain" / sm.model
    if not (backbone_dir / "backbone.json").is_file():
        raise FileNotFoundError(f"{backbone_dir / 'backbone.json'}: missing; run pretrain_vision@{sm.model}")
    info = read_json(backbone_dir / "backbone.json")
    policy = device.configure(tcfg.mixed_precision)
    data = [meta["sha256"], info["sha256"], tcfg.limit, policy]
    k = meta["n_classes"]
    base = make_classifier(load_backbone(backbone_dir)[0], k, splits["train"].x.shape[1:], tcfg)
    shared = runs_dir.parent / "checkpoints" / "vision" / "features" / f"{fingerprint(*data, tcfg.seed)}.npz"
    train_val = {"train": splits["train"], "val": splits["val"]}
    own = ckpt / "features" / f"{fingerprint(*data, tcfg.seed)}.npz"
    feats = cached_features(base, train_val, shared if shared.is_file() else own, tcfg.head_fit.batch_size * 4)
    feats.update(cached_features(base, {"test": splits["test"]}, ckpt / "features" / f"{fingerprint(*data, 'test')}.npz"))
    y = {s: splits[s].y for s in ("train", "val", "test")}
    draws = draw_indices(len(y["test"]), cfg.bootstrap, cfg.seed)
    results, probs, temps, records = {}, {}, {}, {}
    for eps in sm.eps:
        name = f"eps={eps:g}"
        head_cfg = {**tcfg.head_config("ce"), "label_smoothing": eps}
        head, state = fit(lambda: build_head(feats["train"].shape[1], k, dropout=tcfg.dropout,
                                             head_units=tcfg.head_units),
                          make_loss("ce", label_smoothing=eps), (feats["train"], y["train"]),
                          (feats["val"], y["val"]), tuple(range(k)), tcfg.head_fit,
                          ckpt / f"smoothing-{sm.dataset}-{sm.model}-eps{eps:g}", fingerprint(*data, head_cfg),
                          seed=tcfg.seed, verbose=0)
        t = calibration.fit_temperature(predict_probs(head, feats["val"]), y["val"])
        p = predict_probs(head, feats["test"])        # the test split, read once for this variant
        probs[eps], temps[eps] = (p, calibration.apply_temperature(p, t)), t
        records[eps] = {"best_epoch": state["best_epoch"], "val_macro_f1": state["best"], "epochs_run": state["epoch"]}
        keras.backend.clear_session()
    stats = {eps: tuple(metric_draws(y["test"], p, draws, cfg.ece_bins) for p in probs[eps]) for eps in sm.eps}
    table = {}
    for eps in sm.eps:
        for i, when in enumerate(("before TS", "after TS")):
            row = cells(stats[eps][i])
            row["temperature"] = temps[eps] if i else 1.0
            table[f"eps={eps:g} {when}"] = row
    pred0 = probs[0.0][0].argmax(axis=1)
    vs = {}
    for eps in sm.eps:
        if eps == 0:
            continue
        vs[f"eps={eps:g}"] = {
            "temperature": temps[eps], "temperature_eps0": temps[0.0],
            "ece_before_ts_minus_eps0_after_ts": paired({"e": stats[eps][0]["ece"]}, {"e": stats[0.0][1]["ece"]}, "e"),
            "nll_before_ts_minus_eps0_after_ts": paired({"e": stats[eps][0]["nll"]}, {"e": stats[0.0][1]["nll"]}, "e"),
            "ece_after_ts_minus_eps0_after_ts": paired({"e": stats[eps][1]["ece"]}, {"e": stats[0.0][1]["ece"]}, "e"),
            "macro_f1_minus_eps0": paired(stats[eps][0], stats[0.0][0], "macro_f1"),
            "top1_changed_vs_eps0": share_changed(probs[eps][0].argmax(axis=1), pred0, draws),
        }
    _plot_reliability(out_dir / "smoothing_reliability.png", y["test"], probs, temps, cfg.ece_bins, sm)
    return {"label_smoothing": table, "label_smoothing_vs_temperature": vs,
            "smoothing_training": {f"eps={e:g}": r for e, r in records.items()},
            "_readings": _smoothing_readings(sm, table, vs, temps),
            "_n_test": len(y["test"])}


def _smoothing_readings(sm: Smoothing, table: dict, vs: dict, temps: dict) -> dict:
    e0b, e0a = table["eps=0 before TS"], table["eps=0 after TS"]
    lines, moved = [], []
    for name, v in vs.items():
        d = v["ece_before_ts_minus_eps0_after_ts"]
        ci = d["ci95"]
        verdict = ("no worse than" if ci and ci["hi"] <= 0 else "clearly worse than" if ci and ci["lo"] > 0
                   else "not distinguishable from")
        lines.append(f"{name}: test ECE before TS {_fmt(table[f'{name} before TS']['ece'])} vs eps=0 after TS "
                     f"{_fmt(e0a['ece'])} (paired difference {_fmt(d)}: {verdict} temperature scaling); its own "
                     f"fitted T = {v['temperature']:.2f}")
        c = v["top1_changed_vs_eps0"]
        moved.append(f"{name}: {_fmt(c)} of test images change their top-1 call (macro-F1 difference "
                     f"{_fmt(v['macro_f1_minus_eps0'])})")
    return {
        "smoothing_vs_temperature": (
            f"{sm.model} frozen head on {sm.dataset}: eps=0 has test ECE {_fmt(e0b['ece'])} before and "
            f"{_fmt(e0a['ece'])} after temperature scaling (T = {temps[0.0]:.2f} fitted on validation). "
            + "; ".join(lines) + ". " + _temperature_sentence(temps, vs)),
        "smoothing_top1": ("Top-1 decisions against eps=0 (temperature never moves an argmax): " + "; ".join(moved) + "."),
    }


def _temperature_sentence(temps: dict, vs: dict) -> str:
    order = sorted(temps)
    ts = ", ".join(f"{temps[e]:.2f} (eps={e:g})" for e in order)
    trend = ("falls" if all(temps[a] > temps[b] for a, b in zip(order, order[1:])) else
             "rises" if all(temps[a] < temps[b] for a, b in zip(order, order[1:])) else "moves non-monotonically")
    after = "; ".join(f"{n} after its own TS {_fmt(v['ece_after_ts_minus_eps0_after_ts'])} ECE against eps=0 after TS"
                      for n, v in vs.items())
    return (f"The validation-fitted temperature {trend} with eps: {ts} (T < 1 sharpens: the head is under-confident "
            f"and smoothing makes it more so). After each its own temperature: {after}. Smoothing does not remove "
            "the need for a fitted temperature.")


def _plot_reliability(path: Path, y, probs: dict, temps: dict, n_bins: int, sm: Smoothing) -> None:
    from pipeline import calibration

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True)
    for ax, i, title in ((axes[0], 0, "before temperature scaling"), (axes[1], 1, "after (T fitted on validation)")):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for eps, pair in probs.items():
            b = calibration.reliability_bins(pair[i], y, n_bins)
            pts = [(c, a) for c, a in zip(b["confidence"], b["accuracy"]) if c is not None]
            label = f"eps={eps:g}" + (f" (T={temps[eps]:.2f})" if i else "") + \
                f", ECE {calibration.ece(pair[i], y, n_bins):.3f}"
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("confidence (top label)", fontsize=8)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("accuracy", fontsize=8)
    fig.suptitle(f"Label smoothing, {sm.model} frozen head on {sm.dataset} (test)", fontsize=9)
    _save(fig, path)


# ------------------------------------------------------------------------------------ studies 2 + 3

def _scratch_splits(cfg: Config, data_dir: Path):
    from vision import dataset

    splits, meta = dataset.load(data_dir, cfg.scratch.dataset)
    if cfg.scratch.train_limit is not None:
        tr = splits["train"]
        n = min(cfg.scratch.train_limit, len(tr.y))
        splits["train"] = type(tr)(tr.x[:n], tr.y[:n], tr.index[:n])
    return splits, meta


def build_scratch(variant: str, sc: Scratch, input_shape, n_classes: int):
    """The from-scratch classifier of one variant: 'relu11' (the registered alexnet, stem imagenet), 'stack'
    (its first layer split by stacked_first_layer) or 'leaky11' (relu11 with leaky_relu everywhere)."""
    from vision.models import BACKBONES, build_classifier

    size = (sc.image_size, sc.image_size, 3)
    backbone = BACKBONES["alexnet"].build(size, stem="imagenet", norm="batchnorm")
    if variant == "stack":
        backbone = stacked_first_layer(backbone, sc.stack_kernels, sc.mid_filters)
    model = build_classifier(backbone, n_classes, input_shape=input_shape, head_units=sc.head_units,
                             dropout=sc.dropout, preprocess="imagenet", name=f"alexnet_{variant}")
    if variant == "leaky11":
        model = leaky_copy(model, sc.negative_slope)
    elif variant not in ("relu11", "stack"):
        raise ValueError(f"unknown variant '{variant}'")
    return model


def _epochs_done(run_dir: Path, fp: str) -> int:
    """Epochs a checkpointed fit of this fingerprint has already done (0: none), from its newest state.json."""
    import json

    for unit in sorted(Path(run_dir).glob("ckpt-*"), reverse=True):
        try:
            state = json.loads((unit / "state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("fingerprint") == fp:
            return int(state.get("epoch", 0))
    return 0


def _record_timing(path: Path, fp: str, before: int, after: int, wall: float, cpu: float) -> dict:
    """Training wall/CPU seconds of a checkpointed fit, summed over the runs that trained its epochs (kept beside
    the run folder, so a rerun that restores still reports what the training cost)."""
    old = read_json(path) if path.is_file() else {}
    if before == 0 or old.get("fingerprint") != fp:
        old = {"fingerprint": fp, "train_wall_s": 0.0, "train_cpu_s": 0.0, "load_avg_1min": []}
    if after > before:
        old["train_wall_s"] += wall
        old["train_cpu_s"] += cpu
        old["load_avg_1min"].append(round(os.getloadavg()[0], 2))
        old["epochs"] = after
        write_json(path, old)
    return {**old, "wall_s_this_run": wall}


class Scratchpad:
    """Trains each from-scratch variant once per invocation (shared by the kernels and leaky studies)."""

    def __init__(self, cfg: Config, data_dir: Path, ckpt: Path):
        self.cfg, self.ckpt = cfg, ckpt
        self.splits, self.meta = _scratch_splits(cfg, data_dir)
        self.k = self.meta["n_classes"]
        self.draws = draw_indices(len(self.splits["test"].y), cfg.bootstrap, cfg.seed)
        self.done: dict = {}

    def get(self, variant: str) -> dict:
        if variant in self.done:
            return self.done[variant]
        from pipeline.losses import make_loss
        from pipeline.training import fit, predict_probs

        sc, tr, va, te = self.cfg.scratch, self.splits["train"], self.splits["val"], self.splits["test"]
        shape = tr.x.shape[1:]
        fp = fingerprint(self.meta["sha256"], asdict(sc), variant, len(tr.y), self.cfg.seed)
        run_dir = self.ckpt / f"scratch-{sc.dataset}-{variant}"
        before = _epochs_done(run_dir, fp)
        if variant == "leaky11":  # its checkpoint names this activation: register it before fit looks for one
            from pipeline.insight import leaky_relu_fn
            leaky_relu_fn(sc.negative_slope)
        t, c = time.perf_counter(), time.process_time()
        model, state = fit(lambda: build_scratch(variant, sc, shape, self.k), make_loss("ce"), (tr.x, tr.y),
                           (va.x, va.y), tuple(range(self.k)), sc.fit, run_dir, fp, seed=self.cfg.seed, verbose=0)
        timing = _record_timing(self.ckpt / f"scratch-{sc.dataset}-{variant}.timing.json", fp, before, state["epoch"],
                                time.perf_counter() - t, time.process_time() - c)
        probs = predict_probs(model, te.x, batch_size=256)      # the test split, read once for this variant
        self.done[variant] = {"model": model, "probs": probs, "state": state, "timing": timing,
                              "stats": metric_draws(te.y, probs, self.draws, self.cfg.ece_bins)}
        print(f"insight_vision: scratch {variant}: {state['epoch'] - before} epochs trained now in "
              f"{timing['wall_s_this_run']:.0f} s ({timing['train_wall_s']:.0f} s over all its runs), best val "
              f"macro-F1 {state['best']:.3f} at epoch {state['best_epoch']}", flush=True)
        return self.done[variant]


def _timing_cells(r: dict) -> dict:
    t = r["timing"]
    return {"epochs_run": r["state"]["epoch"], "train_wall_s": round(t["train_wall_s"], 1),
            "train_cpu_s": round(t["train_cpu_s"], 1)}


def study_kernels(cfg: Config, pad: Scratchpad, out_dir: Path) -> dict:
    from vision.models import find_backbone

    names = {"relu11": "11x11/4", "stack": "{}x{}/1 + {}x{}/4".format(*np.repeat(cfg.scratch.stack_kernels, 2))}
    table = {}
    for variant, label in names.items():
        r = pad.get(variant)
        backbone = find_backbone(r["model"])
        row = {**block_geometry(backbone), **costs(r["model"]), **cells(r["stats"]),
               "best_epoch": r["state"]["best_epoch"], "val_macro_f1": r["state"]["best"], **_timing_cells(r)}
        table[label] = row
    a, b = pad.get("stack")["stats"], pad.get("relu11")["stats"]
    diff = {f"{names['stack']} minus 11x11/4": {m: paired(a, b, m) for m in ("accuracy", "macro_f1", "auc")}}
    _plot_first_block(out_dir / "kernels_cost.png", table)
    big, small = table[names["relu11"]], table[names["stack"]]
    d = diff[f"{names['stack']} minus 11x11/4"]
    reading = (f"{cfg.scratch.dataset} at {cfg.scratch.image_size} px, from scratch: the stack has the same receptive "
               f"field ({small['receptive_field']} vs {big['receptive_field']}) and stride ({small['stride']} vs "
               f"{big['stride']}), so the same output map ({small['output_resolution']} vs {big['output_resolution']}), "
               f"but its first block holds {small['block1_params']:,} vs {big['block1_params']:,} parameters, costs "
               f"{small['block1_flops'] / 1e6:.0f} vs {big['block1_flops'] / 1e6:.0f} MFLOP per image and keeps "
               f"{small['block1_activation_kib']:.0f} vs {big['block1_activation_kib']:.0f} KiB of activations per image "
               f"(the full-resolution {cfg.scratch.stack_kernels[0]}x{cfg.scratch.stack_kernels[0]} map). Test accuracy "
               f"{_fmt(small['accuracy'])} vs {_fmt(big['accuracy'])}, macro-F1 {_fmt(small['macro_f1'])} vs "
               f"{_fmt(big['macro_f1'])}, AUC {_fmt(small['auc'])} vs {_fmt(big['auc'])}; paired differences "
               f"(stack minus 11x11): accuracy {_fmt(d['accuracy'])}, macro-F1 {_fmt(d['macro_f1'])}, AUC {_fmt(d['auc'])}.")
    auc_ci, acc_ci = d["auc"]["ci95"], d["macro_f1"]["ci95"]
    if auc_ci and acc_ci and auc_ci["lo"] <= 0 <= auc_ci["hi"] and (acc_ci["hi"] < 0 or acc_ci["lo"] > 0):
        reading += (f" The AUCs agree while the calls differ: both rank the test images alike, and the gap is in where "
                    f"the argmax puts the threshold (test ECE {_fmt(small['ece'])} vs {_fmt(big['ece'])}; validation "
                    f"macro-F1 {small['val_macro_f1']:.3f} vs {big['val_macro_f1']:.3f}), one seed and "
                    f"{cfg.scratch.fit.epochs} epochs each.")
    reading += (f" Training cost: {small['train_wall_s']:.0f} vs {big['train_wall_s']:.0f} s wall "
                f"({small['train_cpu_s']:.0f} vs {big['train_cpu_s']:.0f} CPU-s) for {small['epochs_run']} vs "
                f"{big['epochs_run']} epochs.")
    return {"kernels": table, "kernels_difference": diff, "_readings": {"kernels": reading}}


def study_leaky(cfg: Config, pad: Scratchpad, out_dir: Path) -> dict:
    x = pad.splits["train"].x[:cfg.dead_images]
    dead, table = {}, {}
    for variant, label in (("relu11", "relu"), ("leaky11", "leaky_relu")):
        r = pad.get(variant)
        layers = never_positive(r["model"], x)
        if variant == "relu11":   # the shared counter must agree with this probe on the trunk's plain ReLUs
            ref = backbone_dead_units(r["model"], x)
            if any(layers[n]["dead"] != v["dead"] for n, v in ref.items()):
                raise RuntimeError(f"dead-unit probes disagree: {ref} vs {layers}")
        mean = float(np.mean([v["fraction"] for v in layers.values()]))
        dead[f"alexnet-scratch-{label}"] = {"mean_fraction": mean, "layers": layers, "images": int(len(x))}
        table[label] = {**cells(r["stats"]), "never_positive_mean_fraction": mean,
                        "never_positive_units": int(sum(v["dead"] for v in layers.values())),
                        "units": int(sum(v["units"] for v in layers.values())),
                        "best_epoch": r["state"]["best_epoch"], "val_macro_f1": r["state"]["best"],
                        **_timing_cells(r)}
    a, b = pad.get("leaky11")["stats"], pad.get("relu11")["stats"]
    diff = {"leaky_relu minus relu": {m: paired(a, b, m) for m in ("macro_f1", "accuracy", "auc")}}
    _plot_dead(out_dir / "leaky_dead_units.png", dead)
    rl, lk = dead["alexnet-scratch-relu"], dead["alexnet-scratch-leaky_relu"]
    per = ", ".join(f"{n} {v['fraction']:.2f}/{lk['layers'][n]['fraction']:.2f}" for n, v in rl["layers"].items())
    reading = (f"From-scratch AlexNet on {cfg.scratch.dataset}, {len(x)} training images probed: units never positive, "
               f"ReLU/leaky per layer: {per}; mean {rl['mean_fraction']:.3f} vs {lk['mean_fraction']:.3f} (a leaky unit "
               f"that is never positive still passes gradient, slope {cfg.scratch.negative_slope:g}). Test macro-F1 "
               f"{_fmt(table['relu']['macro_f1'])} (ReLU) vs {_fmt(table['leaky_relu']['macro_f1'])} (leaky); paired "
               f"difference {_fmt(diff['leaky_relu minus relu']['macro_f1'])}.")
    return {"dead_units": dead, "leaky_relu": table, "leaky_relu_difference": diff, "_readings": {"leaky_relu": reading}}


# ------------------------------------------------------------------------------------------- study 4

def first_conv(model):
    """The first Conv2D met in call order (nested models flattened)."""
    for _, layer in _leaf_layers(model):
        if type(layer).__name__ == "Conv2D":
            return layer
    raise ValueError(f"model '{model.name}' has no Conv2D layer")


def _convs(model) -> dict:
    return {name: layer.get_weights()[0] for name, layer in _leaf_layers(model) if type(layer).__name__ == "Conv2D"}


def study_filters(cfg: Config, runs_dir: Path, out_dir: Path, pad: Scratchpad | None) -> dict:
    import keras

    from vision import layers as _custom  # noqa: F401  (registers the custom layers for loading)
    from vision.models import find_backbone

    fc = cfg.filters
    table, figures = {}, []
    for m in fc.models:
        pre_path = runs_dir / "pretrain" / m / "backbone.keras"
        ft_path = runs_dir / f"{fc.finetune_dataset}-{m}-finetune-{fc.finetune_loss}" / "model.keras"
        for p in (pre_path, ft_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing (filters.models / filters.finetune_dataset name a run that "
                                        "pretrain_vision / train_vision has not written)")
        pre = keras.models.load_model(pre_path, compile=False)
        ft = find_backbone(keras.models.load_model(ft_path, compile=False))
        cp, cf = _convs(pre), _convs(ft)
        if list(cp) != list(cf) or any(cp[n].shape != cf[n].shape for n in cp):
            raise ValueError(f"{ft_path}: its backbone's convolutions differ from {pre_path}'s")
        first = next(iter(cp))
        w0, w1 = cp[first], cf[first]
        rel = {n: float(np.linalg.norm(cf[n] - cp[n]) / np.linalg.norm(cp[n])) for n in cp}
        trainable = bool(first_conv(ft).trainable)
        table[f"{m} pretrained (CIFAR-10)"] = {"layer": first, "kernel": "x".join(map(str, w0.shape)),
                                               "mean_abs_weight": float(np.abs(w0).mean())}
        table[f"{m} fine-tuned ({fc.finetune_dataset}, {fc.finetune_loss})"] = {
            "layer": first, "kernel": "x".join(map(str, w1.shape)), "mean_abs_weight": float(np.abs(w1).mean()),
            "mean_abs_change_from_pretrained": float(np.abs(w1 - w0).mean()),
            "relative_change_first_layer": rel[first],
            "largest_relative_change": f"{max(rel, key=rel.get)} {max(rel.values()):.4f}",
            "first_layer_trainable_in_finetune": trainable}
        for tag, w in (("pretrained", w0), ("finetuned", w1)):
            p = out_dir / f"filters_{m}_{tag}.png"
            _plot_filters(p, w, f"{m} {first}, {tag}", fc.max_filters, gray=False)
            figures.append(str(p))
    if pad is not None:
        for variant, label in (("relu11", "11x11/4"), ("stack", "{}x{}/1 (stack's first)".format(
                *np.repeat(cfg.scratch.stack_kernels[0], 2)))):
            layer = first_conv(pad.get(variant)["model"])
            w = layer.get_weights()[0]
            table[f"from scratch {label}"] = {"layer": layer.name, "kernel": "x".join(map(str, w.shape)),
                                              "mean_abs_weight": float(np.abs(w).mean())}
            p = out_dir / f"filters_scratch_{variant}.png"
            _plot_filters(p, w, f"from scratch on {cfg.scratch.dataset}: {label} (channel sum)", fc.max_filters, gray=True)
            figures.append(str(p))
    changes = [f"{k.split(' ')[0]}: first-layer mean |dW| {v['mean_abs_change_from_pretrained']:.2e} "
               f"(relative {v['relative_change_first_layer']:.3f}; trainable in fine-tuning: "
               f"{'yes' if v['first_layer_trainable_in_finetune'] else 'no'}; largest relative change {v['largest_relative_change']})"
               for k, v in table.items() if "mean_abs_change_from_pretrained" in v]
    reading = ("Fine-tuning against the CIFAR-10-pretrained first layer: " + "; ".join(changes) + ". The fine-tuning "
               "regime unfreezes only the later blocks (vision_train.unfreeze_from), so the first layer cannot move; "
               "the change sits in the unfrozen blocks.") if changes else ""
    return {"filters": table, "_figures": figures, "_readings": {"filters": reading} if reading else {}}


# ----------------------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _plt()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def filter_grid(w: np.ndarray, max_filters: int = 96, gray: bool = False, pad: int = 1) -> np.ndarray:
    """(kh, kw, cin, n) kernel -> one image of tiles, each filter min-max scaled to 0..1 on its own;
    gray: the sum over input channels (what a channel-repeated gray image sees); else RGB of the first 3."""
    w = np.asarray(w, np.float64)[..., :max_filters]
    kh, kw, cin, n = w.shape
    tiles = w.sum(axis=2, keepdims=True) if gray or cin < 3 else w[:, :, :3]
    c = tiles.shape[2]
    cols = int(np.ceil(np.sqrt(n * 1.5)))
    rows = int(np.ceil(n / cols))
    grid = np.ones((rows * (kh + pad) + pad, cols * (kw + pad) + pad, c))
    for i in range(n):
        t = tiles[..., i]
        lo, hi = t.min(), t.max()
        t = (t - lo) / (hi - lo) if hi > lo else np.full_like(t, 0.5)
        r, q = divmod(i, cols)
        grid[pad + r * (kh + pad): pad + r * (kh + pad) + kh, pad + q * (kw + pad): pad + q * (kw + pad) + kw] = t
    return grid[..., 0] if c == 1 else grid


def _plot_filters(path: Path, w, title: str, max_filters: int, gray: bool) -> None:
    plt = _plt()
    grid = filter_grid(w, max_filters, gray)
    fig, ax = plt.subplots(figsize=(min(10, 1 + grid.shape[1] / 12), min(8, 0.8 + grid.shape[0] / 12)))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{title}: {np.shape(w)[0]}x{np.shape(w)[1]}, {min(np.shape(w)[-1], max_filters)} filters", fontsize=9)
    _save(fig, path)


def _plot_dead(path: Path, dead: dict) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(next(iter(dead.values()))["layers"])
    xs = np.arange(len(names))
    for i, (run, v) in enumerate(dead.items()):
        ax.bar(xs + (i - 0.5) * 0.4, [v["layers"][n]["fraction"] for n in names], 0.4, label=run)
    ax.set_xticks(xs, names, rotation=30, fontsize=7)
    ax.set_ylabel("units never positive", fontsize=8)
    ax.legend(fontsize=7)
    _save(fig, path)


def _plot_first_block(path: Path, table: dict) -> None:
    plt = _plt()
    keys = ("block1_params", "block1_flops", "block1_activation_values")
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, key in zip(axes, keys):
        ax.bar(list(table), [table[v][key] for v in table], color=["tab:blue", "tab:orange"])
        ax.set_title(key.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=7)
    _save(fig, path)


# -------------------------------------------------------------------------------------------- stage

def methods(cfg: Config) -> dict:
    sc, sm = cfg.scratch, cfg.smoothing
    k1, k2 = sc.stack_kernels
    ci = (f"95% CIs from {cfg.bootstrap} image-bootstrap draws (seed {cfg.seed}), the same draws for every variant, "
          "so differences are paired; the test split is read once per variant.")
    return {
        "label_smoothing": (f"Heads of the frozen CIFAR-pretrained {sm.model} on {sm.dataset}, trained on the cached "
                            "backbone features as vision.transfer does (vision_train's head_fit, head_units, dropout, "
                            f"seed; plain CE with label smoothing eps in {list(sm.eps)}; checkpoint by validation "
                            "macro-F1). One temperature per eps fitted on the validation split (NLL, "
                            f"pipeline.calibration); ECE top-label, {cfg.ece_bins} equal-width bins. " + ci),
        "kernels": (f"Both networks from scratch on {sc.dataset} (28 px upsampled to {sc.image_size} px inside the "
                    "model, channels repeated, ImageNet normalisation), the registered alexnet builder with stem "
                    f"'imagenet' and BatchNorm; the stack replaces block1_conv (11x11/4, valid) by {k1}x{k1}/1 -> "
                    f"BatchNorm -> ReLU -> {k2}x{k2}/4 ({sc.mid_filters} channels between; the full setting uses 96, "
                    "conv1's width) by functional surgery, receptive field 11 = 7 + (5 - 1) x 1 and stride 4, so the "
                    f"same valid output map. Same seed, head {list(sc.head_units)}, dropout {sc.dropout}, no "
                    f"augmentation, fit {asdict(sc.fit)} through pipeline.training.fit (checkpoint by validation "
                    "macro-F1). FLOPs: 2 x MACs of conv/dense + 2 per BatchNorm element (pipeline.deploy.layer_costs); "
                    "first-block activations: every conv/BN/ReLU output before block1_pool, float32 per image. " + ci),
        "leaky_relu": (f"The 11x11 from-scratch network with every ReLU (5 conv blocks and the head) replaced by "
                       f"leaky_relu (slope {sc.negative_slope:g}) via pipeline.insight.with_activation, started from the "
                       "same initial weights, trained identically. An activation param in the builders waits for the "
                       "next full retrain: editing a builder makes every trained stage stale. A unit (channel) is "
                       f"never positive when its output is <= 0 at every position of the first {cfg.dead_images} "
                       "training images (pipeline.analysis.dead_units for ReLU, the same probe for the leaky layers). " + ci),
        "dead_units": "See the leaky-ReLU method: the per-layer share of channels never positive on training images.",
        "filters": ("First convolution kernels drawn as tiles, each min-max scaled on its own (ZFNet style): RGB for "
                    "the CIFAR-10-pretrained backbones and their fine-tuned runs; for the from-scratch medical runs "
                    "the sum over the input channels, since the gray images are repeated into 3 identical channels "
                    "and only that sum is identified. Weight change: mean |W_finetuned - W_pretrained| and "
                    "||dW|| / ||W_pretrained|| per conv layer."),
    }


def run(cfg: Config, params_path, data_dir: Path, runs_dir: Path, out_dir: Path, ckpt: Path = CHECKPOINTS) -> dict:
    import keras

    metrics, readings, seconds, figures = {}, {}, {}, []
    pad = None
    for study in STUDIES:
        if study not in cfg.studies:
            continue
        t, c = time.perf_counter(), time.process_time()
        if study == "smoothing":
            part = study_smoothing(cfg, params_path, data_dir, runs_dir, ckpt, out_dir)
            figures.append(str(out_dir / "smoothing_reliability.png"))
        elif study in ("kernels", "leaky"):
            pad = pad or Scratchpad(cfg, data_dir, ckpt)
            part = (study_kernels if study == "kernels" else study_leaky)(cfg, pad, out_dir)
            figures.append(str(out_dir / ("kernels_cost.png" if study == "kernels" else "leaky_dead_units.png")))
        else:
            part = study_filters(cfg, runs_dir, out_dir, pad if pad is not None and "kernels" in cfg.studies else None)
            figures.extend(part.pop("_figures"))
        readings.update(part.pop("_readings"))
        part.pop("_n_test", None)
        metrics.update(part)
        seconds[f"{study}_s"] = round(time.perf_counter() - t, 1)
        seconds[f"{study}_cpu_s"] = round(time.process_time() - c, 1)
        print(f"insight_vision: {study} done in {seconds[f'{study}_s']:.0f} s", flush=True)
        if study == "smoothing":
            keras.backend.clear_session()
    method = methods(cfg)
    keep = {"smoothing": ("label_smoothing",), "kernels": ("kernels",), "leaky": ("leaky_relu", "dead_units"),
            "filters": ("filters",)}
    method = {k: v for k, v in method.items() if any(k in keep[s] for s in cfg.studies)}
    return {"readings": readings, "method": method, **metrics, "params": asdict(cfg), "timings_s": seconds,
            "_figures": figures}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/vision")
    ap.add_argument("--runs", default="artifacts/vision", help="trained runs and pretrain/<model>/backbone.*")
    ap.add_argument("--out", default="artifacts/analysis/insight_vision")
    ap.add_argument("--metrics", default="metrics/analysis/insight_vision.json")
    ap.add_argument("--checkpoints", default=str(CHECKPOINTS))
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg = load_config(args.params)
    start = time.perf_counter()
    out = run(cfg, args.params, Path(args.data), Path(args.runs), Path(args.out), Path(args.checkpoints))
    out["timings_s"]["total_s"] = round(time.perf_counter() - start, 1)
    figures = out.pop("_figures")
    write_json(Path(args.out) / "run.json", {"params": asdict(cfg), "figures": figures, "seconds": out["timings_s"],
                                             "cpu_count": os.cpu_count(), "load_avg": list(os.getloadavg())})
    write_json(args.metrics, out)
    print(f"insight_vision: {', '.join(cfg.studies)} in {out['timings_s']['total_s']:.0f} s -> {args.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
