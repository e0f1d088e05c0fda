"""Grad-CAM for chain-shaped Keras classifiers, and the backend-neutral gradient it needs.

A *chain* is a model whose leaf layers each take the previous one's output (nested models are
flattened into their layers; a layer called on k copies of one tensor, such as a channel-repeating
Concatenate, counts as a link). A branching part between two tensors that every path passes through
(a SqueezeNet fire module: squeeze -> two expand branches -> Concatenate) becomes one `Segment` link,
which replays its layers when called. `layer_chain` lists the links, `apply_chain` calls them (inference
mode), `chain_model` wires a fresh, flat functional model from a slice of them, so a classifier can be
cut at any link: input -> feature map, feature map -> class scores.

Grad-CAM (Selvaraju et al. 2017): with A the feature map (h, w, K) at the cut and y^c the class
score before the softmax, weights a_k = mean_ij dy^c/dA_ij^k and CAM = ReLU(sum_k a_k A^k).
`gradients(fn, x)` takes d sum(fn(x)) / dx on whichever backend Keras runs (tensorflow: GradientTape,
jax: jax.grad, torch: autograd); samples of a batch are independent in inference mode, so the
gradient of the batch sum is each sample's own gradient.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import ops

SPATIAL = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")


def gradients(fn: Callable, x) -> np.ndarray:
    """d fn(x) / dx as numpy, fn(x) a scalar backend tensor (sum per-sample scores to get each one's gradient)."""
    backend = keras.backend.backend()
    x = np.asarray(x, dtype="float32")
    if backend == "tensorflow":
        import tensorflow as tf
        xt = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = fn(xt)
        grad = tape.gradient(y, xt)
    elif backend == "jax":
        import jax
        grad = jax.grad(lambda v: fn(v))(jax.numpy.asarray(x))
    elif backend == "torch":
        import torch
        xt = ops.convert_to_tensor(x).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(xt), xt)
    else:
        raise ValueError(f"gradients: unsupported Keras backend '{backend}'; valid: tensorflow, jax, torch")
    if grad is None:
        return np.zeros_like(x)
    return np.asarray(ops.convert_to_numpy(grad), dtype=np.float32)


# ----------------------------------------------------------------------------------------- chains

def _copies(layer) -> int:
    """How many inputs the layer was called with (all the same tensor), 0 for a single input."""
    if isinstance(layer, Segment):
        return 0
    inp = layer.input
    if not isinstance(inp, (list, tuple)):
        return 0
    if any(t is not inp[0] for t in inp):
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}) joins different tensors; "
                         "the model is not a chain")
    return len(inp)


def _wiring(model) -> list:
    """[(layer, its input tensors, called on a list?, its output tensor)] for `model`'s non-input layers in
    graph order, read from the call (node) of each layer inside `model`'s own graph; a nested model's
    `.input` would name its inner input, not the tensor it was called on."""
    known = {id(t) for t in model.inputs}
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        nodes = [n for n in getattr(layer, "_inbound_nodes", [])
                 if n.input_tensors and all(id(t) in known for t in n.input_tensors)]
        if not nodes or len(nodes[0].output_tensors) != 1:
            raise ValueError(f"layer '{layer.name}' of '{model.name}': no single-output call inside the model's "
                             "graph; the model is not a chain")
        node = nodes[0]
        inputs, output = list(node.input_tensors), node.output_tensors[0]
        known.add(id(output))
        out.append((layer, inputs, isinstance(layer.input, (list, tuple)) and not isinstance(layer, keras.Model),
                    output))
    return out


class Segment:
    """A branching run of layers between two cut tensors, used as one link of a chain: `input` is the
    tensor it reads, `output` the one it ends with. Calling it replays its layers on a new tensor in
    graph order (inference mode), so `chain_model` stays flat: every layer of the segment is a layer of
    the rebuilt model. Compared (analyse's prefix tree) by its layers' configs and weights."""

    def __init__(self, wiring: Sequence, entry, output):
        self.wiring, self.input, self.output = list(wiring), entry, output
        self.layers = [w[0] for w in self.wiring]
        self.name = f"{self.layers[0].name}..{self.layers[-1].name}"

    def __call__(self, x, training=False):
        values = {id(self.input): x}
        for layer, inputs, as_list, output in self.wiring:
            args = [values[id(t)] for t in inputs]
            values[id(output)] = layer(args if as_list else args[0], training=training)
        return values[id(self.output)]

    def get_config(self) -> dict:
        return {"layers": [{"class": type(layer).__name__, **layer.get_config()} for layer in self.layers]}

    def get_weights(self) -> list:
        return [w for layer in self.layers for w in layer.get_weights()]

    @property
    def weights(self) -> list:
        return [w for layer in self.layers for w in layer.weights]


def _links(model) -> list:
    """`model`'s layers (input layers left out) grouped into chain links: a layer, a nested model's own
    links, or a Segment for each branching part between two cut tensors (every later layer reads only
    tensors made at or after the cut)."""
    wiring = _wiring(model)
    made = {id(t): -1 for t in model.inputs}  # tensor -> index of the layer that made it (-1: the input)
    for i, (_, _, _, output) in enumerate(wiring):
        made[id(output)] = i
    reads = [[made[id(t)] for t in inputs] for _, inputs, _, _ in wiring]
    out, start, entry = [], 0, model.inputs[0]
    for i, (layer, inputs, _, output) in enumerate(wiring):
        if any(k < i for j in range(i + 1, len(wiring)) for k in reads[j]):
            continue                     # a tensor made before layer i is still read later: no cut here
        part = wiring[start:i + 1]
        if len(part) == 1 and all(t is entry for t in inputs):
            out.extend(_links(layer) if isinstance(layer, keras.Model) else [layer])
        else:
            if any(isinstance(w[0], keras.Model) for w in part):
                raise ValueError(f"'{model.name}': a nested model inside a branching part; the model is not a chain")
            out.append(Segment(part, entry, output))
        start, entry = i + 1, output
    if start != len(wiring):
        raise ValueError(f"'{model.name}': its last layers do not end at one output; the model is not a chain")
    return out


def layer_chain(model) -> list:
    """Links of `model` in call order: leaf layers, nested models flattened, input layers left out, and
    a Segment for each branching part (see `_links`).

    Raises ValueError when the model is not a chain of such links."""
    out = _links(model)
    for prev, layer in zip(out, out[1:]):
        inp = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
        if tuple(inp.shape[1:]) != tuple(prev.output.shape[1:]):
            raise ValueError(f"layer '{layer.name}' does not take '{prev.name}''s output "
                             f"({tuple(inp.shape)} vs {tuple(prev.output.shape)}); the model is not a chain")
    return out


def _final_logits(layer, x):
    """The last Dense layer's pre-softmax output."""
    y = ops.matmul(ops.cast(x, layer.kernel.dtype), layer.kernel)
    return y + layer.bias if layer.use_bias else y


def apply_chain(layers: Sequence, x, *, logits: bool = False):
    """Call `layers` one after the other in inference mode. `logits`: the last layer, a Dense with a
    softmax activation, returns its pre-softmax scores instead."""
    layers = list(layers)
    for i, layer in enumerate(layers):
        if logits and i == len(layers) - 1:
            if not (isinstance(layer, keras.layers.Dense) and layer.activation is keras.activations.softmax):
                raise ValueError(f"logits=True needs a final Dense softmax layer, got '{layer.name}' "
                                 f"({type(layer).__name__})")
            return _final_logits(layer, x)
        k = _copies(layer)
        x = layer([x] * k, training=False) if k else layer(x, training=False)
    return x


def chain_model(layers: Sequence, input_shape, name: str | None = None) -> keras.Model:
    """A functional model re-wiring `layers` (a slice of a chain) onto a fresh input of `input_shape`."""
    inputs = keras.Input(shape=tuple(int(d) for d in input_shape))
    return keras.Model(inputs, apply_chain(layers, inputs), name=name)


def cam_layer_index(layers: Sequence, min_side: int = 1) -> int:
    """Index of the link whose output Grad-CAM reads: the last spatial convolution (or branching Segment of
    them, such as a fire module) whose map is at least
    `min_side` on its shorter side, extended through the shape-preserving layers after it (BatchNorm,
    ReLU: the rectified block output, before pooling)."""
    convs = [i for i, layer in enumerate(layers)
             if (type(layer).__name__ in SPATIAL or (isinstance(layer, Segment) and len(layer.output.shape) == 4))
             and min(layer.output.shape[1:3]) >= min_side]
    if not convs:
        raise ValueError(f"no 2-D convolution with a map of side >= {min_side} in the chain")
    i = convs[-1]
    shape = tuple(layers[i].output.shape[1:])
    while (i + 1 < len(layers) and type(layers[i + 1]).__name__ not in SPATIAL
           and tuple(layers[i + 1].output.shape[1:]) == shape):
        i += 1
    return i


def grad_cam(layers: Sequence, x, classes, index: int) -> np.ndarray:
    """Grad-CAM maps (n, h, w) of chain `layers` cut after layers[index], for class classes[i] of x[i].

    Scores are the final layer's logits. Maps are ReLU'd, not normalised."""
    layers = list(layers)
    feats = np.asarray(ops.convert_to_numpy(apply_chain(layers[:index + 1], ops.convert_to_tensor(
        np.asarray(x, np.float32)))), np.float32)
    n_classes = int(layers[-1].units)
    onehot = np.eye(n_classes, dtype=np.float32)[np.asarray(classes, np.int64)]
    grads = gradients(lambda a: ops.sum(apply_chain(layers[index + 1:], a, logits=True) * onehot), feats)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    return np.maximum((weights * feats).sum(axis=-1), 0.0)


def upsample(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of maps (n, h, w) to (n, *size), each scaled to max 1 (an all-zero map stays 0)."""
    cams = np.asarray(cams, np.float32)
    up = ops.convert_to_numpy(ops.image.resize(cams[..., None], size, interpolation="bilinear"))[..., 0]
    up = np.maximum(up, 0.0)
    top = up.reshape(len(up), -1).max(axis=1)
    return up / np.where(top > 0, top, 1.0)[:, None, None]


def centre_fraction(cams: np.ndarray) -> np.ndarray:
    """Share of each map's mass inside the central square of half the side (a quarter of the area;
    a uniform map gives 0.25). None-safe: an all-zero map gives NaN."""
    cams = np.asarray(cams, np.float64)
    h, w = cams.shape[1:3]
    centre = cams[:, h // 4: h - h // 4, w // 4: w - w // 4].sum(axis=(1, 2))
    total = cams.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, centre / total, np.nan)
