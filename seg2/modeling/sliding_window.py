"""The sliding-window baseline that FCN replaced (e.g. Ciresan et al. 2012): a small CNN
classifies the centre pixel of a window cut around every pixel. It recomputes the shared
context of neighbouring windows once per pixel, which is exactly the cost an FCN avoids;
it exists to be measured against the FCN heads on the same data.
"""

from typing import Dict, List, Optional, Sequence, Union

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import sem_seg_postprocess
from torch import nn
from torch.nn import functional as F

from ..capabilities import ModelCapabilities
from .backbone.unet import mirror_pad
from .losses import SemSegLoss

__all__ = ["SlidingWindowSegmentor", "WindowClassifier", "pad_for_windows", "extract_windows"]


def pad_for_windows(image: torch.Tensor, window: int) -> torch.Tensor:
    """
    Mirror-pad (reflect, without repeating the edge pixel) by ``window // 2`` on every side,
    so that the window centred on any pixel lies inside the padded image.

    Args:
        image: (C, H, W).
        window: odd window size.

    Returns:
        (C, H + 2r, W + 2r) with ``r = window // 2``; padded pixel (y + r, x + r) is (y, x).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"MODEL.SEG2.SLIDING_WINDOW.WINDOW must be odd and >= 1, got {window}")
    r = window // 2
    return mirror_pad(image[None], (r, r, r, r))[0]


def extract_windows(
    padded: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, window: int
) -> torch.Tensor:
    """
    The ``window x window`` crops centred on pixels (ys, xs) of the unpadded image, read from
    a strided view of the padded image (no copy but the crops returned).

    Args:
        padded: (C, H + 2r, W + 2r) from :func:`pad_for_windows`.
        ys, xs: (B,) int64 pixel coordinates in the unpadded image.
        window: odd window size used for the padding.

    Returns:
        (B, C, window, window); crop b is ``padded[:, ys[b]:ys[b] + window, xs[b]:xs[b] + window]``,
        whose centre ``[r, r]`` is pixel (ys[b], xs[b]).
    """
    # (C, H, W, window, window): [c, y, x] is the window whose top-left is padded (y, x).
    views = padded.unfold(1, window, 1).unfold(2, window, 1)
    return views[:, ys, xs].transpose(0, 1)


class WindowClassifier(nn.Module):
    """
    The per-window CNN: for each entry of ``conv_channels`` a 3x3 conv (+ norm) + ReLU +
    2x2 max-pool, then flatten, ``fc_dim`` hidden units with ReLU, and a linear layer to
    ``num_classes`` logits.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        window: int,
        conv_channels: Sequence[int] = (16, 32, 64),
        fc_dim: int = 128,
        norm: str = "",
    ):
        """
        Args:
            in_channels: image channels.
            num_classes: K.
            window: input window size.
            conv_channels: output channels of the conv+pool stages.
            fc_dim: width of the hidden fully connected layer.
            norm: conv norm (see :func:`detectron2.layers.get_norm`), "" = none.
        """
        super().__init__()
        layers: List[nn.Module] = []
        c, size = in_channels, window
        for ch in conv_channels:
            if size < 2:
                raise ValueError(
                    f"MODEL.SEG2.SLIDING_WINDOW: WINDOW {window} is too small for "
                    f"{len(conv_channels)} conv+pool stages (CONV_CHANNELS {list(conv_channels)})"
                )
            conv = Conv2d(
                c, ch, 3, padding=1, bias=not norm, norm=get_norm(norm, ch), activation=F.relu
            )
            weight_init.c2_msra_fill(conv)
            layers += [conv, nn.MaxPool2d(2)]
            c, size = ch, size // 2
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * size * size, fc_dim)
        self.predictor = nn.Linear(fc_dim, num_classes)
        weight_init.c2_xavier_fill(self.fc)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """
        Args:
            windows: (B, C, window, window) normalised crops.

        Returns:
            (B, K) logits of each window's centre pixel.
        """
        x = self.features(windows).flatten(1)
        return self.predictor(F.relu(self.fc(x)))


@META_ARCH_REGISTRY.register()
class SlidingWindowSegmentor(nn.Module):
    """
    Semantic segmentation by classifying one window per pixel.

    Training: ``PIXELS_PER_IMAGE`` pixels whose label is not ``IGNORE_VALUE`` are drawn
    uniformly per image, their windows classified and scored with the configured
    :class:`~seg2.modeling.losses.SemSegLoss` (``ce``, ``dice``, or ``weighted_ce`` with the
    mapper's ``sem_seg_weights`` read at the sampled pixels). Inference: the windows of
    every pixel, ``BATCH`` at a time, give (K, H, W) logits, resized to the requested output
    size like :class:`~detectron2.modeling.SemanticSegmentor`, so the same evaluators apply.
    Images are mirror-padded, so border pixels see a reflected context.
    """

    seg2_capabilities = ModelCapabilities(
        frozenset({"sem_seg"}), sem_seg=True, category_area_crop=True, pixel_weights=True
    )

    @configurable
    def __init__(
        self,
        *,
        classifier: nn.Module,
        window: int,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        pixels_per_image: int = 256,
        batch: int = 1024,
        ignore_value: int = 255,
        loss: Optional[SemSegLoss] = None,
        loss_weight: float = 1.0,
    ):
        """
        Args:
            classifier: maps (B, C, window, window) windows to (B, K) logits.
            window: odd window size.
            num_classes: K.
            pixel_mean, pixel_std: per-channel image normalisation.
            pixels_per_image: windows sampled per image in training.
            batch: windows per classifier call in inference.
            ignore_value: label of pixels never sampled.
            loss: the loss on the sampled pixels; default plain cross-entropy.
            loss_weight: multiplies every loss term.
        """
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"MODEL.SEG2.SLIDING_WINDOW.WINDOW must be odd and >= 1, got {window}")
        if pixels_per_image < 1 or batch < 1:
            raise ValueError(
                "MODEL.SEG2.SLIDING_WINDOW.PIXELS_PER_IMAGE and BATCH must be >= 1, got "
                f"{pixels_per_image} and {batch}"
            )
        self.classifier = classifier
        self.window = int(window)
        self.num_classes = int(num_classes)
        self.pixels_per_image = int(pixels_per_image)
        self.batch = int(batch)
        self.ignore_value = ignore_value
        self.loss = loss if loss is not None else SemSegLoss(ignore_label=ignore_value)
        self.loss_weight = loss_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        sw = cfg.MODEL.SEG2.SLIDING_WINDOW
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        return {
            "classifier": WindowClassifier(
                len(cfg.MODEL.PIXEL_MEAN),
                num_classes,
                sw.WINDOW,
                sw.CONV_CHANNELS,
                sw.FC_DIM,
                sw.NORM,
            ),
            "window": sw.WINDOW,
            "num_classes": num_classes,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "pixels_per_image": sw.PIXELS_PER_IMAGE,
            "batch": sw.BATCH,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss": SemSegLoss(cfg),
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict]) -> Union[Dict[str, torch.Tensor], List[Dict]]:
        """
        Args:
            batched_inputs: one dict per image, as for ``SemanticSegmentor``:

                * "image": (C, H, W) tensor.
                * "sem_seg": (H, W) int64 labels (training).
                * "sem_seg_weights": optional (H, W) per-pixel weights (``weighted_ce``).
                * "height", "width": output resolution (default: the input's).

        Returns:
            In training ``{"loss_sem_seg_<name>": scalar}``; in inference one
            ``{"sem_seg": (K, height, width) logits}`` per image.
        """
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        if self.training:
            return self.losses(images, batched_inputs)
        results = []
        for image, inp in zip(images, batched_inputs):
            logits = self.segment(image)
            h, w = image.shape[-2:]
            out_h, out_w = inp.get("height", h), inp.get("width", w)
            results.append({"sem_seg": sem_seg_postprocess(logits, (h, w), out_h, out_w)})
        return results

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: (C, H, W) normalised image.

        Returns:
            (K, H, W) logits, one window classification per pixel.
        """
        h, w = image.shape[-2:]
        padded = pad_for_windows(image, self.window)
        logits = image.new_empty((h * w, self.num_classes))
        for start in range(0, h * w, self.batch):
            idx = torch.arange(start, min(start + self.batch, h * w), device=image.device)
            windows = extract_windows(padded, idx // w, idx % w, self.window)
            logits[start : start + len(idx)] = self.classifier(windows).to(logits.dtype)
        return logits.t().reshape(self.num_classes, h, w)

    def losses(
        self, images: List[torch.Tensor], batched_inputs: List[Dict]
    ) -> Dict[str, torch.Tensor]:
        """Loss on ``pixels_per_image`` random non-ignored pixels of each image."""
        windows, labels, weights = [], [], []
        use_weights = "sem_seg_weights" in batched_inputs[0]
        for image, inp in zip(images, batched_inputs):
            if "sem_seg" not in inp:
                raise ValueError(
                    f"SlidingWindowSegmentor: training needs 'sem_seg' targets "
                    f"({inp.get('file_name', 'input')})"
                )
            target = inp["sem_seg"].to(self.device)
            if target.shape != image.shape[-2:]:
                raise ValueError(
                    f"{inp.get('file_name', 'input')}: 'sem_seg' shape {tuple(target.shape)} != "
                    f"image shape {tuple(image.shape[-2:])}"
                )
            valid = (target != self.ignore_value).flatten().nonzero().squeeze(1)
            pick = valid[torch.randperm(len(valid), device=self.device)[: self.pixels_per_image]]
            ys, xs = pick // target.shape[1], pick % target.shape[1]
            windows.append(
                extract_windows(pad_for_windows(image, self.window), ys, xs, self.window)
            )
            labels.append(target[ys, xs])
            if use_weights:
                weights.append(inp["sem_seg_weights"].to(self.device)[ys, xs])
        windows, labels = torch.cat(windows), torch.cat(labels)
        if "weighted_ce" in self.loss.names and not use_weights:
            raise ValueError(
                "SlidingWindowSegmentor: loss 'weighted_ce' needs the mapper's sem_seg_weights "
                "(INPUT.SEG2.WEIGHT_MAP True); sampled pixels have no neighbourhood to derive them"
            )
        logits = self.classifier(windows)  # (B, K)
        # SemSegLoss scores (N, K, H, W) maps: the sampled pixels are one 1 x B "image".
        losses = self.loss(
            logits.t()[None, :, None, :],
            labels[None, None, :],
            torch.cat(weights)[None, None, :] if use_weights else None,
        )
        return {k: v * self.loss_weight for k, v in losses.items()}
