import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision import medmnist
from vision.readers import DataError, load_image_tree, load_npz, shuffle_split

SHARED = Path(__file__).resolve().parents[2] / "shared"
PNEUMONIA = SHARED / "data" / "medmnist" / "pneumoniamnist.npz"


def write_npz(path, n=(6, 3, 4), shape=(5, 5), n_classes=2, **override):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % n_classes).reshape(k, 1).astype(np.uint8)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_load_npz_valid(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    out = load_npz(path, "d")
    assert set(out) == {"train", "val", "test"}
    x, y = out["train"]
    assert x.shape == (6, 5, 5, 1) and x.dtype == np.uint8
    assert y.shape == (6,) and y.dtype == np.int64 and list(y) == [0, 1, 0, 1, 0, 1]
    np.testing.assert_array_equal(x[..., 0], np.load(path)["train_images"])


def test_load_npz_float_images(tmp_path):
    unit = np.full((6, 4, 4, 3), 0.5, dtype=np.float32)
    scaled = np.full((3, 4, 4, 3), 200.0)
    path = write_npz(tmp_path / "f.npz", train_images=unit, val_images=scaled,
                     test_images=np.zeros((4, 4, 4, 3), np.float32))
    out = load_npz(path)
    assert out["train"][0].dtype == np.uint8 and (out["train"][0] == 128).all()
    assert (out["val"][0] == 200).all()


@pytest.mark.parametrize("override, key, fragment", [
    ({"val_labels": None}, "val_labels", "missing key"),
    ({"train_images": np.zeros((6, 2, 2, 2, 2), np.uint8)}, "train_images", "expected shape"),
    ({"train_images": np.zeros((6, 4, 4, 2), np.uint8)}, "train_images", "expected shape"),
    ({"test_labels": np.array([[0], [1], [2], [1]])}, "test_labels", "outside 0..1"),
    ({"test_labels": np.array([0, -1, 0, 1])}, "test_labels", "outside 0..1"),
    ({"val_labels": np.zeros((2, 1), np.int64)}, "val_labels", "2 rows"),
    ({"val_labels": np.zeros((3, 2), np.int64)}, "val_labels", "(n,1)"),
    ({"train_labels": np.zeros(6, np.float32)}, "train_labels", "integers"),
    ({"train_images": np.full((6, 4, 4), 300.0)}, "train_images", "[0,1] or [0,255]"),
    ({"val_images": np.zeros((0, 5, 5), np.uint8), "val_labels": np.zeros((0, 1), np.int64)},
     "'val'", "is empty"),
])
def test_load_npz_errors_name_file_and_key(tmp_path, override, key, fragment):
    path = write_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(DataError) as exc:
        load_npz(path, "bad", n_classes=2)
    msg = str(exc.value)
    assert str(path) in msg and key in msg and fragment in msg


def test_load_npz_infers_classes_from_train(tmp_path):
    path = write_npz(tmp_path / "d.npz", test_labels=np.array([0, 1, 2, 0]))
    with pytest.raises(DataError, match="test_labels.*outside 0..1"):
        load_npz(path)


def test_load_npz_unreadable_and_missing(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=re.escape(str(junk))):
        load_npz(junk)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.npz"))):
        load_npz(tmp_path / "nope.npz")


def make_tree(root, layout, size=(6, 4), mode="L"):
    """layout: {relative folder: n images}; pixel value encodes (folder, index)."""
    values = {}
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            v = (len(values) * 7 + 3) % 256
            img = Image.new(mode, size, v if mode == "L" else (v, 0, 255 - v))
            img.save(root / folder / f"{i:03d}.png")
            values[f"{folder}/{i:03d}.png"] = v
    return values


def test_load_image_tree_folder_with_splits(tmp_path):
    make_tree(tmp_path, {"train/cat": 2, "train/ant": 3, "test/cat": 1, "test/ant": 1})
    (tmp_path / "train" / "README.txt").write_text("ignored")
    splits, classes = load_image_tree(tmp_path)
    assert classes == ["ant", "cat"]
    x, y = splits["train"]
    assert x.shape == (5, 4, 6, 1) and x.dtype == np.uint8
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1]
    assert splits["test"][0].shape[0] == 2


def test_load_image_tree_without_split_level_and_rgb(tmp_path):
    make_tree(tmp_path, {"b": 2, "a": 1}, mode="RGB")
    splits, classes = load_image_tree(tmp_path)
    assert list(splits) == ["all"] and classes == ["a", "b"]
    assert splits["all"][0].shape == (3, 4, 6, 3)


def test_load_image_tree_zip_matches_folder(tmp_path):
    tree = tmp_path / "tree"
    make_tree(tree, {"train/x": 2, "train/y": 2, "val/x": 1, "val/y": 1})
    zpath = tmp_path / "tree.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(tree.rglob("*")):
            zf.write(p, p.relative_to(tree).as_posix())
    from_dir, c1 = load_image_tree(tree)
    from_zip, c2 = load_image_tree(zpath)
    assert c1 == c2 == ["x", "y"]
    for split in ("train", "val"):
        np.testing.assert_array_equal(from_dir[split][0], from_zip[split][0])
        np.testing.assert_array_equal(from_dir[split][1], from_zip[split][1])


def test_load_image_tree_limit_per_class(tmp_path):
    make_tree(tmp_path, {"train/a": 5, "train/b": 2})
    splits, _ = load_image_tree(tmp_path, limit_per_class=3, seed=1)
    assert np.bincount(splits["train"][1]).tolist() == [3, 2]


def test_load_image_tree_errors_name_file(tmp_path):
    make_tree(tmp_path, {"train/a": 1})
    bad = tmp_path / "train" / "a" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image_tree(tmp_path)
    bad.unlink()
    Image.new("L", (9, 9)).save(tmp_path / "train" / "a" / "big.png")
    with pytest.raises(DataError, match="big.png"):
        load_image_tree(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_image_tree(tmp_path / "missing")


def test_shuffle_split_seeded_permutation():
    x = np.arange(50).reshape(50, 1, 1, 1)
    y = np.arange(50)
    xa, ya = shuffle_split(x, y, seed=3)
    xb, yb = shuffle_split(x, y, seed=3)
    xc, _ = shuffle_split(x, y, seed=4)
    np.testing.assert_array_equal(xa, xb)
    assert not np.array_equal(xa, xc) and not np.array_equal(ya, y)
    assert sorted(ya.tolist()) == list(range(50))
    np.testing.assert_array_equal(xa[:, 0, 0, 0], ya)  # rows stay paired
    with pytest.raises(ValueError):
        shuffle_split(x, y[:-1], seed=0)


def test_mirror_md5_mismatch_warns_naming_file(tmp_path):
    path = write_npz(tmp_path / "breastmnist.npz")
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        assert medmnist.from_mirror("breastmnist", tmp_path) == path
    with pytest.raises(FileNotFoundError, match="retinamnist.npz"):
        medmnist.from_mirror("retinamnist", tmp_path)


@pytest.mark.skipif(not PNEUMONIA.is_file(), reason=f"{PNEUMONIA} not present")
def test_real_pneumonia_mirror_warns_and_loads():
    with pytest.warns(UserWarning, match=re.escape(str(PNEUMONIA))):
        path = medmnist.from_mirror("pneumoniamnist", PNEUMONIA.parent)
    out = load_npz(path, "pneumoniamnist", n_classes=2)
    assert {s: len(out[s][1]) for s in out} == {"train": 4708, "val": 524, "test": 624}
    assert out["train"][0].shape[1:] == (28, 28, 1)
    assert np.bincount(out["train"][1]).tolist() == [1214, 3494]
