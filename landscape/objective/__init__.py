"""The objective: model + loss + data as one function of a flat parameter vector.

The pieces, each in its own module:

* :mod:`~landscape.objective.core` -- :class:`Objective`: loss, gradient, curvature products, evaluation;
* :mod:`~landscape.objective.sources` -- where the data comes from (in-memory tensors, streamed batches);
* :mod:`~landscape.objective.loss` -- how a batch becomes a loss (task losses, criteria, ``loss_fn``);
* :mod:`~landscape.objective.products` -- the per-batch Hessian, GGN and Fisher products;
* :mod:`~landscape.objective.batches` -- batch structures (tuples, dicts) as rows of tensors;
* :mod:`~landscape.objective.parameters` -- which parameters move, and eval mode.
"""
from landscape.objective.core import KINDS, Objective
from landscape.objective.loss import BatchLoss, Criterion, Loss, LossError, LossValue, TaskLoss, as_loss
from landscape.objective.parameters import ParamSpec, eval_mode, select_parameters
from landscape.objective.sources import DataError, StreamSource, TensorSource, subset_indices

__all__ = ["BatchLoss", "Criterion", "DataError", "KINDS", "Loss", "LossError", "LossValue", "Objective", "ParamSpec",
           "StreamSource", "TaskLoss", "TensorSource", "as_loss", "eval_mode", "select_parameters", "subset_indices"]
