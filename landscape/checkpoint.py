"""The checkpoint format: the contract between training and analysis.

A checkpoint is a ``torch.save`` of a plain dict (loadable with
``torch.load(weights_only=True)``, so loading never runs code)::

    format          "landscape-checkpoint"     format_version  1
    model           {"name": str, "kwargs": dict}
    data            {"name": str, "kwargs": dict}      (kwargs include the seed)
    optimizer       {"name": str, "hparams": dict}
    train_config    dict                 metrics   dict (train/test loss+acc, gen_gap)
    epoch, step     int                  versions  dict (landscape, torch, python, numpy)
    state_dict      the model's state_dict

A plain ``state_dict`` (or a foreign file) is accepted only together with
user-given model and data factories (``pkg.module:factory``). Names of
entry points stored *inside* a file are never imported on their own: a file
must not be able to choose what code runs.
"""
from __future__ import annotations

import os
import pickle
import platform
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from landscape import __version__
from landscape.io import atomic_torch_save

FORMAT = "landscape-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line for the user."""


def versions() -> dict[str, str]:
    import numpy

    return {"landscape": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "numpy": str(numpy.__version__)}


@dataclass
class Checkpoint:
    """What a checkpoint holds (see the module docstring)."""

    model_name: str
    model_kwargs: dict[str, Any]
    data_name: str
    data_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    optimizer: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    step: int | None = None
    versions: dict[str, str] = field(default_factory=versions)
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        meta = plain({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": {"name": self.model_name, "kwargs": dict(self.model_kwargs)},
            "data": {"name": self.data_name, "kwargs": dict(self.data_kwargs)},
            "optimizer": dict(self.optimizer),
            "train_config": dict(self.train_config),
            "metrics": dict(self.metrics),
            "epoch": self.epoch,
            "step": self.step,
            "versions": dict(self.versions),
        })
        meta["state_dict"] = {k: v.detach().cpu() for k, v in self.state_dict.items()}
        return meta

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename)."""
        atomic_torch_save(self.to_dict(), path)

    def build_model(self, factory: str | None = None, **factory_kwargs: Any) -> nn.Module:
        """Rebuild the model and load the weights (``factory``: a user ``pkg.module:factory``)."""
        from landscape.models import build_model

        if factory is not None:
            model = build_model(factory, **factory_kwargs)
        elif ":" in self.model_name:
            raise CheckpointError(
                f"{self._where()}model {self.model_name!r} is an entry point; pass it explicitly "
                f"(--model {self.model_name}) to allow importing it")
        else:
            try:
                model = build_model(self.model_name, **self.model_kwargs)
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{self._where()}cannot build model {self.model_name!r}: {_one_line(e)}") from e
        load_state_dict_strict(model, self.state_dict, where=self._where())
        return model

    def build_data(self, factory: str | None = None, **factory_kwargs: Any):
        """Rebuild the dataset (``factory``: a user ``pkg.module:factory``)."""
        from landscape.data import get_dataset

        if factory is not None:
            return get_dataset(factory, **factory_kwargs)
        if ":" in self.data_name:
            raise CheckpointError(
                f"{self._where()}data {self.data_name!r} is an entry point; pass it explicitly "
                f"(--data {self.data_name}) to allow importing it")
        try:
            return get_dataset(self.data_name, **self.data_kwargs)
        except (KeyError, TypeError, ValueError, FileNotFoundError) as e:
            raise CheckpointError(f"{self._where()}cannot build data {self.data_name!r}: {_one_line(e)}") from e

    def _where(self) -> str:
        return f"{self.path}: " if self.path else ""


def without_paths(record: Any) -> Any:
    """``record`` (a report header, a surface file's metadata) less the ``path`` of every file record
    ``{"path": ..., "sha256": ...}`` in it: a file is its SHA-256, whatever path named it, so results
    compare equal (and resume) when the same checkpoint is named by another path."""
    if isinstance(record, dict):
        return {k: without_paths(v) for k, v in record.items() if not (k == "path" and record.get("sha256"))}
    if isinstance(record, (list, tuple)):
        return [without_paths(v) for v in record]
    return record


def load_checkpoint(path: str | os.PathLike, *, allow_state_dict: bool = False,
                    strip_prefix: str | None = None) -> Checkpoint:
    """Load a checkpoint safely; every failure is a one-line :class:`CheckpointError`.

    ``allow_state_dict``: accept a bare ``state_dict`` (the caller supplies model
    and data factories); it comes back with empty model/data names. ``strip_prefix``: remove it from the
    weights' names (Lightning's ``model.``).
    """
    path = Path(path)
    check_file(path)
    if _is_safetensors(path):
        ckpt = _parse(_load_safetensors(path), path, allow_state_dict)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "pickle protocol 4" notes on foreign files
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises assorted types on garbage input
            raise CheckpointError(f"{path}: {load_failure(path, e)}") from e
        ckpt = _parse(obj, path, allow_state_dict)
    if strip_prefix:
        ckpt.state_dict = without_prefix(ckpt.state_dict, strip_prefix)
    return ckpt


def check_file(path: Path) -> None:
    """A one-line :class:`CheckpointError` unless ``path`` is a readable, non-empty regular file."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")


def load_failure(path: Path, e: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``e``, in one line and in the project's words:
    torch's own text suggests ``weights_only=False``, which would run the file's code; it is never shown."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):
        return "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"
    text = " ".join(str(e).split())
    if isinstance(e, pickle.UnpicklingError):
        blocked = re.search(r"(?:GLOBAL|global:?) (?!GLOBAL\b)([\w.]+)", text)
        if blocked:
            return (f"refused to load: the file asks to import {blocked.group(1)}; only plain-tensor checkpoints "
                    "are loaded, and no code from a file is ever run")
        reason = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
        reason = reason.split(" Check the documentation")[0].strip() or type(e).__name__
        return f"refused to load: not a plain-tensor checkpoint ({_one_line(reason, 120)})"
    if isinstance(e, (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError)):
        first = re.split(r"(?<=[.!?]) ", text)[0] if text else type(e).__name__
        return f"corrupt or truncated checkpoint ({_one_line(_no_advice(first), 160)})"
    return f"unreadable checkpoint ({type(e).__name__}: {_one_line(_no_advice(text), 160)})"


def _no_advice(text: str) -> str:
    """``text`` less any sentence that mentions ``weights_only`` (torch's advice to turn it off)."""
    return " ".join(s for s in re.split(r"(?<=[.!?]) ", text) if "weights_only" not in s) or "unreadable"


def _parse(obj: Any, path: Path, allow_state_dict: bool) -> Checkpoint:
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version!r} is not supported "
                                  f"(this landscape reads {FORMAT_VERSION})")
        try:
            model, data = obj["model"], obj["data"]
            ckpt = Checkpoint(
                model_name=_typed(model["name"], str, "model.name"),
                model_kwargs=_typed(model["kwargs"], dict, "model.kwargs"),
                data_name=_typed(data["name"], str, "data.name"),
                data_kwargs=_typed(data["kwargs"], dict, "data.kwargs"),
                state_dict=_state_dict(obj["state_dict"]),
                optimizer=_typed(obj.get("optimizer", {}), dict, "optimizer"),
                train_config=_typed(obj.get("train_config", {}), dict, "train_config"),
                metrics=_typed(obj.get("metrics", {}), dict, "metrics"),
                epoch=obj.get("epoch"),
                step=obj.get("step"),
                versions=_typed(obj.get("versions", {}), dict, "versions"),
                path=str(path),
            )
        except KeyError as e:
            raise CheckpointError(f"{path}: checkpoint lacks field {e.args[0]!r}") from e
        except TypeError as e:
            raise CheckpointError(f"{path}: {e}") from e
        return ckpt
    if allow_state_dict:
        sd = foreign_state_dict(obj)
        try:
            return Checkpoint(model_name="", model_kwargs={}, data_name="", data_kwargs={},
                              state_dict=_state_dict(sd), versions={}, path=str(path))
        except TypeError as e:
            raise CheckpointError(f"{path}: not a state_dict ({e})") from e
    sd = foreign_state_dict(obj)
    if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
        what = "a bare state_dict" if sd is obj else "another training loop's checkpoint"
        raise CheckpointError(f"{path}: {what}, not a landscape checkpoint; "
                              "pass --model pkg.module:factory and --data pkg.module:factory")
    raise CheckpointError(f"{path}: not a landscape checkpoint (no '{FORMAT}' header)")


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
"""Where other training loops keep the weights in a checkpoint dict (Lightning: ``state_dict``)."""


def foreign_state_dict(obj: Any) -> Any:
    """The weights of a foreign checkpoint: a bare ``state_dict``, or the dict of tensors under one of
    :data:`STATE_DICT_KEYS` (Lightning's ``{"state_dict": ..., "epoch": ...}``, ``{"model": ...}``)."""
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in STATE_DICT_KEYS:
            sd = obj.get(key)
            if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
                return sd
    return obj


def without_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state_dict`` with ``prefix`` removed from every name that starts with it (``model.`` of Lightning)."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 1 < int.from_bytes(head[:8], "little") < (1 << 27)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package (pip install "
                              "safetensors)") from e
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on bad files
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({_one_line(e, 160)})") from e


def check_finite(ckpt: Checkpoint) -> None:
    """A one-line :class:`CheckpointError` naming the first tensor of ``ckpt``'s weights (parameters and
    buffers) that holds a NaN or an infinity, with how many such values and tensors there are."""
    bad = [(k, v) for k, v in ckpt.state_dict.items()
           if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    if not bad:
        return
    name, t = bad[0]
    n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    what = " and ".join(f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n)
    more = f"; {len(bad) - 1} more tensor(s) too" if len(bad) > 1 else ""
    raise CheckpointError(f"{ckpt._where()}weight {name} holds {what} value(s) of {t.numel()}{more} "
                          "(a diverged run?); pass --allow-nonfinite to use it anyway")


def plain(obj: Any) -> Any:
    """Metadata as plain Python (str/int/float/bool/None, lists, dicts): what weights_only accepts."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalar
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in checkpoint metadata")


def _typed(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"field {name} should be {kind.__name__}, got {type(value).__name__}")
    return value


def _state_dict(sd: Any) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict) or not sd:
        raise TypeError("state_dict is not a non-empty dict")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise TypeError(f"state_dict entry {k!r} is not a tensor")
    return sd


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], where: str = "") -> None:
    """``model.load_state_dict(strict=True)`` with a one-line error on any mismatch. A name the file leaves out
    because it is tied to one it holds (a language model's output layer and its embedding, dropped by
    safetensors) is not missing."""
    own = model.state_dict()
    shared = {own[k].data_ptr() for k in state_dict if k in own}
    tied = {k for k in set(own) - set(state_dict) if own[k].numel() and own[k].data_ptr() in shared}
    missing = sorted(set(own) - set(state_dict) - tied)
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {_short(unexpected)}")
        hint = _prefix_hint(set(own), list(state_dict))
        raise CheckpointError(f"{where}weights do not match the model: {'; '.join(parts)}{hint}")
    for k, v in state_dict.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{where}weights do not match the model: {k} has shape "
                                  f"{tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model")
    model.load_state_dict(state_dict, strict=not tied)


def _prefix_hint(own: set[str], names: list[str]) -> str:
    """``" (try --strip-prefix P)"`` when removing a common first component ``P`` makes the names fit."""
    heads = {n.split(".", 1)[0] + "." for n in names if "." in n}
    for prefix in sorted(heads):
        if {n[len(prefix):] if n.startswith(prefix) else n for n in names} == own:
            return f" (try --strip-prefix {prefix})"
    return ""


def _short(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_checkpoint(
    path: str | os.PathLike,
    *,
    model: str | None = None,
    data: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    data_kwargs: dict[str, Any] | None = None,
    strip_prefix: str | None = None,
):
    """Load ``path`` and rebuild ``(checkpoint, model, data)`` with the weights loaded.

    ``model``/``data``: user entry points ``pkg.module:factory`` (required for a foreign file: a bare
    state_dict, a Lightning-style dict, a ``.safetensors`` file; optional otherwise); their kwargs default to
    the file's. ``strip_prefix``: remove it from the weights' names (Lightning's ``model.``).
    """
    foreign = model is not None or data is not None
    ckpt = load_checkpoint(path, allow_state_dict=foreign, strip_prefix=strip_prefix)
    if not ckpt.model_name and model is None:
        raise CheckpointError(f"{path}: a bare state_dict needs --model pkg.module:factory")
    if not ckpt.data_name and data is None:
        raise CheckpointError(f"{path}: a bare state_dict needs --data pkg.module:factory")
    if model is not None and model_kwargs is None:
        model_kwargs = dict(ckpt.model_kwargs) if model == ckpt.model_name else {}
    if data is not None and data_kwargs is None:
        data_kwargs = dict(ckpt.data_kwargs) if data == ckpt.data_name else {}
    try:
        net = ckpt.build_model() if model is None else ckpt.build_model(model, **(model_kwargs or {}))
        bundle = ckpt.build_data() if data is None else ckpt.build_data(data, **(data_kwargs or {}))
    except CheckpointError:
        raise
    except Exception as e:  # a user factory failing is reported, not dumped
        raise CheckpointError(f"{path}: {type(e).__name__}: {_one_line(e)}") from e
    if model is not None:
        ckpt.model_name, ckpt.model_kwargs = model, dict(model_kwargs or {})
    if data is not None:
        ckpt.data_name, ckpt.data_kwargs = data, dict(data_kwargs or {})
    check_compatible(net, bundle, where=f"{path}: ")
    return ckpt, net, bundle


def check_compatible(model: nn.Module, data: Any, where: str = "") -> None:
    """Run two test samples through ``model``: it must accept them and emit ``data.num_outputs``. (A user's
    stream of batches is checked by its loss on the first batch instead.)"""
    if getattr(data, "streaming", False):
        return
    x = data.x_test if getattr(data, "x_test", None) is not None and len(data.x_test) else data.x_train
    first = next(iter(model.parameters()), None)
    x = x[:2].to(first.device) if first is not None else x[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise CheckpointError(f"{where}the model does not accept the data "
                              f"({type(e).__name__}: {_one_line(e, 120)})") from e
    finally:
        model.train(was_training)
    want = data.num_outputs
    got = out.shape[-1] if out.dim() > 1 else 1
    if got != want:
        raise CheckpointError(f"{where}the model outputs {got} values per sample, the data needs {want}")
