"""Run a study: train and analyze every run, resumably, on a local process pool or on Ray.

Each run works in ``<study_dir>/runs/<id>/``::

    run.json            the run (name, optimizer, axes, resolved training configuration)
    model.pt            the checkpoint (the trainer resumes from model.resume.pt after a kill)
    model.metrics.jsonl one row per epoch
    analysis[.PASS].json  the analysis report(s) (resumed section by section)
    status.json         written last, atomically: done | diverged | failed, with the one-line error
    error.log           the traceback of a failed run

A run whose status is ``done`` (with the study's present analysis options) or ``diverged`` is never
redone; a ``failed`` one is retried on the next invocation. A run is worked on under an exclusive lock
of its folder, so two invocations (or an orphaned worker of a killed one) never write the same run at
once. Every run uses ``threads`` torch threads whatever the number of workers, so the numbers do not
depend on ``--workers``. The local pool spawns its processes: a script that calls :func:`run_study`
with several workers needs the ``if __name__ == "__main__":`` guard.
"""
from __future__ import annotations

import contextlib
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from landscape.study.spec import Run, Study
from landscape.study.table import STATUS_FILE, analysis_file, run_dir, run_state

FINAL = ("done", "diverged")


def one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (not POSIX)
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def needs_work(folder: Path, passes: dict[str, Any]) -> bool:
    return run_state(folder, passes)[0] not in FINAL


def execute_run(run: Run, study_dir: str | Path, passes: dict[str, dict[str, Any]], threads: int | None = 1) -> dict:
    """Train and analyze ``run``; write and return its status (``"cached": True`` when nothing was left to
    do). Errors of the run are recorded, not raised; only an interrupt propagates."""
    folder = run_dir(study_dir, run)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):
        state, status = run_state(folder, passes)
        if state in FINAL and status is not None:
            return {**status, "cached": True}
        with _torch_threads(threads):
            return _execute(run, folder, passes)


def _execute(run: Run, folder: Path, passes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from landscape.io import atomic_write_json, atomic_write_text
    from optimizers.trainer import TrainingDiverged

    atomic_write_json(folder / "run.json", run.to_dict())
    (folder / STATUS_FILE).unlink(missing_ok=True)
    (folder / "error.log").unlink(missing_ok=True)
    base = {"id": run.id, "name": run.name}
    seconds: dict[str, float] = {}
    stage = "train"
    try:
        t0 = time.perf_counter()
        train = _train(run, folder)
        seconds["train"] = time.perf_counter() - t0
        stage = "analyze"
        t0 = time.perf_counter()
        for name, options in passes.items():
            _analyze(run, folder, name, options)
        seconds["analyze"] = time.perf_counter() - t0
        status = {**base, "status": "done", "train": train, "measures": passes, "seconds": seconds}
    except TrainingDiverged as e:
        status = {**base, "status": "diverged", "error": " ".join(str(e).split()), "train": _diverged_at(folder)}
    except Exception as e:  # noqa: BLE001  (a failed run is recorded and the study goes on)
        atomic_write_text(folder / "error.log", traceback.format_exc())
        status = {**base, "status": "failed", "stage": stage, "error": one_line(e)}
    atomic_write_json(folder / STATUS_FILE, status)
    return status


def _train(run: Run, folder: Path) -> dict[str, Any]:
    from landscape.checkpoint import CheckpointError, load_checkpoint
    from optimizers.config import TrainConfig
    from optimizers.trainer import Trainer

    out = folder / "model.pt"
    ckpt = None
    if out.exists():
        try:
            ckpt = load_checkpoint(out)
        except CheckpointError:
            ckpt = None
        if ckpt is not None and ckpt.train_config != run.config:
            ckpt = None
    if ckpt is None:
        ckpt = Trainer(TrainConfig.from_dict(run.config), out, progress=False).run()
    m = ckpt.metrics
    return {"epochs_run": m.get("epochs_run"), "steps": m.get("steps"), "stopped_by": m.get("stopped_by"),
            "train_acc": m.get("train_acc"), "test_acc": m.get("test_acc"), "gen_gap": m.get("gen_gap")}


def _diverged_at(folder: Path) -> dict[str, Any]:
    import json

    try:
        last = json.loads((folder / "model.metrics.jsonl").read_text().splitlines()[-1])
    except (OSError, IndexError, json.JSONDecodeError):
        return {"stopped_by": "diverged"}
    return {"epochs_run": last.get("epoch"), "steps": last.get("step"), "stopped_by": "diverged"}


def _analyze(run: Run, folder: Path, name: str, options: dict[str, Any]) -> dict[str, Any]:
    from landscape.analysis import analyze, file_digest
    from landscape.checkpoint import open_checkpoint
    from landscape.study.spec import analysis_options

    path = folder / "model.pt"
    model_name, data_name = run.config["model"], run.config["data"]
    # Entry points named by the study file (never by the checkpoint itself) may be imported.
    ckpt, model, data = open_checkpoint(path, model=model_name if ":" in model_name else None,
                                        data=data_name if ":" in data_name else None)
    header = {"checkpoint": {"path": path.name, "sha256": file_digest(path)},
              "model": {"name": ckpt.model_name, "kwargs": ckpt.model_kwargs},
              "data": {"name": ckpt.data_name, "kwargs": ckpt.data_kwargs}}
    return analyze(model, data, analysis_options(options), header=header, json_path=folder / analysis_file(name),
                   resume=True, progress=False)


# ---------------------------------------------------------------------------- backends
def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (its own list if set)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _claim_gpu(counter: Any, gpus: Sequence[str]) -> None:
    """With several ``gpus``: this worker sees only ``gpus[i % len(gpus)]``, ``i`` its place in ``counter``."""
    if counter is not None and len(gpus) > 1:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]  # before CUDA starts in this process


def _worker_init(threads: int | None, counter: Any = None, gpus: Sequence[str] = ()) -> None:
    """Pool worker: die with the parent (Linux), use ``threads`` torch threads and, with several GPUs, see
    only the next one round-robin (worker ``i`` gets ``gpus[i % len(gpus)]``, as its ``cuda:0``)."""
    _claim_gpu(counter, gpus)
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)
    except (OSError, AttributeError):  # pragma: no cover  (not Linux)
        pass
    if threads:
        import torch

        torch.set_num_threads(threads)


Callback = Callable[[Run, dict[str, Any]], None]


def run_local(runs: Sequence[Run], study_dir: Path, passes: dict, *, workers: int, threads: int | None,
              on_result: Callback) -> None:
    """Runs in this process (``workers == 1``) or on a pool of spawned processes."""
    if workers <= 1 or len(runs) <= 1:
        for run in runs:
            on_result(run, execute_run(run, study_dir, passes, threads))
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ex = ProcessPoolExecutor(max_workers=min(workers, len(runs)), mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, ctx.Value("i", 0), visible_gpus()))  # workers spread over GPUs
    try:
        futures: dict[Future, Run] = {ex.submit(execute_run, run, study_dir, passes, None): run for run in runs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in sorted(done, key=lambda f: runs.index(futures[f])):
                on_result(futures[f], f.result())
    except BaseException:  # an interrupt, a timeout, a failing callback: stop the runs now (they resume)
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            proc.terminate()
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def run_ray(runs: Sequence[Run], study_dir: Path, passes: dict, *, workers: int | None, threads: int | None,
            on_result: Callback) -> None:
    """Runs as Ray tasks (``num_cpus=threads``); the study folder must be on a file system every node sees.
    ``ray.init()`` joins the cluster named by ``RAY_ADDRESS``, or starts a local one."""
    try:
        import ray
    except ImportError as e:
        raise ValueError("--backend ray needs Ray: pip install 'landscape[ray]' (or: pip install ray)") from e
    if not ray.is_initialized():
        ray.init()
    task = ray.remote(num_cpus=threads or 1)(execute_run)
    queue = list(runs)
    inflight: dict[Any, Run] = {}
    limit = workers or len(queue)
    while queue or inflight:
        while queue and len(inflight) < limit:
            run = queue.pop(0)
            inflight[task.remote(run, str(study_dir), passes, threads)] = run
        done, _ = ray.wait(list(inflight), num_returns=1)
        for ref in done:
            on_result(inflight.pop(ref), ray.get(ref))


# ------------------------------------------------------------------------------- study
def run_study(study: Study, study_dir: str | Path, *, workers: int | None = None, threads: int | None = 1,
              backend: str = "local", log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Bring every run of ``study`` to a final status; the results table is rewritten after every run.
    Returns the count of runs per status."""
    from landscape.io import atomic_write_json
    from landscape.study.table import build_table, write_table

    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(study_dir / "study.json", study.summary())
    log = log or (lambda s: None)
    todo = [r for r in study.runs if needs_work(run_dir(study_dir, r), study.passes)]
    n_done = len(study.runs) - len(todo)
    trained = sum((run_dir(study_dir, r) / "model.pt").exists() for r in todo)
    log(f"{study.name}: {len(study.runs)} runs, {n_done} already finished, {len(todo)} to run"
        + (f" ({trained} of them trained: analysis only)" if trained else ""))
    counter = {"k": n_done}

    def on_result(run: Run, status: dict[str, Any]) -> None:
        counter["k"] += 1
        what = status["status"]
        detail = ""
        if what == "done":
            gap = (status.get("train") or {}).get("gen_gap")
            secs = sum((status.get("seconds") or {}).values())
            detail = (f"gap {gap:.4f}" if isinstance(gap, (int, float)) else "") + (
                "" if status.get("cached") else f"  ({secs:.1f} s)")
        else:
            detail = status.get("error", "")
        log(f"[{counter['k']}/{len(study.runs)}] {what:8s} {run.name}  {detail}".rstrip())
        write_table(build_table(study, study_dir), study_dir)

    if todo:
        if backend == "local":
            run_local(todo, study_dir, study.passes, workers=workers or os.cpu_count() or 1, threads=threads,
                      on_result=on_result)
        elif backend == "ray":
            run_ray(todo, study_dir, study.passes, workers=workers, threads=threads, on_result=on_result)
        else:
            raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    table = build_table(study, study_dir)
    write_table(table, study_dir)
    counts: dict[str, int] = {}
    for row in table.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def status_of(study: Study, study_dir: str | Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in study.runs:
        key = run_state(run_dir(study_dir, run), study.passes)[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


__all__ = ["execute_run", "needs_work", "run_local", "run_ray", "run_study", "status_of"]
