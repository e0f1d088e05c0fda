import hashlib
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.params import ParamsError, from_dict
from vision import ingest, medmnist
from vision.splits import finish_splits


def fake_medmnist(path, n=(40, 10, 12), n_classes=2, channels=None):
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        shape = (k, 4, 4) + ((channels,) if channels else ())
        # pixel value = row index, so order and pairing can be checked
        arrays[f"{split}_images"] = np.broadcast_to(
            np.arange(k, dtype=np.uint8).reshape((k,) + (1,) * (len(shape) - 1)), shape).copy()
        arrays[f"{split}_labels"] = (np.arange(k) % n_classes).reshape(k, 1)
    np.savez(path, **arrays)
    return path


def write_params(tmp_path, **section):
    import yaml
    body = {"vision_data": {"datasets": ["breastmnist"], "seed": 7, **section}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(body))
    return tmp_path / "params.yaml"


def test_ingest_from_mirror_writes_npz_and_json(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDMNIST_MIRROR", raising=False)
    src = fake_medmnist(tmp_path / "breastmnist.npz")
    params = write_params(tmp_path, mirror=str(tmp_path))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="breastmnist.npz"):
        assert ingest.main(["--params", str(params), "--out-dir", str(out)]) == 0
    data = np.load(out / "breastmnist.npz")
    assert sorted(data.files) == sorted(f"{a}_{s}" for a in "xy" for s in ("train", "val", "test"))
    assert data["x_train"].shape == (40, 4, 4, 1) and data["x_train"].dtype == np.uint8
    assert data["y_train"].dtype == np.int64
    x, y = data["x_train"][:, 0, 0, 0], data["y_train"]
    assert not np.array_equal(x, np.arange(40))  # shuffled
    assert sorted(x.tolist()) == list(range(40)) and (y == x % 2).all()  # permutation, pairs kept
    meta = json.loads((out / "breastmnist.json").read_text())
    assert meta["class_names"] == ["malignant", "normal, benign"]
    assert meta["n"] == {"train": 40, "val": 10, "test": 12}
    assert meta["n_per_class"]["test"] == {"malignant": 6, "normal, benign": 6}
    assert meta["channels"] == 1 and meta["image_size"] == [4, 4]
    assert meta["source"] == str(src) and meta["md5_matches_official"] is False
    assert len(meta["source_sha256"]) == 64


def test_env_mirror_overrides_params_and_limit(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    fake_medmnist(mirror / "breastmnist.npz")
    monkeypatch.setenv("MEDMNIST_MIRROR", str(mirror))
    params = write_params(tmp_path, mirror=str(tmp_path / "does-not-exist"), limit=5)
    with pytest.warns(UserWarning):
        ingest.main(["--params", str(params), "--out-dir", str(tmp_path / "out")])
    meta = json.loads((tmp_path / "out" / "breastmnist.json").read_text())
    assert meta["n"] == {"train": 5, "val": 5, "test": 5} and meta["limit"] == 5


@pytest.mark.parametrize("raw, fragment", [
    ({"datasets": ["breastmnist"], "seed": 1, "mirorr": None}, "mirorr"),
    ({"datasets": ["breastmnist"]}, "vision_data.seed"),
    ({"datasets": ["chestmnist"], "seed": 1}, "chestmnist"),
    ({"datasets": ["x"], "seed": 1, "source": "kaggle"}, "source"),
    ({"datasets": ["breastmnist"], "seed": 1, "limit": 0}, "limit"),
])
def test_params_validation(raw, fragment):
    with pytest.raises(ParamsError, match=fragment):
        from_dict(ingest.VisionDataParams, raw, "vision_data")


def test_download_checks_md5_and_cleans_part(tmp_path, monkeypatch):
    served = fake_medmnist(tmp_path / "retinamnist.npz", n_classes=5)
    url = served.parent.as_uri() + "/{name}.npz"  # file:// - no network involved
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="md5"):
        medmnist.download("retinamnist", cache, url=url)
    assert list(cache.iterdir()) == []
    info = medmnist.Info(medmnist.md5_file(served), medmnist.info("retinamnist").class_names)
    monkeypatch.setitem(medmnist.CATALOG, "retinamnist", info)
    path = medmnist.download("retinamnist", cache, url=url)
    assert path.read_bytes() == served.read_bytes() and [p.name for p in cache.iterdir()] == [path.name]


def test_folder_source_carves_missing_splits(tmp_path):
    for cls, n in (("a", 6), ("b", 4)):
        (tmp_path / "src" / "tiny" / "train" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (5, 5), (i, 0, 0)).save(tmp_path / "src" / "tiny" / "train" / cls / f"{i}.png")
    p = from_dict(ingest.VisionDataParams, {"datasets": ["tiny"], "seed": 0,
                  "source": f"folder:{tmp_path / 'src'}", "val_fraction": 0.2,
                  "test_fraction": 0.3}, "vision_data")
    meta = ingest.ingest_dataset("tiny", p, tmp_path / "out")
    assert meta["n"] == {"train": 5, "val": 2, "test": 3} and meta["class_names"] == ["a", "b"]
    assert meta["channels"] == 3


def test_finish_splits_aliases_and_errors():
    x, y = np.zeros((10, 2, 2, 1), np.uint8), np.arange(10)
    out = finish_splits({"train": (x, y), "valid": (x[:2], y[:2]), "test": (x[:3], y[:3])}, seed=0)
    assert [len(out[s][1]) for s in ("train", "val", "test")] == [10, 2, 3]
    with pytest.raises(ValueError, match="holdout"):
        finish_splits({"train": (x, y), "holdout": (x, y)}, seed=0)


def test_source_set_cli_reads_zip(tmp_path, monkeypatch):
    zpath = tmp_path / "mini.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for split, n in (("train", 10), ("test", 2)):
            for cls in ("cat", "dog"):
                for i in range(n):
                    buf = tmp_path / "img.jpg"
                    Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(buf)
                    zf.write(buf, f"{split}/{cls}/{i:04d}.jpg")
    monkeypatch.setenv("CIFAR10_ZIP", str(zpath))
    import yaml
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"vision_source": {"mirror": str(tmp_path / "ignored.zip"), "limit_per_class": 5,
                           "val_fraction": 0.1, "seed": 2}}))
    ingest.main(["--params", str(tmp_path / "params.yaml"), "--out-dir", str(tmp_path / "out"),
                 "--source-set", "cifar10"])
    meta = json.loads((tmp_path / "out" / "source_cifar10.json").read_text())
    assert meta["n"] == {"train": 9, "val": 1, "test": 4} and meta["class_names"] == ["cat", "dog"]
    assert np.load(tmp_path / "out" / "source_cifar10.npz")["x_train"].shape == (9, 8, 8, 3)
    assert meta["source"] == str(zpath) and meta["source_kind"] == "mirror"  # env beats params
    assert meta["source_sha256"] == hashlib.sha256(zpath.read_bytes()).hexdigest()


CIFAR_CLASSES = ("cat", "dog", "ant")  # deliberately not sorted: labels follow sorted names


def cifar_arrays(n_train_batch=4, n_test=5):
    """{member: (images NHWC uint8, labels)}; pixel (0,0) R = running index, G = label."""
    out, k = {}, 0
    for member, n in [(f"data_batch_{i}", n_train_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        x = np.zeros((n, 32, 32, 3), np.uint8)
        y = np.arange(k, k + n) % len(CIFAR_CLASSES)
        x[:, 0, 0, 0] = np.arange(k, k + n)
        x[:, 0, 0, 1] = y
        x[:, 5, 7, 2] = 200  # an asymmetric pixel: catches a wrong transpose
        out[member] = (x, y)
        k += n
    return out


def fake_cifar_archive(path, arrays=None):
    """A tiny cifar-10-python.tar.gz with the official layout (pickled dicts, bytes keys, CHW rows)."""
    import io as _io
    import pickle
    import tarfile
    arrays = arrays or cifar_arrays()
    with tarfile.open(path, "w:gz") as tf:
        def add(name, obj):
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, _io.BytesIO(blob))
        add("batches.meta", {b"label_names": [c.encode() for c in CIFAR_CLASSES]})
        for member, (x, y) in arrays.items():
            add(member, {b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"labels": list(map(int, y)),
                         b"batch_label": member.encode()})
    return path


def cifar_as_png_zip(path, arrays):
    """The same images as a train/<class>/NNNN.png zip (lossless), numbered per class in batch order."""
    import io as _io
    counts = {}
    with zipfile.ZipFile(path, "w") as zf:
        for member, (x, y) in arrays.items():
            split = "test" if member == "test_batch" else "train"
            for img, label in zip(x, y):
                cls = CIFAR_CLASSES[label]
                i = counts.setdefault((split, cls), 0)
                counts[(split, cls)] += 1
                buf = _io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                zf.writestr(f"{split}/{cls}/{i:04d}.png", buf.getvalue())
    return path


def write_source_params(tmp_path, **section):
    import yaml
    body = {"vision_source": {"mirror": None, "limit_per_class": 3, "val_fraction": 0.2, "seed": 1, **section}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_cifar_default_downloads_official_archive(tmp_path, monkeypatch):
    """mirror null, no CIFAR10_ZIP: the md5-checked download path (served from a file:// URL)."""
    monkeypatch.delenv("CIFAR10_ZIP", raising=False)
    (tmp_path / "served").mkdir()
    served = fake_cifar_archive(tmp_path / "served" / "cifar-10-python.tar.gz")
    monkeypatch.setattr(ingest, "CIFAR10_URL", served.as_uri())
    monkeypatch.setattr(ingest, "CIFAR10_MD5", medmnist.md5_file(served))
    monkeypatch.setattr(ingest, "CIFAR10_CACHE", tmp_path / "cache")
    out = tmp_path / "out"
    assert ingest.main(["--params", str(write_source_params(tmp_path)), "--out-dir", str(out),
                        "--source-set", "cifar10"]) == 0
    cached = tmp_path / "cache" / "cifar-10-python.tar.gz"
    assert cached.read_bytes() == served.read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]  # no .part left
    meta = json.loads((out / "source_cifar10.json").read_text())
    assert meta["class_names"] == ["ant", "cat", "dog"]
    assert meta["source_kind"] == "download" and meta["source_url"] == served.as_uri()
    assert meta["source"] == str(cached) and meta["source_sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    data = np.load(out / "source_cifar10.npz")
    # 20 train images, 3 classes -> <=3 per class kept = 9; val 0.2 of 9 -> 2; test: 5 images, <=3 per class
    assert (len(data["y_train"]), len(data["y_val"]), len(data["y_test"])) == (7, 2, 5)
    x, y = data["x_train"], data["y_train"]
    assert x.shape[1:] == (32, 32, 3) and (x[:, 5, 7, 2] == 200).all() and (x[:, 7, 5, 2] == 0).all()
    names = np.array(CIFAR_CLASSES)[x[:, 0, 0, 1]]  # the label the archive gave each image ...
    assert (names == np.array(meta["class_names"])[y]).all()  # ... is the one written
    # a second run reuses the cached, verified file (the URL is gone)
    served.unlink()
    assert ingest.main(["--params", str(write_source_params(tmp_path)), "--out-dir", str(tmp_path / "o2"),
                        "--source-set", "cifar10"]) == 0
    assert (tmp_path / "o2" / "source_cifar10.npz").read_bytes() == (out / "source_cifar10.npz").read_bytes()


def test_cifar_archive_and_image_zip_give_the_same_subset(tmp_path, monkeypatch):
    """The official archive and a lossless image zip of it select and order the same images."""
    arrays = cifar_arrays()
    tgz = fake_cifar_archive(tmp_path / "cifar-10-python.tar.gz", arrays)
    zpath = cifar_as_png_zip(tmp_path / "cifar_png.zip", arrays)
    outs = {}
    for label, src in (("tgz", tgz), ("zip", zpath)):
        monkeypatch.setenv("CIFAR10_ZIP", str(src))
        ingest.main(["--params", str(write_source_params(tmp_path)), "--out-dir", str(tmp_path / label),
                     "--source-set", "cifar10"])
        outs[label] = np.load(tmp_path / label / "source_cifar10.npz")
    for key in outs["tgz"].files:
        np.testing.assert_array_equal(outs["tgz"][key], outs["zip"][key], err_msg=key)
    assert len(outs["tgz"]["y_train"]) == 7


def test_medmnist_default_downloads_and_records_url(tmp_path, monkeypatch):
    """mirror null, no MEDMNIST_MIRROR: the verified download (file:// URL); the json records the URL."""
    monkeypatch.delenv("MEDMNIST_MIRROR", raising=False)
    (tmp_path / "served").mkdir()
    served = fake_medmnist(tmp_path / "served" / "breastmnist.npz")
    monkeypatch.setattr(medmnist, "URL", (tmp_path / "served").as_uri() + "/{name}.npz")
    monkeypatch.setattr(medmnist, "DEFAULT_CACHE", tmp_path / "cache")
    info = medmnist.Info(medmnist.md5_file(served), medmnist.info("breastmnist").class_names)
    monkeypatch.setitem(medmnist.CATALOG, "breastmnist", info)
    assert ingest.main(["--params", str(write_params(tmp_path)), "--out-dir", str(tmp_path / "out"),
                        "--dataset", "breastmnist"]) == 0
    meta = json.loads((tmp_path / "out" / "breastmnist.json").read_text())
    assert meta["source"] == str(tmp_path / "cache" / "breastmnist.npz")
    assert meta["source_url"] == served.as_uri() and meta["md5_matches_official"] is True
