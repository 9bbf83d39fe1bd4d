"""BaseSemSegHead: what every seg2 semantic head shares, so a head is only its layers."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import Conv2d, ShapeSpec
from torch import nn
from torch.nn import functional as F

from ..backbone.unet import backbone_mirror_pads_input
from ..losses import SemSegLoss

__all__ = ["BaseSemSegHead", "crop_or_pad"]


def crop_or_pad(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """
    Make the last two dims ``size`` by cutting the bottom/right excess or replicating the
    last row/column. Top-left anchoring matches Detectron2's padding (images are padded at
    the bottom/right) and its strided convolutions (output pixel j sits at input s * j).

    Args:
        x: (N, C, h, w).
        size: (H, W).

    Returns:
        (N, C, H, W).
    """
    h, w = int(size[0]), int(size[1])
    x = x[..., :h, :w]
    pad_h, pad_w = h - x.shape[-2], w - x.shape[-1]
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, max(pad_w, 0), 0, max(pad_h, 0)), mode="replicate")
    return x


class BaseSemSegHead(nn.Module):
    """
    Base of seg2's semantic heads. It owns

    * feature selection: ``self.in_features`` (in the config's order, coarsest first) and
      ``self.input_shape``;
    * the classifier ``self.predictor``, a 1x1 conv to ``num_classes`` logits;
    * resizing: logits come out of :meth:`layers` at ``common_stride`` and are upsampled
      by fixed bilinear interpolation (the FCN paper's fixed final "deconvolution"), then
      cut to the targets' size (training) -- in inference they are returned at the padded
      input size (``feature size * common_stride``, at least the input) and the
      meta-architecture's ``sem_seg_postprocess`` crops them;
    * the loss, a :class:`SemSegLoss` times ``loss_weight``.

    Subclasses implement :meth:`layers`. The call contract is Detectron2's
    ``SemanticSegmentor``'s plus optional per-pixel weights:
    ``logits, losses = head(features, targets=None, weights=None)``.
    """

    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        predictor_in_channels: int,
        common_stride: int,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        loss: Optional[SemSegLoss] = None,
    ):
        """
        Args:
            input_shape: the features the head reads, in the order it reads them.
            num_classes: number of semantic classes K (all classes, things and stuff).
            predictor_in_channels: channels entering the 1x1 classifier.
            common_stride: stride of the logits returned by :meth:`layers`.
            ignore_value: label of ignored pixels in the targets.
            loss_weight: multiplies every loss term.
            loss: the loss; default plain cross-entropy.
        """
        super().__init__()
        if not input_shape:
            raise ValueError(f"{type(self).__name__}: input_shape cannot be empty")
        self.input_shape = dict(input_shape)
        self.in_features: List[str] = list(input_shape.keys())
        self.num_classes = num_classes
        self.common_stride = int(common_stride)
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.loss = loss if loss is not None else SemSegLoss(ignore_label=ignore_value)
        self.predictor = Conv2d(predictor_in_channels, num_classes, kernel_size=1)
        # Small logits at the start, so the first losses are ~log K whatever the feature scale.
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def select_features(
        cls, input_shape: Dict[str, ShapeSpec], names: Sequence[str], key: str
    ) -> Dict[str, ShapeSpec]:
        """``{name: input_shape[name]}`` in the order of ``names``, or a clear error naming
        the config ``key`` that listed a feature the backbone does not produce."""
        names = [names] if isinstance(names, str) else list(names)
        missing = [n for n in names if n not in input_shape]
        if missing or not names:
            raise ValueError(
                f"{key}: {missing or names} not among the backbone's outputs "
                f"{sorted(input_shape)} (set MODEL.RESNETS.OUT_FEATURES / the backbone)"
            )
        return {n: input_shape[n] for n in names}

    # Every seg2 head's forward takes per-pixel loss weights (read by the meta-architectures).
    takes_pixel_weights: bool = True

    # Whether the head can undo the classic encoder's crop-mode mirror padding.
    supports_overlap_tile: bool = False

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> Dict:
        """The keyword arguments every head reads from the config's core keys."""
        if backbone_mirror_pads_input(cfg) and not cls.supports_overlap_tile:
            raise ValueError(
                f"{cls.__name__}: MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME} mirror-pads "
                "its input (MODEL.SEG2.UNET.SKIP_MODE 'crop') for UNetSemSegHead's decoder; "
                "use SKIP_MODE 'pad'"
            )
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "loss": SemSegLoss(cfg),
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: backbone outputs by name.

        Returns:
            (N, K, h, w) logits at ``common_stride``.
        """
        raise NotImplementedError

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        targets: Optional[torch.Tensor] = None,
        weights: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """
        Args:
            features: backbone outputs by name.
            targets: (N, H, W) int64 labels at the padded input size, ``ignore_value`` =
                ignored; required in training.
            weights: optional (N, H, W) per-pixel loss weights (e.g. U-Net's weight map).

        Returns:
            logits: (N, K, H, W) at the targets' size if given, else at the padded input
                size ``feature size * common_stride``.
            losses: in training ``{"loss_sem_seg_<name>": scalar}``, else ``{}``.
        """
        x = self.upsample_logits(self.layers(features), None if targets is None else targets)
        if not self.training:
            return x, {}
        if targets is None:
            raise ValueError(f"{type(self).__name__}: training needs targets (sem_seg)")
        return x, self.losses(x, targets, weights)

    def upsample_logits(
        self, x: torch.Tensor, targets: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """(N, K, h, w) at ``common_stride`` -> (N, K, h * s, w * s), cut to the targets."""
        x = x.float()
        if self.common_stride > 1:
            x = F.interpolate(
                x, scale_factor=self.common_stride, mode="bilinear", align_corners=False
            )
        if targets is not None:
            x = crop_or_pad(x, targets.shape[-2:])
        return x

    def losses(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        weights: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: (N, K, H, W) at the targets' size.
            targets: (N, H, W) int64 labels.
            weights: optional (N, H, W) per-pixel weights.

        Returns:
            ``{"loss_sem_seg_<name>": value * loss_weight}``.
        """
        return {k: v * self.loss_weight for k, v in self.loss(logits, targets, weights).items()}
