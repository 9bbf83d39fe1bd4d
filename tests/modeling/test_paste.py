"""seg2's batched mask pasting gives Detectron2's ``paste_masks_in_image`` output exactly."""
import pytest
import torch
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.structures import Boxes

from seg2.modeling.paste import paste_masks


@pytest.mark.parametrize("threshold", [0.5, 0.3, -1])
@pytest.mark.parametrize("size", [(128, 128), (97, 150), (256, 256)])
def test_identical_to_detectron2(threshold, size):
    gen = torch.Generator().manual_seed(int(threshold * 10) + size[1])
    h, w = size
    n = 60
    masks = torch.rand(n, 28, 28, generator=gen)
    masks[:5] = 1.0  # saturated masks: the largest values next to the box edges
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) - 5
    wh = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.8 + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)  # as detector_postprocess clips them
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    boxes[5] = torch.tensor([3.0, 4.0, 3.0, 9.0])  # zero width
    expected = paste_masks_in_image(masks, Boxes(boxes), (h, w), threshold=threshold)
    out = paste_masks(masks, Boxes(boxes), (h, w), threshold=threshold)
    assert out.dtype == expected.dtype
    assert torch.equal(out, expected)


def test_no_masks_as_detectron2():
    args = (torch.zeros(0, 28, 28), Boxes(torch.zeros(0, 4)), (64, 64))
    out, expected = paste_masks(*args), paste_masks_in_image(*args)
    assert out.shape == expected.shape == (0, 64, 64) and out.dtype == expected.dtype
