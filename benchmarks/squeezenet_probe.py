"""SqueezeNet v1.1 ImageNet-weights sanity probe without ImageNet data: linear probe on CIFAR-10.

If the published weights were loaded into the right layers with the right preprocessing, frozen
ImageNet features must separate CIFAR-10 classes far better than the same network with random
(seeded Keras default) init.  For each input side S the 32 px CIFAR images are resized inside the
model (bilinear, as vision.models.build_classifier does), preprocessed "caffe" (vision.preprocess:
RGB->BGR, ImageNet mean subtracted, 0..255), passed through the backbone and global-average pooled
(512 features).  A logistic regression (sklearn; StandardScaler + LogisticRegressionCV, C picked
by 3-fold stratified CV on the TRAIN part only) is then scored once on the held-out test images.

Also prints feature-extraction (inference, batch 128) images/s and a fine-tuning training-step
estimate (whole network trainable + 10-class head, forward+backward+Adam update, batch 32) per S.

    python benchmarks/squeezenet_probe.py [--train-per-class 500] [--test-per-class 200] [--sizes 32 64 112]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from pipeline.io import write_text  # noqa: E402
from vision import squeezenet as sq  # noqa: E402
from vision.models import build_classifier  # noqa: E402
from vision.preprocess import normalise  # noqa: E402
from vision.readers import load_image_tree  # noqa: E402

DEFAULT_ZIP = "/work/shared/data/cifar10/cifar10_jpg.zip"
DEFAULT_WEIGHTS = "/work/shared/weights/" + sq.WEIGHTS_FILENAME
CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def load_cifar(zip_path, n_train: int, n_test: int, seed: int):
    splits, classes = load_image_tree(zip_path, limit_per_class=max(n_train, n_test), seed=seed)
    rng = np.random.default_rng(seed + 1)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = splits[split]
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False)
                                       for c in range(len(classes))]))
        out[split] = (x[keep], y[keep])
    return out, classes


def feature_model(side: int, weights, in_shape=(32, 32, 3)) -> keras.Model:
    backbone = sq.build_squeezenet((side, side, 3), weights=weights)
    inputs = keras.Input(shape=in_shape, name="image")
    x = keras.layers.Resizing(side, side, name="resize")(inputs) if side != in_shape[0] else inputs
    x = normalise(x, sq.PREPROCESS, 3)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(x))
    return keras.Model(inputs, x, name=f"features_{side}")


def extract(model, x, batch=128):
    """Features of ``x``, and images/s over whole batches only (already traced: no retrace in the timing)."""
    f = model.predict(x, batch_size=batch, verbose=0)
    n = min(8, len(x) // batch) * batch
    if not n:
        return f, float("nan")
    t0 = time.perf_counter()
    model.predict(x[:n], batch_size=batch, verbose=0)
    return f, n / (time.perf_counter() - t0)


def probe(f_train, y_train, f_test, y_test, seed):
    """Test accuracy of StandardScaler + LogisticRegressionCV fitted on the train features only.

    LogisticRegressionCV fits the C path per fold with warm starts.  BLAS runs single-threaded here: on the
    shared, oversubscribed 2 cores OpenBLAS's 2 threads made one random-init fit take 133 s instead of 12 s.
    The scaler is fitted on the whole train part before the CV folds (unsupervised mean/std only; the
    test part is never seen)."""
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=list(CS), cv=StratifiedKFold(3, shuffle=True, random_state=seed), l1_ratios=(0.0,), scoring="accuracy",
        max_iter=2000, n_jobs=1, use_legacy_attributes=True))
    with threadpool_limits(1):
        model.fit(f_train, y_train)
    lr = model[-1]
    scores = np.asarray(next(iter(lr.scores_.values()))).reshape(3, len(lr.Cs_))   # folds x Cs (one l1_ratio)
    cv = float(scores.mean(axis=0)[list(lr.Cs_).index(lr.C_[0])])
    return float(model.score(f_test, y_test)), float(lr.C_[0]), cv


def train_step_rate(side: int, seed: int, steps: int = 8, batch: int = 32) -> float:
    keras.utils.set_random_seed(seed)
    clf = build_classifier(sq.build_squeezenet((side, side, 3)), 10, input_shape=(32, 32, 3),
                           preprocess=sq.PREPROCESS, head_units=(256,), dropout=0.5)
    clf.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch)
    for _ in range(2):
        clf.train_on_batch(x, y)                                      # compile + warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        clf.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zip", default=os.environ.get("CIFAR10_ZIP", DEFAULT_ZIP))
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="local notop h5 (md5-checked; env SQUEEZENET_WEIGHTS wins)")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 112])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/squeezenet_probe.txt"))
    args = ap.parse_args(argv)

    lines: list[str] = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    t_start = time.perf_counter()
    weights = sq.imagenet_weights_path(args.weights)
    say(f"SqueezeNet v1.1 ImageNet-weights probe (benchmarks/squeezenet_probe.py), "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    say(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores (shared with a long "
        f"training run; load average at start {os.getloadavg()[0]:.2f}), keras {keras.__version__} "
        f"backend {keras.backend.backend()}, python {platform.python_version()}")
    say(f"weights: {weights} (md5 {sq.WEIGHTS_MD5} verified)")
    data, classes = load_cifar(args.zip, args.train_per_class, args.test_per_class, args.seed)
    (x_tr, y_tr), (x_te, y_te) = data["train"], data["test"]
    x_tr, x_te = x_tr.astype("float32"), x_te.astype("float32")
    say(f"data: {args.zip}: {len(y_tr)} train ({args.train_per_class}/class) + {len(y_te)} test "
        f"({args.test_per_class}/class) images, 32x32 RGB, seed {args.seed}")
    say(f"probe: StandardScaler + LogisticRegressionCV (lbfgs, warm-started C path), C in {list(CS)} by 3-fold "
        f"stratified CV on train only (BLAS single-threaded); test scored once. Random init = the same network, keras.utils.set_random_seed({args.seed}), "
        f"Keras defaults (glorot-uniform kernels, zero biases).")
    say()

    rows = []
    for side in args.sizes:
        row = {"S": side}
        for tag, w in (("imagenet", weights), ("random", None)):
            keras.utils.set_random_seed(args.seed)
            fm = feature_model(side, w)
            f_tr, ips = extract(fm, x_tr)
            f_te, _ = extract(fm, x_te)
            acc, c, cv = probe(f_tr, y_tr, f_te, y_te, args.seed)
            row[tag] = {"acc": acc, "C": c, "cv": cv, "ips": ips,
                        "dead": float((f_tr.max(axis=0) <= 0).mean())}
            print(f"  S={side} {tag}: test acc {acc:.3f} (C={c}, cv {cv:.3f}), {ips:.0f} img/s, "
                  f"[{time.perf_counter() - t_start:.0f} s]", flush=True)
        row["train_ips"] = train_step_rate(side, args.seed)
        rows.append(row)

    n_te = len(y_te)
    say(f"{'S':>4} | {'ImageNet acc':>12} {'(C, cv)':>14} | {'random acc':>10} {'(C, cv)':>14} | {'gain':>6} | "
        f"{'infer img/s':>11} | {'train img/s':>11}")
    say("-" * 104)
    for r in rows:
        im, rd = r["imagenet"], r["random"]
        cim, crd = f"({im['C']:g}, {im['cv']:.3f})", f"({rd['C']:g}, {rd['cv']:.3f})"
        say(f"{r['S']:>4} | {im['acc']:>12.3f} {cim:>14} | {rd['acc']:>10.3f} {crd:>14} | "
            f"{im['acc'] - rd['acc']:>+6.3f} | {im['ips']:>11.0f} | {r['train_ips']:>11.0f}")
    say()
    se = lambda p: np.sqrt(p * (1 - p) / n_te)  # noqa: E731
    say(f"test accuracy: {n_te} images, binomial SE about +-{se(0.5):.3f} at 50% (chance = 0.100).")
    say("infer img/s: frozen ImageNet feature extraction (resize + caffe preprocess + backbone + GAP), "
        "model.predict over 8 whole batches of 128 train images, timed after the features were extracted "
        "(traced, warm).")
    say("train img/s: fine-tuning estimate, whole backbone + Dense(256)-Dropout-Dense(10) head trainable, "
        "Adam, batch 32, forward+backward+update, mean of 8 steps after 2 warm-up steps (random 32 px inputs "
        "resized to S).")
    gains = [r["imagenet"]["acc"] - r["random"]["acc"] for r in rows]
    best = max(rows, key=lambda r: r["imagenet"]["acc"])
    se_diff = [np.hypot(se(r["imagenet"]["acc"]), se(r["random"]["acc"])) for r in rows]
    ok = all(g > 3 * d for g, d in zip(gains, se_diff))
    say()
    accs = [r["imagenet"]["acc"] for r in rows]
    trend = ("ImageNet transfer improves with input side" if all(b > a for a, b in zip(accs, accs[1:]))
             else "ImageNet accuracy is not monotone in the input side")
    if ok:
        verdict = (f"the ImageNet weights load and work: at every size the frozen ImageNet features beat the "
                   f"random-init network by {min(gains):+.3f} to {max(gains):+.3f} test accuracy (each > 3 SE of the difference), "
                   f"so the layer mapping, kernel layout and caffe preprocessing are consistent. {trend} "
                   f"(best {best['imagenet']['acc']:.3f} at S={best['S']}; at S=32 fire9's map is 1x1).")
    else:
        verdict = (f"ImageNet features do NOT clearly beat random init at every size (gains "
                   f"{[round(g, 3) for g in gains]}); check the layer mapping / preprocessing before using them.")
    say("conclusion: " + verdict)
    say(f"total wall time {time.perf_counter() - t_start:.0f} s")
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
