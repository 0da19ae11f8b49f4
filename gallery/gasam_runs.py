"""The trained models behind the GA-SAM gallery figures (gasam_fig1_shift.py, gasam_fig3_eigenvalues.py,
gasam_fig45_gradients.py): trained once with :class:`optimizers.trainer.Trainer` and cached under
``runs/gallery/gasam/`` (``--quick``: ``runs/gallery/gasam-quick/``). A finished checkpoint is reused; an
interrupted one resumes where it stopped (the trainer's resume file), to the same numbers.

Two NLP tasks stand in for the paper's (App. B), at CPU scale:

* ``textcnn`` (IMDB TextCNN, App. B.1): Kim's CNN (embeddings 64, filters 3/4/5 x 64, dropout 0.5) on
  ``synthetic_text`` (2000 train / 1000 test texts of 32 tokens over 1000 words, the class shown by one of 20
  keywords per class) with 20% of the training labels flipped, so that, as on IMDB, the model fits its
  training set and generalizes imperfectly; Adam, lr 1e-3, batch 64 (the paper's), 15 epochs.
* ``lstm`` (PTB LSTM, App. B.2): a 2-layer LSTM language model (embeddings and hidden 64, dropout 0.2) on the
  generated corpus of ``text_lm`` (2000 sentences); SGD, lr 20, gradient clipping 0.25, batch 20, 10 epochs.

Each is trained with the baseline optimizer, SAM and GA-SAM at the settings of ``METHODS``; ``mlp`` (an MLP on
MNIST-1D, the paper's MNIST MLP of App. C.1) is Fig. 1's model. Every run saves a trajectory checkpoint per
epoch (``X.trajectory/epoch_NNNN.pt``, epoch 0 = the initialization) for Figs. 4-5.

Torch runs single-threaded by default (``--threads``): on a shared CPU that is the fastest, and the numbers
do not depend on the machine's core count.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from optimizers.config import TrainConfig  # noqa: E402
from optimizers.trainer import Trainer, run_paths  # noqa: E402

GALLERY = ROOT / "gallery"
WORK = ROOT / "runs" / "gallery" / "gasam"

TASKS: dict[str, dict[str, Any]] = {
    "textcnn": dict(model="textcnn", model_kwargs={"embed_dim": 64, "num_filters": 64}, data="synthetic_text",
                    data_kwargs={"n_train": 2000, "n_test": 1000, "vocab_size": 1000, "keywords_per_class": 20,
                                 "keywords_per_text": 1, "label_noise": 0.2},
                    base="adamw", lr=1e-3, weight_decay=0.0, epochs=15, batch_size=64, schedule="constant"),
    "lstm": dict(model="lstm_lm", model_kwargs={"embed_dim": 64, "hidden": 64}, data="text_lm",
                 data_kwargs={"n_sentences": 2000}, base="sgd", lr=20.0, momentum=0.0, weight_decay=0.0,
                 grad_clip=0.25, epochs=10, batch_size=20, schedule="constant"),
    "mlp": dict(model="mlp", model_kwargs={"hidden": [32]}, data="mnist1d", data_kwargs={"num_samples": 40000},
                base="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, epochs=30, batch_size=128, schedule="cosine"),
}
"""Training settings per task (any :class:`TrainConfig` field)."""

QUICK: dict[str, dict[str, Any]] = {
    "textcnn": dict(model_kwargs={"embed_dim": 16, "num_filters": 8},
                    data_kwargs={"n_train": 200, "n_test": 100, "vocab_size": 200, "label_noise": 0.2},
                    epochs=3),
    "lstm": dict(model_kwargs={"embed_dim": 16, "hidden": 16}, data_kwargs={"n_sentences": 200}, epochs=3),
    "mlp": dict(data_kwargs={"num_samples": 2000}, epochs=3),
}
"""``--quick``: the same recipes on a few hundred samples for 3 epochs (seconds; for the tests)."""

CONTROL_RHO = 1e-9
"""GA-SAM's control: its K + 1 passes per step with a perturbation at float32 round-off (eps -> 0)."""

METHODS: dict[str, dict[str, dict[str, Any]]] = {
    "textcnn": {  # App. C.2.1 (IMDB): K = 1; SAM L_inf eps 2e-5; GA-SAM L_inf eps 1e-4
        "baseline": dict(optimizer="adamw"),
        "sam": dict(optimizer="sam", hparams={"rho": 2e-5, "p": "inf"}),
        "ga_sam": dict(optimizer="ga_sam", hparams={"rho": 1e-4, "p": "inf", "ascent_steps": 1}),
        "ga_sam_x3": dict(optimizer="ga_sam", hparams={"rho": 3e-4, "p": "inf", "ascent_steps": 1}),
        "ga_sam_x10": dict(optimizer="ga_sam", hparams={"rho": 1e-3, "p": "inf", "ascent_steps": 1}),
        "ga_sam_control": dict(optimizer="ga_sam", hparams={"rho": CONTROL_RHO, "p": "inf", "ascent_steps": 1}),
    },
    "lstm": {  # App. C.2.2 (PTB-LM): K = 1; SAM L_2 eps 5e-3; GA-SAM L_inf eps 8e-6
        "baseline": dict(optimizer="sgd"),
        "sam": dict(optimizer="sam", hparams={"rho": 5e-3, "p": 2}),
        "ga_sam": dict(optimizer="ga_sam", hparams={"rho": 8e-6, "p": "inf", "ascent_steps": 1}),
        "ga_sam_x3": dict(optimizer="ga_sam", hparams={"rho": 2.4e-5, "p": "inf", "ascent_steps": 1}),
        "ga_sam_x10": dict(optimizer="ga_sam", hparams={"rho": 8e-5, "p": "inf", "ascent_steps": 1}),
        "ga_sam_control": dict(optimizer="ga_sam", hparams={"rho": CONTROL_RHO, "p": "inf", "ascent_steps": 1}),
    },
    "mlp": {"baseline": dict(optimizer="sgd")},
}
"""Optimizer settings per task: the paper's (App. C.2); GA-SAM at 3x and 10x the paper's eps (``ga_sam_x3``,
``ga_sam_x10``: at our model scale the paper's eps raises a mini-batch's loss by only ~0.02 (TextCNN) and ~0.002
(LSTM) at GA-SAM's ascent point, 10x by ~0.3 and ~0.02); and GA-SAM's control (eps -> 0: its K + 1 passes
without a perturbation worth the name)."""


def method_label(task: str, method: str) -> str:
    """``Adam``, ``SAM (L_inf, eps 2e-05)``, ``GA-SAM (L_inf, eps 0.0001, K 1)``, ... for legends."""
    m = METHODS[task][method]
    h = m.get("hparams", {})
    if m["optimizer"] in ("sgd", "adamw"):
        return {"sgd": "SGD", "adamw": "Adam"}[m["optimizer"]]
    norm = "L∞" if str(h.get("p", 2)) == "inf" else "L2"
    name = {"ga_sam_control": "GA-SAM control", "ga_sam_x3": "GA-SAM ×3", "ga_sam_x10": "GA-SAM ×10"}.get(
        method, {"sam": "SAM", "ga_sam": "GA-SAM"}[m["optimizer"]])
    k = f", K={h['ascent_steps']}" if "ascent_steps" in h else ""
    return f"{name} ({norm}, ε={h['rho']:g}{k})"


def describe(task: str, method: str) -> dict[str, Any]:
    """The training settings of a run, for the JSON next to a figure."""
    return {k: v for k, v in config(task, method).to_dict().items()
            if k in ("model", "model_kwargs", "data", "data_kwargs", "optimizer", "base", "hparams", "lr", "momentum",
                     "weight_decay", "epochs", "batch_size", "schedule", "grad_clip")}


def config(task: str, method: str = "baseline", *, quick: bool = False, seed: int = 0) -> TrainConfig:
    """The :class:`TrainConfig` of ``task`` trained with ``method`` (``seed``: the training seed)."""
    kw = dict(TASKS[task])
    for k, v in (QUICK[task] if quick else {}).items():
        kw[k] = {**kw[k], **v} if isinstance(v, dict) and isinstance(kw.get(k), dict) else v
    m = METHODS[task][method]
    kw.update(optimizer=m["optimizer"], hparams=dict(m.get("hparams", {})), seed=seed, checkpoint_every=1)
    if m["optimizer"] in ("sgd", "adamw"):
        kw["base"] = None
    return TrainConfig(**kw)


def checkpoint(task: str, method: str = "baseline", *, quick: bool = False, seed: int = 0,
               work: Path | None = None) -> Path:
    """The final checkpoint of ``task``/``method`` under ``work``, trained now unless it is there (the file
    name carries a digest of the whole configuration, so changed settings train a new run)."""
    work = Path(work) if work is not None else default_work(quick)
    c = config(task, method, quick=quick, seed=seed)
    digest = hashlib.sha256(json.dumps(c.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    path = work / f"{task}_{method}_s{seed}_{digest}.pt"
    if not run_paths(path)["out"].exists():
        print(f"training {path.name} ...", flush=True)
        Trainer(c, path, progress=False).run()
    return path


def trajectory(path: Path) -> list[tuple[int, Path]]:
    """``(epoch, checkpoint)`` of a run's trajectory, epoch 0 (the initialization) first."""
    files = sorted(run_paths(path)["trajectory"].glob("epoch_*.pt"))
    return [(int(f.stem.split("_")[1]), f) for f in files]


def default_work(quick: bool) -> Path:
    return WORK.with_name(WORK.name + "-quick") if quick else WORK


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny models and data, 3 epochs (seconds; for tests)")
    p.add_argument("--work", type=Path, default=None,
                   help=f"where the trained runs are cached [default: {WORK.relative_to(ROOT)}(-quick)]")
    p.add_argument("--out", type=Path, default=GALLERY, help="folder of the PNG and JSON [default: gallery/]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads [default: 1]")


def setup(args: argparse.Namespace) -> None:
    """Threads, output folders; ``args.work`` resolved."""
    torch.set_num_threads(args.threads)
    args.work = Path(args.work) if args.work is not None else default_work(args.quick)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)


def save_png(fig: Any, path: Path, dpi: int = 110) -> Path:
    """``fig`` as a palette PNG (a fraction of the size of matplotlib's RGBA one, same look)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)
    return path


__all__ = ["CONTROL_RHO", "METHODS", "QUICK", "TASKS", "add_common_args", "checkpoint", "config", "describe",
           "method_label", "save_png", "setup", "trajectory"]
