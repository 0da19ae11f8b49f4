"""The loss-landscape images of the README, on a synthetic spiral problem (a few minutes on a CPU).

    python gallery/landscapes_spirals.py [--quick] [--work runs/gallery/spirals] [--out gallery] [--threads 1]

Trains two MLPs [64, 64] on ``benchmarks.problems:spirals`` (SGD with batch 32, lr 0.05, 30 epochs,
with trajectory checkpoints; and with batch 500, lr 0.5, 60 epochs), then runs ``landscape compare``, ``landscape plot2d
--directions pca`` and ``landscape shift`` and copies one PNG of each to ``--out`` as ``spirals_*.png``.
``--quick``: 600 + 200 samples, a few epochs and coarse grids (seconds; for the tests).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402  (matplotlib's own dependency)

from landscape.cli import main as landscape  # noqa: E402
from optimizers.config import TrainConfig  # noqa: E402
from optimizers.trainer import Trainer, run_paths  # noqa: E402

DATA = "benchmarks.problems:spirals"
ENTRY = ["--model", "mlp", "--data", DATA]


def train(path: Path, batch_size: int, lr: float, epochs: int, every: int = 0, quick: bool = False) -> Path:
    config = TrainConfig(model="mlp", model_kwargs={"hidden": [64, 64]}, data=DATA, optimizer="sgd", lr=lr,
                         epochs=epochs, batch_size=batch_size, weight_decay=5e-4, seed=0, checkpoint_every=every,
                         data_kwargs={"n_train": 600, "n_test": 200} if quick else {})
    if not run_paths(path)["out"].exists():
        Trainer(config, path, progress=False).run()
    return path


def run(*args: object) -> None:
    code = landscape([str(a) for a in args])
    if code:
        raise SystemExit(code)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy size, seconds (for the tests)")
    p.add_argument("--work", type=Path, default=None, help="trained runs and surfaces [default: runs/gallery/spirals]")
    p.add_argument("--out", type=Path, default=HERE, help="where the PNGs go [default: gallery/]")
    p.add_argument("--threads", type=int, default=1, help="torch threads [default: 1]")
    args = p.parse_args()
    torch.set_num_threads(max(1, args.threads))
    q = args.quick
    w = args.work or ROOT / "runs" / "gallery" / ("spirals-quick" if q else "spirals")
    small = train(w / "sgd_b32.pt", 32, 0.05, 4 if q else 30, every=1 if q else 3, quick=q)
    large = train(w / "sgd_b500.pt", 500, 0.5, 4 if q else 60, quick=q)
    grid = ["--xpoints", "9"] if q else []
    run("compare", small, large, *ENTRY, "--labels", "SGD batch 32", "SGD batch 500", "--xpoints", 9 if q else 41,
        *(["--interp-points", "9"] if q else []), "--no-html", "--out", w / "compare", "--quiet")
    run("plot2d", small, *ENTRY, "--directions", "pca", "--split", "train", "--plots", "filled", "--no-html",
        "--log", *grid, "--out", w / "pca", "--quiet")
    run("shift", small, *ENTRY, "--finetune-steps", 20 if q else 300, "--finetune-lr", "0.05", "--range", "-1", "2",
        "--out", w / "shift", "--quiet")
    args.out.mkdir(parents=True, exist_ok=True)
    for src, dst in ((w / "compare.png", "spirals_compare_sgd_batch.png"), (w / "pca.filled.png",
                     "spirals_pca_trajectory.png"), (w / "shift.png", "spirals_gasam_shift.png")):
        Image.open(src).convert("RGB").quantize(256).save(args.out / dst, optimize=True)  # keeps them small
        print(f"{args.out / dst}: {(args.out / dst).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
