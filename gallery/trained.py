"""Training runs shared by the gallery scripts: one small problem, trained once per optimizer and cached.

``train(name, work, quick=...)`` trains (or reuses) ``work/<name>-<hash>.pt`` with
:class:`optimizers.trainer.Trainer` on the gallery problem: an MLP [128, 128] on MNIST-1D (3200 train / 800 test
samples), SGD with momentum 0.9 as the base, cosine schedule from lr 0.05, batch 64, weight decay 5e-4, ``EPOCHS``
epochs, with a trajectory checkpoint at the middle and the end of training (``X.trajectory/epoch_NNNN.pt``) and the
per-step log (``X.steps.jsonl``). The hash is that of the whole training configuration, so a changed setting never
reuses a stale run, and an interrupted run resumes (the trainer's resume file). ``quick=True`` is the same at toy
size (seconds, for tests).

:func:`methods` holds the optimizer of each named run (the papers' hyper-parameters where they give them).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from optimizers.config import TrainConfig  # noqa: E402
from optimizers.trainer import Trainer, run_paths  # noqa: E402

WORK = ROOT / "runs" / "gallery"

EPOCHS, QUICK_EPOCHS = 40, 4
SAMPLES, QUICK_SAMPLES = 4000, 500  # MNIST-1D samples, 80% for training
BATCH = 64

# lets.txt trains beta by Adam with lr 1e-4 decayed by 0.99999 per step over 200 epochs of CIFAR (391 steps each).
LETS_BETA_LR, LETS_DECAY, LETS_PAPER_STEPS = 1e-4, 0.99999, 200 * 391


def scaled_beta_lr(steps: int) -> float:
    """The beta lr that gives a run of ``steps`` steps the paper's total Adam step budget
    ``sum_t lr decay^t`` (Adam moves beta by about lr per step), to 2 significant digits."""
    def budget(n: int) -> float:
        return (1 - LETS_DECAY ** n) / (1 - LETS_DECAY)

    return float(f"{LETS_BETA_LR * budget(LETS_PAPER_STEPS) / budget(steps):.2g}")


def train_steps(quick: bool = False) -> int:
    """Steps of a gallery run (the trainer drops the last partial batch of an epoch)."""
    return (QUICK_EPOCHS if quick else EPOCHS) * (int(0.8 * (QUICK_SAMPLES if quick else SAMPLES)) // BATCH)


def methods(quick: bool = False) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{name: (registered optimizer, hyper-parameters)}`` of the gallery's runs (the papers' settings)."""
    lets = {"val_fraction": 0.0}  # lets.txt Sec. 4.1: validation batches sampled from the training set
    scaled = {**lets, "beta_lr": scaled_beta_lr(train_steps(quick))}
    return {
        "sgd": ("sgd", {}),
        "sam": ("sam", {"rho": 0.05}),
        "asam": ("asam", {"rho": 0.5, "eta": 0.01}),
        "sgd_gnr": ("gnr", {"rho": 0.1, "alpha": 0.1}),  # gnr.txt Sec. 3.2: rho = alpha = 0.1 on CIFAR
        "sam_gnr": ("gnr", {"rho": 0.1, "alpha": 0.1, "oracle": "sam", "oracle_rho": 0.05}),
        "lets_sam": ("lets_sam", {"rho": 0.05, **lets}),  # beta lr 1e-4 as in the paper
        "lets_asam": ("lets_asam", {"rho": 0.5, "eta": 0.01, **lets}),
        "lets_sam_scaled": ("lets_sam", {"rho": 0.05, **scaled}),
        "lets_asam_scaled": ("lets_asam", {"rho": 0.5, "eta": 0.01, **scaled}),
    }


def label(name: str, quick: bool = False) -> str:
    """The name of a run in plots and tables."""
    base = {"sgd": "SGD", "sam": "SAM", "asam": "ASAM", "sgd_gnr": "SGD + GNR", "sam_gnr": "SAM + GNR",
            "lets_sam": "LETS-SAM", "lets_asam": "LETS-ASAM", "lets_sam_scaled": "LETS-SAM",
            "lets_asam_scaled": "LETS-ASAM"}[name]
    if name.startswith("lets"):
        base += f" (beta lr {methods(quick)[name][1].get('beta_lr', LETS_BETA_LR):.2g})"
    return base


def add_arguments(p: Any, out: str) -> None:
    """The options every gallery script takes: ``--quick``, ``--work``, ``--out``, ``--threads``."""
    p.add_argument("--quick", action="store_true", help="toy size, seconds (for the tests)")
    p.add_argument("--work", type=Path, default=WORK, help="cached runs and reports [default: runs/gallery]")
    p.add_argument("--out", type=Path, default=ROOT / "gallery" / out, help=f"the figure [default: gallery/{out}]")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads [default: 1: as fast for these small models, and no slower on a busy CPU]")


def setup(args: Any) -> None:
    """Apply the common options (torch threads)."""
    import torch

    torch.set_num_threads(max(1, args.threads))


def config(name: str, quick: bool = False, **overrides: Any) -> TrainConfig:
    """The gallery problem trained with method ``name`` (a key of :func:`methods`)."""
    optimizer, hparams = methods(quick)[name]
    epochs = QUICK_EPOCHS if quick else EPOCHS
    c = TrainConfig(
        model="mlp", model_kwargs={"hidden": [32] if quick else [128, 128]},
        data="mnist1d", data_kwargs={"num_samples": QUICK_SAMPLES if quick else SAMPLES},
        optimizer=optimizer, hparams=dict(hparams), lr=0.05, momentum=0.9, weight_decay=5e-4,
        epochs=epochs, batch_size=BATCH, schedule="cosine", seed=0,
        checkpoint_every=epochs // 2, log_steps=True)
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def digest(c: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(c.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


def train(name: str, work: str | Path = WORK, *, quick: bool = False, **overrides: Any) -> Path:
    """The checkpoint of method ``name`` on the gallery problem: trained now, resumed, or reused."""
    c = config(name, quick, **overrides)
    path = Path(work) / f"{name}{'-quick' if quick else ''}-{digest(c)}.pt"
    if not run_paths(path)["out"].exists():
        print(f"training {label(name, quick)}, seed {c.seed} -> {path}", flush=True)
        Trainer(c, path, progress=False).run()
    return path


def metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run (``X.metrics.jsonl``)."""
    return [json.loads(line) for line in run_paths(path)["metrics"].read_text().splitlines() if line.strip()]


def steps(path: str | Path) -> list[dict[str, Any]]:
    """The per-step rows of a run (``X.steps.jsonl``: loss, lr and the optimizer's metrics, e.g. LETS's rho)."""
    return [json.loads(line) for line in run_paths(path)["steps"].read_text().splitlines() if line.strip()]


def trajectory(path: str | Path) -> dict[int, Path]:
    """``{epoch: checkpoint}`` of a run's trajectory (epoch 0 = the initialization)."""
    return {int(p.stem.split("_")[1]): p for p in sorted(run_paths(path)["trajectory"].glob("epoch_*.pt"))}


def save_png(fig: Any, path: str | Path, colours: int = 256) -> Path:
    """Save a matplotlib figure as a palette PNG (a few times smaller than RGBA, same look)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    buf.seek(0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buf).convert("RGB").quantize(colours).save(path, optimize=True)
    return path


def convert_png(src: str | Path, dst: str | Path, colours: int = 256) -> Path:
    """Copy a PNG written by the library as a palette PNG (keeps the gallery's images small)."""
    from PIL import Image

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).convert("RGB").quantize(colours).save(dst, optimize=True)
    return dst
