"""The training loop: any optimizer of the family, CPU/GPU, AMP, DDP, exact resume.

Files written next to ``out`` (``runs/sgd.pt``), each atomically:

* ``runs/sgd.pt``               the final checkpoint (:mod:`landscape.checkpoint`)
* ``runs/sgd.metrics.jsonl``    one row per epoch: train/test loss+acc, gaps, lr, step time
* ``runs/sgd.steps.jsonl``      one row per step (``log_steps``)
* ``runs/sgd.curvature.jsonl``  one row per curvature measurement (``track``, :mod:`optimizers.tracker`)
* ``runs/sgd.trajectory/``      checkpoints every ``checkpoint_every`` epochs (epoch 0 = init)
* ``runs/sgd.resume.pt``        the state to resume from after a kill (removed when done)

Resuming restores model, optimizer (with its extra state), RNG and the
position ``(epoch, batch)``; data order and augmentation are functions of
``(seed, epoch, batch)`` (:class:`landscape.data.loader.BatchLoader`), so on
CPU a resumed run is bit-identical to an uninterrupted one.

The loop does not wait for the device: step losses stay on it and are read back together every
:data:`SYNC_EVERY` steps, at resume points and at the end of an epoch (a diverged loss is reported then, with
the step where it first became non-finite; ``step_time`` includes the wait).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from landscape import distributed as D
from landscape.checkpoint import Checkpoint, CheckpointError, check_compatible, load_state_dict_strict, versions
from landscape.data import DataBundle, get_dataset
from landscape.data.loader import BatchLoader
from landscape.evaluation import evaluate
from landscape.io import atomic_torch_save, atomic_write_jsonl, atomic_write_text, remove_stale_temps
from landscape.models import build_model
from optimizers import build_optimizer
from optimizers.base import ClosureOptimizer
from optimizers.closure import StepClosure
from optimizers.config import TrainConfig
from optimizers.precision import FULL_PRECISION, resolve_amp
from optimizers.schedules import lr_factor
from optimizers.tracker import CurvatureTracker, TrackConfig

RESUME_VERSION = 1
# the keys Trainer._state always writes: a resume file lacking one is not of this version
_RESUME_KEYS = ("config", "epoch", "batch", "step", "model", "optimizer", "rng_cpu", "history", "partial")
SYNC_EVERY = 50  # steps between reads of the training loss: the loop never waits for the device in between


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the metrics file records where."""


def run_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    stem = out.with_suffix("")
    return {"out": out, "metrics": Path(f"{stem}.metrics.jsonl"), "steps": Path(f"{stem}.steps.jsonl"),
            "trajectory": Path(f"{stem}.trajectory"), "resume": Path(f"{stem}.resume.pt"),
            "curvature": Path(f"{stem}.curvature.jsonl")}


def resolve_model_kwargs(config: TrainConfig, data: DataBundle) -> dict[str, Any]:
    """Registry models get the data's defaults (input shape, outputs); entry points only what was given."""
    if ":" in config.model:
        return dict(config.model_kwargs)
    return {**data.model_defaults(), **config.model_kwargs}


class Trainer:
    """``Trainer(config, out).run()`` trains, evaluates every epoch and writes the checkpoint.

    ``track``: measure the curvature during training (:class:`optimizers.tracker.TrackConfig`); the
    training itself is unchanged by it (bit-identical on CPU).
    """

    def __init__(self, config: TrainConfig, out: str | Path, *, progress: bool = True,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 track: TrackConfig | None = None) -> None:
        self.config = config
        self.paths = run_paths(out)
        self.progress = progress
        self.on_epoch = on_epoch
        self.track = track
        self.tracker: CurvatureTracker | None = None

    # -- set-up -------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.config
        self.device = D.setup_device(c.device)
        if c.deterministic:  # cuBLAS is deterministic only with a fixed workspace, set before its first call
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.data = get_dataset(c.data, **c.data_kwargs)
        if not isinstance(self.data, DataBundle):
            raise ValueError(f"--data {c.data} gave {type(self.data).__name__}; training needs a "
                             "landscape.data.DataBundle (a DataLoader-returning factory is for analysis commands)")
        self.model_kwargs = resolve_model_kwargs(c, self.data)
        torch.manual_seed(c.seed)
        self.model: nn.Module = build_model(c.model, **self.model_kwargs).to(self.device)
        check_compatible(self.model, self.data, f"--model {c.model} on --data {c.data}: ")  # one line, before step 1
        # A separate stream for dropout etc., different on each rank.
        torch.manual_seed(c.seed * 7919 + 104729 * (D.rank() + 1))
        forward_model: nn.Module = self.model
        if D.is_distributed():
            forward_model = D.wrap_ddp(self.model, self.device)
        if c.compile:
            forward_model = torch.compile(forward_model)
        base = self.config.base
        self.optimizer: ClosureOptimizer = build_optimizer(
            c.optimizer, self.model.named_parameters(), base=base,
            base_kwargs=c.base_kwargs(base or ("adamw" if c.optimizer == "adamw" else "sgd")),
            max_grad_norm=c.grad_clip, **c.hparams)
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
            group["min_lr_factor"] = c.min_lr_factor
        amp, note = resolve_amp(c.amp, self.device.type, c.optimizer)
        if note is not None and D.is_main():
            print(note, file=sys.stderr)
        if amp == "none" and self.device.type == "cuda" and c.optimizer in FULL_PRECISION:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp16's mantissa
        self.amp = amp
        scaler = None
        if amp == "fp16":
            scaler = torch.amp.GradScaler(self.device.type)
            self.optimizer.scaler = scaler
        self.closure = StepClosure(
            self.model, self.data.task, forward_model=forward_model, label_smoothing=c.label_smoothing,
            accum_steps=c.accum_steps, device=self.device, scaler=scaler,
            autocast_dtype={"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp])
        self.val_loader = self._hold_out()  # optimizers that learn from validation batches (LETS)
        self.loader = BatchLoader(self.data.x_train, self.data.y_train, c.batch_size, shuffle=True, seed=c.seed,
                                  drop_last=True, augment=self.data.augment, rank=D.rank(),
                                  world_size=D.world_size(), device=self.device)
        if len(self.loader) == 0:
            raise ValueError(f"batch_size {c.batch_size} exceeds the {len(self.data.x_train)} training samples")
        self.steps_per_epoch = len(self.loader)
        self.total_steps = c.steps if c.steps is not None else c.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        if hasattr(self.optimizer, "configure_training"):  # step schedules and the optimizer's own RNG
            self.optimizer.configure_training(total_steps=self.total_steps, seed=c.seed)
        self.factor = lr_factor(c.schedule, self.total_steps, warmup=c.warmup_steps, min_factor=c.min_lr_factor,
                                milestones=c.milestones, gamma=c.gamma)
        if self.track is not None:
            base = c.base or ("adamw" if c.optimizer == "adamw" else "sgd")
            self.tracker = CurvatureTracker(
                self.track, self.model, self.data.x_train, self.data.y_train, task=self.data.task,
                path=self.paths["curvature"], label_smoothing=c.label_smoothing,
                optimizer={"base": base, "momentum": c.momentum, "nesterov": c.nesterov,
                           "weight_decay": c.weight_decay})

    def _hold_out(self) -> BatchLoader | None:
        """If the optimizer declares ``validation_fraction`` (LETS), hold that fraction of the training set
        out (split by the seed; the model trains and is evaluated on the rest) and return a loader of
        validation batches over it; a fraction of 0 draws them from the whole training set."""
        frac = getattr(self.optimizer, "validation_fraction", None)
        if frac is None:
            return None
        c, x, y = self.config, self.data.x_train, self.data.y_train
        if frac > 0:
            fit, held = holdout_split(len(x), frac, c.seed)
            self.data = dataclasses.replace(self.data, x_train=x[fit], y_train=y[fit])
            x, y = x[held], y[held]
        return BatchLoader(x, y, min(c.batch_size, len(x)), shuffle=True, seed=c.seed + 1, drop_last=True,
                           augment=self.data.augment, rank=D.rank(), world_size=D.world_size(),
                           device=self.device)

    def _validation_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation batch of ``step``: a function of ``(seed, step)`` only, so resume is exact."""
        assert self.val_loader is not None
        n = len(self.val_loader)
        self.val_loader.set_epoch(step // n, step % n)
        return next(iter(self.val_loader))

    # -- state --------------------------------------------------------------------------
    def _state(self, epoch: int, batch: int, step: int, history: list[dict], partial: dict) -> dict[str, Any]:
        state = {"version": RESUME_VERSION, "config": self.config.to_dict(), "epoch": epoch, "batch": batch,
                 "step": step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng_cpu": torch.get_rng_state(), "history": history, "partial": partial}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.optimizer.scaler is not None:
            state["scaler"] = self.optimizer.scaler.state_dict()
        if self.tracker is not None:
            state["tracker"] = self.tracker.state_dict()
        return state

    def _save_resume(self, *args: Any) -> None:
        state = self._state(*args)
        if D.world_size() > 1:  # each rank keeps its own RNG streams
            state["rng_cpu_by_rank"] = self._gather_rng(state["rng_cpu"])
            if "rng_cuda" in state:
                state["rng_cuda_by_rank"] = self._gather_rng(state["rng_cuda"])
        if D.is_main():
            atomic_torch_save(state, self.paths["resume"])
            remove_stale_temps(self.paths["resume"])  # a kill during an earlier save leaves its temp file
        D.barrier()

    def _gather_rng(self, mine: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``mine`` (an RNG state), in rank order."""
        import torch.distributed as dist

        out: list[Any] = [None] * D.world_size()
        dist.all_gather_object(out, mine)
        return out

    def _load_resume(self) -> dict[str, Any] | None:
        path = self.paths["resume"]
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a resume file is written atomically; anything else is foreign
            raise CheckpointError(f"{path}: unreadable resume state ({type(e).__name__}); delete it to restart")
        foreign = CheckpointError(f"{path}: not a resume state of this version; delete it to restart")
        if (not isinstance(state, dict) or state.get("version") != RESUME_VERSION
                or not all(k in state for k in _RESUME_KEYS)):
            raise foreign
        if state["config"] != self.config.to_dict():
            raise CheckpointError(f"{path}: was written by a different configuration; "
                                  "delete it (or pass --restart) to start over")
        try:  # a key missing deeper down (the optimizer's, the scaler's) is a foreign file too
            load_state_dict_strict(self.model, state["model"], where=f"{path}: ")
            self.optimizer.load_state_dict(state["optimizer"])
            rng = state["rng_cpu"] if "rng_cpu_by_rank" not in state else state["rng_cpu_by_rank"][D.rank()]
            torch.set_rng_state(rng)
            if "rng_cuda" in state and self.device.type == "cuda":
                cuda = state["rng_cuda"] if "rng_cuda_by_rank" not in state else state["rng_cuda_by_rank"][D.rank()]
                torch.cuda.set_rng_state(cuda, self.device)
            if "scaler" in state and self.optimizer.scaler is not None:
                self.optimizer.scaler.load_state_dict(state["scaler"])
        except (KeyError, IndexError, TypeError):
            raise foreign from None
        return state

    def checkpoint(self, metrics: dict[str, Any], epoch: int, step: int) -> Checkpoint:
        c = self.config
        return Checkpoint(
            model_name=c.model, model_kwargs=self.model_kwargs, data_name=self.data.name,
            data_kwargs=self.data.kwargs, state_dict=self.model.state_dict(),
            optimizer={"name": c.optimizer, "base": c.base or ("adamw" if c.optimizer == "adamw" else "sgd"),
                       "hparams": dict(self.optimizer_hparams())},
            train_config=c.to_dict(), metrics=metrics, epoch=epoch, step=step, versions=versions(),
            path=str(self.paths["out"]))

    def optimizer_hparams(self) -> dict[str, Any]:
        from optimizers import resolve_hparams

        return resolve_hparams(self.config.optimizer, self.config.hparams)

    def _evaluate(self) -> dict[str, Any]:
        bs, dev, task = self.config.eval_batch_size, self.device, self.data.task
        tr = evaluate(self.model, self.data.x_train, self.data.y_train, task, batch_size=bs, device=dev)
        te = evaluate(self.model, self.data.x_test, self.data.y_test, task, batch_size=bs, device=dev)
        row = {"train_loss": tr["loss"], "test_loss": te["loss"], "train_acc": tr["acc"], "test_acc": te["acc"],
               "loss_gap": te["loss"] - tr["loss"]}
        # Generalization gap: train accuracy - test accuracy (loss gap for regression).
        row["gen_gap"] = row["loss_gap"] if tr["acc"] is None else tr["acc"] - te["acc"]
        return row

    def _next_lr(self, step: int) -> float:
        """The learning rate of the update after ``step`` (of the last update once training is over)."""
        return self.optimizer.param_groups[0]["base_lr"] * self.factor(min(step, self.total_steps - 1))

    def _set_lr(self, step: int) -> float:
        f = self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * f
        return self.optimizer.param_groups[0]["lr"]

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> Checkpoint:
        self._setup()
        c, paths = self.config, self.paths
        state = self._load_resume()
        if state is None:
            epoch, batch, step, history = 0, 0, 0, []
            partial = {"loss_sum": 0.0, "n": 0, "time": 0.0}
            if c.checkpoint_every and D.is_main():
                self.checkpoint({"epoch": 0}, 0, 0).save(paths["trajectory"] / "epoch_0000.pt")
            if paths["steps"].exists() and D.is_main():
                paths["steps"].unlink()
        else:
            epoch, batch, step = state["epoch"], state["batch"], state["step"]
            history, partial = state["history"], state["partial"]
            if c.log_steps and D.is_main():
                self._truncate_step_log(step)
        tracker = self.tracker
        if tracker is None and D.is_main():  # an untracked run: a curvature file there is an earlier run's
            paths["curvature"].unlink(missing_ok=True)
        if tracker is not None:
            tracker.begin(step, None if state is None else state.get("tracker"))
            if tracker.due(step):
                tracker.measure(step, epoch, self._next_lr(step))
        step_log = None
        if c.log_steps and D.is_main():
            paths["steps"].parent.mkdir(parents=True, exist_ok=True)
            step_log = open(paths["steps"], "a")
        bar = _progress(self.progress and D.is_main())
        pending: list[tuple[int, int, torch.Tensor, float, dict[str, float]]] = []  # steps not read back yet
        try:
            with bar:
                task = bar.add_task("train", total=self.total_steps, completed=step)
                while step < self.total_steps:
                    self.loader.set_epoch(epoch, batch)
                    self.optimizer.set_epoch(epoch)
                    self.model.train()
                    lr = self._set_lr(step)
                    for x, y in self.loader:
                        lr = self._set_lr(step)
                        self.closure.set_batch(x, y)
                        if self.val_loader is not None:
                            self.closure.set_validation_batch(*self._validation_batch(step))
                        t0 = time.perf_counter()
                        loss = self.optimizer.step(self.closure).detach()  # stays on the device
                        step += 1
                        batch += 1
                        pending.append((step, epoch, loss, lr, self.optimizer.metrics() if step_log else {}))
                        last = step >= self.total_steps
                        save = bool(c.save_every_steps) and step % c.save_every_steps == 0
                        if last or save or step % SYNC_EVERY == 0 or batch == self.steps_per_epoch:
                            shown = self._read_losses(pending, partial, history, step_log)  # waits for the device
                            bar.update(task, description=f"epoch {epoch + 1}/{self.epochs} loss {shown:.4f}")
                        partial["time"] += time.perf_counter() - t0
                        bar.update(task, completed=step)
                        if tracker is not None and tracker.due(step, last=last):
                            tracker.measure(step, epoch, self._next_lr(step))
                        if last:
                            break
                        if save:
                            if step_log is not None:
                                step_log.flush()
                            self._save_resume(epoch, batch, step, history, partial)
                    row = {"epoch": epoch + 1, "step": step, "lr": lr, **self._evaluate(),
                           "batch_loss": partial["loss_sum"] / max(1, partial["n"]),
                           "step_time": partial["time"] / max(1, partial["n"]), **self.optimizer.metrics()}
                    history.append(row)
                    epoch, batch = epoch + 1, 0
                    partial = {"loss_sum": 0.0, "n": 0, "time": 0.0}
                    stop = self._stop_rule(row)
                    if stop:
                        row["stopped_by"] = stop
                    if D.is_main():
                        atomic_write_jsonl(paths["metrics"], history)
                        if c.checkpoint_every and epoch % c.checkpoint_every == 0:
                            self.checkpoint(row, epoch, step).save(paths["trajectory"] / f"epoch_{epoch:04d}.pt")
                    if step_log is not None:
                        step_log.flush()
                    if self.on_epoch is not None:
                        self.on_epoch(row)
                    if stop:
                        break
                    if step < self.total_steps:
                        self._save_resume(epoch, batch, step, history, partial)
        finally:
            if step_log is not None:
                step_log.close()
        final = {**history[-1], "epochs_run": epoch, "steps": step, "diverged": False,
                 "skipped_steps": self.optimizer.skipped_steps}
        if tracker is not None:
            if tracker.due(step, last=True):  # a run stopped early by a stop rule
                tracker.measure(step, epoch, self._next_lr(step))
            final["curvature_tracking"] = tracker.summary()
        ckpt = self.checkpoint(final, epoch, step)
        if D.is_main():
            ckpt.save(paths["out"])
            paths["resume"].unlink(missing_ok=True)
            for key in ("out", "metrics", "resume"):  # temp files of writes a kill interrupted
                remove_stale_temps(paths[key])
        D.barrier()
        return ckpt

    def _read_losses(self, pending: list, partial: dict[str, Any], history: list[dict], step_log: Any) -> float:
        """Read the losses of the ``pending`` steps back from the device (one host sync for all of them), add
        them to the epoch's running sum and the step log in order; raise :class:`TrainingDiverged` at the first
        non-finite one. Returns the last loss (nan if none is pending)."""
        if not pending:
            return math.nan
        losses = torch.stack([p[2] for p in pending]).tolist()
        rows, pending[:] = list(pending), []
        for (step, epoch, _, lr, metrics), loss in zip(rows, losses):
            if not math.isfinite(loss):
                history.append({"epoch": epoch + 1, "step": step, "diverged": True, "loss": loss})
                if D.is_main():
                    atomic_write_jsonl(self.paths["metrics"], history)
                raise TrainingDiverged(f"loss became {loss} at step {step} (epoch {epoch + 1})")
            partial["loss_sum"] += loss
            partial["n"] += 1
            if step_log is not None:
                step_log.write(_json_line({"step": step, "epoch": epoch, "loss": loss, "lr": lr, **metrics}))
        return losses[-1]

    def _stop_rule(self, row: dict[str, Any]) -> str | None:
        c = self.config
        if c.stop_train_acc is not None and row["train_acc"] is not None and row["train_acc"] >= c.stop_train_acc:
            return f"train_acc>={c.stop_train_acc}"
        if c.stop_train_loss is not None and row["train_loss"] <= c.stop_train_loss:
            return f"train_loss<={c.stop_train_loss}"
        return None

    def _truncate_step_log(self, step: int) -> None:
        path = self.paths["steps"]
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in keep))


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(fit, held_out)`` of ``n`` training rows, ``round(fraction n)`` (at least 1) held out,
    drawn from a generator seeded by ``seed``; both sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + 7))
    k = min(n - 1, max(1, round(fraction * n)))
    return perm[k:].sort().values, perm[:k].sort().values


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True) + "\n"


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=False)


class _NoProgress(contextlib.nullcontext):
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


def train(config: TrainConfig, out: str | Path, **kwargs: Any) -> Checkpoint:
    """Train ``config`` and write the checkpoint to ``out`` (see :class:`Trainer`)."""
    return Trainer(config, out, **kwargs).run()
