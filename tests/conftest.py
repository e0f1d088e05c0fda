"""Shared test fixtures.

Tests must not depend on what the working copy's params.yaml holds: `dvc exp run -S key=value`
edits it in place. A test that needs the project's real params reads a pristine copy of the
COMMITTED file (`git show HEAD:<name>`) through `project_params` / `committed_copy`, never
ROOT / "params.yaml" directly. Outside a git checkout (an unpacked source tree) the working
file is the committed one, so it is used as is.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Environment variables that point stages at local data mirrors. The Makefile exports them (CI runs
# `make test`), so a test that inherited them would read the full shared databases instead of the
# small records it wrote. Tests start without them; a test that wants a mirror sets it explicitly.
MIRROR_ENV = ("ECG_MIRROR", "NSTDB_MIRROR", "MEDMNIST_MIRROR", "CIFAR10_ZIP")


@pytest.fixture(autouse=True, scope="session")
def _no_inherited_mirrors():
    saved = {k: os.environ.pop(k) for k in MIRROR_ENV if k in os.environ}
    yield
    os.environ.update(saved)


def committed_text(name: str) -> str:
    """Text of `name` (a path relative to the repo root) as committed at HEAD.

    Falls back to the working file only when there is no git checkout or the file is not
    committed yet (a new file), so the answer is the committed state whenever one exists.
    """
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{name}"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is not None and done.returncode == 0:
        return done.stdout
    path = ROOT / name
    if not path.exists():
        raise FileNotFoundError(f"{name}: neither committed at HEAD nor in the working tree {ROOT}")
    return path.read_text()


@pytest.fixture
def committed_copy(tmp_path):
    """Factory: committed_copy("params-gpu.yaml") -> path of a fresh copy of the committed file.

    Copies land in tmp_path/"committed"/ under their own name, so tests may edit them freely
    and they never collide with a params.yaml the test writes into tmp_path itself.
    """
    folder = tmp_path / "committed"

    def copy(name: str) -> Path:
        dest = folder / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(committed_text(name))
        return dest

    return copy


@pytest.fixture
def project_params(committed_copy) -> Path:
    """Path to a pristine, editable copy of the committed params.yaml (tmp_path/committed/params.yaml)."""
    return committed_copy("params.yaml")
