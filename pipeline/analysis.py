"""What a trained network does, counted without retraining: dead ReLUs, linear-region bounds, top-k, occlusion.

Domain-free (keras, keras.ops and numpy only). Nested models (fold ensembles whose members are
Functional sub-models) are recursed: every count names the leaf layer as "member/layer".
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
from keras import ops

from pipeline.clinical import bootstrap_ci

# --------------------------------------------------------------------------- ReLU layers


def _is_relu_fn(fn) -> bool:
    return fn is keras.activations.relu or getattr(fn, "__name__", "") == "relu"


def is_relu(layer) -> bool:
    """True for layers whose output is a plain ReLU: Activation('relu'), ReLU() without slope/threshold/cap,
    and Dense/Conv layers built with activation='relu'. LeakyReLU and friends are not (they never die)."""
    if isinstance(layer, keras.layers.ReLU):
        return (not layer.negative_slope and not layer.threshold) and layer.max_value is None
    if isinstance(layer, keras.layers.Activation):
        return _is_relu_fn(layer.activation)
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return _is_relu_fn(layer.activation)
    return False


def submodels(model) -> list:
    """The leaf Functional models: `model` itself, or its nested members (one level or more)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not nested:
        return [model]
    out = []
    for m in nested:
        out.extend(submodels(m))
    return out


def relu_layers(model) -> list:
    """ReLU layers of one leaf model, in graph order."""
    return [layer for layer in model.layers if is_relu(layer)]


def _feed(model, x):
    """Inputs in the model's order: a dict is matched on input names (a clear error for a missing one)."""
    if not isinstance(x, Mapping):
        return x
    names = [t.name.split(":")[0] for t in model.inputs]
    missing = [n for n in names if n not in x]
    if missing:
        raise KeyError(f"model '{model.name}' needs input(s) {missing}; got {sorted(x)}")
    return [np.asarray(x[n]) for n in names] if len(names) > 1 else np.asarray(x[names[0]])


def _n_rows(x) -> int:
    if isinstance(x, Mapping):
        return len(next(iter(x.values())))
    if isinstance(x, (list, tuple)):
        return len(x[0])
    return len(x)


def dead_units(model, x, batch_size: int = 1024) -> dict:
    """{"member/layer": {"units", "dead", "fraction"}} for every ReLU layer of every leaf model.

    A unit is one output channel (the last axis; every position of a conv feature map belongs to
    its channel); it is dead when it is never > 0 on any input row of `x` at any position. The
    probe is one functional sub-model per leaf model whose outputs are the per-row maxima of each
    ReLU layer's output over all non-channel axes. A single (non-nested) model is named by its own
    name as the member.
    """
    if _n_rows(x) == 0:
        raise ValueError("dead_units: no input rows")
    out = {}
    for member in submodels(model):
        layers = relu_layers(member)
        if not layers:
            continue
        peaks = []
        for layer in layers:
            t = layer.output
            axes = tuple(range(1, len(t.shape) - 1))
            peaks.append(ops.max(t, axis=axes) if axes else t)
        probe = keras.Model(member.inputs, peaks, name=f"{member.name}_relu_probe")
        values = probe.predict(_feed(member, x), batch_size=batch_size, verbose=0)
        if not isinstance(values, (list, tuple)):
            values = [values]
        for layer, v in zip(layers, values):
            alive = np.asarray(v).max(axis=0) > 0
            n, dead = int(alive.size), int((~alive).sum())
            out[f"{member.name}/{layer.name}"] = {"units": n, "dead": dead, "fraction": dead / n}
    return out


def dead_summary(dead: dict) -> dict:
    """Per member totals, per layer (name without member) means over members, overall mean fraction."""
    members: dict = {}
    layers: dict = {}
    for key, v in dead.items():
        member, layer = key.split("/", 1)
        m = members.setdefault(member, {"units": 0, "dead": 0})
        m["units"] += v["units"]
        m["dead"] += v["dead"]
        layers.setdefault(layer, []).append(v["fraction"])
    for m in members.values():
        m["fraction"] = m["dead"] / m["units"] if m["units"] else 0.0
    per_layer = {k: {"mean_fraction": float(np.mean(v)), "max_fraction": float(np.max(v)), "members": len(v)}
                 for k, v in layers.items()}
    return {"per_member": members, "per_layer": per_layer,
            "mean_fraction": float(np.mean([m["fraction"] for m in members.values()])) if members else 0.0}


# --------------------------------------------------------------------------- linear regions


def log10_sum_binomials(n: int, d: int) -> float:
    """log10(sum_{j=0}^{d} C(n, j)), exact in log space (lgamma + logsumexp); d is clipped to [0, n]."""
    if n < 0 or d < 0:
        raise ValueError(f"need n >= 0 and d >= 0, got n={n}, d={d}")
    d = min(d, n)
    j = np.arange(d + 1, dtype=np.float64)
    ln = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in j])
    top = ln.max()
    return float((top + math.log(np.exp(ln - top).sum())) / math.log(10))


def linear_region_bound(n0: int, widths: Sequence[int]) -> float:
    """log10 of the upper bound on linear regions of a ReLU network with input size n0 and hidden widths.

    The product bound of Montufar (2017, "Notes on the number of linear regions of deep neural
    networks"), restated by Serra, Tjandraatmadja & Ramalingam (ICML 2018) as the looser form of their
    Theorem 1: prod_l sum_{j=0}^{d_l} C(n_l, j) with d_l = min(n_0, n_1, ..., n_l).
    """
    if n0 < 1 or not widths or any(w < 1 for w in widths):
        raise ValueError(f"need n0 >= 1 and positive widths, got n0={n0}, widths={list(widths)}")
    total, d = 0.0, n0
    for w in widths:
        d = min(d, int(w))
        total += log10_sum_binomials(int(w), d)
    return total


def _op_inputs(tensor):
    hist = getattr(tensor, "_keras_history", None)
    if hist is None:
        return None, []
    op, node_index, _ = hist
    node = op._inbound_nodes[node_index]
    return op, list(node.input_tensors)


def relu_depths(model) -> dict:
    """{layer name: ReLU depth} for the ReLU layers of one leaf model: the most ReLU layers on any path
    from an input to the layer's output, itself included (parallel branches share a depth)."""
    memo: dict = {}

    def depth(t) -> int:
        key = id(t)
        if key in memo:
            return memo[key]
        op, inputs = _op_inputs(t)
        d = max((depth(i) for i in inputs), default=0)
        if op is not None and isinstance(op, keras.layers.Layer) and is_relu(op):
            d += 1
        memo[key] = d
        return d

    return {layer.name: depth(layer.output) for layer in relu_layers(model)}


def relu_widths(model) -> dict:
    """Widths for the region bound of one leaf model: n_0 = input values (all inputs summed), and per
    ReLU depth the summed unit counts (units = positions x channels for a conv map, neurons for Dense)."""
    n0 = int(sum(np.prod([int(s) for s in t.shape[1:]]) for t in model.inputs))
    depths = relu_depths(model)
    by_depth: dict = {}
    for layer in relu_layers(model):
        units = int(np.prod([int(s) for s in layer.output.shape[1:]]))
        by_depth.setdefault(depths[layer.name], []).append((layer.name, units))
    widths = [sum(u for _, u in by_depth[k]) for k in sorted(by_depth)]
    return {"n0": n0, "widths": widths, "layers": [[name for name, _ in by_depth[k]] for k in sorted(by_depth)]}


# --------------------------------------------------------------------------- top-k


def topk_hits(y: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Boolean per row: the true class is among the k most probable (ties broken by class order)."""
    y, probs = np.asarray(y), np.asarray(probs)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probs must be (n, classes) with n = len(y); got {probs.shape} for {len(y)} labels")
    if not 1 <= k <= probs.shape[1]:
        raise ValueError(f"k must be in 1..{probs.shape[1]}, got {k}")
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return (top == y[:, None]).any(axis=1)


def topk_accuracy(y, probs, ks=(1, 2, 3), groups=None, n_boot: int = 0, seed: int = 0) -> dict:
    """{"top<k>": {"value", "ci95"}}; ci95 from a group bootstrap (pipeline.clinical) when groups and n_boot."""
    out = {}
    for k in ks:
        hits = topk_hits(y, probs, k).astype(np.float64)
        ci = (bootstrap_ci(lambda h: float(h.mean()) if len(h) else None, (hits,), groups, n_boot, seed)
              if groups is not None and n_boot else None)
        out[f"top{k}"] = {"value": float(hits.mean()), "ci95": ci}
    return out


# --------------------------------------------------------------------------- occlusion


def window_slices(length: int, n_windows: int) -> list[tuple[int, int]]:
    """`n_windows` contiguous [start, stop) windows covering 0..length as equally as integers allow."""
    if not 1 <= n_windows <= length:
        raise ValueError(f"n_windows must be in 1..{length}, got {n_windows}")
    edges = np.linspace(0, length, n_windows + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def occlusion_drops(predict: Callable[[dict], np.ndarray], x: Mapping[str, np.ndarray], target: np.ndarray,
                    occlusions: Sequence[Mapping[str, object]], baseline: Mapping[str, np.ndarray]) -> tuple:
    """Drop in p(target) when each occlusion replaces parts of the inputs with the baseline's values.

    x: {input name: (n, ...)}; baseline: same names and shapes (what "removed" means per input);
    occlusions: each {input name: index along axis 1} (a slice, an int or an index array); every
    named part is replaced at once. Returns (p0 (n,), drops (n, len(occlusions))): p0 the unoccluded
    probability of each row's target class, drops = p0 - p(target | occluded); positive = the
    model relied on that part for the target class.
    """
    target = np.asarray(target, dtype=np.int64)
    n = len(target)
    for name, arr in x.items():
        if len(arr) != n:
            raise ValueError(f"input '{name}' has {len(arr)} rows for {n} targets")
        if name in baseline and np.shape(baseline[name]) != np.shape(arr):
            raise ValueError(f"baseline '{name}' shape {np.shape(baseline[name])} != input shape {np.shape(arr)}")
    rows = np.arange(n)
    variants = [dict(x)]
    for j, occ in enumerate(occlusions):
        xo = dict(x)
        for name, index in occ.items():
            if name not in x or name not in baseline:
                raise KeyError(f"occlusion {j} names input '{name}', not among inputs {sorted(x)} "
                               f"with a baseline {sorted(baseline)}")
            a = np.array(x[name], copy=True)
            a[:, index] = np.asarray(baseline[name])[:, index]
            xo[name] = a
        variants.append(xo)
    # one predict call for the unoccluded rows and every occlusion (fewer, larger batches)
    stacked = {name: np.concatenate([v[name] for v in variants]) for name in x}
    probs = np.asarray(predict(stacked)).reshape(len(variants), n, -1)[:, rows, target]
    p0 = probs[0]
    return p0, (p0[None, :] - probs[1:]).T.astype(np.float64)
