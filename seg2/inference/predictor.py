"""Batched inference on images in memory, with the evaluation's test-time resize."""

import logging
import os
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..capabilities import model_capabilities
from ..data.augmentations import build_augmentations
from ..io import BitDepthRule, InputError

__all__ = ["BatchPredictor"]

logger = logging.getLogger(__name__)


class BatchPredictor:
    """Detectron2's ``DefaultPredictor`` for a list of images: the model from ``cfg`` with
    ``MODEL.WEIGHTS`` loaded, on ``MODEL.DEVICE``, in eval mode; images resized by the same
    test augmentation the evaluators' data loader uses, so figures on the same images agree;
    outputs at each image's own size.
    """

    def __init__(self, cfg: CfgNode, checkpointer: Callable[[torch.nn.Module], Any] = None):
        """
        Args:
            cfg: a config with seg2's keys; ``MODEL.WEIGHTS`` a local checkpoint (or URL),
                empty only for random weights (warned).
            checkpointer: makes the checkpointer that loads ``MODEL.WEIGHTS`` into the model
                (default Detectron2's; the tools pass seg2's, which refuses a checkpoint
                whose shapes do not fit).
        """
        self.cfg = cfg.clone()
        weights = cfg.MODEL.WEIGHTS
        if weights and "://" not in weights and not os.path.isfile(weights):
            raise InputError(f"MODEL.WEIGHTS: checkpoint {weights} not found")
        self.model = build_model(self.cfg)
        self.model.eval()
        if weights:
            (checkpointer or DetectionCheckpointer)(self.model).load(weights)
        else:
            logger.warning("MODEL.WEIGHTS is empty: predicting with randomly initialised weights")
        self.augmentations = T.AugmentationList(build_augmentations(self.cfg, is_train=False))
        self.input_format = cfg.INPUT.FORMAT
        # How >8-bit images become 8-bit (INPUT.SEG2.BIT_DEPTH), as in training.
        self.bit_depth = BitDepthRule.from_cfg(self.cfg)
        # Output keys the architecture declares ("boxes" = instances without masks); others
        # (PanopticFPN's sem_seg, whose class 0 merges all things) are not results.
        outputs = model_capabilities(self.cfg).outputs
        self.tasks = {"instances" if k == "boxes" else k for k in outputs}

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> List[Dict]:
        """
        Args:
            images: (H, W, C) uint8 arrays in ``INPUT.FORMAT`` (as :func:`seg2.io.read_image`
                returns them).

        Returns:
            the model's outputs, one dict per image, at the image's (H, W), with the keys
            of :attr:`tasks`.
        """
        inputs = []
        for image in images:
            height, width = image.shape[:2]
            aug = T.AugInput(image)
            self.augmentations(aug)
            tensor = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
            inputs.append({"image": tensor, "height": height, "width": width})
        return [{k: v for k, v in out.items() if k in self.tasks} for out in self.model(inputs)]
