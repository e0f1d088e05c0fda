"""GPU checks (issue 16, part 4) and the backend-agnostic import rule they rely on.

`gpu`-marked tests run on a GPU machine through `bash benchmarks/gpu.sh` (`pytest -m gpu`), on the
JAX or torch backend (that machine has no TensorFlow). Without a GPU they skip; GPU_TESTS_ON_CPU=1
runs them on the CPU anyway (to check the tests themselves, slowly). They train the project's real
models through the project's own fit loop (pipeline.training.fit) under the policy
pipeline.device.configure picks on a GPU (mixed_float16), and under mixed_bfloat16.

The one fast test here is not gpu-marked: it imports every project module benchmarks/gpu.py uses,
and builds the models it benchmarks, in a Python where `import tensorflow` fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_SCRIPT = ROOT / "benchmarks" / "gpu.py"
MIXED = ("mixed_float16", "mixed_bfloat16")


@pytest.fixture
def gpu():
    """Skip without a GPU (unless GPU_TESTS_ON_CPU=1); restore the float32 policy afterwards."""
    import keras

    from pipeline.device import gpu_available
    if not (gpu_available() or os.environ.get("GPU_TESTS_ON_CPU") == "1"):
        pytest.skip(f"no GPU on the {keras.backend.backend()} backend (pipeline.device.gpu_available() is False)")
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()


def _set_policy(policy: str) -> str:
    import keras

    from pipeline import device
    if policy == "mixed_float16":
        # What the pipeline does with mixed_precision: auto (params.yaml) on a GPU; "on" forces it on a CPU.
        got = device.configure("on" if os.environ.get("GPU_TESTS_ON_CPU") == "1" else "auto")
        assert got == "mixed_float16"
    else:
        keras.mixed_precision.set_global_policy(policy)
    assert keras.mixed_precision.global_policy().name == policy
    return policy


def _ecg_data(n: int, window: int, channels: int, n_rr: int, n_classes: int, seed: int):
    """Beats whose class shows in their level and RR features: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    beat = 0.3 * rng.standard_normal((n, window, channels)).astype(np.float32) + (y[:, None, None] - 2) * 0.5
    rr = (0.8 + 0.1 * y[:, None] + 0.02 * rng.standard_normal((n, n_rr))).astype(np.float32)
    return {"beat": beat.astype(np.float32), "rr": rr}, y


def _assert_mixed(model, policy: str, output_layer: str):
    import keras

    compute = "float16" if policy == "mixed_float16" else "bfloat16"
    convs = [layer for layer in _leaves(model) if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D))]
    assert convs and all(layer.dtype_policy.name == policy for layer in convs)
    assert all(layer.compute_dtype == compute and layer.variable_dtype == "float32" for layer in convs)
    out = model.get_layer(output_layer)
    assert out.dtype_policy.name == "float32" and out.compute_dtype == "float32"


def _leaves(model):
    for layer in model.layers:
        yield from (_leaves(layer) if hasattr(layer, "layers") else [layer])


@pytest.mark.gpu
@pytest.mark.parametrize("policy", MIXED)
@pytest.mark.parametrize("name", ["lenet1d", "dilated1d"])
def test_ecg_trains_under_mixed_precision(gpu, tmp_path, name, policy):
    """The real ECG model (params defaults: augmentation on) trains through pipeline.training.fit:
    finite, falling loss; convs compute in 16 bit, the softmax layer stays float32, and so does the
    saved-and-reloaded best model's output."""
    from ecg import models, train_config
    from pipeline.losses import make_loss
    from pipeline.training import FitConfig, fit

    _set_policy(policy)
    cfg = train_config.EcgTrain()  # the dataclass defaults, not the working copy's params.yaml
    kwargs = cfg.model_kwargs(name)
    assert kwargs["augment"], "the test must cover the augmentation layer the pipeline trains with"
    window, n_rr, n_classes = 253, 5, 5
    x, y = _ecg_data(768, window, kwargs["channels"], n_rr, n_classes, seed=0)
    xv, yv = _ecg_data(256, window, kwargs["channels"], n_rr, n_classes, seed=1)
    built = []

    def build():
        model = models.build(name, window, n_rr, n_classes, **kwargs)[0]
        built.append(model)
        return model

    fit_cfg = FitConfig(epochs=3, batch_size=64, learning_rate=1e-3, patience=3, min_delta=0.0)
    best, state = fit(build, make_loss("ce"), (x, y), (xv, yv), [0, 1, 2, 3], fit_cfg, tmp_path / "run",
                      fingerprint="gpu-test", seed=0, verbose=0)
    losses = state["history"]["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], f"loss did not fall under {policy}: {losses}"
    _assert_mixed(built[0], policy, "probs")
    _assert_mixed(best, policy, "probs")
    probs = np.asarray(best.predict(xv, verbose=0))
    assert probs.dtype == np.float32 and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("policy", MIXED)
def test_vision_trains_under_mixed_precision(gpu, tmp_path, policy):
    """VGG16 classifier as train_vision's finetune regime builds it (augmentation layers, block5 and
    the head trainable) trains with finite, falling loss; predictions stay float32."""
    import keras

    from pipeline.losses import make_loss
    from pipeline.training import FitConfig, fit
    from vision.augment import Augment, build_augment
    from vision.models import build_backbone, build_classifier, set_trainable

    _set_policy(policy)
    size, n_classes = 32, 3
    rng = np.random.default_rng(0)

    def images(n):
        y = rng.integers(0, n_classes, n)
        x = np.clip(40 + 80 * y[:, None, None, None] + 20 * rng.standard_normal((n, 28, 28, 1)), 0, 255)
        return x.astype(np.uint8), y

    (x, y), (xv, yv) = images(256), images(96)
    built = []

    def build():
        model = build_classifier(build_backbone("vgg16", (size, size, 3)), n_classes, input_shape=(28, 28, 1),
                                 augment=build_augment(Augment(flip="horizontal"), seed=0))
        set_trainable(model, "finetune", "block5")
        built.append(model)
        return model

    fit_cfg = FitConfig(epochs=3, batch_size=32, learning_rate=1e-4, patience=3, min_delta=0.0)
    best, state = fit(build, make_loss("ce"), (x, y), (xv, yv), list(range(n_classes)), fit_cfg, tmp_path / "run",
                      fingerprint="gpu-test", seed=0, verbose=0)
    losses = state["history"]["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    _assert_mixed(built[0], policy, "predictions")
    _assert_mixed(best, policy, "predictions")
    out = best(keras.ops.convert_to_tensor(xv[:8].astype(np.float32)), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


# ----------------------------------------------------------------------------- backend-agnostic imports

_GPU_PROBE = """
spec = importlib.util.spec_from_file_location("gpu_bench", os.path.join(ROOT, "benchmarks", "gpu.py"))
gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu)
out["modules"] = {}
for name in gpu.PROJECT_MODULES:
    try:
        importlib.import_module(name)
        out["modules"][name] = "ok"
    except Exception:
        out["modules"][name] = traceback.format_exc(limit=3)
from ecg import models, train_config
from vision.models import build_backbone, build_classifier
out["ecg_params"] = {n: models.build(n, 253, 5, 5, **train_config.EcgTrain().model_kwargs(n))[1]["params"]
                     for n in ("lenet1d", "dilated1d")}
vgg = build_classifier(build_backbone("vgg16", (224, 224, 3)), 10)
out["vgg_forward_flops"] = gpu.forward_flops(vgg)
"""


def test_gpu_benchmark_modules_import_without_tensorflow():
    """The GPU machine has no TensorFlow: every project module benchmarks/gpu.py imports must import, and
    the models it benchmarks must build, where `import tensorflow` fails (tests/no_tf.py: strict on JAX
    when this Python has it, else on the TensorFlow backend refusing the imports project files make).
    Also checks the FLOP count the bf16-peak fraction rests on."""
    from tests.no_tf import run_without_tensorflow
    out = run_without_tensorflow(_GPU_PROBE)
    failed = {name: tb for name, tb in out["modules"].items() if tb != "ok"}
    assert not failed, failed
    assert out["ecg_params"]["lenet1d"] > 0 and out["ecg_params"]["dilated1d"] > 0
    # VGG16's 13 convs at 224 px: 15.35 GMACs (Simonyan & Zisserman; 15.47 with the 3 FC layers this
    # classifier replaces by a small head), so ~30.7 GFLOP forward.
    assert 30.6e9 < out["vgg_forward_flops"] < 30.8e9, out["vgg_forward_flops"]


def test_peak_table_matches_card_names():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_bench_peaks", GPU_SCRIPT)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)  # imports nothing heavy at module level
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "H100")
    assert gpu.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert gpu.peak_tflops("NVIDIA H200")[0] == 989.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert gpu.peak_tflops("NVIDIA L40S")[0] == 362.0 and gpu.peak_tflops("NVIDIA L4")[0] == 121.0
    assert gpu.peak_tflops("CPU (x86_64)") == (None, None)


@pytest.mark.slow
def test_quick_benchmark_runs_every_workload(tmp_path):
    """`benchmarks/gpu.py --quick` (the CPU check of the GPU script, ~20 s) measures every workload and
    writes its table and JSON; on this backend, whatever it is."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(GPU_SCRIPT), "--quick", "--out", str(tmp_path / "t.md"),
                           "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads((tmp_path / "r.json").read_text())
    rows = out["rows"]
    assert [r["workload"].split(" ")[:2] for r in rows] == [["ECG", "lenet1d"], ["ECG", "dilated1d"], ["VGG16", "32px"]]
    assert all("error" not in r and r["rate"] > 0 and np.isfinite(r["final_loss"]) for r in rows), rows
    assert 0.62 < rows[2]["forward_gflop"] < 0.64  # VGG16 convs at 32 px: (32/224)^2 x 30.7 GFLOP
    table = (tmp_path / "t.md").read_text()
    assert "QUICK MODE" in table and out["card"] in table and out["backend"] in table
