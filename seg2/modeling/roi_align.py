"""ROIAlign with a fast, deterministic CPU backward.

torchvision's CPU ``roi_align`` backward is a plain loop in one thread that adds every
bilinear sample into the input gradient one by one; in a CPU Mask R-CNN training step it is
a sizeable share of the time. Here the forward stays torchvision's, bit for bit; only the
CPU backward changes: the same gradient, summed in a different order.

Why it can be fast: a ROIAlign bin averages bilinear samples on a grid whose rows and
columns are independent, and the out-of-map test is one test on ``y`` and one on ``x``. So
the weight of input pixel ``(y, x)`` in bin ``(p, q)`` of ROI ``r`` factorises as
``Ay[r, p, y] * Ax[r, q, x]``, and the gradient of ROI ``r`` is ``Ay[r]^T @ g[r] @ Ax[r]``
per channel. Two ways to sum it, chosen per call by a cost estimate: small windows around
each ROI added into the map by index (large maps, small ROIs), or whole-map matmuls over
blocks of a few ROIs (small maps, where every window covers most of the map).

Deterministic: every input-gradient element is summed in an order fixed by the ROIs alone,
whatever the number of threads or the machine's load. Matmuls only contract over one ROI's
bins or one block's (too short for the BLAS to split between threads), and the sum over ROIs
or blocks is ``index_add_``, which adds in index order on CPU (``index_put_`` with
``accumulate=True`` does not). So a training run repeats bit for bit at a given thread
count without any process-wide BLAS setting. On CUDA torchvision's kernel is used unchanged.
"""
from typing import Tuple

import torch
from detectron2.layers import ROIAlign
from torch import nn
from torchvision.ops import roi_align as tv_roi_align

__all__ = ["roi_align", "Seg2ROIAlign", "use_fast_roi_align", "separable_weights"]

# Elements of the backward's intermediates per chunk of ROIs (windows x channels, or the dense
# path's channels x ROIs x bins x width): bounds its memory (16M floats = 64 MiB).
_CHUNK_ELEMENTS = 1 << 24


def _axis_samples(start, size, bins: int, sampling_ratio: int, aligned: bool, length: int):
    """Per ROI, the sample positions along one axis as torchvision computes them, and the
    bilinear (low index, high index, low weight, high weight) of each.

    start, size: (R,) ROI start and extent in feature-map units (input dtype).
    Returns low, high (R, bins, G) int64; w_low, w_high (R, bins, G) input dtype, zero for the
    padding samples beyond each ROI's own grid and for out-of-map samples; keep (R, bins, G),
    the samples that count; grid (R,) int64.
    """
    if not aligned:
        size = size.clamp(min=1.0)
    bin_size = size / bins
    if sampling_ratio > 0:
        grid = torch.full_like(size, sampling_ratio, dtype=torch.int64)
    else:
        grid = torch.ceil(size / bins).clamp(min=0).to(torch.int64)
    g_max = max(int(grid.max()) if grid.numel() else 0, 1)
    bin_idx = torch.arange(bins, dtype=size.dtype, device=size.device)
    sample_idx = torch.arange(g_max, device=size.device)
    # Same expression and evaluation order as torchvision's kernel:
    # start + p * bin_size + (i + .5) * bin_size / grid
    pos = (start[:, None, None] + bin_idx[None, :, None] * bin_size[:, None, None]) + (
        (sample_idx.to(size.dtype) + 0.5)[None, None, :] * bin_size[:, None, None]
    ) / grid.clamp(min=1).to(size.dtype)[:, None, None]
    used = sample_idx[None, None, :] < grid[:, None, None]
    inside = (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.to(torch.int64)  # truncation, as the kernel's (int) cast on pos >= 0
    at_edge = low >= length - 1
    low = torch.where(at_edge, torch.full_like(low, length - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    keep = used & inside
    weight = keep.to(pos.dtype)
    return low, high, (1.0 - frac) * weight, frac * weight, keep, grid


def separable_weights(rois, bins: Tuple[int, int], spatial_scale: float, sampling_ratio: int,
                      aligned: bool, height: int, width: int):
    """Windowed separable weights of torchvision's ROIAlign.

    Returns ``(ay, y0, ax, x0, count)``: ``ay`` (R, PH, KH) is the weight of map row
    ``y0[r] + k`` in bin row ``p`` (summed over the samples and their bilinear corners),
    ``ax`` (R, PW, KW) the same for columns, ``count`` (R,) the samples per bin that
    torchvision divides by. ``output[r, c, p, q] = sum_yx ay[r,p,y] ax[r,q,x] in[c,y,x] / count``.
    """
    offset = 0.5 if aligned else 0.0
    boxes = rois[:, 1:] * spatial_scale - offset
    ph, pw = bins
    *y_samples, gh = _axis_samples(
        boxes[:, 1], boxes[:, 3] - boxes[:, 1], ph, sampling_ratio, aligned, height
    )
    *x_samples, gw = _axis_samples(
        boxes[:, 0], boxes[:, 2] - boxes[:, 0], pw, sampling_ratio, aligned, width
    )
    count = (gh * gw).clamp(min=1).to(rois.dtype)
    ay, y0 = _window(*y_samples)
    ax, x0 = _window(*x_samples)
    return ay, y0, ax, x0, count


def _window(low, high, w_low, w_high, keep):
    """Sum the samples of each bin into a dense window of the axis starting at the ROI's
    first touched index: (R, bins, K) weights and (R,) window starts. Samples that do not
    count (zero weight) are put at the start so that they do not widen the window."""
    r, bins, g = low.shape
    big = torch.iinfo(torch.int64).max
    start = torch.where(keep, low, big).view(r, -1).min(dim=1).values
    start = torch.where(start == big, 0, start)
    low = torch.where(keep, low, start[:, None, None])
    high = torch.where(keep, high, start[:, None, None])
    span = int((high.view(r, -1).max(dim=1).values - start).max()) + 1 if r else 1
    weights = low.new_zeros((r, bins, span), dtype=w_low.dtype)
    weights.scatter_add_(2, low - start[:, None, None], w_low)
    weights.scatter_add_(2, high - start[:, None, None], w_high)
    return weights, start


def _separable_backward(grad_output, rois, input_shape, spatial_scale, sampling_ratio, aligned):
    n, c, h, w = input_shape
    r, _, ph, pw = grad_output.shape
    if r == 0:
        return grad_output.new_zeros(input_shape)
    ay, y0, ax, x0, count = separable_weights(
        rois, (ph, pw), spatial_scale, sampling_ratio, aligned, h, w
    )
    ax = ax / count[:, None, None]
    batch = rois[:, 0].to(torch.int64)
    kh, kw = ay.shape[2], ax.shape[2]
    # Windows that cover much of the map (small maps, e.g. every ROI of a 128 px image lands
    # on p2/p3) are cheaper as whole-map matmuls than as windows accumulated by index.
    if ph * h * w <= (ph + _INDEX_COST) * kh * kw:
        return _dense_backward(grad_output, batch, _to_full(ay, y0, h), _to_full(ax, x0, w), n)
    return _window_backward(grad_output, batch, ay, y0, ax, x0, (n, c, h, w))


# Cost of accumulating one window element by index, in multiply-adds of a batched matmul
# (measured on CPU, 1 thread: dense wins on small maps up to about this ratio).
_INDEX_COST = 16


def _to_full(weights, start, length):
    """(R, bins, K) window weights starting at ``start`` -> (R, bins, length) over the axis."""
    r, bins, k = weights.shape
    index = (start[:, None] + torch.arange(k, device=start.device)).clamp(max=length - 1)
    full = weights.new_zeros((r, bins, length))
    # Window cells past the edge carry zero weight; clamping them onto the last index adds 0.
    return full.scatter_add_(2, index[:, None, :].expand(r, bins, k), weights)


def _dense_backward(grad_output, batch, ay, ax, n):
    """Per image  sum_r Ay_r^T @ g_r @ Ax_r  over whole-map weights, in blocks of ROIs.

    A single matmul over all of an image's ROIs would hand the sum over ROIs to the BLAS,
    which may split it between threads differently from call to call. Here each matmul
    contracts over one block of :data:`_BLOCK_BINS` bin rows (a few ROIs, too short to split),
    and the blocks are added into the image by ``index_add_``, in block order.
    """
    r, c, ph, pw = grad_output.shape
    h, w = ay.shape[2], ax.shape[2]
    per_block = max(1, _BLOCK_BINS // ph)
    # Each image's ROIs in consecutive slots, padded to whole blocks with zero ROIs.
    order = torch.argsort(batch, stable=True)
    per_image = torch.bincount(batch, minlength=n)
    blocks = (per_image + per_block - 1) // per_block
    first_slot = (torch.cumsum(blocks, 0) - blocks) * per_block
    first_roi = torch.cumsum(per_image, 0) - per_image
    sorted_batch = batch[order]
    slot = first_slot[sorted_batch] + torch.arange(r, device=batch.device) - first_roi[sorted_batch]
    num_blocks = int(blocks.sum())
    block_image = torch.repeat_interleave(torch.arange(n, device=batch.device), blocks)
    # (C, H, W) partial sums per chunk of blocks: bounds the intermediates' memory.
    step = max(1, _CHUNK_ELEMENTS // (c * h * w + per_block * c * ph * w))
    grad_input = grad_output.new_zeros((n, h, c, w))
    for b0 in range(0, num_blocks, step):
        nb = min(step, num_blocks - b0)
        lo, hi = b0 * per_block, (b0 + nb) * per_block
        sel = (slot >= lo) & (slot < hi)
        idx, pos = order[sel], slot[sel] - lo
        g = grad_output.new_zeros((nb * per_block, ph, c, pw))
        g[pos] = grad_output[idx].transpose(1, 2)
        a_x = ax.new_zeros((nb * per_block, pw, w))
        a_x[pos] = ax[idx]
        a_y = ay.new_zeros((nb * per_block, ph, h))
        a_y[pos] = ay[idx]
        # (PH*C, PW) @ (PW, W) per ROI, then (H, B*PH) @ (B*PH, C*W) per block of B ROIs.
        t = torch.bmm(g.view(-1, ph * c, pw), a_x).view(nb, per_block * ph, c * w)
        a_y = a_y.view(nb, per_block * ph, h).transpose(1, 2)
        partial = torch.bmm(a_y, t).view(nb, h, c, w)
        grad_input.index_add_(0, block_image[b0 : b0 + nb], partial)
    return grad_input.permute(0, 2, 1, 3).contiguous()


# Bin rows contracted by one matmul of the dense path (a block of ROIs: 9 at 7x7, 4 at 14x14).
_BLOCK_BINS = 64


def _window_backward(grad_output, batch, ay, y0, ax, x0, input_shape):
    """Per ROI  Ay^T @ g @ Ax  over its window, added into the map by ``index_add_`` in ROI
    order."""
    n, c, h, w = input_shape
    r, _, ph, pw = grad_output.shape
    kh, kw = ay.shape[2], ax.shape[2]
    # Channels-last storage: each map pixel's C channels are one row to accumulate into.
    grad_input = grad_output.new_zeros((n, h, w, c)).permute(0, 3, 1, 2)
    target = grad_input.permute(0, 2, 3, 1).view(n * h * w, c)
    ay_t = ay.transpose(1, 2)
    rows = (y0[:, None] + torch.arange(kh, device=y0.device)).clamp(max=h - 1)
    cols = (x0[:, None] + torch.arange(kw, device=x0.device)).clamp(max=w - 1)
    step = max(1, _CHUNK_ELEMENTS // max(kh * kw * c, ph * kw * c, 1))
    for s in range(0, r, step):
        sl = slice(s, s + step)
        m = batch[sl].shape[0]
        # (C*PH, PW) @ (PW, KW), then (KH, PH) @ (PH, KW*C).
        t = torch.bmm(grad_output[sl].reshape(m, c * ph, pw), ax[sl])
        t = t.view(m, c, ph, kw).permute(0, 2, 3, 1).reshape(m, ph, kw * c)
        win = torch.bmm(ay_t[sl], t).view(-1, c)
        # Windows past the map's edge carry zero weight; clamping their index adds zeros.
        index = (batch[sl, None, None] * h + rows[sl, :, None]) * w + cols[sl, None, :]
        target.index_add_(0, index.view(-1), win)
    return grad_input


class _ROIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.config = (input.shape, output_size, spatial_scale, sampling_ratio, aligned)
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        shape, output_size, spatial_scale, sampling_ratio, aligned = ctx.config
        grad = _separable_backward(
            grad_output, rois, shape, spatial_scale, sampling_ratio, aligned
        )
        return grad, None, None, None, None, None


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """``torchvision.ops.roi_align`` with rois as an (R, 5) tensor; for float32/64 CPU inputs
    that need gradients the separable backward above, otherwise torchvision's own op."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    output_size = tuple(output_size)
    if (
        input.is_cuda
        or input.dtype not in (torch.float32, torch.float64)
        or not (input.requires_grad and torch.is_grad_enabled())
    ):
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return _ROIAlignFunction.apply(
        input, rois, output_size, float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


class Seg2ROIAlign(ROIAlign):
    """Detectron2's ``ROIAlign`` (same arguments and output) with the fast CPU backward."""

    def forward(self, input, rois):
        assert rois.dim() == 2 and rois.size(1) == 5
        if input.is_quantized:
            input = input.dequantize()
        return roi_align(
            input, rois.to(dtype=input.dtype), self.output_size, self.spatial_scale,
            self.sampling_ratio, self.aligned,
        )


def use_fast_roi_align(model: nn.Module) -> int:
    """Swap every Detectron2 ``ROIAlign`` in ``model`` (the ROI heads' poolers) for
    :class:`Seg2ROIAlign`, in place; returns how many were swapped. No parameters change,
    so checkpoints load either way."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is ROIAlign:
                setattr(parent, name, Seg2ROIAlign(
                    child.output_size, child.spatial_scale, child.sampling_ratio, child.aligned
                ))
                swapped += 1
    return swapped
