"""ASAM Fig. 2 from the gallery study's committed results: sharpness and adaptive sharpness vs the generalization gap.

    python gallery/asam_fig2.py [--study gallery/study_mnist1d] [--out gallery/asam_fig2.png] [--quick]

asam.txt Fig. 2 scatters, for every trained model, the generalization gap against sharpness (a) and adaptive
sharpness (b), with Kendall's tau in the titles. This reads ``results.json`` and ``correlation.json`` of
``landscape study gallery/study_mnist1d.toml`` (nothing is retrained or re-measured), keeps the runs the study's
filter keeps (train accuracy >= ``min_train_acc``), and draws, with :func:`landscape.study.report.scatter_png`,
sharpness (T = 1) and adaptive sharpness (element-wise T = |w| + eta) for p = 2 (top row) and p = inf (bottom
row), each at the rho of its sweep with the largest tau (as ``asam_table1.py`` and asam.txt App. B pick it),
coloured by optimizer. ``--quick`` is the same (it trains nothing; the flag is there for the common test).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from asam_table1 import FAMILIES, rho, sweeps  # noqa: E402
from landscape.study.correlation import usable  # noqa: E402
from landscape.study.report import scatter_png  # noqa: E402
from trained import convert_png  # noqa: E402

PAPER_TAU = {"sharpness, p=2": 0.174, "adaptive, p=2": 0.636, "sharpness, p=inf": 0.257, "adaptive, p=inf": 0.616}


def figure(study: Path, out: Path, target: str = "gen_gap") -> dict[str, dict]:
    """Write the figure; return ``{family: {measure, rho, tau, Psi, n}}`` as measured."""
    corr = json.loads((study / "correlation.json").read_text())
    rows = json.loads((study / "results.json").read_text())["rows"]
    used, _ = usable(rows, corr["min_train_acc"])
    best, _ = sweeps(corr, "all", target)
    families = [label for label, _ in FAMILIES if label in best]
    measures = [best[label]["measure"] for label in families]
    titles = [f"{label.replace('adaptive', 'adaptive sharpness')}, rho = {rho(best[label])} "
              f"(paper: tau = {PAPER_TAU[label]:.3f})" for label in families]
    optimizers = list(dict.fromkeys(r["optimizer"] for r in used))
    filt = "" if corr["min_train_acc"] is None else f", train acc >= {corr['min_train_acc']:g}"
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".raw.png")
    scatter_png(used, measures, target, raw, corr, optimizers, titles=titles, columns=2, suptitle=(
        f"ASAM Fig. 2 reproduced: {target} vs sharpness and adaptive sharpness\n{corr['study']}, {len(used)} runs"
        f"{filt}; max over ||T^-1 e||_p <= rho of L(w + e) - L(w),\nT = 1 (sharpness) or |w| + eta (adaptive), "
        f"each at the rho of its sweep with the largest Kendall tau"))
    convert_png(raw, out)
    raw.unlink()
    return {label: {"measure": best[label]["measure"], "rho": rho(best[label]), "tau": best[label]["tau"],
                    "Psi": best[label]["Psi"], "n": best[label]["n"]} for label in families}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", type=Path, default=HERE / "study_mnist1d", help="the study folder")
    p.add_argument("--out", type=Path, default=HERE / "asam_fig2.png")
    p.add_argument("--target", default="gen_gap")
    p.add_argument("--quick", action="store_true", help="no effect (nothing is trained)")
    args = p.parse_args()
    found = figure(args.study, args.out, args.target)
    print(f"{'measure':<45} {'rho':>7} {'tau':>7} {'Psi':>7} {'n':>4} {'paper tau':>10}")
    for label, s in found.items():
        print(f"{s['measure']:<45} {s['rho']:>7} {s['tau']:>+7.3f} {s['Psi']:>+7.3f} {s['n']:>4} "
              f"{PAPER_TAU[label]:>+10.3f}")
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
