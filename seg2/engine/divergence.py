"""Stop training at the first non-finite loss, naming the iteration and the loss terms,
before the bad step reaches the weights (Detectron2 checks only the summed loss, after the
backward pass, and reports it as a traceback)."""

import math
from typing import Callable, Dict, Mapping

import torch

from ..utils.cli import CleanExitError

__all__ = ["TrainingDivergedError", "non_finite_terms", "stop_on_non_finite_losses"]


class TrainingDivergedError(CleanExitError):
    """Losses or weights became NaN/Inf; the message names the iteration and the terms."""


def non_finite_terms(loss_dict: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """{name: value} of the loss terms that are NaN or +-Inf."""
    values = {
        k: float(v.detach().float().sum()) if torch.is_tensor(v) else float(v)
        for k, v in loss_dict.items()
    }
    return {k: v for k, v in values.items() if not math.isfinite(v)}


def stop_on_non_finite_losses(
    model: torch.nn.Module, iteration: Callable[[], int], newest_checkpoint: Callable[[], str]
):
    """Register a forward hook on ``model`` that raises :class:`TrainingDivergedError` when a
    training forward pass returns a non-finite loss term (before backward and the optimizer
    step). ``iteration()`` and ``newest_checkpoint()`` fill in the message. Returns the
    hook handle."""

    def check(module, inputs, output):
        if not module.training or not isinstance(output, Mapping) or not output:
            return
        terms = [v.detach().float().sum() for v in output.values() if torch.is_tensor(v)]
        if not terms or bool(torch.isfinite(torch.stack(terms)).all()):  # one sync per step
            return
        bad = non_finite_terms(output)
        if bad:
            terms = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise TrainingDivergedError(
                f"training stopped at iteration {iteration()}: non-finite loss terms {terms} "
                f"(of {', '.join(output)}). The newest checkpoint, {newest_checkpoint()}, is "
                "from before; lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or enable "
                "SOLVER.CLIP_GRADIENTS, then --resume"
            )

    return model.register_forward_hook(check)
