"""Stage forgetting_vision: how much of its source task (CIFAR-10) a backbone forgets when fine-tuned on a medical set.

    python -m vision.forgetting [--params params.yaml] [--data data/vision] [--backbones artifacts/vision/pretrain]
        [--out artifacts/analysis/forgetting_vision] [--metrics metrics/analysis/forgetting_vision.json]

Params section `forgetting_vision`. One pretrained backbone (artifacts/vision/pretrain/<model>/backbone.keras) is
transferred to one medical set (data/vision/<dataset>.npz) with vision.transfer, exactly as train_vision does: a
head trained on the frozen backbone's cached features (the "frozen" variant, 0 blocks unfrozen), then, per variant
(unfreeze_from block x learning rate), the backbone from that block on + the same warmed-up head fine-tuned for the
same epochs with the same seed. Every fit goes through pipeline.training.fit with its own checkpoint folder under
artifacts/checkpoints/vision/forgetting/<variant> (the head: .../head), so a rerun restores instead of retraining.
The checkpoint kept is the best epoch on medical validation macro-F1; the medical test split is read once per
variant, after training, for the reported scores.

Source task (the forgetting side): a linear probe (StandardScaler + sklearn LogisticRegression, fixed C) is fitted
on the ORIGINAL backbone's pooled features of the first `source_train` CIFAR-10 source-train images and scored on
the source validation split. After fine-tuning each variant is read two ways:
  old readout  the original probe applied to the fine-tuned backbone's features (what the old readout still gets)
  refit        a probe of the same kind re-fitted on the fine-tuned features (what the representation still holds)
Source loss = original accuracy - accuracy after fine-tuning, on the same images (paired image-bootstrap CI).
Runs whose leading layers are unchanged (frozen blocks) share their predictions (vision.analyse.prefix_tree), and the
source features of each backbone are cached by a hash of its weights.

Outputs: metrics/analysis/forgetting_vision.json (parts "setting", "target", "source", plus "readings", "method",
"timings_s"), artifacts/analysis/forgetting_vision/forgetting.png (target gain against source loss, one labelled
point per variant) and run.json (params, provenance, wall times).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pipeline import clinical
from pipeline.io import atomic_path, fingerprint, read_json, save_npz, write_json
from pipeline.params import ParamsError, load_section
from pipeline.training import FitConfig
from vision.augment import Augment

FROZEN = "frozen"
LOSS_NAMES = ("ce", "weighted_ce", "focal")
POLICIES = ("auto", "on", "off")
CKPT_ROOT = Path("artifacts/checkpoints/vision/forgetting")
BATCH = 128


@dataclass(frozen=True)
class Config:
    model: str = "alexnet"                       # backbone (artifacts/vision/pretrain/<model>)
    dataset: str = "breastmnist"                 # medical set (data/vision/<dataset>.npz)
    source: str = "source_cifar10"               # source set the backbone was pretrained on (data/vision/<source>.npz)
    unfreeze_from: tuple[str, ...] = ("block5", "block4", "block1")   # first trainable block of each variant
    learning_rates: tuple[float, ...] = (1e-4, 1e-3)                  # fine-tuning learning rates
    seed: int = 42                               # training seed (the same for every variant)
    loss: str = "ce"
    head_units: tuple[int, ...] = (256,)
    dropout: float = 0.5
    head_fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=30, batch_size=64, learning_rate=1e-3,
                                                                  patience=5))
    finetune_epochs: int = 2
    finetune_batch_size: int = 32
    finetune_patience: int = 2
    augment: Augment = field(default_factory=lambda: Augment(
        flip={"pneumoniamnist": "none", "breastmnist": "horizontal", "retinamnist": "horizontal_and_vertical"},
        translate=0.05, rotate_deg=10.0, contrast=0.1))
    limit: int | None = None                     # first N medical images per split (smoke runs and tests only)
    source_train: int | None = 1000              # first N source-train images the probes are fitted on; null = all
    source_val: int | None = None                # first N source-validation images scored; null = all
    probe_c: float = 1.0                         # inverse L2 strength of the LogisticRegression probes (fixed)
    probe_max_iter: int = 2000
    bootstrap: int = 1000                        # image-bootstrap resamples for the 95% CIs
    bootstrap_seed: int = 0
    mixed_precision: str = "auto"

    def validate(self) -> None:
        from vision.models import BACKBONES

        if self.model not in BACKBONES:
            raise ParamsError(f"model: unknown backbone {self.model!r}; valid: {list(BACKBONES)}")
        blocks = BACKBONES[self.model].blocks
        if not self.unfreeze_from:
            raise ParamsError("unfreeze_from: give at least one block")
        bad = [b for b in self.unfreeze_from if b not in blocks]
        if bad:
            raise ParamsError(f"unfreeze_from: {bad} not block(s) of {self.model}; valid: {list(blocks)}")
        if len(set(self.unfreeze_from)) != len(self.unfreeze_from):
            raise ParamsError(f"unfreeze_from: repeated block in {list(self.unfreeze_from)}")
        if not self.learning_rates or any(not lr > 0 for lr in self.learning_rates):
            raise ParamsError(f"learning_rates: positive numbers, got {list(self.learning_rates)}")
        if len(set(self.learning_rates)) != len(self.learning_rates):
            raise ParamsError(f"learning_rates: repeated value in {list(self.learning_rates)}")
        if self.loss not in LOSS_NAMES:
            raise ParamsError(f"loss: one of {list(LOSS_NAMES)}, got {self.loss!r}")
        if min(self.finetune_epochs, self.finetune_batch_size, self.finetune_patience, self.bootstrap,
               self.probe_max_iter) < 1:
            raise ParamsError("finetune_epochs, finetune_batch_size, finetune_patience, bootstrap and probe_max_iter "
                              "must be >= 1")
        for key in ("limit", "source_train", "source_val"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ParamsError(f"{key} must be null or >= 1, got {v}")
        if not self.probe_c > 0:
            raise ParamsError(f"probe_c must be positive, got {self.probe_c}")
        if not 0 <= self.dropout < 1:
            raise ParamsError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.mixed_precision not in POLICIES:
            raise ParamsError(f"mixed_precision: one of {list(POLICIES)}, got {self.mixed_precision!r}")

    def finetune_fit(self, learning_rate: float) -> FitConfig:
        return FitConfig(epochs=self.finetune_epochs, batch_size=self.finetune_batch_size,
                         learning_rate=float(learning_rate), patience=self.finetune_patience)


def load_config(path="params.yaml") -> Config:
    return load_section("forgetting_vision", Config, path)


# ------------------------------------------------------------------------------------------ variants

def variant_name(block: str, learning_rate: float) -> str:
    """'from_block4-lr0.001': the first unfrozen block and the fine-tuning learning rate."""
    return f"from_{block}-lr{float(learning_rate):g}"


def variants(cfg: Config) -> list[dict]:
    """The fine-tuning variants, fewest unfrozen blocks first: name, unfreeze_from, blocks_unfrozen, learning_rate."""
    from vision.models import BACKBONES

    blocks = list(BACKBONES[cfg.model].blocks)
    out = []
    for block in sorted(cfg.unfreeze_from, key=blocks.index, reverse=True):
        for lr in cfg.learning_rates:
            out.append({"name": variant_name(block, lr), "unfreeze_from": block,
                        "blocks_unfrozen": len(blocks) - blocks.index(block), "learning_rate": float(lr)})
    return out


def train_config(cfg: Config, block: str | None = None, learning_rate: float | None = None):
    """The knobs vision.transfer.transfer reads, for one variant (block None: the frozen head only)."""
    from vision.train_config import Finetune, VisionTrain

    fit = cfg.finetune_fit(learning_rate if learning_rate is not None else 1e-4)
    return VisionTrain(seed=cfg.seed, head_units=tuple(cfg.head_units), dropout=cfg.dropout, head_fit=cfg.head_fit,
                       finetune=Finetune(fit=fit, augment=cfg.augment),
                       unfreeze_from=SimpleNamespace(**{cfg.model: block}),
                       mixed_precision=cfg.mixed_precision, limit=cfg.limit)


def head_config(cfg: Config) -> dict:
    return {"seed": cfg.seed, "head_units": list(cfg.head_units), "dropout": cfg.dropout,
            "head_fit": asdict(cfg.head_fit), "loss": cfg.loss, "limit": cfg.limit}


# ------------------------------------------------------------------------------------------ the probe

def make_probe(cfg: Config):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=cfg.probe_c, max_iter=cfg.probe_max_iter))


def fit_probe(cfg: Config, x, y):
    """A probe fitted on features x; convergence warnings are counted, not printed."""
    from sklearn.exceptions import ConvergenceWarning

    probe = make_probe(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(np.asarray(x, np.float64), np.asarray(y))
    probe.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return probe


def probe_correct(probe, x, y) -> np.ndarray:
    """1.0 where the probe's call on features x is right, per image."""
    return (probe.predict(np.asarray(x, np.float64)) == np.asarray(y)).astype(np.float64)


def forgetting(cfg: Config, original: dict, after: dict, y_train, y_val) -> dict:
    """Per-image correctness on the source validation images: the original probe on the original features ("before"),
    the same probe on each fine-tuned backbone's features ("old_readout") and a probe re-fitted on them ("refit").

    original: {"train", "val"} features of the original backbone; after: variant -> {"train", "val"} features."""
    probe = fit_probe(cfg, original["train"], y_train)
    out = {"before": probe_correct(probe, original["val"], y_val), "converged": {"original": probe.converged_},
           "old_readout": {}, "refit": {}}
    for name, feats in after.items():
        out["old_readout"][name] = probe_correct(probe, feats["val"], y_val)
        if np.array_equal(feats["train"], original["train"]):
            refit = probe  # identical features: the refit is the same deterministic fit
        else:
            refit = fit_probe(cfg, feats["train"], y_train)
        out["refit"][name] = probe_correct(refit, feats["val"], y_val)
        out["converged"][name] = refit.converged_
    return out


# ------------------------------------------------------------------------------------------ statistics

def draws_for(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) image-bootstrap indices (clinical.group_draws, every image its own group)."""
    return np.stack(list(clinical.group_draws(np.arange(n), n_boot, seed)))


def mean_ci(values, draws) -> dict:
    values = np.asarray(values, np.float64)
    return {"value": float(values.mean()), "ci95": clinical.percentile(values[draws].mean(axis=1))}


def f1_draws(y, pred, draws, classes) -> np.ndarray:
    from pipeline.evaluation import macro_f1

    out = [macro_f1(y[d], pred[d], classes) for d in draws]
    return np.array([np.nan if v is None else v for v in out])


def target_scores(y, probs: dict, draws, classes) -> dict:
    """Per variant: accuracy and macro-F1 with CIs, and their paired gains over the frozen variant."""
    from pipeline.evaluation import macro_f1

    y = np.asarray(y)
    pred = {k: np.asarray(p).argmax(axis=1) for k, p in probs.items()}
    correct = {k: (p == y).astype(np.float64) for k, p in pred.items()}
    f1 = {k: macro_f1(y, p, classes) for k, p in pred.items()}
    f1d = {k: f1_draws(y, p, draws, classes) for k, p in pred.items()}
    out = {}
    for k in probs:
        out[k] = {"accuracy": mean_ci(correct[k], draws),
                  "macro_f1": {"value": f1[k], "ci95": clinical.percentile(f1d[k])},
                  "accuracy_gain": mean_ci(correct[k] - correct[FROZEN], draws),
                  "macro_f1_gain": {"value": None if f1[k] is None or f1[FROZEN] is None else f1[k] - f1[FROZEN],
                                    "ci95": clinical.percentile(f1d[k] - f1d[FROZEN])}}
    return out


def source_scores(fg: dict, draws) -> dict:
    """Per variant: source accuracy of the old readout and of the refitted probe, and the paired losses."""
    before = fg["before"]
    out = {}
    for k in fg["old_readout"]:
        old, refit = fg["old_readout"][k], fg["refit"][k]
        out[k] = {"accuracy_old_readout": mean_ci(old, draws), "loss_old_readout": mean_ci(before - old, draws),
                  "accuracy_refit": mean_ci(refit, draws), "loss_refit": mean_ci(before - refit, draws),
                  "probe_converged": bool(fg["converged"][k])}
    return out


# ------------------------------------------------------------------------------------------ features

def weights_hash(model) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def source_extractor(backbone, shape):
    """Raw source image -> the backbone's pooled features, with the backbone's own preprocessing."""
    from vision.models import build_classifier
    from vision.transfer import feature_extractor

    return feature_extractor(build_classifier(backbone, 2, input_shape=shape, head_units=()))


def shared_predict(models: dict, xs: dict, check: int = 8) -> dict:
    """{split: {name: model.predict(xs[split])}} with the identical leading layers of the models computed once
    (vision.analyse.prefix_tree); checked against a direct predict on the first `check` images of the first split."""
    from vision.analyse import inference_chain, prefix_tree

    tree = prefix_tree({k: inference_chain(m) for k, m in models.items()})
    if check:
        x = next(iter(xs.values()))[:check]
        got = tree.predict(x, BATCH)
        for k, m in models.items():
            direct = np.asarray(m.predict(x, batch_size=BATCH, verbose=0), np.float64)
            if not np.allclose(got[k], direct, atol=1e-4, rtol=1e-3):
                raise RuntimeError(f"{k}: the shared layer chain disagrees with model.predict")
    return {split: tree.predict(x, BATCH) for split, x in xs.items()}


def source_features(backbones: dict, source_x: dict, key_parts, cache_dir: Path) -> dict:
    """{name: {"train", "val"} float32 pooled features} of each backbone on the source images; cached under
    cache_dir by a hash of the backbone's weights and `key_parts` (the source data and subset)."""
    keys = {k: fingerprint(weights_hash(b), *key_parts) for k, b in backbones.items()}
    out, todo = {}, {}
    for k, b in backbones.items():
        path = cache_dir / f"{keys[k]}.npz"
        if path.is_file():
            with np.load(path) as npz:
                feats = {s: npz[s] for s in npz.files}
            if set(feats) == set(source_x) and all(len(feats[s]) == len(source_x[s]) for s in source_x):
                out[k] = feats
                continue
        todo[k] = b
    if todo:
        shape = next(iter(source_x.values())).shape[1:]
        extractors = {k: source_extractor(b, shape) for k, b in todo.items()}
        got = shared_predict(extractors, source_x)
        computed = {k: {split: got[split][k].astype(np.float32) for split in source_x} for k in todo}
        for k, feats in computed.items():
            save_npz(cache_dir / f"{keys[k]}.npz", **feats)
            out[k] = feats
    return out


# ------------------------------------------------------------------------------------------ the stage

def _load_inputs(cfg: Config, data_dir: Path, backbone_dir: Path):
    from vision import dataset

    info_path = backbone_dir / "backbone.json"
    if not info_path.is_file() or not (backbone_dir / "backbone.keras").is_file():
        raise FileNotFoundError(f"{backbone_dir}: backbone.keras + backbone.json missing; run pretrain_vision "
                                f"for {cfg.model}")
    info = read_json(info_path)
    for key in ("model", "sha256", "input_shape"):
        if key not in info:
            raise ValueError(f"{info_path}: missing key '{key}' (written by pretrain_vision)")
    if info["model"] != cfg.model:
        raise ValueError(f"{info_path}: holds a {info['model']!r} backbone, forgetting_vision.model is {cfg.model!r}")
    target, tmeta = dataset.load(data_dir, cfg.dataset, cfg.limit)
    if len(target["test"].y) == 0:
        raise ValueError(f"{data_dir / cfg.dataset}.npz: empty test split")
    source, smeta = dataset.load(data_dir, cfg.source)
    if info.get("source_data_sha256") not in (None, smeta["sha256"]):
        raise ValueError(f"{info_path}: the backbone was pretrained on other data than {data_dir / cfg.source}.npz "
                         f"(source_data_sha256 differs)")
    if tuple(source["train"].x.shape[1:]) != tuple(info["input_shape"]):
        raise ValueError(f"{data_dir / cfg.source}.npz: images {source['train'].x.shape[1:]} but the backbone takes "
                         f"{tuple(info['input_shape'])}")
    return info, target, tmeta, source, smeta


def run(cfg: Config, data_dir: Path, backbone_dir: Path, out_dir: Path, ckpt_root: Path = CKPT_ROOT) -> dict:
    """Train (or restore) every variant, measure target gain and source forgetting; return the metrics dict
    (the figure and run.json are written into out_dir)."""
    import keras

    from pipeline import device
    from pipeline.losses import make_loss
    from vision.checkpoint import load_backbone
    from vision.models import find_backbone
    from vision.transfer import transfer

    clock, t0, cpu0 = {}, time.perf_counter(), time.process_time()
    info, target, tmeta, source, smeta = _load_inputs(cfg, data_dir, backbone_dir)
    policy = device.configure(cfg.mixed_precision)
    n_classes, classes = tmeta["n_classes"], tuple(range(tmeta["n_classes"]))
    counts = np.bincount(target["train"].y, minlength=n_classes)
    loss = make_loss(cfg.loss, class_counts=counts)
    fit_splits = {"train": target["train"], "val": target["val"]}   # the test split never reaches training
    data_fp = [tmeta["sha256"], info["sha256"], cfg.limit, policy]
    head_fp = fingerprint(*data_fp, head_config(cfg))
    head_run = (ckpt_root / "head", head_fp)
    feature_path = ckpt_root / "features" / f"{fingerprint(*data_fp, cfg.seed)}.npz"

    def load():
        return load_backbone(backbone_dir)[0]

    print(f"forgetting_vision: {cfg.model} ({info['source']}, {info['sha256'][:12]}) on {cfg.dataset}: "
          f"train {len(target['train'].y)} / val {len(target['val'].y)} / test {len(target['test'].y)} images; "
          f"precision policy {policy}", flush=True)
    models, records = {}, {}
    restored = sum(any((ckpt_root / name).glob("ckpt-*")) for name in ["head", *(v["name"] for v in variants(cfg))])
    models[FROZEN], rec = transfer("frozen", cfg.model, cfg.dataset, load, fit_splits, n_classes, loss,
                                   train_config(cfg), head_run, None, feature_path)
    records[FROZEN] = {"unfreeze_from": None, "blocks_unfrozen": 0, "learning_rate": None,
                       "trainable_params": rec["trainable"]["trainable_params"], "best_epoch": rec["best_epoch"],
                       "epochs_run": rec["epochs_run"]}
    clock["head_s"] = time.perf_counter() - t0
    for v in variants(cfg):
        t = time.perf_counter()
        vt = train_config(cfg, v["unfreeze_from"], v["learning_rate"])
        run_fp = fingerprint(*data_fp, head_fp, asdict(vt.finetune), v["unfreeze_from"], cfg.dataset)
        models[v["name"]], rec = transfer("finetune", cfg.model, cfg.dataset, load, fit_splits, n_classes, loss, vt,
                                          head_run, (ckpt_root / v["name"], run_fp), feature_path)
        records[v["name"]] = {"unfreeze_from": v["unfreeze_from"], "blocks_unfrozen": v["blocks_unfrozen"],
                              "learning_rate": v["learning_rate"],
                              "trainable_params": rec["trainable"]["trainable_params"],
                              "best_epoch": rec["best_epoch"], "epochs_run": rec["epochs_run"]}
        clock[f"finetune_{v['name']}_s"] = time.perf_counter() - t
        print(f"{v['name']}: best val macro-F1 {rec['val_macro_f1']:.4f} at epoch {rec['best_epoch']}", flush=True)

    # medical validation and test predictions (the test split: read here, once per variant)
    t = time.perf_counter()
    probs = shared_predict(models, {"val": target["val"].x, "test": target["test"].x})
    val_probs, test_probs = probs["val"], probs["test"]
    val_draws = draws_for(len(target["val"].y), cfg.bootstrap, cfg.bootstrap_seed)
    test_draws = draws_for(len(target["test"].y), cfg.bootstrap, cfg.bootstrap_seed)
    top_share = {k: float(np.bincount(np.asarray(p).argmax(axis=1), minlength=n_classes).max() / len(p))
                 for k, p in test_probs.items()}
    val_scores = target_scores(target["val"].y, val_probs, val_draws, classes)
    test_scores = target_scores(target["test"].y, test_probs, test_draws, classes)
    clock["target_scores_s"] = time.perf_counter() - t

    # source task: the probes
    t = time.perf_counter()
    n_tr = len(source["train"].y) if cfg.source_train is None else min(cfg.source_train, len(source["train"].y))
    n_va = len(source["val"].y) if cfg.source_val is None else min(cfg.source_val, len(source["val"].y))
    source_x = {"train": source["train"].x[:n_tr], "val": source["val"].x[:n_va]}
    y_tr, y_va = source["train"].y[:n_tr], source["val"].y[:n_va]
    backbones = {"original": load(), **{k: find_backbone(m) for k, m in models.items() if k != FROZEN}}
    feats = source_features(backbones, source_x, [smeta["sha256"], n_tr, n_va, policy], ckpt_root / "source_features")
    clock["source_features_s"] = time.perf_counter() - t
    t = time.perf_counter()
    after = {FROZEN: feats["original"], **{k: feats[k] for k in models if k != FROZEN}}
    fg = forgetting(cfg, feats["original"], after, y_tr, y_va)
    src_draws = draws_for(n_va, cfg.bootstrap, cfg.bootstrap_seed)
    src_scores = source_scores(fg, src_draws)
    clock["probes_s"] = time.perf_counter() - t
    keras.backend.clear_session()

    target_part = {}
    for k in models:
        target_part[k] = {**{f: records[k][f] for f in ("blocks_unfrozen", "learning_rate", "best_epoch")},
                          **{f"val_{m}": val_scores[k][m] for m in ("accuracy", "macro_f1", "macro_f1_gain")},
                          **{f"test_{m}": test_scores[k][m] for m in ("accuracy", "macro_f1", "accuracy_gain",
                                                                       "macro_f1_gain")},
                          "test_top_class_share": top_share[k]}
    source_part = {k: {"blocks_unfrozen": records[k]["blocks_unfrozen"], "learning_rate": records[k]["learning_rate"],
                       **src_scores[k]} for k in models}
    before = mean_ci(fg["before"], src_draws)
    setting = {"model": cfg.model, "backbone_source": info["source"], "dataset": cfg.dataset,
               "target_images": {s: len(im.y) for s, im in target.items()},
               "source_probe_train_images": n_tr, "source_val_images": n_va,
               "source_accuracy_before": before["value"],
               "source_accuracy_before_ci95": before["ci95"],
               "pretrain_val_accuracy": info.get("val_accuracy"),
               "finetune_epochs": cfg.finetune_epochs, "precision_policy": policy,
               "fits_found_in_checkpoints": f"{restored} of {1 + len(variants(cfg))}"}
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = out_dir / "forgetting.png"
    plot(fig, target_part, source_part, cfg)
    metrics = {"setting": setting, "target": target_part, "source": source_part,
               "readings": readings(target_part, source_part, setting),
               "method": methods(cfg, n_tr, n_va)}
    clock["total_s"] = time.perf_counter() - t0
    clock["cpu_s"] = time.process_time() - cpu0   # CPU seconds of this process (all threads): load-independent
    metrics["timings_s"] = {k: round(v, 1) for k, v in clock.items()}
    write_json(out_dir / "run.json", {"params": asdict(cfg), "records": records,
                                      "backbone": {k: info.get(k) for k in ("model", "source", "sha256",
                                                                            "input_shape", "val_accuracy")},
                                      "target_data_sha256": tmeta["sha256"], "source_data_sha256": smeta["sha256"],
                                      "cpu_count": os.cpu_count(), "seconds": clock})
    return metrics


# ------------------------------------------------------------------------------------------ words and figure

def _v(d):
    return d["value"]


def _ci_text(d, fmt="{:+.3f}") -> str:
    ci = d.get("ci95")
    val = "n/a" if d.get("value") is None else fmt.format(d["value"])
    return val if not ci else f"{val} [{fmt.format(ci['lo'])}, {fmt.format(ci['hi'])}]"


def _excludes_zero(d) -> bool:
    ci = d.get("ci95")
    return bool(ci) and (ci["lo"] > 0 or ci["hi"] < 0)


def readings(target: dict, source: dict, setting: dict) -> dict:
    """Plain sentences with the figures: which setting forgets most, is there one with gain and little loss."""
    tuned = [k for k in target if k != FROZEN]
    out = {}
    before = setting["source_accuracy_before"]
    worst = max(tuned, key=lambda k: _v(source[k]["loss_old_readout"]))
    w = source[worst]
    out["most_forgetting"] = (
        f"Before fine-tuning a linear probe on the {setting['model']} features reads the CIFAR-10 validation images at "
        f"{before:.3f} accuracy (chance 0.100). {worst} forgets most: the same probe on the fine-tuned features gets "
        f"{_v(w['accuracy_old_readout']):.3f} (loss {_ci_text(w['loss_old_readout'])}), a probe re-fitted on them "
        f"{_v(w['accuracy_refit']):.3f} (loss {_ci_text(w['loss_refit'])}).")
    least = min(tuned, key=lambda k: _v(source[k]["loss_old_readout"]))
    out["least_forgetting"] = (f"{least} forgets least: old-readout loss {_ci_text(source[least]['loss_old_readout'])}, "
                               f"refit loss {_ci_text(source[least]['loss_refit'])}.")
    by_lr, by_blocks = {}, {}
    for k in tuned:
        by_lr.setdefault(target[k]["learning_rate"], []).append(_v(source[k]["loss_old_readout"]))
        by_blocks.setdefault(target[k]["blocks_unfrozen"], []).append(_v(source[k]["loss_old_readout"]))
    out["what_drives_it"] = (
        "Mean old-readout loss by learning rate: " + ", ".join(f"{lr:g} {np.mean(v):+.3f}" for lr, v in sorted(by_lr.items()))
        + "; by blocks unfrozen: " + ", ".join(f"{b} {np.mean(v):+.3f}" for b, v in sorted(by_blocks.items())) + ".")
    recovered = [_v(source[k]["loss_old_readout"]) - _v(source[k]["loss_refit"]) for k in tuned]
    out["readout_vs_representation"] = (
        f"Re-fitting the probe recovers {np.mean(recovered):+.3f} accuracy on average over the {len(tuned)} fine-tuned "
        f"variants (old-readout loss minus refit loss): the part of the forgetting that is a moved readout rather than "
        f"lost information; what the refit does not recover is lost from the representation itself.")
    gains = [k for k in tuned if (_v(target[k]["val_macro_f1_gain"]) or 0) > 0]
    if gains:
        pick = min(gains, key=lambda k: _v(source[k]["loss_old_readout"]))
        t, s = target[pick], source[pick]
        little = "its CI includes 0" if not _excludes_zero(s["loss_old_readout"]) else "its CI excludes 0"
        out["gain_without_loss"] = (
            f"Of the {len(gains)} variant(s) that beat the frozen head on validation macro-F1, {pick} forgets least: "
            f"validation macro-F1 gain {_ci_text(t['val_macro_f1_gain'])}, test gain {_ci_text(t['test_macro_f1_gain'])}, "
            f"source old-readout loss {_ci_text(s['loss_old_readout'])} ({little}), refit loss {_ci_text(s['loss_refit'])}.")
    else:
        out["gain_without_loss"] = ("No fine-tuned variant beats the frozen-backbone head on validation macro-F1 "
                                    f"({target[FROZEN]['val_macro_f1']['value']:.3f}), so there is no plasticity to "
                                    "trade against the forgetting in this setting.")
    sig = [k for k in tuned if _excludes_zero(target[k]["test_macro_f1_gain"])]
    out["test_gain"] = (f"Test macro-F1 of the frozen head {_ci_text(target[FROZEN]['test_macro_f1'], '{:.3f}')}; "
                        + ("fine-tuned variants whose test macro-F1 change has a CI excluding 0: " + "; ".join(
                            f"{k} {_ci_text(target[k]['test_macro_f1_gain'])}" for k in sig) + "."
                           if sig else f"no fine-tuned variant's test macro-F1 change has a CI excluding 0 "
                                       f"({setting['target_images']['test']} test images)."))
    collapsed = [k for k in tuned if target[k].get("test_top_class_share", 0) >= 0.99]
    if collapsed:
        out["collapse"] = (f"{len(collapsed)} of the {len(tuned)} fine-tuned variants call (almost) every test image "
                           f"one class (share >= 0.99): {', '.join(collapsed)}; for them fine-tuning lost the medical task "
                           "rather than gaining on it.")
    return out


def methods(cfg: Config, n_tr: int, n_va: int) -> dict:
    return {
        "target": (f"{cfg.model} pretrained on CIFAR-10 (pretrain_vision), transferred to {cfg.dataset} with "
                   f"vision.transfer: a head ({list(cfg.head_units)} units, dropout {cfg.dropout}) trained on the frozen "
                   f"backbone's cached features (the 'frozen' row, 0 blocks unfrozen), then for each variant the "
                   f"backbone from block 'unfreeze_from' on plus that same head fine-tuned for {cfg.finetune_epochs} "
                   f"epochs (batch {cfg.finetune_batch_size}, Adam at the variant's learning rate, BatchNorm frozen, "
                   f"augmentation on, seed {cfg.seed}, loss {cfg.loss}). The checkpoint kept is the best epoch on "
                   f"validation macro-F1 (so validation scores are optimistic); the test split is read once per variant. "
                   f"Gains are paired differences from the frozen row on the same images; 95% CIs from {cfg.bootstrap} "
                   f"image-bootstrap draws, the same draws for every variant."),
        "source": (f"Linear probe: StandardScaler + LogisticRegression (C={cfg.probe_c:g}, lbfgs) on the backbone's "
                   f"global-average-pooled features of the first {n_tr} CIFAR-10 source-train images, scored on {n_va} "
                   f"source-validation images (those the pretraining never trained on). 'old readout': the probe fitted "
                   f"on the original backbone applied to the fine-tuned backbone's features; 'refit': a probe of the "
                   f"same kind fitted afresh on them. Loss = accuracy before - accuracy after on the same images (paired "
                   f"bootstrap CI, {cfg.bootstrap} draws). The pretraining head was not kept, so a probe stands in for it."),
        "figure": ("forgetting.png: one point per variant (label: blocks unfrozen, learning rate), x = source accuracy "
                   "loss, y = macro-F1 gain over the frozen head, bars = 95% CIs; columns: old readout / re-fitted "
                   "probe; rows: validation / test gain."),
    }


def plot(path: Path, target: dict, source: dict, cfg: Config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8), squeeze=False)
    lrs = sorted({target[k]["learning_rate"] for k in target if k != FROZEN})
    colours = {lr: c for lr, c in zip(lrs, plt.rcParams["axes.prop_cycle"].by_key()["color"])}
    depths = sorted({target[k]["blocks_unfrozen"] for k in target if k != FROZEN})
    markers = {b: m for b, m in zip(depths, "o^vDPX*")}
    for i, split in enumerate(("val", "test")):
        for j, how in enumerate(("old_readout", "refit")):
            ax = axes[i, j]
            ax.axhline(0, color="grey", lw=0.6)
            ax.axvline(0, color="grey", lw=0.6)
            for n, k in enumerate(target):
                xs, ys = source[k][f"loss_{how}"], target[k][f"{split}_macro_f1_gain"]
                if ys["value"] is None:
                    continue
                err = lambda d: None if not d.get("ci95") else [[d["value"] - d["ci95"]["lo"]],  # noqa: E731
                                                                   [d["ci95"]["hi"] - d["value"]]]
                frozen = k == FROZEN
                colour = "black" if frozen else colours[target[k]["learning_rate"]]
                label = "frozen" if frozen else f"{target[k]['blocks_unfrozen']} blk, lr {target[k]['learning_rate']:g}"
                ax.errorbar([xs["value"]], [ys["value"]], xerr=err(xs), yerr=err(ys),
                            fmt="s" if frozen else markers[target[k]["blocks_unfrozen"]], color=colour, ms=6,
                            capsize=2, lw=0.8, alpha=0.9, label=label)
                ax.annotate(label, (xs["value"], ys["value"]), textcoords="offset points",
                            xytext=(5, 5 if n % 2 else -11), fontsize=7, color=colour)
            ax.set_xlabel(f"source (CIFAR-10) accuracy loss, {'old readout' if how == 'old_readout' else 're-fitted probe'}",
                          fontsize=8)
            ax.set_ylabel(f"{cfg.dataset} {split} macro-F1 gain over frozen", fontsize=8)
            ax.set_title(f"{split}: plasticity vs forgetting ({how.replace('_', ' ')})", fontsize=9)
    fig.suptitle(f"{cfg.model} pretrained on CIFAR-10, fine-tuned on {cfg.dataset}: target gain against source loss "
                 f"(95% CIs)", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=7,
               title="blocks unfrozen, learning rate (marker: blocks, colour: learning rate)", title_fontsize=7)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/vision")
    ap.add_argument("--backbones", default="artifacts/vision/pretrain", help="folder of pretrain_vision's backbones")
    ap.add_argument("--checkpoints", default=str(CKPT_ROOT))
    ap.add_argument("--out", default="artifacts/analysis/forgetting_vision")
    ap.add_argument("--metrics", default="metrics/analysis/forgetting_vision.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg = load_config(args.params)
    metrics = run(cfg, Path(args.data), Path(args.backbones) / cfg.model, Path(args.out), Path(args.checkpoints))
    write_json(args.metrics, metrics)
    print(f"forgetting_vision: {len(metrics['target'])} variants in {metrics['timings_s']['total_s']:.0f} s -> "
          f"{args.metrics}")
    for k, text in metrics["readings"].items():
        print(f"  {k}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
