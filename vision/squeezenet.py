"""SqueezeNet v1.1 convolutional backbone (Iandola et al., 2016) and its ImageNet weights (keras + keras.ops only).

Layout (no top: the published conv10 / global-pool classifier is dropped; models.build_classifier adds
the project's head):

    conv1 64 3x3 /2 (valid) + ReLU -> maxpool 3x3 /2
    fire2 (16, 64), fire3 (16, 64)  -> maxpool 3x3 /2
    fire4 (32, 128), fire5 (32, 128) -> maxpool 3x3 /2
    fire6 (48, 192), fire7 (48, 192), fire8 (64, 256), fire9 (64, 256)

fire(s, e) = squeeze 1x1 (s) + ReLU -> [expand 1x1 (e) + ReLU, expand 3x3 "same" (e) + ReLU] concatenated
(2e channels).  722,496 parameters; 512 output channels.

Keras 3 forbids "/" in layer names, so the published names ("conv1", "fire2/squeeze1x1", ...) become
block-prefixed ones that vision.models.set_trainable's ``unfreeze_from`` understands (regex ``block(\\d+)_``):
block1 = conv1 (+ pool1), block2 = fire2-3 (+ pool3), block3 = fire4-5 (+ pool5), block4 = fire6-7,
block5 = fire8-9; e.g. "fire2/squeeze1x1" -> "block2_fire2_squeeze1x1" (``layer_name``).

Input: caffe-style preprocessing (BGR, ImageNet mean subtracted, 0..255 scale) = vision.preprocess mode
"caffe".  Smallest input side: MIN_SIZE = 31 (three valid 3x3/2 max-pools after the valid 3x3/2 conv;
``min_input_side``); a 32 px input ends at a 1x1x512 map, so the 28 px MedMNIST images must be resized up.

ImageNet weights: the Keras-2 h5 of rcmalli/keras-squeezenet (converted from the DeepScale Caffe model),
read by name with h5py (``load_imagenet_h5``); ``imagenet_weights_path`` finds or downloads it and
checks its md5.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import keras
import numpy as np

from pipeline.io import file_digest

NAME = "squeezenet"
NATIVE_SIZE = 227        # input side of the published model
PREPROCESS = "caffe"     # vision.preprocess.MODES key
BLOCKS = tuple(f"block{i}" for i in range(1, 6))
N_PARAMS = 722_496       # no top
N_FEATURES = 512

WEIGHTS_URL = ("https://github.com/rcmalli/keras-squeezenet/releases/download/v1.0/"
               "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5")
WEIGHTS_MD5 = "17c944bfcc0e04c6661806fb3a994a4a"
WEIGHTS_ENV = "SQUEEZENET_WEIGHTS"
WEIGHTS_FILENAME = WEIGHTS_URL.rsplit("/", 1)[1]

# fire id -> (squeeze filters, expand filters per branch, block)
FIRES = {2: (16, 64, 2), 3: (16, 64, 2), 4: (32, 128, 3), 5: (32, 128, 3),
         6: (48, 192, 4), 7: (48, 192, 4), 8: (64, 256, 5), 9: (64, 256, 5)}
POOL_AFTER = {"conv1": "block1_pool1", 3: "block2_pool3", 5: "block3_pool5"}


def min_input_side(conv_k: int = 3, conv_s: int = 2, pool_k: int = 3, pool_s: int = 2, n_pools: int = 3) -> int:
    """Smallest square input side whose feature map survives conv1 and the valid max-pools (>= 1 px)."""
    side = 1
    for _ in range(n_pools):          # invert out = (n - k) // s + 1 at its smallest n
        side = (side - 1) * pool_s + pool_k
    return (side - 1) * conv_s + conv_k


MIN_SIZE = min_input_side()           # 31


def layer_name(h5_name: str) -> str:
    """Our layer name for a published layer name: "conv1" -> "block1_conv1",
    "fire2/squeeze1x1" -> "block2_fire2_squeeze1x1"; ValueError for anything else."""
    if h5_name == "conv1":
        return "block1_conv1"
    m = re.fullmatch(r"fire(\d+)/(squeeze1x1|expand1x1|expand3x3)", h5_name)
    if m and int(m.group(1)) in FIRES:
        fire = int(m.group(1))
        return f"block{FIRES[fire][2]}_fire{fire}_{m.group(2)}"
    raise ValueError(f"'{h5_name}' is not a SqueezeNet v1.1 weighted layer "
                     f"(conv1, fire2..9/squeeze1x1|expand1x1|expand3x3)")


def build_squeezenet(input_shape, *, weights: str | Path | None = None, name: str = NAME) -> keras.Model:
    """SqueezeNet v1.1 without top: preprocessed images (caffe mode) -> fire9 features (H', W', 512).

    ``weights``: None (random init, Keras defaults: glorot-uniform kernels, zero biases), the published
    ImageNet h5 (Keras-2 layout, loaded by name with ``load_imagenet_h5``) or a Keras-3 ``.weights.h5``
    of this same model (model.load_weights).  Nothing is downloaded here (see ``imagenet_weights_path``).
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"squeezenet: input_shape must be (H, W, C), got {input_shape}")
    if min(input_shape[:2]) < MIN_SIZE:
        raise ValueError(f"squeezenet: input {input_shape[0]}x{input_shape[1]} is too small; the smallest side "
                         f"is {MIN_SIZE} px (resize the images up, e.g. to 32)")
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(64, 3, strides=2, padding="valid", name="block1_conv1")(inputs)
    x = keras.layers.ReLU(name="block1_relu_conv1")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=POOL_AFTER["conv1"])(x)
    for fire, (squeeze, expand, block) in FIRES.items():
        x = _fire(x, f"block{block}_fire{fire}", squeeze, expand)
        if fire in POOL_AFTER:
            x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=POOL_AFTER[fire])(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_weights(model, weights)
    return model


def _fire(x, prefix: str, squeeze: int, expand: int):
    x = keras.layers.Conv2D(squeeze, 1, padding="valid", name=f"{prefix}_squeeze1x1")(x)
    x = keras.layers.ReLU(name=f"{prefix}_relu_squeeze1x1")(x)
    left = keras.layers.Conv2D(expand, 1, padding="valid", name=f"{prefix}_expand1x1")(x)
    left = keras.layers.ReLU(name=f"{prefix}_relu_expand1x1")(left)
    right = keras.layers.Conv2D(expand, 3, padding="same", name=f"{prefix}_expand3x3")(x)
    right = keras.layers.ReLU(name=f"{prefix}_relu_expand3x3")(right)
    return keras.layers.Concatenate(axis=-1, name=f"{prefix}_concat")([left, right])


def load_weights(model: keras.Model, path: str | Path) -> dict | None:
    """The published ImageNet h5 (has a ``layer_names`` attribute) by name, else Keras's own loader."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SqueezeNet weights file not found")
    if _is_keras2_h5(path):
        return load_imagenet_h5(model, path)
    model.load_weights(str(path))
    return None


def _is_keras2_h5(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return "layer_names" in f.attrs
    except OSError:
        return False


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes | np.bytes_) else str(value)


def load_imagenet_h5(model: keras.Model, path: str | Path) -> dict:
    """Set the kernels and biases of ``model`` (build_squeezenet) from a Keras-2 h5 (attrs ``layer_names``,
    per layer ``weight_names`` ending in "kernel:0"/"bias:0"), matching published layer names to ours.

    Raises ValueError naming the file and the layer when an h5 layer with weights has no counterpart in
    ``model``, a shape differs, a kernel or bias is missing, or one of the model's weighted layers is left
    unloaded; the model is only changed when every check passed.  Returns {"file", "md5",
    "layers_matched", "params_loaded", "layers"}.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SqueezeNet ImageNet weights file not found")
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    staged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        group = f["model_weights"] if "model_weights" in f else f   # full-model saves nest the weights
        if "layer_names" not in group.attrs:
            raise ValueError(f"{path}: no 'layer_names' attribute; not a Keras-2 weights h5")
        for h5_layer in map(_text, group.attrs["layer_names"]):
            if h5_layer not in group:
                raise ValueError(f"{path}: layer '{h5_layer}' is listed in layer_names but has no group")
            g = group[h5_layer]
            names = [_text(n) for n in g.attrs.get("weight_names", [])]
            if not names:
                continue                                   # input / ReLU / pool / concat
            try:
                target = layer_name(h5_layer)
            except ValueError as exc:
                raise ValueError(f"{path}: h5 layer '{h5_layer}' matches no layer of '{model.name}': {exc}") from None
            if target not in ours:
                raise ValueError(f"{path}: h5 layer '{h5_layer}' -> '{target}' is not a layer of '{model.name}'")
            if target in staged:
                raise ValueError(f"{path}: h5 layer '{h5_layer}' appears twice")
            arrays = {}
            for n in names:
                kind = n.rsplit("/", 1)[-1].split(":")[0]
                if kind not in ("kernel", "bias") or kind in arrays:
                    raise ValueError(f"{path}: h5 layer '{h5_layer}': unexpected weight '{n}' "
                                     f"(expected one kernel:0 and one bias:0)")
                arrays[kind] = np.asarray(g[n], dtype="float32")
            missing = {"kernel", "bias"} - set(arrays)
            if missing:
                raise ValueError(f"{path}: h5 layer '{h5_layer}' lacks {sorted(missing)}")
            layer = ours[target]
            for kind, var in (("kernel", layer.kernel), ("bias", layer.bias)):
                if tuple(arrays[kind].shape) != tuple(var.shape):
                    raise ValueError(f"{path}: h5 layer '{h5_layer}' {kind} has shape {arrays[kind].shape}, "
                                     f"layer '{target}' expects {tuple(var.shape)}")
            staged[target] = (arrays["kernel"], arrays["bias"])
    unloaded = [n for n in ours if n not in staged]
    if unloaded:
        raise ValueError(f"{path}: no weights for layer(s) {unloaded} of '{model.name}' "
                         f"(the file holds {len(staged)} of {len(ours)} weighted layers)")
    for target, (kernel, bias) in staged.items():
        ours[target].set_weights([kernel, bias])
    params = int(sum(k.size + b.size for k, b in staged.values()))
    return {"file": str(path), "md5": file_digest(path, "md5"), "layers_matched": len(staged),
            "params_loaded": params, "layers": list(staged)}


def check_md5(path: str | Path, md5: str = WEIGHTS_MD5) -> Path:
    """``path`` if its md5 is ``md5``; ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SqueezeNet ImageNet weights file not found")
    got = file_digest(path, "md5")
    if got != md5:
        raise ValueError(f"{path}: md5 {got} differs from the published SqueezeNet v1.1 notop weights' {md5}; "
                         f"wrong or corrupt file (fetch {WEIGHTS_FILENAME} again)")
    return path


def imagenet_weights_path(local: str | Path | None = None) -> Path:
    """The ImageNet notop h5: env SQUEEZENET_WEIGHTS, else ``local``, else Keras's download of WEIGHTS_URL
    into its cache (once, md5-checked by keras.utils.get_file).  A local file's md5 is checked too."""
    path = os.environ.get(WEIGHTS_ENV) or local
    if path:
        return check_md5(path)
    try:
        return Path(keras.utils.get_file(WEIGHTS_FILENAME, WEIGHTS_URL, cache_subdir="models",
                                         file_hash=WEIGHTS_MD5))
    except Exception as exc:
        raise OSError(f"cannot download SqueezeNet ImageNet weights ({exc}); set env {WEIGHTS_ENV} to a local "
                      f"copy of {WEIGHTS_FILENAME}") from None
