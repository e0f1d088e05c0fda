"""pipeline.analysis: dead ReLUs, linear-region bound, top-k, occlusion (tiny models built here)."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipeline import analysis


def _net(dead_unit: int | None = None, dead_channel: int | None = None, name="net"):
    beat = keras.Input((20, 1), name="beat")
    rr = keras.Input((3,), name="rr")
    c = keras.layers.Conv1D(3, 3, padding="same", name="conv")(beat)
    c = keras.layers.Activation("relu", name="conv_relu")(c)
    c = keras.layers.GlobalMaxPooling1D()(c)
    r = keras.layers.Dense(2, activation="relu", name="rr_dense")(rr)
    h = keras.layers.Concatenate()([c, r])
    h = keras.layers.Dense(4, activation="relu", name="fc1")(h)
    h = keras.layers.ReLU(name="plain_relu")(keras.layers.Dense(3, name="lin")(h))
    out = keras.layers.Dense(2, activation="softmax", name="probs")(h)
    model = keras.Model([beat, rr], out, name=name)
    if dead_unit is not None:
        w, b = model.get_layer("fc1").get_weights()
        w[:, dead_unit] = 0.0
        b[dead_unit] = -5.0
        model.get_layer("fc1").set_weights([w, b])
    if dead_channel is not None:
        conv = model.get_layer("conv")
        w, b = conv.get_weights()
        w[..., dead_channel] = 0.0
        b[dead_channel] = -1.0
        conv.set_weights([w, b])
    return model


def _x(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"beat": rng.normal(size=(n, 20, 1)).astype("float32"), "rr": rng.normal(size=(n, 3)).astype("float32")}


def test_dead_units_counts_a_forced_dead_unit_and_channel():
    keras.utils.set_random_seed(1)
    model = _net(dead_unit=2, dead_channel=1)
    dead = analysis.dead_units(model, _x(), batch_size=16)
    assert set(dead) == {"net/conv_relu", "net/rr_dense", "net/fc1", "net/plain_relu"}
    assert dead["net/fc1"]["units"] == 4 and dead["net/fc1"]["dead"] >= 1
    assert dead["net/conv_relu"]["units"] == 3 and dead["net/conv_relu"]["dead"] >= 1
    # the forced unit is dead; a healthy copy has that unit alive on the same inputs
    healthy = analysis.dead_units(_net(), _x(), batch_size=16)
    assert healthy["net/fc1"]["dead"] < 4
    probe = keras.Model(model.inputs, model.get_layer("fc1").output)
    assert (probe.predict([_x()["beat"], _x()["rr"]], verbose=0)[:, 2] == 0).all()
    assert dead["net/fc1"]["fraction"] == dead["net/fc1"]["dead"] / 4


def test_dead_units_recurse_into_ensemble_members():
    keras.utils.set_random_seed(2)
    members = [_net(dead_unit=0, name="fold0_net"), _net(name="fold1_net")]
    inputs = [keras.Input((20, 1), name="beat"), keras.Input((3,), name="rr")]
    ens = keras.Model(inputs, keras.layers.Average()([m(inputs) for m in members]), name="ens")
    dead = analysis.dead_units(ens, _x(), batch_size=32)
    assert {k.split("/")[0] for k in dead} == {"fold0_net", "fold1_net"}
    assert dead["fold0_net/fc1"]["dead"] >= 1
    summary = analysis.dead_summary(dead)
    assert set(summary["per_member"]) == {"fold0_net", "fold1_net"}
    fc1 = summary["per_layer"]["fc1"]
    assert fc1["members"] == 2
    assert fc1["mean_fraction"] == pytest.approx((dead["fold0_net/fc1"]["fraction"] + dead["fold1_net/fc1"]["fraction"]) / 2)


def test_leaky_relu_is_not_counted():
    assert not analysis.is_relu(keras.layers.LeakyReLU())
    assert not analysis.is_relu(keras.layers.ReLU(negative_slope=0.1))
    assert analysis.is_relu(keras.layers.Dense(2, activation="relu"))
    assert not analysis.is_relu(keras.layers.Dense(2))


def test_linear_region_bound_hand_computation():
    # n0 = 2, widths [3, 2]: d1 = min(2, 3) = 2 -> C(3,0)+C(3,1)+C(3,2) = 1+3+3 = 7;
    # d2 = min(2, 3, 2) = 2 -> C(2,0)+C(2,1)+C(2,2) = 4; bound 7 * 4 = 28.
    assert 10 ** analysis.linear_region_bound(2, [3, 2]) == pytest.approx(28)
    # a narrow layer caps later d: n0 = 5, widths [2, 4]: d1 = 2 -> 4; d2 = min(5, 2, 4) = 2 -> 1+4+6 = 11
    assert 10 ** analysis.linear_region_bound(5, [2, 4]) == pytest.approx(44)
    # log-space sum of binomials matches exact integers, also when huge
    assert analysis.log10_sum_binomials(10, 3) == pytest.approx(math.log10(1 + 10 + 45 + 120))
    exact = sum(math.comb(3000, j) for j in range(41))
    assert analysis.log10_sum_binomials(3000, 40) == pytest.approx(math.log10(exact), rel=1e-12)
    assert analysis.log10_sum_binomials(4, 9) == pytest.approx(math.log10(16))   # d > n: all 2^n
    with pytest.raises(ValueError):
        analysis.linear_region_bound(0, [3])


def test_relu_widths_group_parallel_branches_by_depth():
    widths = analysis.relu_widths(_net())
    # depth 1: conv_relu (20 positions x 3 channels) beside rr_dense (2); depth 2: fc1 (4); depth 3: plain_relu (3)
    assert widths["n0"] == 20 + 3
    assert widths["widths"] == [60 + 2, 4, 3]
    assert sorted(widths["layers"][0]) == ["conv_relu", "rr_dense"]


def test_topk_hand_example():
    probs = np.array([[0.5, 0.3, 0.2],    # y=0: top1
                      [0.5, 0.3, 0.2],    # y=1: top2
                      [0.5, 0.3, 0.2],    # y=2: top3
                      [0.1, 0.2, 0.7]])   # y=0: top3
    y = np.array([0, 1, 2, 0])
    acc = analysis.topk_accuracy(y, probs, (1, 2, 3))
    assert acc["top1"]["value"] == 0.25 and acc["top2"]["value"] == 0.5 and acc["top3"]["value"] == 1.0
    assert acc["top1"]["ci95"] is None
    ci = analysis.topk_accuracy(y, probs, (1,), groups=np.array([0, 0, 1, 1]), n_boot=200, seed=0)["top1"]["ci95"]
    assert 0.0 <= ci["lo"] <= 0.25 <= ci["hi"] <= 0.5
    with pytest.raises(ValueError):
        analysis.topk_hits(y, probs, 4)


def test_window_slices_cover_the_length():
    s = analysis.window_slices(253, 12)
    assert len(s) == 12 and s[0][0] == 0 and s[-1][1] == 253
    assert all(a < b for a, b in s) and all(s[i][1] == s[i + 1][0] for i in range(11))


def _one_window_model():
    """Class-1 probability = sigmoid(sum of beat[:, 10:15]); the rest of the beat and rr are ignored."""
    beat = keras.Input((30, 1), name="beat")
    rr = keras.Input((2,), name="rr")
    part = keras.layers.Cropping1D((10, 15))(beat)
    logit = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(keras.layers.Flatten()(part))
    zero = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(rr)
    logit = keras.layers.Add()([logit, zero])
    p1 = keras.layers.Activation("sigmoid")(logit)
    out = keras.layers.Concatenate()([1 - p1, p1])
    return keras.Model([beat, rr], out)


def test_occlusion_drops_only_where_the_model_reads():
    model = _one_window_model()
    rng = np.random.default_rng(0)
    x = {"beat": (1.0 + 0.1 * rng.normal(size=(8, 30, 1))).astype("float32"),
         "rr": rng.uniform(0.5, 1.5, size=(8, 2)).astype("float32")}
    base = {"beat": np.zeros_like(x["beat"]), "rr": np.ones_like(x["rr"])}
    occ = [{"beat": slice(a, b)} for a, b in analysis.window_slices(30, 6)] + [{"rr": j} for j in range(2)]

    def predict(d):
        return model.predict([d["beat"], d["rr"]], verbose=0)

    p0, drops = analysis.occlusion_drops(predict, x, np.ones(8, dtype=int), occ, base)
    assert p0.shape == (8,) and drops.shape == (8, 8)
    # windows [0,5), [5,10), [15,20), [20,25), [25,30) and both rr features are ignored: no drop
    ignored = [0, 1, 3, 4, 5, 6, 7]
    assert np.abs(drops[:, ignored]).max() < 1e-6
    # window [10,15) holds the evidence for class 1 (sum ~5 -> p ~0.99; occluded -> 0.5)
    assert (drops[:, 2] > 0.4).all()
    with pytest.raises(KeyError):
        analysis.occlusion_drops(predict, x, np.ones(8, dtype=int), [{"other": 0}], base)


# --------------------------------------------------------------------------- the analyse_ecg stage, end to end

CLASSES = ["N", "S", "V", "F", "Q"]
RR = ["pre_rr_local", "post_rr_local", "pre_rr_record", "post_rr_record", "local_rr_record"]


def _tiny_project(root, window=40, per_record=24):
    """data/ecg (DS1 records 1-4 in folds 0/1, DS2 records 5-6), a 2-member dilated1d run, models/ecg/package.json."""
    from ecg import models
    from ecg.train import ensemble
    from pipeline.io import save_npz, write_json
    rng = np.random.default_rng(0)
    record = np.repeat([1, 2, 3, 4, 5, 6], per_record)
    split = (record >= 5).astype(np.int8)
    fold = np.where(record <= 2, 0, np.where(record <= 4, 1, -1)).astype(np.int8)
    y = np.tile(np.arange(4), len(record) // 4).astype(np.int8)
    save_npz(root / "data/ecg/beats.npz", x=rng.normal(size=(len(record), window)).astype(np.float32),
             rr=(0.5 + rng.random((len(record), 5))).astype(np.float32), y=y, record=record.astype(np.int16),
             sample=np.arange(len(record)) * 300, split=split, fold=fold)
    write_json(root / "data/ecg/meta.json", {"database": "test", "fs": 100, "window_samples": window,
                                              "r_peak_index": window // 2, "classes": CLASSES,
                                              "score_classes": CLASSES[:4], "rr_features": RR})
    channels = ["record_scaled", "record_deviation"]
    keras.utils.set_random_seed(0)
    members = [models.build("dilated1d", window, 5, 5, channels=2, filters=4)[0] for _ in range(2)]
    _, info = models.build("dilated1d", window, 5, 5, channels=2, filters=4)
    info["receptive_field_ms"] = 10.0 * info["receptive_field_samples"]
    model = ensemble(members, "dilated1d_cv2")
    run = root / "artifacts/ecg/dilated1d-ce"
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    from ecg import dataset
    arrays, _ = dataset.load_inputs(root / "data/ecg", channels)
    oof = []
    for i, f in enumerate((0, 1)):
        j = np.flatnonzero((split == 0) & (fold == f))
        oof.append(members[i].predict([arrays["beat"][j], arrays["rr"][j]], verbose=0))
    ds1 = np.flatnonzero(split == 0)
    save_npz(run / "oof.npz", y=y[ds1].astype(np.int64), probs=np.concatenate(oof).astype(np.float64),
             record=record[ds1])
    ds2 = np.flatnonzero(split == 1)
    save_npz(run / "eval.npz", y_true=y[ds2].astype(np.int64), probs=rng.dirichlet(np.ones(5), len(ds2)),
             group=record[ds2].astype(np.int16))
    write_json(run / "train.json", {"model_info": info, "folds": {"0": {}, "1": {}}, "channels": channels})
    write_json(root / "models/ecg/package.json", {"provenance": {"run": "dilated1d-ce"}})
    (root / "params.yaml").write_text(
        "evaluate: {bootstrap: 20, ece_bins: 5, seed: 1}\n"
        "analyse_ecg: {runs: [dilated1d-ce], saliency_beats: 5, windows: 4, batch_size: 64}\n")


@pytest.mark.filterwarnings("ignore")
def test_analyse_stage_end_to_end(tmp_path, monkeypatch):
    from ecg import analyse
    from pipeline.io import read_json
    _tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert analyse.main(["--params", "params.yaml"]) == 0
    out = read_json(tmp_path / "metrics/ecg/analysis.json")
    r = out["runs"]["dilated1d-ce"]
    assert r["dead_units"]["beats"] == 96 and set(r["dead_units"]["per_member"]) == {"fold0_dilated1d", "fold1_dilated1d"}
    assert r["capacity"]["members"] == 2 and r["capacity"]["params_ensemble"] == 2 * r["capacity"]["params_member"]
    assert r["capacity"]["region_bound_input"] == 40 * 2 + 5
    assert r["topk"]["n"] == 48 and r["topk"]["top1"]["value"] <= r["topk"]["top2"]["value"] <= r["topk"]["top3"]["value"]
    occ = out["occlusion"]
    assert occ["run"] == "dilated1d-ce" and occ["oof_check_max_abs_diff"] < 1e-5
    assert set(occ["classes"]) == {"N", "S", "V", "F"}
    for res in occ["classes"].values():
        assert res["n"] == 5 and len(res["windows"]) == 4 and set(res["rr"]) == set(RR)
    w = occ["classes"]["N"]["windows"]
    assert w[0]["start_ms"] == -200.0 and w[-1]["stop_ms"] == 200.0   # 40 samples at 100 Hz, R peak at 20
    assert all((tmp_path / f"artifacts/ecg/analysis/occlusion_{c}.png").stat().st_size > 0 for c in "NSVF")
    assert out["readings"] and "total_s" in out["timings_s"]


def test_analyse_params_reject_bad_values(tmp_path):
    from ecg import analyse
    from pipeline.params import ParamsError
    p = tmp_path / "params.yaml"
    p.write_text("analyse_ecg: {fill: median}\n")
    with pytest.raises(ParamsError, match="fill"):
        analyse.load(p)
    p.write_text("analyse_ecg: {dead_beats: 0}\n")
    with pytest.raises(ParamsError, match="dead_beats"):
        analyse.load(p)
