"""``landscape demo``: the main job on the embedded default (MNIST-1D): train SGD and SAM, analyze both,
write the comparison report.

Everything goes under ``--out-dir`` (default ``runs/demo``): ``sgd.pt``/``sam.pt`` (with their metrics),
``sgd.analysis.json``/``sam.analysis.json`` (``landscape analyze``'s report) and the ``landscape compare``
files ``sgd_vs_sam.*``: ``.html`` (the report), ``.measures.md``, ``.json``, the surfaces (``.npz``) and PNGs.
Each step resumes by the mechanism of its command (the trainer's resume file, the analysis JSON, the
surface files), so running the demo again after a kill redoes nothing that was finished.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

OPTIMIZERS = {"sgd": {}, "sam": {"rho": 0.05}}
"""The two runs: the optimizer and its hyper-parameters."""
TRAIN = dict(model="mlp", model_kwargs={"hidden": [100, 100]}, data="mnist1d", lr=0.05, batch_size=100,
             weight_decay=5e-4, seed=0)
"""The training configuration shared by both runs (besides ``epochs``)."""
MEASURES: dict[str, Any] = {"top_k": 5, "density": True, "sharpness_rho": 0.05, "sharpness_samples": 20,
                            "adaptive_rho": 0.5, "gap_rho": 0.05}
"""``landscape analyze`` options of the demo (the rest are its defaults: Hutch++ trace, gradient norms, ...)."""
QUICK: dict[str, Any] = {"top_k": 2, "trace_samples": 12, "density_runs": 1, "density_steps": 12,
                         "sharpness_steps": 3, "sharpness_samples": 2}
"""Overrides of ``--quick`` (a smoke run of a few seconds)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="train SGD and SAM on MNIST-1D, analyze both, write the comparison report",
        description="Train an MLP on MNIST-1D (generated locally, nothing downloaded) with SGD and with SAM, analyze "
                    "both checkpoints (loss and accuracy, top Hessian eigenvalues, trace, spectral density, gradient "
                    "norms, sharpness, adaptive sharpness, surrogate gap) and compare them (measures side by side, "
                    "1-D and 2-D loss landscapes, interpolation): a self-contained HTML report and a markdown table "
                    "under --out-dir. Re-running resumes and redoes nothing finished.")
    p.add_argument("--out-dir", type=Path, default=Path("runs/demo"), help="where to write everything")
    p.add_argument("--epochs", type=int, default=None, help="training epochs [default: 20; --quick: 2]")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2 epochs, a few Hessian-vector products, coarse landscapes")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; the small model is fastest on one, and a shared machine stays responsive "
                        "(the numbers depend on it slightly) [default: 1]")
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables: only where things are and the "
                                                        "verdict")
    p.set_defaults(func=run)


def train(name: str, epochs: int, out_dir: Path, progress: bool) -> tuple[Any, bool]:
    """The checkpoint of run ``name`` (trained, resumed, or already there); ``(checkpoint, trained now)``."""
    from landscape.checkpoint import CheckpointError, load_checkpoint
    from optimizers.config import TrainConfig
    from optimizers.trainer import Trainer

    config = TrainConfig(**TRAIN, optimizer=name, hparams=dict(OPTIMIZERS[name]), epochs=epochs)
    out = out_dir / f"{name}.pt"
    try:
        ckpt = load_checkpoint(out) if out.exists() else None
    except CheckpointError:
        ckpt = None
    if ckpt is not None and ckpt.train_config == config.to_dict():
        return ckpt, False
    return Trainer(config, out, progress=progress).run(), True


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _demo(args)
    finally:
        torch.set_num_threads(threads)


def _demo(args: argparse.Namespace) -> int:
    from landscape.checkpoint import open_checkpoint
    from landscape.cli import build_parser
    from landscape.cli import compare as C
    from landscape.cli.train import _summary
    from landscape.study.compare import analyze_checkpoint

    t0 = time.perf_counter()
    epochs = args.epochs if args.epochs is not None else (2 if args.quick else 20)
    out_dir, progress = args.out_dir, not args.quiet
    measures = {**MEASURES, **(QUICK if args.quick else {})}
    analyses, retrained = [], False
    for name in OPTIMIZERS:
        ckpt, trained = train(name, epochs, out_dir, progress)
        retrained |= trained
        path = out_dir / f"{name}.pt"
        if not args.quiet:
            print(f"{name}: {_summary(ckpt.metrics)}  -> {path}" + ("" if trained else " (already trained)"))
        json_path = out_dir / f"{name}.analysis.json"
        ckpt, model, data = open_checkpoint(path)
        analyze_checkpoint(ckpt, model, data, measures, json_path=json_path, progress=progress)
        analyses.append(str(json_path))

    grid = ["--xpoints", "7", "--curve-points", "9", "--interp-points", "7", "--subset", "500"] if args.quick else \
        ["--xpoints", "21", "--curve-points", "41", "--interp-points", "31"]
    stem = out_dir / "sgd_vs_sam"
    # New checkpoints make any earlier surfaces stale: recompute them (otherwise they resume).
    flags = [*grid, *(["--quiet"] if args.quiet else []), *(["--restart"] if retrained else [])]
    cargs = build_parser().parse_args(["compare", *(str(out_dir / f"{n}.pt") for n in OPTIMIZERS), "--analysis",
                                       *analyses, "--out", str(stem), *flags])
    summary = C.compare(cargs)
    if summary is None:  # not the main rank
        return 0
    if not args.quiet:
        C.print_summary(summary)
    print(f"checkpoints: {', '.join(str(out_dir / f'{n}.pt') for n in OPTIMIZERS)}; analyses: {', '.join(analyses)}")
    print(f"report: {summary['html']}  (measures table: {stem}.measures.md; summary: {stem}.json; "
          f"plots: {stem}.png, {stem}.interp.png)")
    print(f"verdict: {summary['measures']['headline']}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0
