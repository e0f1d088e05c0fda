"""Sharded arrays on disk, and a Keras PyDataset that streams them with bounded memory.

Layout of a shard set (one folder):

* ``shard-00000.npz``, ``shard-00001.npz``, ... : each an uncompressed .npz holding the same arrays
  (same names, dtypes and per-row shapes), cut along the first axis.
* ``index.json`` : format, total rows, the arrays' dtypes and per-row shapes, and per shard its file,
  row count, byte size and sha256; plus free-form ``meta`` (e.g. the prepare stage's meta.json).

Every file is written through pipeline.io (temporary name, then rename). The writer deletes an old
``index.json`` before it touches any shard and writes the new one last, so a folder whose writer died
half-way has no index and is refused by the reader: a half-written shard set never looks complete.

Streaming (`ShardDataset`): per epoch, the order of the shards is a permutation seeded by (seed, epoch);
the shards are taken in groups of `buffer_shards`; the rows of one group are loaded, filtered, turned
into model inputs and shuffled together (seed, epoch, group); batches are cut from the epoch's stream of
rows, group after group, so every batch but the last is full and the length is the same every epoch.
Only one group is in memory at a time (two with prefetch=True; plus, while a batch straddles two groups,
fewer than `batch_size` rows of the previous one); nothing of size O(total rows) is ever built, only
O(shards) bookkeeping. Every epoch is a pure function of (seed, epoch), like
pipeline.training.epoch_order for in-memory arrays.
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import keras
import numpy as np

from pipeline.io import ensure_dir, file_digest, save_npz, write_json

FORMAT = "pipeline.shards/1"
INDEX = "index.json"
SHARD_RE = re.compile(r"^shard-(\d{5,})\.npz$")


class ShardError(ValueError):
    """A shard set is missing, incomplete, corrupt or inconsistent; the message names the file."""


# --------------------------------------------------------------------------------------------- writing
class ShardWriter:
    """Write shards one `add()` at a time, then `close()` writes index.json (the commit point).

    Opening a writer on a folder removes its index.json first, then its old shard files, so the folder
    reads as incomplete until `close()`. Used as a context manager, an exception skips `close()`.
    """

    def __init__(self, out_dir: Path | str, meta: dict | None = None):
        self.out = ensure_dir(out_dir)
        self.meta = meta or {}
        (self.out / INDEX).unlink(missing_ok=True)  # first: the folder stops looking complete
        for p in self.out.iterdir():
            if SHARD_RE.match(p.name) or p.name.startswith((".shard-", f".{INDEX}.")):
                p.unlink()
        self.schema: dict | None = None
        self.shards: list[dict] = []

    def add(self, **arrays: np.ndarray) -> Path:
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if not arrays:
            raise ValueError("a shard needs at least one array")
        rows = {len(v) if v.ndim else -1 for v in arrays.values()}
        if len(rows) != 1 or -1 in rows:
            raise ValueError(f"shard arrays must share their first dimension, got "
                             f"{ {k: v.shape for k, v in arrays.items()} }")
        schema = {k: {"dtype": v.dtype.str, "shape": list(v.shape[1:])} for k, v in arrays.items()}
        if self.schema is None:
            self.schema = schema
        elif schema != self.schema:
            raise ValueError(f"shard {len(self.shards)} arrays {schema} differ from the first shard's {self.schema}")
        path = self.out / f"shard-{len(self.shards):05d}.npz"
        save_npz(path, **arrays)
        self.shards.append({"file": path.name, "rows": rows.pop(), "bytes": path.stat().st_size,
                            "sha256": file_digest(path)})
        return path

    def close(self) -> dict:
        if self.schema is None:
            raise ValueError(f"{self.out}: no shards were added; refusing to write an empty shard set")
        index = {"format": FORMAT, "rows": int(sum(s["rows"] for s in self.shards)), "arrays": self.schema,
                 "shards": self.shards, "meta": self.meta}
        write_json(self.out / INDEX, index)
        return index

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()


def write_shards(out_dir: Path | str, arrays: dict, shard_size: int | None = None, by: str | None = None,
                 meta: dict | None = None) -> dict:
    """Cut in-memory `arrays` into shards; return the index.

    by=None: fixed-size shards of `shard_size` rows. by=<array name>: shards hold whole groups of rows
    sharing that array's value (rows of a group must be contiguous), one group per shard when
    shard_size is None, else whole groups packed greedily up to `shard_size` rows (a bigger group gets a
    shard of its own). Whole groups keep per-group statistics (e.g. per-record scaling) exact per shard.
    """
    n = len(next(iter(arrays.values())))
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if by is None:
        if shard_size is None:
            raise ValueError("give shard_size, by, or both")
        cuts = list(range(0, n, shard_size)) + [n]
    else:
        key = np.asarray(arrays[by])
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if n else np.array([], int)
        if len(np.unique(key)) != len(starts):
            raise ValueError(f"rows sharing a value of '{by}' must be contiguous to shard by it")
        bounds = [*starts.tolist(), n]
        if shard_size is None:
            cuts = bounds
        else:
            cuts = [0]
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                if hi - cuts[-1] > shard_size and lo > cuts[-1]:
                    cuts.append(lo)  # close the shard before this group overflows it
            cuts.append(n)
    with ShardWriter(out_dir, meta) as writer:
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            writer.add(**{k: np.asarray(v)[lo:hi] for k, v in arrays.items()})
    return read_index(out_dir)


# --------------------------------------------------------------------------------------------- reading
def read_index(path: Path | str) -> dict:
    """index.json of the shard set at `path`, checked against the files present (existence and size)."""
    path = Path(path)
    index_path = path / INDEX
    if not index_path.is_file():
        raise ShardError(f"{index_path}: missing; {path} is not a complete shard set (the writer did not "
                         f"finish, or nothing was written there)")
    try:
        index = json.loads(index_path.read_text())
        ok = (index.get("format") == FORMAT and isinstance(index.get("shards"), list) and index["shards"]
              and isinstance(index.get("arrays"), dict)
              and all({"file", "rows", "bytes", "sha256"} <= set(s) for s in index["shards"]))
    except (ValueError, AttributeError, TypeError) as exc:
        raise ShardError(f"{index_path}: malformed shard index ({exc})") from None
    if not ok:
        raise ShardError(f"{index_path}: not a '{FORMAT}' shard index (needs format, arrays and shards with "
                         f"file/rows/bytes/sha256)")
    for s in index["shards"]:
        f = path / s["file"]
        if not f.is_file():
            raise ShardError(f"{f}: shard listed in {index_path} is missing")
        if f.stat().st_size != s["bytes"]:
            raise ShardError(f"{f}: {f.stat().st_size} bytes, {index_path} says {s['bytes']} (truncated or replaced)")
    return index


class ShardSet:
    """Random access to the shards of one folder (each load checks sha256, names, dtypes and shapes)."""

    def __init__(self, path: Path | str, verify: bool = True):
        self.path = Path(path)
        self.index = read_index(self.path)
        self.verify = verify
        self.rows = np.array([s["rows"] for s in self.index["shards"]], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index["shards"])

    @property
    def meta(self) -> dict:
        return self.index.get("meta", {})

    def load(self, i: int, columns=None) -> dict:
        entry = self.index["shards"][i]
        f = self.path / entry["file"]
        columns = list(self.index["arrays"]) if columns is None else list(columns)
        unknown = [c for c in columns if c not in self.index["arrays"]]
        if unknown:
            raise ShardError(f"{self.path / INDEX}: no arrays {unknown}; has {sorted(self.index['arrays'])}")
        if self.verify and file_digest(f) != entry["sha256"]:
            raise ShardError(f"{f}: sha256 differs from {self.path / INDEX} (corrupt or replaced shard)")
        try:
            with np.load(f, allow_pickle=False) as npz:
                out = {c: npz[c] for c in columns}
        except KeyError as exc:
            raise ShardError(f"{f}: array {exc} listed in the index is missing") from None
        except Exception as exc:  # zip / npy format errors
            raise ShardError(f"{f}: unreadable shard ({type(exc).__name__}: {exc})") from None
        for c, v in out.items():
            want = self.index["arrays"][c]
            if v.dtype.str != want["dtype"] or list(v.shape[1:]) != want["shape"] or len(v) != entry["rows"]:
                raise ShardError(f"{f}: array '{c}' is {v.dtype.str} {v.shape}, index says {want['dtype']} "
                                 f"({entry['rows']}, {', '.join(map(str, want['shape']))})")
        return out

    def counts(self, where: dict | None) -> np.ndarray:
        """Rows per shard that pass `where` (reads only the filter's columns, one shard at a time)."""
        if not where:
            return self.rows.copy()
        return np.array([int(row_mask(self.load(i, list(where)), where).sum()) for i in range(len(self))],
                        dtype=np.int64)

    def gather(self, where: dict | None = None, columns=None) -> dict:
        """All rows passing `where`, concatenated in shard order (for data that fits: e.g. a validation fold)."""
        parts = []
        for i in range(len(self)):
            arrays = self.load(i, _needed(columns, where))
            m = row_mask(arrays, where)
            if m.any():
                parts.append({k: v[m] for k, v in arrays.items() if columns is None or k in columns})
        if not parts:
            raise ShardError(f"{self.path}: no rows pass {where}")
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def row_mask(arrays: dict, where: dict | None) -> np.ndarray:
    """Rows passing every condition of `where`: {column: value | list of values | callable(column)->mask}."""
    n = len(next(iter(arrays.values())))
    mask = np.ones(n, dtype=bool)
    for col, cond in (where or {}).items():
        v = arrays[col]
        if callable(cond):
            m = np.asarray(cond(v), dtype=bool)
        elif np.ndim(cond):
            m = np.isin(v, list(cond))
        else:
            m = v == cond
        if m.shape != (n,):
            raise ValueError(f"filter on '{col}' gave a mask of shape {m.shape}, expected ({n},)")
        mask &= m
    return mask


def _needed(columns, where):
    if columns is None:
        return None
    return list(dict.fromkeys([*columns, *(where or {})]))


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) & 0xFFFFFFFF for p in parts])


# ------------------------------------------------------------------------------------------ streaming
class ShardDataset(keras.utils.PyDataset):
    """(x, y_onehot) batches streamed from a shard set; see the module doc for the shuffle.

    features: a list of array names (x = {name: array}) or a callable taking one shard's (filtered) arrays
        and returning the x dict; it sees one shard at a time, so per-group statistics need shards that
        hold whole groups (`write_shards(..., by=...)`).
    label: the array holding integer class labels. where: row filter (see `row_mask`), applied per shard.
    columns: arrays to read when `features` is a callable (default: all).
    prefetch: load the next group in a background thread while the current one is consumed; memory is
        then at most two groups (2 x buffer_shards shards) instead of one.
    Length: ceil(rows passing the filter / batch_size), the same every epoch (only the last batch is short).
    The epoch is chosen by `set_epoch(e)`, never implicitly: Keras calls `on_epoch_end` also when a fit
    starts, so it is not an epoch counter (pipeline.streaming.fit_stream calls set_epoch before each epoch).
    Access is meant to be sequential (Keras: workers=1, fit(shuffle=False)); random access works but may
    reload groups. `max_held_shards` records the most shards in memory at once (loaded or being loaded).
    """

    def __init__(self, path, batch_size: int, n_classes: int, features, label: str = "y", where: dict | None = None,
                 seed: int = 0, buffer_shards: int = 8, columns=None, verify: bool = True, epoch: int = 0,
                 prefetch: bool = False, **kwargs):
        super().__init__(**kwargs)
        if batch_size < 1 or buffer_shards < 1:
            raise ValueError(f"batch_size and buffer_shards must be >= 1, got {batch_size}, {buffer_shards}")
        self.shards = path if isinstance(path, ShardSet) else ShardSet(path, verify)
        self.batch_size, self.n_classes, self.label = int(batch_size), int(n_classes), label
        self.where, self.seed, self.buffer_shards = where, int(seed), int(buffer_shards)
        if callable(features):
            self._features, cols = features, columns
        else:
            names = list(features)
            self._features, cols = (lambda a: {k: a[k] for k in names}), names
        self.columns = None if cols is None else list(dict.fromkeys([*cols, label, *(where or {})]))
        self.shard_rows = self.shards.counts(where)  # O(shards)
        self.rows = int(self.shard_rows.sum())
        if self.rows == 0:
            raise ShardError(f"{self.shards.path}: no rows pass the filter {where}")
        self.prefetch = bool(prefetch)
        self._lock, self._count_lock = threading.RLock(), threading.Lock()
        self._pool = None
        self._buf = self._pending = None  # ((epoch, group), x, y) / ((epoch, group), future)
        self.held_shards = self.max_held_shards = self.groups_loaded = 0
        self.epoch = None
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        with self._lock:
            if epoch == self.epoch:
                return
            self.epoch = int(epoch)
            live = np.flatnonzero(self.shard_rows > 0)
            order = live[_rng(self.seed, self.epoch).permutation(len(live))]
            self.groups = [order[i:i + self.buffer_shards] for i in range(0, len(order), self.buffer_shards)]
            self.group_start = np.concatenate([[0], np.cumsum([self.shard_rows[g].sum() for g in self.groups])])
            self._release()
            self._schedule(0)

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range 0..{len(self) - 1}")
        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.rows)
        pieces = []
        with self._lock:
            g = int(np.searchsorted(self.group_start, lo, side="right") - 1)
            while lo < hi:
                x, y = self._group(g)
                a, b = lo - self.group_start[g], min(hi, self.group_start[g + 1]) - self.group_start[g]
                piece = ({k: v[a:b] for k, v in x.items()}, y[a:b])
                if hi > self.group_start[g + 1]:  # the batch goes on in the next group: keep a copy, free this one
                    piece = ({k: v.copy() for k, v in piece[0].items()}, piece[1].copy())
                pieces.append(piece)
                lo, g = self.group_start[g] + b, g + 1
        if len(pieces) == 1:
            x, y = pieces[0]
        else:
            x = {k: np.concatenate([p[0][k] for p in pieces]) for k in pieces[0][0]}
            y = np.concatenate([p[1] for p in pieces])
        return x, keras.utils.to_categorical(y, self.n_classes)

    # -- one group in memory (two with prefetch) -------------------------------------------------------
    def _held(self, delta: int) -> None:
        with self._count_lock:
            self.held_shards += delta
            self.max_held_shards = max(self.max_held_shards, self.held_shards)

    def _drop_current(self) -> None:
        if self._buf is not None:
            self._held(-self._buf[3])
            self._buf = None

    def _release(self) -> None:
        self._drop_current()
        if self._pending is not None:
            _, future, n = self._pending
            self._pending = None
            if not future.cancel():  # running or done: wait, and uncount its shards if it loaded them
                if future.exception() is None:
                    self._held(-n)

    def _schedule(self, g: int) -> None:
        """With prefetch: start loading group g of this epoch in the background."""
        if not self.prefetch or g >= len(self.groups) or self._pending is not None:
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
        key, ids = (self.epoch, g), self.groups[g]
        self._pending = (key, self._pool.submit(self._load, key, ids), len(ids))

    def _group(self, g: int):
        key = (self.epoch, g)
        if self._buf is not None and self._buf[0] == key:
            return self._buf[1], self._buf[2]
        if self._pending is not None and self._pending[0] == key:
            _, future, n = self._pending
            self._pending = None
            self._drop_current()
            x, y = future.result()
        else:
            self._release()  # before loading the next group: never two groups at once (without prefetch)
            n = len(self.groups[g])
            x, y = self._load(key, self.groups[g])
        self._buf = (key, x, y, n)
        self._schedule(g + 1)
        return x, y

    def _load(self, key, shard_ids):
        """The group's rows: each shard loaded, filtered and turned into inputs, its rows scattered straight
        to their shuffled places (a permutation seeded by (seed, epoch, group)); one group-sized copy."""
        epoch, g = key
        total = int(self.shard_rows[shard_ids].sum())
        dest = _rng(self.seed, epoch, g + 1).permutation(total)
        x_out = y_out = None
        off = counted = 0
        try:
            for s in shard_ids:
                f = self.shards.path / self.shards.index["shards"][s]["file"]
                arrays = self.shards.load(int(s), self.columns)
                self._held(+1)
                counted += 1
                m = row_mask(arrays, self.where)
                if not m.all():
                    arrays = {k: v[m] for k, v in arrays.items()}
                x, y = self._features(arrays), np.asarray(arrays[self.label])
                del arrays
                bad = {k: v.shape for k, v in x.items() if len(v) != len(y)}
                if bad or len(y) != self.shard_rows[s]:
                    raise ShardError(f"{f}: {len(y)} rows pass the filter now, {self.shard_rows[s]} did when the "
                                     f"dataset was opened; features {bad or 'ok'}")
                if x_out is None:
                    x_out = {k: np.empty((total, *v.shape[1:]), v.dtype) for k, v in x.items()}
                    y_out = np.empty(total, y.dtype)
                if set(x) != set(x_out):
                    raise ShardError(f"{f}: features gave inputs {sorted(x)}, other shards {sorted(x_out)}")
                idx = dest[off:off + len(y)]
                for k, v in x.items():
                    x_out[k][idx] = v
                y_out[idx] = y
                off += len(y)
        except BaseException:
            self._held(-counted)
            raise
        with self._count_lock:
            self.groups_loaded += 1
        return x_out, y_out
