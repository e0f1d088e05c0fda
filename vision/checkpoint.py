"""Backbone checkpoints handed from pretrain_vision to the transfer stages.

<dir>/backbone.keras is the backbone alone (no head); <dir>/backbone.json says what it is
(model, input shape, architecture kwargs), where its weights came from (source) and the
checkpoint's sha256, which the transfer stages record as provenance.
"""
from __future__ import annotations

import os
from pathlib import Path

import keras

from pipeline.io import atomic_path, read_json, sha256_file, write_json
from vision.models import build_backbone

VGG16_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                   "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
VGG16_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"  # the hash keras.applications.VGG16 checks


def save_backbone(backbone: keras.Model, out_dir: Path | str) -> str:
    """Write <out_dir>/backbone.keras; return its sha256 (the caller writes backbone.json with it)."""
    with atomic_path(Path(out_dir) / "backbone.keras", suffix=".keras") as tmp:
        backbone.save(tmp)
    return sha256_file(Path(out_dir) / "backbone.keras")


def write_info(out_dir: Path | str, info: dict) -> None:
    """backbone.json: needs model, input_shape, arch, source and the sha256 from save_backbone."""
    missing = {"model", "input_shape", "arch", "source", "sha256"} - set(info)
    if missing:
        raise ValueError(f"backbone.json needs {sorted(missing)}")
    write_json(Path(out_dir) / "backbone.json", info)


def load_backbone(ckpt_dir: Path | str) -> tuple[keras.Model, dict]:
    """The backbone rebuilt from the registry under the current dtype policy, with the saved weights.

    (A plain load_model would keep the dtype policy of the run that saved it, e.g. float32
    from a CPU pretraining, even where this run uses mixed precision.)
    """
    ckpt_dir = Path(ckpt_dir)
    info = read_json(ckpt_dir / "backbone.json")
    if sha256_file(ckpt_dir / "backbone.keras") != info["sha256"]:
        raise ValueError(f"{ckpt_dir / 'backbone.keras'}: sha256 differs from backbone.json; rerun pretrain_vision")
    saved = keras.models.load_model(ckpt_dir / "backbone.keras", compile=False)
    backbone = build_backbone(info["model"], info["input_shape"], **info["arch"])
    backbone.set_weights(saved.get_weights())
    return backbone, info


def imagenet_vgg16_weights(local: str | None = None) -> Path:
    """Local file (env VGG16_WEIGHTS, else `local`), else Keras's download into its cache (once)."""
    path = os.environ.get("VGG16_WEIGHTS") or local
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: VGG16 ImageNet weights file not found (VGG16_WEIGHTS / "
                                    f"vision_pretrain.vgg16_weights)")
        return Path(path)
    try:
        return Path(keras.utils.get_file("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", VGG16_NOTOP_URL,
                                         cache_subdir="models", file_hash=VGG16_NOTOP_MD5))
    except Exception as exc:
        raise OSError(f"cannot download VGG16 ImageNet weights ({exc}); set env VGG16_WEIGHTS to a local "
                      f"copy of {VGG16_NOTOP_URL.rsplit('/', 1)[1]}, or use weights.vgg16: source:cifar10") from None
