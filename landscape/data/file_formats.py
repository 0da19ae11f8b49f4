"""Readers for the on-disk formats of the image datasets: CIFAR python batches and MNIST idx files.

CIFAR batches are pickles. :func:`load_numpy_pickle` unpickles with an
allow-list of the few globals NumPy arrays need, so a crafted batch file cannot
run code: anything else is refused with a one-line ``ValueError``.
"""
from __future__ import annotations

import codecs
import gzip
import io
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

try:  # NumPy 2 moved numpy.core to numpy._core; both names appear in existing pickles.
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray, numeric as _numeric  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _multiarray._reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _multiarray.scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _numeric._frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},  # protocol 5
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol < 3
}


class _Refused(pickle.UnpicklingError):
    pass


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name} is not allowed") from None


def load_numpy_pickle(path: Path) -> Any:
    """Unpickle ``path`` (Python 2 or 3 pickles) allowing only containers, strings, numbers and NumPy arrays
    of non-object dtype."""
    try:
        data = path.read_bytes()
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as e:
        raise ValueError(f"{path}: refused to unpickle ({e}); only NumPy arrays and plain containers are allowed") \
            from None
    except Exception as e:  # garbage makes the unpickler raise assorted types
        raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {' '.join(str(e).split())[:120]})") \
            from None
    _refuse_object_arrays(obj, path)
    return obj


def _refuse_object_arrays(obj: Any, path: Path) -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise ValueError(f"{path}: refused to unpickle an object array")
    if isinstance(obj, dict):
        for v in obj.values():
            _refuse_object_arrays(v, path)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _refuse_object_arrays(v, path)


def _key(d: dict, name: str) -> Any:
    """``d[name]`` for Python 3 (str keys) and Python 2 (bytes keys) pickles."""
    if name in d:
        return d[name]
    return d[name.encode()]


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: ``(N, 3, 32, 32)`` uint8 images and int64 labels from ``label_key``
    (``labels`` for CIFAR-10, ``fine_labels``/``coarse_labels`` for CIFAR-100)."""
    d = load_numpy_pickle(path)
    try:
        if not isinstance(d, dict):
            raise TypeError(f"a {type(d).__name__}, not a dict")
        data = np.asarray(_key(d, "data"))
        labels = np.asarray(_key(d, label_key), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] % 3 != 0:
            raise TypeError(f"data should be an (N, 3*H*W) uint8 array, got {data.dtype} {data.shape}")
        side = int(round((data.shape[1] // 3) ** 0.5))
        if 3 * side * side != data.shape[1]:
            raise TypeError(f"data rows of {data.shape[1]} values are not 3 square channels")
        if labels.shape != (len(data),):
            raise TypeError(f"labels of shape {labels.shape} for {len(data)} images (one label each)")
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        what = f"no {e.args[0]!r} entry" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{path}: not a CIFAR python batch ({what})") from None
    return data.reshape(len(data), 3, side, side), labels


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (raw, or gzip if it starts with the gzip magic) as a NumPy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # truncated, bad CRC, a broken deflate stream
            raise ValueError(f"{path}: corrupt gzip ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != need:
        raise ValueError(f"{path}: idx file holds {len(raw) - header} data bytes, its header says {need}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
