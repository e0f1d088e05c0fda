"""Backbone checkpoints handed from pretrain_vision to the transfer stages.

<dir>/backbone.keras is the backbone alone (no head); <dir>/backbone.json says what it is
(model, input shape, architecture kwargs), where its weights came from (source) and the
checkpoint's sha256, which the transfer stages record as provenance.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import keras

from pipeline.io import atomic_path, read_json, sha256_file, write_json
from vision.models import BACKBONES, build_backbone

VGG16_NOTOP_URL = BACKBONES["vgg16"].imagenet.url
VGG16_NOTOP_MD5 = BACKBONES["vgg16"].imagenet.md5  # the hash keras.applications.VGG16 checks


def save_model(model: keras.Model, path: Path | str) -> str:
    """Write `model` to the .keras file `path` atomically and byte-reproducibly; return its sha256.

    Keras stamps the save time into the archive (metadata.json's date_saved and the weights entry's
    zip timestamp); everything else it writes is a function of the model. Both stamps are set to a
    fixed value, so saving the same weights again gives the same bytes: a stage that restores its fit
    from a checkpoint rewrites an identical file, and the stages downstream (whose resume fingerprints
    hold this hash) stay valid instead of retraining."""
    path = Path(path)
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        _normalise_archive(Path(tmp))
    return sha256_file(path)


FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _normalise_archive(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                if "date_saved" in meta:
                    meta["date_saved"] = "1980-01-01@00:00:00"
                data = json.dumps(meta).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_TIME)
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            z.writestr(fixed, data)


def save_backbone(backbone: keras.Model, out_dir: Path | str) -> str:
    """Write <out_dir>/backbone.keras (byte-reproducibly, `save_model`); return its sha256 (the caller
    writes backbone.json with it)."""
    return save_model(backbone, Path(out_dir) / "backbone.keras")


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


def imagenet_weights(model: str, local: str | None = None) -> Path:
    """ImageNet weights of backbone ``model`` (BACKBONES[model].imagenet): the local file named by its
    env var (e.g. VGG16_WEIGHTS), else `local`, else Keras's download into its cache (once)."""
    spec = BACKBONES[model]
    if spec.imagenet is None:
        raise ValueError(f"{model}: no ImageNet weights; backbones with them: "
                         f"{[s.name for s in BACKBONES.specs() if s.imagenet]}")
    src = spec.imagenet
    path = os.environ.get(src.env) or local
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: {model.upper()} ImageNet weights file not found ({src.env} / "
                                    f"vision_pretrain.{model}.weights_file)")
        return Path(path)
    filename = src.url.rsplit("/", 1)[1]
    try:
        return Path(keras.utils.get_file(filename, src.url, cache_subdir="models", file_hash=src.md5))
    except Exception as exc:
        raise OSError(f"cannot download {model.upper()} ImageNet weights ({exc}); set env {src.env} to a local "
                      f"copy of {filename}, or use weights.{model}: source:cifar10") from None


def imagenet_vgg16_weights(local: str | None = None) -> Path:
    """Local file (env VGG16_WEIGHTS, else `local`), else Keras's download into its cache (once)."""
    return imagenet_weights("vgg16", local)
