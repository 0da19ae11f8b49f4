"""The analysis report behind ``landscape analyze``: a registry of measures.

A :class:`Measure` adds its own command-line flags, computes one JSON
section from an :class:`AnalysisContext` and turns that section into table
rows. Modules listed in :data:`MEASURE_MODULES` register theirs on import
(``register_measure``); the report runs every enabled measure in order.

``analyze(model, data, ...)`` is the programmatic entry point; the report is
written atomically after every measure, and a re-run with the same
checkpoint and settings (``resume_from``) skips the sections already done.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

MEASURE_MODULES = ["landscape.curvature.measures", "landscape.sharpness.measures"]
"""Modules whose import registers measures (in report order)."""


@dataclass
class Measure:
    """One section of the report.

    ``add_arguments(group)`` adds its flags; ``compute(ctx)`` returns the JSON section;
    ``rows(section)`` gives ``(label, value)`` table rows; ``enabled(options)`` says whether it runs;
    ``scalars(section)`` gives the named numbers a study correlates (``{"lambda_max": 3.1}``; default
    :func:`default_scalars`).
    """

    name: str
    title: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    compute: Callable[["AnalysisContext"], dict[str, Any]]
    rows: Callable[[dict[str, Any]], list[tuple[str, str]]]
    enabled: Callable[[argparse.Namespace], bool] = lambda options: True
    scalars: Callable[[dict[str, Any]], dict[str, float]] | None = None


# Bookkeeping of a section that is not a measurement (work counts, settings, timing).
_NOT_SCALARS = {"seconds", "matvecs", "passes", "iterations", "samples", "num_samples", "num_batches", "k", "rank",
                "seed", "tol", "rtol", "batch_size", "max_batches", "max_iter", "steps", "restarts", "num_runs",
                "num_steps", "sigma", "converged", "work", "cost", "geometry", "settings", "options"}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def default_scalars(section: dict[str, Any], _prefix: str = "", _depth: int = 0) -> dict[str, float]:
    """The scalars of a section without its own ``scalars``, named by their path: every number (less
    bookkeeping such as ``seconds``, ``matvecs``, ``k``, ``work``, ``geometry``); the first element of a
    list of numbers whose key names eigenvalues or values (``eigenvalues[0]``); inside nested dicts
    (``worst_case.sharpness``) and lists of dicts, an element labelled by a number that tells the
    elements apart (a sweep: ``rows[rho=0.05].worst_case.sharpness``) or by its index; 4 levels at most."""
    out: dict[str, float] = {}
    for key, value in section.items():
        if not isinstance(key, str) or key in _NOT_SCALARS or key.startswith("_"):
            continue
        name = f"{_prefix}{key}"
        if _number(value):
            out[name] = float(value)
        elif isinstance(value, list) and value and _number(value[0]):
            if "eigenvalue" in key or key.endswith("values"):
                out[f"{name}[0]"] = float(value[0])
        elif isinstance(value, dict) and _depth < 3:
            out.update(default_scalars(value, f"{name}.", _depth + 1))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value) and _depth < 3:
            label = _sweep_key(value)
            for i, item in enumerate(value):
                tag = f"{label}={item[label]:g}" if label else str(i)
                rest = {k: v for k, v in item.items() if k != label}
                out.update(default_scalars(rest, f"{name}[{tag}].", _depth + 1))
    return out


def _sweep_key(items: list[dict[str, Any]]) -> str | None:
    """The first key holding a number in every item, with a different value in each."""
    for key, value in items[0].items():
        if _number(value) and all(_number(it.get(key)) for it in items):
            if len({it[key] for it in items}) == len(items):
                return key
    return None


def section_scalars(name: str, section: dict[str, Any]) -> dict[str, float]:
    """``scalars`` of section ``name`` (its measure's own, else :func:`default_scalars`); ``None`` -> NaN."""
    measure = load_measures().get(name)
    fn = measure.scalars if measure is not None and measure.scalars is not None else default_scalars
    return {k: (float("nan") if v is None else float(v)) for k, v in fn(section).items()}


def report_scalars(report: dict[str, Any]) -> dict[str, float]:
    """Every scalar of a report as ``{"<section>.<key>": value}``, sections in report order."""
    out: dict[str, float] = {}
    for name in load_measures():
        if isinstance(report.get(name), dict):
            out.update({f"{name}.{k}": v for k, v in section_scalars(name, report[name]).items()})
    return out


MEASURES: dict[str, Measure] = {}


def register_measure(measure: Measure) -> Measure:
    if measure.name in MEASURES:
        raise ValueError(f"measure {measure.name!r} registered twice")
    MEASURES[measure.name] = measure
    return measure


def load_measures() -> dict[str, Measure]:
    for module in MEASURE_MODULES:
        importlib.import_module(module)
    return MEASURES


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The shared analysis flags plus every registered measure's flags."""
    g = p.add_argument_group("data and numerics")
    g.add_argument("--split", choices=["train", "test"], default="train",
                   help="data split the curvature measures use [default: train]")
    g.add_argument("--subset", type=int, default=None, metavar="N",
                   help="use a fixed random subset of N samples of --split (seeded by --seed) [default: all]")
    g.add_argument("--batch-size", type=int, default=512, help="micro-batch size (memory only) [default: 512]")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1 [default: auto]")
    g.add_argument("--dtype", choices=sorted(_DTYPES), default="float32",
                   help="precision of the model evaluations [default: float32]")
    g.add_argument("--params", default=None, metavar="SPEC",
                   help="parameters to analyze: 'weights' (no biases / norm layers) or a regular expression "
                        "on parameter names [default: all]")
    g.add_argument("--hvp-mode", choices=["auto", "reverse", "forward"], default="auto",
                   help="Hessian-vector products by double backward, forward-over-reverse, or auto (double "
                        "backward, reusing kept graphs) [default: auto]")
    g.add_argument("--memory", choices=["auto", "low"], default="auto",
                   help="low: keep no gradient graphs or streamed data, the spectral density in three vectors "
                        "per run and eigenvalues in a compact Krylov basis (peak memory near PyHessian's, products "
                        "about 2x slower); auto: keep the graphs where they fit a quarter of the free memory, else "
                        "low [default: auto]")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw [default: 0]")
    for measure in load_measures().values():
        measure.add_arguments(p.add_argument_group(measure.title))
    from landscape.cli.ranges import constrain

    constrain(p)  # every numeric option finite and in its range (landscape/cli/ranges.py)


def measure_options() -> dict[str, list[str]]:
    """The options (dest names) each measure's flags set, ``{"hessian_eigenvalues": ["top_k", ...], ...}``,
    and under ``""`` the shared ones (split, subset, dtype, seed, ...)."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    titles = {m.title: name for name, m in load_measures().items()}
    out: dict[str, list[str]] = {}
    for g in p._action_groups:
        name = titles.get(g.title, "" if g.title == "data and numerics" else None)
        if name is not None:
            out[name] = [a.dest for a in g._group_actions]
    return out


def default_options(**overrides: Any) -> argparse.Namespace:
    """The options ``landscape analyze`` would use with no flags, updated by ``overrides``."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    options = p.parse_args([])
    unknown = sorted(set(overrides) - set(vars(options)))
    if unknown:
        raise ValueError(f"unknown analysis option(s): {', '.join(unknown)}")
    for k, v in overrides.items():
        setattr(options, k, v)
    return options


class AnalysisContext:
    """What a measure computes from: the model, the data, the options and cached objectives."""

    def __init__(self, model: nn.Module, data: Any, options: argparse.Namespace, *, progress: bool = False,
                 loss: Any = None) -> None:
        from landscape.distributed import local_device

        self.model, self.data, self.options, self.progress = model, data, options, progress
        self.loss = loss
        """The loss protocol (None: the data's task; see :func:`landscape.objective.loss.as_loss`)."""
        self.device = local_device(options.device)
        self.dtype = _DTYPES[options.dtype]
        self.seed = options.seed
        self._objectives: dict[tuple[str, int | None], Any] = {}
        self.sections: dict[str, dict[str, Any]] = {}
        """The report's sections finished so far (computed or resumed), for measures that build on others."""
        self.cache: dict[str, Any] = {}
        """Values measures share within one run (e.g. a Lanczos ``lambda_max``)."""

    def objective(self, split: str | None = None, *, full: bool = False):
        """The (cached) :class:`~landscape.objective.Objective` on ``split`` (default ``--split``),
        on ``--subset`` samples unless ``full``."""
        from landscape.objective import Objective

        split = split or self.options.split
        key = (split, None if full else self.options.subset)
        if key not in self._objectives:
            self._objectives[key] = Objective.from_bundle(
                self.model, self.data, split, subset=key[1], seed=self.seed, loss=self.loss,
                batch_size=self.options.batch_size, device=self.device, dtype=self.dtype,
                params=self.options.params, hvp_mode=self.options.hvp_mode,
                memory=self.options.memory)
        return self._objectives[key]

    def has_split(self, split: str) -> bool:
        """Whether the data has ``split`` (a user's stream may have no test split)."""
        return split in getattr(self.data, "splits", ("train", "test"))


def settings(options: argparse.Namespace) -> dict[str, Any]:
    """The options that determine the report's numbers (what a resumed run must match): the analysis
    flags' (:func:`add_arguments`), not a command's own (``--json``, ``--html``, ``--quiet``, ...)."""
    known = {dest for dests in measure_options().values() for dest in dests}
    return {k: v for k, v in sorted(vars(options).items()) if k in known}


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def analyze(
    model: nn.Module,
    data: Any,
    options: argparse.Namespace | None = None,
    *,
    header: dict[str, Any] | None = None,
    json_path: str | Path | None = None,
    resume: bool = True,
    progress: bool = False,
    loss: Any = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run every enabled measure; return ``{**header, "loss", "settings", "runtime", <measure>: section,
    "complete"}``.

    ``data``: a :class:`~landscape.data.DataBundle` or :class:`~landscape.data.streams.StreamData`;
    ``loss``: anything :func:`~landscape.objective.loss.as_loss` takes (default: the data's task).
    ``json_path``: write the report there atomically after each measure; with ``resume`` a report
    already there with the same header, loss and settings has its finished sections reused.
    The model's parameters, buffers and train/eval flags are left exactly as they were.
    """
    from landscape import distributed as D
    from landscape.checkpoint import versions
    from landscape.io import atomic_write_json
    from landscape.objective.loss import as_loss

    if options is None:
        options = default_options(**overrides)
    else:
        for k, v in overrides.items():
            setattr(options, k, v)
    loss = as_loss(loss, task=getattr(data, "task", None))
    ctx = AnalysisContext(model, data, options, progress=progress, loss=loss)
    report: dict[str, Any] = {**(header or {}), "loss": loss.describe(), "settings": settings(options),
                              "runtime": {"device": str(ctx.device), "world_size": D.world_size(),
                                          "versions": versions()}}
    check_sizes(ctx, options)
    done = _previous(json_path, report) if resume and json_path is not None and D.is_main() else {}
    if D.is_distributed():  # every rank must run the same measures
        box = [done]
        torch.distributed.broadcast_object_list(box, src=0)
        done = box[0]
    for name, measure in load_measures().items():
        if not measure.enabled(options):
            continue
        if name in done:
            report[name] = ctx.sections[name] = done[name]
            continue
        t0 = time.perf_counter()
        section = measure.compute(ctx)
        section["seconds"] = time.perf_counter() - t0
        report[name] = ctx.sections[name] = section
        if json_path is not None and D.is_main():
            atomic_write_json(json_path, {**report, "complete": False})
    report["complete"] = True
    if json_path is not None and D.is_main():
        atomic_write_json(json_path, report)
    return report


def check_sizes(ctx: AnalysisContext, options: argparse.Namespace) -> None:
    """One-line errors naming the flag, before any measure runs, for sizes beyond the model's ``P`` selected
    parameters or the data's rows (in-memory data): ``--top-k`` (twice with ``--which both``), ``--fisher-k``,
    ``--trace-rank`` against ``--trace-samples``, ``--grad-batch-size``, ``--sharpness-batch-size``."""
    from landscape.curvature.trace import SKETCH_PRODUCTS
    from landscape.objective.sources import TensorSource

    get = lambda name: getattr(options, name, None)  # noqa: E731 -- flags of measures that may not be loaded
    wanted = {"top_k": (get("top_k") or 0) * (2 if get("which") == "both" else 1), "fisher_k": get("fisher_k") or 0}
    batches = {"grad_batch_size": get("grad_batch_size"), "sharpness_batch_size": get("sharpness_batch_size")}
    rank, samples = get("trace_rank"), get("trace_samples") or 0
    if not any(wanted.values()) and not any(batches.values()) and rank is None:
        return
    obj = ctx.objective()
    P = obj.num_params
    for name, n in wanted.items():
        if n > P:
            both = " with --which both" if name == "top_k" and get("which") == "both" else ""
            raise ValueError(f"--{name.replace('_', '-')} {get(name)}{both} asks for {n} eigenvalues of {P} "
                             "parameters")
    cost = SKETCH_PRODUCTS.get(str(get("trace_method")).removeprefix("hutchpp-"), 1)
    if rank is not None and 0 < samples < P and (rank < 1 or cost * min(rank, P) + 2 > samples):
        raise ValueError(f"--trace-rank {rank} needs 1 <= rank and {cost} * rank + 2 <= --trace-samples "
                         f"({samples})")
    rows = obj.source.rows if isinstance(obj.source, TensorSource) else None
    for name, size in batches.items():
        if size is not None and rows is not None and size > rows:
            raise ValueError(f"--{name.replace('_', '-')} {size} exceeds the {rows} rows of the data")


def _previous(path: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """Finished sections of an earlier report at ``path`` made from the same header and settings (the same
    checkpoint is the same SHA-256, under any path)."""
    try:
        old = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}
    from landscape.checkpoint import without_paths

    if not isinstance(old, dict) or any(without_paths(old.get(k)) != without_paths(json.loads(json.dumps(
            v, default=str))) for k, v in report.items()):
        return {}
    return {k: v for k, v in old.items() if k in MEASURES}


def table(report: dict[str, Any], title: str = "") -> Any:
    """A rich table of the report's sections."""
    from rich.table import Table

    t = Table(title=title or None, show_header=False)
    t.add_column("measure", style="bold")
    t.add_column("value")
    for name, measure in load_measures().items():
        if name not in report:
            continue
        t.add_section()
        for label, value in measure.rows(report[name]):
            t.add_row(label, value)
    return t


__all__ = ["AnalysisContext", "MEASURES", "MEASURE_MODULES", "Measure", "add_arguments", "analyze",
           "default_options", "default_scalars", "file_digest", "load_measures", "measure_options",
           "register_measure", "report_scalars", "section_scalars", "settings", "table"]
