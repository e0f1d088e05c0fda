"""GPU benchmark (issue 16, part 4): ECG training beats/s and VGG16 fine-tune images/s at 224 px.

Run it through `bash benchmarks/gpu.sh` on a GPU machine (that script picks the Keras backend: the
GPU machine has no TensorFlow, so it runs on JAX, else torch). Prints one table: the card, the
backend, and per workload the throughput against the issue's goals:

* ECG training, the project's real models (`ecg.models.build` lenet1d and dilated1d with the
  `ecg_train` settings of params.yaml: widths, dropout, augmentation layer, loss, Adam learning
  rate), a large batch, mixed precision, timed after a warm-up fit (compilation excluded).
  Goal: >= 500,000 beats/s.
* VGG16 fine-tuning at 224 px in mixed_bfloat16: the project's classifier
  (`vision.models.build_backbone("vgg16")` + `build_classifier`, preprocessing inside the model),
  every block trainable, so a training step costs 3 x the forward FLOPs (forward, input gradients,
  weight gradients). Forward FLOPs are counted from the layers (2 x the conv and dense MACs,
  `pipeline.deploy.layer_costs`). Achieved TFLOP/s = images/s x 3 x forward FLOPs; divided by the
  card's dense bf16 peak (spec sheet table below, `--peak-tflops` overrides). Goal: >= 40 %.

Data are synthetic (random beats and images of the real shapes: the ECG window, RR features and
classes from data/ecg/meta.json when it exists, else the shapes prepare_ecg writes by default):
throughput does not depend on the values. They are numpy arrays in host memory (float32 beats, uint8
images) fed through `model.fit`, as the project's fit loop does, so host-to-device copies are part of
the time.

`--quick` runs every workload tiny (VGG16 at 32 px) so that the code path can be checked on a CPU
in under a minute; its figures are not measurements.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout that is not pip-installed (GPU machine)
    sys.path.insert(0, str(ROOT))

# The project modules this script imports. tests/test_gpu.py imports each with `tensorflow` blocked:
# none may import TensorFlow at module level (the GPU machine has none; backend-agnostic rule).
PROJECT_MODULES = ("pipeline.device", "pipeline.deploy", "pipeline.losses", "pipeline.training",
                   "ecg.models", "ecg.train_config", "vision.models")

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' spec sheets, matched as a
# substring of the card name in this order (more specific names first).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0),  # H100 SXM: "H100 80GB HBM3"
    ("H200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
)

ECG_GOAL_BEATS_S = 500_000
VGG_GOAL_FRACTION = 0.40
# Shapes prepare_ecg writes with the default params (360 Hz, 700 ms window, 5 RR features, AAMI N S V F Q).
DEFAULT_ECG_SHAPES = {"window_samples": 253, "n_rr": 5, "n_classes": 5}


def peak_tflops(card: str) -> tuple[float | None, str | None]:
    """(dense bf16 peak TFLOP/s, the table entry that matched) for a card name; (None, None) if unknown."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in card.lower():
            return peak, key
    return None, None


def card_name(backend: str) -> str:
    """The accelerator's name (nvidia-smi, else the backend's device), or 'CPU (...)' without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        if backend == "jax":
            import jax
            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            if gpus:
                return gpus[0].device_kind
        elif backend == "torch":
            import torch
            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - no accelerator stack means CPU
        pass
    return f"CPU ({platform.machine()}, {os.cpu_count()} logical cores, no GPU)"


def backend_version(backend: str) -> str:
    try:
        module = __import__(backend)
        return f"{backend} {module.__version__}"
    except Exception:  # noqa: BLE001
        return backend


def ecg_shapes() -> tuple[dict, str]:
    meta_path = ROOT / "data" / "ecg" / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return ({"window_samples": int(meta["window_samples"]), "n_rr": len(meta["rr_features"]),
                 "n_classes": len(meta["classes"])}, "data/ecg/meta.json")
    return dict(DEFAULT_ECG_SHAPES), "prepare_ecg's default shapes (data/ecg/meta.json not present)"


def _tiled(rng, make, n: int, distinct: int = 4):
    """n rows made of `distinct` random blocks repeated (fast to make; values do not matter here)."""
    import numpy as np
    block = -(-n // distinct)
    return np.concatenate([make(rng, block) for _ in range(distinct)])[:n]


def _fit_timed(model, x, y, batch: int, steps: int, warmup: int) -> tuple[float, float]:
    """Warm up (compiles the train step) on `warmup` batches, then time one fit over `steps` batches.

    Returns (seconds, final training loss). The timed fit ends when its logs are read back as numbers,
    so queued device work is finished inside the timing.
    """
    take = lambda a, n: [t[:n] for t in a] if isinstance(a, list) else a[:n]  # noqa: E731
    model.fit(take(x, warmup * batch), take(y, warmup * batch), batch_size=batch, epochs=1, shuffle=False, verbose=0)
    t0 = time.perf_counter()
    hist = model.fit(take(x, steps * batch), take(y, steps * batch), batch_size=batch, epochs=1, shuffle=False,
                     verbose=0)
    seconds = time.perf_counter() - t0
    return seconds, float(hist.history["loss"][-1])


def bench_ecg(name: str, cfg, shapes: dict, batch: int, steps: int, warmup: int, policy: str, jit, loss_name: str) -> dict:
    import keras
    import numpy as np

    from ecg import models
    from pipeline.losses import loss_from_params

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    window, n_rr, n_classes = shapes["window_samples"], shapes["n_rr"], shapes["n_classes"]
    kwargs = cfg.model_kwargs(name)
    note = None
    if keras.backend.backend() == "tensorflow" and policy != "float32" and kwargs.get("augment"):
        # ecg.models.BeatAugment multiplies its float16 inputs by float32 noise with the raw `*`, which
        # TensorFlow refuses (JAX and torch promote). Run that one elementwise layer in float32 here;
        # the fix belongs in ecg/models.py (requested in /work/notes/requests-queue.md).
        kwargs["augment"] = {**kwargs["augment"], "dtype": "float32"}
        note = "augment layer in float32 (TensorFlow mixed-precision bug in BeatAugment)"
    model, info = models.build(name, window, n_rr, n_classes, **kwargs)
    n = batch * steps
    rng = np.random.default_rng(0)
    beats = _tiled(rng, lambda r, k: r.standard_normal((k, window, kwargs["channels"]), dtype=np.float32), n)
    rr = _tiled(rng, lambda r, k: r.uniform(0.3, 1.6, (k, n_rr)).astype(np.float32), n)
    labels = _tiled(rng, lambda r, k: r.integers(0, n_classes, k), n)
    y = np.eye(n_classes, dtype=np.float32)[labels]
    loss = loss_from_params(loss_name, cfg.loss, class_counts=np.bincount(labels, minlength=n_classes))
    model.compile(optimizer=keras.optimizers.Adam(cfg.fit.learning_rate), loss=loss, metrics=["accuracy"],
                  jit_compile=jit)
    seconds, final_loss = _fit_timed(model, [beats, rr], y, batch, steps, warmup)
    return {"workload": f"ECG {name} train ({loss_name})", "policy": policy, "batch": batch, "steps": steps,
            "seconds": seconds, "rate": n / seconds, "unit": "beats/s", "params": info["params"],
            "final_loss": final_loss, "goal": f">= {ECG_GOAL_BEATS_S:,} beats/s",
            "met": n / seconds >= ECG_GOAL_BEATS_S, "note": note}


def forward_flops(model) -> int:
    """Forward FLOPs per input item: 2 x the multiply-accumulates of the conv and dense layers."""
    from pipeline.deploy import KERNEL_LAYERS, layer_costs
    return int(sum(r["flops"] for r in layer_costs(model) if r["type"] in KERNEL_LAYERS))


def bench_vgg(size: int, batch: int, steps: int, warmup: int, policy: str, jit, peak: float | None) -> dict:
    import keras
    import numpy as np

    from vision.models import build_backbone, build_classifier, set_trainable

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    n_classes = 10
    model = build_classifier(build_backbone("vgg16", (size, size, 3)), n_classes, head_units=(256,), dropout=0.5,
                             name="vgg16_bench")
    counts = set_trainable(model, "finetune", unfreeze_from=None)  # every block: training = 3 x forward
    fwd = forward_flops(model)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy", jit_compile=jit)
    n = batch * steps
    rng = np.random.default_rng(0)
    # Raw 0..255 uint8 pixels, as the vision stages feed them (the classifier casts and normalises inside
    # the model): a quarter of the host-to-device traffic of float32.
    images = _tiled(rng, lambda r, k: r.integers(0, 256, (k, size, size, 3), dtype=np.uint8), n)
    y = np.eye(n_classes, dtype=np.float32)[_tiled(rng, lambda r, k: r.integers(0, n_classes, k), n)]
    seconds, final_loss = _fit_timed(model, images, y, batch, steps, warmup)
    rate = n / seconds
    tflops = rate * 3 * fwd / 1e12
    fraction = tflops / peak if peak else None
    return {"workload": f"VGG16 {size}px fine-tune (all blocks)", "policy": policy, "batch": batch, "steps": steps,
            "seconds": seconds, "rate": rate, "unit": "images/s", "params": counts["trainable_params"],
            "final_loss": final_loss, "forward_gflop": fwd / 1e9, "train_gflop": 3 * fwd / 1e9,
            "tflops": tflops, "peak_tflops": peak, "fraction": fraction,
            "goal": f">= {VGG_GOAL_FRACTION:.0%} of bf16 peak",
            "met": None if fraction is None else fraction >= VGG_GOAL_FRACTION}


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="everything tiny (CPU check of the code path, < 1 min)")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    ap.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file (ecg_train section)")
    ap.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak; overrides the name table")
    ap.add_argument("--models", default="lenet1d,dilated1d", help="ECG models (comma-separated)")
    ap.add_argument("--ecg-loss", default="focal", help="ECG loss (the packaged run is dilated1d-focal)")
    ap.add_argument("--ecg-batch", type=_ints, default=[4096, 16384], help="ECG batch sizes (comma-separated)")
    ap.add_argument("--ecg-beats", type=int, default=16384 * 40, help="beats per timed fit")
    ap.add_argument("--ecg-policy", default="mixed_float16",
                    help="ECG dtype policy (pipeline.device.configure uses mixed_float16 on a GPU)")
    ap.add_argument("--vgg-size", type=int, default=224)
    ap.add_argument("--vgg-batch", type=_ints, default=[128, 256], help="VGG16 batch sizes (comma-separated)")
    ap.add_argument("--vgg-images", type=int, default=256 * 30, help="images per timed fit")
    ap.add_argument("--vgg-policy", default="mixed_bfloat16")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up batches (the first compiles)")
    ap.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                    help="model.compile jit_compile ('auto': XLA on JAX/TensorFlow, eager on torch)")
    ap.add_argument("--skip-ecg", action="store_true")
    ap.add_argument("--skip-vgg", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.ecg_batch, args.ecg_beats = [64], 64 * 3
        args.vgg_size, args.vgg_batch, args.vgg_images = 32, [4], 4 * 2
        args.warmup = 1
    return args


def render(header: list[str], rows: list[dict], notes: list[str]) -> str:
    cols = ("workload", "policy", "batch", "time s", "throughput", "TFLOP/s", "of peak", "goal", "met")
    lines = [*header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r.get('policy', '')} | {r.get('batch', '')} | FAILED: {r['error']} "
                         "| | | | | no |")
            continue
        tflops = f"{r['tflops']:.1f}" if r.get("tflops") is not None else ""
        frac = f"{r['fraction']:.1%}" if r.get("fraction") is not None else ("n/a (peak unknown)" if "tflops" in r else "")
        met = {True: "yes", False: "no", None: "n/a"}[r["met"]]
        lines.append(f"| {r['workload']} | {r['policy']} | {r['batch']} | {r['seconds']:.2f} | "
                     f"{r['rate']:,.0f} {r['unit']} | {tflops} | {frac} | {r['goal']} | {met} |")
    return "\n".join([*lines, "", *notes]) + "\n"


def _write(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a stopped run leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from ecg import train_config

    backend = keras.backend.backend()
    card = card_name(backend)
    peak, peak_key = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_tflops(card)
    jit = {"auto": "auto", "on": True, "off": False}[args.jit]
    cfg = train_config.load(args.params)
    shapes, shapes_from = ecg_shapes()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"# GPU benchmark ({'QUICK MODE: tiny shapes, not a measurement' if args.quick else 'measured'}), {stamp}",
              "",
              f"card: {card}  |  peak bf16 dense: {f'{peak:g} TFLOP/s ({peak_key})' if peak else 'unknown'}",
              f"backend: {backend_version(backend)}  |  keras {keras.__version__}  |  python "
              f"{platform.python_version()}  |  jit_compile={args.jit}",
              f"data: synthetic arrays of the real shapes (ECG window {shapes['window_samples']} x "
              f"{len(cfg.channels)} channels + {shapes['n_rr']} RR features, {shapes['n_classes']} classes, from "
              f"{shapes_from}); params: {args.params.name} ecg_train"]
    rows = []

    def attempt(label: dict, fn):
        print(f"... {label['workload']} batch {label['batch']}", file=sys.stderr, flush=True)
        try:
            rows.append(fn())
        except Exception as exc:  # noqa: BLE001 - one failing workload (e.g. out of memory) must not hide the rest
            rows.append({**label, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"})
        finally:
            keras.backend.clear_session()

    if not args.skip_ecg:
        for name in [m for m in args.models.split(",") if m]:
            for batch in args.ecg_batch:
                steps = max(1, args.ecg_beats // batch)
                attempt({"workload": f"ECG {name} train", "policy": args.ecg_policy, "batch": batch},
                        lambda: bench_ecg(name, cfg, shapes, batch, steps, args.warmup, args.ecg_policy, jit,
                                          args.ecg_loss))
    if not args.skip_vgg:
        for batch in args.vgg_batch:
            steps = max(1, args.vgg_images // batch)
            attempt({"workload": f"VGG16 {args.vgg_size}px fine-tune", "policy": args.vgg_policy, "batch": batch},
                    lambda: bench_vgg(args.vgg_size, batch, steps, args.warmup, args.vgg_policy, jit, peak))
    keras.mixed_precision.set_global_policy("float32")

    notes = ["Timed after a warm-up fit (compilation excluded); throughput = items of one timed model.fit / its wall time."]
    vgg = [r for r in rows if "tflops" in r]
    if vgg:
        r = vgg[0]
        notes.append(f"VGG16 FLOPs counted from the layers: forward {r['forward_gflop']:.2f} GFLOP/image (2 x conv+dense "
                     f"MACs), training = 3 x forward = {r['train_gflop']:.2f} GFLOP/image; TFLOP/s = images/s x that.")
    notes += [f"{r['workload']} batch {r['batch']}: {r['note']}." for r in rows if r.get("note")]
    best_ecg = max((r["rate"] for r in rows if r.get("unit") == "beats/s"), default=None)
    best_frac = max((r["fraction"] for r in vgg if r.get("fraction") is not None), default=None)
    if args.quick:
        for r in rows:
            r["met"] = None
        notes.append("Goals: not judged in quick mode (tiny shapes on whatever device is here).")
    else:
        notes.append(f"Goals: ECG >= {ECG_GOAL_BEATS_S:,} beats/s: "
                     f"{'n/a' if best_ecg is None else ('met' if best_ecg >= ECG_GOAL_BEATS_S else 'NOT met')}"
                     f" (best {best_ecg or 0:,.0f}); VGG16 >= {VGG_GOAL_FRACTION:.0%} of bf16 peak: "
                     f"{'n/a' if best_frac is None else ('met' if best_frac >= VGG_GOAL_FRACTION else 'NOT met')}"
                     f" (best {'n/a' if best_frac is None else f'{best_frac:.1%}'}).")
    table = render(header, rows, notes)
    print(table, flush=True)
    if args.out:
        _write(args.out, table)
    if args.json:
        _write(args.json, json.dumps({"card": card, "backend": backend_version(backend), "keras": keras.__version__,
                                         "quick": args.quick, "peak_tflops": peak, "rows": rows}, indent=2))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
