"""How a batch becomes a loss: the three loss protocols of an :class:`~landscape.objective.Objective`.

Every protocol turns ``(model, batch)`` into a :class:`LossValue` ``(total, count, correct, predictions)``
with ``total`` the *sum* of the batch's losses over ``count`` targets, so the full-data mean is exactly

    L(w) = sum_b total_b(w) / sum_b count_b

whatever the batch sizes or masks. The protocols:

* :class:`TaskLoss` -- the built-in losses of ``(x, y)`` batches: ``classification`` (cross-entropy on
  logits), ``regression`` (MSE), ``language_model`` (token cross-entropy; ``count`` = tokens).
* :class:`Criterion` -- any mean-reduced ``criterion(output, target)`` (an ``nn.CrossEntropyLoss()``, a
  function), as in PyHessian: ``total = criterion(model(inputs), target) * rows``. A batch is ``(x, y)``,
  a dict (``model(**inputs)``, the target under ``labels``/``label``/``targets``/``target``/``y``), or
  anything ``split(batch) -> (inputs, target)`` understands.
* :class:`BatchLoss` -- full control: ``fn(model, batch) -> (total, count)`` or ``(total, count, correct)``;
  ``total`` a scalar sum, or a 1-D tensor of per-sample losses (summed; the empirical Fisher needs this form).
  A bare mean loss (or an output with ``.loss``) counts the batch's rows; bare per-sample losses count themselves.

:func:`as_loss` picks one from what a user passes: a task name, a protocol object, an ``nn.Module``
criterion, or a function (``fn(model, batch)`` when its first parameter is named ``model``/``module``/
``net``/``network``, otherwise a criterion).
"""
from __future__ import annotations

import contextlib
import inspect
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from landscape.losses import IGNORE_INDEX, loss_fn, predictions, target_count
from landscape.objective.batches import describe, num_rows

TARGET_KEYS = ("labels", "label", "targets", "target", "y")
"""Keys a dict batch's target is looked up under by :class:`Criterion`."""


class LossError(ValueError):
    """A loss that returned something unusable; the message is one line naming the batch."""


@dataclass
class LossValue:
    """One batch's ``total`` (sum of losses), ``count`` (targets averaged over), and, when the loss knows
    them, ``correct`` top-1 predictions out of ``predictions``."""

    total: torch.Tensor
    count: float | torch.Tensor
    correct: torch.Tensor | None = None
    predictions: float | torch.Tensor | None = None


class Loss:
    """A loss protocol. ``value`` is required; ``output``/``output_total`` (the GGN) and ``per_sample``
    (the empirical Fisher) raise :class:`LossError` where the protocol cannot give them."""

    name = "loss"
    additive = False
    """Whether a batch's ``total`` is the sum of its rows' (each row's loss depends on that row alone), so that
    micro-batches merged into one give the same totals: what lets the objective evaluate and keep graphs on
    merged rows. False where unknown (a batch mean over weighted classes is not)."""

    def value(self, model: nn.Module, batch: Any) -> LossValue:
        raise NotImplementedError

    def output(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise LossError(f"the generalized Gauss-Newton matrix needs the model output apart from the loss; "
                        f"{self.name} does not give it (use a task loss or a criterion)")

    def output_total(self, out: torch.Tensor, batch: Any) -> tuple[torch.Tensor, float]:
        """``(total, count)`` of the batch from the model output ``out`` (the GGN's outer loss)."""
        raise LossError(f"{self.name} cannot compute the loss from the model output alone")

    def per_sample(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise LossError(f"the empirical Fisher needs per-sample losses; {self.name} does not give them")

    def describe(self) -> dict[str, Any]:
        """What identifies this loss in a report's settings."""
        return {"loss": self.name}


def _pair(batch: Any, what: str) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise LossError(f"{what} needs (inputs, target) batches, got {describe(batch)}; pass a criterion with "
                    "split=, or a loss_fn(model, batch)")


class TaskLoss(Loss):
    """The built-in loss of ``task`` on ``(x, y)`` batches (see :func:`landscape.losses.loss_fn`)."""

    additive = True

    def __init__(self, task: str = "classification", label_smoothing: float = 0.0) -> None:
        self.task, self.label_smoothing = task, float(label_smoothing)
        self._sum = loss_fn(task, label_smoothing, reduction="sum")
        self._none = loss_fn(task, label_smoothing, reduction="none")
        self.name = task

    def _forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """The prediction (a HuggingFace output's ``logits``) and target of an ``(x, y)`` or dict batch."""
        inputs, y = default_split(batch, f"the built-in {self.task} loss")
        if self.task == "language_model" and isinstance(inputs, Mapping) and not is_encoder_decoder(model):
            _check_shifted(inputs.get("input_ids"), y)  # a decoder's logits line up with its labels: a copy task
        out = model_output(call_model(model, with_decoder_labels(model, batch, inputs)))
        self._check(out, y)
        return out, y

    def _check(self, out: torch.Tensor, y: Any) -> None:
        """A one-line :class:`LossError` for an output the task cannot score against ``y``."""
        if self.task == "regression" and isinstance(y, torch.Tensor) and out.numel() != y.numel():
            raise LossError(f"the built-in regression loss needs one output per target value; got output "
                            f"{tuple(out.shape)} against target {tuple(y.shape)}")
        if (self.task == "classification" and isinstance(y, torch.Tensor) and y.is_floating_point()
                and (out.shape != y.shape or out.dim() < 2 or out.shape[1] < 2)):
            raise LossError(f"the built-in classification loss takes class indices, or class probabilities shaped "
                            f"as the logits; got float targets {tuple(y.shape)} for logits {tuple(out.shape)} (a "
                            "regression? loss=\"regression\", or the criterion torch.nn:MSELoss)")
        if self.task == "regression" or not isinstance(y, torch.Tensor) or out.dim() != y.dim() + 1:
            return  # other mismatches get cross-entropy's own message
        if self.task == "language_model" and out.shape[:-1] == y.shape:
            return
        if self.task == "classification" and out.shape[:1] + out.shape[2:] == y.shape:  # (N, C, ...) vs (N, ...)
            return
        want = "target + (vocabulary,)" if self.task == "language_model" else "(rows, classes, ...)"
        hint = (" (a sequence model? loss=\"language_model\", or loss=lambda model, batch: model(**batch).loss for "
                "one that computes its own)" if self.task == "classification" and out.shape[:-1] == y.shape else "")
        raise LossError(f"the built-in {self.task} loss needs logits {want}; got logits {tuple(out.shape)} against "
                        f"target {tuple(y.shape)}{hint}")

    def value(self, model: nn.Module, batch: Any) -> LossValue:
        out, y = self._forward(model, batch)
        n = target_count(self.task, y)
        scored = self.task != "regression" and not y.is_floating_point()  # no accuracy of class probabilities
        correct = (predictions(self.task, out) == y).sum().to(out.dtype) if scored else None
        return LossValue(self._sum(out, y), n, correct, None if correct is None else n)

    def output(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self._forward(model, batch)[0]

    def output_total(self, out: torch.Tensor, batch: Any) -> tuple[torch.Tensor, float]:
        y = default_split(batch, f"the built-in {self.task} loss")[1]
        return self._sum(out, y), target_count(self.task, y)

    def per_sample(self, model: nn.Module, batch: Any) -> torch.Tensor:
        out, y = self._forward(model, batch)
        return self._none(out, y)

    def describe(self) -> dict[str, Any]:
        return {"loss": self.task, "label_smoothing": self.label_smoothing}


def _check_shifted(ids: Any, y: Any) -> None:
    """A :class:`LossError` for HuggingFace's causal-LM convention (``labels`` = ``input_ids``, shifted inside the
    model's own loss) under the built-in language-model loss, which scores ``logits[t]`` against ``y[t]``."""
    if not (isinstance(ids, torch.Tensor) and isinstance(y, torch.Tensor) and ids.shape == y.shape):
        return
    counted = y != IGNORE_INDEX
    if bool(counted.any()) and bool((y == ids)[counted].all()):
        raise LossError("the labels equal input_ids (HuggingFace's convention: its model shifts them inside its "
                        "own loss), so the built-in language_model loss would score each token against itself; "
                        "pass loss=lambda model, batch: model(**batch).loss, or labels shifted by one token")


_DECODES: dict[type, bool] = {}


def is_encoder_decoder(model: nn.Module) -> bool:
    """Whether ``model``'s ``forward`` takes ``decoder_input_ids`` (HuggingFace's T5, BART): its logits are the
    positions of its decoder inputs, made from the labels when none are given."""
    kind = type(model)
    if kind not in _DECODES:
        try:
            _DECODES[kind] = "decoder_input_ids" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            _DECODES[kind] = False
    return _DECODES[kind]


def with_decoder_labels(model: nn.Module, batch: Any, inputs: Any) -> Any:
    """``inputs`` with the dict batch's ``labels`` put back for an encoder-decoder model
    (:func:`is_encoder_decoder`) that is given no decoder inputs: such a model builds them from the labels, and
    its logits are then the labels' own positions."""
    if not (isinstance(inputs, Mapping) and isinstance(batch, Mapping) and "labels" in batch
            and "labels" not in inputs and "decoder_input_ids" not in inputs):
        return inputs
    return {**inputs, "labels": batch["labels"]} if is_encoder_decoder(model) else inputs


@contextlib.contextmanager
def naming_batch(index: int, loss: "Loss", validated: bool) -> Iterator[None]:
    """Errors of the model and loss on batch ``index``, named: a :class:`LossError` gets the batch; during the
    first pass (not ``validated``) and outside a transform (``vmap``, whose failures its callers handle), a
    RuntimeError, IndexError or TypeError (shapes, labels out of range, keywords the model does not take)
    becomes a one-line :class:`LossError`; anything else (an out-of-memory error) passes as it is."""
    try:
        yield
    except LossError as e:
        raise LossError(f"batch {index}: {e}") from None
    except (RuntimeError, IndexError, TypeError) as e:
        if (validated or isinstance(e, torch.OutOfMemoryError)
                or torch._C._functorch.peek_interpreter_stack() is not None):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        raise LossError(f"batch {index}: the model and loss ({loss.name}) failed on it: {type(e).__name__}: "
                        f"{first}") from e


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)`` for a tensor, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a mapping."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def model_output(out: Any) -> torch.Tensor:
    """The prediction tensor of a model's output: itself, a mapping's/ModelOutput's ``logits``, or the first
    element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise LossError(f"cannot find the prediction tensor in the model output ({type(out).__name__}); "
                    "use a loss_fn(model, batch)")


def default_split(batch: Any, what: str = "a criterion") -> tuple[Any, Any]:
    """``(inputs, target)`` of an ``(x, y)`` batch or of a dict batch (target under :data:`TARGET_KEYS`)."""
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            if key in batch:
                return {k: v for k, v in batch.items() if k != key}, batch[key]
        raise LossError(f"no target in the dict batch (keys {', '.join(map(str, batch))}; looked for "
                        f"{', '.join(TARGET_KEYS)}): pass split= or a loss_fn(model, batch)")
    return _pair(batch, what)


class Criterion(Loss):
    """A mean-reduced ``criterion(output, target)``; each batch weighs by its rows (the target's leading
    dimension), as in PyHessian. A criterion whose ``reduction`` is ``"sum"`` gives the batch's total itself;
    one with an ``ignore_index`` (``nn.CrossEntropyLoss``, ``nn.NLLLoss``) counts the class targets it does
    not ignore, so that padded tokens weigh nothing."""

    def __init__(self, criterion: Callable[[Any, Any], torch.Tensor],
                 split: Callable[[Any], tuple[Any, Any]] | None = None) -> None:
        self.criterion, self.split = criterion, split or default_split
        self.name = _name(criterion)
        self.summed = getattr(criterion, "reduction", "mean") == "sum"
        self.ignore_index = getattr(criterion, "ignore_index", None)
        # a sum, or one of torch's losses without class weights (whose mean divides by the weights' sum)
        self.additive = self.summed or (isinstance(criterion, nn.modules.loss._Loss)
                                        and getattr(criterion, "weight", None) is None)

    def _forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        inputs, target = self.split(batch)
        return model_output(call_model(model, with_decoder_labels(model, batch, inputs))), target

    def _count(self, target: Any) -> int | torch.Tensor:
        """Rows, or the class targets other than ``ignore_index`` (a 0-d tensor: no host read)."""
        if (isinstance(self.ignore_index, int) and isinstance(target, torch.Tensor) and target.dim() > 0
                and not target.is_floating_point()):
            return (target != self.ignore_index).sum()
        return _rows(target)

    def _total(self, out: torch.Tensor, target: Any) -> tuple[torch.Tensor, int | torch.Tensor]:
        n = self._count(target)
        loss = self._mean(out, target)
        return (loss if self.summed else loss * n), n

    def value(self, model: nn.Module, batch: Any) -> LossValue:
        out, target = self._forward(model, batch)
        total, n = self._total(out, target)
        correct = predictions = None
        if (isinstance(target, torch.Tensor) and not target.is_floating_point() and out.dim() >= 2
                and tuple(out.shape[:-1]) == tuple(target.shape)):
            correct = (out.argmax(-1) == target).sum().to(out.dtype)
            predictions = (target != self.ignore_index).sum() if isinstance(self.ignore_index, int) else target.numel()
        return LossValue(total, n, correct, predictions)

    def _mean(self, out: torch.Tensor, target: Any, explain: bool = True) -> torch.Tensor:
        try:
            loss = self.criterion(out, target)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:  # shapes the criterion cannot score (inside vmap: the caller's fallback decides)
            if not explain or not isinstance(target, torch.Tensor) or \
                    torch._C._functorch.peek_interpreter_stack() is not None:
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            hint = (" (language-model logits: loss=\"language_model\", or a loss_fn(model, batch))"
                    if out.dim() == 3 and out.shape[:2] == target.shape else "")
            raise LossError(f"criterion {self.name} failed on output {tuple(out.shape)} against target "
                            f"{tuple(target.shape)}: {first}{hint}") from e
        except (TypeError, IndexError, KeyError, AttributeError) as e:  # often a loss_fn(model, batch) misread
            if not explain:
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            raise LossError(f"criterion {self.name}(output, target) failed: {type(e).__name__}: {first}. A "
                            "loss_fn(model, batch) is recognised by its first parameter's name (model, module, net, "
                            "network, m), an nn.Module annotation or a second parameter named batch, data or "
                            "minibatch; or pass landscape.BatchLoss(fn)") from e
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise LossError(f"criterion {self.name} returned {got}, not a scalar (use reduction='mean')")
        return loss.reshape(())

    def output(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self._forward(model, batch)[0]

    def output_total(self, out: torch.Tensor, batch: Any) -> tuple[torch.Tensor, float]:
        return self._total(out, self.split(batch)[1])

    def per_sample(self, model: nn.Module, batch: Any) -> torch.Tensor:
        out, target = self._forward(model, batch)
        try:
            return torch.vmap(lambda o, t: self._mean(o[None], t[None], explain=False))(out, target)
        except LossError:
            raise
        except Exception:  # noqa: BLE001 - an op vmap cannot batch: one sample at a time
            return torch.stack([self._mean(out[i:i + 1], target[i:i + 1]) for i in range(len(out))])

    def describe(self) -> dict[str, Any]:
        """The criterion and its settings (a module's plain attributes: ``label_smoothing``, ``reduction``, ...),
        so that results of another criterion of the same class are not taken for this one's."""
        plain = (bool, int, float, str, type(None))
        settings = {k: v for k, v in sorted(vars(self.criterion).items()) if not k.startswith("_")
                    and k != "training" and isinstance(v, plain)} if isinstance(self.criterion, nn.Module) else {}
        return {"loss": f"criterion {self.name}", **({"settings": settings} if settings else {})}


class BatchLoss(Loss):
    """``fn(model, batch) -> (total, count)`` or ``(total, count, correct)``: full control of the loss. Also
    taken: the batch's mean loss (a scalar tensor, or an output with a ``.loss`` such as HuggingFace's), counted
    as ``num_rows(batch)`` samples, and a 1-D tensor of per-sample losses (``count`` = its length). A mean over
    something other than the batch's rows (tokens under a padding mask) is exact only as ``(sum, count)``."""

    def __init__(self, fn: Callable[[nn.Module, Any], Any], name: str | None = None) -> None:
        self.fn, self.name = fn, name or _name(fn)
        self._means: bool | None = None  # whether a call returned a bare batch mean (None: not called yet)

    @property
    def additive(self) -> bool:  # type: ignore[override]
        """Sums and per-sample losses are; a bare batch mean may average over anything (known after a call)."""
        return self._means is False

    def _call(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        got = self.fn(model, batch)
        loss = getattr(got, "loss", None)  # a model output that carries its loss (HuggingFace's ModelOutput)
        if isinstance(loss, torch.Tensor) and not isinstance(got, torch.Tensor):
            got = loss
        mean = isinstance(got, torch.Tensor) and got.dim() != 1 and got.numel() == 1
        self._means = mean or bool(self._means)
        if isinstance(got, torch.Tensor) and got.dim() == 1:  # per-sample losses
            return got, got.numel(), None
        if mean:  # the batch's mean loss: weighted by its rows
            n = num_rows(batch)
            return got.reshape(()) * n, n, None
        if not isinstance(got, (tuple, list)) or len(got) not in (2, 3):
            raise LossError(f"loss_fn {self.name} returned {type(got).__name__}; it must return the batch's mean "
                            "loss, per-sample losses, (sum of losses, count) or (sum, count, correct)")
        total, count = got[0], got[1]
        if not isinstance(total, torch.Tensor) or total.dim() > 1:
            what = type(total).__name__ if not isinstance(total, torch.Tensor) else f"shape {tuple(total.shape)}"
            raise LossError(f"loss_fn {self.name}: the sum of losses must be a scalar tensor (or a 1-D tensor of "
                            f"per-sample losses), got {what}")
        if not isinstance(count, (numbers.Real, torch.Tensor)) or isinstance(count, bool) or (
                isinstance(count, torch.Tensor) and count.numel() != 1):
            raise LossError(f"loss_fn {self.name}: the count must be a number, got {type(count).__name__}")
        return total, count, got[2] if len(got) == 3 else None

    def value(self, model: nn.Module, batch: Any) -> LossValue:
        total, count, correct = self._call(model, batch)
        if isinstance(correct, (int, float)):
            correct = total.new_tensor(float(correct))
        return LossValue(total.sum(), count, correct, None if correct is None else count)

    def per_sample(self, model: nn.Module, batch: Any) -> torch.Tensor:
        total = self._call(model, batch)[0]
        if total.dim() != 1:
            raise LossError(f"the empirical Fisher needs per-sample losses: make loss_fn {self.name} return a 1-D "
                            "tensor of per-sample losses as its first value")
        return total

    def describe(self) -> dict[str, Any]:
        return {"loss": f"loss_fn {self.name}"}


def _rows(target: Any) -> int:
    """Rows of a target: its leading dimension, or that of the first tensor in a tuple or dict of them."""
    if isinstance(target, torch.Tensor):
        return int(target.shape[0]) if target.dim() > 0 else 1
    try:
        return num_rows(target)
    except ValueError:
        return 1


def _name(fn: Any) -> str:
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    return f"{module}:{qual}" if module and qual else repr(fn)


_MODEL_PARAMS = ("model", "module", "net", "network", "m")
_BATCH_PARAMS = ("batch", "data", "minibatch")


def as_loss(loss: Any = None, *, task: str | None = None, label_smoothing: float = 0.0) -> Loss:
    """The loss protocol for ``loss`` (module docstring); ``None`` is ``task`` (default classification)."""
    if isinstance(loss, Loss):
        return loss
    if loss is None or isinstance(loss, str):
        return TaskLoss(loss or task or "classification", label_smoothing)
    if isinstance(loss, nn.Module):
        return Criterion(loss)
    if not callable(loss):
        raise TypeError(f"a loss must be a task name, a criterion or a loss_fn(model, batch), got "
                        f"{type(loss).__name__}")
    try:
        params = [p for p in inspect.signature(loss).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if params and (params[0].name in _MODEL_PARAMS or _is_module(params[0].annotation)
                   or len(params) > 1 and params[1].name in _BATCH_PARAMS):
        return BatchLoss(loss)
    return Criterion(loss)


def _is_module(annotation: Any) -> bool:
    """``annotation`` names ``nn.Module`` or a subclass (a class, or the string of a postponed annotation)."""
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "Module"
    return isinstance(annotation, type) and issubclass(annotation, nn.Module)


def check_value(v: LossValue, index: int, loss: Loss) -> None:
    """A one-line :class:`LossError` naming batch ``index`` when its loss or count is not finite / positive."""
    total = float(v.total.detach())
    count = float(v.count.detach()) if isinstance(v.count, torch.Tensor) else float(v.count)
    if not math.isfinite(total):
        raise LossError(f"{loss.name} gave a non-finite loss ({total}) on batch {index}")
    if not math.isfinite(count) or count <= 0:
        raise LossError(f"{loss.name} gave count {count} on batch {index}; it must be a positive number")


__all__ = ["BatchLoss", "Criterion", "Loss", "LossError", "LossValue", "TARGET_KEYS", "TaskLoss", "as_loss",
           "call_model", "check_value", "default_split", "model_output"]
