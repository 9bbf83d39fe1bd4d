"""FCN (Long, Shelhamer & Darrell 2015): score maps from several backbone levels fused
coarse-to-fine. FCN-32s/16s/8s are configs, not code: ``MODEL.SEG2.FCN.IN_FEATURES``
lists the fused levels, coarsest first (32s = [res5], 16s = [res5, res4],
8s = [res5, res4, res3]; FPN names p6..p2 work the same way)."""

from typing import Dict

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..upsample import build_upsample
from .base import BaseSemSegHead, crop_or_pad

__all__ = ["FCNSemSegHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class FCNSemSegHead(BaseSemSegHead):
    """
    ``score_0 = predictor(f_0)`` on the coarsest level, then for each finer level i:
    ``score_i = crop(up_i(score_{i-1})) + skip_score_i(f_i)``, where ``up_i`` is the
    configured upsampling op (``MODEL.SEG2.UPSAMPLE.NAME``) at the ratio of the two
    strides and ``crop`` cuts the bottom/right excess of odd sizes. The fused score map,
    at the finest level's stride, is interpolated to the input by the base class -- the
    paper's final upsampling is likewise fixed bilinear.

    As in the paper every score convolution starts at zero (the paper found random
    initialisation neither better nor faster), so a 16s/8s model also starts out as its
    coarser parent.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        upsample_ops: nn.ModuleList,
        **kwargs,
    ):
        """
        Args:
            input_shape: fused levels, coarsest first, each stride an integer multiple of
                the next one's.
            upsample_ops: one op per finer level, built for ``num_classes`` channels at the
                ratio of consecutive strides.
            kwargs: arguments of :class:`BaseSemSegHead` (``common_stride`` and
                ``predictor_in_channels`` are derived here).
        """
        shapes = list(input_shape.values())
        super().__init__(
            input_shape,
            predictor_in_channels=shapes[0].channels,
            common_stride=shapes[-1].stride,
            **kwargs,
        )
        if len(upsample_ops) != len(shapes) - 1:
            raise ValueError(
                f"FCNSemSegHead: {len(shapes)} levels need {len(shapes) - 1} upsample ops, "
                f"got {len(upsample_ops)}"
            )
        self.upsample_ops = upsample_ops
        self.skip_scores = nn.ModuleList(
            Conv2d(shape.channels, self.num_classes, kernel_size=1) for shape in shapes[1:]
        )
        for conv in [self.predictor, *self.skip_scores]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> Dict:
        key = "MODEL.SEG2.FCN.IN_FEATURES"
        shapes = cls.select_features(input_shape, cfg.MODEL.SEG2.FCN.IN_FEATURES, key)
        strides = [s.stride for s in shapes.values()]
        ratios = [a // b for a, b in zip(strides[:-1], strides[1:])]
        if any(a % b or a <= b for a, b in zip(strides[:-1], strides[1:])):
            raise ValueError(
                f"{key}: levels must go coarsest first with each stride a multiple of the "
                f"next; got strides {dict(zip(shapes, strides))}"
            )
        ret = super().from_config(cfg, input_shape)
        ops = [build_upsample(cfg, ret["num_classes"], r) for r in ratios]
        if any(op.needs_indices for op in ops):
            raise ValueError(
                f"MODEL.SEG2.UPSAMPLE.NAME {cfg.MODEL.SEG2.UPSAMPLE.NAME!r} needs max-pooling "
                "switches, which backbone features do not carry; use DeconvNetSemSegHead"
            )
        ret.update({"input_shape": shapes, "upsample_ops": nn.ModuleList(ops)})
        return ret

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.predictor(features[self.in_features[0]])
        for name, up, score in zip(self.in_features[1:], self.upsample_ops, self.skip_scores):
            skip = score(features[name])
            x = crop_or_pad(up(x), skip.shape[-2:]) + skip
        return x
