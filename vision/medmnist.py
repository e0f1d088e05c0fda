"""Locate a MedMNIST (v2, 28x28) .npz: a local mirror folder or the official download.

Official files are verified by md5: a downloaded file with the wrong md5 is an
error; a mirror file with the wrong md5 only warns (naming the file), because
a mirror may hold a faithful re-packing (see the mirror's PROVENANCE.txt).
"""
from __future__ import annotations

import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import file_digest

URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"
DEFAULT_CACHE = Path("~/.medmnist")  # the medmnist package's own default root


@dataclass(frozen=True)
class Info:
    md5: str
    class_names: tuple[str, ...]


CATALOG = {
    "pneumoniamnist": Info("28209eda62fecd6e6a2d98b1501bb15f", ("normal", "pneumonia")),
    "breastmnist": Info("750601b1f35ba3300ea97c75c52ff8f6", ("malignant", "normal, benign")),
    # RetinaMNIST labels are ordinal diabetic-retinopathy grades 0..4.
    "retinamnist": Info("bd4c0672f1bba3e3a89f0e4e876791e4", ("0", "1", "2", "3", "4")),
}


def info(name: str) -> Info:
    if name not in CATALOG:
        raise ValueError(f"unknown MedMNIST dataset '{name}'; known: {sorted(CATALOG)}")
    return CATALOG[name]


def md5_file(path: Path | str) -> str:
    return file_digest(path, "md5")


def from_mirror(name: str, mirror: Path | str) -> Path:
    """Return ``mirror/<name>.npz``; warn (naming it) if its md5 is not the official one."""
    path = Path(mirror) / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MedMNIST mirror file not found")
    actual = md5_file(path)
    if actual != info(name).md5:
        warnings.warn(f"{path}: md5 {actual} differs from the official MedMNIST md5 "
                      f"{info(name).md5}; using it anyway (check the mirror's provenance)",
                      stacklevel=2)
    return path


def download(name: str, cache_dir: Path | str | None = None, *, url: str | None = None,
             timeout: float = 60.0) -> Path:
    """Return ``cache_dir/<name>.npz`` (default DEFAULT_CACHE), downloading it from ``url``
    (default URL) if absent or corrupt (see ``fetch``)."""
    cache_dir = DEFAULT_CACHE if cache_dir is None else cache_dir
    return fetch((url or URL).format(name=name), Path(cache_dir).expanduser() / f"{name}.npz",
                 info(name).md5, timeout=timeout)


def fetch(source: str, path: Path | str, md5: str, *, timeout: float = 60.0) -> Path:
    """Return ``path`` holding ``source`` (any urllib URL, file:// included) with the given md5.

    A file already there with that md5 is reused.  The download goes to a
    ``.part`` file renamed only after the md5 matches; a stale ``.part`` from a
    killed run is overwritten.
    """
    path = Path(path)
    if path.is_file() and md5_file(path) == md5:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(source, timeout=timeout) as resp, open(part, "wb") as fh:
            while block := resp.read(1 << 20):
                fh.write(block)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise OSError(f"cannot download {source} to {path}: {exc}") from None
    actual = md5_file(part)
    if actual != md5:
        part.unlink(missing_ok=True)
        raise OSError(f"{source}: downloaded md5 {actual} != official {md5}; not saved")
    os.replace(part, path)
    return path


def locate(name: str, mirror: Path | str | None, cache_dir: Path | str | None = None) -> Path:
    """Mirror file if a mirror is given, else the verified official download."""
    return from_mirror(name, mirror) if mirror is not None else download(name, cache_dir)
