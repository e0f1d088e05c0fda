"""Peak memory and speed of streamed training (pipeline.shards + pipeline.streaming) against data size.

MIT-BIH DS1 beats from data/ecg/beats.npz are replicated 1x, 5x, 20x into shard sets (one record copy per
shard) in a temporary folder (removed at the end). For each scale a FRESH process trains the real
lenet1d (params.yaml ecg_train: lenet1d, channels, augment, fit.batch_size/learning_rate, seed; loss ce)
through fit_stream for one full epoch on DS1 folds 1-3 (validation fold 0, kept in memory, the same
11.6k beats at every scale), and reports its peak RSS (getrusage ru_maxrss) and training beats/s. The
in-memory path (pipeline.training.fit on arrays from ecg.dataset.load_inputs, as train_ecg does) runs
at 1x. The 1x pair is run `--reps` times alternately and the median beats/s of each kept (the cores are
shared); beats per CPU-second (process CPU time, all threads) is reported too, as the cost per beat.
beats/s "steady" leaves out the first 11 batches (graph tracing); "epoch" is the whole epoch.

Verdicts: streamed peak RSS at 20x within 20% of 1x; streamed steady beats/s at 1x within 20% of in-memory.

    PATH=.venv/bin:$PATH TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/streaming.py [--out benchmarks/results/streaming.txt]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

WARM = 10  # batches left out of the steady rate: tracing and first allocations
COLUMNS = ("x", "rr", "y", "record", "split", "fold")


def ecg_features(channels):
    """Shard arrays -> the ECG models' inputs. Each shard must hold whole records (per-record scaling)."""
    from ecg.dataset import beat_channels

    def features(a):
        return {"beat": beat_channels(a["x"], a["record"], channels), "rr": a["rr"]}
    return features


# ------------------------------------------------------------------------------------------ one child
def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, shards: str | None, val: str | None, params: str, buffer_shards: int, data: str,
          prefetch: bool) -> dict:
    import keras

    from ecg import dataset, models, train_config
    from pipeline import device
    from pipeline.losses import loss_from_params
    from pipeline.training import fit

    class Timer(keras.callbacks.Callback):
        """Wall and process CPU time (all threads) at the end of every training batch."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.ends, self.cpu = time.perf_counter(), [], []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())
            self.cpu.append(_cpu_s())

    cfg = train_config.load(params)
    device.configure(cfg.mixed_precision)
    fit_cfg = replace(cfg.fit, epochs=1)
    kwargs = cfg.model_kwargs("lenet1d")
    loss = loss_from_params("ce", cfg.loss)
    timer, run_dir = Timer(), tempfile.mkdtemp(prefix="bench-ckpt-")
    rss_start = _rss_mb()
    if mode == "memory":
        arrays, meta = dataset.load_inputs(data, cfg.channels)
        tr, va, _ = dataset.splits(arrays, [0])
        train_rows, n_shards = len(tr.y), 0
    else:
        from pipeline.shards import ShardDataset, ShardSet
        from pipeline.streaming import fit_stream
        feats = ecg_features(cfg.channels)
        ds = ShardDataset(shards, fit_cfg.batch_size, 5, feats, where={"split": 0, "fold": lambda f: f != 0},
                          seed=cfg.seed, buffer_shards=buffer_shards, columns=["x", "rr", "record"],
                          prefetch=prefetch)
        meta = ds.shards.meta
        v = ShardSet(val).gather(columns=["x", "rr", "record", "y"])
        va = dataset.Beats(feats(v), v["y"].astype(np.int64), v["record"], None)
        train_rows, n_shards = ds.rows, len(ds.shards)
    score = dataset.score_indices(meta)
    shape = (meta["window_samples"], len(meta["rr_features"]), len(meta["classes"]))
    build = lambda: models.build("lenet1d", *shape, **kwargs)[0]  # noqa: E731
    rss_data = _rss_mb()
    t0 = time.perf_counter()
    if mode == "memory":
        _, state = fit(build, loss, (tr.x, tr.y), (va.x, va.y), score, fit_cfg, run_dir, "bench", seed=cfg.seed,
                       callbacks=[timer], verbose=0)
    else:
        _, state = fit_stream(build, loss, ds, (va.x, va.y), score, fit_cfg, run_dir, "bench", seed=cfg.seed,
                              callbacks=[timer], verbose=0)
    wall = time.perf_counter() - t0
    shutil.rmtree(run_dir, ignore_errors=True)
    bs, ends = fit_cfg.batch_size, timer.ends
    assert len(ends) == -(-train_rows // bs), (len(ends), train_rows)
    out = {"mode": mode, "train_beats": train_rows, "shards": n_shards, "batches": len(ends),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_start_mb": rss_start, "rss_data_mb": rss_data,
           "steady_beats_s": (train_rows - (WARM + 1) * bs) / (ends[-1] - ends[WARM]),
           "beats_per_cpu_s": (train_rows - (WARM + 1) * bs) / (timer.cpu[-1] - timer.cpu[WARM]),
           "epoch_beats_s": train_rows / (ends[-1] - timer.t0), "fit_wall_s": wall,
           "val_macro_f1": state["best"], "val_beats": len(va.y)}
    if mode == "stream":
        out.update(max_held_shards=ds.max_held_shards, groups_loaded=ds.groups_loaded)
    return out


# ------------------------------------------------------------------------------------------- parent
def write_scale(root: Path, ds1: dict, scale: int) -> Path:
    from pipeline.shards import ShardWriter
    path = root / f"x{scale}"
    starts = np.flatnonzero(np.r_[True, ds1["record"][1:] != ds1["record"][:-1]])
    bounds = [*starts.tolist(), len(ds1["y"])]
    with ShardWriter(path, meta=ds1["meta"]) as w:
        for _ in range(scale):
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                w.add(**{k: ds1[k][lo:hi] for k in COLUMNS})
    return path


def run_child(mode: str, args, shards: Path | None = None, val: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--params", args.params, "--data", args.data,
           "--buffer-shards", str(args.buffer_shards)] + (["--no-prefetch"] if args.no_prefetch else [])
    if shards:
        cmd += ["--shards", str(shards), "--val", str(val)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    return f"{os.cpu_count()}-core CPU, lscpu model name: {model}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=("memory", "stream"), help=argparse.SUPPRESS)
    ap.add_argument("--shards", help=argparse.SUPPRESS)
    ap.add_argument("--val", help=argparse.SUPPRESS)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/ecg")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--reps", type=int, default=2, help="alternating runs of the 1x in-memory / streamed pair")
    ap.add_argument("--buffer-shards", type=int, default=8)
    ap.add_argument("--no-prefetch", action="store_true", help="load each group only when it is needed")
    ap.add_argument("--tmp", default=None, help="folder for the shard sets (default: the system temp folder)")
    ap.add_argument("--out", default=None, help="also save the printed report here")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.shards, args.val, args.params, args.buffer_shards,
                                           args.data, not args.no_prefetch)), flush=True)
        return

    from ecg import dataset
    from pipeline.shards import write_shards
    t_start, load_start = time.perf_counter(), os.getloadavg()
    arrays, meta = dataset.load(args.data)
    keep = arrays["split"] == 0
    ds1 = {k: arrays[k][keep] for k in COLUMNS}
    ds1["meta"] = {k: meta[k] for k in ("classes", "score_classes", "window_samples", "rr_features", "fs")}
    del arrays
    root = Path(tempfile.mkdtemp(prefix="streaming-bench-", dir=args.tmp))
    lines, rows = [], []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    try:
        v = ds1["fold"] == 0
        val = root / "val"
        write_shards(val, {k: ds1[k][v] for k in COLUMNS}, by="record", meta=ds1["meta"])
        results = {}
        for scale in args.scales:
            t0 = time.perf_counter()
            path = write_scale(root, ds1, scale)
            size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
            write_s = time.perf_counter() - t0
            reps = args.reps if scale == 1 else 1
            for rep in range(reps):
                if scale == 1:
                    r = run_child("memory", args)
                    r.update(scale=1, disk_mb=None, write_s=None)
                    results.setdefault(("memory", 1), []).append(r)
                    print(f"  memory 1x rep {rep + 1}: {json.dumps(r)}", flush=True)
                r = run_child("stream", args, path, val)
                r.update(scale=scale, disk_mb=size, write_s=write_s)
                results.setdefault(("stream", scale), []).append(r)
                print(f"  stream {scale}x rep {rep + 1}: {json.dumps(r)}", flush=True)
            shutil.rmtree(path)
        load_end = os.getloadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    say(f"Streaming benchmark (benchmarks/streaming.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say(f"machine: {machine()}; backend keras/{os.environ.get('KERAS_BACKEND', 'tensorflow')}")
    say(f"model lenet1d (params {args.params}), batch {_batch(args.params)}, one epoch on DS1 folds 1-3 "
        f"(x scale), validation DS1 fold 0 ({int(v.sum())} beats, in memory); buffer_shards {args.buffer_shards}, "
        f"one record copy per shard, sha256 checked on every shard load, "
        f"{'no prefetch' if args.no_prefetch else 'next group prefetched in a background thread'}")
    say(f"load average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
        f"at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f} on {os.cpu_count()} cores")
    if max(load_start[0], load_end[0]) > 0.75 * (os.cpu_count() or 1):
        say("NOTE: the cores were shared with other jobs during this run (load average above): beats/s are contended "
            "and vary\nbetween runs; the 1x pair was alternated so both paths saw similar load")
    say()
    head = (f"{'path':<8}{'scale':>6}{'train beats':>12}{'shards':>8}{'disk MB':>9}{'peak RSS MB':>13}"
            f"{'data MB':>9}{'steady b/s':>12}{'epoch b/s':>11}{'b/CPU-s':>9}{'val F1':>8}{'runs':>6}")
    say(head)
    say("-" * len(head))
    best = {}
    for (mode, scale), rs in results.items():
        b = dict(rs[0])
        for k in ("steady_beats_s", "epoch_beats_s", "beats_per_cpu_s", "val_macro_f1", "rss_start_mb"):
            b[k] = float(np.median([r[k] for r in rs]))  # speed: the median of the runs
        b["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)  # memory: the worst of the runs
        best[(mode, scale)] = b
        disk = f"{b['disk_mb']:.0f}" if b["disk_mb"] else "-"
        say(f"{mode:<8}{scale:>5}x{b['train_beats']:>12,}{b['shards'] or '-':>8}{disk:>9}{b['peak_rss_mb']:>13,.0f}"
            f"{b['peak_rss_mb'] - b['rss_start_mb']:>9,.0f}{b['steady_beats_s']:>12,.0f}"
            f"{b['epoch_beats_s']:>11,.0f}{b['beats_per_cpu_s']:>9,.0f}"
            f"{b['val_macro_f1']:>8.3f}{len(rs):>6}")
    say("peak RSS: ru_maxrss of the training process (the worst of its runs); data MB: peak RSS minus the RSS "
        "after imports,\nbefore any data was read (TensorFlow + Keras alone take the rest); steady b/s: training "
        "beats/s after the first\n11 batches; epoch b/s: the whole epoch incl. graph tracing; b/CPU-s: steady "
        "beats per second of process CPU time\n(all threads, prefetch included: the cost, less sensitive to other "
        "jobs than wall time); val F1: DS1 fold 0\nmacro-F1 after the epoch; speeds are the median of the runs")
    say()
    for (mode, scale), rs in results.items():
        say(f"{mode} {scale}x runs: steady beats/s " + ", ".join(f"{r['steady_beats_s']:,.0f}" for r in rs)
            + "; beats/CPU-s " + ", ".join(f"{r['beats_per_cpu_s']:,.0f}" for r in rs)
            + "; peak RSS MB " + ", ".join(f"{r['peak_rss_mb']:,.0f}" for r in rs)
            + (f"; max shards held {rs[0]['max_held_shards']}, groups loaded {rs[0]['groups_loaded']}"
               if mode == "stream" else ""))
    say()
    s1, s_top = best[("stream", 1)], best[("stream", max(args.scales))]
    mem_ratio = s_top["peak_rss_mb"] / s1["peak_rss_mb"]
    stream = sorted((sc, b["peak_rss_mb"]) for (m, sc), b in best.items() if m == "stream")
    say("streamed peak RSS by scale: " + " -> ".join(f"{sc}x {mb:,.0f} MB" for sc, mb in stream))
    say(f"verdict memory: streamed peak RSS {s1['peak_rss_mb']:,.0f} MB at 1x -> {s_top['peak_rss_mb']:,.0f} MB at "
        f"{max(args.scales)}x ({mem_ratio - 1:+.1%}; data {s_top['train_beats'] / s1['train_beats']:.0f}x): "
        f"{'PASS' if abs(mem_ratio - 1) <= 0.2 else 'FAIL'} (flat within 20%)")
    if ("memory", 1) in best:
        m1 = best[("memory", 1)]
        speed = s1["steady_beats_s"] / m1["steady_beats_s"]
        say(f"verdict speed: streamed {s1['steady_beats_s']:,.0f} vs in-memory {m1['steady_beats_s']:,.0f} steady "
            f"beats/s at 1x ({speed - 1:+.1%}): {'PASS' if speed >= 0.8 else 'FAIL'} (within 20%)")
        cost = s1["beats_per_cpu_s"] / m1["beats_per_cpu_s"]
        say(f"  same per CPU second: streamed {s1['beats_per_cpu_s']:,.0f} vs in-memory {m1['beats_per_cpu_s']:,.0f} "
            f"beats/CPU-s ({cost - 1:+.1%}): {'PASS' if cost >= 0.8 else 'FAIL'} (within 20%)")
        say(f"(in-memory peak RSS at 1x: {m1['peak_rss_mb']:,.0f} MB; it holds all 100,645 prepared beats and their "
            f"channels, as train_ecg does)")
    say(f"total wall {time.perf_counter() - t_start:.0f} s")
    if args.out:
        from pipeline.io import write_text
        write_text(args.out, "\n".join(lines) + "\n")


def _batch(params: str) -> int:
    from ecg import train_config
    return train_config.load(params).fit.batch_size


if __name__ == "__main__":
    main()
