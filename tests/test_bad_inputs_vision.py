"""Catalogue of bad vision inputs, driven through the real stage code (vision.ingest.main).

Every case starts from good outputs written by a good run, then breaks one input and asserts:
the stage fails (an exception in-process, a non-zero exit as a subprocess), the error names the
file or key, the previous good outputs are byte-identical, and no partial file is left.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.params import ParamsError
from vision import ingest, medmnist
from vision.readers import DataError
from tests.test_vision_ingest import cifar_arrays, fake_cifar_archive, fake_medmnist

ROOT = Path(__file__).resolve().parents[1]
DATASET = "breastmnist"


@dataclass
class Setup:
    tmp: Path
    mirror: Path      # MedMNIST mirror folder
    zip: Path         # CIFAR-10 style JPEG zip
    out: Path
    params: Path
    body: dict

    def write_params(self, **sections) -> Path:
        body = {k: dict(v) for k, v in self.body.items()}
        for name, change in sections.items():
            body[name].update(change)
        self.params.write_text(yaml.safe_dump(body))
        return self.params

    def snapshot(self) -> dict:
        return {p.name: p.read_bytes() for p in sorted(self.out.iterdir())}


def write_cifar_zip(path, n=4, size=8):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for split in ("train", "test"):
            for c, cls in enumerate(("cat", "dog")):
                for i in range(n):
                    img = Image.new("RGB", (size, size), (i * 40, c * 100, 50))
                    tmp = path.parent / "img.png"
                    img.save(tmp)
                    zf.write(tmp, f"{split}/{cls}/{i:04d}.png")
    (path.parent / "img.png").unlink()
    return path


def run_stage(s: Setup, *which: str) -> None:
    for w in which:
        args = ["--source-set", "cifar10"] if w == "source" else ["--dataset", DATASET]
        ingest.main(["--params", str(s.params), "--out-dir", str(s.out), *args])


@pytest.fixture
def setup(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    fake_medmnist(mirror / f"{DATASET}.npz")
    zpath = write_cifar_zip(tmp_path / "cifar10_jpg.zip")
    body = {"vision_data": {"seed": 3, "mirror": str(mirror)},
            "vision_source": {"mirror": str(zpath), "limit_per_class": 3, "val_fraction": 0.25, "seed": 0}}
    s = Setup(tmp_path, mirror, zpath, tmp_path / "out", tmp_path / "params.yaml", body)
    s.write_params()
    monkeypatch.delenv("MEDMNIST_MIRROR", raising=False)
    monkeypatch.delenv("CIFAR10_ZIP", raising=False)
    monkeypatch.setattr(ingest, "CIFAR10_CACHE", tmp_path / "cache")
    with pytest.warns(UserWarning):  # the fake mirror file's md5 is not the official one
        run_stage(s, "dataset", "source")
    assert sorted(s.snapshot()) == sorted([f"{DATASET}.npz", f"{DATASET}.json",
                                           "source_cifar10.npz", "source_cifar10.json"])
    return s


# --- the bad inputs: each mutates the setup and returns (stage, exception type, fragments to name)

def medmnist_empty_train(s):
    path = s.mirror / f"{DATASET}.npz"
    fake_medmnist(path, n=(0, 10, 12))
    return "dataset", DataError, [str(path), "'train'", "empty"]


def medmnist_label_out_of_range(s):
    path = s.mirror / f"{DATASET}.npz"
    fake_medmnist(path, n_classes=3)
    return "dataset", DataError, [str(path), "train_labels", "outside 0..1"]


def medmnist_not_an_npz(s):
    path = s.mirror / f"{DATASET}.npz"
    path.write_bytes(path.read_bytes()[:100])
    return "dataset", DataError, [str(path), "cannot read"]


def medmnist_mirror_missing(s):
    (s.mirror / f"{DATASET}.npz").unlink()
    return "dataset", FileNotFoundError, [str(s.mirror / f"{DATASET}.npz")]


def cifar_truncated_zip(s):
    data = s.zip.read_bytes()
    s.zip.write_bytes(data[: len(data) * 2 // 3])
    return "source", DataError, [str(s.zip), "truncated or corrupt zip"]


def cifar_member_bad_crc(s):
    member = "train/dog/0002.png"
    with zipfile.ZipFile(s.zip) as zf:
        info = zf.getinfo(member)
    raw = bytearray(s.zip.read_bytes())
    # local header: 30 bytes + name + extra, then the stored (uncompressed) data
    name_len = int.from_bytes(raw[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0xFF
    s.zip.write_bytes(bytes(raw))
    return "source", DataError, [str(s.zip), member, "corrupt"]


def cifar_not_a_zip(s):
    other = s.tmp / "cifar.bin"
    other.write_bytes(b"hello")
    s.write_params(vision_source={"mirror": str(other)})
    return "source", DataError, [str(other), "not a folder or a .zip"]


def cifar_corrupt_archive(s):
    tgz = fake_cifar_archive(s.tmp / "cifar-10-python.tar.gz", cifar_arrays())
    tgz.write_bytes(tgz.read_bytes()[:-200])
    s.write_params(vision_source={"mirror": str(tgz)})
    return "source", DataError, [str(tgz), "truncated or corrupt"]


def cifar_download_wrong_md5(s, monkeypatch):
    served = fake_cifar_archive(s.tmp / "cifar-10-python.tar.gz", cifar_arrays())
    monkeypatch.setattr(ingest, "CIFAR10_URL", served.as_uri())  # md5 stays the official one
    s.write_params(vision_source={"mirror": None})
    return "source", OSError, [served.as_uri(), "md5"]


def source_misspelled_key(s):
    body = dict(s.body["vision_source"])
    body["limit_per_clas"] = body.pop("limit_per_class")
    s.body["vision_source"] = body
    s.write_params()
    return "source", ParamsError, ["limit_per_clas", "vision_source"]


def source_section_missing(s):
    del s.body["vision_source"]
    s.write_params()
    return "source", ParamsError, ["vision_source"]


def source_val_fraction_zero(s):
    s.write_params(vision_source={"val_fraction": 0.0})
    return "source", ParamsError, ["val_fraction"]


def source_limit_zero(s):
    s.write_params(vision_source={"limit_per_class": 0})
    return "source", ParamsError, ["limit_per_class"]


def data_misspelled_key(s):
    s.write_params(vision_data={"mirorr": "x"})
    return "dataset", ParamsError, ["mirorr", "vision_data"]


def data_unknown_dataset(s):
    return "unknown", ParamsError, ["chestmnist"]


def data_carved_split_empty(s):
    folder = s.tmp / "folder" / DATASET / "train" / "a"
    folder.mkdir(parents=True)
    Image.new("L", (4, 4)).save(folder / "0.png")
    s.write_params(vision_data={"source": f"folder:{s.tmp / 'folder'}"})
    return "dataset", ValueError, [str(s.tmp / "folder" / DATASET), "'test'", "empty"]


CASES = [medmnist_empty_train, medmnist_label_out_of_range, medmnist_not_an_npz, medmnist_mirror_missing,
         cifar_truncated_zip, cifar_member_bad_crc, cifar_not_a_zip, cifar_corrupt_archive,
         cifar_download_wrong_md5, source_misspelled_key, source_section_missing, source_val_fraction_zero,
         source_limit_zero, data_misspelled_key, data_unknown_dataset, data_carved_split_empty]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_input_fails_naming_it_and_keeps_good_outputs(setup, case, monkeypatch):
    before = setup.snapshot()
    extra = {"monkeypatch": monkeypatch} if "monkeypatch" in case.__code__.co_varnames else {}
    stage, error, fragments = case(setup, **extra)
    args = {"source": ["--source-set", "cifar10"], "dataset": ["--dataset", DATASET],
            "unknown": ["--dataset", "chestmnist"]}[stage]
    with pytest.raises(error) as exc:
        ingest.main(["--params", str(setup.params), "--out-dir", str(setup.out), *args])
    for fragment in fragments:
        assert fragment in str(exc.value), (fragment, str(exc.value))
    assert setup.snapshot() == before  # same files, same bytes: nothing replaced, nothing partial
    cache = setup.tmp / "cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("case", [source_misspelled_key, cifar_truncated_zip], ids=lambda c: c.__name__)
def test_stage_cli_exits_nonzero(setup, case):
    """The same through `python -m vision.ingest`, as DVC runs it."""
    before = setup.snapshot()
    case(setup)
    env = {k: v for k, v in os.environ.items() if k not in ("CIFAR10_ZIP", "MEDMNIST_MIRROR")}
    proc = subprocess.run([sys.executable, "-m", "vision.ingest", "--params", str(setup.params),
                           "--out-dir", str(setup.out), "--source-set", "cifar10"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert ("limit_per_clas" if case is source_misspelled_key else str(setup.zip)) in proc.stderr
    assert setup.snapshot() == before


def test_stale_partial_files_are_removed_at_start(setup):
    """A kill -9 mid-write leaves pipeline.io temporaries; the next run of that stage clears them."""
    stale = [setup.out / f".{DATASET}.npz.k1ll3d.part.npz", setup.out / f".{DATASET}.json.x9.part",
             setup.out / ".source_cifar10.npz.abc.part.npz"]
    for p in stale:
        p.write_bytes(b"half")
    good = setup.snapshot()
    with pytest.warns(UserWarning):
        run_stage(setup, "dataset")
    assert not stale[0].exists() and not stale[1].exists()
    assert stale[2].exists()  # another stage's temporary: not ours to touch (it may be running)
    assert (setup.out / f"{DATASET}.npz").read_bytes() == good[f"{DATASET}.npz"]
    run_stage(setup, "source")
    assert not stale[2].exists()


def test_changed_source_shows_in_output_json(setup, monkeypatch):
    """A different mirror (env or params) changes the json DVC tracks, though the npz may not change."""
    meta_before = (setup.out / f"{DATASET}.json").read_bytes()
    npz_before = (setup.out / f"{DATASET}.npz").read_bytes()
    other = setup.tmp / "mirror2"
    shutil.copytree(setup.mirror, other)
    monkeypatch.setenv("MEDMNIST_MIRROR", str(other))
    with pytest.warns(UserWarning):
        run_stage(setup, "dataset")
    assert (setup.out / f"{DATASET}.npz").read_bytes() == npz_before
    assert (setup.out / f"{DATASET}.json").read_bytes() != meta_before
    assert str(other) in (setup.out / f"{DATASET}.json").read_text()
    # same path, different bytes: the recorded checksum changes
    source_before = (setup.out / "source_cifar10.json").read_text()
    write_cifar_zip(setup.zip, n=5)
    run_stage(setup, "source")
    after = (setup.out / "source_cifar10.json").read_text()
    assert after != source_before and medmnist.md5_file(setup.zip)  # readable
    import json
    assert json.loads(after)["source_sha256"] == ingest.source_digest(setup.zip)
    assert json.loads(after)["source_sha256"] != json.loads(source_before)["source_sha256"]
