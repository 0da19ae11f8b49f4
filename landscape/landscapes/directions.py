"""Directions in parameter space for loss-landscape plots.

Every maker returns a :class:`Directions`: ``k`` flat float64 vectors (rows, CPU) in the
order of an :class:`~landscape.objective.Objective`'s parameters, plus JSON-ready metadata
(kind, seed, normalization, sources). A grid point ``(a, b)`` is ``w0 + a d_1 + b d_2`` with
``w0`` the objective's parameters, so every direction is relative to the checkpoint the
objective was built from.

Normalization of a direction ``d`` against the weights ``w`` (:func:`normalize`):

* ``filter`` (Li et al. 2018): every dim-0 slice ``d[i]`` of a parameter with ``dim >= 2``
  (an output filter of a convolution, an output row of a Linear layer, a row of an
  embedding) is rescaled to ``d[i] / ||d[i]|| * ||w[i]||``;
* ``layer``: every parameter tensor is rescaled to the norm of its weight tensor;
* ``model``: the whole vector is rescaled to the norm of the whole weight vector;
* ``none``: left as drawn.

Parameters with ``dim <= 1`` (biases, BatchNorm/LayerNorm scales and shifts) follow
``bias_bn``: ``zero`` (default; Li et al.'s "ignore biasbn": not perturbed), ``include``
(perturbed and normalized like the rest; under ``filter`` the whole 1-D tensor counts as
one filter) or ``copy`` (the direction equals the weights, as in Li et al.'s reference
code when biases are not ignored). Under ``model``, the norm of ``w`` is taken over the
entries that are normalized (``zero``/``copy`` entries excluded). A slice whose direction
is all zero stays zero.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

NORMS = ("filter", "layer", "model", "none")
BIAS_BN = ("zero", "include", "copy")


@dataclass
class Directions:
    """``vectors``: ``(k, P)`` float64 on the CPU; ``meta``: kind, seed, normalization, sources,
    and for plots ``markers`` (``[{"label", "coords"}]``) and ``path`` (trajectory coordinates)."""

    vectors: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.dim() != 2:
            raise ValueError(f"directions must be a (k, P) tensor, got shape {tuple(self.vectors.shape)}")
        self.vectors = self.vectors.detach().to("cpu", torch.float64).contiguous()

    @property
    def k(self) -> int:
        return int(self.vectors.shape[0])

    def digest(self) -> str:
        """SHA-256 of the vectors' float64 bytes (recorded with every surface)."""
        return hashlib.sha256(self.vectors.numpy().tobytes()).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        from landscape.io import atomic_torch_save

        atomic_torch_save({"format": "landscape-directions", "meta": self.meta, "vectors": self.vectors,
                           "sha256": self.digest()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Directions":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("format") != "landscape-directions":
            raise ValueError(f"{path}: not a landscape directions file")
        out = cls(obj["vectors"], obj["meta"])
        if out.digest() != obj["sha256"]:
            raise ValueError(f"{path}: directions file is corrupt (checksum mismatch)")
        return out


# ----------------------------------------------------------------------------- normalization
def normalize(d: torch.Tensor, w: torch.Tensor, shapes: Sequence[Sequence[int]], norm: str = "filter",
              bias_bn: str = "zero") -> torch.Tensor:
    """``d`` normalized against ``w`` (flat vectors laid out as ``shapes``; see the module docstring)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if bias_bn not in BIAS_BN:
        raise ValueError(f"bias_bn must be one of {BIAS_BN}, got {bias_bn!r}")
    d, w = d.detach().double().cpu().clone(), w.detach().double().cpu()
    sizes = [int(np.prod(s)) for s in shapes]
    if sum(sizes) != len(d) or len(d) != len(w):
        raise ValueError(f"vectors of length {len(d)} and {len(w)} do not match the shapes ({sum(sizes)})")
    dp, wp = d.split(sizes), w.split(sizes)
    scaled = []  # parameters taking part in the normalization
    for i, shape in enumerate(shapes):
        if len(shape) <= 1 and bias_bn != "include":
            if bias_bn == "zero":
                dp[i].zero_()
            else:
                dp[i].copy_(wp[i])
            continue
        scaled.append(i)
        if norm == "filter":
            if len(shape) >= 2:
                rows_d, rows_w = dp[i].view(shape[0], -1), wp[i].view(shape[0], -1)
                rows_d.mul_(_ratio(rows_w.norm(dim=1), rows_d.norm(dim=1))[:, None])
            else:
                dp[i].mul_(_ratio(wp[i].norm(), dp[i].norm()))
        elif norm == "layer":
            dp[i].mul_(_ratio(wp[i].norm(), dp[i].norm()))
    if norm == "model" and scaled:
        nd = torch.cat([dp[i] for i in scaled]).norm()
        nw = torch.cat([wp[i] for i in scaled]).norm()
        factor = _ratio(nw, nd)
        for i in scaled:
            dp[i].mul_(factor)
    return d


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den`` is 0 (a zero slice stays zero)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def _sign_fixed(v: torch.Tensor) -> torch.Tensor:
    """``v`` or ``-v``, whichever has its largest-magnitude entry positive (a deterministic sign)."""
    return v if v[int(v.abs().argmax())] >= 0 else -v


# ----------------------------------------------------------------------------- makers
def random_directions(obj: Any, k: int = 2, *, seed: int = 0, norm: str = "filter",
                      bias_bn: str = "zero") -> Directions:
    """``k`` Gaussian directions, normalized: one float64 draw of length ``P`` per direction, on the
    CPU from ``torch.Generator().manual_seed(seed)``, so the same seed gives the same raw directions
    on every device and for every checkpoint of the same architecture."""
    if k < 1:
        raise ValueError(f"need at least one direction, got k={k}")
    gen = torch.Generator().manual_seed(int(seed))
    w = obj.w0.detach().double().cpu()
    rows = [normalize(torch.randn(obj.num_params, generator=gen, dtype=torch.float64), w, obj.shapes, norm,
                      bias_bn) for _ in range(k)]
    return Directions(torch.stack(rows), {"kind": "random", "distribution": "gaussian", "seed": int(seed),
                                          "norm": norm, "bias_bn": bias_bn})


def eigen_directions(obj: Any, k: int = 2, *, seed: int = 0, tol: float = 1e-6, which: str = "largest",
                     norm: str = "none", bias_bn: str = "include", progress: bool = False) -> Directions:
    """The top-``k`` Hessian eigenvectors of ``obj`` at ``w0`` (thick-restart Lanczos started from a
    draw seeded by ``seed``), unit norm, sign fixed so the largest-magnitude entry is positive.
    ``norm``/``bias_bn`` (default: none/include, i.e. the eigenvectors themselves) can rescale them."""
    from landscape.curvature.lanczos import lanczos

    res = lanczos(obj, k, which=which, tol=tol, seed=seed, return_vectors=True, residuals=True, progress=progress)
    w = obj.w0.detach().double().cpu()
    rows = [normalize(_sign_fixed(v.double().cpu()), w, obj.shapes, norm, bias_bn) for v in res.eigenvectors]
    return Directions(torch.stack(rows), {"kind": "eigen", "which": which, "seed": int(seed), "tol": tol,
                                          "norm": norm, "bias_bn": bias_bn,
                                          "eigenvalues": [float(x) for x in res.eigenvalues],
                                          "residuals": [float(x) for x in res.residuals],
                                          "converged": bool(res.converged)})


def pca_directions(obj: Any, trajectory: Sequence[torch.Tensor], k: int = 2, *,
                   sources: Sequence[dict[str, Any]] | None = None) -> Directions:
    """The top-``k`` principal components of a training trajectory (Li et al. 2018, Sec. 7).

    Rows ``w_i - w0`` for each trajectory point ``w_i`` (flat, objective order) are centred (as
    PCA does) and decomposed by SVD; the directions are the top right singular vectors (unit norm,
    sign fixed). ``meta["path"]`` holds each point's coordinates ``(w_i - w0) . d_j`` and
    ``meta["explained_variance_ratio"]`` the fraction of variance each direction explains.
    """
    if len(trajectory) < 2:
        raise ValueError(f"PCA needs a trajectory of at least 2 checkpoints, got {len(trajectory)}")
    w0 = obj.w0.detach().double().cpu()
    M = torch.stack([t.detach().double().cpu() - w0 for t in trajectory])
    centred = M - M.mean(0, keepdim=True)
    _, S, Vh = torch.linalg.svd(centred, full_matrices=False)
    if k > len(S) or S[k - 1] <= 0:
        raise ValueError(f"the trajectory spans fewer than {k} dimensions")
    V = torch.stack([_sign_fixed(v) for v in Vh[:k]])
    var = S**2
    meta = {"kind": "pca", "norm": "none", "points": len(trajectory),
            "explained_variance_ratio": [float(x) for x in (var[:k] / var.sum())],
            "path": (M @ V.T).tolist(), "sources": list(sources or [])}
    return Directions(V, meta)


def interpolation_direction(obj: Any, w_end: torch.Tensor, *, source: dict[str, Any] | None = None) -> Directions:
    """``d = w_end - w0``: coordinate 0 is the objective's checkpoint, 1 is ``w_end`` (in float64,
    so both ends are hit exactly for float32 weights)."""
    w0 = obj.w0.detach().double().cpu()
    d = w_end.detach().double().cpu() - w0
    return Directions(d[None], {"kind": "interpolation", "norm": "none", "distance": float(d.norm()),
                                "sources": [source or {}],
                                "markers": [{"label": "start", "coords": [0.0]}, {"label": "end", "coords": [1.0]}]})


def plane_directions(obj: Any, w_b: torch.Tensor, w_c: torch.Tensor, *,
                     sources: Sequence[dict[str, Any]] | None = None) -> Directions:
    """The plane through ``w0``, ``w_b`` and ``w_c`` (Garipov et al. 2018): ``d_1 = w_b - w0`` and
    ``d_2`` the part of ``w_c - w0`` orthogonal to ``d_1``, scaled to ``||d_1||``. The three points
    sit at ``(0, 0)``, ``(1, 0)`` and ``meta["markers"][2]["coords"]``."""
    w0 = obj.w0.detach().double().cpu()
    u, v = w_b.detach().double().cpu() - w0, w_c.detach().double().cpu() - w0
    nu = u.norm()
    if nu == 0:
        raise ValueError("the first two points of the plane coincide")
    a = float(v @ u / nu**2)
    r = v - a * u
    if r.norm() <= 1e-12 * max(float(nu), float(v.norm())):
        raise ValueError("the three points of the plane are collinear")
    d2 = r / r.norm() * nu
    b = float(r.norm() / nu)
    labels = [s.get("label", f"point {i}") for i, s in enumerate(sources or [{}, {}, {}])]
    markers = [{"label": labels[0], "coords": [0.0, 0.0]}, {"label": labels[1], "coords": [1.0, 0.0]},
               {"label": labels[2], "coords": [a, b]}]
    return Directions(torch.stack([u, d2]), {"kind": "plane", "norm": "none", "sources": list(sources or []),
                                             "markers": markers})


# ----------------------------------------------------------------------------- checkpoints as vectors
def checkpoint_vector(obj: Any, checkpoint: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """The objective's parameters as stored in ``checkpoint`` (a loaded
    :class:`~landscape.checkpoint.Checkpoint`, or the path of one or of a bare state_dict):
    ``(flat float64 vector, {"path", "sha256", "label"})``; a one-line CheckpointError if it does
    not hold every selected parameter with the same shape."""
    from landscape.analysis import file_digest
    from landscape.checkpoint import Checkpoint, CheckpointError, load_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, allow_state_dict=True)
    path = ckpt.path
    sd = ckpt.state_dict
    parts = []
    for name, shape in zip(obj.names, obj.shapes):
        if name not in sd:
            raise CheckpointError(f"{path}: has no parameter {name!r}; is it the same architecture?")
        if tuple(sd[name].shape) != tuple(shape):
            raise CheckpointError(f"{path}: parameter {name} has shape {tuple(sd[name].shape)}, "
                                  f"expected {tuple(shape)}")
        parts.append(sd[name].detach().double().reshape(-1))
    return torch.cat(parts), {"path": str(path), "sha256": file_digest(path), "label": Path(path).stem}


def trajectory_files(where: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """A trajectory folder's ``epoch_NNNN.pt`` files in epoch order, or the given list of files."""
    if isinstance(where, (str, os.PathLike)):
        folder = Path(where)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such trajectory folder (train with --checkpoint-every N)")
        files = sorted(folder.glob("epoch_*.pt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        if not files:
            raise FileNotFoundError(f"{folder}: holds no epoch_NNNN.pt checkpoints")
        return files
    return [Path(p) for p in where]


__all__ = ["BIAS_BN", "Directions", "NORMS", "checkpoint_vector", "eigen_directions", "interpolation_direction",
           "normalize", "pca_directions", "plane_directions", "random_directions", "trajectory_files"]
