"""Seg2PanopticRCNN: Mask R-CNN plus a semantic branch, fused into panoptic segmentation."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_sem_seg_head
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from ..capabilities import ModelCapabilities
from .batching import batch_sem_seg_targets, takes_pixel_weights
from .fusion import build_fusion
from .paste import paste_masks

__all__ = ["Seg2PanopticRCNN"]


@META_ARCH_REGISTRY.register()
class Seg2PanopticRCNN(GeneralizedRCNN):
    """
    Backbone -> RPN -> ROI heads (boxes, per-class masks) plus a semantic branch from
    ``SEM_SEG_HEADS_REGISTRY`` on the same features; at inference a fusion module from
    ``FUSION_REGISTRY`` merges both into a panoptic map.

    Unlike Detectron2's ``PanopticFPN``, the semantic branch predicts *all* classes
    (things first, then stuff; 255 = ignore), so the fusion can weigh the semantic
    probabilities of thing classes against the instances, and the fusion is a separate,
    swappable object (``model.fusion = build_fusion(cfg, "ProbabilisticFusion")``).
    """

    seg2_capabilities = ModelCapabilities(
        frozenset({"instances", "sem_seg", "panoptic_seg"}),
        instances=True,
        sem_seg=True,
        pixel_weights=True,
    )

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: nn.Module,
        fusion,
        thing_ids: Sequence[int],
        stuff_ids: Sequence[int],
        instance_loss_weight: float = 1.0,
        sem_seg_ignore_value: int = 255,
        **kwargs,
    ):
        """
        Args:
            sem_seg_head: semantic head called as ``head(features, targets[, weights=])``,
                returning ``(logits or None, losses)``; in inference the logits are
                (N, K, H, W) at the padded input size.
            fusion: a fusion object, see ``seg2.modeling.fusion.FUSION_REGISTRY``.
            thing_ids: semantic id of each thing class (index = ROI heads' class).
            stuff_ids: semantic ids of the stuff classes.
            instance_loss_weight: multiplies the ROI heads' losses (``loss_cls``,
                ``loss_box_reg``, ``loss_mask``), the paper's lambda_i on L_c + L_b + L_m;
                the RPN's are left as they are, as in Detectron2's original PanopticFPN.
                The semantic weight is the head's own ``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT``.
            sem_seg_ignore_value: label of ignored pixels in ``sem_seg`` targets, also the
                padding value of batched targets.
            kwargs: the arguments of :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        self.sem_seg_head = sem_seg_head
        self.fusion = fusion
        self.thing_ids = list(thing_ids)
        self.stuff_ids = list(stuff_ids)
        self.instance_loss_weight = instance_loss_weight
        self.sem_seg_ignore_value = sem_seg_ignore_value
        # Pixel weights (e.g. the U-Net border map) only go to heads that take them.
        self._head_takes_weights = takes_pixel_weights(self.sem_seg_head)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        if not cfg.MODEL.MASK_ON:
            raise ValueError("Seg2PanopticRCNN needs instance masks: set MODEL.MASK_ON True")
        num_things = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        if num_classes < num_things:
            raise ValueError(
                f"Seg2PanopticRCNN: MODEL.SEM_SEG_HEAD.NUM_CLASSES ({num_classes}) counts all "
                f"classes, things first, so it cannot be smaller than "
                f"MODEL.ROI_HEADS.NUM_CLASSES ({num_things})"
            )
        ret = super().from_config(cfg)
        ret.update(
            {
                "sem_seg_head": build_sem_seg_head(cfg, ret["backbone"].output_shape()),
                "fusion": build_fusion(cfg),
                "thing_ids": list(range(num_things)),
                "stuff_ids": list(range(num_things, num_classes)),
                "instance_loss_weight": cfg.MODEL.SEG2.PANOPTIC.INSTANCE_LOSS_WEIGHT,
                "sem_seg_ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            }
        )
        return ret

    def forward(self, batched_inputs: List[Dict]) -> Union[Dict[str, torch.Tensor], List[Dict]]:
        """
        Args:
            batched_inputs: one dict per image, as produced by a dataset mapper:

                * "image": (C, H, W) tensor in ``INPUT.FORMAT``.
                * "instances": :class:`Instances` with ``gt_boxes``, ``gt_classes``,
                  ``gt_masks`` (training).
                * "sem_seg": (H, W) long tensor, all classes, 255 = ignore (training).
                * "sem_seg_weights": optional (H, W) float per-pixel loss weights.
                * "height", "width": output resolution (inference; default: input size).

        Returns:
            In training, a dict of losses: the RPN's, the ROI heads' (times
            ``instance_loss_weight``) and the semantic head's. In inference, see
            :meth:`inference`.
        """
        if not self.training:
            return self.inference(batched_inputs)
        for key in ("instances", "sem_seg"):
            if key not in batched_inputs[0]:
                raise KeyError(f"Seg2PanopticRCNN: training inputs need the field '{key}'")

        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)

        _, sem_seg_losses = self._sem_seg(features, batched_inputs)

        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)

        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)

        losses = dict(sem_seg_losses)
        losses.update(proposal_losses)
        losses.update({k: v * self.instance_loss_weight for k, v in detector_losses.items()})
        return losses

    def _sem_seg(
        self, features: Dict[str, torch.Tensor], batched_inputs: Optional[List[Dict]]
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """Run the semantic head, with padded targets (and weights) when training."""
        if batched_inputs is None:
            return self.sem_seg_head(features, None)
        pad = (self.backbone.size_divisibility, self.backbone.padding_constraints)
        targets, weights = batch_sem_seg_targets(
            batched_inputs, self.device, *pad, self.sem_seg_ignore_value, self._head_takes_weights
        )
        if weights is not None:
            return self.sem_seg_head(features, targets, weights=weights)
        return self.sem_seg_head(features, targets)

    def inference(
        self, batched_inputs: List[Dict], do_postprocess: bool = True
    ) -> Union[List[Dict], Tuple[List[Instances], torch.Tensor]]:
        """
        Args:
            batched_inputs: as in :meth:`forward`.
            do_postprocess: resize outputs to "height"/"width" and fuse them.

        Returns:
            If ``do_postprocess``, one dict per image with

            * "instances": :class:`Instances` at (height, width): ``pred_boxes``,
              ``scores``, ``pred_classes`` (contiguous thing ids), ``pred_masks``
              (N, height, width) bool.
            * "sem_seg": (K, height, width) logits over all classes.
            * "panoptic_seg": ``(panoptic_img (height, width) int32, segments_info)``,
              see ``seg2.modeling.fusion.FUSION_REGISTRY``.

            Otherwise the raw ``(list[Instances], (N, K, H, W) semantic logits)``.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_seg_results, _ = self._sem_seg(features, None)
        proposals, _ = self.proposal_generator(images, features, None)
        detector_results, _ = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            return detector_results, sem_seg_results

        processed_results = []
        for sem_seg_result, detector_result, input_per_image, image_size in zip(
            sem_seg_results, detector_results, batched_inputs, images.image_sizes
        ):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            sem_seg_r = sem_seg_postprocess(sem_seg_result, image_size, height, width)
            # detector_postprocess without its mask pasting (seg2's paste_masks is the same,
            # batched on small CPU images); rows follow its box filtering to the masks.
            raw_masks = detector_result.pred_masks
            detector_result.remove("pred_masks")
            detector_result.set("_row", torch.arange(len(detector_result), device=self.device))
            detector_r = detector_postprocess(detector_result, height, width)
            rows = detector_r.get("_row")
            detector_r.remove("_row")
            boxes = detector_r.pred_boxes
            detector_r.pred_masks = paste_masks(raw_masks[rows, 0], boxes, (height, width))

            masks = detector_r.pred_masks
            if getattr(self.fusion, "uses_soft_masks", False):
                soft = paste_masks(raw_masks[rows, 0], boxes, (height, width), threshold=-1)
                masks = soft.float() / 255.0
            fusion_input = Instances(
                (height, width),
                pred_masks=masks,
                scores=detector_r.scores,
                pred_classes=detector_r.pred_classes,
            )
            panoptic_r = self.fusion(
                fusion_input, sem_seg_r.softmax(dim=0), self.thing_ids, self.stuff_ids
            )
            processed_results.append(
                {"instances": detector_r, "sem_seg": sem_seg_r, "panoptic_seg": panoptic_r}
            )
        return processed_results
