"""prepare_ecg's bytes must not depend on the machine; a fresh clone must reproduce dvc.lock.

The md5 difference a fresh clone saw (411a4a61 vs b6631509) came from OpenBLAS choosing its
kernel per CPU at run time: scipy.signal.sosfilt_zi solves a 2x2 system with LAPACK, and the
SkylakeX and Haswell/Zen kernels round the last bits differently. OPENBLAS_CORETYPE forces a
kernel, so two kernels can be compared on one machine.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import signal as sps

from ecg.beats import bandpass, sosfilt_zi

REPO = Path(__file__).resolve().parents[1]
SHARED_MITDB = REPO.parent / "shared" / "data" / "mitdb"

_FILTER_SCRIPT = """
import hashlib, sys, numpy as np
from ecg.beats import bandpass
rng = np.random.default_rng(7)
sig = np.cumsum(rng.normal(size=20000)) * 0.01 + np.sin(np.arange(20000) / 50.0)
for band, order in (((0.5, 40.0), 2), ((1.0, 30.0), 3), ((0.5, 40.0), 1)):
    print(hashlib.md5(bandpass(sig, 360, band, order).tobytes()).hexdigest())
"""


@pytest.mark.parametrize("order,band", [(1, (0.5, 40.0)), (2, (0.5, 40.0)), (3, (1.0, 30.0)), (4, (5.0, 15.0))])
def test_closed_form_zi_and_filter_match_scipy(order, band):
    sos = sps.butter(order, band, btype="bandpass", fs=360, output="sos")
    zi = sosfilt_zi(sos)
    ref_zi = sps.sosfilt_zi(sos)
    # The 0.5 Hz sections are ill-conditioned: LAPACK itself varies ~1e-12 between kernels.
    np.testing.assert_allclose(zi, ref_zi, rtol=1e-9, atol=1e-10)
    rng = np.random.default_rng(0)
    sig = np.cumsum(rng.normal(size=5000)) * 0.01
    np.testing.assert_allclose(bandpass(sig, 360, band, order), sps.sosfiltfilt(sos, sig), rtol=0, atol=1e-9)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="OPENBLAS_CORETYPE names are x86 kernels")
def test_bandpass_bytes_do_not_depend_on_the_blas_kernel():
    """Same bytes with the CPU's own OpenBLAS kernel and the generic one (Prescott runs on any x86-64)."""
    outs = []
    for core in (None, "Prescott"):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if core:
            env["OPENBLAS_CORETYPE"] = core
        res = subprocess.run([sys.executable, "-c", _FILTER_SCRIPT], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        outs.append(res.stdout.split())
    assert len(outs[0]) == 3 and outs[0] == outs[1]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_fresh_clone_reproduces_dvc_lock(tmp_path):
    """Clone the committed tree, run the real ingest_ecg and prepare_ecg commands, compare with dvc.lock."""
    if not (SHARED_MITDB / "RECORDS").exists():
        pytest.skip(f"no MIT-BIH mirror at {SHARED_MITDB} (../shared absent): nothing to reproduce from offline")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: cannot make a fresh clone")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=300)
    lock_path = clone / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.exists() else None
    stage = ((lock or {}).get("stages") or {}).get("prepare_ecg")
    if not stage or not stage.get("outs"):
        pytest.skip("the committed dvc.lock has no prepare_ecg entry with outs")
    want = {o["path"]: o["md5"] for o in stage["outs"] if o["path"] in ("data/ecg/beats.npz", "data/ecg/meta.json")}
    assert set(want) == {"data/ecg/beats.npz", "data/ecg/meta.json"}, stage["outs"]
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_PARAMS", "OPENBLAS_CORETYPE")}
    env.update(ECG_MIRROR=str(SHARED_MITDB), PYTHONPATH=str(clone), TF_CPP_MIN_LOG_LEVEL="2")
    for module in ("ecg.ingest", "ecg.prepare"):  # dvc.yaml's cmds for ingest_ecg and prepare_ecg
        res = subprocess.run([sys.executable, "-m", module], cwd=clone, env=env, capture_output=True, text=True,
                             timeout=900)
        assert res.returncode == 0, f"{module} failed:\n{res.stdout}\n{res.stderr}"
    got = {p: _md5(clone / p) for p in want}
    assert got == want, (f"fresh clone of {REPO} produced {got}, dvc.lock records {want}: "
                         f"rerun prepare_ecg and commit dvc.lock, or find what made the bytes differ")
