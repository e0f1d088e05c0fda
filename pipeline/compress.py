"""Model compression machinery, domain-free (keras + keras.ops only): distillation and pruning.

Distillation. The shared fit loop (pipeline.training.fit) trains on integer labels that it one-hot
encodes to the model's output width, and scores validation macro-F1 on the argmax of the outputs.
`distillation_model` wraps a student so that both hold unchanged: the wrapper takes the teacher's
probabilities as a third input and outputs [student probs | teacher probs - 1] (width 2k). The one-hot
label then fills the first k columns, `DistillationLoss` reads the teacher back from the last k, and
the argmax always falls in the student's half (its probabilities are >= 0, the shifted teacher's <= 0).
The loss is the classic a * T^2 * KL(softmax(log t / T) || softmax(log s / T)) + (1 - a) * CE(y, s),
with optional per-class weights on the hard-label term; a = 0 is plain (weighted) cross-entropy, the
hard-label baseline at equal size.

Pruning. `magnitude_masks` zeroes exactly round(s * n) of the smallest-magnitude weights of each
Conv1D/Conv2D/Dense kernel (biases and normalisation layers are left dense); `with_masks` rebuilds the
model with a `MaskConstraint` on those kernels, which Keras applies after every optimizer step, so the
sparsity is exact and survives fine-tuning, saving and reloading (the mask lives in the layer config).
Keras 3 has no maintained pruning toolkit (tensorflow-model-optimization targets Keras 2).
`channel_prune` is structured pruning: it keeps the filters/units with the largest L1 norm in chosen
layers and rebuilds a narrower model of the same graph from an edited config, slicing every weight.
"""
from __future__ import annotations

import copy

import keras
import numpy as np
from keras import ops

_EPS = 1e-7
PRUNABLE = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)


# ------------------------------------------------------------------------------------------ distillation
@keras.saving.register_keras_serializable(package="compress")
class DistillationLoss(keras.losses.Loss):
    """a * T^2 * KL(teacher_T || student_T) + (1 - a) * weighted CE(hard label, student).

    y_true: (n, 2k), the hard one-hot label in the first k columns. y_pred: (n, 2k) from
    `distillation_model`: student probabilities, then teacher probabilities minus 1.
    """

    def __init__(self, n_classes: int, temperature: float = 4.0, alpha: float = 0.5, class_weights=None,
                 name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        if not temperature > 0 or not 0 <= alpha <= 1:
            raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got T={temperature}, alpha={alpha}")
        self.n_classes, self.temperature, self.alpha = int(n_classes), float(temperature), float(alpha)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        if self.class_weights is not None and len(self.class_weights) != self.n_classes:
            raise ValueError(f"class_weights has {len(self.class_weights)} entries for {self.n_classes} classes")

    def call(self, y_true, y_pred):
        k = self.n_classes
        hard = ops.cast(y_true[:, :k], "float32")
        student = ops.clip(ops.cast(y_pred[:, :k], "float32"), _EPS, 1.0)
        log_s = ops.log(student)
        weights = hard if self.class_weights is None else hard * ops.convert_to_tensor(self.class_weights, "float32")
        ce = -ops.sum(weights * log_s, axis=-1)
        if self.alpha == 0:
            return ce
        teacher = ops.clip(ops.cast(y_pred[:, k:], "float32") + 1.0, _EPS, 1.0)
        t = self.temperature
        p_teacher = ops.softmax(ops.log(teacher) / t, axis=-1)
        log_p_student = ops.log_softmax(log_s / t, axis=-1)
        kl = ops.sum(p_teacher * (ops.log(ops.clip(p_teacher, _EPS, 1.0)) - log_p_student), axis=-1)
        return self.alpha * t * t * kl + (1.0 - self.alpha) * ce

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes, "temperature": self.temperature,
                "alpha": self.alpha, "class_weights": self.class_weights}


def distillation_model(student: keras.Model, n_classes: int, teacher_input: str = "teacher") -> keras.Model:
    """Wrap `student` (named inputs -> (n, k) probabilities) for training with DistillationLoss.

    The wrapper's inputs are the student's plus `teacher_input` (n, k): the teacher's probabilities.
    Recover the trained student with `wrapper.get_layer(student.name)`.
    """
    inputs = [keras.Input(t.shape[1:], name=t.name.split(":")[0]) for t in student.inputs]
    names = [i.name for i in inputs]
    if teacher_input in names:
        raise ValueError(f"student already has an input named {teacher_input!r}")
    teacher = keras.Input((n_classes,), name=teacher_input)
    probs = student(inputs if len(inputs) > 1 else inputs[0])
    shifted = keras.layers.Rescaling(1.0, offset=-1.0, name="teacher_shift")(teacher)
    out = keras.layers.Concatenate(name="student_and_teacher", dtype="float32")([probs, shifted])
    return keras.Model([*inputs, teacher], out, name=f"distil_{student.name}")


# ------------------------------------------------------------------------------------------------ pruning
@keras.saving.register_keras_serializable(package="compress")
class MaskConstraint(keras.constraints.Constraint):
    """w * mask after every optimizer step: pruned weights stay exactly zero."""

    def __init__(self, mask):
        self.mask = np.asarray(mask, dtype="float32")

    def __call__(self, w):
        return w * ops.cast(ops.convert_to_tensor(self.mask), w.dtype)

    def get_config(self):
        return {"mask": self.mask.astype(int).tolist()}


def prunable_layers(model: keras.Model) -> list:
    """Top-level layers whose kernel magnitude pruning applies to."""
    return [layer for layer in model.layers if isinstance(layer, PRUNABLE)]


def magnitude_masks(model: keras.Model, sparsity: float, skip=()) -> dict[str, np.ndarray]:
    """{layer name: 0/1 mask}: in every prunable kernel (except layers in `skip`), exactly
    round(sparsity * size) weights of smallest |w| are 0 (ties broken by position, stably)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    masks = {}
    for layer in prunable_layers(model):
        if layer.name in skip:
            continue
        w = np.asarray(layer.kernel.numpy() if hasattr(layer.kernel, "numpy") else layer.kernel)
        n_zero = int(round(sparsity * w.size))
        order = np.argsort(np.abs(w).ravel(), kind="stable")
        mask = np.ones(w.size, dtype="float32")
        mask[order[:n_zero]] = 0.0
        masks[layer.name] = mask.reshape(w.shape)
    return masks


def with_masks(model: keras.Model, masks: dict[str, np.ndarray]) -> keras.Model:
    """A copy of the functional `model` whose masked kernels carry a MaskConstraint, weights masked."""
    config = copy.deepcopy(model.get_config())
    found = set()
    for layer_cfg in config["layers"]:
        name = layer_cfg["config"]["name"]
        if name in masks:
            layer_cfg["config"]["kernel_constraint"] = keras.saving.serialize_keras_object(MaskConstraint(masks[name]))
            found.add(name)
    missing = sorted(set(masks) - found)
    if missing:
        raise ValueError(f"masks name layers {missing} that model '{model.name}' does not have at top level")
    pruned = model.__class__.from_config(config)
    pruned.set_weights(model.get_weights())
    for name, mask in masks.items():
        layer = pruned.get_layer(name)
        layer.kernel.assign(np.asarray(layer.kernel.numpy()) * mask)
    return pruned


def strip_masks(model: keras.Model) -> keras.Model:
    """The same functional model without MaskConstraints (what is deployed: the zeros stay, the masks,
    which only training needs and which would store one number per weight in the config, go)."""
    config = copy.deepcopy(model.get_config())
    for layer_cfg in config["layers"]:
        if layer_cfg["config"].get("kernel_constraint"):
            layer_cfg["config"]["kernel_constraint"] = None
    plain = model.__class__.from_config(config)
    plain.set_weights(model.get_weights())
    return plain


def sparsity_report(model: keras.Model) -> dict:
    """Zero fraction of every prunable kernel, and over all of them."""
    rows, zeros, total = {}, 0, 0
    for layer in prunable_layers(model):
        w = np.asarray(layer.kernel.numpy())
        z = int((w == 0).sum())
        rows[layer.name] = z / w.size
        zeros, total = zeros + z, total + w.size
    return {"layers": rows, "kernel_zeros": zeros, "kernel_weights": total,
            "sparsity": zeros / total if total else 0.0}


def count_params(model: keras.Model, nonzero: bool = False) -> int:
    ws = model.weights
    if nonzero:
        return int(sum(int(np.count_nonzero(np.asarray(w.numpy()))) for w in ws))
    return int(sum(int(np.prod(w.shape)) for w in ws))


# -------------------------------------------------------------------------------- structured pruning
def _l1_rank(kernel: np.ndarray, keep: int) -> np.ndarray:
    """Indices (sorted) of the `keep` output units with the largest L1 norm."""
    norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    return np.sort(np.argsort(-norms, kind="stable")[:keep])


def channel_prune(model: keras.Model, keep: dict[str, int], inbound=None) -> keras.Model:
    """Structured pruning: a narrower copy of the functional `model` keeping, in each layer named in
    `keep` (Conv1D/Conv2D `filters` or Dense `units`), the `keep[name]` units of largest L1 norm.

    Consumers are sliced to match: BatchNormalization follows its input's channels, pooling and
    activation layers pass them through, Concatenate offsets them, and a Conv/Dense that reads a
    pruned tensor keeps only the matching input rows. Flatten is not supported (it mixes positions
    and channels); the graph must be a functional model without nested models.
    """
    layers = {op.name: op for op in model.operations}   # layers and keras.ops nodes (log, maximum, ...)
    unknown = [n for n in keep if n not in layers or not isinstance(layers[n], PRUNABLE)]
    if unknown:
        raise ValueError(f"channel_prune: {unknown} are not Conv/Dense layers of '{model.name}'")
    config = copy.deepcopy(model.get_config())
    for c in config["layers"]:
        c.pop("build_config", None)  # saved input shapes would pin the old widths
    cfg_by_name = {c["config"]["name"]: c for c in config["layers"]}
    kept_out: dict[str, np.ndarray] = {}   # layer name -> kept channel indices of its OUTPUT (last axis)
    width: dict[str, int] = {}             # layer name -> output channels before pruning

    def inputs_of(name):
        node = cfg_by_name[name].get("inbound_nodes") or []
        if not node:
            return []
        args = node[0]["args"]
        flat = []

        def walk(a):
            if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__":
                flat.append(a["config"]["keras_history"][0])
            elif isinstance(a, (list, tuple)):
                for x in a:
                    walk(x)
        walk(args)
        return flat

    order = [c["config"]["name"] for c in config["layers"]]
    for name in order:
        layer = layers[name]
        out = layer.output
        width[name] = int(out.shape[-1]) if not isinstance(out, (list, tuple)) and len(out.shape) >= 2 else 0
        srcs = inputs_of(name)
        cfg = cfg_by_name[name]["config"]
        if isinstance(layer, keras.layers.Flatten) and any(s in kept_out for s in srcs):
            raise ValueError(f"channel_prune: Flatten layer '{name}' reads a pruned tensor (unsupported)")
        if name in keep:
            kernel = np.asarray(layer.kernel.numpy())
            if not 1 <= keep[name] <= kernel.shape[-1]:
                raise ValueError(f"channel_prune: keep[{name!r}]={keep[name]} outside 1..{kernel.shape[-1]}")
            kept_out[name] = _l1_rank(kernel, keep[name])
            cfg["filters" if "filters" in cfg else "units"] = int(keep[name])
        elif isinstance(layer, keras.layers.Concatenate):
            parts, offset, pruned_any = [], 0, False
            for s in srcs:
                w = width[s]
                idx = kept_out.get(s)
                pruned_any |= idx is not None
                parts.append(offset + (idx if idx is not None else np.arange(w)))
                offset += w
            if pruned_any:
                kept_out[name] = np.concatenate(parts)
        elif len(srcs) == 1 and srcs[0] in kept_out and not isinstance(layer, PRUNABLE):
            kept_out[name] = kept_out[srcs[0]]   # BN, activation, pooling, dropout: channels pass through
    narrow = model.__class__.from_config(config)
    for name in order:
        old = layers[name]
        if not getattr(old, "weights", None):
            continue
        new = narrow.get_layer(name)
        srcs = inputs_of(name)
        in_idx = kept_out.get(srcs[0]) if len(srcs) == 1 else None
        out_idx = kept_out.get(name) if name in keep or isinstance(old, keras.layers.BatchNormalization) else None
        vals = []
        for w in old.get_weights():
            if isinstance(old, keras.layers.BatchNormalization):
                vals.append(w[out_idx] if out_idx is not None else w)
                continue
            if w.ndim >= 2 and in_idx is not None:
                w = np.take(w, in_idx, axis=-2)
            if out_idx is not None:
                w = np.take(w, out_idx, axis=-1)
            vals.append(w)
        new.set_weights(vals)
    return narrow


def width_for_budget(model: keras.Model, layer_names, budget: int) -> tuple[dict[str, int], int]:
    """The uniform keep ratio r (same fraction of every named layer's units) whose channel-pruned
    copy has the parameter count closest to `budget` without exceeding it (or the smallest possible).
    Returns ({layer: keep}, params)."""
    layers = {layer.name: layer for layer in model.layers}
    full = {n: int(np.asarray(layers[n].kernel.shape)[-1]) for n in layer_names}
    best = None
    for r in np.linspace(1.0, 0.0, 101):
        keep = {n: max(1, int(round(full[n] * r))) for n in layer_names}
        params = count_params(channel_prune(model, keep))
        if params <= budget or r == 0.0:
            best = (keep, params)
            if params <= budget:
                break
    return best
