"""ASAM Table 1 from a study's correlation.json: sharpness vs adaptive sharpness, p = 2 and inf.

    python gallery/asam_table1.py [gallery/study_mnist1d/correlation.json] [--group all|sgd|sam|asam]

For each of the four measures the radius rho is the one of the sweep with the largest tau against the
generalization gap (asam.txt App. B picks each rho by a grid search the same way); the rows are tau,
the granulated psi_i and their mean Psi, as in the paper's table.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

FAMILIES = [("sharpness, p=2", "l2:sharpness.worst"), ("adaptive, p=2", "l2:adaptive_sharpness.worst"),
            ("sharpness, p=inf", "linf:sharpness.worst"), ("adaptive, p=inf", "linf:adaptive_sharpness.worst")]


def f(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def sweeps(corr: dict, group: str = "all", target: str = "gen_gap") -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """``(best, sweeps)`` for each family of ``FAMILIES`` found: the correlation stats of the rho with the
    largest tau against ``target`` in ``group``, and those of every rho of the sweep."""
    g = corr["groups"][group]
    stats = {s["measure"]: s for s in g["targets"][target]}
    best, swept = {}, {}
    for label, prefix in FAMILIES:
        sweep = [s for m, s in stats.items() if m.startswith(prefix + "[") and s["tau"] is not None]
        if sweep:
            swept[label] = sweep
            best[label] = max(sweep, key=lambda s: s["tau"])
    if not best:
        raise SystemExit(f"no sharpness measures in group {group!r}; is this the gallery study?")
    return best, swept


def rho(s: dict) -> str:
    """The radius in a measure name such as ``l2:sharpness.worst[rho=0.5]``."""
    return re.search(r"rho=([^\]]+)", s["measure"]).group(1)


def table1(corr: dict, group: str = "all", target: str = "gen_gap") -> str:
    g = corr["groups"][group]
    best, swept = sweeps(corr, group, target)

    cols = list(best)
    lines = ["| | " + " | ".join(f"{c} (rho={rho(best[c])})" for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    lines.append("| tau | " + " | ".join(f(best[c]["tau"]) for c in cols) + " |")
    for axis in g["axes"]:
        lines.append(f"| psi {axis.rsplit('.', 1)[-1]} | " + " | ".join(f(best[c]["psi"][axis]) for c in cols) + " |")
    lines.append("| Psi | " + " | ".join(f(best[c]["Psi"]) for c in cols) + " |")
    lines.append("| tau at each rho | " + " | ".join(
        ", ".join(f"{rho(s)}: {f(s['tau'])}" for s in swept[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("correlation", type=Path, nargs="?",
                   default=Path(__file__).parent / "study_mnist1d" / "correlation.json")
    p.add_argument("--group", default="all")
    p.add_argument("--target", default="gen_gap")
    args = p.parse_args()
    corr = json.loads(args.correlation.read_text())
    print(f"{corr['study']}: group {args.group}, {corr['groups'][args.group]['runs']} runs, vs {args.target}\n")
    print(table1(corr, args.group, args.target))


if __name__ == "__main__":
    main()
