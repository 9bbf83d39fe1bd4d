"""Seg2SemanticSegmentor: Detectron2's SemanticSegmentor plus per-pixel loss weights."""

from typing import Dict, List, Union

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ..capabilities import ModelCapabilities
from .batching import batch_sem_seg_targets, takes_pixel_weights

__all__ = ["Seg2SemanticSegmentor"]


@META_ARCH_REGISTRY.register()
class Seg2SemanticSegmentor(SemanticSegmentor):
    """
    Backbone + semantic head, as :class:`SemanticSegmentor`, that also hands the head the
    dataset mapper's ``sem_seg_weights`` (U-Net's weight map, ``INPUT.SEG2.WEIGHT_MAP``),
    padded like ``sem_seg`` (with weight 0). Detectron2's own heads get no weights.
    """

    seg2_capabilities = ModelCapabilities(
        frozenset({"sem_seg"}), sem_seg=True, category_area_crop=True, pixel_weights=True
    )

    @configurable
    def __init__(self, **kwargs):
        """
        Args:
            kwargs: the arguments of :class:`SemanticSegmentor` (``backbone``,
                ``sem_seg_head``, ``pixel_mean``, ``pixel_std``).
        """
        super().__init__(**kwargs)
        self._head_takes_weights = takes_pixel_weights(self.sem_seg_head)

    def forward(self, batched_inputs: List[Dict]) -> Union[Dict[str, torch.Tensor], List[Dict]]:
        """
        Args:
            batched_inputs: one dict per image:

                * "image": (C, H, W) tensor.
                * "sem_seg": (H, W) int64 labels (training; optional in inference).
                * "sem_seg_weights": optional (H, W) float per-pixel loss weights.
                * "height", "width": output resolution (default: the input's).

        Returns:
            In training, the head's losses. In inference, one ``{"sem_seg": (K, height,
            width) logits}`` per image.
        """
        images = [x["image"].to(self.device) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        pad = (self.backbone.size_divisibility, self.backbone.padding_constraints)
        images = ImageList.from_tensors(images, pad[0], padding_constraints=pad[1])
        features = self.backbone(images.tensor)

        targets, weights = batch_sem_seg_targets(
            batched_inputs,
            self.device,
            *pad,
            self.sem_seg_head.ignore_value,
            self._head_takes_weights,
        )
        if weights is not None:
            results, losses = self.sem_seg_head(features, targets, weights=weights)
        else:
            results, losses = self.sem_seg_head(features, targets)

        if self.training:
            return losses
        processed_results = []
        for result, input_per_image, image_size in zip(results, batched_inputs, images.image_sizes):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            processed_results.append(
                {"sem_seg": sem_seg_postprocess(result, image_size, height, width)}
            )
        return processed_results
