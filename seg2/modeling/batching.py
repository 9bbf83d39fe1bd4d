"""Batching of per-image semantic targets, shared by seg2's meta-architectures."""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.structures import ImageList
from torch import nn

__all__ = ["takes_pixel_weights", "batch_sem_seg_targets"]


def takes_pixel_weights(head: nn.Module) -> bool:
    """Whether a head declares (class attribute ``takes_pixel_weights``) that its forward
    takes ``weights=``: every seg2 head does; Detectron2's (e.g. ``SemSegFPNHead``) do not."""
    return bool(getattr(head, "takes_pixel_weights", False))


def batch_sem_seg_targets(
    batched_inputs: List[Dict],
    device: torch.device,
    size_divisibility: int,
    padding_constraints: Optional[Dict],
    ignore_value: int,
    with_weights: bool,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Pad ``sem_seg`` (with ``ignore_value``) and ``sem_seg_weights`` (with weight 0) to one
    (N, H, W) tensor each, exactly as the images were padded.

    Returns:
        (targets or None when the inputs carry no ``sem_seg``, weights or None when not
        asked for or absent).

    Raises:
        ValueError: naming the image whose weight map and labels differ in size.
    """
    if "sem_seg" not in batched_inputs[0]:
        return None, None
    targets = [x["sem_seg"].to(device) for x in batched_inputs]
    targets = ImageList.from_tensors(
        targets, size_divisibility, ignore_value, padding_constraints
    ).tensor
    if not (with_weights and "sem_seg_weights" in batched_inputs[0]):
        return targets, None
    weights = [x["sem_seg_weights"].to(device) for x in batched_inputs]
    for w, x in zip(weights, batched_inputs):
        if w.shape != x["sem_seg"].shape:
            raise ValueError(
                f"{x.get('file_name', 'input')}: 'sem_seg_weights' shape {tuple(w.shape)} "
                f"!= 'sem_seg' shape {tuple(x['sem_seg'].shape)}"
            )
    weights = ImageList.from_tensors(weights, size_divisibility, 0.0, padding_constraints).tensor
    return targets, weights
