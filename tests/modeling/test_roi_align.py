"""seg2's ROIAlign: the forward is torchvision's, and the separable CPU backward gives
torchvision's own gradient (the reference: autograd through ``torchvision.ops.roi_align``)."""
import pytest
import torch
from detectron2.layers import ROIAlign
from detectron2.modeling import build_model
from torchvision.ops import roi_align as tv_roi_align

import seg2.modeling.roi_align as roi_align_module
from seg2.modeling.roi_align import Seg2ROIAlign, roi_align, use_fast_roi_align
from seg2_testing import get_seg2_cfg


def _random_rois(gen, num, batch, height, width, scale):
    x1 = torch.rand(num, generator=gen) * width / scale * 1.3 - 4
    y1 = torch.rand(num, generator=gen) * height / scale * 1.3 - 4
    w = torch.rand(num, generator=gen) * width / scale * 0.7
    h = torch.rand(num, generator=gen) * height / scale * 0.7
    b = torch.randint(0, batch, (num,), generator=gen).float()
    rois = torch.stack([b, x1, y1, x1 + w, y1 + h], 1)
    rois[0, 3] = rois[0, 1] - 1.0  # a degenerate box (negative width)
    rois[1, 1:] = torch.tensor([-50.0, -50.0, -40.0, -40.0])  # entirely off the map
    return rois


def _grads(fn, x, rois, grad_out, *args):
    x = x.clone().requires_grad_(True)
    out = fn(x, rois, *args)
    (g,) = torch.autograd.grad(out, x, grad_out)
    return out, g


@pytest.mark.parametrize("path", ["window", "dense"])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_gradient_equals_torchvision(aligned, sampling_ratio, path, monkeypatch):
    # Both ways of accumulating (per-ROI windows by index, whole-map matmuls per image).
    monkeypatch.setattr(roi_align_module, "_INDEX_COST", -1e9 if path == "window" else 1e9)
    # Small chunks, so that both paths also split their ROIs.
    monkeypatch.setattr(roi_align_module, "_CHUNK_ELEMENTS", 4096)
    gen = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    for trial in range(12):
        n, c, h, w = 2, 3 + trial % 3, 7 + trial, 11 + (trial * 3) % 7
        scale = [1.0, 0.5, 0.25][trial % 3]
        size = (7, 5) if trial % 2 else (14, 14)
        rois = _random_rois(gen, 15 + trial, n, h, w, scale)
        x = torch.randn(n, c, h, w, generator=gen)
        g = torch.randn(rois.shape[0], c, *size, generator=gen)
        args = (size, scale, sampling_ratio, aligned)
        ref_out, ref_grad = _grads(tv_roi_align, x, rois, g, *args)
        out, grad = _grads(roi_align, x, rois, g, *args)
        assert torch.equal(out, ref_out)  # the forward is torchvision's
        # Same terms summed in another order: float32 rounding of sums of a few hundred
        # terms of magnitude <= ~5 (|g| ~ N(0, 1) times weights <= 1), well under 1e-5.
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["window", "dense"])
def test_gradient_bit_identical_at_1_and_2_threads(path, monkeypatch):
    """The summation order does not depend on how the work is split between threads: at
    the sizes of a real training step (8 images, 64 channels, a 32x32 map, hundreds of ROIs;
    large enough that torch splits its ops between threads) repeated backwards at 1 and 2
    threads give the same bits, and torchvision's gradient to float rounding."""
    monkeypatch.setattr(roi_align_module, "_INDEX_COST", -1e9 if path == "window" else 1e9)
    gen = torch.Generator().manual_seed(5)
    n, c, h, w = 8, 64, 32, 32
    x = torch.randn(n, c, h, w, generator=gen)
    cases = []
    for num, size in ((512, (7, 7)), (96, (14, 14))):
        rois = _random_rois(gen, num, n, h, w, 0.25)
        cases.append((rois, torch.randn(num, c, *size, generator=gen), (size, 0.25, 0, True)))
    threads = torch.get_num_threads()
    try:
        results = []
        for nt in (1, 2, 1, 2, 2):
            torch.set_num_threads(nt)
            results.append([_grads(roi_align, x, rois, g, *args)[1] for rois, g, args in cases])
    finally:
        torch.set_num_threads(threads)
    for grads in results[1:]:
        for grad, first in zip(grads, results[0]):
            assert torch.equal(grad, first)
    for (rois, g, args), grad in zip(cases, results[0]):
        _, ref_grad = _grads(tv_roi_align, x, rois, g, *args)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_hand_worked_bilinear_gradient():
    # One 1x1 bin, one sample (sampling_ratio 1) at the bin centre: a ROI from (0.75, 1) to
    # (1.75, 2) with aligned=False puts it at x = 1.25, y = 1.5 on a 4x4 map, so the
    # gradient 1 splits over the four neighbours as (1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly lx
    # with lx = 0.25, ly = 0.5.
    x = torch.zeros(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0.75, 1.0, 1.75, 2.0]])
    _, grad = _grads(roi_align, x, rois, torch.ones(1, 1, 1, 1), (1, 1), 1.0, 1, False)
    expected = torch.zeros(4, 4)
    expected[1, 1], expected[1, 2] = 0.5 * 0.75, 0.5 * 0.25
    expected[2, 1], expected[2, 2] = 0.5 * 0.75, 0.5 * 0.25
    torch.testing.assert_close(grad[0, 0], expected)


def test_no_rois_and_no_grad():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5), (2, 2), 1.0, 0, True)
    assert out.shape == (0, 2, 2, 2)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    with torch.no_grad():
        rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
        assert torch.equal(
            roi_align(x, rois, (2, 2), 1.0, 0, True), tv_roi_align(x, rois, (2, 2), 1.0, 0, True)
        )


def test_swapped_into_mask_rcnn_same_outputs_and_gradients():
    """In a real Mask R-CNN (the synthetic config) every pooler's ROIAlign is swapped; one
    training step gives the same losses and, to float rounding, the same gradients."""
    cfg = get_seg2_cfg("Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml")
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    ref = build_model(cfg)
    fast = build_model(cfg)
    fast.load_state_dict(ref.state_dict())
    assert use_fast_roi_align(fast) == 8  # box and mask poolers, 4 levels each
    assert not any(type(m) is ROIAlign for m in fast.modules())
    assert sum(isinstance(m, Seg2ROIAlign) for m in fast.modules()) == 8

    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    gen = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(2):
        inst = Instances((128, 128))
        boxes = torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 64.0, 120.0, 126.0]])
        masks = torch.zeros(2, 128, 128, dtype=torch.bool)
        masks[0, 12:50, 10:60] = True
        masks[1, 64:126, 70:120] = True
        inst.gt_boxes, inst.gt_classes = Boxes(boxes), torch.tensor([0, 2])
        inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 255, (3, 128, 128), generator=gen).float()
        batch.append({"image": image, "instances": inst, "height": 128, "width": 128})
    results = []
    for model in (ref, fast):
        model.train()
        torch.manual_seed(2)  # the same proposal sampling in both
        with EventStorage(0):
            losses = model(batch)
        total = sum(losses.values())
        model.zero_grad()
        total.backward()
        results.append((losses, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (ref_losses, ref_grads), (fast_losses, fast_grads) = results
    for k in ref_losses:
        assert torch.equal(ref_losses[k], fast_losses[k]), k
    for k, g in ref_grads.items():
        torch.testing.assert_close(fast_grads[k], g, rtol=1e-4, atol=1e-6, msg=k)
    assert ref_grads["backbone.bottom_up.stem.conv1.weight"].abs().sum() > 0
