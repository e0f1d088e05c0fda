"""MLflow tracking: runs reopen, metric keys are sanitised, logged models load back and score."""
import mlflow
import numpy as np
import pytest

from ecg import models
from pipeline import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the default artifact location is ./mlruns
    return tmp_path


def test_metric_key_sanitised():
    assert tracking.metric_key("test.per_class.normal, benign.f1") == "test.per_class.normal_benign.f1"
    assert tracking.metric_key("ds2.per_class.N.se") == "ds2.per_class.N.se"


def test_evaluation_joins_training_run_and_model_loads_back(store):
    with tracking.run("ecg-test", "tiny") as ml:
        tracking.log_params(ml, {"model": "lenet1d", "fit": {"epochs": 1}})
        tracking.log_history(ml, {"loss": [1.0, 0.5]})
        run_id = ml.active_run().info.run_id
    model, _ = models.build("lenet1d", 33, 5, 5, channels=2, width=1)
    fig = store / "fig.png"
    fig.write_bytes(b"\x89PNG\r\n\x1a\n")
    got_id, uri = tracking.log_evaluation("ecg-test", "tiny", run_id,
                                          {"macro_f1": 0.5, "per_class": {"S": {"f1": None, "se": 0.25}}},
                                          [fig], model, "ds2.")
    assert got_id == run_id  # the evaluation lands in the run that training opened
    run = mlflow.get_run(run_id)
    assert run.data.metrics["ds2.macro_f1"] == 0.5 and run.data.metrics["ds2.per_class.S.se"] == 0.25
    assert "ds2.per_class.S.f1" not in run.data.metrics  # undefined stays undefined, not 0
    assert run.data.params["fit.epochs"] == "1"
    x = {"beat": np.random.default_rng(0).normal(size=(4, 33, 2)).astype("float32"),
         "rr": np.ones((4, 5), "float32")}
    loaded = mlflow.keras.load_model(uri)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)


def test_unknown_run_id_starts_a_new_run(store):
    with tracking.run("ecg-test", "fresh", run_id="0" * 32) as ml:
        assert ml.active_run().info.run_id != "0" * 32
