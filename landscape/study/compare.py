"""The measures of several checkpoints side by side (for ``landscape compare``).

Each item is a ``landscape analyze --json`` report (``.json``), a checkpoint (analyzed here with the
``landscape analyze`` defaults updated by ``options``, by dest name as in a study file), or a report
dict. A row per scalar (``metrics.train_acc``, ``hessian_eigenvalues.lambda_max``,
``sharpness.worst[rho=0.05]``, ...; the union over the reports, in report order), a column per item.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence


def load_report(item: str | Path | dict[str, Any], *, options: dict[str, Any] | None = None,
                model: str | None = None, data: str | None = None, json_path: str | Path | None = None,
                progress: bool = False) -> dict[str, Any]:
    """The analysis report of ``item`` (see the module docstring); a checkpoint's report also holds its
    optimizer. ``model``/``data``: entry points for bare state_dicts or foreign models. ``json_path``: where
    a checkpoint's report is written as it is computed (a re-run with the same settings resumes there)."""
    if isinstance(item, dict):
        return item
    path = Path(item)
    if path.suffix == ".json":
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON report ({e})") from e
        if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
            raise ValueError(f"{path}: not a `landscape analyze --json` report (no metrics section)")
        return report
    from landscape.checkpoint import open_checkpoint

    ckpt, net, bundle = open_checkpoint(path, model=model, data=data)
    return analyze_checkpoint(ckpt, net, bundle, options, json_path=json_path, progress=progress)


def analyze_checkpoint(ckpt: Any, model: Any, data: Any, options: dict[str, Any] | None = None, *,
                       json_path: str | Path | None = None, progress: bool = False, loss: Any = None) -> dict[str, Any]:
    """:func:`landscape.analysis.analyze` of an opened checkpoint (``landscape.checkpoint.open_checkpoint``)
    with the ``landscape analyze`` defaults updated by ``options`` (dest names, values as in a study file)
    and ``loss`` (default: the data's task); the report's header names the checkpoint (path, SHA-256), model,
    data and optimizer."""
    from landscape.analysis import analyze, file_digest
    from landscape.study.spec import analysis_options

    header = {"checkpoint": {"path": str(ckpt.path), "sha256": file_digest(ckpt.path)},
              "model": {"name": ckpt.model_name, "kwargs": ckpt.model_kwargs},
              "data": {"name": ckpt.data_name, "kwargs": ckpt.data_kwargs}, "optimizer": ckpt.optimizer}
    return analyze(model, data, analysis_options(options or {}), header=header, json_path=json_path,
                   resume=True, progress=progress, loss=loss)


def _labels(items: Sequence[Any]) -> list[str]:
    paths = [Path(i) if not isinstance(i, dict) else Path(str(i.get("checkpoint", {}).get("path", f"report{k}")))
             for k, i in enumerate(items)]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [str(p) for p in paths]


def comparison(items: Sequence[str | Path | dict[str, Any]], *, labels: Sequence[str] | None = None,
               **kwargs: Any) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    """``(labels, [(row name, [value per item]), ...])``: the optimizer (when known), then every scalar."""
    from landscape.analysis import report_scalars

    reports = [load_report(i, **kwargs) for i in items]
    labels = list(labels) if labels is not None else _labels(items)
    if len(labels) != len(reports):
        raise ValueError(f"{len(labels)} labels for {len(reports)} items")
    scalars = [report_scalars(r) for r in reports]
    names = list(dict.fromkeys(k for s in scalars for k in s))
    rows: list[tuple[str, list[Any]]] = []
    opts = [optimizer_label(r) for r in reports]
    if any(opts):
        rows.append(("optimizer", opts))
    rows += [(n, [s.get(n) for s in scalars]) for n in names]
    return labels, rows


def optimizer_label(report: dict[str, Any]) -> str | None:
    """``sam(rho=0.05)``: the method with its radius and the hyper-parameters that differ from its defaults."""
    opt = report.get("optimizer")
    if not isinstance(opt, dict) or "name" not in opt:
        return None
    hparams = opt.get("hparams") or {}
    try:
        from optimizers import optimizer_hparams

        defaults = optimizer_hparams(opt["name"])
    except (KeyError, ValueError, ImportError):
        defaults = {}
    shown = {k: v for k, v in hparams.items() if k == "rho" or k not in defaults or defaults[k] != v}
    text = ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))
    return f"{opt['name']}({text})" if text else str(opt["name"])


def format_cell(v: Any) -> str:
    """One table cell: ``-`` for a missing value, 6 significant digits for a float."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def measures_table(items: Sequence[str | Path | dict[str, Any]], *, labels: Sequence[str] | None = None,
                   title: str | None = None, **kwargs: Any) -> Any:
    """A rich table: a row per measure scalar, a column per checkpoint / report."""
    from rich.markup import escape
    from rich.table import Table

    names, rows = comparison(items, labels=labels, **kwargs)
    t = Table(title=None if title is None else escape(title))
    t.add_column("measure", style="bold")
    for n in names:
        t.add_column(escape(n), justify="right")
    for name, values in rows:
        t.add_row(escape(name), *(escape(format_cell(v)) for v in values))  # worst[rho=0.05] is not markup
    return t


HEADLINE = (("metrics.test_acc", "test acc", False), ("metrics.gen_gap", "gap", False),
            ("hessian_eigenvalues.lambda_max", "lambda_max", True), ("hessian_trace.trace", "trace", True),
            ("sharpness.worst[", "sharpness", True), ("adaptive_sharpness.worst[", "adaptive sharpness", True),
            ("surrogate_gap.gap[", "surrogate gap", True))
"""The rows of :func:`headline`: (scalar name or prefix ending in ``[``, short name, show the ratio)."""


def headline(labels: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]]) -> str:
    """One line comparing the last column of :func:`comparison` with the first on the main measures, e.g.
    ``sam vs sgd: test acc 0.61 vs 0.60, gap 0.135 vs 0.145, lambda_max 5.2 vs 7.6 (0.68x), ...``."""
    values = dict(rows)
    parts = []
    for key, short, ratio in HEADLINE:
        name = key if not key.endswith("[") else next((n for n in values if n.startswith(key)), None)
        if name is None or name not in values:
            continue
        a, b = values[name][0], values[name][-1]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)):
            continue
        tag = name[len(key) - 1:].replace("[", " (").replace("]", ")") if key.endswith("[") else ""
        text = f"{short}{tag} {b:.4g} vs {a:.4g}"
        if ratio and a:
            text += f" ({b / a:.2f}x)"
        parts.append(text)
    return f"{labels[-1]} vs {labels[0]}: " + (", ".join(parts) if parts else "no common measures")


def measures_markdown(items: Sequence[str | Path | dict[str, Any]], *, labels: Sequence[str] | None = None,
                      **kwargs: Any) -> str:
    """The same as a markdown table."""
    names, rows = comparison(items, labels=labels, **kwargs)
    out = ["| measure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    out += [f"| {name} | " + " | ".join(map(format_cell, values)) + " |" for name, values in rows]
    return "\n".join(out)


__all__ = ["HEADLINE", "analyze_checkpoint", "comparison", "headline", "load_report", "measures_markdown",
           "measures_table"]
