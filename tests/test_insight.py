"""pipeline.insight.with_activation: every plain ReLU replaced, nothing else changed."""
import keras
import numpy as np
import pytest

from pipeline.analysis import dead_units, relu_layers
from pipeline.insight import with_activation


def tiny():
    x = keras.Input((16, 1), name="beat")
    h = keras.layers.Conv1D(4, 3, use_bias=False, name="c1")(x)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.Activation("relu", name="r1")(h)
    h = keras.layers.Conv1D(4, 3, activation="relu", name="c2")(h)
    h = keras.layers.ReLU(name="r2")(h)
    h = keras.layers.GlobalAveragePooling1D(name="gap")(h)
    h = keras.layers.Dense(8, activation="relu", name="d1")(h)
    return keras.Model(x, keras.layers.Dense(3, activation="softmax", name="probs")(h), name="tiny")


def test_every_relu_replaced_and_the_rest_kept(tmp_path):
    m = tiny()
    assert len(relu_layers(m)) == 4
    leaky = with_activation(m, "leaky_relu", negative_slope=0.1)
    assert [layer.name for layer in leaky.layers] == [layer.name for layer in m.layers]
    assert relu_layers(leaky) == []
    assert isinstance(leaky.get_layer("r1"), keras.layers.LeakyReLU)
    assert leaky.get_layer("r1").negative_slope == pytest.approx(0.1)
    assert leaky.get_layer("probs").get_config()["activation"] == "softmax"
    assert leaky.count_params() == m.count_params()
    # same architecture: the weights carry over, and the outputs then differ only through negative inputs
    leaky.set_weights(m.get_weights())
    x = np.random.default_rng(0).normal(size=(8, 16, 1)).astype("float32")
    d = leaky.get_layer("c2").activation(keras.ops.convert_to_tensor(np.array([-2.0, 3.0], "float32")))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(d), [-0.2, 3.0], rtol=1e-6)
    assert leaky.predict(x, verbose=0).shape == (8, 3)
    path = tmp_path / "leaky.keras"  # it saves and reloads (no lambda in the config)
    leaky.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), leaky.predict(x, verbose=0), rtol=1e-6)
    gelu = with_activation(m, "gelu")
    assert gelu.get_layer("r2").get_config()["activation"] == "gelu"


def test_the_dead_unit_counter_sees_relus_only():
    m = tiny()
    x = np.random.default_rng(1).normal(size=(32, 16, 1)).astype("float32")
    assert len(dead_units(m, x)) == 4  # one entry per ReLU layer
    assert dead_units(with_activation(m), x) == {}  # leaky units pass gradient: none can die


def test_nested_members_and_errors():
    a, b = tiny(), tiny()
    inp = keras.Input((16, 1), name="beat")
    a.name, b.name = "fold0_tiny", "fold1_tiny"
    ens = keras.Model(inp, keras.layers.Average()([a(inp), b(inp)]))
    out = with_activation(ens)
    members = [layer for layer in out.layers if isinstance(layer, keras.Model)]
    assert len(members) == 2 and all(relu_layers(mm) == [] for mm in members)
    with pytest.raises(ValueError, match="activation must be one of"):
        with_activation(tiny(), "swish2")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="tanh")])
    with pytest.raises(ValueError, match="no ReLU"):
        with_activation(plain)
