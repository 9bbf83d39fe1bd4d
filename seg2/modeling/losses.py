"""Semantic segmentation losses: per-pixel cross-entropy (optionally weighted by U-Net's
weight map), soft Dice, and :class:`SemSegLoss`, their weighted sum chosen in the config.

Targets are (N, H, W) int64 labels over all classes (contiguous 0..K-1), with
``ignore_label`` (255) for pixels that take no part in any loss.
"""

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from scipy import ndimage
from torch.nn import functional as F

__all__ = [
    "pixel_cross_entropy",
    "dice_loss",
    "unet_weight_map",
    "unet_weight_map_from_semantic",
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
        weight_map: optional (N, H, W) per-pixel weights (e.g. :func:`unet_weight_map`).

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


def unet_weight_map(
    instance_ids: np.ndarray,
    semantic: np.ndarray,
    num_classes: int,
    ignore_label: int = 255,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> np.ndarray:
    """
    U-Net's per-pixel loss weights (Ronneberger et al. 2015, eq. 2):
    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``.

    * Class balance ``w_c``: with ``n`` non-ignored pixels, ``n_c`` of them of class ``c``
      and ``C`` classes present, ``w_c = n / (C * n_c)`` -- inverse frequency normalised so
      that the mean of ``w_c`` over the non-ignored pixels is 1 and each present class
      carries the same total weight ``n / C``.
    * Border term: ``d1``/``d2`` are the Euclidean distances (pixel centres,
      ``scipy.ndimage.distance_transform_edt``) to the nearest pixel of the nearest and
      second-nearest instance, so a pixel adjacent to an instance has distance 1. As in
      the paper (which separates touching cells by thin background lines), the term is
      added only to non-ignored pixels outside every instance (``instance_ids == 0``), and
      only when the image has at least two instances (``d2`` is undefined otherwise).
    * Ignored pixels (``semantic == ignore_label``) get weight 0.

    Args:
        instance_ids: (H, W) int, 0 = no object, k > 0 = instance k.
        semantic: (H, W) int labels in [0, num_classes) or ``ignore_label``.
        num_classes: number of semantic classes.
        ignore_label: label of ignored pixels.
        w0: border term amplitude.
        sigma: border term width in pixels.

    Returns:
        (H, W) float32 weights.
    """
    instance_ids = np.asarray(instance_ids)
    semantic = np.asarray(semantic)
    if instance_ids.ndim != 2 or instance_ids.shape != semantic.shape:
        raise ValueError(
            f"unet_weight_map: instance_ids {instance_ids.shape} and semantic "
            f"{semantic.shape} must be (H, W) arrays of the same shape"
        )
    valid = semantic != ignore_label
    labels = semantic[valid].astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"unet_weight_map: semantic labels must lie in [0, {num_classes}) or be "
            f"{ignore_label}; found {sorted(set(np.unique(labels).tolist()))}"
        )
    weights = np.zeros(semantic.shape, dtype=np.float64)
    if labels.size == 0:
        return weights.astype(np.float32)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    class_w = np.zeros(num_classes, dtype=np.float64)
    class_w[present] = labels.size / (present.sum() * counts[present])
    weights[valid] = class_w[labels]

    ids = np.unique(instance_ids[instance_ids > 0])
    if len(ids) >= 2:
        dists = np.stack([ndimage.distance_transform_edt(instance_ids != k) for k in ids])
        d1, d2 = np.partition(dists, 1, axis=0)[:2]
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
        outside = valid & (instance_ids == 0)
        weights[outside] += border[outside]
    return weights.astype(np.float32)


def unet_weight_map_from_semantic(
    semantic: np.ndarray,
    num_classes: int,
    object_classes: Sequence[int],
    ignore_label: int = 255,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> np.ndarray:
    """
    :func:`unet_weight_map` without instance masks: the instances are the 4-connected
    components of each class in ``object_classes``. Objects of one class that touch merge
    into one component, so this under-weights exactly the gaps the border term is meant for;
    prefer instance masks from the dataset mapper (``INPUT.SEG2.WEIGHT_MAP``).

    Args:
        semantic: (H, W) int labels.
        object_classes: semantic ids whose connected components count as instances.
        others: as in :func:`unet_weight_map`.

    Returns:
        (H, W) float32 weights.
    """
    semantic = np.asarray(semantic)
    instance_ids = np.zeros(semantic.shape, dtype=np.int32)
    next_id = 1
    for c in object_classes:
        comps, n = ndimage.label(semantic == c)
        instance_ids[comps > 0] = comps[comps > 0] + next_id - 1
        next_id += n
    return unet_weight_map(instance_ids, semantic, num_classes, ignore_label, w0, sigma)


class SemSegLoss:
    """
    Weighted sum of named semantic losses, ``MODEL.SEG2.LOSS.NAMES``/``WEIGHTS``:

    * ``ce``: :func:`pixel_cross_entropy` without weights.
    * ``weighted_ce``: :func:`pixel_cross_entropy` with U-Net's weight map, taken from the
      ``weights`` argument (the mapper's ``sem_seg_weights``) or, if None, computed on the
      fly by :func:`unet_weight_map_from_semantic` with ``MODEL.SEG2.LOSS.UNET_OBJECT_CLASSES``.
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
        unet_w0: float = 10.0,
        unet_sigma: float = 5.0,
        unet_object_classes: Sequence[int] = (),
    ):
        """
        Args:
            names: loss names, a subset of ``SemSegLoss.NAMES``.
            weights: one multiplier per name.
            ignore_label: label of ignored pixels.
            dice_eps: smoothing of :func:`dice_loss`.
            unet_w0, unet_sigma: border term of the on-the-fly weight map.
            unet_object_classes: classes whose connected components are the instances of
                the on-the-fly weight map; empty = ``weighted_ce`` requires ``weights``.
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
        self.unet_w0 = unet_w0
        self.unet_sigma = unet_sigma
        self.unet_object_classes = list(unet_object_classes)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        loss = cfg.MODEL.SEG2.LOSS
        return {
            "names": loss.NAMES,
            "weights": loss.WEIGHTS,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "dice_eps": loss.DICE_EPS,
            "unet_w0": loss.UNET_W0,
            "unet_sigma": loss.UNET_SIGMA,
            "unet_object_classes": loss.UNET_OBJECT_CLASSES,
        }

    def weight_map(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """On-the-fly U-Net weights for a batch: (N, H, W) float on the targets' device."""
        if not self.unet_object_classes:
            raise ValueError(
                "loss 'weighted_ce' needs per-pixel weights: set INPUT.SEG2.WEIGHT_MAP True "
                "(the mapper computes them from instance masks) or list the object classes "
                "in MODEL.SEG2.LOSS.UNET_OBJECT_CLASSES to compute them from the targets"
            )
        maps = [
            unet_weight_map_from_semantic(
                t,
                logits.shape[1],
                self.unet_object_classes,
                self.ignore_label,
                self.unet_w0,
                self.unet_sigma,
            )
            for t in targets.detach().cpu().numpy()
        ]
        return torch.as_tensor(np.stack(maps), device=targets.device)

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
                wmap = weights if weights is not None else self.weight_map(logits, targets)
                value = pixel_cross_entropy(logits, targets, self.ignore_label, wmap)
            else:
                value = dice_loss(logits, targets, self.ignore_label, self.dice_eps)
            losses[f"loss_sem_seg_{name}"] = value * w
        return losses
