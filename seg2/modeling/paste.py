"""Pasting ROI masks into the image, batched on small CPU images.

Detectron2's ``paste_masks_in_image`` pastes one mask at a time on CPU (each over its box
only, which is right for large images), about 20 small tensor ops per detection: with 50
detections on a 128 px image that loop cost more than the mask head. Below
:data:`BATCHED_MAX_PIXELS` seg2 samples every mask over the whole image in one
``grid_sample``, with Detectron2's sampling grid, and zeroes what lies outside each box's
region as Detectron2 pastes it (the box plus one pixel), so the output is identical
(tests check it against Detectron2's function); larger images and CUDA use Detectron2's.
"""
import torch
import torch.nn.functional as F
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.structures import Boxes

__all__ = ["paste_masks", "BATCHED_MAX_PIXELS"]

# Image size (pixels) up to which whole-image batched pasting beats the per-box loop on CPU.
BATCHED_MAX_PIXELS = 1 << 16
# Pixels sampled per grid_sample call (bounds memory: ~12 bytes each for grid and output).
_CHUNK_PIXELS = 1 << 22


def paste_masks(masks: torch.Tensor, boxes: Boxes, image_shape, threshold: float = 0.5):
    """``detectron2.layers.paste_masks_in_image`` (same arguments and output).

    Args:
        masks: (N, M, M) mask probabilities in box coordinates.
        boxes: N boxes in image coordinates.
        image_shape: (height, width) of the output.
        threshold: >= 0 gives bool masks (``>= threshold``); negative gives uint8 0-255.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    if masks.is_cuda or h * w > BATCHED_MAX_PIXELS or len(masks) == 0:
        return paste_masks_in_image(masks, boxes, (h, w), threshold=threshold)
    box = boxes.tensor if isinstance(boxes, Boxes) else boxes
    dtype = torch.bool if threshold >= 0 else torch.uint8
    out = torch.empty((len(masks), h, w), dtype=dtype, device=masks.device)
    step = max(1, _CHUNK_PIXELS // (h * w))
    for s in range(0, len(masks), step):
        pasted, region = _paste_whole_image(masks[s : s + step], box[s : s + step], h, w)
        if threshold >= 0:
            out[s : s + step] = (pasted >= threshold) & region
        else:
            out[s : s + step] = (pasted * 255).to(torch.uint8) * region
    return out


def _paste_whole_image(masks, boxes, h: int, w: int):
    """Bilinear samples of each mask at every pixel centre of an (h, w) image, (N, h, w),
    and the region Detectron2's CPU paste writes: pixels from floor(x0) - 1 to ceil(x1) + 1
    (exclusive), clipped to the image, and the same for y."""
    n = masks.shape[0]
    x0, y0, x1, y1 = torch.split(boxes.to(torch.float32), 1, dim=1)
    rows = torch.arange(0, h, device=masks.device)
    cols = torch.arange(0, w, device=masks.device)
    in_y = (rows >= (y0.floor() - 1).clamp(min=0)) & (rows < (y1.ceil() + 1).clamp(max=h))
    in_x = (cols >= (x0.floor() - 1).clamp(min=0)) & (cols < (x1.ceil() + 1).clamp(max=w))
    region = in_y[:, :, None] & in_x[:, None, :]
    img_y = rows.to(torch.float32) + 0.5
    img_x = cols.to(torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1  # (N, h)
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1  # (N, w)
    grid = torch.stack(
        [img_x[:, None, :].expand(n, h, w), img_y[:, :, None].expand(n, h, w)], dim=3
    )
    if not masks.dtype.is_floating_point:
        masks = masks.float()
    pasted = F.grid_sample(masks[:, None], grid.to(masks.dtype), align_corners=False)[:, 0]
    return pasted, region
