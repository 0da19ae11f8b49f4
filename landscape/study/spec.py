"""The study file (TOML) -> a validated :class:`Study`: the list of runs and what to measure.

::

    name = "mnist1d: SGD vs SAM vs ASAM"     # optional
    seeds = [0, 1]                           # training seeds [default: [0]]

    [train]                                  # fixed training options (TrainConfig fields)
    model = "mlp"
    model_kwargs = { hidden = [32, 32] }
    data = "mnist1d"
    epochs = 30                              # the cap ...
    stop_train_acc = 0.99                    # ... and the stop rule of Jiang et al. (or stop_train_loss)

    [grid]                                   # shared axes: every combination is trained
    lr = [0.03, 0.1]
    batch_size = [32, 128]
    weight_decay = [0.0, 5e-4]
    model_kwargs.dropout = [0.0, 0.25]       # a keyword of the model (or data_kwargs.X)

    [optimizers.sgd]                         # one table per method: any registered name
    [optimizers.sam]
    rho = [0.02, 0.05]                       # the method's hyper-parameters: a list is swept,
    [optimizers.asam]                        # a scalar is fixed
    rho = 0.5
    [optimizers.sam_adamw]                   # a label of your own: name the method, a base,
    method = "sam"                           # and fixed training overrides
    base = "adamw"
    train = { lr = 1e-3 }

    [measures]                               # `landscape analyze` options by dest name
    subset = 1000                            # (--top-k -> top_k); a sub-table is a separate
    top_k = 1                                # analysis pass with its own options

    [correlation]
    min_train_acc = 0.99                     # the train-accuracy filter of asam.txt App. B

In ``[grid]`` and optimizer tables a list is a list of values to sweep; a setting whose value is itself a
list is swept with a list of lists (``hidden = [[32], [64, 64]]``) and fixed with a one-element one.

Each run is identified by a hash of its resolved training configuration (optimizer hyper-parameters
filled with their defaults), so a rerun finds its finished runs, and changing a setting of a run makes
it a new run.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

TOP_KEYS = {"name", "seeds", "train", "grid", "optimizers", "measures", "correlation"}
OPTIMIZER_KEYS = {"method", "base", "train"}
RESERVED_AXES = {"optimizer", "hparams", "seed", "base"}
SHORT = {"batch_size": "bs", "weight_decay": "wd", "model_kwargs.dropout": "dropout"}
DEFAULT_TARGETS = ("gen_gap", "test_error")


@dataclass(frozen=True)
class Run:
    """One training configuration of a study."""

    id: str
    name: str
    config: dict[str, Any]  # TrainConfig.to_dict(), hyper-parameters resolved
    axes: dict[str, Any]  # shared grid values, e.g. {"lr": 0.1, "model_kwargs.dropout": 0.0}
    optimizer: str  # the label (table name in [optimizers])
    method: str  # the registered optimizer name
    hparams: dict[str, Any]  # the swept hyper-parameters of this variant
    variant: str  # "sam(rho=0.05)", or the label when nothing is swept
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "optimizer": self.optimizer, "method": self.method,
                "variant": self.variant, "seed": self.seed, "axes": self.axes, "hparams": self.hparams,
                "config": self.config}


@dataclass
class CorrelationSpec:
    """``[correlation]``: what to correlate and how."""

    min_train_acc: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    measures: tuple[str, ...] = ()  # glob patterns on column names; () = every measure column
    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    tau: str = "b"  # scipy's tau-b (ties), "a" (asam.txt eq.), "c"
    rank_by: str = "psi"  # psi | tau


@dataclass
class Study:
    """A parsed study file."""

    path: Path
    name: str
    runs: list[Run]
    axes: dict[str, list[Any]]  # shared axes and their values (in file order)
    optimizer_axes: dict[str, dict[str, list[Any]]]  # label -> swept hyper-parameter -> values
    seeds: list[int]
    passes: dict[str, dict[str, Any]]  # analysis pass name ("" for a single pass) -> options
    correlation: CorrelationSpec = field(default_factory=CorrelationSpec)

    @property
    def optimizers(self) -> list[str]:
        return list(self.optimizer_axes)

    def hparam_columns(self) -> list[str]:
        """Swept hyper-parameter names over all optimizers (table columns), first-seen order."""
        return list(dict.fromkeys(hp for axes in self.optimizer_axes.values() for hp in axes))

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "source": str(self.path), "axes": self.axes, "optimizers": self.optimizer_axes,
                "seeds": self.seeds, "passes": self.passes, "correlation": vars(self.correlation),
                "runs": [r.to_dict() for r in self.runs]}


class StudyError(ValueError):
    """An invalid study file; the message is one line."""


def read_toml(path: str | Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{path}: invalid TOML ({' '.join(str(e).split())})") from e
    except IsADirectoryError as e:
        raise StudyError(f"{path}: is a directory, expected a study file (TOML)") from e
    except FileNotFoundError as e:
        raise StudyError(f"{path}: no such file") from e
    except UnicodeDecodeError as e:
        raise StudyError(f"{path}: not a TOML text file ({e.reason})") from e


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (every error is a one-line :class:`StudyError`)."""
    path = Path(path)
    return parse_study(read_toml(path), path)


def parse_study(doc: dict[str, Any], path: str | Path = "study.toml") -> Study:
    from optimizers import available_optimizers, optimizer_hparams, resolve_hparams
    from optimizers.config import TrainConfig

    path = Path(path)
    where = f"{path}:"

    def fail(msg: str) -> StudyError:
        return StudyError(f"{where} {msg}")

    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}; a study file has {', '.join(sorted(TOP_KEYS))}")
    name = doc.get("name", path.stem)
    if not isinstance(name, str):
        raise fail("name must be a string")
    seeds = doc.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds) or len(set(seeds)) != len(seeds)):
        raise fail(f"seeds must be a list of distinct integers, got {seeds!r}")

    fields = set(TrainConfig().to_dict())
    train = _table(doc, "train", fail)
    bad = sorted(set(train) - fields)
    if bad:
        raise fail(f"[train] unknown training option(s) {', '.join(bad)}")
    for key in ("optimizer", "hparams", "seed"):
        if key in train:
            raise fail(f"[train] {key} is set by {'seeds' if key == 'seed' else '[optimizers]'}, not [train]")
    _check_names(train.get("model", TrainConfig.model), train.get("data", TrainConfig.data), fail)

    axes: dict[str, list[Any]] = {}
    for key, values in _flatten(_table(doc, "grid", fail)).items():
        head = key.split(".", 1)[0]
        if key in RESERVED_AXES:
            raise fail(f"[grid] {key} cannot be an axis; use {'seeds' if key == 'seed' else '[optimizers]'}")
        if head in ("model_kwargs", "data_kwargs"):
            if "." not in key:
                raise fail(f"[grid] {key} must name a keyword: {key}.NAME = [values]")
        elif key not in fields:
            raise fail(f"[grid] unknown training option {key!r}")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise fail(f"[grid] {key} has no values")
        if len({_canon(v) for v in values}) != len(values):
            raise fail(f"[grid] {key} has repeated values")
        if "." not in key and key in train:
            raise fail(f"[grid] {key} is also fixed in [train]")
        axes[key] = values

    opt_tables = _table(doc, "optimizers", fail)
    if not opt_tables:
        raise fail("[optimizers] is empty; add at least one table such as [optimizers.sgd]")
    known = available_optimizers()
    optimizer_axes: dict[str, dict[str, list[Any]]] = {}
    variants: list[tuple[str, str, str, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    for label, table in opt_tables.items():
        if not isinstance(table, dict):
            raise fail(f"[optimizers] {label} must be a table ([optimizers.{label}])")
        method = table.get("method", label)
        if method not in known:
            raise fail(f"[optimizers.{label}] unknown optimizer {method!r}; known: {', '.join(known)}"
                       + ("" if "method" in table else " (or set method = NAME)"))
        if not isinstance(table.get("train", {}), dict):
            raise fail(f"[optimizers.{label}] train must be a table of training options")
        overrides = dict(table.get("train", {}))
        if "base" in table:
            overrides["base"] = table["base"]
        bad = sorted(set(overrides) - fields)
        if bad:
            raise fail(f"[optimizers.{label}] unknown training option(s) {', '.join(bad)}")
        clash = sorted(k for k in overrides if k in axes or k in ("optimizer", "hparams", "seed"))
        if clash:
            raise fail(f"[optimizers.{label}] cannot override {', '.join(clash)} (a grid axis or set elsewhere)")
        hp_defaults = optimizer_hparams(method)
        given = {k: v for k, v in table.items() if k not in OPTIMIZER_KEYS}
        bad = sorted(set(given) - set(hp_defaults))
        if bad:
            raise fail(f"[optimizers.{label}] {method} has no hyper-parameter {', '.join(bad)}; "
                       f"it takes: {', '.join(sorted(hp_defaults)) or 'none'}")
        swept = {k: v for k, v in given.items() if isinstance(v, list) and len(v) != 1}
        fixed = {k: (v[0] if isinstance(v, list) else v) for k, v in given.items() if k not in swept}
        for k, v in swept.items():
            if not v:
                raise fail(f"[optimizers.{label}] {k} has no values")
            if len({_canon(x) for x in v}) != len(v):
                raise fail(f"[optimizers.{label}] {k} has repeated values")
            if k in axes or k in _table_columns():
                raise fail(f"[optimizers.{label}] hyper-parameter {k} clashes with a column of the same name")
        optimizer_axes[label] = swept
        for combo in itertools.product(*swept.values()):
            hp = dict(zip(swept, combo))
            variant = label if not hp else f"{label}({', '.join(f'{k}={_fmt(v)}' for k, v in hp.items())})"
            variants.append((label, method, variant, hp, {**fixed, **hp}, overrides))

    runs: list[Run] = []
    seen: dict[str, str] = {}
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        for label, method, variant, hp, all_hp, overrides in variants:
            for seed in seeds:
                cfg: dict[str, Any] = {k: v for k, v in train.items()}
                cfg["model_kwargs"] = dict(cfg.get("model_kwargs", {}))
                cfg["data_kwargs"] = dict(cfg.get("data_kwargs", {}))
                for key, v in point.items():
                    head, _, sub = key.partition(".")
                    if sub:
                        cfg[head][sub] = v
                    else:
                        cfg[key] = v
                cfg.update(overrides)
                cfg.update(optimizer=method, hparams=dict(all_hp), seed=seed)
                try:
                    config = TrainConfig.from_dict(cfg, label=_origin(label, train, point, overrides))
                    config.hparams = resolve_hparams(method, config.hparams)
                except (ValueError, TypeError, KeyError) as e:
                    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                    raise fail(f"{' '.join(str(msg).split())} (run {variant}, seed {seed})") from e
                cdict = config.to_dict()
                rid = run_id(cdict)
                rname = " ".join([variant, *(f"{_short(k)}={_fmt(v)}" for k, v in point.items()), f"seed={seed}"])
                if rid in seen:
                    raise fail(f"runs {seen[rid]!r} and {rname!r} have the same configuration")
                seen[rid] = rname
                runs.append(Run(id=rid, name=rname, config=cdict, axes=dict(point), optimizer=label, method=method,
                                hparams=dict(hp), variant=variant, seed=seed))

    passes = _passes(_table(doc, "measures", fail), fail)
    correlation = _correlation(_table(doc, "correlation", fail), fail)
    return Study(path=path, name=name, runs=runs, axes=axes, optimizer_axes=optimizer_axes, seeds=list(seeds),
                 passes=passes, correlation=correlation)


def _origin(label: str, train: dict[str, Any], point: dict[str, Any],
            overrides: dict[str, Any]) -> Callable[[str], str]:
    """Where a training option of a run was set, for a message: ``[train] lr``, ``[grid] lr``, ``seeds``,
    ``[optimizers.sam] rho``, ``[optimizers.sam] train.lr``."""
    def where(key: str) -> str:
        if key.startswith("hparams."):
            return f"[optimizers.{label}] {key[len('hparams.'):]}"
        if key == "seed":
            return "seeds"
        if key in overrides:
            return f"[optimizers.{label}] {'base' if key == 'base' else 'train.' + key}"
        if key in point or any(k.startswith(key + ".") for k in point):
            return f"[grid] {key}"
        return f"[train] {key}" if key in train else key

    return where


def _table_columns() -> set[str]:
    from landscape.study.table import METRIC_COLUMNS, RUN_COLUMNS, TRAIN_COLUMNS

    return {*RUN_COLUMNS, *TRAIN_COLUMNS, *METRIC_COLUMNS, "error"}


def run_id(config: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of a resolved training configuration."""
    return hashlib.sha256(_canon(config).encode()).hexdigest()[:12]


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def _short(key: str) -> str:
    return SHORT.get(key, key.rsplit(".", 1)[-1])


def axis_label(key: str) -> str:
    """Short name of an axis for reports (``model_kwargs.dropout`` -> ``dropout``)."""
    return key.rsplit(".", 1)[-1]


def _table(doc: dict[str, Any], key: str, fail: Any) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise fail(f"{key} must be a table ([{key}])")
    return value


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model_kwargs": {"dropout": [..]}}`` -> ``{"model_kwargs.dropout": [..]}``."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_names(model: str, data: str, fail: Any) -> None:
    """Model and dataset names exist (registry names) or import (``pkg.module:factory``)."""
    from landscape.entrypoints import load_entry_point
    from landscape.models import MODELS

    for what, name in (("model", model), ("data", data)):
        if not isinstance(name, str):
            raise fail(f"[train] {what} must be a string")
        if ":" in name:
            try:
                load_entry_point(name)
            except (ValueError, TypeError) as e:
                raise fail(f"[train] {what}: {e}") from e
            continue
        if what == "model":
            from landscape.models import builtin  # noqa: F401

            registry = MODELS
        else:
            from landscape.data import DATASETS

            try:
                from landscape.data import builtin as _  # noqa: F401
            except ImportError:  # no built-in datasets in this installation
                pass
            registry = DATASETS
        if name not in registry:
            raise fail(f"[train] unknown {what} {name!r}; known: {', '.join(sorted(registry)) or 'none'}"
                       " (or pkg.module:factory)")


def _passes(table: dict[str, Any], fail: Any) -> dict[str, dict[str, Any]]:
    """``[measures]``: shared options, plus one pass per sub-table (none: a single pass named "")."""
    shared = {k: v for k, v in table.items() if not isinstance(v, dict)}
    named = {k: v for k, v in table.items() if isinstance(v, dict)}
    raw = {name: {**shared, **opts} for name, opts in named.items()} if named else {"": shared}
    out: dict[str, dict[str, Any]] = {}
    for name, opts in raw.items():
        where = f"[measures{'.' + name if name else ''}]"
        if name and not name.replace("_", "").replace("-", "").isalnum():
            raise fail(f"{where} a pass name takes letters, digits, '_' and '-' only")
        opts = {k.replace("-", "_"): v for k, v in opts.items()}
        option_values(opts, lambda msg: fail(f"{where} {msg}"))
        out[name] = opts
    return out


def option_values(opts: dict[str, Any], fail: Any = ValueError) -> dict[str, Any]:
    """Study-file values of ``landscape analyze`` options (by dest name) parsed as the command line would:
    through each flag's own type, a number or string as its text, a list joined by commas (or one token
    per element for a multi-value flag); on/off flags take true/false. Unknown names, bad values and
    values outside a flag's choices raise ``fail(message)``."""
    import argparse

    from landscape.analysis import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    actions = {a.dest: a for a in p._actions}
    unknown = sorted(set(opts) - set(actions) - {"help"})
    if unknown:
        raise fail(f"unknown analysis option(s): {', '.join(unknown)} (see `landscape analyze --help`; options go "
                   "by their dest names, --top-k -> top_k)")
    out = {}
    for key, value in opts.items():
        a = actions[key]
        flag = a.option_strings[0] if a.option_strings else key
        try:
            out[key] = _parse_option(a, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise fail(f"{key}: invalid value {value!r} for {flag} ({' '.join(str(e).split())})") from e
        if a.choices is not None and out[key] is not None and out[key] not in a.choices:
            raise fail(f"{key} must be one of {', '.join(map(str, a.choices))}, got {value!r}")
    return out


def _parse_option(action: Any, value: Any) -> Any:
    import argparse

    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise TypeError("an on/off flag takes true or false")
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("not an on/off flag")
    convert = action.type or str
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return [convert(_text(v)) for v in (value if isinstance(value, list) else [value])]
    return convert(",".join(_text(v) for v in value) if isinstance(value, list) else _text(value))


def _text(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if v == math.inf else "-inf" if v == -math.inf else repr(v)
    if isinstance(v, (list, dict, bool)):
        raise TypeError(f"cannot write {v!r} as a command-line value")
    return str(v)


def analysis_options(opts: dict[str, Any]) -> Any:
    """The ``argparse.Namespace`` of ``landscape analyze`` for study-file options (see :func:`option_values`)."""
    from landscape.analysis import default_options

    return default_options(**option_values(opts))


def _correlation(table: dict[str, Any], fail: Any) -> CorrelationSpec:
    spec = CorrelationSpec()
    known = set(vars(spec))
    bad = sorted(set(table) - known)
    if bad:
        raise fail(f"[correlation] unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    for k, v in table.items():
        setattr(spec, k, tuple(v) if isinstance(v, list) else v)
    return check_correlation(spec, fail)


def check_correlation(spec: CorrelationSpec, fail: Any = StudyError) -> CorrelationSpec:
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if spec.min_train_acc is not None and not (number(spec.min_train_acc) and 0 <= spec.min_train_acc <= 1):
        raise fail(f"[correlation] min_train_acc must be in [0, 1], got {spec.min_train_acc!r}")
    if not isinstance(spec.targets, tuple) or not spec.targets or not all(isinstance(t, str) for t in spec.targets):
        raise fail("[correlation] targets must be a list of column names, e.g. [\"gen_gap\", \"test_error\"]")
    if not isinstance(spec.measures, tuple) or not all(isinstance(t, str) for t in spec.measures):
        raise fail("[correlation] measures must be a list of column names or glob patterns")
    if not (isinstance(spec.bootstrap, int) and not isinstance(spec.bootstrap, bool) and spec.bootstrap >= 0):
        raise fail(f"[correlation] bootstrap must be an integer >= 0, got {spec.bootstrap!r}")
    if not (number(spec.confidence) and 0 < spec.confidence < 1):
        raise fail(f"[correlation] confidence must be in (0, 1), got {spec.confidence!r}")
    if not (isinstance(spec.seed, int) and not isinstance(spec.seed, bool)):
        raise fail(f"[correlation] seed must be an integer, got {spec.seed!r}")
    if spec.tau not in ("a", "b", "c"):
        raise fail(f"[correlation] tau must be \"a\", \"b\" or \"c\", got {spec.tau!r}")
    if spec.rank_by not in ("psi", "tau"):
        raise fail(f"[correlation] rank_by must be \"psi\" or \"tau\", got {spec.rank_by!r}")
    return spec


__all__ = ["CorrelationSpec", "Run", "Study", "StudyError", "analysis_options", "axis_label", "check_correlation",
           "load_study", "option_values", "parse_study", "read_toml", "run_id"]
