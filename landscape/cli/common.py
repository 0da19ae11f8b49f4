"""Argument helpers shared by the subcommands."""
from __future__ import annotations

import argparse
import json
from typing import Any


def parse_value(text: str) -> Any:
    """JSON if it parses (``0.1``, ``true``, ``[64, 64]``, ``null``), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["a=1", "b=[2,3]"]`` -> ``{"a": 1, "b": [2, 3]}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def add_entry_point_args(p: argparse.ArgumentParser) -> None:
    """--model/--data entry points for bare state_dicts and foreign models."""
    g = p.add_argument_group("foreign checkpoints")
    g.add_argument("--model", metavar="PKG.MODULE:FACTORY", default=None,
                   help="build the model with this factory (required for a bare state_dict)")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="keyword argument of --model")
    g.add_argument("--data", metavar="PKG.MODULE:FACTORY", default=None,
                   help="build the data with this factory: a landscape.data.DataBundle, or for analysis a "
                        "DataLoader (any re-iterable of batches: tuples, dicts) or {'train': ..., 'test': ...}")
    g.add_argument("--data-arg", action="append", metavar="KEY=VALUE", help="keyword argument of --data")
    g.add_argument("--loss", metavar="PKG.MODULE:FN", default=None,
                   help="the loss: loss_fn(model, batch) -> (sum of losses, count) (first parameter named model), a "
                        "mean-reduced criterion(output, target), or a criterion class such as "
                        "torch.nn:CrossEntropyLoss [default: the data's task]")
    g.add_argument("--strip-prefix", metavar="PREFIX", default=None,
                   help="remove PREFIX (e.g. 'model.' of a Lightning checkpoint) from the names of a foreign "
                        "state_dict")


def open_from_args(args: argparse.Namespace, path: Any = None):
    """``(checkpoint, model, data)`` for ``path`` (default ``args.checkpoint``) honouring the entry-point flags;
    ``--model-arg``/``--data-arg`` without ``--model``/``--data`` override those keys of the checkpoint's own
    model/data settings."""
    from landscape.checkpoint import load_checkpoint, open_checkpoint

    path = args.checkpoint if path is None else path
    strip = getattr(args, "strip_prefix", None)
    names = {"model": args.model, "data": args.data}
    kwargs = {what: parse_assignments(items, f"--{what}-arg") if items else None
              for what, items in (("model", args.model_arg), ("data", args.data_arg))}
    if any(kwargs[what] and names[what] is None for what in names):
        own = load_checkpoint(path, allow_state_dict=True, strip_prefix=strip)
        for what in names:
            name, recorded = getattr(own, f"{what}_name"), getattr(own, f"{what}_kwargs")
            if not kwargs[what] or names[what] is not None or not name:
                continue  # a bare state_dict: open_checkpoint asks for --model / --data
            if ":" in name:
                raise ValueError(f"--{what}-arg: {path}'s {what} {name!r} is an entry point; pass it explicitly "
                                 f"(--{what} {name}) to allow importing it")
            names[what], kwargs[what] = name, {**recorded, **kwargs[what]}
    return open_checkpoint(path, model=names["model"], data=names["data"], model_kwargs=kwargs["model"],
                           data_kwargs=kwargs["data"], strip_prefix=strip)


def loss_from_args(args: argparse.Namespace) -> Any:
    """The loss protocol named by ``--loss`` (None: the data's task); a criterion class is instantiated."""
    spec = getattr(args, "loss", None)
    if not spec:
        return None
    import inspect

    import torch.nn as nn

    from landscape.entrypoints import load_entry_point
    from landscape.objective.loss import as_loss

    try:
        fn = load_entry_point(spec)
        if inspect.isclass(fn) and issubclass(fn, nn.Module):
            fn = fn()
        return as_loss(fn)
    except TypeError as e:  # not callable, a module that needs arguments, ...
        raise ValueError(f"--loss {spec}: {' '.join(str(e).split())}") from e
