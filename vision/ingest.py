"""Stages ingest_images (one per dataset) and ingest_source_images: images -> data/vision/<dataset>.npz + .json.

    python -m vision.ingest --dataset NAME       # params.yaml: vision_data
    python -m vision.ingest --source-set cifar10 # params.yaml: vision_source

Outputs hold keys x_train,y_train,x_val,y_val,x_test,y_test (uint8 NHWC,
int64 labels), every split shuffled with the seed (see vision.splits).
Env MEDMNIST_MIRROR overrides vision_data.mirror; env CIFAR10_ZIP overrides
vision_source.mirror.  Without a mirror, CIFAR-10 is the official python archive
(downloaded once into ~/.keras/datasets, md5-checked).  The .json records the
source (path, URL) and its checksum, so a changed mirror shows as a changed output.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import io, params
from vision import medmnist
from vision.readers import load_cifar10_archive, load_image_tree, load_npz
from vision.splits import finish_splits

OUT_DIR = Path("data/vision")
CIFAR10_ZIP = "../shared/data/cifar10/cifar10_jpg.zip"  # the team's JPEG mirror (Makefile default)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CACHE = Path("~/.keras/datasets")  # where keras.datasets.cifar10 caches the same file


@dataclass(frozen=True)
class VisionDataParams:
    seed: int
    source: str = "medmnist"  # or "folder:<path>": reads <path>/<dataset> (folder or .zip)
    mirror: str | None = None
    limit: int | None = None
    val_fraction: float = 0.1  # used only where the source has no val split
    test_fraction: float = 0.2  # used only where the source has no test split
    # Transitional: the list moves to grid.vision.datasets; while present it is checked
    # (unique, known) and bounds --dataset.  Delete once params.yaml no longer has it.
    datasets: tuple[str, ...] | None = None

    def validate(self) -> None:
        if self.datasets is not None:
            if not self.datasets or len(set(self.datasets)) != len(self.datasets):
                raise params.ParamsError(f"'datasets' must be non-empty and unique: {self.datasets}")
            for name in self.datasets:
                self.check_name(name, "datasets")
        if not (self.source == "medmnist" or (self.source.startswith("folder:") and self.source[7:])):
            raise params.ParamsError(f"'source' must be 'medmnist' or 'folder:<path>', got {self.source!r}")
        if self.limit is not None and self.limit < 1:
            raise params.ParamsError(f"'limit' must be null or >= 1, got {self.limit}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction
                and self.val_fraction + self.test_fraction < 1):
            raise params.ParamsError("'val_fraction'/'test_fraction' must be >= 0 and sum < 1")

    def check_name(self, name: str, what: str = "--dataset") -> None:
        if self.source == "medmnist" and name not in medmnist.CATALOG:
            raise params.ParamsError(f"'{what}': {name!r} is not one of {sorted(medmnist.CATALOG)}")


@dataclass(frozen=True)
class SourceSetParams:
    """params.yaml `vision_source` (stage ingest_source_images)."""
    limit_per_class: int | None  # images per class and split; null = all
    val_fraction: float          # of the source train split
    seed: int
    mirror: str | None = None    # local CIFAR-10 JPEG zip/folder or python .tar.gz; env CIFAR10_ZIP overrides

    def validate(self) -> None:
        if self.limit_per_class is not None and self.limit_per_class < 1:
            raise params.ParamsError(f"'limit_per_class' must be null or >= 1, got {self.limit_per_class}")
        if not 0 < self.val_fraction < 1:
            raise params.ParamsError(f"'val_fraction' must be in (0, 1), got {self.val_fraction}")


def _env_or(name: str, value):
    return os.environ.get(name) or value


def ingest_dataset(name: str, p: VisionDataParams, out_dir: Path | str = OUT_DIR) -> dict:
    """Read one dataset per ``p``, write ``<out_dir>/<name>.npz`` and ``.json``; return the json."""
    p.check_name(name)
    if p.source == "medmnist":
        mirror = _env_or("MEDMNIST_MIRROR", p.mirror)
        path = medmnist.locate(name, mirror)
        classes = list(medmnist.info(name).class_names)
        raw = load_npz(path, name, n_classes=len(classes))
        extra = {"md5_matches_official": medmnist.md5_file(path) == medmnist.info(name).md5}
        if mirror is None:
            extra["source_url"] = medmnist.URL.format(name=name)
    else:
        base = Path(p.source[len("folder:"):])
        path = base / f"{name}.zip" if (base / f"{name}.zip").is_file() else base / name
        raw, classes = load_image_tree(path)
        extra = {}
    splits = finish_splits(raw, seed=p.seed, limit=p.limit, val_fraction=p.val_fraction,
                           test_fraction=p.test_fraction, where=str(path))
    meta = write_split_set(Path(out_dir) / name, splits, classes, source=path, seed=p.seed,
                           limit=p.limit, **extra)
    return meta


def write_split_set(stem: Path, splits: dict, classes: list[str], *, source: Path, **extra) -> dict:
    """Write ``stem.npz`` (x_/y_ per split) and ``stem.json`` (counts, shape, provenance)."""
    x0 = splits["train"][0]
    meta = {
        "dataset": stem.name,
        "class_names": list(classes),
        "n_classes": len(classes),
        "channels": int(x0.shape[-1]),
        "image_size": [int(x0.shape[1]), int(x0.shape[2])],
        "n": {s: int(len(y)) for s, (_, y) in splits.items()},
        "n_per_class": {s: {c: int(k) for c, k in zip(classes, np.bincount(y, minlength=len(classes)))}
                        for s, (_, y) in splits.items()},
        "source": str(source),
        "source_sha256": source_digest(source),
        **extra,
    }
    arrays = {}
    for s, (x, y) in splits.items():
        arrays[f"x_{s}"], arrays[f"y_{s}"] = x.astype(np.uint8), y.astype(np.int64)
    remove_stale_parts(stem)
    io.save_npz(stem.with_suffix(".npz"), **arrays)
    io.write_json(stem.with_suffix(".json"), meta)
    return meta


def source_digest(source: Path | str) -> str | None:
    """sha256 of a source file; for a folder, of its sorted (relative path, file sha256) list."""
    source = Path(source)
    if source.is_file():
        return io.sha256_file(source)
    if source.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in source.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(source).as_posix()}\0{io.sha256_file(f)}\n".encode())
        return h.hexdigest()
    return None


def remove_stale_parts(stem: Path) -> list[Path]:
    """Delete temporaries a killed run left beside ``stem.npz``/``stem.json`` (pipeline.io.atomic_path names)."""
    stale = [p for suffix in (".npz", ".json")
             for p in stem.parent.glob(f".{stem.name}{suffix}.*.part*")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def cifar10_source(mirror: str | None) -> tuple[Path, dict]:
    """The mirror if given, else the official archive (downloaded once, md5-checked)."""
    if mirror:
        return Path(mirror), {"source_kind": "mirror"}
    path = medmnist.fetch(CIFAR10_URL, Path(CIFAR10_CACHE).expanduser() / "cifar-10-python.tar.gz",
                          CIFAR10_MD5)
    return path, {"source_kind": "download", "source_url": CIFAR10_URL}


def prepare_source_set(source_path: Path | str, out_dir: Path | str = OUT_DIR, *,
                       name: str = "cifar10", limit_per_class: int | None = None,
                       seed: int = 0, val_fraction: float = 0.1, **extra) -> dict:
    """Image tree/zip or CIFAR-10 python .tar.gz -> ``<out_dir>/source_<name>.npz`` + ``.json``."""
    source_path = Path(source_path)
    if source_path.name.endswith((".tar.gz", ".tgz")):
        raw, classes = load_cifar10_archive(source_path, limit_per_class=limit_per_class, seed=seed)
    else:
        raw, classes = load_image_tree(source_path, limit_per_class=limit_per_class, seed=seed)
    splits = finish_splits(raw, seed=seed, val_fraction=val_fraction, where=str(source_path))
    return write_split_set(Path(out_dir) / f"source_{name}", splits, classes, source=source_path,
                           seed=seed, limit_per_class=limit_per_class, **extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(params.PARAMS_FILE))
    ap.add_argument("--out-dir", default=str(OUT_DIR))
    ap.add_argument("--source-set", choices=["cifar10"], help="prepare a pretraining source set")
    ap.add_argument("--dataset", help="the dataset to ingest (one DVC stage each)")
    args = ap.parse_args(argv)
    if args.source_set:
        sp = params.load_section("vision_source", SourceSetParams, args.params)
        path, extra = cifar10_source(_env_or("CIFAR10_ZIP", sp.mirror))
        meta = prepare_source_set(path, args.out_dir, name=args.source_set,
                                  limit_per_class=sp.limit_per_class, seed=sp.seed,
                                  val_fraction=sp.val_fraction, **extra)
        print(f"source_{args.source_set}: {meta['n']} from {meta['source']}")
        return 0
    p = params.load_section("vision_data", VisionDataParams, args.params)
    if args.dataset is None:
        if p.datasets is None:
            raise SystemExit("vision.ingest: give --dataset NAME (or --source-set cifar10)")
        names = list(p.datasets)
    else:
        if p.datasets is not None and args.dataset not in p.datasets:
            raise SystemExit(f"--dataset {args.dataset!r} is not in vision_data.datasets {list(p.datasets)}")
        p.check_name(args.dataset)
        names = [args.dataset]
    for name in names:
        meta = ingest_dataset(name, p, args.out_dir)
        print(f"{name}: {meta['n']} {meta['image_size']}x{meta['channels']} from {meta['source']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
