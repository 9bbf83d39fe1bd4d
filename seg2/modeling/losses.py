"""Semantic segmentation losses: per-pixel cross-entropy (optionally weighted by U-Net's
weight map), soft Dice, and :class:`SemSegLoss`, their weighted sum chosen in the config.

Targets are (N, H, W) int64 labels over all classes (contiguous 0..K-1), with
``ignore_label`` (255) for pixels that take no part in any loss.
"""

from typing import Dict, Optional, Sequence

import torch
from detectron2.config import CfgNode, configurable
from torch.nn import functional as F

__all__ = [
    "pixel_cross_entropy",
    "dice_loss",
    "SemSegLoss",
]


def _check_pair(logits: torch.Tensor, target: torch.Tensor, fn: str) -> None:
    if (
        logits.dim() != 4
        or target.dim() != 3
        or logits.shape[0] != target.shape[0]
        or (logits.shape[-2:] != target.shape[-2:])
    ):
        raise ValueError(
            f"{fn}: logits must be (N, K, H, W) and target (N, H, W) with the same N, H, W; "
            f"got logits {tuple(logits.shape)} and target {tuple(target.shape)}"
        )


def _zero(logits: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph, for batches where every pixel is ignored."""
    return logits.sum() * 0.0


def pixel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_label: int = 255,
    weight_map: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Per-pixel cross-entropy averaged over the pixels that are not ignored.

    Args:
        logits: (N, K, H, W) unnormalised scores.
        target: (N, H, W) int64 labels in [0, K) or ``ignore_label``.
        ignore_label: label of pixels left out.
        weight_map: optional (N, H, W) per-pixel weights (e.g.
            :func:`seg2.data.targets.unet_weight_map`).

    Returns:
        scalar: ``sum_x w(x) * CE(x) / #{x not ignored}`` (``w = 1`` without a map, which is
        ``F.cross_entropy(..., ignore_index=ignore_label)``); 0 if every pixel is ignored.
        Dividing by the pixel count rather than by ``sum w`` keeps the border term's extra
        weight instead of normalising it away.
    """
    _check_pair(logits, target, "pixel_cross_entropy")
    logits = logits.float()  # https://github.com/pytorch/pytorch/issues/48163
    valid = target != ignore_label
    num_valid = valid.sum()
    if weight_map is None:
        loss = F.cross_entropy(logits, target, reduction="sum", ignore_index=ignore_label)
    else:
        if weight_map.shape != target.shape:
            raise ValueError(
                f"pixel_cross_entropy: weight_map shape {tuple(weight_map.shape)} != target "
                f"shape {tuple(target.shape)}"
            )
        ce = F.cross_entropy(logits, target, reduction="none", ignore_index=ignore_label)
        loss = (ce * weight_map.to(ce.dtype) * valid).sum()
    return torch.where(num_valid > 0, loss / num_valid.clamp(min=1), _zero(logits))


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_label: int = 255, eps: float = 1.0
) -> torch.Tensor:
    """
    Soft multi-class Dice loss over the whole batch.

    With softmax probabilities ``p`` and one-hot targets ``t`` restricted to pixels that are
    not ignored, for each class ``c``:
    ``dice_c = (2 * sum p_c t_c + eps) / (sum p_c + sum t_c + eps)``. The loss is
    ``1 - mean(dice_c)`` over the classes *present* in the target, so a class absent from
    the batch neither rewards nor penalises (the probability it takes from the present
    classes is already penalised through their ``dice_c``).

    Args:
        logits: (N, K, H, W) unnormalised scores.
        target: (N, H, W) int64 labels in [0, K) or ``ignore_label``.
        ignore_label: label of pixels left out.
        eps: smoothing added to numerator and denominator.

    Returns:
        scalar in [0, 1]; 0 if every pixel is ignored.
    """
    _check_pair(logits, target, "dice_loss")
    num_classes = logits.shape[1]
    valid = target != ignore_label
    prob = F.softmax(logits.float(), dim=1) * valid[:, None]
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2)
    onehot = onehot.to(prob.dtype) * valid[:, None]
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    t_sum = onehot.sum(dims)
    dice = (2 * inter + eps) / (prob.sum(dims) + t_sum + eps)
    present = (t_sum > 0).to(dice.dtype)
    num_present = present.sum()
    loss = 1 - (dice * present).sum() / num_present.clamp(min=1)
    return torch.where(num_present > 0, loss, _zero(logits))


class SemSegLoss:
    """
    Weighted sum of named semantic losses, ``MODEL.SEG2.LOSS.NAMES``/``WEIGHTS``:

    * ``ce``: :func:`pixel_cross_entropy` without weights.
    * ``weighted_ce``: :func:`pixel_cross_entropy` with U-Net's weight map, the ``weights``
      argument (the dataset mapper's ``sem_seg_weights``, ``INPUT.SEG2.WEIGHT_MAP``).
    * ``dice``: :func:`dice_loss`.

    Called as ``loss(logits, targets, weights=None)``; returns one entry per name,
    ``{"loss_sem_seg_<name>": weight * value}``, so each term is logged separately.
    """

    NAMES = ("ce", "weighted_ce", "dice")

    @configurable
    def __init__(
        self,
        *,
        names: Sequence[str] = ("ce",),
        weights: Sequence[float] = (1.0,),
        ignore_label: int = 255,
        dice_eps: float = 1.0,
    ):
        """
        Args:
            names: loss names, a subset of ``SemSegLoss.NAMES``.
            weights: one multiplier per name.
            ignore_label: label of ignored pixels.
            dice_eps: smoothing of :func:`dice_loss`.
        """
        names, weights = list(names), [float(w) for w in weights]
        unknown = [n for n in names if n not in self.NAMES]
        if unknown or not names:
            raise ValueError(
                f"MODEL.SEG2.LOSS.NAMES: unknown or empty loss names {unknown or names}; "
                f"choose from {list(self.NAMES)}"
            )
        if len(names) != len(weights):
            raise ValueError(
                f"MODEL.SEG2.LOSS.WEIGHTS has {len(weights)} entries but "
                f"MODEL.SEG2.LOSS.NAMES has {len(names)}: {names}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"MODEL.SEG2.LOSS.NAMES: duplicate names in {names}")
        self.names = names
        self.weights = weights
        self.ignore_label = ignore_label
        self.dice_eps = dice_eps

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        loss = cfg.MODEL.SEG2.LOSS
        return {
            "names": loss.NAMES,
            "weights": loss.WEIGHTS,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "dice_eps": loss.DICE_EPS,
        }

    def __call__(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        weights: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: (N, K, H, W) at the targets' resolution.
            targets: (N, H, W) int64 labels, ``ignore_label`` = ignored.
            weights: optional (N, H, W) per-pixel weights, used by ``weighted_ce`` only.

        Returns:
            dict ``loss_sem_seg_<name>`` -> weighted scalar.
        """
        losses = {}
        for name, w in zip(self.names, self.weights):
            if name == "ce":
                value = pixel_cross_entropy(logits, targets, self.ignore_label)
            elif name == "weighted_ce":
                if weights is None:
                    raise ValueError(
                        "loss 'weighted_ce' needs per-pixel weights: set INPUT.SEG2.WEIGHT_MAP "
                        "True (the dataset mapper builds U-Net's weight map from the panoptic "
                        "PNG's instances)"
                    )
                value = pixel_cross_entropy(logits, targets, self.ignore_label, weights)
            else:
                value = dice_loss(logits, targets, self.ignore_label, self.dice_eps)
            losses[f"loss_sem_seg_{name}"] = value * w
        return losses
