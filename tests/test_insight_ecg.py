"""ecg.insight (stage insight_ecg): stem surgery, leaky rebuild that reloads, and the stage end to end on a tiny
synthetic project (1-epoch fits)."""
from __future__ import annotations

import keras
import numpy as np
import pytest

CLASSES = ["N", "S", "V", "F", "Q"]
RR = ["pre_rr_local", "post_rr_local", "pre_rr_record", "post_rr_record", "local_rr_record"]


def _dilated(window=253, filters=16):
    from ecg import models
    return models.build("dilated1d", window, 5, 5, channels=2, filters=filters, stem_stride=2, dropout=0.3,
                        augment={"gain": 0.1, "noise": 0.02, "rr_jitter": 0.03})


def test_stacked_stem_keeps_receptive_field_stride_and_counts_params():
    from ecg import insight
    keras.utils.set_random_seed(0)
    model, info = _dilated()
    stacked, s = insight.with_stacked_stem(model)
    assert s == {"replaced": "dil1_conv", "kernel": 7, "stride": 2, "stack": [3, 5],
                 "stack_layers": ["dil1_conv_stack1", "dil1_conv"]}
    # the 3-tap conv (stride 1) then the 5-tap conv (stride 2): RF 1 + 2 + 4 = 7, overall stride 2
    assert insight.receptive_field([3, 5], [1, 2]) == 7 == insight.receptive_field([7], [2])
    assert insight.network_receptive_field(stacked) == insight.network_receptive_field(model) == \
        info["receptive_field_samples"] == 259
    assert stacked.get_layer("dil1_conv").output.shape[1:] == model.get_layer("dil1_conv").output.shape[1:] == (127, 16)
    # params by hand: the long stem 7 x 2 x 16 (no bias); the stack 3 x 2 x 16 + BN(4 x 16) + 5 x 16 x 16
    assert model.get_layer("dil1_conv").count_params() == 7 * 2 * 16
    assert stacked.count_params() - model.count_params() == (3 * 2 * 16 + 4 * 16 + 5 * 16 * 16) - 7 * 2 * 16
    long_c = insight.first_block_costs(model, ["dil1_conv", "dil1_bn", "dil1_relu"])
    stack_c = insight.first_block_costs(stacked, ["dil1_conv_stack1", "dil1_conv_stack1_bn", "dil1_conv_stack1_relu",
                                                  "dil1_conv", "dil1_bn", "dil1_relu"])
    assert long_c["first_block_params"] == 224 and stack_c["first_block_params"] == 96 + 1280   # BN folded
    assert long_c["first_block_flops"] == 2 * 127 * 7 * 2 * 16
    assert stack_c["first_block_flops"] == 2 * (253 * 3 * 2 * 16 + 127 * 5 * 16 * 16)
    assert long_c["first_block_activation_bytes"] == 127 * 16 * 4
    assert stack_c["first_block_activation_bytes"] == (253 + 127) * 16 * 4
    assert long_c["output_samples"] == stack_c["output_samples"] == 127
    # the rest of the graph is the same layers (names and shapes), only the stem differs
    def shapes(m):
        return [(layer.name, [tuple(t.shape) for t in keras.tree.flatten(layer.output)]) for layer in m.layers
                if not layer.name.startswith("dil1_conv")]
    rest, rest2 = shapes(model), shapes(stacked)
    assert rest == rest2


def test_stack_with_wrong_receptive_field_is_refused():
    from ecg import insight
    model, _ = _dilated(window=64, filters=4)
    with pytest.raises(ValueError, match="receptive field 9"):
        insight.with_stacked_stem(model, (5, 5))
    assert insight.stack_for(11, None) == (3, 9) and insight.stack_for(7, (3, 3, 3)) == (3, 3, 3)


def test_leaky_model_reloads_and_never_positive_matches_dead_units(tmp_path):
    from ecg import insight
    from pipeline import analysis
    keras.utils.set_random_seed(1)
    model, _ = _dilated(window=64, filters=4)
    leaky = insight.leaky_model(model, 0.01)
    assert not any(analysis.is_relu(layer) for layer in leaky.layers)
    leaky.compile(optimizer="adam", loss="categorical_crossentropy")
    leaky.save(tmp_path / "leaky.keras")
    back = keras.models.load_model(tmp_path / "leaky.keras")   # what pipeline.training.fit does with best.keras
    rng = np.random.default_rng(0)
    x = {"beat": rng.normal(size=(32, 64, 2)).astype("float32"), "rr": (0.5 + rng.random((32, 5))).astype("float32")}
    np.testing.assert_allclose(back.predict(x, verbose=0), leaky.predict(x, verbose=0), atol=1e-6)
    # negative inputs pass through with the slope
    assert float(back.get_layer("fc1").activation(keras.ops.convert_to_tensor([-2.0]))[0]) == pytest.approx(-0.02)
    # the sign probe counts the same units as dead_units on a ReLU model
    dead = analysis.dead_units(model, x, 16)
    names = [k.split("/", 1)[1] for k in dead]
    sign = insight.never_positive(model, x, names, 16)
    assert {n: sign[n]["never_positive"] for n in names} == {k.split("/", 1)[1]: v["dead"] for k, v in dead.items()}


def test_class_subsample_keeps_every_class():
    from ecg import insight
    y = np.array([0] * 900 + [1] * 90 + [2] * 9 + [3])
    idx = insight.class_subsample(y, 100, 0)
    counts = np.bincount(y[idx], minlength=4)
    assert counts.tolist() == [90, 9, 1, 1] and (np.diff(idx) > 0).all()


# ------------------------------------------------------------------------------------------ stage


def _tiny_project(root, window=48, per_record=40):
    """data/ecg (DS1 records 1-4 in folds 0/1, DS2 records 5-6), models/ecg/package.json, params.yaml."""
    from pipeline.io import save_npz, write_json
    rng = np.random.default_rng(0)
    record = np.repeat([1, 2, 3, 4, 5, 6], per_record)
    split = (record >= 5).astype(np.int8)
    fold = np.where(record <= 2, 0, np.where(record <= 4, 1, -1)).astype(np.int8)
    y = np.tile(np.arange(4), len(record) // 4).astype(np.int8)
    x = rng.normal(size=(len(record), window)).astype(np.float32)
    x[:, window // 2] += 2.0 * y   # a learnable trace of the class
    save_npz(root / "data/ecg/beats.npz", x=x, rr=(0.5 + rng.random((len(record), 5))).astype(np.float32), y=y,
             record=record.astype(np.int16), sample=np.arange(len(record)) * 300, split=split, fold=fold)
    write_json(root / "data/ecg/meta.json", {"database": "test", "fs": 100, "window_samples": window,
                                              "r_peak_index": window // 2, "classes": CLASSES,
                                              "score_classes": CLASSES[:4], "rr_features": RR,
                                              "beats_sha256": "x"})
    write_json(root / "models/ecg/package.json", {"channels": ["record_scaled", "record_deviation"],
                                                  "provenance": {"run": "dilated1d-focal", "model": "dilated1d",
                                                                 "loss": "focal"}})
    (root / "params.yaml").write_text(
        "evaluate: {bootstrap: 20, ece_bins: 5, seed: 1}\n"
        "ecg_train:\n  channels: [record_scaled, record_deviation]\n  dilated1d: {filters: 4, stem_stride: 2, dropout: 0.1}\n"
        "  augment: null\n"
        "insight_ecg:\n  fit: {epochs: 1, batch_size: 64, learning_rate: 0.01, patience: 1}\n"
        "  smoothing: [0.0, 0.1]\n  leaky_slope: 0.1\n  batch_size: 64\n")


@pytest.mark.slow   # 8 one-epoch fits and three scorings: ~30 s on 2 free cores, 85 s measured on shared ones
@pytest.mark.filterwarnings("ignore")
def test_insight_stage_end_to_end_and_rerun_restores_fits(tmp_path, monkeypatch, capsys):
    from ecg import insight
    from pipeline.io import read_json
    _tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert insight.main(["--params", "params.yaml"]) == 0
    out = read_json(tmp_path / "metrics/analysis/insight_ecg.json")
    assert out["base"]["run"] == "dilated1d-focal" and out["base"]["val_fold"] == 0
    assert out["base"]["train_beats"] == 80 and out["base"]["val_beats"] == 80 and out["base"]["test_beats"] == 80
    sm = out["smoothing"]
    assert set(sm) == {"eps=0", "eps=0.1"}
    for row in sm.values():
        for key in ("ece_before", "ece_after", "nll_before", "nll_after", "macro_f1", "f1_N", "f1_F"):
            assert set(row[key]) == {"value", "ci95"} and row[key]["value"] is not None
        assert row["temperature"] > 0
        # temperature fitted on validation minimises validation NLL, not DS2's: nothing checked on DS2 here
    ch = sm["eps=0.1"]["top1_changed_vs_eps0"]
    assert 0 <= ch["value"] <= 1 and "macro_f1_diff_vs_eps0" in sm["eps=0.1"]
    d = sm["eps=0.1"]["macro_f1_diff_vs_eps0"]
    assert d["value"] == pytest.approx(sm["eps=0.1"]["macro_f1"]["value"] - sm["eps=0"]["macro_f1"]["value"])
    lk = out["leaky"]
    assert set(lk) == {"relu", "leaky_relu"} and lk["relu"]["units"] == lk["leaky_relu"]["units"] > 0
    assert set(out["dead_per_layer"]) >= {"dil1_relu", "rr_dense", "fc1"}
    kn = out["kernel"]
    assert list(kn) == ["long_k7_s2", "stack_k3+5_s2"]
    assert kn["long_k7_s2"]["receptive_field_samples"] == kn["stack_k3+5_s2"]["receptive_field_samples"]
    assert kn["long_k7_s2"]["output_samples"] == kn["stack_k3+5_s2"]["output_samples"] == 24
    assert kn["stack_k3+5_s2"]["params"] > kn["long_k7_s2"]["params"]
    assert out["readings"] and set(out["method"]) == {"smoothing", "leaky", "kernel"}
    figs = tmp_path / "artifacts/analysis/insight_ecg"
    for name in ("reliability_eps0.png", "reliability_eps0.1.png", "dead_relu.png", "kernel.png", "ece_smoothing.png"):
        assert (figs / name).read_bytes().startswith(b"\x89PNG")
    ck = tmp_path / "artifacts/checkpoints/ecg/insight"
    assert {p.name for p in ck.iterdir()} == {"eps0", "eps0.1", "leaky_relu", "stack_k3+5"}
    # a rerun after a scoring-only change restores every fit instead of training again, also in a fresh process
    # (where the leaky activation is not registered until the stage registers it)
    from pipeline import insight as surgery
    keras.saving.get_custom_objects().pop("pipeline_insight>leaky_relu_0p1")
    surgery._LEAKY.pop(0.1)
    capsys.readouterr()
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace("bootstrap: 20", "bootstrap: 10"))
    assert insight.main(["--params", "params.yaml"]) == 0
    log = capsys.readouterr().out
    assert log.count("resuming") == 4 and "epoch 1: val_macro_f1" not in log
    again = read_json(tmp_path / "metrics/analysis/insight_ecg.json")
    assert again["smoothing"]["eps=0"]["macro_f1"]["value"] == sm["eps=0"]["macro_f1"]["value"]
    # the report's analysis reader finds the parts (tables of the dict-of-dicts parts, readings, methods)
    from pipeline.report import sections
    sec = sections.Section("insight", "Insight", "metrics/analysis/insight_ecg.json", "", "", kind="analysis",
                           parts=("readings", "smoothing", "leaky", "kernel", "method"))
    view, reason = sections.analysis(again, sec.path, tmp_path, sec)
    assert reason is None and {o["key"] for o in view["others"]} >= {"smoothing", "leaky", "kernel", "dead_per_layer"}
    assert not view["notes"]
    # a control sweep with another loss: its own fits, the base-loss eps=0 fit (restored) stays the leaky/kernel reference
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace(
        "smoothing: [0.0, 0.1]", "smoothing: [0.0, 0.1]\n  smoothing_loss: ce"))
    capsys.readouterr()
    assert insight.main(["--params", "params.yaml", "--metrics", "ce.json"]) == 0
    log = capsys.readouterr().out
    assert log.count("resuming") == 3   # eps=0 (base loss), leaky_relu, stack: only the two ce fits train
    ce = read_json(tmp_path / "ce.json")
    assert set(ce["smoothing"]) == {"ce_eps=0", "ce_eps=0.1"} and ce["base"]["smoothing_loss"] == "ce"
    assert ce["leaky"]["relu"]["macro_f1"] == again["leaky"]["relu"]["macro_f1"]
    assert "ce_eps0" in {p.name for p in ck.iterdir()}


def test_bad_inputs_name_the_file_or_key(tmp_path):
    from ecg import insight
    from pipeline.io import write_json
    from pipeline.params import ParamsError
    _tiny_project(tmp_path)
    params = tmp_path / "params.yaml"
    with pytest.raises(FileNotFoundError, match="package.json"):
        insight.load_base(tmp_path / "nowhere", params)
    write_json(tmp_path / "models/ecg/package.json", {"provenance": {}})
    with pytest.raises(KeyError, match="provenance.run"):
        insight.load_base(tmp_path / "models/ecg", params)
    write_json(tmp_path / "models/ecg/package.json", {"provenance": {"run": "resnet-hinge"}})
    with pytest.raises(ValueError, match="provenance.run 'resnet-hinge'"):
        insight.load_base(tmp_path / "models/ecg", params)
    params.write_text("insight_ecg: {smoothing: [0.05, 0.1]}\n")
    with pytest.raises(ParamsError, match="smoothing"):
        insight.load(params)
    params.write_text("insight_ecg: {kernel: {stack: [1, 7]}}\n")
    with pytest.raises(ParamsError, match="kernel.stack"):
        insight.load(params)
