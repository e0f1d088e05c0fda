"""Read image datasets into validated uint8 NHWC arrays.

Two layouts are understood:

* MedMNIST-style ``.npz`` files (``load_npz``): keys ``<split>_images`` and
  ``<split>_labels``.  Images may be uint8, any integer type within 0..255,
  or float: float images with max <= 1 are taken as 0..1 and scaled by 255,
  float images with max <= 255 as 0..255; both are rounded to uint8.
* Image-folder trees ``<split>/<class>/*.png|jpg`` (or ``<class>/*`` -> split
  "all"), as a folder or inside a ``.zip`` read in place (``load_image_tree``).
* The official CIFAR-10 python archive ``cifar-10-python.tar.gz`` (pickled
  batches; ``load_cifar10_archive``), presented as the same ``<split>/<class>/NNNN``
  tree so that ``limit_per_class`` picks the same subset as for the JPEG zip.

Errors are ``DataError`` (a ValueError) and always name the file.
"""
from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class DataError(ValueError):
    """Malformed input data; the message names the file (and key)."""


def load_npz(path, dataset: str | None = None, *, n_classes: int | None = None,
             splits: Sequence[str] = SPLITS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return {split: (images uint8 NHWC, labels int64 1-D)} from a MedMNIST-style npz.

    Labels must lie in 0..n_classes-1; without ``n_classes`` it is inferred as
    max(train labels)+1 (so val/test may not hold a class train lacks).
    ``dataset`` only labels error messages.
    """
    path = Path(path)
    where = f"{path}" + (f" ({dataset})" if dataset else "")
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{where}: cannot read as .npz: {exc}") from None
    out = {}
    for split in splits:
        for kind in ("images", "labels"):
            if f"{split}_{kind}" not in raw:
                raise DataError(f"{where}: missing key '{split}_{kind}' (keys: {sorted(raw)})")
        images = _as_uint8_nhwc(raw[f"{split}_images"], f"{where}: key '{split}_images'")
        labels = _as_labels(raw[f"{split}_labels"], f"{where}: key '{split}_labels'")
        if len(labels) != len(images):
            raise DataError(f"{where}: key '{split}_labels' has {len(labels)} rows "
                            f"but '{split}_images' has {len(images)}")
        if len(labels) == 0:
            raise DataError(f"{where}: split '{split}' is empty (key '{split}_images' has 0 rows)")
        out[split] = (images, labels)
    if n_classes is None:
        first = out[splits[0]][1]
        n_classes = int(first.max()) + 1 if len(first) else 0
    for split, (_, labels) in out.items():
        bad = labels[(labels < 0) | (labels >= n_classes)]
        if len(bad):
            raise DataError(f"{where}: key '{split}_labels' has label {int(bad[0])} outside "
                            f"0..{n_classes - 1} ({len(bad)} rows)")
    return out


def _as_uint8_nhwc(images: np.ndarray, what: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{what}: expected shape (N,H,W) or (N,H,W,1|3), got {images.shape}")
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(f"{what}: integer pixels outside 0..255")
        return images.astype(np.uint8)
    if images.dtype.kind == "f":
        if images.size and not np.isfinite(images).all():
            raise DataError(f"{what}: non-finite pixel values")
        lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"{what}: float pixels in [{lo}, {hi}], expected [0,1] or [0,255]")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.rint(images * scale).astype(np.uint8)
    raise DataError(f"{what}: unsupported pixel dtype {images.dtype}")


def _as_labels(labels: np.ndarray, what: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{what}: expected shape (n,) or (n,1), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{what}: labels must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def shuffle_split(images: np.ndarray, labels: np.ndarray, seed) -> tuple[np.ndarray, np.ndarray]:
    """Return rows permuted by ``np.random.default_rng(seed)`` (seed: int or ints)."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order], labels[order]


def load_image_tree(root_or_zip, *, limit_per_class: int | None = None, seed: int = 0
                    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Return ({split: (images uint8 NHWC, labels int64)}, sorted class names).

    All images must share one size.  Grayscale-only trees give 1 channel;
    otherwise everything is RGB.  ``limit_per_class`` keeps a seeded random
    subset of at most that many files per class and split (kept in name order).
    A truncated or corrupt zip, or a member failing its CRC, is a ``DataError``
    naming the zip (and the member).
    """
    root = Path(root_or_zip)
    if root.is_dir():
        names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        return _build(root, [n for n in names if _is_image(n)],
                      lambda n: _decode(root, n, (root / n).read_bytes()), limit_per_class, seed)
    if not root.exists():
        raise FileNotFoundError(f"{root}: not found (expected an image folder or a .zip file)")
    if not zipfile.is_zipfile(root):
        if root.suffix.lower() == ".zip":
            raise DataError(f"{root}: truncated or corrupt zip file (no valid zip directory); "
                            f"fetch it again")
        raise DataError(f"{root}: not a folder or a .zip file")
    try:
        zf = zipfile.ZipFile(root)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{root}: truncated or corrupt zip file: {exc}") from None
    with zf:
        names = [n for n in zf.namelist() if _is_image(n)]
        return _build(root, names, lambda n: _decode(root, n, _read_member(root, zf, n)),
                      limit_per_class, seed)


def _read_member(root: Path, zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{root}: corrupt zip member {name}: {exc}; fetch the zip again") from None


CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def load_cifar10_archive(path, *, limit_per_class: int | None = None, seed: int = 0
                         ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Like ``load_image_tree`` for the official ``cifar-10-python.tar.gz``.

    Images are numbered per class in batch order (``train/<class>/0000`` ...),
    as in the JPEG mirror, and ``limit_per_class`` selects by those names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CIFAR-10 archive not found")
    arrays: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(path, "r:gz") as tf:
            meta = _unpickle(path, tf, "batches.meta")
            label_names = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[b"label_names"]]
            for split, batches in CIFAR10_BATCHES.items():
                counts = [0] * len(label_names)
                for batch in batches:
                    d = _unpickle(path, tf, batch)
                    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                    y = np.asarray(d[b"labels"], dtype=np.int64)
                    if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() >= len(label_names))):
                        raise DataError(f"{path}: member {CIFAR10_DIR}/{batch}: {len(x)} images, "
                                        f"{len(y)} labels, labels must lie in 0..{len(label_names) - 1}")
                    for img, label in zip(x, y):
                        arrays[f"{split}/{label_names[label]}/{counts[label]:04d}"] = img
                        counts[label] += 1
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{path}: truncated or corrupt CIFAR-10 archive: {exc}") from None
    return _build(path, list(arrays), arrays.__getitem__, limit_per_class, seed)


def _unpickle(path: Path, tf: tarfile.TarFile, member: str) -> dict:
    name = f"{CIFAR10_DIR}/{member}"
    try:
        fh = tf.extractfile(name)
    except KeyError:
        raise DataError(f"{path}: member {name} missing; not the CIFAR-10 python archive") from None
    try:
        with fh:
            data = pickle.load(fh, encoding="bytes")  # the archive's md5 was checked before
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: member {name} is not a readable pickle: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: member {name} holds {type(data).__name__}, expected a dict")
    return data


def _is_image(name: str) -> bool:
    parts = PurePosixPath(name).parts
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and name.lower().endswith(IMAGE_SUFFIXES)


def _build(root: Path, names: list[str], load, limit, seed):
    """``load(name)`` -> uint8 HxWxC array; names are ``<split>/<class>/<file>`` or ``<class>/<file>``."""
    if not names:
        raise DataError(f"{root}: no image files ({'/'.join(IMAGE_SUFFIXES)}) found")
    depths = {len(PurePosixPath(n).parts) for n in names}
    if depths not in ({2}, {3}):
        raise DataError(f"{root}: expected <split>/<class>/<image> or <class>/<image>, "
                        f"found paths with {sorted(depths)} parts, e.g. {names[0]}")
    groups: dict[tuple[str, str], list[str]] = {}
    for n in sorted(names):
        parts = PurePosixPath(n).parts
        key = (parts[0], parts[1]) if len(parts) == 3 else ("all", parts[0])
        groups.setdefault(key, []).append(n)
    classes = sorted({c for _, c in groups})
    rng = np.random.default_rng(seed)
    per_split: dict[str, list[tuple[str, int]]] = {}
    for (split, cls), files in sorted(groups.items()):
        if limit is not None and len(files) > limit:
            files = [files[i] for i in sorted(rng.choice(len(files), limit, replace=False))]
        per_split.setdefault(split, []).extend((f, classes.index(cls)) for f in files)
    arrays = {split: [load(f) for f, _ in items] for split, items in per_split.items()}
    _check_sizes(root, per_split, arrays)
    rgb = any(a.shape[-1] == 3 for imgs in arrays.values() for a in imgs)
    out = {}
    for split, imgs in arrays.items():
        if rgb:
            imgs = [np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in imgs]
        labels = np.array([c for _, c in per_split[split]], dtype=np.int64)
        out[split] = (np.stack(imgs), labels)
    return out, classes


def _decode(root: Path, name: str, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("L") if img.mode in ("1", "L", "I;16", "I", "F") else img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError(f"{root}: cannot read image {name}: {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _check_sizes(root: Path, per_split, arrays) -> None:
    first = None
    for split, imgs in arrays.items():
        for (name, _), a in zip(per_split[split], imgs):
            if first is None:
                first = (name, a.shape[:2])
            elif a.shape[:2] != first[1]:
                raise DataError(f"{root}: image {name} is {a.shape[1]}x{a.shape[0]} but "
                                f"{first[0]} is {first[1][1]}x{first[1][0]}; all must match")
