"""Run a probe script in a fresh Python where `import tensorflow` fails, as on the GPU machine (JAX, no TensorFlow).

`run_without_tensorflow(body)` runs `body` after a meta-path finder that refuses `tensorflow`: every import in
"strict" mode (used when this Python has JAX: Keras runs on JAX), only the imports that project files make in
"project" mode (this project's lock has only TensorFlow, and Keras's own TensorFlow backend may load it).
`body` fills the dict `out`; the result comes back with `backend`, `attempts` (who asked for tensorflow) and
`tensorflow_loaded` added, after the checks every caller wants: the probe exited 0, ran on the intended
backend, no project file asked for tensorflow, and in strict mode tensorflow never loaded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PREAMBLE = textwrap.dedent("""
    import importlib, importlib.util, json, os, sys, traceback
    ROOT, MODE = sys.argv[1], sys.argv[2]
    attempts = []
    out = {}

    def project_file(path):
        return path.startswith(ROOT + os.sep) and os.sep + ".venv" + os.sep not in path

    class NoTensorFlow:
        # Refuses `tensorflow` (and its submodules): every import in "strict" mode, only those a project
        # file asks for in "project" mode; records who asked.
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                frame = sys._getframe(1)
                while frame and ("importlib" in frame.f_code.co_filename or "<frozen" in frame.f_code.co_filename):
                    frame = frame.f_back
                where = frame.f_code.co_filename if frame else "?"
                if MODE == "strict" or project_file(where):
                    attempts.append([name, where])
                    raise ImportError(f"tensorflow is blocked ({name}, asked by {where})")
            return None

    sys.meta_path.insert(0, NoTensorFlow())
    sys.path.insert(0, ROOT)
""")

_EPILOGUE = textwrap.dedent("""
    import keras
    out.update(backend=keras.backend.backend(), attempts=attempts, tensorflow_loaded="tensorflow" in sys.modules)
    print("RESULT " + json.dumps(out))
""")


def run_without_tensorflow(body: str, timeout: int = 300) -> dict:
    has_jax = subprocess.run([sys.executable, "-c", "import jax"], capture_output=True, timeout=120).returncode == 0
    mode, backend = ("strict", "jax") if has_jax else ("project", "tensorflow")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    script = _PREAMBLE + textwrap.dedent(body) + _EPILOGUE
    done = subprocess.run([sys.executable, "-c", script, str(ROOT), mode], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["backend"] == backend
    project = [a for a in out["attempts"] if ROOT.as_posix() in a[1] and "/.venv/" not in a[1]]
    assert not project, f"project files tried to import tensorflow: {project}"
    if mode == "strict":
        assert not out["tensorflow_loaded"]
    return out
