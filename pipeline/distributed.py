"""Run a training stage on N workers, its code unchanged: data-parallel on an existing engine.

    # on every worker, each with its own task index (TensorFlow's TF_CONFIG, as TF documents it):
    TF_CONFIG='{"cluster": {"worker": ["node1:12345", "node2:12345"]}, "task": {"type": "worker", "index": 0}}' \\
        python -m pipeline.distributed ecg.train --model dilated1d --loss focal
    # under Slurm (one task per node; TF's SlurmClusterResolver builds the cluster from SLURM_* variables):
    srun python -m pipeline.distributed --slurm vision.train --dataset breastmnist --model vgg16 ...

The launcher imports the stage module (`ecg.train`, `vision.train`, ...) and calls its `main(argv)`; without
TF_CONFIG (or with a one-task cluster) that is exactly `python -m <module> <args>`.

* TensorFlow backend: `tf.distribute.MultiWorkerMirroredStrategy`. Every variable is created under its scope,
  so the initial weights are broadcast from the chief, and Keras's `fit` splits each global batch
  (`fit.batch_size`) across the workers and all-reduces the gradients (TF's collective ops; nothing here
  exchanges gradients). `predict` gathers every worker's share, so each worker computes the same validation
  macro-F1 and takes the same early-stopping and checkpoint decisions.
* JAX backend: `keras.distribution.initialize` (from TF_CONFIG: the chief's address is the coordinator) and
  `keras.distribution.DataParallel` over all processes' devices. Keras treats a numpy batch as one process's
  share, so each process feeds its contiguous share of every global batch, and predictions (global arrays
  spread over the processes) are all-gathered on every process (`_share_batches_across_processes`).
* Chief-only writing: the chief (task `chief`, or `worker` 0 when the cluster has no chief) runs in the project
  root and writes the real outputs, checkpoints and MLflow runs. Every other worker runs in its own folder,
  `.distributed/<type>-<index>/`, whose inputs are links to the project's (code, params.yaml, data/) and whose
  `artifacts/` starts as a hard-linked mirror of the project's (pretrained backbones, checkpoints); what it
  writes stays there (the stages write by atomic rename, so a mirror never changes the chief's files), and its
  MLflow store is a local SQLite file there.
* Resume: before training, the workers compare a digest of the checkpoints each one sees (an all-gather). If
  they differ (no shared filesystem, or a worker's mirror is stale) the launch stops with an error that says so,
  instead of letting workers resume from different epochs and hang in a collective.

Keras 3.15 on TensorFlow's multi-worker strategy needs two small repairs (keras-team/keras#20585): `fit`'s
symbolic build reduces a data batch with a collective that does not accept per-replica values, and the
"mean" reduction of scalar logs uses axis=0. `_repair_keras_multi_worker` patches both, only in multi-worker
runs. Single-process runs never reach this module's strategy code.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

SCRATCH = ".distributed"
# What a non-chief worker must not share with the chief: outputs (its own copies live in its folder).
PRIVATE = frozenset({"artifacts", "models", "metrics", "reports", "mlruns", "mlflow.db", SCRATCH, ".git", ".dvc"})
CHECKPOINTS = Path("artifacts/checkpoints")


@dataclass(frozen=True)
class Task:
    """This process's place in the cluster."""
    task_type: str
    index: int
    workers: tuple[str, ...]  # every task's address, chief first when there is one

    @property
    def size(self) -> int:
        return len(self.workers)

    _chief_count: int = 0  # 1 when the cluster names a chief task

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0
                                              and self._chief_count == 0)

    @property
    def process_id(self) -> int:
        """0 for the chief, then the workers in order: JAX's process numbering."""
        return 0 if self.task_type == "chief" else self.index + self._chief_count

    @property
    def label(self) -> str:
        return f"{self.task_type}-{self.index}"


def task_from_tf_config(text: str | None) -> Task | None:
    """Parse TF_CONFIG; None when unset. Errors name the key that is wrong."""
    if not text:
        return None
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"TF_CONFIG is not JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError("TF_CONFIG.cluster must be an object such as {\"worker\": [\"host:port\", ...]}")
    if not isinstance(task, dict):
        raise ValueError("TF_CONFIG.task must be an object such as {\"type\": \"worker\", \"index\": 0}")
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise ValueError(f"TF_CONFIG.cluster: only 'chief' and 'worker' tasks take part in data-parallel training, "
                         f"got {sorted(unknown)}")
    for key, hosts in cluster.items():
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and ":" in h for h in hosts):
            raise ValueError(f"TF_CONFIG.cluster.{key} must be a non-empty list of 'host:port' strings")
    chiefs = cluster.get("chief", [])
    if len(chiefs) > 1:
        raise ValueError("TF_CONFIG.cluster.chief holds more than one address")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise ValueError(f"TF_CONFIG.task.type {task_type!r} is not in TF_CONFIG.cluster ({sorted(cluster)})")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG.task.index {index!r} is out of range for {len(cluster[task_type])} "
                         f"{task_type} task(s)")
    return Task(task_type, index, tuple(chiefs + cluster.get("worker", [])), _chief_count=len(chiefs))


# ------------------------------------------------------------------------------------- worker folders
def _mirror(src: Path, dst: Path) -> None:
    """dst becomes a copy of src made of hard links (a plain copy where links cannot be made)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.rmtree(dst, ignore_errors=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link, symlinks=True,
                        ignore=shutil.ignore_patterns(".ckpt-*.part", "*.tmp"))


def worker_folder(root: Path, task: Task) -> Path:
    """The folder a non-chief worker runs in: links to the project's inputs, a mirror of artifacts/."""
    folder = root / SCRATCH / task.label
    folder.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name in PRIVATE:
            continue
        target = folder / entry.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        target.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    _mirror(root / "artifacts", folder / "artifacts")
    return folder


def checkpoint_digest(root: Path) -> str:
    """What a worker would resume from: every checkpoint unit's path and state.json, hashed."""
    h = hashlib.sha256()
    base = root / CHECKPOINTS
    for state in sorted(base.rglob("ckpt-*/state.json")) if base.is_dir() else ():
        h.update(str(state.relative_to(base)).encode())
        h.update(state.read_bytes())
    return h.hexdigest()


def _digest_words(digest: str) -> list[int]:
    return [int(digest[i:i + 6], 16) for i in range(0, 24, 6)]  # 4 x 24 bits: exact in any dtype


# ---------------------------------------------------------------------------------------- TensorFlow
def _repair_keras_multi_worker() -> None:
    """Work around keras-team/keras#20585 (Keras 3 fit under MultiWorkerMirroredStrategy)."""
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_pipeline_repaired", False):
        return

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        # upstream reduces a distributed batch with a collective MEAN, only to learn its shapes
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            strategy = self.distribute_strategy
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    upstream_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        # upstream's multi-worker "mean" passes axis=0, which scalar logs (loss, metrics) do not have
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return upstream_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._pipeline_repaired = True


def tf_strategy(slurm: bool = False):
    import tensorflow as tf
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver() if slurm else None
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


def gathered_digests(strategy, digest: str) -> list[str]:
    """Every worker's digest, in task order (an all-gather: also a barrier)."""
    import tensorflow as tf
    words = tf.constant([_digest_words(digest)], dtype=tf.int64)

    @tf.function
    def gather():
        return strategy.gather(strategy.run(lambda: words), axis=0)

    rows = gather().numpy().tolist()
    return ["".join(f"{w:06x}" for w in row) for row in rows]


def check_same_checkpoints(strategy, digest: str) -> None:
    seen = gathered_digests(strategy, digest)
    if len(set(seen)) > 1:
        raise RuntimeError(
            "the workers see different checkpoints under artifacts/checkpoints "
            f"(digests {sorted(set(seen))}): resuming would start them at different epochs. Put the project on a "
            "filesystem every worker shares, or delete artifacts/checkpoints/<run> on every worker to start over.")


# ------------------------------------------------------------------------------------------------ JAX
def jax_initialize(task: Task) -> None:
    """JAX processes: one coordinator (the chief's address), DataParallel over every process's devices."""
    import keras
    keras.distribution.initialize(job_addresses=task.workers[0], num_processes=task.size,
                                  process_id=task.process_id)
    distribution = keras.distribution.DataParallel()
    distribution.auto_shard_dataset = False  # the stages feed numpy batches: each process takes its share below
    keras.distribution.set_distribution(distribution)
    _share_batches_across_processes(task.size, task.process_id)


def _share_batches_across_processes(n: int, pid: int) -> None:
    """Each JAX process gets the same global batch from the stage; feed only this process's contiguous share, so
    the global array JAX assembles (process order) is that batch. A batch that does not split evenly (an epoch's
    last) is fed whole by every process: the duplicated rows leave every mean-reduced loss and gradient
    unchanged."""
    import keras
    import numpy as np
    from keras.src.backend.jax import trainer

    if getattr(trainer, "_pipeline_shared", False):
        return
    upstream = trainer._distribute_data

    def share(data, layouts=None):
        leaves = [d for d in keras.tree.flatten(data) if d is not None]
        rows = {int(np.shape(d)[0]) for d in leaves}
        if len(rows) == 1 and (size := rows.pop()) % n == 0:
            lo, hi = pid * size // n, (pid + 1) * size // n
            data = keras.tree.map_structure(lambda d: None if d is None else d[lo:hi], data)
        return upstream(data, layouts)

    upstream_make = trainer.JAXTrainer.make_predict_function

    def make_predict_function(self, force=False):
        # each predict batch comes back as a global array spread over the processes: gather it on every process
        import jax
        from jax.experimental import multihost_utils
        upstream_make(self, force)
        step = self.predict_function
        if getattr(step, "_gathered", False):
            return step

        def gathered(state, iterator):
            outputs, state = step(state, iterator)
            outputs = keras.tree.map_structure(
                lambda v: multihost_utils.process_allgather(v, tiled=True)
                if isinstance(v, jax.Array) and not v.is_fully_addressable else v, outputs)
            return outputs, state

        gathered._gathered = True
        self.predict_function = gathered
        return gathered

    trainer._distribute_data = share
    trainer.JAXTrainer.make_predict_function = make_predict_function
    trainer._pipeline_shared = True


# ----------------------------------------------------------------------------------------------- main
def run(module: str, argv: list[str], task: Task | None, slurm: bool = False, root: Path | None = None) -> int:
    root = (root or Path.cwd()).resolve()
    if slurm and task is None:
        task = _slurm_task()
    if task is None or task.size == 1:
        return importlib.import_module(module).main(argv)
    import keras  # noqa: E402  (after TF_CONFIG is final; keras picks the backend from KERAS_BACKEND)
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise SystemExit(f"multi-worker training runs on the tensorflow or jax backend, not {backend!r}")
    if not task.is_chief:
        folder = worker_folder(root, task)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        os.chdir(folder)
        print(f"[{task.label}] non-chief worker: running in {folder}", flush=True)
    else:
        print(f"[{task.label}] chief: writing the outputs in {root}", flush=True)
    if backend == "tensorflow":
        strategy = tf_strategy(slurm)  # before any other TensorFlow op, as TF requires
        _repair_keras_multi_worker()
        check_same_checkpoints(strategy, checkpoint_digest(Path.cwd()))
        print(f"[{task.label}] {strategy.num_replicas_in_sync} replicas in sync", flush=True)
        stage = importlib.import_module(module)
        with strategy.scope():
            return stage.main(argv)
    jax_initialize(task)
    return importlib.import_module(module).main(argv)


def _slurm_task() -> Task:
    """This Slurm task's place, from the same variables TF's SlurmClusterResolver reads."""
    import tensorflow as tf
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
    spec = resolver.cluster_spec().as_dict()
    workers = spec.get("worker", [])
    return Task(resolver.task_type, int(resolver.task_id), tuple(workers))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slurm", action="store_true", help="take the cluster from Slurm (SlurmClusterResolver)")
    ap.add_argument("module", help="the stage module, e.g. ecg.train or vision.train")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="the stage's own arguments")
    args = ap.parse_args(argv)
    try:
        task = None if args.slurm else task_from_tf_config(os.environ.get("TF_CONFIG"))
    except ValueError as exc:
        ap.error(str(exc))
    return int(run(args.module, args.args, task, slurm=args.slurm) or 0)


if __name__ == "__main__":
    sys.exit(main())
