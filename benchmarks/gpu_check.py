"""The GPU check: run the device paths for real on one GPU (and torchrun on every visible GPU) in a few minutes.

Trains a small ResNet-20 on CIFAR-shaped synthetic data (written as CIFAR-10 python batches, class-dependent
colour shifts so accuracy can rise) with AMP (bf16 SAM, fp16 SAM with the loss scaler, ``--amp auto`` for
SGD, ASAM, SAM and finite-difference GNR: SAM and GNR must announce float32), counts the host syncs of a step of
every optimizer (``torch.cuda.set_sync_debug_mode``, against tests/test_host_syncs.py's table), runs
``landscape analyze`` on the checkpoint, draws a small 2-D surface and, on every visible GPU under ``torchrun``
(NCCL), trains SAM in bf16 and GSAM (its passes skip DDP: the BatchNorm statistics are broadcast after each step)
and repeats analysis and surface; also a regression MLP (train, analyze, plot2d) and the Hessian-vector products
of LSTM, GRU and RNN taggers on the device (cuDNN has no double backward for them); prints a pass/fail table.
Without a CUDA GPU it says so and exits 0.

    python benchmarks/gpu_check.py [--workdir DIR] [--epochs 2]
    python benchmarks/gpu_check.py --device cpu   # a dry run of the same commands on the CPU (tiny sizes)
    python benchmarks/gpu_check.py --syncs        # the host-sync count alone (run by the check itself)
    python benchmarks/gpu_check.py --recurrent    # LSTM/GRU/RNN products on the device against float64 (likewise)
"""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_synthetic_cifar(root: Path, per_batch: int, n_test: int, seed: int = 0) -> Path:
    """``data_batch_1..5`` and ``test_batch`` (CIFAR-10 python format): noise images plus a colour shift per class."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    shift = rng.integers(-60, 60, (10, 3))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, n)
        x = rng.normal(128, 40, (n, 3, 32 * 32)) + shift[labels][:, :, None]
        data = np.clip(x, 0, 255).astype(np.uint8).reshape(n, -1)
        (root / name).write_bytes(pickle.dumps({"data": data, "labels": [int(v) for v in labels]}, protocol=2))
    return root


def count_syncs(device: str) -> int:
    """Host synchronizations per step of every optimizer on ``device`` (a BatchNorm MLP, 4 steps, the last 3
    counted): CUDA's sync debug mode warns at each; more than tests/test_host_syncs.py allows fails (exit 1)."""
    import warnings

    import torch

    from optimizers import available_optimizers, build_optimizer
    from optimizers.closure import StepClosure
    from tests.optimizer_helpers import toy
    from tests.test_host_syncs import NEEDED

    bad = 0
    for name in available_optimizers():
        model, x, y = toy(0, bn=True)
        model = model.float().to(device)
        base = {"lr": 0.01} if name == "adamw" else {"lr": 0.1, "momentum": 0.9}
        opt = build_optimizer(name, model.named_parameters(), base_kwargs=base)
        if hasattr(opt, "configure_training"):
            opt.configure_training(total_steps=4, seed=0)
        c = StepClosure(model, "classification", device=device)
        c.set_batch(x.float(), y)
        c.set_validation_batch(x.float(), y)
        counts = []
        for _ in range(4):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    opt.step(c)
                finally:
                    if device == "cuda":
                        torch.cuda.set_sync_debug_mode("default")
            counts.append(sum("synchroniz" in str(w.message) for w in caught))
        worst, allowed = max(counts[1:]), NEEDED.get(name, 0)
        bad += worst > allowed
        print(f"  {'PASS' if worst <= allowed else 'FAIL'}  syncs per step {name:<20} {worst} (allowed {allowed})")
    return int(bad > 0)


def recurrent_products(device: str) -> int:
    """Hessian-vector products of ``nn.LSTM``/``GRU``/``RNN`` taggers on ``device`` (cuDNN's recurrent layers
    have no double backward: the objective unrolls them) against the float64 product on the CPU, in both
    product modes; 0 if every relative error is below 1e-3."""
    import torch
    import torch.nn as nn

    from landscape.objective import Objective

    class Tagger(nn.Module):
        def __init__(self, cell: type) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(50, 16), nn.Linear(32, 50)
            self.rnn = cell(16, 16, num_layers=2, bidirectional=True, batch_first=True)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(self.embed(tokens))[0])

    failed = 0
    for cell in (nn.LSTM, nn.GRU, nn.RNN):
        torch.manual_seed(0)
        model = Tagger(cell)
        x, y = torch.randint(0, 50, (64, 12)), torch.randint(0, 50, (64, 12))
        ref = Objective(model, x, y, task="language_model", batch_size=32, dtype=torch.float64)
        v = torch.randn(ref.num_params, dtype=torch.float64)
        want = ref.hvp(v)
        for mode in ("auto", "forward"):
            try:
                obj = Objective(model, x, y, task="language_model", batch_size=32, device=device, hvp_mode=mode)
                got = obj.hvp(v.float().to(device)).double().cpu()
                err = float((got - want).norm() / want.norm())
            except Exception as e:  # noqa: BLE001 - reported, not raised
                err, msg = float("inf"), f"{type(e).__name__}: {e}"
            else:
                msg = ""
            failed += not err < 1e-3
            print(f"{cell.__name__} {mode}: relative error {err:.1e} {msg}")
    return int(failed > 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="where data and checkpoints go [default: a temp dir]")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the commands)")
    ap.add_argument("--syncs", action="store_true", help="only count the host syncs per step of every optimizer")
    ap.add_argument("--recurrent", action="store_true", help="only compare recurrent layers' products on the device")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible; skipped (run it on a machine with one)")
        return 0
    if args.syncs:
        return count_syncs(args.device)
    if args.recurrent:
        return recurrent_products(args.device)
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    small = args.device == "cpu"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data = write_synthetic_cifar(work / "cifar", per_batch=40 if small else 2000, n_test=40 if small else 1000)
    py = [sys.executable, "-m", "landscape"]
    common = ["--model", "resnet20", "--data", "cifar10", "--data-arg", f"root={data}", "--device", args.device,
              "--batch-size", "32" if small else "128", "--quiet", "--restart"]
    steps = ["--steps", "3"] if small else ["--epochs", str(args.epochs)]
    runs = {  # name: (optimizer, amp, extra flags)
        "sgd amp=auto": ("sgd", "auto", []),
        "asam amp=auto": ("asam", "auto", []),
        "sam amp=auto": ("sam", "auto", []),
        "sam bf16": ("sam", "bf16", []),
        "sam fp16 (scaler)": ("sam", "fp16", []),
        "gnr finite-diff amp=auto": ("gnr", "auto", ["--hvp", "forward"]),
    }
    checks: list[tuple[str, list[str]]] = []
    expect = {}  # check: what its stderr must say
    for name, (opt, amp, extra) in runs.items():
        ckpt = work / f"{opt}_{amp}.pt"
        checks.append((f"train {name}", py + ["train", "--out", str(ckpt), "--optimizer", opt, "--amp", amp,
                                              *common, *steps, *extra]))
    if args.device == "cuda":  # the float32 notice of amp=auto (bf16 for the others)
        expect["train gnr finite-diff amp=auto"] = "gnr trains in float32"
        expect["train sam amp=auto"] = "sam trains in float32"
    checks.append(("host syncs per step", [sys.executable, str(Path(__file__).resolve()), "--syncs", "--device",
                                           args.device]))
    checks.append(("recurrent layers' products", [sys.executable, str(Path(__file__).resolve()), "--recurrent",
                                                  "--device", args.device]))
    ckpt = str(work / "sam_bf16.pt")
    view = ["--device", args.device, "--subset", "32" if small else "1000", "--quiet", "--restart"]
    light = ["--max-iter", "10"] if small else []
    checks.append(("analyze", py + ["analyze", ckpt, "--json", str(work / "analysis.json"), "--top-k", "2", *view,
                                    *light]))
    side = "3" if small else "7"
    checks.append((f"plot2d {side}x{side}", py + ["plot2d", ckpt, "--xpoints", side, "--out", str(work / "surface"),
                                                  "--no-html", *view]))
    # the regression task on the device (its per-point sums once mixed CPU zeros with device losses)
    reg = str(work / "regression.pt")
    checks.append(("train regression mlp", py + ["train", "--out", reg, "--model", "mlp", "--data", "synthetic",
                                                 "--data-arg", "task=regression", "--device", args.device,
                                                 "--steps", "3", "--quiet", "--restart"]))
    checks.append(("analyze regression", py + ["analyze", reg, "--json", str(work / "regression.json"), "--top-k",
                                               "2", "--max-iter", "10", *view]))
    checks.append(("plot2d regression", py + ["plot2d", reg, "--xpoints", "3", "--out", str(work / "reg_surface"),
                                              "--no-html", *view]))
    if gpus > 1:
        run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", "-m", "landscape"]
        checks.append((f"torchrun x{gpus} train sam bf16", run + ["train", "--out", str(work / "ddp.pt"),
                                                                   "--optimizer", "sam", "--amp", "bf16",
                                                                   *common, *steps]))
        checks.append((f"torchrun x{gpus} train gsam bf16", run + ["train", "--out", str(work / "ddp_gsam.pt"),
                                                                    "--optimizer", "gsam", "--amp", "bf16",
                                                                    "--alpha", "0.4", *common, *steps]))
        checks.append((f"torchrun x{gpus} analyze", run + ["analyze", ckpt, "--json", str(work / "ddp.json"),
                                                            "--top-k", "2", *view]))
        checks.append((f"torchrun x{gpus} plot2d", run + ["plot2d", ckpt, "--xpoints", side, "--out",
                                                           str(work / "ddp_surface"), "--no-html", *view]))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    results = []
    for name, cmd in checks:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        ok = proc.returncode == 0 and expect.get(name, "") in proc.stderr
        results.append((name, ok, time.perf_counter() - t0))
        if not ok:
            print(f"--- {name} failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}", flush=True)
    device = torch.cuda.get_device_name(0) if gpus else "cpu (dry run)"
    print(f"\ngpu_check on {device}, {max(gpus, 1)} device(s), work dir {work}")
    for name, ok, secs in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {name:<36} {secs:7.1f} s")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
