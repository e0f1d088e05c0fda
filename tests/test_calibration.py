import numpy as np
import pytest

from pipeline.calibration import (
    apply_temperature, brier, ece, fit_temperature, nll, reliability_bins,
)


def test_ece_perfectly_calibrated_is_zero():
    # confidence 0.75 and 3 of 4 correct; confidence 1.0 and all correct
    probs = np.array([[0.75, 0.25]] * 4 + [[0.0, 1.0]] * 2)
    y = np.array([0, 0, 0, 1, 1, 1])
    assert ece(probs, y, n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_case():
    # bin (0.8, 0.9]: conf 0.9, 2 samples, 1 correct -> |0.5 - 0.9| = 0.4
    # bin (0.5, 0.6]: conf 0.6, 2 samples, 2 correct -> |1.0 - 0.6| = 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    y = np.array([0, 1, 1, 0])
    assert ece(probs, y, n_bins=10) == pytest.approx(0.4)
    # unequal bin weights: 3 samples at 0.9 all correct (gap 0.1), 1 at 0.6 wrong (gap 0.6)
    probs2 = np.array([[0.9, 0.1]] * 3 + [[0.6, 0.4]])
    y2 = np.array([0, 0, 0, 1])
    assert ece(probs2, y2, n_bins=10) == pytest.approx(0.75 * 0.1 + 0.25 * 0.6)


def test_reliability_bins_structure():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    bins = reliability_bins(probs, np.array([0, 1, 1]), n_bins=5)
    assert bins["count"] == [0, 0, 1, 0, 2]
    assert bins["accuracy"] == [None, None, 1.0, None, 0.5]
    assert bins["confidence"][2] == pytest.approx(0.6) and bins["confidence"][4] == pytest.approx(0.9)
    assert bins["bin_lower"][0] == 0.0 and bins["bin_upper"][-1] == 1.0


def test_brier_and_nll_hand_case():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    y = np.array([0, 1])
    assert brier(probs, y) == pytest.approx(0.25)
    assert nll(probs, y) == pytest.approx(np.log(2) / 2)
    assert np.isfinite(nll(np.array([[1.0, 0.0]]), np.array([1])))


def _overconfident(n=4000, k=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 1.5
    calibrated = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=p) for p in calibrated])  # labels drawn from the probs
    sharp = calibrated ** 4
    return sharp / sharp.sum(1, keepdims=True), y


def test_temperature_fixes_overconfidence():
    probs, y = _overconfident()
    T = fit_temperature(probs, y)
    assert 3.0 < T < 5.5  # power 4 sharpening is undone by T ~ 4
    after = apply_temperature(probs, T)
    assert nll(after, y) < nll(probs, y) - 0.1
    assert ece(after, y) < ece(probs, y)


def test_apply_temperature_identity_and_validation():
    probs, _ = _overconfident(n=50)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, atol=1e-9)
    with pytest.raises(ValueError):
        apply_temperature(probs, 0.0)
