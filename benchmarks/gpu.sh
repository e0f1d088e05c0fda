#!/usr/bin/env bash
# The one command a GPU machine runs for issue 16 part 4 (under 8 minutes):
#   bash benchmarks/gpu.sh [--out FILE] [more benchmarks/gpu.py options]
# 1. picks the Keras backend: jax if it imports, else torch (the GPU machine has no TensorFlow);
#    an explicitly set KERAS_BACKEND is kept;
# 2. prints the device (nvidia-smi);
# 3. runs benchmarks/gpu.py (ECG training beats/s, VGG16 224 px fine-tune images/s, fraction of the
#    card's bf16 peak) and passes its options on (--out FILE also writes the table);
# 4. runs the GPU-marked tests: pytest -m gpu tests/test_gpu.py.
#
# The GPU image holds jax, torch, numpy, scipy, scikit-learn, pyyaml, h5py, rich, pytest, but not
# Keras nor its small dependencies namex and optree, and it cannot reach any package index. They
# travel as wheels in .whl/ (git-ignored), fetched beforehand on the development machine with
#   bash benchmarks/gpu.sh --fetch-wheels
# and carried by the device call (carry: [".whl"]); this script installs them into /tmp/site.
#
# Exit status: the benchmark's (non-zero if a workload failed) or pytest's, whichever failed; 3 when a
# required package is missing.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

if [ "${1:-}" = "--fetch-wheels" ]; then
    # On the development machine: the pinned versions of requirements.lock, for CPython 3.12 x86_64.
    pins=$(grep -E '^(keras|namex|optree)==' requirements.lock | sed 's/ .*//')
    [ "$(echo "$pins" | wc -l)" -eq 3 ] || { echo "requirements.lock lacks a keras/namex/optree pin" >&2; exit 3; }
    mkdir -p .whl
    # shellcheck disable=SC2086
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $pins || exit 3
    ls -l .whl
    exit 0
fi

if ! "$PY" -c "import keras" 2>/dev/null; then
    if ls .whl/keras-*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || exit 3
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
        echo "MISSING: keras (with namex and optree) is not installed and no .whl/keras-*.whl was carried." >&2
        echo "  On the development machine: bash benchmarks/gpu.sh --fetch-wheels; then pass carry: [\".whl\"]." >&2
        exit 3
    fi
fi

if [ -z "${KERAS_BACKEND:-}" ]; then
    if "$PY" -c "import jax" 2>/dev/null; then
        export KERAS_BACKEND=jax
    elif "$PY" -c "import torch" 2>/dev/null; then
        export KERAS_BACKEND=torch
    else
        echo "MISSING: neither jax nor torch imports with $PY; no Keras backend for this machine." >&2
        exit 3
    fi
fi
missing=$("$PY" - <<'EOF'
import importlib
names = ["keras", "numpy", "yaml", "sklearn", "pytest"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "MISSING Python packages: $missing" >&2
    exit 3
fi

echo "== device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi (no NVIDIA GPU)')"
echo "== KERAS_BACKEND=$KERAS_BACKEND, $("$PY" -c 'import keras, sys; print("keras", keras.__version__, "python", sys.version.split()[0])')"

status=0
echo "== benchmarks/gpu.py $*"
timeout 300 "$PY" benchmarks/gpu.py "$@" || status=$?
echo "== pytest -m gpu tests/test_gpu.py"
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider --durations=0 tests/test_gpu.py || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
echo "== done (exit $status)"
exit "$status"
