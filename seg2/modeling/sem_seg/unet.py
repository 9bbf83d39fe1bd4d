"""U-Net decoder (Ronneberger et al. 2015) on any backbone's pyramid."""

from typing import Dict, List, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ..backbone.unet import backbone_mirror_pads_input
from ..upsample import build_upsample
from .base import BaseSemSegHead, crop_or_pad

__all__ = ["UNetSemSegHead", "center_crop"]


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centred ``size`` window of (N, C, H, W) ``x`` (U-Net's copy-and-crop); an odd
    excess leaves the extra pixel at the bottom/right."""
    top = (x.shape[-2] - size[0]) // 2
    left = (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def conv_norm_relu(c_in: int, c_out: int, k: int, padding: int, norm: str) -> Conv2d:
    """A ``k x k`` conv + norm + ReLU with MSRA init (no bias when normed)."""
    conv = Conv2d(
        c_in,
        c_out,
        kernel_size=k,
        padding=padding,
        bias=not norm,
        norm=get_norm(norm, c_out),
        activation=F.relu,
    )
    weight_init.c2_msra_fill(conv)
    return conv


@SEM_SEG_HEADS_REGISTRY.register()
class UNetSemSegHead(BaseSemSegHead):
    """
    Reads ``MODEL.SEG2.UNET.IN_FEATURES`` (coarsest first). The coarsest feature goes
    through a 1x1 conv to ``DECODER_CHANNELS[0]``; then at each finer level the decoder map
    is upsampled with the configured op (``MODEL.SEG2.UPSAMPLE.NAME``), concatenated with
    that level's encoder feature and passed through two 3x3 conv + norm + ReLU
    (``DECODER_CHANNELS[i]``), and a 1x1 predictor gives the logits at the finest stride.

    ``SKIP_MODE``:

    * ``"pad"``: padded convolutions; the upsampled map is cut to the skip's size
      (bottom/right, the excess of odd sizes).
    * ``"crop"``: valid convolutions and copy-and-crop (the skip is centre-cropped to the
      decoder map), as in the paper, so the logits are smaller than the area the features
      cover. With the classic encoder (``build_unet_backbone``) the backbone mirror-pads
      the image by exactly that loss (overlap-tile) and the logits start at the image's
      top-left pixel (``overlap_tile=True``). With other backbones the logits are
      replicate-padded back, centred, to the finest feature's size (their border pixels
      are extrapolated, not predicted); inputs too small for the valid convolutions raise.
    """

    supports_overlap_tile = True

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        decoder_channels: Sequence[int],
        upsample_ops: nn.ModuleList,
        skip_mode: str = "pad",
        norm: str = "",
        overlap_tile: bool = False,
        **kwargs,
    ):
        """
        Args:
            input_shape: the encoder levels read, coarsest first.
            decoder_channels: output channels of each decoder stage (same length).
            upsample_ops: one op per finer level, for ``decoder_channels[i - 1]`` channels
                at the ratio of consecutive strides.
            skip_mode: "pad" or "crop".
            norm: norm of the decoder convs (see :func:`detectron2.layers.get_norm`).
            overlap_tile: crop mode only: the backbone mirror-padded the image so the logits
                already start at its top-left pixel.
            kwargs: arguments of :class:`BaseSemSegHead`.
        """
        shapes = list(input_shape.values())
        decoder_channels = list(decoder_channels)
        if len(decoder_channels) != len(shapes):
            raise ValueError(
                f"MODEL.SEG2.UNET.DECODER_CHANNELS has {len(decoder_channels)} entries, "
                f"MODEL.SEG2.UNET.IN_FEATURES {len(shapes)}: they must match"
            )
        if skip_mode not in ("pad", "crop"):
            raise ValueError(
                f"MODEL.SEG2.UNET.SKIP_MODE must be 'pad' or 'crop', got {skip_mode!r}"
            )
        super().__init__(
            input_shape,
            predictor_in_channels=decoder_channels[-1],
            common_stride=shapes[-1].stride,
            **kwargs,
        )
        self.skip_mode = skip_mode
        self.overlap_tile = overlap_tile
        self.upsample_ops = upsample_ops
        pad = 1 if skip_mode == "pad" else 0
        self.lateral = conv_norm_relu(shapes[0].channels, decoder_channels[0], 1, 0, norm)
        self.blocks = nn.ModuleList()
        for i in range(1, len(shapes)):
            c_in = decoder_channels[i - 1] + shapes[i].channels
            c_out = decoder_channels[i]
            self.blocks.append(
                nn.Sequential(
                    conv_norm_relu(c_in, c_out, 3, pad, norm),
                    conv_norm_relu(c_out, c_out, 3, pad, norm),
                )
            )

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> Dict:
        unet = cfg.MODEL.SEG2.UNET
        key = "MODEL.SEG2.UNET.IN_FEATURES"
        shapes = cls.select_features(input_shape, unet.IN_FEATURES, key)
        strides = [s.stride for s in shapes.values()]
        if any(a % b or a <= b for a, b in zip(strides[:-1], strides[1:])):
            raise ValueError(
                f"{key}: levels must go coarsest first with each stride a multiple of the "
                f"next; got strides {dict(zip(shapes, strides))}"
            )
        channels = list(unet.DECODER_CHANNELS)
        ops = [
            build_upsample(cfg, channels[i], strides[i] // strides[i + 1])
            for i in range(min(len(channels), len(strides)) - 1)
        ]
        if any(op.needs_indices for op in ops):
            raise ValueError(
                f"MODEL.SEG2.UPSAMPLE.NAME {cfg.MODEL.SEG2.UPSAMPLE.NAME!r} needs max-pooling "
                "switches, which backbone features do not carry; use DeconvNetSemSegHead"
            )
        ret = super().from_config(cfg, input_shape)
        ret.update(
            {
                "input_shape": shapes,
                "decoder_channels": channels,
                "upsample_ops": nn.ModuleList(ops),
                "skip_mode": unet.SKIP_MODE,
                "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
                "overlap_tile": backbone_mirror_pads_input(cfg),
            }
        )
        return ret

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.lateral(features[self.in_features[0]])
        for name, up, block in zip(self.in_features[1:], self.upsample_ops, self.blocks):
            skip = features[name]
            x = up(x)
            if self.skip_mode == "pad":
                x = crop_or_pad(x, skip.shape[-2:])
            else:
                # The upsampled map exceeds the skip only by the ceil of odd sizes
                # (bottom/right); otherwise the skip is the larger one: centre-crop it.
                size = [min(a, b) for a, b in zip(x.shape[-2:], skip.shape[-2:])]
                if min(size) < 5:
                    raise ValueError(
                        f"UNetSemSegHead (SKIP_MODE crop): decoder map at {name} is "
                        f"{tuple(size)}, too small for two valid 3x3 convolutions; use a "
                        "larger input, SKIP_MODE 'pad', or the classic encoder "
                        "(build_unet_backbone, which mirror-pads the input)"
                    )
                x = x[..., : size[0], : size[1]]
                skip = center_crop(skip, size)
            x = block(torch.cat([x, skip], dim=1))
        x = self.predictor(x)
        if self.skip_mode == "crop" and not self.overlap_tile:
            x = self._pad_centred(x, features[self.in_features[-1]].shape[-2:])
        return x

    @staticmethod
    def _pad_centred(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        pads: List[int] = []
        for n, m in zip(reversed(x.shape[-2:]), reversed(list(size))):
            before = max(m - n, 0) // 2
            pads += [before, max(m - n, 0) - before]
        return F.pad(x, pads, mode="replicate")
