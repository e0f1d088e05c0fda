"""ingest_nstdb (ecg.ingest_noise) offline: fake mirrors and a fake PhysioNet, SHA-256 verification."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from ecg import ingest, ingest_noise

FILES = {"bw.hea": b"bw 2 360 650000\n", "bw.dat": b"\x01\x02" * 50, "ma.hea": b"ma 2 360 650000\n",
         "ma.dat": b"\x03\x04" * 50, "em.hea": b"em 2 360 650000\n", "em.dat": b"\x05" * 10}


def sums_text(files) -> str:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items())


def make_mirror(folder: Path, files=FILES, sums: str | None = "sums") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if sums == "sums":
        (folder / "SHA256SUMS.txt").write_text(sums_text(FILES))
    elif sums == "provenance":  # the shape of ../shared/data/nstdb/PROVENANCE.txt: prose around hash lines
        (folder / "PROVENANCE.txt").write_text(
            "MIT-BIH Noise Stress Test Database (PhysioNet nstdb), noise records only.\n  bw  baseline wander\n"
            "sha256:\n" + "".join(f"  {line}\n" for line in sums_text(FILES).splitlines()) + "Use: add noise.\n")
    return folder


def params(tmp_path: Path, **over) -> Path:
    section = {"noises": ["bw", "ma"], "snr_db": [24, 0], "source": "nstdb", "mirror": None, "workers": 0, **over}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"ecg_robustness": section}))
    return path


@pytest.fixture(autouse=True)
def no_env_mirror(monkeypatch):
    monkeypatch.delenv("NSTDB_MIRROR", raising=False)


def test_mirror_with_sha256sums(tmp_path, capsys):
    mirror = make_mirror(tmp_path / "mirror")
    out = tmp_path / "raw" / "nstdb"
    assert ingest_noise.main(["--params", str(params(tmp_path, mirror=str(mirror))), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS.txt", "SOURCE.json", "bw.dat", "bw.hea", "ma.dat",
                                                     "ma.hea"]
    for name in ("bw.dat", "ma.hea"):
        assert (out / name).read_bytes() == FILES[name]
    src = json.loads((out / "SOURCE.json").read_text())
    assert src["source"] == str(mirror) and src["checksum_list"].endswith("SHA256SUMS.txt") and src["noises"] == ["bw", "ma"]
    assert "4 files fetched" in capsys.readouterr().out
    assert ingest_noise.main(["--params", str(params(tmp_path, mirror=str(mirror))), "--out", str(out)]) == 0
    assert "0 files fetched, 4 already valid" in capsys.readouterr().out


def test_env_mirror_overrides_and_provenance_hashes_verify(tmp_path, monkeypatch):
    mirror = make_mirror(tmp_path / "shared" / "nstdb", sums="provenance")
    monkeypatch.setenv("NSTDB_MIRROR", str(mirror))
    out = tmp_path / "out"
    assert ingest_noise.main(["--params", str(params(tmp_path, mirror="/nowhere")), "--out", str(out)]) == 0
    assert json.loads((out / "SOURCE.json").read_text())["checksum_list"].endswith("PROVENANCE.txt")
    assert (out / "SHA256SUMS.txt").read_text() == "".join(
        f"{hashlib.sha256(FILES[n]).hexdigest()}  {n}\n" for n in sorted(["bw.hea", "bw.dat", "ma.hea", "ma.dat"]))


def test_corrupt_mirror_file_is_named_and_not_kept(tmp_path, capsys):
    mirror = make_mirror(tmp_path / "mirror")
    (mirror / "ma.dat").write_bytes(b"tampered")
    out = tmp_path / "out"
    assert ingest_noise.main(["--params", str(params(tmp_path, mirror=str(mirror))), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ma.dat: SHA256 mismatch" in err
    assert not (out / "ma.dat").exists() and not (out / "SOURCE.json").exists()


def test_mirror_without_any_checksum_list_is_refused(tmp_path, capsys):
    mirror = make_mirror(tmp_path / "mirror", sums=None)
    assert ingest_noise.main(["--params", str(params(tmp_path, mirror=str(mirror))), "--out", str(tmp_path / "o")]) == 2
    assert "SHA256SUMS.txt: checksum list missing" in capsys.readouterr().err


def test_physionet_download_verified_with_ingest_functions(tmp_path, monkeypatch):
    """No network: ecg.ingest.PhysioNetSource._download is faked; the list and the checks are the real ones."""
    served = {**FILES, "SHA256SUMS.txt": sums_text(FILES).encode()}
    calls = []

    def fake_download(self, name, folder):
        calls.append((self.database, name))
        if name not in served:
            raise ingest.IngestError(f"{self.where(name)}: download failed: HTTP 404")
        (folder / name).write_bytes(served[name])
        return folder / name

    monkeypatch.setattr(ingest.PhysioNetSource, "_download", fake_download)
    out = tmp_path / "out"
    assert ingest_noise.main(["--params", str(params(tmp_path, noises=["ma"])), "--out", str(out)]) == 0
    assert ("nstdb", "SHA256SUMS.txt") in calls and ("nstdb", "ma.dat") in calls
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS.txt", "SOURCE.json", "ma.dat", "ma.hea"]
    served["ma.dat"] = b"corrupt"
    (out / "ma.dat").unlink()
    assert ingest_noise.main(["--params", str(params(tmp_path, noises=["ma"])), "--out", str(out)]) == 2
    assert not (out / "ma.dat").exists()


def test_noises_no_longer_wanted_are_removed(tmp_path):
    mirror = make_mirror(tmp_path / "mirror")
    out = tmp_path / "out"
    assert ingest_noise.main(["--params", str(params(tmp_path, mirror=str(mirror))), "--out", str(out)]) == 0
    assert ingest_noise.main(["--params", str(params(tmp_path, mirror=str(mirror), noises=["bw"])), "--out",
                              str(out)]) == 0
    assert not (out / "ma.dat").exists() and (out / "bw.dat").exists()


@pytest.mark.parametrize("over, match", [({"noise": ["bw"]}, r"unknown key\(s\) \['noise'\] in 'ecg_robustness'"),
                                         ({"noises": ["xx"]}, "noises must name NSTDB noise records")])
def test_bad_params_are_named(tmp_path, capsys, over, match):
    import re
    assert ingest_noise.main(["--params", str(params(tmp_path, **over)), "--out", str(tmp_path / "o")]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()
