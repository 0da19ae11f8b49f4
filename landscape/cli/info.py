"""``landscape info``: what a checkpoint holds."""
from __future__ import annotations

import argparse
import json
from typing import Any

from landscape.cli.common import add_entry_point_args, open_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print what a checkpoint holds",
                       description="Print model, data, optimizer, training configuration, final metrics and "
                                   "versions of a checkpoint (loaded with weights_only=True).")
    p.add_argument("checkpoint", help="a checkpoint written by `landscape train`")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_entry_point_args(p)
    p.set_defaults(func=run)


def describe(ckpt: Any, model: Any) -> dict[str, Any]:
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "path": ckpt.path,
        "model": {"name": ckpt.model_name, "kwargs": ckpt.model_kwargs, "parameters": n_params},
        "data": {"name": ckpt.data_name, "kwargs": ckpt.data_kwargs},
        "optimizer": ckpt.optimizer,
        "train_config": ckpt.train_config,
        "metrics": ckpt.metrics,
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        "versions": ckpt.versions,
        "nonfinite_weights": [k for k, v in ckpt.state_dict.items()
                              if v.is_floating_point() and not bool(v.isfinite().all())],
    }


def run(args: argparse.Namespace) -> int:
    ckpt, model, _ = open_from_args(args)
    info = describe(ckpt, model)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(ckpt.path), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("model", f"{ckpt.model_name} {_kv(ckpt.model_kwargs)}")
    table.add_row("parameters", f"{info['model']['parameters']:,}")
    table.add_row("data", f"{ckpt.data_name} {_kv(ckpt.data_kwargs)}")
    opt = ckpt.optimizer
    table.add_row("optimizer", f"{opt.get('name', '?')} (base {opt.get('base', '?')}) {_kv(opt.get('hparams', {}))}")
    tc = ckpt.train_config
    keys = ("lr", "momentum", "weight_decay", "batch_size", "epochs", "steps", "schedule", "seed")
    table.add_row("training", _kv({k: tc[k] for k in keys if k in tc}))
    table.add_row("epoch / step", f"{ckpt.epoch} / {ckpt.step}")
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "gen_gap", "loss_gap"):
        if ckpt.metrics.get(key) is not None:
            table.add_row(key, f"{ckpt.metrics[key]:.6g}")
    table.add_row("versions", _kv(ckpt.versions))
    if info["nonfinite_weights"]:
        table.add_row("NaN/inf weights", ", ".join(info["nonfinite_weights"]))
    Console().print(table)
    return 0


def _kv(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items())
