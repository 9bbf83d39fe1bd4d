"""Run an exported TorchScript model on images with the eager model's pre- and
post-processing: the test resize, padding to a fixed export size, outputs at the image's
size, Mask R-CNN's mask pasting and the panoptic fusion (which stays Python)."""

import json
import logging
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes, Instances

from ..io import InputError
from ..modeling.paste import paste_masks
from .tracing import DEPRECATED, MANIFEST

__all__ = ["ExportedModel", "load_exported"]

logger = logging.getLogger(__name__)


def load_exported(path: str, map_location: Optional[str] = None):
    """(ScriptModule, manifest) from a ``model.ts`` written by :func:`export_torchscript`.

    torchvision must be imported first: the traced graph calls its ``nms``/``roi_align`` ops.
    """
    import torchvision  # noqa: F401  (registers torchvision::nms, roi_align)

    extra = {MANIFEST: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=DEPRECATED, category=FutureWarning)
            module = torch.jit.load(path, map_location=map_location, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as e:
        raise InputError(f"{path}: not a TorchScript file ({e})") from None
    if not extra[MANIFEST]:
        raise InputError(f"{path}: no {MANIFEST} inside; export it with tools/export_model.py")
    return module, json.loads(extra[MANIFEST])


class ExportedModel:
    """An exported model called like the eager one on a list of images, returning
    Detectron2's output dicts (``sem_seg``, ``instances``, ``panoptic_seg``)."""

    def __init__(self, path: str, device: str = "cpu"):
        self.module, self.manifest = load_exported(path, device)
        self.device = device
        m = self.manifest
        self.kind = m["kind"]
        self.input_format = m["input_format"]
        self.resize = T.ResizeShortestEdge(m["min_size_test"], m["max_size_test"], "choice")
        self.fusion = None
        if self.kind == "panoptic":
            from ..modeling.fusion import FUSION_REGISTRY

            self.fusion = FUSION_REGISTRY.get(m["fusion"]["name"])(**m["fusion"]["kwargs"])

    def _prepare(self, image: np.ndarray):
        """Test resize, then (fixed-size exports) downscale to fit and pad with the pixel
        mean, which the model's normalisation turns into the zeros its own padding uses.
        Returns ((C, H', W') tensor, valid (h, w))."""
        image = self.resize.get_transform(image).apply_image(image)
        h, w = image.shape[:2]
        if self.manifest["fixed_input_size"]:
            th, tw = self.manifest["input_size"]
            if h > th or w > tw:
                scale = min(th / h, tw / w)
                h, w = min(th, int(h * scale + 0.5)), min(tw, int(w * scale + 0.5))
                image = T.ResizeTransform(image.shape[0], image.shape[1], h, w).apply_image(image)
            if (h, w) != (th, tw):
                canvas = np.empty((th, tw, image.shape[2]), dtype=np.float32)
                canvas[:] = np.asarray(self.manifest["pixel_mean"], dtype=np.float32)
                canvas[:h, :w] = image
                image = canvas
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        return tensor.to(self.device), (h, w)

    @torch.no_grad()
    def __call__(self, images: List[np.ndarray]) -> List[Dict]:
        """
        Args:
            images: (H, W, C) uint8 arrays in the manifest's ``input_format``.
        """
        return [self._one(image) for image in images]

    def _one(self, image: np.ndarray) -> Dict:
        height, width = image.shape[:2]
        tensor, valid = self._prepare(image)
        raw = self.module(tensor)
        outs = dict(zip(self.manifest["outputs"], raw if isinstance(raw, tuple) else (raw,)))
        result: Dict = {}
        sem = None
        if "sem_seg" in outs:
            sem = sem_seg_postprocess(outs["sem_seg"], valid, height, width)
            result["sem_seg"] = sem
        if "boxes" in outs:
            inst = Instances(valid)
            inst.pred_boxes = Boxes(outs["boxes"])
            inst.scores = outs["scores"]
            inst.pred_classes = outs["classes"]
            inst.set("_row", torch.arange(len(inst), device=tensor.device))
            detected = detector_postprocess(inst, height, width)
            rows = detected.get("_row")
            detected.remove("_row")
            # Detectron2's pasting, batched on small CPU images (as Seg2PanopticRCNN does).
            soft = outs["mask_probs"][rows, 0]
            detected.pred_masks = paste_masks(soft, detected.pred_boxes, (height, width))
            result["instances"] = detected
            if self.fusion is not None:
                result["panoptic_seg"] = self._fuse(detected, soft, sem)
        return result

    def _fuse(self, detected: Instances, soft: torch.Tensor, sem: torch.Tensor):
        """Seg2PanopticRCNN's fusion call, on the exported outputs."""
        h, w = detected.image_size
        masks = detected.pred_masks
        if getattr(self.fusion, "uses_soft_masks", False):
            masks = paste_masks(soft, detected.pred_boxes, (h, w), threshold=-1).float() / 255.0
        fusion_input = Instances(
            (h, w), pred_masks=masks, scores=detected.scores, pred_classes=detected.pred_classes
        )
        m = self.manifest
        return self.fusion(fusion_input, sem.softmax(dim=0), m["thing_ids"], m["stuff_ids"])
