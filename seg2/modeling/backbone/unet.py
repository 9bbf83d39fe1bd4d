"""The classic U-Net encoder (Ronneberger et al. 2015) as a Detectron2 backbone."""

import re
from typing import Dict, List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torch.nn import functional as F

__all__ = [
    "UNetEncoder",
    "build_unet_backbone",
    "backbone_mirror_pads_input",
    "mirror_pad",
    "parse_unet_levels",
]


def mirror_pad(x: torch.Tensor, pads: Tuple[int, int, int, int]) -> torch.Tensor:
    """
    Reflect-pad ``(left, right, top, bottom)`` by any amount: torch's ``reflect`` needs a
    pad smaller than the size, so larger pads mirror the already mirrored image again.
    """
    pads = list(pads)
    while any(pads):
        h, w = x.shape[-2:]
        step = [min(pads[0], w - 1), min(pads[1], w - 1), min(pads[2], h - 1), min(pads[3], h - 1)]
        if not any(step):  # a 1-pixel dimension has nothing to mirror
            return F.pad(x, pads, mode="replicate")
        x = F.pad(x, step, mode="reflect")
        pads = [p - s for p, s in zip(pads, step)]
    return x


def parse_unet_levels(names: Sequence[str], depth: int, key: str) -> Tuple[int, int]:
    """
    The (deepest, finest) encoder levels a U-Net decoder reads, from feature names
    ``res<k>, res<k-1>, ..., res<f>`` (coarsest first, consecutive).
    """
    levels = []
    for n in names:
        m = re.fullmatch(r"res(\d+)", n)
        levels.append(int(m.group(1)) if m else None)
    ok = levels and None not in levels and all(1 <= lv <= depth for lv in levels)
    if not ok or any(a - b != 1 for a, b in zip(levels[:-1], levels[1:])):
        raise ValueError(
            f"{key}: the classic U-Net encoder in crop mode needs consecutive levels "
            f"res<k>..res<f> (coarsest first) within res1..res{depth}; got {list(names)}"
        )
    return levels[0], levels[-1]


class UNetEncoder(Backbone):
    """
    ``depth`` levels of two 3x3 conv + norm + ReLU, with a 2x2 max-pool between levels;
    level i (1-based) has ``base_channels * 2^(i-1)`` channels and stride ``2^(i-1)`` and is
    output as ``res<i>``.

    * ``mode="pad"``: same-size convolutions and ``ceil_mode`` pooling, so any size works;
      ``size_divisibility = 2^(depth-1)`` keeps every level an exact halving.
    * ``mode="crop"``: valid (unpadded) convolutions as in the paper, with its overlap-tile
      strategy: the input is mirror-padded by the margin the encoder *and* the U-Net decoder
      over levels ``decoder_levels = (k, f)`` eat,
      ``2 (2^k - 1) + 2 (2^(k-1) - 2^(f-1))`` per side (92 for the paper's k=5, f=1), plus
      bottom/right pixels up to the next tile size where every pooled map is even. The
      decoder's output then starts at the image's top-left pixel and covers it.
    """

    def __init__(
        self,
        in_channels: int = 3,
        *,
        base_channels: int = 64,
        depth: int = 5,
        norm: str = "BN",
        mode: str = "pad",
        decoder_levels: Optional[Tuple[int, int]] = None,
    ):
        """
        Args:
            in_channels: image channels.
            base_channels: channels of level 1.
            depth: number of levels.
            norm: see :func:`detectron2.layers.get_norm`; "" = none.
            mode: "pad" or "crop", see the class doc.
            decoder_levels: (deepest, finest) level the decoder reads; crop mode only,
                default (depth, 1).
        """
        super().__init__()
        if mode not in ("pad", "crop"):
            raise ValueError(f"MODEL.SEG2.UNET.SKIP_MODE must be 'pad' or 'crop', got {mode!r}")
        if depth < 1:
            raise ValueError(f"MODEL.SEG2.UNET.DEPTH must be >= 1, got {depth}")
        self.depth = depth
        self.mode = mode
        self.decoder_levels = tuple(decoder_levels) if decoder_levels else (depth, 1)
        pad = 1 if mode == "pad" else 0
        self.stages = nn.ModuleList()
        self._out_features: List[str] = []
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        ch_in = in_channels
        for i in range(1, depth + 1):
            ch = base_channels * 2 ** (i - 1)
            convs = []
            for c_in in (ch_in, ch):
                conv = Conv2d(
                    c_in,
                    ch,
                    kernel_size=3,
                    padding=pad,
                    bias=not norm,
                    norm=get_norm(norm, ch),
                    activation=F.relu,
                )
                weight_init.c2_msra_fill(conv)
                convs.append(conv)
            self.stages.append(nn.Sequential(*convs))
            name = f"res{i}"
            self._out_features.append(name)
            self._out_feature_channels[name] = ch
            self._out_feature_strides[name] = 2 ** (i - 1)
            ch_in = ch

    @property
    def size_divisibility(self) -> int:
        # crop mode pads its own input (mirrored) to a valid tile.
        return 2 ** (self.depth - 1) if self.mode == "pad" else 0

    def overlap_margin(self) -> int:
        """Pixels the crop-mode encoder + decoder lose on each side (the mirror pad)."""
        k, f = self.decoder_levels
        return 2 * (2**k - 1) + 2 * (2 ** (k - 1) - 2 ** (f - 1))

    def decoder_output_size(self, n: int) -> Optional[int]:
        """Output size of the crop-mode decoder for an encoder input of size ``n``, or None
        if some valid convolution or 2x2 pooling would not fit exactly."""
        sizes = []
        for i in range(1, self.depth + 1):
            n -= 4
            if n < 1:
                return None
            sizes.append(n)
            if i < self.depth:
                if n % 2:
                    return None
                n //= 2
        k, f = self.decoder_levels
        m = sizes[k - 1]
        for i in range(k - 1, f - 1, -1):
            up, skip = 2 * m, sizes[i - 1]
            if skip < up or (skip - up) % 2:
                return None
            m = up - 4
            if m < 1:
                return None
        return m

    def tile_padding(self, n: int) -> Tuple[int, int]:
        """(before, after) mirror padding of a crop-mode input dimension of size ``n``."""
        margin = self.overlap_margin()
        tile = n + 2 * margin
        while self.decoder_output_size(tile) is None:
            tile += 1
        return margin, tile - n - margin

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, C, H, W) images.

        Returns:
            ``{"res<i>": (N, C_i, H_i, W_i)}``; in pad mode ``H_i = ceil(H / 2^(i-1))``.
        """
        if self.mode == "crop":
            # int(): under torch.jit.trace sizes are tensors, and the tile search would be
            # recorded op by op (minutes); the trace fixes the input size anyway.
            top, bottom = self.tile_padding(int(x.shape[-2]))
            left, right = self.tile_padding(int(x.shape[-1]))
            x = mirror_pad(x, (left, right, top, bottom))
        outputs = {}
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            x = stage(x)
            outputs[self._out_features[i]] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name],
                stride=self._out_feature_strides[name],
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_unet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> UNetEncoder:
    """
    The classic U-Net encoder from ``MODEL.SEG2.UNET``: ``BASE_CHANNELS``, ``DEPTH``,
    ``NORM``, and ``SKIP_MODE`` (crop = valid convolutions with overlap-tile, sized for
    the decoder over ``IN_FEATURES``; only for ``UNetSemSegHead``).
    """
    unet = cfg.MODEL.SEG2.UNET
    decoder_levels = None
    if unet.SKIP_MODE == "crop":
        decoder_levels = parse_unet_levels(
            unet.IN_FEATURES, unet.DEPTH, "MODEL.SEG2.UNET.IN_FEATURES"
        )
    return UNetEncoder(
        input_shape.channels,
        base_channels=unet.BASE_CHANNELS,
        depth=unet.DEPTH,
        norm=unet.NORM,
        mode=unet.SKIP_MODE,
        decoder_levels=decoder_levels,
    )


# The geometry a head needs, declared by the backbone: in crop mode the classic encoder
# mirror-pads its input (overlap-tile) for UNetSemSegHead's valid-convolution decoder.
build_unet_backbone.mirror_pads_input = lambda cfg: cfg.MODEL.SEG2.UNET.SKIP_MODE == "crop"


def backbone_mirror_pads_input(cfg: CfgNode) -> bool:
    """Whether ``MODEL.BACKBONE.NAME`` declares that it mirror-pads its input under ``cfg``
    (a ``mirror_pads_input(cfg)`` attribute on the registered builder)."""
    builder = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)
    declared = getattr(builder, "mirror_pads_input", None)
    return bool(declared(cfg)) if declared is not None else False

