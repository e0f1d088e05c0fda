"""Stage insight_ecg: what training choices do to the chosen ECG model (issue 14 items 1, 2b and the 1D part of 4).

    python -m ecg.insight [--params params.yaml] [--data data/ecg] [--package models/ecg]

The base model is the packaged run (models/ecg/package.json provenance.run, e.g. dilated1d-focal): its
builder, model kwargs and loss knobs from params.yaml `ecg_train`, its input channels from the package.
Every variant is trained the same way, from the same seed (same initial weights where the layers are the
same, same batch order): on the DS1 folds except `insight_ecg.val_fold`, early stopping (best validation
macro-F1) and the temperature on fold val_fold only. DS2 is scored once per variant, with record-bootstrap
95% CIs (evaluate.bootstrap draws, evaluate.seed). Each fit goes through pipeline.training.fit with its own
checkpoint folder (<checkpoints>/<variant>), kept after the fit, so a rerun after a scoring-only change
restores the fits instead of training again.

  smoothing   the base loss with label_smoothing = eps for each eps in `smoothing`: DS2 ECE, NLL, macro-F1
              and per-class F1 before and after temperature scaling; T per eps; the share of DS2 beats whose
              top-1 call differs from eps=0's and the paired macro-F1 difference
  leaky       the eps=0 model rebuilt by pipeline.insight.with_activation(..., "leaky_relu") (the builder keeps
              ReLU): dead fraction per ReLU layer on DS1 (pipeline.analysis.dead_units) against the share of
              the leaky model's units whose pre-activation is never positive, and DS2 macro-F1
  kernel      the first conv (dilated1d stem: kernel 7, stride 2) against a stack of short kernels with the
              same receptive field and stride (3 then 5, stride on the last), grafted into the eps=0 model
              by functional surgery: params, FLOPs per beat, first-block activation memory, output
              resolution, receptive field, DS2 macro-F1 and the paired difference

Writes metrics/analysis/insight_ecg.json (numbers, "readings" and "method" texts) and
artifacts/analysis/insight_ecg/ (reliability_eps<eps>.png, dead_relu.png, kernel.png, predictions.npz).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.training import FitConfig

OUT = Path("artifacts/analysis/insight_ecg")
METRICS = Path("metrics/analysis/insight_ecg.json")
CKPT = Path("artifacts/checkpoints/ecg/insight")
SECTION = "insight_ecg"


def _default_fit():
    return FitConfig(epochs=10, batch_size=256, learning_rate=1e-3, patience=3, min_delta=1e-3)


@dataclass(frozen=True)
class KernelStudy:
    stack: tuple[int, ...] | None = None   # short kernels replacing the first conv (null: 3 then k-2)

    def validate(self) -> None:
        from pipeline.params import ParamsError
        if self.stack is not None and (len(self.stack) < 2 or min(self.stack) < 2):
            raise ParamsError(f"{SECTION}.kernel.stack: two or more kernels >= 2, got {list(self.stack)}")


@dataclass(frozen=True)
class InsightParams:
    seed: int = 42
    val_fold: int = 0
    fit: FitConfig = field(default_factory=_default_fit)
    train_beats: int | None = None       # class-preserving subsample of the DS1 training beats (null: all)
    smoothing: tuple[float, ...] = (0.0, 0.05, 0.1)
    smoothing_loss: str | None = None     # loss of the smoothing sweep (null: the base run's; e.g. ce as a control)
    leaky_slope: float = 0.01
    kernel: KernelStudy = field(default_factory=KernelStudy)
    dead_beats: int | None = None         # DS1 beats probed for dead units (null: every DS1 beat)
    batch_size: int = 1024

    def validate(self) -> None:
        from pipeline.params import ParamsError
        if not self.smoothing or 0.0 not in self.smoothing:
            raise ParamsError(f"{SECTION}.smoothing must list 0.0 (the reference), got {list(self.smoothing)}")
        if any(not 0 <= e < 1 for e in self.smoothing) or len(set(self.smoothing)) != len(self.smoothing):
            raise ParamsError(f"{SECTION}.smoothing: distinct values in [0, 1), got {list(self.smoothing)}")
        from pipeline.losses import LOSSES
        if self.smoothing_loss is not None and self.smoothing_loss not in LOSSES:
            raise ParamsError(f"{SECTION}.smoothing_loss: null or one of {list(LOSSES)}, got {self.smoothing_loss!r}")
        if not 0 < self.leaky_slope < 1:
            raise ParamsError(f"{SECTION}.leaky_slope must be in (0, 1), got {self.leaky_slope}")
        if self.train_beats is not None and self.train_beats < 10:
            raise ParamsError(f"{SECTION}.train_beats: null or >= 10, got {self.train_beats}")
        if self.dead_beats is not None and self.dead_beats < 1:
            raise ParamsError(f"{SECTION}.dead_beats: null or >= 1, got {self.dead_beats}")
        if self.batch_size < 1:
            raise ParamsError(f"{SECTION}.batch_size must be >= 1")


def load(path) -> InsightParams:
    from pipeline.params import load_section
    return load_section(SECTION, InsightParams, path)


# --------------------------------------------------------------------------------------------- base


def _eps_name(eps: float, loss: str | None = None) -> str:
    """Variant name of a smoothing fit: eps=<eps> with the base loss, <loss>_eps=<eps> with another."""
    return f"eps={eps:g}" if loss is None else f"{loss}_eps={eps:g}"


@dataclass
class Base:
    run: str
    model: str
    loss: str
    channels: list
    kwargs: dict
    loss_params: object     # pipeline.losses.LossParams of ecg_train


def load_base(package_dir: Path, params_path) -> Base:
    """The packaged run's model and loss, with ecg_train's knobs; clear errors naming the file or key."""
    from ecg import models, train_config
    from pipeline.io import read_json
    from pipeline.losses import LOSSES
    path = package_dir / "package.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the package_ecg stage first (the insight base model is the "
                                "packaged run)")
    package = read_json(path)
    prov = package.get("provenance") if isinstance(package, dict) else None
    run = prov.get("run") if isinstance(prov, dict) else None
    if not run:
        raise KeyError(f"{path}: no provenance.run (the packaged run the insight studies retrain)")
    model, loss = prov.get("model"), prov.get("loss")
    if not (model and loss) and "-" in str(run):
        model, loss = str(run).rsplit("-", 1)
    if model not in models.MODELS or loss not in LOSSES:
        raise ValueError(f"{path}: provenance.run '{run}' is not a known (model, loss) run: model {model!r} "
                         f"(valid {sorted(models.MODELS)}), loss {loss!r} (valid {list(LOSSES)})")
    cfg = train_config.load(params_path)
    channels = list(package.get("channels") or cfg.channels)
    if list(cfg.channels) != channels:
        raise ValueError(f"{path}: channels {channels} differ from {params_path} ecg_train.channels "
                         f"{list(cfg.channels)}; retrain or repackage first")
    kwargs = cfg.model_kwargs(model)
    return Base(str(run), model, loss, channels, kwargs, cfg.loss)


@dataclass
class Data:
    train: object
    val: object
    test: object
    ds1: dict               # {"beat", "rr"} of the DS1 beats probed for dead units
    classes: list
    score: tuple
    fs: float
    window: int
    n_rr: int
    sha256: str


def class_subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of about n rows keeping every class's share (each present class keeps >= 1 row)."""
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(n * len(idx) / len(y))))
        out.append(rng.choice(idx, min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


def load_data(data_dir: Path, base: Base, cfg: InsightParams) -> Data:
    from ecg import dataset
    arrays, meta = dataset.load_inputs(data_dir, base.channels)
    ds1 = arrays["split"] == 0
    folds = sorted(int(f) for f in np.unique(arrays["fold"][ds1]))
    if cfg.val_fold not in folds:
        raise ValueError(f"{SECTION}.val_fold: {cfg.val_fold} is not a DS1 fold of {data_dir / 'beats.npz'} "
                         f"({folds})")
    is_val = ds1 & (arrays["fold"] == cfg.val_fold)
    train = dataset.select(arrays, ds1 & ~is_val)
    if cfg.train_beats is not None:
        keep = class_subsample(train.y, cfg.train_beats, cfg.seed)
        train = dataset.Beats({k: v[keep] for k, v in train.x.items()}, train.y[keep], train.record[keep],
                              train.sample[keep])
    val = dataset.select(arrays, is_val)
    test = dataset.select(arrays, arrays["split"] == 1)
    if not len(train.y) or not len(val.y) or not len(test.y):
        raise ValueError(f"{data_dir / 'beats.npz'}: validation fold {cfg.val_fold} leaves an empty DS1 training, "
                         "validation or DS2 set")
    probe = np.flatnonzero(ds1)
    if cfg.dead_beats is not None and len(probe) > cfg.dead_beats:
        probe = np.sort(np.random.default_rng(cfg.seed).choice(probe, cfg.dead_beats, replace=False))
    return Data(train, val, test, {"beat": arrays["beat"][probe], "rr": arrays["rr"][probe]}, list(meta["classes"]),
                dataset.score_indices(meta), float(meta["fs"]), int(meta["window_samples"]),
                len(meta["rr_features"]), meta["beats_sha256"])


# ------------------------------------------------------------------------------------------ surgery


def leaky_model(model, slope: float):
    """pipeline.insight.with_activation(model, "leaky_relu", slope): Dense/Conv activations become the named
    function pipeline.insight.leaky_relu_fn registers, so saved checkpoints reload (in a fresh process only once
    that function is registered for this slope: see run())."""
    from pipeline.insight import with_activation
    return with_activation(model, "leaky_relu", negative_slope=slope)


def first_conv(model):
    """The first Conv1D layer of the model (graph order)."""
    import keras
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv1D):
            return layer
    raise ValueError(f"model '{model.name}' has no Conv1D layer")


def stack_for(kernel: int, stack) -> tuple[int, ...]:
    """The short kernels replacing one of `kernel` taps (stride 1 between them, the stride on the last):
    their receptive field 1 + sum(k_i - 1) must equal `kernel`."""
    ks = tuple(int(k) for k in stack) if stack else (3, kernel - 2)
    if min(ks) < 2:
        raise ValueError(f"first conv kernel {kernel} is too short for a stack of short kernels (need >= 5)")
    rf = 1 + sum(k - 1 for k in ks)
    if rf != kernel:
        raise ValueError(f"{SECTION}.kernel.stack {list(ks)} has receptive field {rf}, the first conv's kernel is "
                         f"{kernel}: they must match (1 + sum(k - 1))")
    return ks


def with_stacked_stem(model, stack=None):
    """A copy of `model` (fresh weights) whose first Conv1D (kernel k, stride s, dilation 1) is replaced by
    convs of the `stack` kernels, stride 1 and then s on the last, each but the last followed by its own
    BatchNormalization and ReLU; the last keeps the old conv's name, so the rest of the graph is unchanged.
    Returns (model, info) with the stack's layer names."""
    import keras
    conv = first_conv(model)
    (k,), (s,), (d,) = conv.kernel_size, conv.strides, conv.dilation_rate
    if d != 1:
        raise ValueError(f"first conv '{conv.name}' is dilated ({d}); the stack study needs dilation 1")
    ks = stack_for(k, stack)
    cfg = conv.get_config()
    names = [f"{conv.name}_stack{i + 1}" for i in range(len(ks) - 1)] + [conv.name]

    def clone(layer):
        return layer.__class__.from_config(layer.get_config())

    def call(layer, *args, **kwargs):
        if layer.name != conv.name:
            return layer(*args, **kwargs)
        x = args[0]
        for i, kk in enumerate(ks):
            last = i == len(ks) - 1
            c = {**cfg, "kernel_size": (kk,), "strides": (s if last else 1,), "name": names[i]}
            x = keras.layers.Conv1D.from_config(c)(x)
            if not last:
                x = keras.layers.BatchNormalization(name=f"{names[i]}_bn")(x)
                x = keras.layers.Activation("relu", name=f"{names[i]}_relu")(x)
        return x

    out = keras.models.clone_model(model, clone_function=clone, call_function=call)
    return out, {"replaced": conv.name, "kernel": k, "stride": s, "stack": list(ks), "stack_layers": names}


def receptive_field(kernels, strides) -> int:
    """Receptive field (input samples) of a chain of undilated convs."""
    rf, jump = 1, 1
    for k, s in zip(kernels, strides):
        rf += (k - 1) * jump
        jump *= s
    return rf


def conv_chain(model) -> list[tuple[int, int, int]]:
    """(kernel, stride, dilation) of the Conv1D/pooling layers on the beat path, in graph order."""
    import keras
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv1D):
            out.append((layer.kernel_size[0], layer.strides[0], layer.dilation_rate[0]))
        elif isinstance(layer, keras.layers.MaxPooling1D):
            out.append((layer.pool_size[0], layer.strides[0], 1))
    return out


def network_receptive_field(model) -> int:
    rf, jump = 1, 1
    for k, s, d in conv_chain(model):
        rf += (k - 1) * d * jump
        jump *= s
    return rf


def first_block_costs(model, block_layers: list[str], bytes_per_value: int = 4) -> dict:
    """Params, FLOPs per beat (pipeline.deploy.layer_costs, BatchNorm folded) and activation memory of the
    first block: `block_layers` are its layer names (convs, BatchNorms, ReLUs), up to its last ReLU."""
    from pipeline import deploy
    rows = deploy.layer_costs(model, fold_batchnorm=True)
    total = rows[-1]
    block = [r for r in rows[:-1] if r["name"] in block_layers]
    convs = [model.get_layer(n) for n in block_layers if type(model.get_layer(n)).__name__ == "Conv1D"]
    outs = [int(np.prod(layer.output.shape[1:])) for layer in convs]
    every = [int(np.prod(model.get_layer(n).output.shape[1:])) for n in block_layers]
    return {"params": int(model.count_params()), "flops_per_beat": int(total["flops"]),
            "first_block_params": int(sum(r["params"] for r in block)),
            "first_block_flops": int(sum(r["flops"] for r in block)),
            "first_block_activation_bytes": int(sum(outs) * bytes_per_value),
            "first_block_activation_bytes_training": int(sum(every) * bytes_per_value),
            "output_samples": int(convs[-1].output.shape[1]), "output_channels": int(convs[-1].output.shape[-1])}


# ------------------------------------------------------------------------------------------ training


def build_base(base: Base, data: Data):
    from ecg import models
    return models.build(base.model, data.window, data.n_rr, len(data.classes), **base.kwargs)[0]


def make_loss(base: Base, eps: float, counts, loss: str | None = None):
    """(Keras loss, its knobs): `loss` (default the base run's) with ecg_train's knobs and label_smoothing=eps."""
    from dataclasses import replace

    from pipeline.losses import loss_from_params
    name = loss or base.loss
    args = replace(base.loss_params.of(name), label_smoothing=float(eps))
    knobs = asdict(args) if name == base.loss else {"loss": name, **asdict(args)}   # the base's: as first fingerprinted
    return loss_from_params(name, replace(base.loss_params, **{name: args}), class_counts=counts), knobs


def train_variant(name: str, build, loss, loss_args: dict, base: Base, data: Data, cfg: InsightParams,
                  ckpt: Path, extra: dict) -> tuple:
    """(best model, state, seconds) of one variant through pipeline.training.fit (resumes from ckpt/<name>)."""
    from pipeline.io import fingerprint
    from pipeline.training import fit
    config = {"variant": name, "run": base.run, "model": base.model, "kwargs": base.kwargs, "loss": base.loss,
              "loss_args": loss_args, "fit": asdict(cfg.fit), "val_fold": cfg.val_fold, "train_beats": cfg.train_beats,
              "seed": cfg.seed, "channels": base.channels, **extra}
    t = time.perf_counter()
    model, state = fit(build, loss, (data.train.x, data.train.y), (data.val.x, data.val.y), data.score, cfg.fit,
                       ckpt / name.replace("=", ""), fingerprint(config, data.sha256), seed=cfg.seed, verbose=0)
    seconds = time.perf_counter() - t
    print(f"insight_ecg {name}: validation macro-F1 {state['best']:.4f} at epoch {state['best_epoch']} of "
          f"{state['epoch']} ({seconds:.0f} s)", flush=True)
    return model, state, seconds


# ------------------------------------------------------------------------------------------- scoring


def _vc(value, ci) -> dict:
    return {"value": None if value is None else float(value), "ci95": ci}


def score_variant(model, data: Data, ev, cfg: InsightParams) -> dict:
    """DS2 probabilities and the assess.score numbers, with record-bootstrap CIs of ECE and NLL too."""
    from pipeline import assess, clinical
    from pipeline import calibration as cal
    from pipeline.evaluation import macro_f1
    from pipeline.training import predict_probs
    probs = predict_probs(model, data.test.x, cfg.batch_size)
    probs_val = predict_probs(model, data.val.x, cfg.batch_size)
    scored = [data.classes[i] for i in data.score]
    s = assess.score(data.test.y, probs, data.val.y, probs_val, data.test.record, data.classes, scored,
                     n_boot=ev.bootstrap, n_bins=ev.ece_bins, seed=ev.seed)
    m = s.metrics
    y, g = data.test.y, data.test.record
    ci = {}
    for key, p in (("before", probs), ("after", s.probs)):
        ci[f"ece_{key}"] = clinical.bootstrap_ci(lambda pp, yy: cal.ece(pp, yy, ev.ece_bins), (p, y), g,
                                                 ev.bootstrap, ev.seed)
        ci[f"nll_{key}"] = clinical.bootstrap_ci(cal.nll, (p, y), g, ev.bootstrap, ev.seed)
    return {"probs": probs, "probs_t": s.probs, "pred": probs.argmax(1), "metrics": m, "class_ci": s.class_ci95,
            "reliability": s.reliability, "ci": ci,
            "val_macro_f1": float(macro_f1(data.val.y, probs_val.argmax(1), data.score) or 0.0)}


def f1_cells(sc: dict, data: Data, after_too: bool = False) -> dict:
    m = sc["metrics"]
    out = {"macro_f1": _vc(m["macro_f1"], m["ci95"]["macro_f1"])}
    for k in data.score:
        c = data.classes[k]
        out[f"f1_{c}"] = _vc(m["per_class"][c]["f1"], sc["class_ci"][c]["f1"])
    return out


def paired(data: Data, pred_a, pred_b, ev) -> dict:
    from pipeline import clinical
    d = clinical.paired_difference(data.test.y, pred_a, pred_b, data.test.record, list(data.score), ev.bootstrap,
                                   ev.seed, len(data.classes))
    return _vc(d["diff"], d["ci"])


def changed_fraction(data: Data, pred_a, pred_b, ev) -> dict:
    from pipeline import clinical
    changed = (np.asarray(pred_a) != np.asarray(pred_b)).astype(np.float64)
    return _vc(changed.mean(), clinical.bootstrap_ci(lambda c: float(c.mean()), (changed,), data.test.record,
                                                     ev.bootstrap, ev.seed))


# --------------------------------------------------------------------------------------------- parts


def smoothing_part(scores: dict, states: dict, data: Data, ev, ref_name: str) -> dict:
    ref = scores[ref_name]
    out = {}
    y = data.test.y
    for name, sc in scores.items():
        m = sc["metrics"]
        called = np.bincount(sc["pred"], minlength=len(data.classes)) / len(y)
        row = {"temperature": float(m["temperature"]),
               "accuracy": float(m["accuracy"]),
               "mean_confidence_before": float(sc["probs"].max(1).mean()),
               "mean_confidence_after": float(sc["probs_t"].max(1).mean()),
               "share_called": {c: float(v) for c, v in zip(data.classes, called)},
               "ece_before": _vc(m["ece"]["before"], sc["ci"]["ece_before"]),
               "ece_after": _vc(m["ece"]["after"], sc["ci"]["ece_after"]),
               "nll_before": _vc(m["nll"]["before"], sc["ci"]["nll_before"]),
               "nll_after": _vc(m["nll"]["after"], sc["ci"]["nll_after"]),
               **f1_cells(sc, data)}
        if sc is not ref:
            row["top1_changed_vs_eps0"] = changed_fraction(data, sc["pred"], ref["pred"], ev)
            row["macro_f1_diff_vs_eps0"] = paired(data, sc["pred"], ref["pred"], ev)
        row.update(val_macro_f1=float(states[name]["best"]), best_epoch=int(states[name]["best_epoch"]),
                   epochs_run=int(states[name]["epoch"]))
        out[name] = row
    return out


def never_positive(model, x: dict, layer_names: list[str], batch_size: int) -> dict:
    """{layer: {"units", "never_positive", "fraction"}}: output channels whose value is never > 0 at any
    position on any row; for ReLU and leaky ReLU alike the output is > 0 exactly where the pre-activation
    is, so for a leaky model this counts the units that would be dead under ReLU."""
    import keras
    from keras import ops

    from pipeline.analysis import _feed
    peaks = []
    for n in layer_names:
        t = model.get_layer(n).output
        axes = tuple(range(1, len(t.shape) - 1))
        peaks.append(ops.max(t, axis=axes) if axes else t)
    probe = keras.Model(model.inputs, peaks, name=f"{model.name}_sign_probe")
    values = probe.predict(_feed(model, x), batch_size=batch_size, verbose=0)
    values = values if isinstance(values, (list, tuple)) else [values]
    out = {}
    for n, v in zip(layer_names, values):
        alive = np.asarray(v).max(axis=0) > 0
        out[n] = {"units": int(alive.size), "never_positive": int((~alive).sum()),
                  "fraction": float((~alive).mean())}
    return out


def leaky_part(relu_model, leaky, relu_sc: dict, leaky_sc: dict, states: dict, data: Data, ev, cfg) -> tuple:
    from pipeline import analysis
    dead = analysis.dead_units(relu_model, data.ds1, cfg.batch_size)
    layers = [k.split("/", 1)[1] for k in dead]
    sign = never_positive(leaky, data.ds1, layers, cfg.batch_size)
    per_layer = {}
    for key, v in dead.items():
        n = key.split("/", 1)[1]
        per_layer[n] = {"units": v["units"], "relu_dead": v["dead"], "relu_dead_fraction": v["fraction"],
                        "leaky_never_positive": sign[n]["never_positive"],
                        "leaky_never_positive_fraction": sign[n]["fraction"]}
    units = sum(v["units"] for v in per_layer.values())
    rows = {}
    for name, model_sc, count in (("relu", relu_sc, sum(v["relu_dead"] for v in per_layer.values())),
                                  ("leaky_relu", leaky_sc, sum(v["leaky_never_positive"] for v in per_layer.values()))):
        rows[name] = {"dead_fraction": count / units if units else 0.0, "dead_units": int(count),
                      "units": int(units), **f1_cells(model_sc, data),
                      "ece_after": _vc(model_sc["metrics"]["ece"]["after"], model_sc["ci"]["ece_after"])}
    rows["leaky_relu"]["macro_f1_diff_vs_relu"] = paired(data, leaky_sc["pred"], relu_sc["pred"], ev)
    rows["leaky_relu"]["top1_changed_vs_relu"] = changed_fraction(data, leaky_sc["pred"], relu_sc["pred"], ev)
    for name, st in (("relu", states["relu"]), ("leaky_relu", states["leaky_relu"])):
        rows[name].update(val_macro_f1=float(st["best"]), best_epoch=int(st["best_epoch"]), epochs_run=int(st["epoch"]))
    return rows, per_layer


def kernel_part(long_model, stack_model, info: dict, long_sc: dict, stack_sc: dict, states: dict, data: Data,
                ev) -> dict:
    conv = info["replaced"]
    bn = f"{conv}_bn" if f"{conv}_bn" in [layer.name for layer in long_model.layers] else None
    relu = _next_relu(long_model, conv)
    long_block = [conv] + ([bn] if bn else []) + ([relu] if relu else [])
    stack_block = [n for s in info["stack_layers"][:-1] for n in (s, f"{s}_bn", f"{s}_relu")] + long_block
    label_long = f"long_k{info['kernel']}_s{info['stride']}"
    label_stack = f"stack_k{'+'.join(map(str, info['stack']))}_s{info['stride']}"
    out = {}
    for label, model, block, sc, st, kernels in (
            (label_long, long_model, long_block, long_sc, states["long"], [info["kernel"]]),
            (label_stack, stack_model, stack_block, stack_sc, states["stack"], info["stack"])):
        strides = [1] * (len(kernels) - 1) + [info["stride"]]
        rf = receptive_field(kernels, strides)
        net_rf = network_receptive_field(model)
        out[label] = {**first_block_costs(model, block),
                      "first_block_receptive_field_samples": rf,
                      "first_block_receptive_field_ms": 1000.0 * rf / data.fs,
                      "receptive_field_samples": net_rf, "receptive_field_ms": 1000.0 * net_rf / data.fs,
                      "stride": info["stride"], **f1_cells(sc, data),
                      "val_macro_f1": float(st["best"]), "best_epoch": int(st["best_epoch"]),
                      "epochs_run": int(st["epoch"])}
    out[label_stack]["macro_f1_diff_vs_long"] = paired(data, stack_sc["pred"], long_sc["pred"], ev)
    return out


def _next_relu(model, conv_name: str) -> str | None:
    from pipeline.analysis import is_relu
    names = [layer.name for layer in model.layers]
    for layer in model.layers[names.index(conv_name) + 1:]:
        if is_relu(layer):
            return layer.name
    return None


# ------------------------------------------------------------------------------------------- figures


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def figures(out_dir: Path, scores: dict, per_layer: dict, kernel: dict) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline import plots
    from pipeline.io import atomic_path, ensure_dir
    ensure_dir(out_dir)
    out: dict = {"smoothing": [], "leaky": [], "kernel": []}
    for name, sc in scores.items():
        path = out_dir / f"reliability_{name.replace('=', '')}.png"
        ece = sc["metrics"]["ece"]
        with atomic_path(path, suffix=".png") as tmp:
            plots.plot_reliability(sc["reliability"]["before"], sc["reliability"]["after"], ece["before"],
                                   ece["after"], tmp)
        out["smoothing"].append(str(path))
    # ECE before/after per eps, with CIs
    fig, ax = plt.subplots(figsize=(5, 3.4))
    names = list(scores)
    for j, (key, label) in enumerate((("before", "before TS"), ("after", "after TS"))):
        vals = [scores[n]["metrics"]["ece"][key] for n in names]
        cis = [scores[n]["ci"][f"ece_{key}"] for n in names]
        err = np.array([[v - (c or {}).get("lo", v), (c or {}).get("hi", v) - v] for v, c in zip(vals, cis)]).T
        ax.bar(np.arange(len(names)) + (j - 0.5) * 0.38, vals, 0.38, yerr=err, capsize=3, label=label)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("DS2 ECE (95% CI)")
    ax.set_title("Label smoothing against temperature scaling")
    ax.legend(fontsize=8)
    out["smoothing"].append(_save(fig, out_dir / "ece_smoothing.png"))
    # dead units per layer
    layers = list(per_layer)
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(layers) + 2), 3.4))
    x = np.arange(len(layers))
    ax.bar(x - 0.2, [per_layer[n]["relu_dead_fraction"] for n in layers], 0.4, label="ReLU: dead")
    ax.bar(x + 0.2, [per_layer[n]["leaky_never_positive_fraction"] for n in layers], 0.4,
           label="leaky ReLU: pre-activation never > 0")
    ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share of units (DS1)")
    ax.set_title("Units that never fire on DS1")
    ax.legend(fontsize=8)
    out["leaky"].append(_save(fig, out_dir / "dead_relu.png"))
    # kernel study: cost against F1
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    labels = list(kernel)
    for ax, key, title in ((axes[0], "first_block_flops", "first block FLOPs / beat"),
                           (axes[1], "first_block_activation_bytes", "first block activations (bytes / beat)")):
        ax.bar(labels, [kernel[k][key] for k in labels], color=["tab:blue", "tab:orange"])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    f1 = [kernel[k]["macro_f1"]["value"] for k in labels]
    cis = [kernel[k]["macro_f1"]["ci95"] or {} for k in labels]
    err = np.array([[v - c.get("lo", v), c.get("hi", v) - v] for v, c in zip(f1, cis)]).T
    axes[2].bar(labels, f1, yerr=err, capsize=3, color=["tab:blue", "tab:orange"])
    axes[2].set_title("DS2 macro-F1 (95% CI)", fontsize=9)
    axes[2].tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    out["kernel"].append(_save(fig, out_dir / "kernel.png"))
    return out


# ------------------------------------------------------------------------------------------ readings


def _ci_text(cell: dict, fmt: str = ".3f") -> str:
    ci = cell.get("ci95")
    v = format(cell["value"], fmt) if cell.get("value") is not None else "n/a"
    return f"{v} [{format(ci['lo'], fmt)}, {format(ci['hi'], fmt)}]" if ci else v


def readings(result: dict) -> list[str]:
    out = []
    sm = result["smoothing"]
    b = result["base"]
    ref = sm[_eps_name(0.0, None if b["smoothing_loss"] == b["loss"] else b["smoothing_loss"])]
    if b["smoothing_loss"] != b["loss"]:
        out.append(f"The smoothing sweep uses the {b['smoothing_loss']} loss (a control), not the base run's {b['loss']}.")
    ts_text = ", ".join(f"{n} T={r['temperature']:.2f}" for n, r in sm.items())
    for n, r in sm.items():
        if r is ref:
            continue
        lo_ok = r["ece_before"]["value"] <= ref["ece_after"]["value"]
        ci = r["ece_before"]["ci95"]
        overlap = ci is not None and ref["ece_after"]["ci95"] is not None and ci["lo"] <= ref["ece_after"]["ci95"]["hi"]
        verdict = ("as low as" if lo_ok else "comparable to (CIs overlap)" if overlap else "higher than")
        out.append(f"Smoothing {n}: DS2 ECE before temperature scaling {_ci_text(r['ece_before'])} is {verdict} "
                   f"eps=0 after scaling {_ci_text(ref['ece_after'])} (eps=0 before: {_ci_text(ref['ece_before'])}); "
                   f"NLL before {_ci_text(r['nll_before'])} against eps=0 after {_ci_text(ref['nll_after'])}.")
    out.append(f"Temperature chosen on the validation fold: {ts_text} (T > 1 softens, T < 1 sharpens); after scaling "
               "ECE is " + ", ".join(f"{n} {_ci_text(r['ece_after'])}" for n, r in sm.items()) + ".")
    for n, r in sm.items():
        if r is ref:
            continue
        out.append(f"Top-1 decisions, {n} against eps=0: {100 * r['top1_changed_vs_eps0']['value']:.1f}% of DS2 beats "
                   f"change class (95% CI {100 * (r['top1_changed_vs_eps0']['ci95'] or {}).get('lo', float('nan')):.1f}-"
                   f"{100 * (r['top1_changed_vs_eps0']['ci95'] or {}).get('hi', float('nan')):.1f}%); macro-F1 "
                   f"{_ci_text(r['macro_f1'])} against {_ci_text(ref['macro_f1'])}, paired difference "
                   f"{_ci_text(r['macro_f1_diff_vs_eps0'], '+.3f')}.")
    true_share = result.get("test_class_share") or {}
    for n, r in sm.items():
        if not true_share:
            break
        c, extra = max(((c, v - true_share.get(c, 0.0)) for c, v in r["share_called"].items()), key=lambda kv: kv[1])
        if extra > 0.01:
            out.append(f"{n}: {100 * r['share_called'][c]:.1f}% of DS2 beats are called {c} (true share "
                       f"{100 * true_share.get(c, 0.0):.2f}%); mean confidence {r['mean_confidence_before']:.2f} before "
                       f"scaling against accuracy {r['accuracy']:.3f}.")
    w = b.get("class_weights_train")
    if w and b["smoothing_loss"] == b["loss"] and any(r["ece_before"]["value"] > ref["ece_before"]["value"]
                                                      for r in sm.values() if r is not ref):
        lo, hi = min(w, key=w.get), max(w, key=w.get)
        out.append(f"Why smoothing hurts here: the {b['loss']} loss weights every class's term by its alpha "
                   f"({hi} {w[hi]:.2f} against {lo} {w[lo]:.3f} on these training counts)"
                   + (" and damps only confident terms (the focal factor (1 - p)^gamma)" if b["loss"] == "focal" else "")
                   + ", so the eps/K target smoothing puts on every class counts most on the rarest classes: the fit "
                   "moves probability towards them instead of merely softening the true class.")
    lk = result["leaky"]
    worst = max(result["dead_per_layer"].items(), key=lambda kv: kv[1]["relu_dead_fraction"])
    out.append(f"Dead units on DS1: ReLU model {100 * lk['relu']['dead_fraction']:.1f}% of {lk['relu']['units']} units "
               f"never fire (most in {worst[0]}, {100 * worst[1]['relu_dead_fraction']:.0f}%); the leaky-ReLU model has "
               f"{100 * lk['leaky_relu']['dead_fraction']:.1f}% whose pre-activation is never positive (dead had they "
               f"been ReLU). DS2 macro-F1 {_ci_text(lk['leaky_relu']['macro_f1'])} (leaky) against "
               f"{_ci_text(lk['relu']['macro_f1'])} (ReLU), paired difference "
               f"{_ci_text(lk['leaky_relu']['macro_f1_diff_vs_relu'], '+.3f')}.")
    kn = result["kernel"]
    (ln, lr), (sn, sr) = list(kn.items())
    out.append(f"First layer {ln} against {sn} (same receptive field {lr['first_block_receptive_field_samples']} samples = "
               f"{lr['first_block_receptive_field_ms']:.1f} ms, same stride {lr['stride']}, output {lr['output_samples']} "
               f"against {sr['output_samples']} samples): first-block parameters {lr['first_block_params']:,} against "
               f"{sr['first_block_params']:,}, FLOPs per beat {lr['first_block_flops']:,} against "
               f"{sr['first_block_flops']:,} (whole model {lr['flops_per_beat']:,} against {sr['flops_per_beat']:,}), "
               f"activations {lr['first_block_activation_bytes']:,} against {sr['first_block_activation_bytes']:,} bytes "
               f"per beat; DS2 macro-F1 {_ci_text(lr['macro_f1'])} against {_ci_text(sr['macro_f1'])}, paired "
               f"difference (stack minus long) {_ci_text(sr['macro_f1_diff_vs_long'], '+.3f')}.")
    if sr["first_block_params"] > lr["first_block_params"]:
        c_in = result["base"].get("input_channels")
        out.append(f"The stack costs more here although it saves weights deeper in a network: a stack of short kernels "
                   f"saves only when its convs map C channels to C (VGG's argument), but the first layer reads "
                   f"{c_in or 'few'} input channels, so the stack's later convs ({lr['output_channels']} to "
                   f"{lr['output_channels']} channels) outweigh the long kernel's single pass over the input; its "
                   f"inner map also runs at the full input rate before the stride.")
    return out


def method(result: dict, cfg: InsightParams, base: Base) -> dict:
    b = result["base"]
    fit_text = (f"every variant: {base.model} with ecg_train's {base.model} kwargs and the {base.loss} loss, trained "
                f"on the DS1 folds except fold {cfg.val_fold} ({b['train_beats']:,} beats"
                + (f", a class-preserving subsample of {cfg.train_beats}" if cfg.train_beats else "")
                + f"), at most {cfg.fit.epochs} epochs (batch {cfg.fit.batch_size}, lr {cfg.fit.learning_rate:g}), "
                f"the best epoch by macro-F1 on fold {cfg.val_fold} ({b['val_beats']:,} beats; patience "
                f"{cfg.fit.patience}), seed {cfg.seed} for all; DS2 ({b['test_beats']:,} beats, {b['test_records']} "
                "records) scored once per variant. 95% CIs: record bootstrap (evaluate.bootstrap draws, evaluate.seed); "
                "differences: paired record bootstrap (the same records resampled for both models)")
    return {
        "smoothing": f"{fit_text}. Label smoothing eps mixes eps/K of every class into the one-hot target (K = "
                     f"{len(result['classes'])} classes) inside the {b['smoothing_loss']} loss with ecg_train's knobs "
                     "for it (class weights from the training counts, base.class_weights_train). Temperature T minimises the NLL of "
                     f"softmax(log p / T) on fold {cfg.val_fold} only and is applied to DS2 unchanged; ECE is the "
                     "top-label ECE over evaluate.ece_bins equal-width bins, NLL the mean -log p(true class), both over "
                     "all 5 classes; temperature never changes the argmax, so macro-F1 and per-class F1 (N, S, V, F) "
                     "are the same before and after scaling. 'top1 changed' is the share of DS2 beats whose most "
                     "probable class differs from the eps=0 model's",
        "leaky": "the eps=0 model rebuilt with pipeline.insight.with_activation(model, 'leaky_relu', negative_slope="
                 f"{cfg.leaky_slope:g}) and trained from scratch the same way (the builder in ecg/models.py keeps ReLU: "
                 "an activation param there waits for the next full ECG retrain, because editing the builder makes "
                 "every trained stage stale). Dead unit (ReLU model, pipeline.analysis.dead_units): an output "
                 "channel or neuron never > 0 at any position on any of "
                 f"{b['dead_probe_beats']:,} DS1 beats; for the leaky model the same count of units whose "
                 "pre-activation is never positive (its output is > 0 exactly where the pre-activation is), i.e. the "
                 "units that would be dead under ReLU. DS1 includes the training beats, so this is what the network "
                 "learned to do, not a test",
        "kernel": "the first conv of the eps=0 model (kernel k, stride s) replaced, by functional surgery on the built "
                  "model (keras.models.clone_model with a call_function; ecg/models.py untouched), by a stack of "
                  "short convs with the same receptive field 1 + sum(k_i - 1) = k and the same overall stride (stride 1 "
                  "inside the stack, s on its last conv; each conv but the last followed by its own BatchNormalization "
                  "and ReLU, same filters). The long kernel is the model's own stem (7 taps = 19 ms at 360 Hz, stride "
                  "2), so the eps=0 fit is its arm and the study costs one extra fit; a longer first kernel would "
                  "need two fits beyond the budget. Params: all weights of the model; FLOPs per beat: "
                  "pipeline.deploy.layer_costs with BatchNorm folded (2 x MACs, 'same' padding taps included); "
                  "first-block activation memory: elements of the block's conv outputs (what a fused conv+BN+ReLU "
                  "engine writes) x 4 bytes per beat, the _training figure also counts every BN and ReLU output kept "
                  "for backprop; output resolution: samples of the block's output; receptive field of the block and "
                  "of the whole network (samples, ms)",
    }


# --------------------------------------------------------------------------------------------- stage


def run(cfg: InsightParams, ev, base: Base, data_dir: Path, out_dir: Path = OUT, metrics_path: Path = METRICS,
        ckpt: Path = CKPT) -> dict:
    import keras

    from pipeline.io import ensure_dir, save_npz, write_json
    t_all = time.perf_counter()
    timings: dict = {}
    t = time.perf_counter()
    data = load_data(data_dir, base, cfg)
    timings["load_data_s"] = time.perf_counter() - t
    counts = np.bincount(data.train.y, minlength=len(data.classes))
    print(f"insight_ecg: base {base.run} ({base.model}, {base.loss}); train {len(data.train.y)} beats {counts.tolist()}, "
          f"validation fold {cfg.val_fold} {len(data.val.y)} beats, DS2 {len(data.test.y)} beats", flush=True)
    ensure_dir(out_dir)

    # ---- 1. label smoothing (eps=0 is also the ReLU / long-kernel reference)
    t = time.perf_counter()
    sweep_loss = cfg.smoothing_loss if cfg.smoothing_loss not in (None, base.loss) else None
    models_, states, scores, fit_s = {}, {}, {}, {}
    for eps in cfg.smoothing:
        name = _eps_name(eps, sweep_loss)
        loss, loss_args = make_loss(base, eps, counts, sweep_loss)
        models_[name], states[name], fit_s[name] = train_variant(
            name, lambda: build_base(base, data), loss, loss_args, base, data, cfg, ckpt, {})
        scores[name] = score_variant(models_[name], data, ev, cfg)
    smoothing = smoothing_part(scores, states, data, ev, _eps_name(0.0, sweep_loss))
    timings["smoothing_s"] = time.perf_counter() - t
    ref = _eps_name(0.0)
    loss0, loss0_args = make_loss(base, 0.0, counts)
    if ref not in models_:   # the sweep used another loss: the base loss at eps=0 is the leaky / kernel reference
        t = time.perf_counter()
        models_[ref], states[ref], fit_s[ref] = train_variant(
            ref, lambda: build_base(base, data), loss0, loss0_args, base, data, cfg, ckpt, {})
        scores[ref] = score_variant(models_[ref], data, ev, cfg)
        timings["reference_s"] = time.perf_counter() - t

    # ---- 2. leaky ReLU
    t = time.perf_counter()
    from pipeline.insight import leaky_relu_fn
    leaky_relu_fn(cfg.leaky_slope)   # registered before fit looks for a checkpoint to resume (it names this activation)
    leaky_model_, leaky_state, fit_s["leaky_relu"] = train_variant(
        "leaky_relu", lambda: leaky_model(build_base(base, data), cfg.leaky_slope), loss0, loss0_args, base, data,
        cfg, ckpt, {"activation": "leaky_relu", "negative_slope": cfg.leaky_slope})
    leaky_sc = score_variant(leaky_model_, data, ev, cfg)
    leaky, per_layer = leaky_part(models_[ref], leaky_model_, scores[ref], leaky_sc,
                                  {"relu": states[ref], "leaky_relu": leaky_state}, data, ev, cfg)
    timings["leaky_s"] = time.perf_counter() - t

    # ---- 4. long kernel against a stack of short ones
    t = time.perf_counter()
    info = with_stacked_stem(build_base(base, data), cfg.kernel.stack)[1]
    stack_name = f"stack_k{'+'.join(map(str, info['stack']))}"
    stack_model, stack_state, fit_s[stack_name] = train_variant(
        stack_name, lambda: with_stacked_stem(build_base(base, data), cfg.kernel.stack)[0], loss0, loss0_args, base,
        data, cfg, ckpt, {"stack": info["stack"]})
    stack_sc = score_variant(stack_model, data, ev, cfg)
    kernel = kernel_part(models_[ref], stack_model, info, scores[ref], stack_sc,
                         {"long": states[ref], "stack": stack_state}, data, ev)
    timings["kernel_s"] = time.perf_counter() - t
    timings.update({f"fit_{k}_s": v for k, v in fit_s.items()})

    t = time.perf_counter()
    figs = figures(out_dir, {k: v for k, v in scores.items() if k in smoothing}, per_layer, kernel)
    save_npz(out_dir / "predictions.npz", y=data.test.y, record=data.test.record,
             **{f"probs_{k.replace('=', '')}": v["probs"] for k, v in scores.items()},
             probs_leaky_relu=leaky_sc["probs"], **{f"probs_{stack_name}": stack_sc["probs"]})
    timings["figures_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all
    # the per-analysis budget: shared work (loading, the eps=0 fit) is counted in smoothing_s only
    result = {
        "base": {"run": base.run, "model": base.model, "loss": base.loss, "smoothing_loss": sweep_loss or base.loss,
                 "class_weights_train": _class_weights(base, counts, data.classes),
                 "train_class_counts": {c: int(n) for c, n in zip(data.classes, counts)}, "val_fold": cfg.val_fold,
                 "train_beats": int(len(data.train.y)), "val_beats": int(len(data.val.y)),
                 "test_beats": int(len(data.test.y)), "test_records": int(len(np.unique(data.test.record))),
                 "dead_probe_beats": int(len(data.ds1["beat"])), "input_channels": len(base.channels), "keras_backend": keras.backend.backend()},
        "classes": data.classes,
        "test_class_share": {c: float(v) for c, v in zip(data.classes, np.bincount(data.test.y, minlength=len(data.classes))
                                                           / len(data.test.y))},
        "smoothing": smoothing,
        "leaky": leaky,
        "dead_per_layer": per_layer,
        "kernel": kernel,
        "figures": figs,
        "params": asdict(cfg),
        "timings_s": timings,
    }
    result["readings"] = readings(result)
    result["method"] = method(result, cfg, base)
    write_json(metrics_path, result)
    return result


def _class_weights(base: Base, counts, classes) -> dict | None:
    """The per-class alpha of the base loss on these training counts (None for a loss without one)."""
    from pipeline.losses import class_weights
    alpha = getattr(base.loss_params.of(base.loss), "alpha", None)
    if alpha is None:
        return None
    w = class_weights(counts, alpha if isinstance(alpha, str) else list(alpha))
    return {c: float(v) for c, v in zip(classes, w)}


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/ecg")
    ap.add_argument("--package", default="models/ecg")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--metrics", default=str(METRICS))
    ap.add_argument("--checkpoints", default=str(CKPT))
    args = ap.parse_args(argv)
    from pipeline.evaluate import load_params as load_evaluate
    cfg = load(args.params)
    ev = load_evaluate(args.params)
    base = load_base(Path(args.package), args.params)
    result = run(cfg, ev, base, Path(args.data), Path(args.out), Path(args.metrics), Path(args.checkpoints))
    for line in result["readings"]:
        print(line)
    print("insight_ecg timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["timings_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
