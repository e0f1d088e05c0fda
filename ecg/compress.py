"""Stage compress_ecg: distil, prune and quantise the packaged ECG model; measure what each step buys.

    python -m ecg.compress [--params params.yaml] [--package models/ecg] [--data data/ecg]

The reference (teacher) is the deployed package: the fold ensemble train_ecg saved, with its
temperature. Every choice here is made on ONE DS1 validation fold (`compress_ecg.val_fold`): the teacher
member that was validated on that fold never saw it, every student and fine-tune trains on the other
DS1 folds and stops early on it. DS2 is scored once per variant, after all choices are made.

Variants (metrics/ecg/deploy.json, one object per variant; artifacts/ecg/compress/<variant>.*):
  teacher            the package (Keras), its TFLite float32 and full-int8 exports
  member             the teacher's fold member for val_fold: the single model that pruning starts from
  student_w<W>_kd    a dilated1d of W filters distilled from the teacher's out-of-fold DS1 probabilities
                     (T and alpha chosen on the validation fold), and student_w<W>_hard: the same network
                     on hard labels only (same class-weighted cross-entropy), for the equal-size question
  member_s<S>        magnitude-pruned to sparsity S (every conv/dense kernel), fine-tuned with the mask
                     held (teacher's loss); member_ch<S>: channel-pruned to the same parameter budget
  *_int8             LiteRT full-integer int8 export (representative set: DS1 training beats)
  combined           the chosen student, pruned to combine_sparsity with distillation fine-tuning, int8
Pruned files are saved without their training masks (the zeros stay). int8's accuracy change decides on
quantization-aware fine-tuning by the issue's rule (a drop of more than 1 point of macro-F1), measured on
the validation fold, never on DS2 (`qat_needed`; none is built when no model needs it).
Also: a roofline table per layer (FLOPs, bytes moved, bound) with the machine's peaks measured in
the same run, naive against measured speedups of unstructured sparsity (dense kernels and a CSR
sparse matmul), and the int8 accuracy change predicted by a uniform quantization-noise model.
"""
from __future__ import annotations

import argparse
import gzip
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from ecg import dataset, models
from pipeline import assess, clinical, compress, deploy, tracking
from pipeline.evaluation import macro_f1
from pipeline.evaluate import load_params as load_evaluate
from pipeline.io import atomic_path, ensure_dir, fingerprint, read_json, write_json
from pipeline.losses import class_weights, make_loss
from pipeline.params import ParamsError, load_section
from pipeline.training import FitConfig, fit, predict_probs

OUT = Path("artifacts/ecg/compress")
METRICS = Path("metrics/ecg/deploy.json")
CKPT = Path("artifacts/checkpoints/ecg/compress")


@dataclass(frozen=True)
class Student:
    widths: tuple[int, ...] = (3, 4, 6)   # dilated1d filters
    dropout: float = 0.1


@dataclass(frozen=True)
class Distill:
    select_width: int = 4                  # the width T and alpha are chosen on
    temperatures: tuple[float, ...] = (2.0, 4.0)
    alphas: tuple[float, ...] = (0.5, 0.9)
    hard_weights: str = "sqrt_inverse"     # class weights of the hard-label term (pipeline.losses schemes)
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=20, batch_size=512, learning_rate=3e-3,
                                                            patience=4))


@dataclass(frozen=True)
class Prune:
    sparsities: tuple[float, ...] = (0.5, 0.75, 0.9)
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=3, batch_size=256, learning_rate=3e-4,
                                                            patience=2))


@dataclass(frozen=True)
class Latency:
    repeats: int = 200
    warmup: int = 20
    large_batch: int = 1024


@dataclass(frozen=True)
class Goal:
    max_bytes: int = 50_000
    max_f1_drop: float = 0.02
    max_latency_ms: float = 0.2


@dataclass(frozen=True)
class CompressParams:
    seed: int = 42
    val_fold: int = 0
    student: Student = field(default_factory=Student)
    distill: Distill = field(default_factory=Distill)
    prune: Prune = field(default_factory=Prune)
    combine_sparsity: float = 0.5
    representative: int = 512              # DS1 training beats for int8 calibration
    noise_draws: int = 5                   # Monte-Carlo draws of the quantization-noise model
    latency: Latency = field(default_factory=Latency)
    goal: Goal = field(default_factory=Goal)

    def validate(self) -> None:
        if not self.student.widths or min(self.student.widths) < 1:
            raise ParamsError("student.widths: a non-empty list of filter counts >= 1")
        if self.distill.select_width not in self.student.widths:
            raise ParamsError(f"distill.select_width {self.distill.select_width} is not in student.widths "
                              f"{list(self.student.widths)}")
        if not self.distill.temperatures or min(self.distill.temperatures) <= 0:
            raise ParamsError("distill.temperatures: a non-empty list of values > 0")
        if not self.distill.alphas or not all(0 < a <= 1 for a in self.distill.alphas):
            raise ParamsError("distill.alphas: a non-empty list of values in (0, 1]")
        if not all(0 < s < 1 for s in (*self.prune.sparsities, self.combine_sparsity)):
            raise ParamsError("prune.sparsities and combine_sparsity: values in (0, 1)")
        if self.representative < 1 or self.noise_draws < 1:
            raise ParamsError("representative and noise_draws must be >= 1")
        if self.latency.repeats < 1 or self.latency.large_batch < 1 or self.latency.warmup < 0:
            raise ParamsError("latency.repeats and latency.large_batch >= 1, latency.warmup >= 0")


def load(path="params.yaml") -> CompressParams:
    return load_section("compress_ecg", CompressParams, path)


# --------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    train: dataset.Beats
    val: dataset.Beats
    test: dataset.Beats
    soft_train: np.ndarray     # teacher out-of-fold probabilities of the training beats
    soft_val: np.ndarray
    oof: tuple                 # (y, probs) of every DS1 beat: the package's temperature data
    classes: list
    score: tuple
    sha256: str


def load_data(data_dir: Path, package: dict, run_dir: Path, val_fold: int) -> Data:
    arrays, meta = dataset.load_inputs(data_dir, package["channels"])
    if meta["classes"] != package["classes"]:
        raise ValueError(f"{data_dir / 'meta.json'}: classes {meta['classes']} differ from the package's "
                         f"{package['classes']}")
    train_rec = read_json(run_dir / "train.json")
    folds = [int(f) for f in train_rec["folds"]]
    if val_fold not in folds:
        raise ParamsError(f"compress_ecg.val_fold: {val_fold} is not a fold of {run_dir} ({folds})")
    # the out-of-fold predictions, in train_ecg's order: the validation beats of each fold in turn (the same
    # subsample of them when the run was trained with limit_beats, as dataset.select draws it)
    limit, seed = train_rec.get("limit_beats"), int(train_rec.get("seed", 0))
    order = np.concatenate([_selected(np.flatnonzero((arrays["fold"] == f) & (arrays["split"] == 0)), limit, seed)
                            for f in folds])
    with np.load(run_dir / "oof.npz") as npz:
        y_oof, p_oof, rec_oof = npz["y"], npz["probs"], npz["record"]
    if len(order) != len(y_oof) or not (np.array_equal(arrays["y"][order], y_oof)
                                         and np.array_equal(arrays["record"][order], rec_oof)):
        raise ValueError(f"{run_dir / 'oof.npz'} does not line up with {data_dir / 'beats.npz'} "
                         f"(rerun train_ecg for this data)")
    soft = np.full((len(arrays["y"]), p_oof.shape[1]), np.nan, np.float32)
    soft[order] = p_oof
    # students learn from DS1 beats that have a teacher prediction (all of them unless limit_beats was set)
    has = np.zeros(len(arrays["y"]), bool)
    has[order] = True
    is_val = (arrays["fold"] == val_fold) & (arrays["split"] == 0)
    train = dataset.select(arrays, (arrays["split"] == 0) & ~is_val & has)
    val = dataset.select(arrays, is_val & has)
    test = dataset.select(arrays, arrays["split"] == 1)
    if not len(train.y) or not len(val.y):
        raise ValueError(f"compress_ecg: validation fold {val_fold} leaves no DS1 training or validation beat with "
                         f"a teacher prediction in {run_dir / 'oof.npz'}")
    soft_train = soft[np.flatnonzero((arrays["split"] == 0) & ~is_val & has)]
    soft_val = soft[np.flatnonzero(is_val & has)]
    return Data(train, val, test, soft_train, soft_val, (y_oof, p_oof), meta["classes"],
                dataset.score_indices(meta), meta["beats_sha256"])


def _selected(idx: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """The rows ecg.dataset.select keeps of `idx` under train_ecg's limit_beats and seed."""
    if limit is not None and len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, limit, replace=False))
    return idx


def representative(beats: dataset.Beats, n: int, seed: int) -> dict:
    """int8 calibration inputs: n DS1 training beats drawn at random, as evenly over the classes as their
    counts allow (the rare classes' beats set the extreme activation ranges)."""
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(beats.y == c)) for c in np.unique(beats.y)]
    idx, i = [], 0
    while len(idx) < min(n, len(beats.y)):
        for pool in pools:
            if i < len(pool) and len(idx) < n:
                idx.append(pool[i])
        i += 1
    idx = rng.permutation(np.asarray(idx))
    return {k: v[idx] for k, v in beats.x.items()}


def with_teacher(x: dict, soft: np.ndarray) -> dict:
    return {**x, "teacher": soft}


# ------------------------------------------------------------------------------------------- training
def train_student(width: int, T: float, alpha: float, cfg: CompressParams, data: Data, shape, n_channels: int,
                  tag: str, ckpt: Path, start=None) -> tuple[keras.Model, dict]:
    """A dilated1d student of `width` filters; alpha = 0 is the hard-label baseline. `start`: a
    (student, masks) pair to fine-tune instead of a fresh network (the combined variant)."""
    counts = np.bincount(data.train.y, minlength=len(data.classes))
    weights = class_weights(counts, cfg.distill.hard_weights).tolist()
    loss = compress.DistillationLoss(len(data.classes), temperature=T, alpha=alpha, class_weights=weights)
    fit_cfg = cfg.distill.fit if start is None else cfg.prune.fit
    run_cfg = {"width": width, "T": T, "alpha": alpha, "dropout": cfg.student.dropout, "fit": asdict(fit_cfg),
               "hard_weights": cfg.distill.hard_weights, "seed": cfg.seed, "val_fold": cfg.val_fold,
               "start": None if start is None else start[2]}

    def build():
        if start is not None:
            student = compress.with_masks(start[0], start[1])
        else:
            student = models.build("dilated1d", *shape, channels=n_channels, filters=width,
                                   dropout=cfg.student.dropout, augment=None)[0]
        return compress.distillation_model(student, len(data.classes))

    best, state = fit(build, loss, (with_teacher(data.train.x, data.soft_train), data.train.y),
                      (with_teacher(data.val.x, data.soft_val), data.val.y), data.score, fit_cfg,
                      ckpt / tag, fingerprint(run_cfg, data.sha256), seed=cfg.seed)
    student = next(layer for layer in best.layers if isinstance(layer, keras.Model))
    return student, {"val_macro_f1": state["best"], "best_epoch": state["best_epoch"],
                     "epochs_run": state["epoch"], "config": run_cfg}


def fine_tune(model: keras.Model, masks: dict | None, loss, cfg: CompressParams, data: Data, tag: str,
              origin: str, ckpt: Path) -> tuple[keras.Model, dict]:
    """Fine-tune a pruned copy of `model` (masks held by MaskConstraint) with the teacher's loss."""
    run_cfg = {"fit": asdict(cfg.prune.fit), "seed": cfg.seed, "val_fold": cfg.val_fold, "origin": origin,
               "tag": tag}
    build = (lambda: compress.with_masks(model, masks)) if masks is not None else (lambda: model)
    best, state = fit(build, loss, (data.train.x, data.train.y), (data.val.x, data.val.y), data.score,
                      cfg.prune.fit, ckpt / tag, fingerprint(run_cfg, data.sha256), seed=cfg.seed)
    return best, {"val_macro_f1": state["best"], "best_epoch": state["best_epoch"], "epochs_run": state["epoch"]}


def member_of(teacher: keras.Model, index: int) -> keras.Model:
    """The fold model at position `index` of the ensemble, as a standalone functional model."""
    nested = [layer for layer in teacher.layers if isinstance(layer, keras.Model)]
    if not nested:
        return teacher
    member = nested[index]
    clone = keras.Model.from_config(member.get_config())
    clone.set_weights(member.get_weights())
    return clone


# ------------------------------------------------------------------------------------------ measuring
@dataclass
class Variant:
    name: str
    family: str
    description: str
    predict: object            # x dict -> probs
    file: Path
    model: keras.Model | None = None
    extra: dict = field(default_factory=dict)


def file_sizes(path: Path) -> dict:
    raw = path.read_bytes()
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, 9, mtime=0))}


def save_keras(model: keras.Model, path: Path) -> Path:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path


def latency(fn, x: dict, cfg: CompressParams, rounds: int = 3) -> dict:
    """ms per beat at batch 1 and at large_batch: the lowest of `rounds` medians (a shared machine's
    transient load inflates a median; the lowest one is the closest to the model's own cost)."""
    out = {}
    for batch, key in ((1, "latency_ms_b1"), (cfg.latency.large_batch, f"latency_ms_b{cfg.latency.large_batch}")):
        repeats = cfg.latency.repeats if batch == 1 else max(3, cfg.latency.repeats // 20)
        medians = [deploy.latency_per_item(fn, x, batch, repeats=repeats,
                                           warmup=cfg.latency.warmup if batch == 1 else 2)["median_s"]
                   for _ in range(rounds)]
        out[key] = 1000.0 * min(medians)
    return out


def score_variant(v: Variant, probs: np.ndarray, probs_val: np.ndarray, y_val, ref_pred, data: Data,
                  ev) -> dict:
    scored = [data.classes[i] for i in data.score]
    s = assess.score(data.test.y, probs, y_val, probs_val, data.test.record, data.classes, scored,
                     n_boot=ev.bootstrap, n_bins=ev.ece_bins, seed=ev.seed)
    m = s.metrics
    diff = clinical.paired_difference(data.test.y, probs.argmax(1), ref_pred, data.test.record, list(data.score),
                                      ev.bootstrap, ev.seed, len(data.classes))
    return {"macro_f1": m["macro_f1"], "ci95": {"macro_f1": m["ci95"]["macro_f1"]},
            "per_class": {c: {"f1": r["f1"], "se": r["se"], "ppv": r["ppv"]} for c, r in m["per_class"].items()},
            "class_ci95": {c: {"f1": s.class_ci95[c]["f1"]} for c in scored},
            "diff_vs_teacher": diff["diff"], "diff_ci95": diff["ci"],
            "ece_before": m["ece"]["before"], "ece_after": m["ece"]["after"], "temperature": m["temperature"]}


def noise_prediction(model: keras.Model, data: Data, cfg: CompressParams) -> dict:
    """The uniform quantization-noise model's predicted int8 effect on the DS1 validation fold (no DS2):
    noise of variance step^2/12 on every kernel (per-channel symmetric steps) and every layer output
    (per-tensor steps), Monte-Carlo over noise_draws; the predicted macro-F1 change is the mean over draws."""
    f1 = lambda p: macro_f1(data.val.y, p, data.score)  # noqa: E731
    try:
        pred = deploy.predict_quant_noise(model, data.val.x, bits=8, draws=cfg.noise_draws, seed=cfg.seed,
                                          activations=True)
    except Exception as exc:  # noqa: BLE001 - the activation hook is best effort; say so
        print(f"  quantization-noise model: activation noise unavailable ({exc}); weights only", flush=True)
        pred = deploy.predict_quant_noise(model, data.val.x, bits=8, draws=cfg.noise_draws, seed=cfg.seed)
    base = f1(pred["pred_clean"])
    changes = [f1(p) - base for p in pred["pred_draws"]]
    return {"weights": pred["weights"], "activations": pred["activations"], "draws": pred["draws"],
            "flip_rate": pred["flip_rate"], "mean_abs_dp": pred["mean_abs_dp"],
            "macro_f1_change": float(np.mean(changes)), "macro_f1_change_sd": float(np.std(changes)),
            "n_beats": int(len(data.val.y))}


# ---------------------------------------------------------------------------------------------- stage
def run(cfg: CompressParams, ev, package_dir: Path, data_dir: Path, out_dir: Path = OUT,
        metrics_path: Path = METRICS, ckpt: Path = CKPT, runs_root: Path = Path("artifacts/ecg")) -> dict:
    t_start = time.perf_counter()
    timings = {}
    package = read_json(package_dir / "package.json")
    run_name = package["provenance"]["run"]
    run_dir = runs_root / run_name
    data = load_data(data_dir, package, run_dir, cfg.val_fold)
    n_classes = len(data.classes)
    shape = (package["window_samples"], len(package["rr_features"]), n_classes)
    n_channels = len(package["channels"])
    teacher = keras.models.load_model(package_dir / "model.keras", compile=False)
    train_info = read_json(run_dir / "train.json")
    folds = [int(f) for f in train_info["folds"]]
    ensure_dir(out_dir)
    print(f"compress_ecg: teacher {run_name} ({teacher.count_params():,} params), validation fold {cfg.val_fold} "
          f"({len(data.val.y)} beats), DS1 training {len(data.train.y)} beats", flush=True)

    # ---- distillation: choose T, alpha at select_width on the validation fold
    t0 = time.perf_counter()
    grid, students = [], {}
    w0 = cfg.distill.select_width
    for T in cfg.distill.temperatures:
        for a in cfg.distill.alphas:
            tag = f"student_w{w0}_T{T:g}_a{a:g}"
            model, rec = train_student(w0, T, a, cfg, data, shape, n_channels, tag, ckpt)
            grid.append({"width": w0, "T": T, "alpha": a, "val_macro_f1": rec["val_macro_f1"]})
            students[tag] = (model, rec)
            print(f"  {tag}: validation macro-F1 {rec['val_macro_f1']:.4f}", flush=True)
    chosen = max(grid, key=lambda g: (g["val_macro_f1"], -g["T"], -g["alpha"]))
    T, a = chosen["T"], chosen["alpha"]
    kd, hard = {}, {}
    for w in cfg.student.widths:
        tag = f"student_w{w}_T{T:g}_a{a:g}"
        kd[w] = students.get(tag) or train_student(w, T, a, cfg, data, shape, n_channels, tag, ckpt)
        hard[w] = train_student(w, T, 0.0, cfg, data, shape, n_channels, f"student_w{w}_hard", ckpt)
        print(f"  width {w}: distilled {kd[w][1]['val_macro_f1']:.4f}, hard labels {hard[w][1]['val_macro_f1']:.4f} "
              f"(validation macro-F1)", flush=True)
    timings["distillation_s"] = time.perf_counter() - t0

    # ---- pruning of the teacher's fold member for val_fold
    t0 = time.perf_counter()
    member = member_of(teacher, folds.index(cfg.val_fold))
    loss_args = train_info["config"]["loss_args"]
    teacher_loss = make_loss(train_info["loss"], class_counts=np.bincount(data.train.y, minlength=n_classes),
                             **loss_args)
    pruned, structured = {}, {}
    conv_dense = [layer.name for layer in compress.prunable_layers(member) if layer.name not in ("probs", "rr_dense")]
    for s in cfg.prune.sparsities:
        masks = compress.magnitude_masks(member, s)
        pruned[s] = fine_tune(member, masks, teacher_loss, cfg, data, f"member_s{s:g}", "member", ckpt)
        budget = compress.count_params(pruned[s][0], nonzero=True)
        keep, _ = compress.width_for_budget(member, conv_dense, budget)
        narrow = compress.channel_prune(member, keep)
        structured[s] = (*fine_tune(narrow, None, teacher_loss, cfg, data, f"member_ch{s:g}", "member", ckpt), keep)
        print(f"  sparsity {s:g}: magnitude-pruned {pruned[s][1]['val_macro_f1']:.4f}, channel-pruned "
              f"{structured[s][1]['val_macro_f1']:.4f} ({compress.count_params(structured[s][0]):,} params)", flush=True)
    timings["pruning_s"] = time.perf_counter() - t0

    # ---- the combination: the smallest distilled student within goal.max_f1_drop of the teacher on
    # validation (the teacher's out-of-fold predictions on the validation fold), else the best one
    t0 = time.perf_counter()
    teacher_val_f1 = macro_f1(data.val.y, data.soft_val.argmax(1), data.score)
    ok = [w for w in sorted(cfg.student.widths) if kd[w][1]["val_macro_f1"] >= teacher_val_f1 - cfg.goal.max_f1_drop]
    w_c = ok[0] if ok else max(cfg.student.widths, key=lambda w: kd[w][1]["val_macro_f1"])
    base_student = kd[w_c][0]
    c_masks = compress.magnitude_masks(base_student, cfg.combine_sparsity)
    combined, c_rec = train_student(w_c, T, a, cfg, data, shape, n_channels, f"combined_w{w_c}", ckpt,
                                    start=(base_student, c_masks, f"student_w{w_c}_T{T:g}_a{a:g}"))
    timings["combination_s"] = time.perf_counter() - t0

    # ---- the variants, saved and exported
    t0 = time.perf_counter()
    rep = representative(data.train, cfg.representative, cfg.seed)
    variants: list[Variant] = []

    def add_keras(name, family, model, description, extra=None, int8=False):
        path = save_keras(compress.strip_masks(model), out_dir / f"{name}.keras")
        variants.append(Variant(name, family, description, lambda x, m=model: predict_probs(m, x), path, model,
                                extra or {}))
        if int8:
            tfl = out_dir / f"{name}_int8.tflite"
            deploy.export_tflite(model, tfl, int8_representative=rep, n_rep=cfg.representative)
            runner = deploy.TFLiteRunner(tfl)
            variants.append(Variant(f"{name}_int8", "int8", f"{description}, LiteRT full-integer int8", 
                                    lambda x, r=runner: r.predict(x, batch_size=cfg.latency.large_batch), tfl,
                                    None, {"runner": runner, "of": name}))

    add_keras("teacher", "reference", teacher, f"the deployed package ({run_name}, {len(folds)}-fold ensemble)",
              int8=True)
    tfl = out_dir / "teacher_float32.tflite"
    deploy.export_tflite(teacher, tfl)
    runner = deploy.TFLiteRunner(tfl)
    variants.append(Variant("teacher_float32", "export", "the package as LiteRT float32",
                            lambda x, r=runner: r.predict(x, batch_size=cfg.latency.large_batch), tfl, None,
                            {"runner": runner, "of": "teacher"}))
    add_keras("member", "member", member, f"the teacher's fold-{cfg.val_fold} member alone (dense)", int8=True)
    for w in cfg.student.widths:
        add_keras(f"student_w{w}_kd", "distilled", kd[w][0], f"dilated1d, {w} filters, distilled (T={T:g}, "
                  f"alpha={a:g})", int8=(w == w_c))
        add_keras(f"student_w{w}_hard", "hard", hard[w][0], f"dilated1d, {w} filters, hard labels only")
    for s in cfg.prune.sparsities:
        add_keras(f"member_s{s:g}", "pruned", pruned[s][0], f"member, {100 * s:.0f}% of kernel weights pruned "
                  f"by magnitude, fine-tuned")
        add_keras(f"member_ch{s:g}", "structured", structured[s][0], f"member, channel-pruned to the parameter "
                  f"budget of {100 * s:.0f}% sparsity, fine-tuned")
    add_keras("combined", "combined", combined, f"student w{w_c} distilled, {100 * cfg.combine_sparsity:.0f}% "
              f"magnitude-pruned with distillation fine-tuning", int8=True)
    timings["export_s"] = time.perf_counter() - t0

    # ---- score every variant on DS2 (once each), with validation predictions for its temperature
    t0 = time.perf_counter()
    ref = next(v for v in variants if v.name == "teacher")
    ref_probs = ref.predict(data.test.x)
    ref_pred = ref_probs.argmax(1)
    x_lat = {k: v[:max(cfg.latency.large_batch, 1)] for k, v in data.test.x.items()}
    rows, test_pred = {}, {}
    for v in variants:
        probs = ref_probs if v is ref else v.predict(data.test.x)
        if v.name == "teacher" or v.extra.get("of") == "teacher":
            # the ensemble saw the validation fold through its other members: its temperature data is the
            # package's (every DS1 beat, out of fold), and the teacher's validation score is its fold member's
            y_val, probs_val = data.oof
            val_f1 = teacher_val_f1 if v.name == "teacher" else None
        else:
            y_val, probs_val = data.val.y, v.predict(data.val.x)
            val_f1 = macro_f1(y_val, probs_val.argmax(1), data.score)
        row = {"family": v.family, "description": v.description, "file": str(v.file),
               **score_variant(v, probs, probs_val, y_val, ref_pred, data, ev), "val_macro_f1": val_f1}
        if v.model is not None:
            row.update(params=compress.count_params(v.model), nonzero_params=compress.count_params(v.model, True),
                       **file_sizes(v.file), **latency(deploy.keras_fn(v.model), x_lat, cfg))
            if v.family in ("pruned", "combined"):
                row["sparsity"] = compress.sparsity_report(v.model)["sparsity"]
        else:
            of = next(u for u in variants if u.name == v.extra["of"])
            row.update(params=compress.count_params(of.model), nonzero_params=compress.count_params(of.model, True),
                       **file_sizes(v.file), **latency(deploy.tflite_fn(v.extra["runner"]), x_lat, cfg))
        rows[v.name] = row
        test_pred[v.name] = probs.argmax(1)
        print(f"  {v.name}: DS2 macro-F1 {row['macro_f1']:.4f}, {row['bytes']:,} B, "
              f"{row['latency_ms_b1']:.3f} ms/beat at batch 1", flush=True)
    timings["scoring_s"] = time.perf_counter() - t0

    # ---- roofline, sparse speedups, quantization-noise model
    t0 = time.perf_counter()
    peaks = deploy.machine_peaks()
    # LiteRT runs on one thread here, so its roof is the single-thread peak; BatchNorm is folded into the
    # convolutions by the converter, so it is folded here too
    roof = {"peak_gflops": peaks.get("peak_gflops_1thread") or peaks["peak_gflops"],
            "bandwidth_gbs": peaks["bandwidth_gbs"]}
    roofline = {f"{name}_b{b}": deploy.layer_costs(m, batch=b, peaks=roof, fold_batchnorm=True)
                for name, m in (("member", member), (f"student_w{w_c}_kd", base_student))
                for b in (1, cfg.latency.large_batch)}
    roofline_member = roofline["member_b1"]
    top = max((r for r in roofline_member if r["type"] in ("Conv1D", "Dense")), key=lambda r: r["flops"])
    weight, rows_per_item = deploy.matmul_view(member.get_layer(top["name"]))
    speed = deploy.sparse_dense_speedup(weight, [0.0, *cfg.prune.sparsities], [1, cfg.latency.large_batch],
                                        rows_per_item=rows_per_item, repeats=max(5, cfg.latency.repeats // 4))
    for s in cfg.prune.sparsities:
        r = rows[f"member_s{s:g}"]
        r["naive_speedup"] = 1.0 / (1.0 - s)
        r["measured_speedup_b1"] = rows["member"]["latency_ms_b1"] / r["latency_ms_b1"]
    scored = list(data.score)
    kd_vs_hard = {}
    for w in cfg.student.widths:
        d = clinical.paired_difference(data.test.y, test_pred[f"student_w{w}_kd"], test_pred[f"student_w{w}_hard"],
                                       data.test.record, scored, ev.bootstrap, ev.seed, n_classes)
        kd_vs_hard[str(w)] = {"params": rows[f"student_w{w}_kd"]["params"], "val_kd": rows[f"student_w{w}_kd"]["val_macro_f1"],
                              "val_hard": rows[f"student_w{w}_hard"]["val_macro_f1"], "ds2_kd": d["a"],
                              "ds2_hard": d["b"], "ds2_diff": d["diff"], "ds2_diff_ci95": d["ci"]}
    int8_of = {v.extra["of"]: v.name for v in variants if v.family == "int8"}
    quant = {}
    for base, q in int8_of.items():
        base_model = next(v.model for v in variants if v.name == base)
        if isinstance(base_model.layers[-1], keras.layers.Average) or any(isinstance(layer, keras.Model)
                                                                           for layer in base_model.layers):
            continue   # the ensemble: the noise model is shown for the single networks
        measured_val = rows[q]["val_macro_f1"] - rows[base]["val_macro_f1"]
        quant[base] = {"predicted_val": noise_prediction(base_model, data, cfg), "measured_val": measured_val,
                       "measured_ds2": rows[q]["macro_f1"] - rows[base]["macro_f1"],
                       # the rule, applied where choices are made (DS1 validation, never DS2)
                       "qat_needed": bool(measured_val < -0.01)}
    timings["analysis_s"] = time.perf_counter() - t0
    explanation = explain(rows, roofline, speed, cfg)

    # ---- goal and frontier
    t_ref = rows["teacher"]["macro_f1"]
    meets = [n for n, r in rows.items() if r["bytes"] <= cfg.goal.max_bytes and r["macro_f1"] >= t_ref - cfg.goal.max_f1_drop
             and r["latency_ms_b1"] <= cfg.goal.max_latency_ms]
    frontier = sorted(({"variant": n, "bytes": r["bytes"], "macro_f1": r["macro_f1"]} for n, r in rows.items()),
                      key=lambda d: d["bytes"])
    pareto, best = [], -1.0
    for p in frontier:
        if p["macro_f1"] > best:
            pareto.append(p["variant"])
            best = p["macro_f1"]
    timings["total_s"] = time.perf_counter() - t_start
    result = {
        "teacher": {"run": run_name, "params": rows["teacher"]["params"], "val_fold": cfg.val_fold},
        "variants": rows,
        "selection": {"grid": grid, "chosen": {"T": T, "alpha": a}, "teacher_val_macro_f1": teacher_val_f1,
                      "combined_width": w_c,
                      "rule": "T, alpha: best validation macro-F1 at select_width; combined: the smallest distilled "
                              "width within goal.max_f1_drop of the teacher on validation, else the best"},
        "distillation_vs_hard": kd_vs_hard,
        "structured_keep": {f"{s:g}": structured[s][2] for s in cfg.prune.sparsities},
        "roofline": {"machine": {**peaks, "cpu": platform.processor() or platform.machine()}, "roof": roof,
                     "layers": roofline},
        "explanation": explanation,
        "sparse_speedup": {"layer": top["name"], "rows_per_item": rows_per_item, "timings": speed},
        "quantization_noise": quant,
        "goal": {**asdict(cfg.goal), "met_by": meets},
        "pareto": pareto,
        "timings_s": timings,
    }
    result, bad = finite(result)
    if bad:
        print(f"compress_ecg: undefined values written as null: {bad}", flush=True)
    write_json(out_dir / "record.json", result)
    write_json(metrics_path, result)
    with tracking.run("ecg", "compress") as mlflow:
        tracking.log_params(mlflow, {"compress." + k: v for k, v in tracking.flatten(asdict(cfg)).items()})
        for name, row in rows.items():
            tracking.log_metrics(mlflow, {k: row.get(k) for k in ("macro_f1", "val_macro_f1", "bytes", "params",
                                                                 "latency_ms_b1", "ece_after", "diff_vs_teacher")},
                                 prefix=name)
    return result


def explain(rows: dict, roofline: dict, speed: list, cfg: CompressParams) -> dict:
    """Plain-words readings of the measurements (numbers from this run only)."""
    out = {}
    member, big = roofline["member_b1"], roofline[f"member_b{cfg.latency.large_batch}"]
    total = member[-1]
    mem_layers = [r["name"] for r in member[:-1] if r.get("bound") == "memory"]
    tfl = rows.get("member_int8", {}).get("latency_ms_b1")
    out["roofline"] = (
        f"At batch 1 the member needs {total['flops'] / 1e6:.2f} MFLOP and moves {total['bytes'] / 1e3:.0f} kB per "
        f"beat (intensity {total['intensity']:.1f} FLOP/B against a ridge of {total.get('ridge_intensity', 0):.1f}); "
        f"the roofline floor is {1000 * total['roofline_s_per_item']:.3f} ms per beat"
        + (f", the measured int8 LiteRT latency {tfl:.3f} ms" if tfl is not None else "")
        + f". Memory-bound layers at batch 1: {', '.join(mem_layers) or 'none'}; at batch "
        f"{cfg.latency.large_batch} the weights are reused across beats and intensity rises to "
        f"{big[-1]['intensity']:.1f} FLOP/B.")
    pruned = [(s, rows[f"member_s{s:g}"]) for s in cfg.prune.sparsities if f"member_s{s:g}" in rows]
    if pruned:
        parts = [f"{100 * s:.0f}%: naive {r['naive_speedup']:.1f}x, measured {r['measured_speedup_b1']:.2f}x"
                 for s, r in pruned]
        csr = {(r["sparsity"], r["batch"]): r["speedup"] for r in speed}
        csr_parts = [f"{100 * s:.0f}% {csr.get((s, 1), float('nan')):.2f}x / "
                     f"{csr.get((s, cfg.latency.large_batch), float('nan')):.2f}x" for s, _ in pruned]
        out["sparsity"] = (
            "Unstructured pruning stores the zeros and the dense kernels still multiply them, so it removes no "
            f"work from the Keras model; measured latency ratios, dense over pruned, at batch 1: {'; '.join(parts)} "
            "(what differs from 1.0x is timing noise of a shared machine). A CSR sparse matmul of the costliest layer "
            f"(batch 1 / batch {cfg.latency.large_batch}, speedup over dense): {'; '.join(csr_parts)}: index "
            "overhead and irregular access eat the saved FLOPs on such small matrices, and at batch 1 the run is "
            "dominated by per-call and per-layer overhead, not by FLOPs.")
    return out


def finite(obj, path=""):
    """(obj with NaN/inf floats as None, the key paths that held them): JSON has no NaN."""
    bad = []

    def walk(o, p):
        if isinstance(o, dict):
            return {k: walk(v, f"{p}.{k}" if p else str(k)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{p}[{i}]") for i, v in enumerate(o)]
        if isinstance(o, (float, np.floating)):
            if not np.isfinite(o):
                bad.append(p)
                return None
            return float(o)
        if isinstance(o, np.integer):
            return int(o)
        return o
    return walk(obj, path), bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--package", default="models/ecg")
    ap.add_argument("--data", default="data/ecg")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--metrics", default=str(METRICS))
    ap.add_argument("--checkpoints", default=str(CKPT))
    args = ap.parse_args(argv)
    cfg = load(args.params)
    ev = load_evaluate(args.params)
    result = run(cfg, ev, Path(args.package), Path(args.data), Path(args.out), Path(args.metrics),
                 Path(args.checkpoints))
    t = result["variants"]["teacher"]
    print(f"compress_ecg: teacher DS2 macro-F1 {t['macro_f1']:.4f}; goal met by {result['goal']['met_by'] or 'none'}; "
          f"Pareto front {result['pareto']}; {result['timings_s']['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
