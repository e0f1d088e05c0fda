import keras
import numpy as np
import pytest

from pipeline.losses import WeightedCategoricalCrossentropy, class_weights, make_loss


def _toy(n=64, k=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.eye(k)[rng.integers(0, k, n)]
    return y.astype("float32"), probs.astype("float32")


def _val(loss, y, p):
    return float(keras.ops.convert_to_numpy(loss(y, p)))


def _manual_ce(y, p):
    return float(np.mean(-np.log(np.clip(p, 1e-7, 1 - 1e-7))[y.astype(bool)]))


def test_ce_matches_manual():
    y, p = _toy()
    assert _val(make_loss("ce"), y, p) == pytest.approx(_manual_ce(y, p), rel=1e-5)


def test_focal_gamma0_alpha1_equals_ce():
    y, p = _toy()
    focal = make_loss("focal", class_counts=[10, 20, 30, 40], alpha="none", gamma=0.0)
    assert _val(focal, y, p) == pytest.approx(_val(make_loss("ce"), y, p), rel=1e-5)


def test_focal_gamma_reduces_loss_on_easy_examples():
    y, p = _toy()
    f0 = make_loss("focal", alpha=[1.0] * 4, gamma=0.0)
    f2 = make_loss("focal", alpha=[1.0] * 4, gamma=2.0)
    assert _val(f2, y, p) < 0.9 * _val(f0, y, p)


def test_weighted_ce_all_ones_equals_ce():
    y, p = _toy()
    wce = make_loss("weighted_ce", class_counts=[5, 1, 1, 100], alpha="none")
    assert _val(wce, y, p) == pytest.approx(_val(make_loss("ce"), y, p), rel=1e-5)
    wce_ls = make_loss("weighted_ce", alpha=[1.0] * 4, label_smoothing=0.1)
    ce_ls = make_loss("ce", label_smoothing=0.1)
    assert _val(wce_ls, y, p) == pytest.approx(_val(ce_ls, y, p), rel=1e-5)


def test_weighted_ce_hand_case():
    y = np.array([[1, 0], [0, 1]], "float32")
    p = np.array([[0.5, 0.5], [0.25, 0.75]], "float32")
    loss = make_loss("weighted_ce", alpha=[1.0, 3.0])
    expected = (1.0 * -np.log(0.5) + 3.0 * -np.log(0.75)) / 2
    assert _val(loss, y, p) == pytest.approx(expected, rel=1e-5)


def test_weighted_ce_serialises():
    loss = make_loss("weighted_ce", alpha=[1.0, 2.0], label_smoothing=0.05)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, WeightedCategoricalCrossentropy)
    assert clone.weights == [1.0, 2.0] and clone.label_smoothing == 0.05


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="ce, weighted_ce, focal"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="none, inverse, sqrt_inverse"):
        class_weights([1, 2], "balanced")
    with pytest.raises(ValueError, match="needs class_counts"):
        make_loss("focal")
    with pytest.raises(ValueError, match="3 values"):
        class_weights([1, 2, 3], [1.0, 2.0])


def test_class_weight_schemes():
    counts = [100, 25, 0]
    inv = class_weights(counts, "inverse")
    sq = class_weights(counts, "sqrt_inverse")
    assert np.all(np.isfinite(inv)) and np.all(np.isfinite(sq))
    assert inv.mean() == pytest.approx(1.0) and sq.mean() == pytest.approx(1.0)
    # zero count clipped to 1: ratios 1 : 4 : 100 and 1 : 2 : 10
    np.testing.assert_allclose(inv / inv[0], [1, 4, 100])
    np.testing.assert_allclose(sq / sq[0], [1, 2, 10])
    np.testing.assert_array_equal(class_weights(counts, "none"), [1, 1, 1])
    np.testing.assert_array_equal(class_weights(counts, [0.5, 1, 2]), [0.5, 1, 2])
