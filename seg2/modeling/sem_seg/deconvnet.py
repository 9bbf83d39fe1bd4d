"""DeconvNet (Noh, Hong & Han 2015): a mirrored encoder-decoder that unpools with the
encoder's own max-pooling switches."""

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..upsample import MaxPoolWithSwitches, build_upsample
from .base import BaseSemSegHead
from .unet import conv_norm_relu

__all__ = ["DeconvNetSemSegHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class DeconvNetSemSegHead(BaseSemSegHead):
    """
    Detectron2 backbones do not expose their max-pooling switches (ResNet has one pooling
    layer, in the stem, and FPN none), so the head brings its own pooling pyramid: on the
    feature ``MODEL.SEG2.DECONVNET.IN_FEATURE`` it runs an encoder of
    ``len(CHANNELS)`` stages (two 3x3 conv + norm + ReLU, then
    :class:`~seg2.modeling.upsample.MaxPoolWithSwitches`), and a mirrored decoder whose stage
    unpools with exactly the switches of its encoder twin (``max_unpool`` op, back to the
    pre-pooling size) and applies two 3x3 conv + norm + ReLU. ``CHANNELS`` lists stage widths
    coarsest first, like ``UNET.DECODER_CHANNELS``: the encoder widens along it reversed,
    the decoder narrows along it. The logits, at the input feature's stride, are
    interpolated to the input by the base class; on the classic encoder's ``res1``
    (stride 1) they are at input resolution directly.

    ``MODEL.SEG2.UPSAMPLE.NAME`` is not read: unpooling with switches is what defines the
    head. Pooled maps may reach 1x1; use GN or no norm there, since BatchNorm cannot train
    on a single value per channel.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        channels: Sequence[int],
        norm: str = "",
        **kwargs,
    ):
        """
        Args:
            input_shape: exactly one feature.
            channels: stage widths, coarsest (deepest) first.
            norm: norm of every conv (see :func:`detectron2.layers.get_norm`).
            kwargs: arguments of :class:`BaseSemSegHead`.
        """
        if len(input_shape) != 1:
            raise ValueError(f"DeconvNetSemSegHead reads one feature, got {list(input_shape)}")
        widths = list(reversed(list(channels)))  # shallowest stage first
        if not widths:
            raise ValueError("MODEL.SEG2.DECONVNET.CHANNELS cannot be empty")
        shape = next(iter(input_shape.values()))
        super().__init__(
            input_shape, predictor_in_channels=widths[0], common_stride=shape.stride, **kwargs
        )
        self.encoder = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.unpools = nn.ModuleList()
        self.decoder = nn.ModuleList()
        c_in = shape.channels
        for j, w in enumerate(widths):
            self.encoder.append(
                nn.Sequential(conv_norm_relu(c_in, w, 3, 1, norm), conv_norm_relu(w, w, 3, 1, norm))
            )
            self.pools.append(MaxPoolWithSwitches(2))
            self.unpools.append(build_upsample("max_unpool", w, 2))
            w_out = widths[j - 1] if j > 0 else widths[0]
            self.decoder.append(
                nn.Sequential(
                    conv_norm_relu(w, w, 3, 1, norm), conv_norm_relu(w, w_out, 3, 1, norm)
                )
            )
            c_in = w

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> Dict:
        shapes = cls.select_features(
            input_shape, [cfg.MODEL.SEG2.DECONVNET.IN_FEATURE], "MODEL.SEG2.DECONVNET.IN_FEATURE"
        )
        ret = super().from_config(cfg, input_shape)
        ret.update(
            {
                "input_shape": shapes,
                "channels": cfg.MODEL.SEG2.DECONVNET.CHANNELS,
                "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
            }
        )
        return ret

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_features[0]]
        switches: List[Tuple[torch.Tensor, Tuple[int, int]]] = []
        for stage, pool in zip(self.encoder, self.pools):
            x = stage(x)
            size = tuple(x.shape[-2:])
            x, indices = pool(x)
            switches.append((indices, size))
        for j in reversed(range(len(self.encoder))):
            indices, size = switches[j]
            x = self.decoder[j](self.unpools[j](x, output_size=size, indices=indices))
        return self.predictor(x)
