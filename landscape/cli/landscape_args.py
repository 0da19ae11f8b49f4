"""Flags and set-up shared by the loss-landscape subcommands (plot1d, plot2d, compare, shift)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from landscape.cli.common import loss_from_args, open_from_args

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_grid_args(p: argparse.ArgumentParser, dims: int) -> argparse._ArgumentGroup:
    g = p.add_argument_group("grid")
    g.add_argument("--xrange", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                   help="range of the first coordinate [default: -1 1; interpolation -0.25 1.25; PCA and plane: "
                        "around the trajectory / the points]")
    g.add_argument("--xpoints", type=int, default=None, metavar="N",
                   help="grid points along the first coordinate [default: 51; interpolation 31; PCA/plane 41]")
    if dims == 2:
        g.add_argument("--yrange", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                       help="range of the second coordinate [default: as --xrange]")
        g.add_argument("--ypoints", type=int, default=None, metavar="N",
                       help="grid points along the second coordinate [default: as --xpoints]")
    return g


def add_evaluation_args(p: argparse.ArgumentParser, splits: bool = True) -> None:
    g = p.add_argument_group("data and numerics")
    if splits:
        g.add_argument("--split", nargs="+", choices=["train", "test"], default=None,
                       help="splits whose loss and accuracy are computed [default: train, and test where the data "
                            "has a test split]")
    g.add_argument("--subset", type=int, default=None, metavar="N",
                   help="use a fixed random subset of N samples of each split (seeded by --seed) [default: all]")
    g.add_argument("--bn", choices=["frozen", "recompute"], default="frozen",
                   help="BatchNorm: keep the checkpoint's running statistics, or re-estimate them at every point "
                        "on the training data (point by point) [default: frozen]")
    g.add_argument("--batch-size", type=int, default=1024, help="micro-batch size (memory only) [default: 1024]")
    g.add_argument("--chunk-size", default="auto", metavar="N|auto",
                   help="grid points per vmap-ed forward pass; auto sizes to memory and times the options "
                        "[default: auto]")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1 [default: auto]")
    g.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="precision [default: float32]")
    g.add_argument("--params", default=None, metavar="SPEC",
                   help="parameters that move: 'weights' or a regular expression on names [default: all]")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw (directions, subset) [default: 0]")


def add_direction_args(p: argparse.ArgumentParser, dims: int) -> None:
    g = p.add_argument_group("directions")
    kinds = ["random", "eigen", "pca", "interp"] if dims == 1 else ["random", "eigen", "pca", "plane"]
    g.add_argument("--directions", choices=kinds, default=None,
                   help="random (Gaussian, normalized), eigen (top Hessian eigenvectors), pca (of a training "
                        "trajectory), " + ("interp (towards --to)" if dims == 1 else "plane (through --through B C)")
                        + f" [default: {'interp with --to' if dims == 1 else 'plane with --through'}, else random]")
    g.add_argument("--norm", choices=["filter", "layer", "model", "none"], default=None,
                   help="normalization of random/eigen directions [default: filter for random, none for eigen]")
    g.add_argument("--bias-bn", choices=["zero", "include", "copy"], default=None,
                   help="1-D parameters (biases, norm layers): not perturbed, perturbed and normalized, or "
                        "direction = weights (Li et al.'s code) [default: zero for random, include for eigen]")
    if dims == 1:
        g.add_argument("--to", metavar="CKPT", default=None, help="interpolate from the checkpoint to this one")
    else:
        g.add_argument("--through", nargs=2, metavar=("B", "C"), default=None,
                       help="the plane through the checkpoint and these two")
    g.add_argument("--trajectory", nargs="+", default=None, metavar="DIR|CKPT",
                   help="trajectory for PCA: a folder of epoch_NNNN.pt or a list of checkpoints "
                        "[default: CKPT's .trajectory folder]")
    g.add_argument("--eig-tol", type=float, default=1e-5, help="Lanczos tolerance for eigen directions")


def add_output_args(p: argparse.ArgumentParser, html: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="STEM",
                   help="output stem: writes STEM.npz (values + metadata), STEM.directions.pt, plots STEM*.png "
                        + ("and STEM.html" if html else "and STEM.json") + " [default: next to the checkpoint]")
    g.add_argument("--format", nargs="+", choices=["png", "pdf", "svg"], default=["png"],
                   help="static plot formats [default: png]")
    if html:
        g.add_argument("--no-html", action="store_true", help="skip the interactive plotly HTML")
    g.add_argument("--log", action="store_true", help="log-scale loss in plots and contour levels")
    g.add_argument("--restart", action="store_true", help="recompute even if STEM.npz holds (part of) the result")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------- set-up
def chunk_size(args: argparse.Namespace) -> int | str:
    if args.chunk_size == "auto":
        return "auto"
    try:
        n = int(args.chunk_size)
    except ValueError:
        raise ValueError(f"--chunk-size must be a positive integer or auto, got {args.chunk_size!r}") from None
    if n < 1:
        raise ValueError(f"--chunk-size must be a positive integer or auto, got {n}")
    return n


def setup_device(args: argparse.Namespace) -> torch.device:
    """Join torchrun's process group if launched by it; this rank's device."""
    from landscape import distributed as D

    return D.setup_device(args.device)


def data_splits(data: Any) -> list[str]:
    """The default splits: train, and test where the data has it (a user's stream may have no test split)."""
    return [s for s in ("train", "test") if s in getattr(data, "splits", ("train", "test"))]


def objectives(model: Any, data: Any, args: argparse.Namespace, device: torch.device,
               splits: list[str] | None = None) -> dict[str, Any]:
    from landscape.landscapes.surface import make_objectives

    if getattr(args, "split", None) is None:
        args.split = data_splits(data)
    return make_objectives(model, data, splits or args.split, subset=args.subset, seed=args.seed,
                           batch_size=args.batch_size, device=device, dtype=_DTYPES[args.dtype], params=args.params,
                           loss=loss_from_args(args))


def header(ckpt: Any, args: argparse.Namespace) -> dict[str, Any]:
    """What a surface file records about its inputs (and a resumed run must match)."""
    from landscape.analysis import file_digest

    return {"checkpoint": {"path": str(ckpt.path), "sha256": file_digest(ckpt.path)},
            "model": {"name": ckpt.model_name, "kwargs": ckpt.model_kwargs},
            "data": {"name": ckpt.data_name, "kwargs": ckpt.data_kwargs},
            "subset": {"size": args.subset, "seed": args.seed}, "params": args.params,
            "loss": getattr(args, "loss", None)}


def default_stem(checkpoint: str | Path, tag: str) -> str:
    p = Path(checkpoint)
    return str(p.with_name(f"{p.stem}.{tag}"))


def cached_directions(stem: str, request: dict[str, Any], make: Callable[[], Any], restart: bool) -> Any:
    """Directions from ``STEM.directions.pt`` when it was made for the same ``request``, else ``make()``
    (then saved there). Made on rank 0 and sent to every rank."""
    from landscape import distributed as D
    from landscape.io import _json_default
    from landscape.landscapes.directions import Directions
    import json

    path = Path(f"{stem}.directions.pt")
    request = json.loads(json.dumps(request, default=_json_default))
    dirs = None
    if D.is_main():
        if path.exists() and not restart:
            try:
                cached = Directions.load(path)
                if cached.meta.get("request") == request:
                    dirs = cached
            except Exception:  # an unreadable cache is rebuilt
                dirs = None
        if dirs is None:
            dirs = make()
            dirs.meta["request"] = request
            dirs.save(path)
    if D.is_distributed():
        box = [dirs]
        torch.distributed.broadcast_object_list(box, src=0)
        dirs = box[0]
    return dirs


def random_surface(objs: dict[str, Any], head: dict[str, Any], stem: str, axes: list[np.ndarray], *, seed: int,
                   norm: str = "filter", bias_bn: str = "zero", params: str | None = None, dtype: str = "float32",
                   bn: str = "frozen", chunk: int | str = "auto", restart: bool = False,
                   progress: bool = False) -> Any:
    """The surface of ``objs`` (``{split: Objective}``) along ``len(axes)`` random directions (seeded,
    normalized to the weights by ``norm``) through its checkpoint: the directions cached in
    ``STEM.directions.pt``, the values in ``STEM.npz`` (a re-run resumes; ``head``: :func:`header`)."""
    from landscape.landscapes.directions import random_directions
    from landscape.landscapes.surface import compute_surface

    train = objs.get("train") or next(iter(objs.values()))
    request = {"checkpoint": head["checkpoint"]["sha256"], "dims": len(axes), "seed": seed, "norm": norm,
               "bias_bn": bias_bn, "params": params, "dtype": dtype}
    dirs = cached_directions(stem, request, lambda: random_directions(
        train, len(axes), seed=seed, norm=norm, bias_bn=bias_bn), restart)
    return compute_surface(objs, dirs, axes, bn=bn, bn_source=objs.get("train"), chunk_size=chunk,
                           path=f"{stem}.npz", resume=not restart, header=head, progress=progress)


def resolve_axis(given: list[float] | None, points: int | None, default_range: tuple[float, float],
                 default_points: int) -> np.ndarray:
    from landscape.landscapes.surface import axis

    lo, hi = given if given is not None else default_range
    return axis(lo, hi, points if points is not None else default_points)


def interpolation_axis(given: list[float] | None, points: int | None) -> np.ndarray:
    """The ``t`` grid of an interpolation (default ``-0.25 .. 1.25``, 31 points) with 0 and 1 added
    if they do not fall on it, so both checkpoints and the barrier heights are always on the grid."""
    return np.union1d(resolve_axis(given, points, (-0.25, 1.25), 31), [0.0, 1.0])


def around(values: np.ndarray, margin: float = 0.25) -> tuple[float, float]:
    """A range around ``values`` (and 0) with ``margin`` of their span on each side, rounded to 0.05."""
    lo, hi = min(0.0, float(np.min(values))), max(0.0, float(np.max(values)))
    span = max(hi - lo, 1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    return float(np.floor(lo * 20) / 20), float(np.ceil(hi * 20) / 20)


# ----------------------------------------------------------------------------- surfaces
def resolve_directions(args: argparse.Namespace, dims: int) -> None:
    """``--directions``' default, and its companion's check: ``interp`` with ``--to`` (1-D), ``plane`` with
    ``--through`` (2-D), else ``random``."""
    kind, flag, given = ("interp", "--to", args.to) if dims == 1 else ("plane", "--through", args.through)
    if args.directions is None:
        args.directions = kind if given else "random"
    if given and args.directions != kind:
        raise ValueError(f"{flag} goes with --directions {kind}, not {args.directions}")


def make_directions(args: argparse.Namespace, obj: Any, dims: int, progress: bool) -> Any:
    """The directions the flags ask for, around ``obj``'s parameters."""
    from landscape.cli.guards import second_checkpoint
    from landscape.landscapes import directions as Dm

    kind = args.directions
    if kind == "random":
        return Dm.random_directions(obj, dims, seed=args.seed, norm=args.norm or "filter",
                                    bias_bn=args.bias_bn or "zero")
    if kind == "eigen":
        return Dm.eigen_directions(obj, dims, seed=args.seed, tol=args.eig_tol, norm=args.norm or "none",
                                   bias_bn=args.bias_bn or "include", progress=progress)
    if kind == "pca":
        t = args.trajectory or [default_stem(args.checkpoint, "trajectory")]
        files = Dm.trajectory_files(t[0] if len(t) == 1 and Path(t[0]).is_dir() else t)
        loaded = [second_checkpoint(obj, f, args) for f in files]
        return Dm.pca_directions(obj, [v for v, _ in loaded], dims, sources=[s for _, s in loaded])
    if kind == "plane":
        if not args.through:
            raise ValueError("--directions plane needs --through B.pt C.pt")
        (vb, sb), (vc, sc) = (second_checkpoint(obj, f, args) for f in args.through)
        return Dm.plane_directions(obj, vb, vc, sources=[{"label": "ckpt"}, sb, sc])
    if kind == "interp":
        if not args.to:
            raise ValueError("--directions interp needs --to B.pt")
        vb, sb = second_checkpoint(obj, args.to, args)
        return Dm.interpolation_direction(obj, vb, source=sb)
    raise ValueError(f"unknown directions {kind!r}")


def end_statistics(model: Any, end: Any, args: argparse.Namespace) -> dict[str, torch.Tensor] | None:
    """Under ``--bn frozen``, the BatchNorm running statistics of an interpolation's end checkpoint ``end`` (a
    path or a loaded checkpoint), to move with the weights; None otherwise or without BatchNorm."""
    from landscape.checkpoint import Checkpoint, load_checkpoint
    from landscape.landscapes.batchnorm import running_statistics

    if args.bn != "frozen":
        return None
    ckpt = end if isinstance(end, Checkpoint) else load_checkpoint(
        end, allow_state_dict=True, strip_prefix=getattr(args, "strip_prefix", None))
    return running_statistics(model, ckpt.state_dict, where=f"{ckpt.path}: ") or None


def default_axes(args: argparse.Namespace, dirs: Any, dims: int) -> list[np.ndarray]:
    kind = dirs.meta["kind"]
    if kind == "interpolation":
        return [interpolation_axis(args.xrange, args.xpoints)]
    if kind in ("pca", "plane"):
        coords = np.asarray(dirs.meta.get("path") or [m["coords"] for m in dirs.meta["markers"]])
        rng, pts = around(coords[:, 0]), 41
    else:
        rng, pts = (-1.0, 1.0), 51
    x = resolve_axis(args.xrange, args.xpoints, rng, pts)
    if dims == 1:
        return [x]
    if kind in ("pca", "plane"):
        yrng = around(coords[:, 1])
    else:
        yrng = tuple(args.xrange) if args.xrange else rng
    y = resolve_axis(args.yrange, args.ypoints if args.ypoints is not None else args.xpoints, yrng, pts)
    return [x, y]


def compute(args: argparse.Namespace, dims: int, tag: str) -> tuple[Any, str]:
    """Open the checkpoint, make (or reuse) the directions (eigenvectors of the training loss's Hessian),
    compute (or resume) the surface. Returns ``(surface, stem)``."""
    from landscape.landscapes.surface import compute_surface

    from landscape.cli.guards import check_weights

    ckpt, model, data = open_from_args(args)
    check_weights(ckpt, args)
    device = setup_device(args)
    objs = objectives(model, data, args, device)
    train = objs.get("train") or objectives(model, data, args, device, ["train"])["train"]
    stem = args.out or default_stem(ckpt.path, f"{tag}-{args.directions}")
    head = header(ckpt, args)
    request = {"checkpoint": head["checkpoint"]["sha256"], "dims": dims, **{k: getattr(args, k, None) for k in (
        "directions", "norm", "bias_bn", "seed", "to", "through", "trajectory", "eig_tol", "params", "dtype",
        "subset")}}
    dirs = cached_directions(stem, request, lambda: make_directions(args, train, dims, not args.quiet), args.restart)
    axes = default_axes(args, dirs, dims)
    ends = end_statistics(model, args.to, args) if dirs.meta["kind"] == "interpolation" else None
    surface = compute_surface(objs, dirs, axes, bn=args.bn, bn_source=train, chunk_size=chunk_size(args),
                              path=f"{stem}.npz", resume=not args.restart, header=head, progress=not args.quiet,
                              end_statistics=ends)
    return surface, stem


def centre(surface: Any) -> dict[str, float]:
    """Metric values at the all-zero grid point, if it is one."""
    try:
        return {k: surface.value_at(k, *([0.0] * surface.ndim)) for k in surface.metrics
                if np.isfinite(surface.value_at(k, *([0.0] * surface.ndim)))}
    except KeyError:
        return {}


def nonfinite_notes(surface: Any, label: str = "") -> list[str]:
    """One line per metric of ``surface`` that is NaN or infinite somewhere: how many grid points, and that the
    plots leave them blank (a diverged checkpoint, or a range reaching where the loss overflows)."""
    notes = []
    for k in surface.metrics:
        values = np.asarray(surface[k], dtype=float)
        bad = int(values.size - np.isfinite(values).sum())
        if k.endswith("_acc") and np.isnan(values).all():  # a loss_fn that returns no accuracy: nothing to note
            continue
        if bad:
            notes.append(f"note: {label}{k} is not finite (NaN or inf) at {bad} of {values.size} grid points; "
                         "the plots leave them blank")
    return notes
