"""Training and inference throughput of the ECG models at the prepared window size.

Prints beats/s per model (target: lenet1d >= 15,000 beats/s training at batch 256 on 2 CPU cores).
Uses data/ecg if prepared, otherwise random beats of the default shape.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import keras
import numpy as np

from ecg import models, train_config
from pipeline import device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--beats", type=int, default=256 * 60)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    meta_path = Path("data/ecg/meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"window_samples": 253, "rr_features": [0] * 5}
    window, n_rr = meta["window_samples"], len(meta["rr_features"])
    cfg = train_config.load()
    policy = device.configure(cfg.mixed_precision)
    rng = np.random.default_rng(0)
    x = {"beat": rng.normal(size=(args.beats, window, len(cfg.channels))).astype("float32"),
         "rr": rng.uniform(0.5, 1.5, (args.beats, n_rr)).astype("float32")}
    y = keras.utils.to_categorical(rng.integers(0, 5, args.beats), 5)
    print(f"backend {keras.backend.backend()}, policy {policy}, cores {os.cpu_count()}, batch {args.batch}, "
          f"window {window}")
    print(f"{'model':<12}{'params':>10}{'train beats/s':>16}{'infer beats/s':>16}")
    for name in cfg.models:
        model, info = models.build(name, window, n_rr, 5, **cfg.model_kwargs(name))
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", jit_compile=False)
        model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)  # warm-up: tracing, allocation
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=args.batch, epochs=args.epochs, verbose=0)
        train_rate = args.epochs * args.beats / (time.perf_counter() - t0)
        model.predict(x, batch_size=1024, verbose=0)
        t0 = time.perf_counter()
        model.predict(x, batch_size=1024, verbose=0)
        infer_rate = args.beats / (time.perf_counter() - t0)
        print(f"{name:<12}{info['params']:>10,}{train_rate:>16,.0f}{infer_rate:>16,.0f}")
    print("target: lenet1d >= 15,000 training beats/s at batch 256 on 2 CPU cores")


if __name__ == "__main__":
    main()
