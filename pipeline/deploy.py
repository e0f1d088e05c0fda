"""Deployment measurement and export toolbox: LiteRT/TFLite export, latency, machine peaks,
a per-layer roofline, a sparse-matmul benchmark and a quantization-noise model.

Domain-free: models are Keras 3 models with named inputs, data are dicts of arrays keyed by
those names. TensorFlow is imported only inside the functions that need it (export and the
TFLite runner), so this module imports on any Keras backend; those functions raise a clear
error where TensorFlow is missing. Everything else needs only numpy/scipy/keras.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

# Layers whose weights the roofline and the noise model treat as matmul kernels.
KERNEL_LAYERS = ("Conv1D", "Conv2D", "Dense")


def _tf():
    """Import TensorFlow or raise a clear error (this module stays importable without it)."""
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("pipeline.deploy: TFLite export/inference needs TensorFlow "
                           f"(pip install tensorflow); it is not importable here: {exc}") from None
    return tf


def _n_rows(x: Mapping[str, np.ndarray]) -> int:
    if not x:
        raise ValueError("empty input dict")
    sizes = {k: len(v) for k, v in x.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"inputs have different numbers of rows: {sizes}")
    return next(iter(sizes.values()))


def _take(x: Mapping[str, np.ndarray], start: int, stop: int) -> dict:
    return {k: np.asarray(v[start:stop], dtype=np.float32) for k, v in x.items()}


def _check_keys(x: Mapping[str, np.ndarray], names, what: str) -> None:
    missing = [n for n in names if n not in x]
    if missing:
        raise KeyError(f"{what}: input(s) {missing} missing from the data dict (has keys {sorted(x)}; "
                       f"the model expects {list(names)})")


# --------------------------------------------------------------------------- export

def export_tflite(model, path: Path | str, *, int8_representative: Mapping[str, np.ndarray] | None = None,
                  n_rep: int = 500) -> int:
    """Write `model` as a LiteRT/TFLite flatbuffer at `path` atomically; return its size in bytes.

    Parameters
    ----------
    model : keras.Model with named inputs (TensorFlow backend).
    path : output .tflite file; written to a temporary file beside it, then renamed.
    int8_representative : None for float32; else a dict {input name: array} whose first `n_rep`
        rows calibrate FULL-integer quantization (int8 weights, per-channel for conv/dense
        kernels, and int8 activations; only int8 builtin ops allowed, conversion fails rather
        than silently keeping float ops). The model's input and output tensors stay float32:
        the graph quantizes at the input and dequantizes at the output, so callers feed and
        read float32 exactly as for the float model.

    Path used: ``model.export(dir, format="tf_saved_model")`` then
    ``TFLiteConverter.from_saved_model``; the flatbuffer keeps the serving signature, whose
    input names are the Keras input names (the raw tensors are named e.g.
    ``serving_default_beat:0`` and may come in any order; `TFLiteRunner` maps by name).
    """
    tf = _tf()
    path = Path(path)
    names = [t.name for t in model.inputs]
    if int8_representative is not None:
        _check_keys(int8_representative, names, f"int8 representative data for {path}")
        rep = {n: np.asarray(int8_representative[n], dtype=np.float32) for n in names}
        n = min(int(n_rep), _n_rows(rep))
        if n < 1:
            raise ValueError(f"{path}: empty representative dataset")
    workdir = Path(tempfile.mkdtemp(prefix="tflite_export_"))
    try:
        saved = workdir / "saved_model"
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            model.export(str(saved), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if int8_representative is not None:
            def representative():
                for i in range(n):
                    yield {k: v[i:i + 1] for k, v in rep.items()}
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.float32
            converter.inference_output_type = tf.float32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # calibration builds a tf.lite.Interpreter (deprecation notice)
            flatbuffer = converter.convert()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(flatbuffer)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path.stat().st_size


def _input_name(raw: str) -> str:
    """'serving_default_beat:0' -> 'beat' (fallback when a flatbuffer has no signature)."""
    name = raw.split(":")[0]
    for prefix in ("serving_default_",):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


class TFLiteRunner:
    """Batch inference with a TFLite flatbuffer through ``tf.lite.Interpreter``.

    Inputs are matched to the data dict by name: the serving signature's input names when the
    flatbuffer has one, else the tensor names with ``serving_default_`` and ``:N`` stripped.
    """

    def __init__(self, path: Path | str, num_threads: int = 1):
        tf = _tf()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: TFLite model not found")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice (LiteRT)
            self.interpreter = tf.lite.Interpreter(model_path=str(self.path), num_threads=num_threads)
        self.num_threads = num_threads
        details = {d["index"]: d for d in self.interpreter.get_input_details()}
        self.inputs: dict[str, dict] = {}
        signatures = self.interpreter.get_signature_list()
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            runner = self.interpreter.get_signature_runner(key)
            for name, d in runner.get_input_details().items():
                self.inputs[name] = details[d["index"]]
            outs = runner.get_output_details()
            self.output_index = next(iter(outs.values()))["index"]
        else:
            for d in details.values():
                self.inputs[_input_name(d["name"])] = d
            self.output_index = self.interpreter.get_output_details()[0]["index"]
        self._batch = None

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def _resize(self, batch: int) -> None:
        if batch == self._batch:
            return
        for d in self.inputs.values():
            shape = list(d["shape_signature"] if len(d["shape_signature"]) else d["shape"])
            shape[0] = batch
            self.interpreter.resize_tensor_input(d["index"], shape, strict=False)
        self.interpreter.allocate_tensors()
        self._batch = batch

    def predict(self, x: Mapping[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Output (probabilities) for the rows of `x`, a dict {input name: array}."""
        _check_keys(x, self.inputs, str(self.path))
        n = _n_rows({k: x[k] for k in self.inputs})
        out = []
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            self._resize(stop - start)
            for name, d in self.inputs.items():
                self.interpreter.set_tensor(d["index"], np.ascontiguousarray(x[name][start:stop], dtype=d["dtype"]))
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output_index).copy())
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def tflite_size_breakdown(path: Path | str) -> dict:
    """Where a flatbuffer's bytes go: constant tensor data, tensor-name strings, quantization
    parameters (scale float32 + zero point int64 per channel) and the rest (graph structure,
    signatures, metadata). Small models carry a fixed overhead that int8 does not shrink."""
    tf = _tf()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: TFLite model not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    const = names = qparams = n = 0
    for d in interpreter.get_tensor_details():
        n += 1
        names += len(d["name"].encode())
        qparams += 12 * len(d["quantization_parameters"]["scales"])
        try:  # before allocate_tensors only constant tensors have data
            const += interpreter.get_tensor(d["index"]).nbytes
        except ValueError:
            pass
    size = path.stat().st_size
    return {"file_bytes": size, "tensors": n, "constant_bytes": const, "name_bytes": names,
            "quant_param_bytes": qparams, "other_bytes": size - const - names - qparams}


# --------------------------------------------------------------------------- latency

def keras_fn(model, *, compiled: bool = True, jit_compile: bool = False) -> Callable[[dict], np.ndarray]:
    """A batch -> numpy probs function for latency runs.

    On the TensorFlow backend with ``compiled=True``: ``tf.function`` of
    ``model(x, training=False)`` with a batch-polymorphic input signature (one trace, graph
    execution, no per-call ``model.predict`` setup; ``jit_compile=True`` compiles it with XLA,
    one compilation per batch size). Otherwise the eager call
    ``model(x, training=False)`` (any backend). Either way the result is converted to numpy.
    """
    import keras

    if compiled and keras.backend.backend() == "tensorflow":
        tf = _tf()
        spec = {t.name: tf.TensorSpec((None,) + tuple(t.shape[1:]), tf.float32) for t in model.inputs}
        graph = tf.function(lambda inputs: model(inputs, training=False), input_signature=[spec],
                            reduce_retracing=True, jit_compile=jit_compile)
        return lambda xb: graph({k: xb[k] for k in spec}).numpy()
    return lambda xb: keras.ops.convert_to_numpy(model(xb, training=False))


def tflite_fn(runner: TFLiteRunner) -> Callable[[dict], np.ndarray]:
    """A batch -> probs function for latency runs (one invoke per call: batch_size = the batch)."""
    return lambda xb: runner.predict(xb, batch_size=max(1, _n_rows(xb)))


def latency_per_item(fn: Callable[[dict], object], x: Mapping[str, np.ndarray], batch: int, *,
                     repeats: int = 50, warmup: int = 5) -> dict:
    """Seconds per item of ``fn(batch rows of x)``: median and p90 over `repeats` timed calls.

    Rows are taken cyclically from `x` (repeated when it has fewer than `batch` rows); each
    repeat uses the next slice so caches see different data. Timed with time.perf_counter.
    """
    n = _n_rows(x)
    if batch < 1 or repeats < 1:
        raise ValueError(f"batch ({batch}) and repeats ({repeats}) must be >= 1")
    if n < batch:
        reps = -(-batch // n)
        x = {k: np.concatenate([np.asarray(v)] * reps) for k, v in x.items()}
        n = reps * n
    slices = [_take(x, s, s + batch) for s in range(0, n - batch + 1, batch)][:max(repeats, 1)]
    for i in range(warmup):
        fn(slices[i % len(slices)])
    times = np.empty(repeats)
    for i in range(repeats):
        xb = slices[i % len(slices)]
        t0 = time.perf_counter()
        fn(xb)
        times[i] = time.perf_counter() - t0
    per_item = times / batch
    return {"batch": int(batch), "repeats": int(repeats), "median_s": float(np.median(per_item)),
            "p90_s": float(np.percentile(per_item, 90)), "min_s": float(per_item.min()),
            "median_call_s": float(np.median(times))}


# --------------------------------------------------------------------------- machine peaks

def _blas_name() -> str:
    try:
        from threadpoolctl import threadpool_info
        info = [f"{d.get('internal_api')} {d.get('version')} ({d.get('num_threads')} threads)"
                for d in threadpool_info() if d.get("user_api") == "blas"]
        return "; ".join(info) or "unknown BLAS"
    except Exception:  # threadpoolctl missing or failing: the description is informative only
        return "unknown BLAS"


def _best_rate(work: Callable[[], None], amount: float, budget_s: float, min_runs: int = 3) -> float:
    work()  # warm up (page faults, BLAS thread start)
    best, t_end, runs = 0.0, time.perf_counter() + budget_s, 0
    while runs < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        work()
        best = max(best, amount / (time.perf_counter() - t0))
        runs += 1
    return best


def machine_peaks(seconds: float = 4.0, *, n_matmul: int = 1024, stream_mb: int = 128) -> dict:
    """Measured peak float32 matmul FLOP/s and memory bandwidth of this machine (best of runs).

    Peak: ``a @ b`` with float32 (n, n) matrices, 2 n^3 FLOP per product, with all BLAS threads
    and (threadpoolctl) one thread. Bandwidth: ``np.copyto`` between two `stream_mb` MB float32
    arrays, counting read + write bytes (2 x size; write-allocate traffic is not counted, so the
    figure is a STREAM-copy-like lower bound). `seconds` is split over the three measurements.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n_matmul, n_matmul), dtype=np.float32)
    b = rng.standard_normal((n_matmul, n_matmul), dtype=np.float32)
    c = np.empty_like(a)
    flop = 2.0 * n_matmul ** 3
    budget = seconds / 3
    peak_all = _best_rate(lambda: np.matmul(a, b, out=c), flop, budget)
    peak_one = None
    try:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=1, user_api="blas"):
            peak_one = _best_rate(lambda: np.matmul(a, b, out=c), flop, budget)
    except ImportError:
        pass
    n = stream_mb * (1 << 20) // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    bandwidth = _best_rate(lambda: np.copyto(dst, src), 2.0 * src.nbytes, budget)
    return {"peak_gflops": peak_all / 1e9,
            "peak_gflops_1thread": None if peak_one is None else peak_one / 1e9,
            "bandwidth_gbs": bandwidth / 1e9,
            "method": (f"float32 numpy matmul {n_matmul}x{n_matmul} (2n^3 FLOP, best of runs) via {_blas_name()}; "
                       f"bandwidth from np.copyto of {stream_mb} MB float32 arrays counting read+write bytes; "
                       f"os.cpu_count()={os.cpu_count()}")}


# --------------------------------------------------------------------------- roofline

def _walk(model, prefix: str = ""):
    """Leaf layers of a (possibly nested) model with their names ("member/layer" when nested)."""
    for layer in getattr(model, "layers", []):
        if getattr(layer, "layers", None):
            yield from _walk(layer, f"{prefix}{layer.name}/")
        else:
            yield f"{prefix}{layer.name}", layer


def _shape(tensor) -> tuple:
    if isinstance(tensor, (list, tuple)):
        raise ValueError("layer has several inputs/outputs")
    return tuple(tensor.shape[1:])


def _layer_io(layer) -> tuple[tuple, tuple]:
    try:
        return _shape(layer.input), _shape(layer.output)
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}): cannot read its input/output shape "
                         f"(called more than once, or never built?): {exc}") from None


def _size(shape: tuple) -> int:
    return int(np.prod([int(d) for d in shape])) if shape else 1


def _macs(layer, in_shape: tuple, out_shape: tuple) -> int:
    """Multiply-accumulates per input item of a Conv/Dense layer (0 for other layers)."""
    kind = type(layer).__name__
    if kind in ("Conv1D", "Conv2D"):
        kernel = layer.kernel.shape  # (*k, cin/groups, filters)
        per_output = _size(tuple(kernel[:-1]))  # k * cin/groups
        # Every output position (out_shape already accounts for stride, padding and dilation;
        # "same" padding still multiplies the zero-padded taps, as dense kernels do).
        return _size(out_shape) * per_output
    if kind == "Dense":
        units_in, units = layer.kernel.shape
        return _size(out_shape[:-1]) * int(units_in) * int(units)
    return 0


def layer_costs(model, batch: int = 1, *, peaks: dict | None = None, bytes_per_value: float = 4.0,
                include_weightless: bool = False, fold_batchnorm: bool = False) -> list[dict]:
    """Per-layer roofline table for a Keras model (nested models and ensembles are recursed).

    One row per layer with weights (Conv, Dense, BatchNormalization, ...), plus weightless layers
    when `include_weightless`. Fields: name, type, params, nonzero_params, macs and flops per input
    item (2 x MACs for conv/dense, bias adds not counted; BatchNormalization 2 FLOP per element,
    though converters fold it into the previous conv; weightless layers 1 FLOP per output element),
    bytes per item (weights / batch + input + output activations, `bytes_per_value` each),
    intensity (FLOP/byte) and, given `peaks` (from `machine_peaks`), attainable_gflops =
    min(peak, intensity x bandwidth), bound ("memory"/"compute") and the roofline time per item.
    The last row, name "TOTAL", sums flops, params and bytes. ``fold_batchnorm=True`` leaves the
    BatchNormalization rows out, as TFLite folds them into the preceding conv (its FLOPs and
    activation traffic vanish; its 4 x C parameters become the conv's C biases, not counted).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    rows = []
    for name, layer in _walk(model):
        params = [np.asarray(w) for w in layer.get_weights()] if layer.weights else []
        if not params and not include_weightless:
            continue
        if type(layer).__name__ == "InputLayer" or (fold_batchnorm and type(layer).__name__ == "BatchNormalization"):
            continue
        in_shape, out_shape = _layer_io(layer)
        kind = type(layer).__name__
        macs = _macs(layer, in_shape, out_shape)
        if kind in KERNEL_LAYERS:
            flops = 2 * macs
        elif kind == "BatchNormalization":
            flops = 2 * _size(out_shape)
        else:
            flops = _size(out_shape)
        n_params = int(sum(p.size for p in params))
        bytes_item = (n_params / batch + _size(in_shape) + _size(out_shape)) * bytes_per_value
        rows.append({"name": name, "type": kind, "input_shape": list(in_shape), "output_shape": list(out_shape),
                     "params": n_params, "nonzero_params": int(sum(np.count_nonzero(p) for p in params)),
                     "macs": int(macs), "flops": int(flops), "bytes": float(bytes_item),
                     "intensity": flops / bytes_item if bytes_item else float("inf")})
    total_bytes = sum(r["bytes"] for r in rows)
    total = {"name": "TOTAL", "type": "total", "params": sum(r["params"] for r in rows),
             "nonzero_params": sum(r["nonzero_params"] for r in rows), "macs": sum(r["macs"] for r in rows),
             "flops": sum(r["flops"] for r in rows), "bytes": float(total_bytes)}
    total["intensity"] = total["flops"] / total_bytes if total_bytes else float("inf")
    rows.append(total)
    if peaks is not None:
        peak = peaks["peak_gflops"] * 1e9
        bw = peaks["bandwidth_gbs"] * 1e9
        for r in rows:
            attainable = min(peak, r["intensity"] * bw)
            r["attainable_gflops"] = attainable / 1e9
            r["bound"] = "memory" if r["intensity"] * bw < peak else "compute"
            r["roofline_s_per_item"] = r["flops"] / attainable if attainable else 0.0
        total["ridge_intensity"] = peak / bw
    return rows


# --------------------------------------------------------------------------- sparse execution

def matmul_view(layer) -> tuple[np.ndarray, int]:
    """A Dense or Conv1D layer as one matmul: (weight matrix (in, out), rows per input item).

    Conv1D becomes im2col: rows = output positions, in = kernel x in_channels (groups=1 only).
    """
    kind = type(layer).__name__
    if kind not in ("Dense", "Conv1D"):
        raise ValueError(f"{layer.name}: matmul_view supports Dense and Conv1D, not {kind}")
    kernel = np.asarray(layer.kernel)
    if kind == "Dense":
        _, out_shape = _layer_io(layer)
        return kernel, _size(out_shape[:-1])
    if kind == "Conv1D":
        if getattr(layer, "groups", 1) != 1:
            raise ValueError(f"{layer.name}: grouped convolutions are not supported")
        _, out_shape = _layer_io(layer)
        return kernel.reshape(-1, kernel.shape[-1]), int(out_shape[0])
    raise ValueError(f"{layer.name}: matmul_view supports Dense and Conv1D, not {kind}")


def magnitude_prune(w: np.ndarray, sparsity: float) -> np.ndarray:
    """`w` with the fraction `sparsity` of smallest-magnitude entries set to zero (unstructured)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k = int(round(sparsity * w.size))
    out = np.array(w, dtype=np.float32, copy=True)
    if k:
        idx = np.argpartition(np.abs(out).ravel(), k - 1)[:k]
        out.ravel()[idx] = 0
    return out


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def sparse_dense_speedup(weight: np.ndarray, sparsity_levels=(0.0, 0.5, 0.8, 0.9, 0.95), batches=(1, 256), *,
                         rows_per_item: int = 1, repeats: int = 20, threads: int | None = 1,
                         seed: int = 0) -> list[dict]:
    """Measured dense (numpy) vs CSR (scipy.sparse) matmul time for a magnitude-pruned weight.

    ``weight`` is (in, out) (see `matmul_view`); each item contributes `rows_per_item` rows of
    random input (a conv's output positions). Per sparsity s and batch B: dense ``X @ W`` with the
    pruned W (zeros still multiplied), sparse ``csr(W.T) @ X.T``; median seconds over `repeats`.
    `threads` limits BLAS threads (threadpoolctl; scipy.sparse is single-threaded, so 1 is the fair
    comparison; None leaves them). Rows: sparsity, batch, dense_s, sparse_s, speedup (dense/sparse),
    naive_speedup = 1/(1-s), nnz.
    """
    from scipy import sparse

    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise ValueError(f"weight must be a 2-D (in, out) matrix, got shape {weight.shape}")
    rng = np.random.default_rng(seed)
    limiter = contextlib.nullcontext()
    if threads is not None:
        try:
            from threadpoolctl import threadpool_limits
            limiter = threadpool_limits(limits=threads, user_api="blas")
        except ImportError:
            pass
    rows = []
    with limiter:
        for batch in batches:
            x = rng.standard_normal((batch * rows_per_item, weight.shape[0]), dtype=np.float32)
            xt = np.ascontiguousarray(x.T)
            for s in sparsity_levels:
                w = magnitude_prune(weight, s)
                csr = sparse.csr_matrix(w.T)
                dense_s = _time(lambda: x @ w, repeats)
                sparse_s = _time(lambda: csr @ xt, repeats)
                rows.append({"sparsity": float(s), "batch": int(batch), "rows": int(x.shape[0]),
                             "nnz": int(csr.nnz), "dense_s": dense_s, "sparse_s": sparse_s,
                             "speedup": dense_s / sparse_s if sparse_s else float("inf"),
                             "naive_speedup": 1.0 / (1.0 - s)})
    return rows


# --------------------------------------------------------------------------- quantization noise

def quant_step(w: np.ndarray, bits: int = 8, symmetric: bool = True, per_channel: bool = True,
               axis: int = -1) -> np.ndarray:
    """Quantization step of `w`, broadcastable to it.

    Symmetric (TFLite int8 weights): step = max|w| / (2^(bits-1) - 1), range [-127, 127] at 8 bits.
    Asymmetric (TFLite int8 activations): step = (max(w, 0) - min(w, 0)) / (2^bits - 1), the range
    always containing 0. Per channel: one step per index of `axis` (the output channel, last
    axis of Conv/Dense kernels); else one step for the tensor. Zero-range channels get step 0.
    """
    w = np.asarray(w, dtype=np.float64)
    if bits < 2:
        raise ValueError(f"bits must be >= 2, got {bits}")
    reduce = tuple(i for i in range(w.ndim) if i != axis % max(w.ndim, 1)) if per_channel and w.ndim else None
    if symmetric:
        return np.max(np.abs(w), axis=reduce, keepdims=True) / (2 ** (bits - 1) - 1)
    hi = np.maximum(np.max(w, axis=reduce, keepdims=True), 0)
    lo = np.minimum(np.min(w, axis=reduce, keepdims=True), 0)
    return (hi - lo) / (2 ** bits - 1)


def _kernel_layers(model):
    return [(name, layer) for name, layer in _walk(model) if type(layer).__name__ in KERNEL_LAYERS]


def _activation_noise_model(model, bits: int, seed: int):
    """A clone of `model` (sharing its layers and weights) that adds uniform noise of step
    (range of the batch's tensor incl. 0)/(2^bits - 1) to every leaf layer's output, clamped to the
    tensor's own [min, max] (a quantized value never leaves its calibrated range).

    Nested functional models are cloned recursively. The range is taken per call from the tensor
    itself (a stand-in for the converter's calibrated min/max)."""
    import keras
    from keras import ops

    class _QuantNoise(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seeds = keras.random.SeedGenerator(seed)

        def call(self, tensor):
            t_min, t_max = ops.min(tensor), ops.max(tensor)
            lo, hi = ops.minimum(t_min, 0.0), ops.maximum(t_max, 0.0)
            step = (hi - lo) / float(2 ** bits - 1)
            noisy = tensor + step * keras.random.uniform(ops.shape(tensor), -0.5, 0.5, seed=self.seeds)
            # a quantized tensor never leaves its calibrated range: clamp (keeps e.g. log(max(x, eps)) finite)
            return ops.clip(noisy, t_min, t_max)

    def noisy(tensor):
        return _QuantNoise()(tensor)

    def call_function(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if type(layer).__name__ in ("InputLayer", "Dropout", "BeatAugment") or hasattr(layer, "layers"):
            return out
        if isinstance(out, (list, tuple)):
            return type(out)(noisy(t) for t in out)
        return noisy(out)

    def clone_function(layer):
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):
            return keras.models.clone_model(layer, clone_function=clone_function, call_function=call_function)
        return layer  # shared: the clone uses (and sees noise injected into) the original weights

    return keras.models.clone_model(model, clone_function=clone_function, call_function=call_function)


def predict_quant_noise(model, x: Mapping[str, np.ndarray], *, bits: int = 8, draws: int = 5,
                        weights: bool = True, activations: bool = False, batch_size: int = 1024,
                        seed: int = 0) -> dict:
    """Monte-Carlo prediction of what quantization does to the outputs (keras/numpy only).

    Weights: every Conv/Dense kernel gets uniform noise of its symmetric per-output-channel step
    (TFLite int8 scheme; equivalent to quantizing the BN-folded kernel, because per-channel steps
    scale with the folded factor). Biases (int32 in TFLite) and BatchNormalization (folded) get
    none. Activations (``activations=True``): every leaf layer's output gets uniform noise of an
    asymmetric per-tensor step from that batch's range (see `_activation_noise_model`). Noise
    variance is step^2/12. The weights are restored afterwards, also on error.

    Returns mean_abs_dp (mean |p_noisy - p_clean| over items, classes and draws), max_mean_abs_dp,
    flip_rate (fraction of items whose argmax changes, averaged over draws), flip_rate_max,
    per-draw lists, and the clean and noisy argmax (`pred_clean`, `pred_draws` (draws, n)) so a
    caller can turn them into a predicted metric change.
    """
    import keras

    names = [t.name for t in model.inputs]
    _check_keys(x, names, "predict_quant_noise")
    x = {n: np.asarray(x[n], dtype=np.float32) for n in names}
    rng = np.random.default_rng(seed)

    def predict(m):
        return np.concatenate([keras.ops.convert_to_numpy(m(_take(x, s, s + batch_size), training=False))
                               for s in range(0, _n_rows(x), batch_size)])

    clean = predict(model)
    runner = _activation_noise_model(model, bits, seed) if activations else model
    kernels = [layer.kernel for _, layer in _kernel_layers(model)] if weights else []
    originals = [np.asarray(k.numpy() if hasattr(k, "numpy") else k) for k in kernels]
    steps = [quant_step(w, bits, symmetric=True, per_channel=True) for w in originals]
    dps, flips, preds = [], [], []
    try:
        for _ in range(draws):
            for var, w, step in zip(kernels, originals, steps):
                var.assign((w + step * rng.uniform(-0.5, 0.5, size=w.shape)).astype(w.dtype))
            noisy = predict(runner)
            dps.append(float(np.mean(np.abs(noisy - clean))))
            preds.append(noisy.argmax(-1))
            flips.append(float(np.mean(preds[-1] != clean.argmax(-1))))
    finally:
        for var, w in zip(kernels, originals):
            var.assign(w)
    max_dp = float(max(dps)) if dps else 0.0
    return {"bits": int(bits), "draws": int(draws), "weights": bool(weights), "activations": bool(activations),
            "n_kernels": len(kernels), "mean_abs_dp": float(np.mean(dps)) if dps else 0.0,
            "max_mean_abs_dp": max_dp, "flip_rate": float(np.mean(flips)) if flips else 0.0,
            "flip_rate_max": float(max(flips)) if flips else 0.0, "mean_abs_dp_draws": dps,
            "flip_rate_draws": flips, "pred_clean": clean.argmax(-1),
            "pred_draws": np.stack(preds) if preds else np.zeros((0, len(clean)), int)}
