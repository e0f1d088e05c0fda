"""Issue 12 item 3: which input side should the squeezenet backbone upsample MedMNIST's 28 px images to?

For each MedMNIST set (data/vision/<set>.npz, vision.dataset splits) and each input side S, a frozen
SqueezeNet v1.1 with the ImageNet weights (vision.squeezenet) extracts global-average-pooled fire9
features (512) of the train and validation images.  The path is the project's own classifier path:
vision.models.build_classifier (resize to S inside the model, bilinear; 1 channel repeated to 3;
"caffe" preprocessing) cut at its ``head_pool`` layer.  A logistic-regression head (sklearn:
StandardScaler + LogisticRegressionCV, C chosen by 3-fold stratified CV on the TRAIN split only, log-loss)
is fitted on the train features and scored on the VALIDATION split: accuracy, macro-F1, AUC
(pipeline.evaluation; AUC = macro one-vs-rest for RetinaMNIST).  The test split is never read into
the features, the head or the choice.

The smallest side is vision.squeezenet.MIN_SIZE (31 px; 28 px is too small for the net).
Also: feature-extraction images/s per S on this CPU (model.predict, batch 128, warm), the size chosen on
validation per set and for all sets, and a control row: the same network with random weights
(keras defaults, seeded) at the chosen size (--control-all: at every size).

Choice rule (fixed before looking at results): selection score = mean of val accuracy and val AUC (the
two goal metrics); per set the size with the best score; one size for all sets = best mean score over
the sets.  Where two sizes are within one val-accuracy SE, the cheaper one is noted.

    python benchmarks/squeezenet_resolution.py [--sizes 31 64 112] [--limit N  (smoke runs)]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
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

from pipeline.evaluation import accuracy, macro_f1, roc_auc  # noqa: E402
from pipeline.io import write_text  # noqa: E402
from vision import dataset  # noqa: E402
from vision import squeezenet as sq  # noqa: E402
from vision.models import build_classifier  # noqa: E402

SETS = ("pneumoniamnist", "breastmnist", "retinamnist")
DEFAULT_WEIGHTS = "/work/shared/weights/" + sq.WEIGHTS_FILENAME
CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
BATCH = 128


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def busy_processes() -> str:
    """Other python processes on the box (contention), as 'pid:cmd' words; our own pid excluded."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[1:]
    except (OSError, subprocess.CalledProcessError):
        return "?"
    rows = []
    for line in out:
        pid, pcpu, args = line.split(None, 2)
        if int(pid) != os.getpid() and float(pcpu) >= 5.0:
            rows.append(f"{pid} {float(pcpu):.0f}% {args[:70]}")
    return "; ".join(rows[:4]) or "none >= 5% CPU"


def feature_model(side: int, in_shape, weights) -> keras.Model:
    """Raw 0..255 images -> pooled fire9 features, through build_classifier's own preprocessing path."""
    clf = build_classifier(sq.build_squeezenet((side, side, 3), weights=weights), 2, input_shape=in_shape,
                           preprocess=sq.PREPROCESS, head_units=(), dropout=0.0)
    return keras.Model(clf.input, clf.get_layer("head_pool").output, name=f"squeezenet_features_{side}")


def extract(model, x):
    """(features, images/s): warm-up batches (trace full and partial batch shapes), then the timed pass over all of ``x``."""
    x = x.astype("float32")
    model.predict(x[:BATCH], batch_size=BATCH, verbose=0)
    if len(x) % BATCH:                     # the last, partial batch has its own traced shape
        model.predict(x[:len(x) % BATCH], batch_size=BATCH, verbose=0)
    t0 = time.perf_counter()
    f = model.predict(x, batch_size=BATCH, verbose=0)
    return f, len(x) / (time.perf_counter() - t0)


def head_scores(f_tr, y_tr, f_va, y_va, n_classes: int, seed: int) -> dict:
    """StandardScaler + LogisticRegressionCV fitted on train only; validation accuracy / macro-F1 / AUC."""
    head = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=list(CS), cv=StratifiedKFold(3, shuffle=True, random_state=seed), scoring="neg_log_loss",
        l1_ratios=(0.0,), max_iter=5000, n_jobs=1, use_legacy_attributes=False))
    with threadpool_limits(1):        # BLAS threads thrash on the shared 2 cores (see squeezenet_probe.py)
        head.fit(f_tr, y_tr)
    probs = head.predict_proba(f_va)
    pred = probs.argmax(axis=1)
    acc, f1, auc = accuracy(y_va, pred), macro_f1(y_va, pred, range(n_classes)), roc_auc(y_va, probs)
    return {"acc": acc, "f1": f1, "auc": auc, "score": (acc + auc) / 2, "C": float(np.ravel(head[-1].C_)[0]),
            "dead": float((f_tr.max(axis=0) <= 0).mean())}


def run_one(name, splits, n_classes, side, weights, seed) -> dict:
    tr, va = splits["train"], splits["val"]
    keras.utils.set_random_seed(seed)
    fm = feature_model(side, tr.x.shape[1:], weights)
    x_all = np.concatenate([tr.x, va.x])
    f_all, ips = extract(fm, x_all)
    f_tr, f_va = f_all[:len(tr.y)], f_all[len(tr.y):]
    row = head_scores(f_tr, tr.y, f_va, va.y, n_classes, seed)
    row.update(S=side, ips=ips, weights="imagenet" if weights else "random")
    keras.backend.clear_session()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data/vision"))
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--sizes", type=int, nargs="+", default=[sq.MIN_SIZE, 64, 112])
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="local notop h5 (md5-checked; env SQUEEZENET_WEIGHTS wins)")
    ap.add_argument("--limit", type=int, default=None, help="first N images per split (smoke runs only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--control-all", action="store_true",
                    help="random-weights control rows at every size, not only at the chosen one")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/squeezenet_resolution.txt"))
    args = ap.parse_args(argv)
    if min(args.sizes) < sq.MIN_SIZE:
        ap.error(f"sizes must be >= squeezenet.MIN_SIZE = {sq.MIN_SIZE}")

    lines: list[str] = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    t_start = time.perf_counter()
    weights = sq.imagenet_weights_path(args.weights)
    say(f"SqueezeNet input resolution on MedMNIST validation (benchmarks/squeezenet_resolution.py), "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    say(f"machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} CPU cores shared with other work; "
        f"load average at start {os.getloadavg()[0]:.2f}; keras {keras.__version__} backend "
        f"{keras.backend.backend()}, python {platform.python_version()}")
    say(f"other processes at start (>= 5% CPU): {busy_processes()}")
    say(f"weights: {weights} (md5 {sq.WEIGHTS_MD5} verified); random control = same network, "
        f"keras.utils.set_random_seed({args.seed}), Keras default init")
    say(f"head: StandardScaler + LogisticRegressionCV (lbfgs), C in {list(CS)} by 3-fold stratified CV on the "
        f"train split (log-loss), BLAS single-threaded; scored once on the validation split. Test split unused.")
    say(f"features: build_classifier path (resize 28 -> S bilinear, 1 channel repeated, caffe preprocess) -> "
        f"squeezenet fire9 -> global average pool (512); img/s = model.predict, batch {BATCH}, over train+val "
        f"after warm-up (traced).")
    if args.limit:
        say(f"SMOKE RUN: first {args.limit} images per split only")
    say()

    results: dict[str, dict] = {}
    for name in args.sets:
        splits, meta = dataset.load(args.data, name, limit=args.limit)
        splits = {s: splits[s] for s in ("train", "val")}     # the test split is dropped here, unread
        n_classes = int(meta["n_classes"])
        info = {"n_train": len(splits["train"].y), "n_val": len(splits["val"].y), "n_classes": n_classes,
                "channels": int(splits["train"].x.shape[-1]), "rows": []}
        for side in args.sizes:
            row = run_one(name, splits, n_classes, side, weights, args.seed)
            info["rows"].append(row)
            print(f"  {name} S={side}: val acc {row['acc']:.3f} F1 {row['f1']:.3f} AUC {row['auc']:.3f} "
                  f"(C={row['C']:g}) {row['ips']:.0f} img/s [{time.perf_counter() - t_start:.0f} s]", flush=True)
        info["splits"] = splits
        results[name] = info

    # choice on validation
    sizes = list(args.sizes)
    for name, info in results.items():
        info["best"] = max(info["rows"], key=lambda r: r["score"])
    mean_score = {s: float(np.mean([next(r["score"] for r in info["rows"] if r["S"] == s)
                                    for info in results.values()])) for s in sizes}
    one_size = max(sizes, key=lambda s: mean_score[s])

    # random-weights control at each set's chosen size
    for name, info in results.items():
        side = info["best"]["S"]
        info["random_rows"] = [run_one(name, info["splits"], info["n_classes"], s, None, args.seed)
                               for s in (sizes if args.control_all else [side])]
        info["random"] = next(r for r in info["random_rows"] if r["S"] == side)
        print(f"  {name} random S={side}: val acc {info['random']['acc']:.3f} AUC {info['random']['auc']:.3f}",
              flush=True)

    head = (f"{'set':<15} {'S':>4} {'weights':>8} | {'val acc':>7} {'macro-F1':>8} {'AUC':>6} {'score':>6} | "
            f"{'C':>6} {'dead':>5} | {'feat img/s':>10}")
    say(head)
    say("-" * len(head))
    for name, info in results.items():
        for r in info["rows"] + info["random_rows"]:
            mark = " <- chosen" if r is info["best"] else ""
            say(f"{name:<15} {r['S']:>4} {r['weights']:>8} | {r['acc']:>7.3f} {r['f1']:>8.3f} {r['auc']:>6.3f} "
                f"{r['score']:>6.3f} | {r['C']:>6g} {r['dead']:>5.2f} | {r['ips']:>10.0f}{mark}")
        say()
    say("score = (val accuracy + val AUC) / 2, the selection score; dead = fraction of the 512 pooled features "
        "that are 0 on every train image; C = the head's regularisation picked by CV on train.")
    say("validation sizes and the binomial SE of val accuracy at the chosen size: " + "; ".join(
        f"{n} n={i['n_val']} ({i['n_classes']} classes) SE {np.sqrt(i['best']['acc'] * (1 - i['best']['acc']) / i['n_val']):.3f}"
        for n, i in results.items()))
    ips = {s: float(np.mean([next(r["ips"] for r in i["rows"] if r["S"] == s) for i in results.values()]))
           for s in sizes}
    say("feature extraction, mean img/s over the sets: " + ", ".join(f"S={s}: {ips[s]:.0f}" for s in sizes))
    say("mean selection score over the sets: " + ", ".join(f"S={s}: {mean_score[s]:.3f}" for s in sizes))
    if args.control_all:
        say("random weights, mean selection score over the sets: " + ", ".join(
            f"S={s}: {np.mean([next(r['score'] for r in i['random_rows'] if r['S'] == s) for i in results.values()]):.3f}"
            for s in sizes))
    say()
    say("recommendation (chosen on validation):")
    for name, info in results.items():
        b = info["best"]
        se = np.sqrt(b["acc"] * (1 - b["acc"]) / info["n_val"])
        close = [r for r in info["rows"] if r["S"] < b["S"] and b["score"] - r["score"] <= se]
        cheap = min(r["S"] for r in close) if close else None
        note = (f"; S={cheap} scores within one val-accuracy SE ({se:.3f}) of it at "
                f"{ips[cheap] / ips[b['S']]:.1f}x the feature speed") if close else ""
        r = info["random"]
        say(f"  {name}: S={b['S']} (val acc {b['acc']:.3f}, AUC {b['auc']:.3f}, {b['ips']:.0f} img/s features); "
            f"random weights at S={b['S']}: acc {r['acc']:.3f}, AUC {r['auc']:.3f} "
            f"(ImageNet gain {b['acc'] - r['acc']:+.3f} acc, {b['auc'] - r['auc']:+.3f} AUC){note}")
    say(f"  one size for all sets: S={one_size} (best mean score {mean_score[one_size]:.3f}; "
        f"feature extraction {ips[one_size]:.0f} img/s vs {ips[min(sizes)]:.0f} at S={min(sizes)})")
    say(f"total wall time {time.perf_counter() - t_start:.0f} s; load average at end {os.getloadavg()[0]:.2f}; "
        f"other processes at end: {busy_processes()}")
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
