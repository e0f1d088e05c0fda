"""vision.goal: the validation-only choice per backbone family, CIs, paired differences, anchor calls, missing
families and bad input, on synthetic runs written into tmp_path (no Keras, no model)."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from pipeline.params import ParamsError
from vision import goal

ANCHORS = {"breastmnist": {"accuracy": 0.5, "auc": 0.999, "source": "test anchor"},
           "retinamnist": {"accuracy": 0.3, "auc": 0.6, "source": "test anchor"}}
SOURCE = {"squeezenet": "imagenet", "alexnet": "source:cifar10", "vgg16": "source:cifar10"}


def labels(n, k, seed):
    return np.random.default_rng(seed).permutation(np.arange(n) % k)


def probs_for(y, k, skill, seed):
    """Class probabilities whose argmax is right on about a `skill` share of the images."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(y), k))
    right = rng.random(len(y)) < skill
    logits[np.arange(len(y)), y] += np.where(right, 4.0, -4.0)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_run(root: Path, dataset, model, regime, loss, val, y, probs, **extra):
    d = root / f"{dataset}-{model}-{regime}-{loss}"
    d.mkdir(parents=True, exist_ok=True)
    trained = {"dataset": dataset, "model": model, "regime": regime, "loss": loss, "val_macro_f1": val,
               "backbone": {"model": model, "source": SOURCE[model]}, **extra}
    (d / "train.json").write_text(json.dumps(trained))
    np.savez(d / "eval.npz", y_true=y, probs=probs, probs_val=probs[:10], y_val=y[:10])
    return d


@pytest.fixture
def runs(tmp_path):
    """breastmnist (2 classes, 120 images): ImageNet (squeezenet) far better than CIFAR; the CIFAR run with the best
    test score has the lower validation score. retinamnist (5 classes, 150 images): CIFAR better than ImageNet."""
    root = tmp_path / "artifacts" / "vision"
    yb, yr = labels(120, 2, 1), labels(150, 5, 2)
    write_run(root, "breastmnist", "squeezenet", "frozen", "ce", 0.70, yb, probs_for(yb, 2, 0.80, 10))
    write_run(root, "breastmnist", "squeezenet", "finetune", "ce", 0.80, yb, probs_for(yb, 2, 0.90, 11))
    write_run(root, "breastmnist", "alexnet", "frozen", "ce", 0.75, yb, probs_for(yb, 2, 0.55, 12))
    write_run(root, "breastmnist", "vgg16", "finetune", "ce", 0.60, yb, probs_for(yb, 2, 1.00, 13))  # best test, low val
    write_run(root, "retinamnist", "squeezenet", "frozen", "ce", 0.40, yr, probs_for(yr, 5, 0.25, 20))
    write_run(root, "retinamnist", "squeezenet", "finetune", "ce", 0.30, yr, probs_for(yr, 5, 0.50, 21))
    write_run(root, "retinamnist", "alexnet", "finetune", "focal", 0.45, yr, probs_for(yr, 5, 0.90, 22))
    return root


def params_file(tmp_path, **over) -> Path:
    body = {"seed": 3, "bootstrap": 300, "regime_model": "squeezenet", "anchors": ANCHORS, **over}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"goal_vision": body}))
    return path


def run_stage(tmp_path, root, **over) -> dict:
    out = tmp_path / "metrics" / "goal_vision.json"
    assert goal.main(["--params", str(params_file(tmp_path, **over)), "--runs", str(root), "--metrics", str(out)]) == 0
    return json.loads(out.read_text())


def value_cis(obj):
    if isinstance(obj, dict):
        if "value" in obj and "ci95" in obj:
            yield obj
        for v in obj.values():
            yield from value_cis(v)


def accuracy_of(root, run):
    with np.load(root / run / "eval.npz") as npz:
        return float(np.mean(npz["probs"].argmax(axis=1) == npz["y_true"]))


# ------------------------------------------------------------------------------------------ choice

def test_choice_is_on_validation_never_on_test(tmp_path, runs):
    m = run_stage(tmp_path, runs)
    assert m["chosen"]["breastmnist / cifar"]["run"] == "breastmnist-alexnet-frozen-ce"   # val 0.75 > 0.60
    # the run left out is the better one on test: the choice did not look at it
    assert accuracy_of(runs, "breastmnist-vgg16-finetune-ce") > m["chosen"]["breastmnist / cifar"]["test_accuracy"]["value"]
    assert m["chosen"]["breastmnist / imagenet"]["run"] == "breastmnist-squeezenet-finetune-ce"
    # retinamnist: the frozen squeezenet wins on validation (0.40) though the fine-tuned one is better on test
    assert m["chosen"]["retinamnist / imagenet"]["run"] == "retinamnist-squeezenet-frozen-ce"
    assert m["chosen"]["breastmnist / cifar"]["candidates"] == 2
    # overall goal choice: over both families, on validation
    assert m["goal"]["breastmnist"]["run"] == "breastmnist-squeezenet-finetune-ce"
    assert m["goal"]["retinamnist"]["run"] == "retinamnist-alexnet-finetune-focal"


def test_ties_go_to_the_first_run_by_name():
    cands = [{"name": "b", "val_macro_f1": 0.5}, {"name": "a", "val_macro_f1": 0.5}, {"name": "c", "val_macro_f1": 0.4}]
    assert goal.choose(cands)["name"] == "a"
    assert goal.choose([]) is None


# ------------------------------------------------------------------------------------------ scores and CIs

def test_points_match_evaluate_vision_and_cis_contain_them(tmp_path, runs):
    m = run_stage(tmp_path, runs)
    row = m["chosen"]["retinamnist / cifar"]
    with np.load(runs / row["run"] / "eval.npz") as npz:
        y, p = npz["y_true"], npz["probs"]
    assert row["test_accuracy"]["value"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert row["test_auc"]["value"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    b = m["chosen"]["breastmnist / imagenet"]
    with np.load(runs / b["run"] / "eval.npz") as npz:
        assert b["test_auc"]["value"] == pytest.approx(roc_auc_score(npz["y_true"] == 1, npz["probs"][:, 1]))
    cells = list(value_cis({k: m[k] for k in ("goal", "chosen", "anchors", "frozen_vs_finetune")}))
    assert len(cells) > 20
    for c in cells:
        assert c["ci95"]["lo"] <= c["value"] <= c["ci95"]["hi"], c
    assert all(c["ci95"]["hi"] - c["ci95"]["lo"] > 0.01 for k, c in m["chosen"]["breastmnist / imagenet"].items()
               if k in ("test_accuracy", "test_macro_f1"))   # a perfect AUC has a zero-width CI; the rest are real intervals


def test_paired_difference_sign_and_call(tmp_path, runs):
    m = run_stage(tmp_path, runs)
    v = m["imagenet_vs_cifar"]
    ch = m["chosen"]
    b = v["breastmnist"]
    assert (b["imagenet_run"], b["cifar_run"]) == ("breastmnist-squeezenet-finetune-ce", "breastmnist-alexnet-frozen-ce")
    assert b["accuracy_diff"]["value"] == pytest.approx(ch["breastmnist / imagenet"]["test_accuracy"]["value"]
                                                        - ch["breastmnist / cifar"]["test_accuracy"]["value"])
    assert b["accuracy_diff"]["value"] > 0 and b["accuracy_diff"]["ci95"]["lo"] > 0
    assert b["accuracy_call"] == "separates" and b["macro_f1_call"] == "separates"
    r = v["retinamnist"]   # ImageNet choice (frozen, weak) minus CIFAR choice (strong): negative
    assert r["accuracy_diff"]["value"] < 0 and r["accuracy_diff"]["ci95"]["hi"] < 0
    assert r["auc_diff"]["value"] < 0 and r["auc_call"] == "separates"
    assert "Bar not met" in m["readings"]["intermediate_bar"]


def test_paired_ci_is_narrower_than_unpaired_for_correlated_runs():
    """Two runs that disagree on few images: the paired CI of the difference is far narrower than the CIs of each."""
    y = labels(200, 2, 5)
    p = probs_for(y, 2, 0.7, 6)
    q = p.copy()
    q[:6] = q[:6, ::-1]
    draws = goal.image_draws(len(y), 400, 0)
    a, b = goal.score(y, p, draws), goal.score(y, q, draws)
    d = goal.difference(a["accuracy"], b["accuracy"])
    single = np.percentile(a["accuracy"][1], 97.5) - np.percentile(a["accuracy"][1], 2.5)
    assert d["ci95"]["hi"] - d["ci95"]["lo"] < single / 2


def test_call_ignores_rounding_noise():
    assert goal.call({"lo": 1e-17, "hi": 0.2}) == "does not separate"
    assert goal.call({"lo": -0.3, "hi": -1e-3}) == "separates"
    assert goal.call(None) == "undefined"


# ------------------------------------------------------------------------------------------ anchors

def test_anchor_calls(tmp_path, runs):
    acc = accuracy_of(runs, "breastmnist-squeezenet-finetune-ce")
    anchors = {**ANCHORS, "breastmnist": {"accuracy": acc - 0.005, "auc": 0.999, "source": "x"}}
    m = run_stage(tmp_path, runs, anchors=anchors)
    g = m["goal"]["breastmnist"]
    assert g["anchor_accuracy"] == pytest.approx(acc - 0.005)
    assert g["beats_accuracy"] is True and g["ci_lo_above_accuracy"] is False   # above by point, not by CI
    assert g["beats_auc"] is (g["test_auc"]["value"] > 0.999)
    assert g["beats_both"] is False and "goal not met" in m["readings"]["goal_breastmnist"]
    cifar = m["anchors"]["breastmnist / cifar"]    # ~0.55 accuracy against an anchor just below 0.97
    assert cifar["beats_accuracy"] is False and cifar["ci_lo_above_accuracy"] is False
    r = m["goal"]["retinamnist"]                   # 0.9-skill run against 0.3 / 0.6
    assert r["beats_both"] is True and r["ci_lo_above_both"] is True
    assert "goal met" in m["readings"]["goal_retinamnist"]
    assert m["anchors"]["retinamnist / imagenet"]["run"] == "retinamnist-squeezenet-frozen-ce"


def test_frozen_vs_finetune_rows(tmp_path, runs):
    m = run_stage(tmp_path, runs)
    row = m["frozen_vs_finetune"]["breastmnist / ce"]
    assert (row["frozen_val_macro_f1"], row["finetune_val_macro_f1"]) == (0.70, 0.80)
    assert row["accuracy_gain"]["value"] == pytest.approx(row["finetune_test_accuracy"]["value"]
                                                          - row["frozen_test_accuracy"]["value"])
    assert row["accuracy_gain"]["value"] > 0
    assert set(m["frozen_vs_finetune"]) == {"breastmnist / ce", "retinamnist / ce"}
    assert "1 of 2" in m["readings"]["frozen_vs_finetune"]    # validation prefers fine-tuning on breastmnist only


# ------------------------------------------------------------------------------------------ missing and bad input

def test_missing_family_is_named_not_fatal(tmp_path, runs):
    y = labels(90, 2, 7)
    write_run(runs, "pneumoniamnist", "squeezenet", "frozen", "ce", 0.9, y, probs_for(y, 2, 0.9, 30))
    m = run_stage(tmp_path, runs, anchors={**ANCHORS, "pneumoniamnist": {"accuracy": 0.946, "auc": 0.991}})
    assert "pneumoniamnist / cifar" not in m["chosen"]
    assert "lacks a CIFAR-10 run" in m["imagenet_vs_cifar"]["pneumoniamnist"]["note"]
    assert "pneumoniamnist has no CIFAR-10" in m["readings"]["missing"]
    assert "no finetune squeezenet run" in m["frozen_vs_finetune"]["pneumoniamnist / ce"]["note"]
    assert "only 2 of 3 sets compared" in m["readings"]["intermediate_bar"]
    assert m["goal"]["pneumoniamnist"]["family"] == "imagenet"


def test_dataset_without_anchor_is_named(tmp_path, runs):
    m = run_stage(tmp_path, runs, anchors={"breastmnist": ANCHORS["breastmnist"]})
    assert "retinamnist" not in m["goal"] and "retinamnist: no anchor" in m["readings"]["missing"]


def test_malformed_train_json_names_the_file(tmp_path, runs):
    bad = runs / "retinamnist-alexnet-finetune-focal" / "train.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="retinamnist-alexnet-finetune-focal/train.json"):
        run_stage(tmp_path, runs)
    bad.write_text(json.dumps({"dataset": "retinamnist", "model": "alexnet", "regime": "finetune", "loss": "focal",
                               "backbone": {"source": "source:cifar10"}}))
    with pytest.raises(ValueError, match="train.json: 'val_macro_f1'"):
        run_stage(tmp_path, runs)
    bad.write_text(json.dumps({"dataset": "retinamnist", "model": "alexnet", "regime": "finetune", "loss": "focal",
                               "val_macro_f1": 0.4}))
    with pytest.raises(ValueError, match="alexnet-finetune-focal/train.json: no 'backbone.source'"):
        run_stage(tmp_path, runs)


def test_malformed_eval_npz_names_the_file(tmp_path, runs):
    path = runs / "breastmnist-squeezenet-finetune-ce" / "eval.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="squeezenet-finetune-ce/eval.npz: not a readable"):
        run_stage(tmp_path, runs)
    np.savez(path, y_true=np.zeros(5, int))
    with pytest.raises(ValueError, match=r"squeezenet-finetune-ce/eval.npz: missing array\(s\) \['probs'\]"):
        run_stage(tmp_path, runs)
    np.savez(path, y_true=np.zeros(5, int), probs=np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="eval.npz: y_true"):
        run_stage(tmp_path, runs)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="eval.npz: not found; run evaluate_vision"):
        run_stage(tmp_path, runs)
    assert not (tmp_path / "metrics" / "goal_vision.json").exists()   # nothing half-written


def test_different_test_sets_in_one_dataset_are_refused(tmp_path, runs):
    y = labels(100, 2, 9)
    write_run(runs, "breastmnist", "alexnet", "frozen", "ce", 0.75, y, probs_for(y, 2, 0.6, 40))
    with pytest.raises(ValueError, match="different test labels"):
        run_stage(tmp_path, runs)


def test_empty_parts_say_why(tmp_path, runs):
    for d in runs.glob("*-squeezenet-*"):
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    m = run_stage(tmp_path, runs, anchors={})
    assert m["frozen_vs_finetune"] == {"none": {"note": "no squeezenet run (see readings: missing)"}}
    assert list(m["goal"]) == ["none"] and "no anchor" in m["readings"]["missing"]
    assert "intermediate_bar" not in m["readings"] and "breastmnist has no ImageNet run" in m["readings"]["missing"]


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained runs"):
        run_stage(tmp_path, tmp_path / "empty")


@pytest.mark.parametrize("over, key", [({"bootstrap": 0}, "bootstrap"), ({"boot": 5}, "boot"),
                                       ({"anchors": {"bloodmnist": {"accuracy": 0.9, "auc": 0.9}}}, "bloodmnist"),
                                       ({"anchors": {"breastmnist": {"accuracy": 1.5, "auc": 0.9}}},
                                        "goal_vision.anchors.breastmnist"),
                                       ({"anchors": {"breastmnist": {"accuracy": 0.9}}},
                                        "goal_vision.anchors.breastmnist.auc"),
                                       ({"seed": "x"}, "goal_vision.seed")])
def test_bad_params_name_the_key(tmp_path, over, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        goal.load_config(params_file(tmp_path, **over))


# ------------------------------------------------------------------------------------------ the report

def test_report_section_renders_every_part(tmp_path, runs):
    from pipeline.report.sections import Section, analysis

    m = run_stage(tmp_path, runs)
    section = Section("vision-goal", "Goal", "metrics/analysis/goal_vision.json", "intro", "absent",
                      kind="analysis", test_name="test", unit="image",
                      parts=("readings", "goal", "chosen", "anchors", "imagenet_vs_cifar", "frozen_vs_finetune"))
    view, reason = analysis(m, section.path, tmp_path, section)
    assert reason is None and view["notes"] == []
    tables = {o["key"]: o["table"] for o in view["others"]}
    assert {"goal", "chosen", "anchors", "imagenet_vs_cifar", "frozen_vs_finetune", "setting"} <= set(tables)
    cells = {c: t for r in tables["imagenet_vs_cifar"]["rows"] if r["label"] == "breastmnist"
             for c, t in r["cells"].items()}
    assert cells["accuracy_diff"].startswith("0.") and " to " in cells["accuracy_diff"]
    assert [r["label"] for r in view["readings"]][:2] == ["goal breastmnist", "goal retinamnist"]
