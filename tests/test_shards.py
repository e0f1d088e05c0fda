"""Sharded arrays (pipeline.shards) and streamed training (pipeline.streaming.fit_stream): roundtrip,
every row exactly once per epoch, (seed, epoch)-pure shuffles across shards with bounded memory, filters,
refusal of corrupt / missing / half-written shard sets, and resume equal to an uninterrupted run."""
import json

import keras
import numpy as np
import pytest

from pipeline import shards, training
from pipeline.losses import make_loss
from pipeline.shards import ShardDataset, ShardError, ShardSet, ShardWriter, write_shards
from pipeline.streaming import fit_stream
from pipeline.training import FitConfig


def _arrays(n=500, groups=20, seed=0):
    rng = np.random.default_rng(seed)
    group = np.sort(rng.integers(0, groups, n)).astype(np.int16)
    return {"x": rng.normal(size=(n, 7)).astype(np.float32), "rr": rng.uniform(size=(n, 3)).astype(np.float32),
            "y": rng.integers(0, 3, n).astype(np.int8), "group": group, "fold": (group % 4).astype(np.int8),
            "id": np.arange(n, dtype=np.int64)}


def _ds(path, **kw):
    args = dict(batch_size=32, n_classes=3, features=["x", "rr", "id"], seed=5, buffer_shards=3)
    return ShardDataset(path, **{**args, **kw})


def _epoch_ids(ds, epoch):
    ds.set_epoch(epoch)
    return [ds[i][0]["id"] for i in range(len(ds))]


@pytest.fixture(scope="module")
def data():
    return _arrays()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("shards")
    write_shards(path, data, shard_size=40)
    return path


def test_roundtrip_fixed_size(sharded, data):
    index = json.loads((sharded / "index.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [40] * 12 + [20]
    assert index["rows"] == 500 and index["arrays"]["x"] == {"dtype": "<f4", "shape": [7]}
    s = ShardSet(sharded)
    back = [s.load(i) for i in range(len(s))]
    for k, v in data.items():
        got = np.concatenate([b[k] for b in back])
        assert got.dtype == v.dtype and np.array_equal(got, v)


def test_shards_by_group_hold_whole_groups(tmp_path, data):
    one = write_shards(tmp_path / "one", data, by="group")
    assert len(one["shards"]) == len(np.unique(data["group"]))
    packed = write_shards(tmp_path / "packed", data, by="group", shard_size=60)
    s = ShardSet(tmp_path / "packed")
    seen = [set(s.load(i, ["group"])["group"].tolist()) for i in range(len(s))]
    assert all(a.isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1:])  # no group split
    sizes = [e["rows"] for e in packed["shards"]]
    assert sum(sizes) == 500 and len(sizes) < len(one["shards"])
    with pytest.raises(ValueError, match="contiguous"):
        write_shards(tmp_path / "bad", {"g": np.array([1, 2, 1])}, by="g")


def test_every_row_once_per_epoch_and_mixed_across_shards(sharded):
    ds = _ds(sharded)
    assert len(ds) == -(-500 // 32)
    for epoch in (0, 1):
        batches = _epoch_ids(ds, epoch)
        ids = np.concatenate(batches)
        assert sorted(ids.tolist()) == list(range(500))  # each row exactly once
        assert all(len(b) == 32 for b in batches[:-1]) and len(batches[-1]) == 500 - 32 * (len(ds) - 1)
        shard_of = [set((b // 40).tolist()) for b in batches]
        assert np.mean([len(s) >= 2 for s in shard_of]) > 0.9  # batches mix rows of several shards
    x, y = ds[0]
    assert set(x) == {"x", "rr", "id"} and y.shape == (32, 3) and np.allclose(y.sum(axis=1), 1)


def test_order_is_a_function_of_seed_and_epoch(sharded):
    a, b = _ds(sharded), _ds(sharded)
    _epoch_ids(b, 3)  # history must not matter
    e1 = np.concatenate(_epoch_ids(a, 1))
    assert np.array_equal(e1, np.concatenate(_epoch_ids(b, 1)))
    assert not np.array_equal(e1, np.concatenate(_epoch_ids(a, 2)))
    assert not np.array_equal(e1, np.concatenate(_epoch_ids(_ds(sharded, seed=6), 1)))
    a.set_epoch(1)
    a.on_epoch_end()  # Keras calls this also when a fit starts: it must not move the epoch
    assert a.epoch == 1 and np.array_equal(np.concatenate(_epoch_ids(a, 1)), e1)
    # random access (e.g. Keras probing batches for the tensor spec) gives the same batches
    a.set_epoch(1)
    assert np.array_equal(a[len(a) - 1][0]["id"], _epoch_ids(b, 1)[-1]) and np.array_equal(a[0][0]["id"], e1[:32])


def test_reader_holds_at_most_buffer_shards(sharded):
    ds = _ds(sharded, buffer_shards=3)
    for epoch in range(3):
        _epoch_ids(ds, epoch)
    assert ds.max_held_shards == 3
    assert ds.groups_loaded == 3 * 5  # 13 shards in groups of 3: each group loaded once per sequential epoch
    one = _ds(sharded, buffer_shards=1)
    _epoch_ids(one, 0)
    assert one.max_held_shards == 1


def test_prefetch_gives_the_same_batches_with_at_most_two_groups(sharded):
    plain, ahead = _ds(sharded), _ds(sharded, prefetch=True)
    for epoch in (0, 1):
        for a, b in zip(_epoch_ids(plain, epoch), _epoch_ids(ahead, epoch)):
            assert np.array_equal(a, b)
    # at most two groups with prefetch (whether the two overlap depends on thread timing), one without
    assert 3 <= ahead.max_held_shards <= 6 and plain.max_held_shards == 3
    assert ahead._pool is not None and plain._pool is None  # the prefetch thread did run
    ahead.set_epoch(2)
    ahead[len(ahead) - 1]  # random access far ahead: the prefetched first group is dropped, not kept
    assert ahead.held_shards == len(ahead.groups[-1]) == 1


def test_keras_fit_reads_each_group_once_per_epoch(sharded):
    ds = _ds(sharded, features=["x"], buffer_shards=3)
    inp = {"x": keras.Input((7,), name="x")}
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp["x"]))
    model.compile("sgd", "categorical_crossentropy")
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        model.fit(ds, epochs=1, shuffle=False, verbose=0)
    assert ds.groups_loaded == 2 * 5 and ds.epoch == 1


def test_filter(sharded, data):
    ds = _ds(sharded, where={"fold": lambda f: f != 2})
    want = data["id"][data["fold"] != 2]
    assert ds.rows == len(want) and len(ds) == -(-len(want) // 32)
    assert sorted(np.concatenate(_epoch_ids(ds, 0)).tolist()) == want.tolist()
    ds = _ds(sharded, where={"fold": [0, 1], "y": 2})
    assert sorted(np.concatenate(_epoch_ids(ds, 4)).tolist()) == \
        data["id"][np.isin(data["fold"], [0, 1]) & (data["y"] == 2)].tolist()
    val = ShardSet(sharded).gather({"fold": 2}, ["id"])
    assert val["id"].tolist() == data["id"][data["fold"] == 2].tolist() and set(val) == {"id"}
    with pytest.raises(ShardError, match="no rows"):
        _ds(sharded, where={"fold": 9})


def test_features_callable_sees_one_filtered_shard(tmp_path, data):
    write_shards(tmp_path, data, by="group")
    seen = []

    def feats(a):
        seen.append(np.unique(a["group"]).tolist())
        return {"z": a["x"] - a["x"].mean(axis=0), "id": a["id"]}

    ds = _ds(tmp_path, features=feats, columns=["x", "group", "id"], where={"fold": 1})
    ids = np.concatenate(_epoch_ids(ds, 0))
    assert sorted(ids.tolist()) == data["id"][data["fold"] == 1].tolist()
    assert all(len(g) == 1 and g[0] % 4 == 1 for g in seen)


def test_corrupt_missing_and_mismatched_shards_name_the_file(tmp_path, data):
    write_shards(tmp_path / "c", data, shard_size=100)
    f = tmp_path / "c" / "shard-00002.npz"
    raw = bytearray(f.read_bytes())
    raw[-50] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="shard-00002.npz.*sha256"):
        ShardSet(tmp_path / "c").load(2)
    with pytest.raises(ShardError, match="shard-00002.npz"):  # also through the dataset, mid-epoch
        _epoch_ids(_ds(tmp_path / "c", buffer_shards=1), 0)
    f.write_bytes(bytes(raw[:-10]))
    with pytest.raises(ShardError, match="shard-00002.npz.*bytes"):
        ShardSet(tmp_path / "c")
    f.unlink()
    with pytest.raises(ShardError, match="shard-00002.npz.*missing"):
        ShardSet(tmp_path / "c")
    # shape mismatch: a shard rewritten with another row shape and a matching checksum
    write_shards(tmp_path / "s", data, shard_size=100)
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    g = tmp_path / "s" / "shard-00001.npz"
    np.savez(g, **{**{k: v[100:200] for k, v in data.items()}, "x": np.zeros((100, 6), np.float32)})
    index["shards"][1].update(bytes=g.stat().st_size, sha256=shards.file_digest(g))
    (tmp_path / "s" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match="shard-00001.npz: array 'x'"):
        ShardSet(tmp_path / "s").load(1)
    (tmp_path / "s" / "index.json").write_text("{not json")
    with pytest.raises(ShardError, match="index.json: malformed"):
        ShardSet(tmp_path / "s")


def test_half_written_shard_set_is_refused(tmp_path, data):
    write_shards(tmp_path, data, shard_size=100)
    assert ShardSet(tmp_path).index["rows"] == 500
    with pytest.raises(RuntimeError):  # a writer dies half-way through a rewrite of the same folder
        with ShardWriter(tmp_path) as w:
            w.add(**{k: v[:100] for k, v in data.items()})
            raise RuntimeError("killed")
    assert (tmp_path / "shard-00000.npz").exists() and not (tmp_path / "shard-00003.npz").exists()
    with pytest.raises(ShardError, match="index.json: missing"):
        ShardSet(tmp_path)
    with pytest.raises(ShardError, match="index.json: missing"):
        _ds(tmp_path)


def test_writer_refuses_inconsistent_shards(tmp_path):
    w = ShardWriter(tmp_path)
    w.add(a=np.zeros(3), b=np.ones(3))
    with pytest.raises(ValueError, match="differ"):
        w.add(a=np.zeros((3, 2)), b=np.ones(3))
    with pytest.raises(ValueError, match="first dimension"):
        w.add(a=np.zeros(3), b=np.ones(4))
    with pytest.raises(ValueError, match="no shards"):
        ShardWriter(tmp_path / "empty").close()


# ------------------------------------------------------------------------------------------ fit_stream
CFG = FitConfig(epochs=3, batch_size=32, learning_rate=3e-3, patience=10, min_delta=0.0)


def _toy_shards(path):
    rng = np.random.default_rng(0)
    n = 192
    y = rng.integers(0, 3, n).astype(np.int8)
    beat = (rng.normal(size=(n, 16, 1)) + 0.7 * y[:, None, None]).astype(np.float32)
    write_shards(path, {"beat": beat, "rr": rng.uniform(0.5, 1.5, (n, 2)).astype(np.float32), "y": y},
                 shard_size=24)


def _build():
    inp = {"beat": keras.Input((16, 1), name="beat"), "rr": keras.Input((2,), name="rr")}
    h = keras.layers.Flatten()(inp["beat"])
    h = keras.layers.Concatenate()([h, inp["rr"]])
    h = keras.layers.Dropout(0.2)(keras.layers.Dense(8, activation="relu")(h))
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))


def _run(path, run_dir, callbacks=()):
    ds = ShardDataset(path, CFG.batch_size, 3, ["beat", "rr"], seed=7, buffer_shards=3)
    val = ShardSet(path).gather(columns=["beat", "rr", "y"])
    return fit_stream(_build, make_loss("ce"), ds, ({"beat": val["beat"], "rr": val["rr"]}, val["y"]), (0, 1, 2),
                      CFG, run_dir, "fp", seed=7, callbacks=callbacks, verbose=0)


class _Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after epoch 1")


def test_fit_stream_trains_and_resumes_to_the_same_weights(tmp_path):
    _toy_shards(tmp_path / "shards")
    best, state = _run(tmp_path / "shards", tmp_path / "ref")
    assert state["epoch"] == 3 and state["history"]["loss"][-1] < state["history"]["loss"][0]
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "shards", tmp_path / "cut", callbacks=[_Kill()])
    assert [p.name for _, p in training._units(tmp_path / "cut")] == ["ckpt-0001"]
    best2, state2 = _run(tmp_path / "shards", tmp_path / "cut")
    assert state2 == state
    for a, b in zip(best.get_weights(), best2.get_weights()):
        assert np.array_equal(a, b)
    last = [keras.models.load_model(training._units(d)[0][1] / "model.keras")
            for d in (tmp_path / "ref", tmp_path / "cut")]
    for a, b in zip(*(m.get_weights() for m in last)):
        assert np.array_equal(a, b)


# ------------------------------------------------------------------------------------ prepare --shards
def test_prepare_shards_flag_writes_whole_records_and_leaves_outputs_identical(tmp_path):
    from ecg import prepare
    from pipeline.io import sha256_file
    from tests.test_ecg_data import make_record, write_params

    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("101", "106", "100", "103"):
        make_record(raw, name, seconds=20)
    (raw / "RECORDS").write_text("100\n101\n103\n106\n")
    params = write_params(tmp_path / "params.yaml", records="all", n_folds=2)

    def run(tag, *extra):
        prepare.main(["--params", str(params), "--raw", str(raw), "--out", str(tmp_path / tag),
                      "--metrics", str(tmp_path / tag / "dataset.json"), "--workers", "1", *extra])
        return {n: sha256_file(tmp_path / tag / n) for n in ("beats.npz", "meta.json")}

    plain = run("plain")
    assert not list(tmp_path.glob("**/index.json"))
    assert run("sharded", "--shards", str(tmp_path / "shards")) == plain  # same bytes with the flag
    s = ShardSet(tmp_path / "shards")
    with np.load(tmp_path / "plain" / "beats.npz") as z:
        beats = {k: z[k] for k in z.files}
    got = [s.load(i) for i in range(len(s))]
    assert [np.unique(g["record"]).tolist() for g in got] == [[101], [106], [100], [103]]  # one record per shard
    for k, v in beats.items():
        assert np.array_equal(np.concatenate([g[k] for g in got]), v)
    assert s.meta == json.loads((tmp_path / "plain" / "meta.json").read_text())
    run("packed", "--shards", str(tmp_path / "packed"), "--shard-size", "100000")
    assert len(ShardSet(tmp_path / "packed")) == 1
