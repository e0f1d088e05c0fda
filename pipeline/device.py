"""Accelerator detection and precision policy, for whichever Keras backend is active."""
from __future__ import annotations

import keras


def gpu_available() -> bool:
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf
            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax
            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch
            return torch.cuda.is_available()
    except Exception:  # a broken accelerator stack means CPU
        return False
    return False


def configure(mixed_precision: str = "auto") -> str:
    """Set the global dtype policy: mixed_float16 on a GPU when 'auto', float32 otherwise."""
    use_mixed = mixed_precision == "on" or (mixed_precision == "auto" and gpu_available())
    policy = "mixed_float16" if use_mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy
