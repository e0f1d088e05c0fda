"""pipeline.compress: the distillation loss and wrapper, magnitude masks that survive fine-tuning and
reloading, and channel pruning that slices every consumer correctly."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from ecg import models
from pipeline import compress as C
from pipeline.training import FitConfig, fit


def _x(n=32, seed=0, window=64):
    rng = np.random.default_rng(seed)
    return {"beat": rng.normal(size=(n, window, 2)).astype("float32"),
            "rr": (0.5 + rng.random((n, 5))).astype("float32")}


def _student(filters=4, window=64):
    return models.build("dilated1d", window, 5, 5, channels=2, filters=filters, dropout=0.0)[0]


def _probs(rng, n, k):
    z = rng.normal(size=(n, k))
    return (np.exp(z) / np.exp(z).sum(1, keepdims=True)).astype("float32")


def test_distillation_loss_hand_computed():
    rng = np.random.default_rng(1)
    k, n = 4, 6
    s, t = _probs(rng, n, k), _probs(rng, n, k)
    y = np.eye(k, dtype="float32")[rng.integers(0, k, n)]
    y_true = np.concatenate([y, np.zeros_like(y)], 1)
    y_pred = np.concatenate([s, t - 1.0], 1)
    w = np.array([1.0, 2.0, 0.5, 3.0])
    T, a = 3.0, 0.7
    got = keras.ops.convert_to_numpy(C.DistillationLoss(k, T, a, class_weights=w).call(y_true, y_pred))
    ce = -(y * w * np.log(s)).sum(1)

    def soft(p):
        z = np.log(p) / T
        return np.exp(z) / np.exp(z).sum(1, keepdims=True)
    kl = (soft(t) * (np.log(soft(t)) - np.log(soft(s)))).sum(1)
    np.testing.assert_allclose(got, a * T * T * kl + (1 - a) * ce, rtol=1e-4)
    hard_only = keras.ops.convert_to_numpy(C.DistillationLoss(k, T, 0.0, class_weights=w).call(y_true, y_pred))
    np.testing.assert_allclose(hard_only, ce, rtol=1e-5)
    same = keras.ops.convert_to_numpy(C.DistillationLoss(k, T, 1.0).call(y_true, np.concatenate([s, s - 1], 1)))
    np.testing.assert_allclose(same, 0.0, atol=1e-5)


def test_distillation_loss_rejects_bad_args():
    with pytest.raises(ValueError, match="temperature"):
        C.DistillationLoss(3, temperature=0.0)
    with pytest.raises(ValueError, match="class_weights"):
        C.DistillationLoss(3, class_weights=[1.0, 2.0])


def test_distillation_wrapper_trains_with_the_shared_fit_loop(tmp_path):
    """The wrapper's argmax is always the student's, so fit's validation macro-F1 scores the student;
    the student learns to imitate a teacher (KL falls) and is recovered by name."""
    rng = np.random.default_rng(0)
    x = _x(64)
    teacher = _probs(rng, 64, 5)
    y = teacher.argmax(1)
    wrapper = C.distillation_model(_student(), 5)
    out = wrapper.predict({**x, "teacher": teacher}, verbose=0)
    assert out.shape == (64, 10) and (out.argmax(1) < 5).all()
    loss = C.DistillationLoss(5, temperature=2.0, alpha=1.0)
    cfg = FitConfig(epochs=3, batch_size=16, learning_rate=1e-2, patience=3)
    best, state = fit(lambda: C.distillation_model(_student(), 5), loss, ({**x, "teacher": teacher}, y),
                      ({**x, "teacher": teacher}, y), (0, 1, 2, 3), cfg, tmp_path / "run", "fp", seed=1)
    hist = state["history"]["loss"]
    assert hist[-1] < hist[0]
    student = best.get_layer("dilated1d")
    assert student.predict(x, verbose=0).shape == (64, 5)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_magnitude_masks_are_exact_and_survive_fine_tuning_and_reload(tmp_path, sparsity):
    model = _student(8)
    masks = C.magnitude_masks(model, sparsity)
    for name, m in masks.items():
        w = np.asarray(model.get_layer(name).kernel.numpy())
        assert int((m == 0).sum()) == int(round(sparsity * w.size))
        kept = np.abs(w[m == 1]).min() if (m == 1).any() else np.inf
        assert np.abs(w[m == 0]).max() <= kept   # the smallest magnitudes went
    pruned = C.with_masks(model, masks)
    before = C.sparsity_report(pruned)
    assert before["sparsity"] == pytest.approx(sparsity, abs=2e-3)
    x, y = _x(64), np.arange(64) % 5
    best, _ = fit(lambda: C.with_masks(model, masks), "categorical_crossentropy", (x, y), (x, y), (0, 1, 2, 3),
                  FitConfig(epochs=2, batch_size=16, learning_rate=1e-2, patience=2), tmp_path / "run", "fp")
    for name, m in masks.items():
        w = np.asarray(best.get_layer(name).kernel.numpy())
        assert (w[m == 0] == 0).all(), f"{name}: pruned weights moved during fine-tuning"
        assert (w[m == 1] != 0).mean() > 0.9
    best.save(tmp_path / "p.keras")
    again = keras.models.load_model(tmp_path / "p.keras")
    assert C.sparsity_report(again)["kernel_zeros"] == C.sparsity_report(best)["kernel_zeros"]
    # the deployable copy keeps the zeros but not the masks, so its file is no larger than the dense one's
    plain = C.strip_masks(best)
    assert all(layer.kernel.constraint is None for layer in C.prunable_layers(plain))
    assert C.sparsity_report(plain)["kernel_zeros"] == C.sparsity_report(best)["kernel_zeros"]
    np.testing.assert_allclose(plain.predict(x, verbose=0), best.predict(x, verbose=0), atol=1e-6)
    plain.save(tmp_path / "plain.keras")
    model.save(tmp_path / "dense.keras")
    assert (tmp_path / "plain.keras").stat().st_size <= (tmp_path / "dense.keras").stat().st_size * 1.05


def test_magnitude_masks_reject_bad_sparsity_and_unknown_layers():
    model = _student()
    with pytest.raises(ValueError, match="sparsity"):
        C.magnitude_masks(model, 1.0)
    with pytest.raises(ValueError, match="nope"):
        C.with_masks(model, {"nope": np.ones(3)})


def test_channel_prune_keeps_outputs_when_dropped_units_are_dead():
    """Zero the weights of the units that will go (and BN's shift so they output 0): the narrower
    model must compute the same function, which checks every slice (conv in/out, BN, concat, dense)."""
    model = _student(8)
    keep = {layer.name: 5 for layer in model.layers if layer.name.endswith("_conv")}
    keep["fc1"] = 40
    for name, n in keep.items():
        layer = model.get_layer(name)
        w = layer.get_weights()
        w[0][..., n:] = 0.0
        w[0][..., :n] += np.sign(w[0][..., :n]) * 1.0   # the kept units have the largest L1 norms
        if len(w) > 1:
            w[1][n:] = 0.0
        layer.set_weights(w)
        if name.startswith("dil"):
            bn = model.get_layer(name.replace("conv", "bn"))
            gamma, beta, mean, var = bn.get_weights()
            beta[n:] = 0.0
            mean[n:] = 0.0
            bn.set_weights([gamma, beta, mean, var])
    narrow = C.channel_prune(model, keep)
    assert narrow.get_layer("dil3_conv").kernel.shape[-2:] == (5, 5)
    assert narrow.get_layer("fc1").kernel.shape == (2 * 5 + 16 + 5, 40)
    x = _x(16)
    np.testing.assert_allclose(narrow.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert C.count_params(narrow) < C.count_params(model)


def test_width_for_budget_stays_within_budget():
    model = _student(16)
    names = [layer.name for layer in model.layers if layer.name.endswith("_conv")] + ["fc1"]
    budget = C.count_params(model) // 3
    keep, params = C.width_for_budget(model, names, budget)
    assert params <= budget and params > budget * 0.7
    assert C.count_params(C.channel_prune(model, keep)) == params
    with pytest.raises(ValueError, match="not Conv/Dense"):
        C.channel_prune(model, {"dil1_bn": 2})
