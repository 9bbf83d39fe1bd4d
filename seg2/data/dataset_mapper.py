"""Seg2DatasetMapper: the one mapper for instance, semantic and panoptic training.

What it produces is driven by what the dataset dict carries and what the model needs:
``instances`` (from COCO ``annotations`` or, lacking those, from the panoptic PNG),
``sem_seg`` (from ``sem_seg_file_name``) and, for U-Net's boundary weighting,
``sem_seg_weights`` (from the panoptic PNG's thing segments).
"""
import copy
import logging
from typing import Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from ..capabilities import model_capabilities
from ..io import BitDepthRule, InputError, read_image, read_label
from ..structures.panoptic import rgb2id
from .augmentations import build_augmentations
from .targets import unet_weight_map

__all__ = ["Seg2DatasetMapper"]

logger = logging.getLogger(__name__)


class Seg2DatasetMapper:
    """Map a Detectron2 dataset dict to model inputs (see module docstring).

    The panoptic PNG is transformed as a 3-channel uint8 image so it takes exactly the same
    nearest-neighbour path as the semantic label, keeping the two pixel-aligned.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        instances: bool,
        instance_mask_format: str = "bitmask",
        num_classes: int = 0,
        ignore_label: int = 255,
        weight_map: bool = False,
        weight_map_w0: float = 10.0,
        weight_map_sigma: float = 5.0,
        bit_depth: Optional[BitDepthRule] = None,
        on_bad_sample: str = "error",
    ):
        """
        Args:
            is_train: keep targets (train) or drop them (test; evaluators read GT from files).
            augmentations: applied to image and every target alike.
            image_format: e.g. "BGR" (Detectron2's default) or "RGB".
            instances: build ``instances`` targets (models with an instance branch).
            instance_mask_format: "bitmask" or "polygon".
            num_classes: semantic classes; label values >= it (other than ``ignore_label``)
                are an error naming the file. 0 disables the check.
            ignore_label: the semantic void value.
            weight_map: add ``sem_seg_weights``, U-Net's class-balance + border map.
            weight_map_w0, weight_map_sigma: its w0 and sigma (pixels).
            bit_depth: how images with more than 8 bits per sample become 8-bit
                (``INPUT.SEG2.BIT_DEPTH``); the same rule the dataset check reports.
            on_bad_sample: ``DATASETS.SEG2.ON_BAD_SAMPLE``; in training, "skip" makes an
                image that cannot be decoded a logged skip (None; the loader counts it)
                instead of an error. At inference it is always an error.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.instances = instances
        self.instance_mask_format = instance_mask_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.weight_map = weight_map
        self.weight_map_w0 = weight_map_w0
        self.weight_map_sigma = weight_map_sigma
        self.bit_depth = bit_depth or BitDepthRule()
        self.on_bad_sample = on_bad_sample
        mode = "training" if is_train else "inference"
        logger.info(f"[Seg2DatasetMapper] augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "instances": model_capabilities(cfg).instances,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "weight_map": cfg.INPUT.SEG2.WEIGHT_MAP,
            "weight_map_w0": cfg.MODEL.SEG2.LOSS.UNET_W0,
            "weight_map_sigma": cfg.MODEL.SEG2.LOSS.UNET_SIGMA,
            "bit_depth": BitDepthRule.from_cfg(cfg),
            "on_bad_sample": cfg.DATASETS.SEG2.ON_BAD_SAMPLE,
        }

    def _read_sem_seg(self, path: str) -> np.ndarray:
        # Class ids, palette PNGs as their indices: the same reader as the evaluators'.
        sem = read_label(path)
        if self.num_classes:
            bad = ((sem >= self.num_classes) | (sem < 0)) & (sem != self.ignore_label)
            if bad.any():
                raise InputError(
                    f"{path}: label value(s) {sorted(np.unique(sem[bad]).tolist())[:5]} are not "
                    f"class ids 0..{self.num_classes - 1} (MODEL.SEM_SEG_HEAD.NUM_CLASSES="
                    f"{self.num_classes}) nor the ignore label {self.ignore_label}"
                )
        return sem

    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        try:
            image = read_image(d["file_name"], self.image_format, self.bit_depth)
        except InputError as e:
            if not (self.is_train and self.on_bad_sample == "skip"):
                raise
            logger.warning(f"[Seg2DatasetMapper] skipping an image: {e} (ON_BAD_SAMPLE skip)")
            return None
        utils.check_image_size(d, image)
        source_shape = image.shape[:2]
        sem = self._read_sem_seg(d["sem_seg_file_name"]) if "sem_seg_file_name" in d else None
        need_pan = self.is_train and "pan_seg_file_name" in d and (
            self.weight_map or (self.instances and "annotations" not in d)
        )
        pan_rgb = read_image(d["pan_seg_file_name"], "RGB") if need_pan else None

        aug_input = T.AugInput(image, sem_seg=sem)
        transforms = self.augmentations(aug_input)
        image, sem = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem is not None:
            d["sem_seg"] = torch.as_tensor(sem.astype(np.int64))

        if not self.is_train:
            d.pop("annotations", None)
            d.pop("sem_seg_file_name", None)
            return d

        pan_ids = rgb2id(transforms.apply_segmentation(pan_rgb)) if pan_rgb is not None else None
        if self.instances:
            if "annotations" in d:
                d["instances"] = self._instances_from_annotations(
                    d.pop("annotations"), transforms, image_shape, source_shape, d["file_name"]
                )
            elif pan_ids is not None:
                d["instances"] = self._instances_from_panoptic(
                    pan_ids, d["segments_info"], image_shape
                )
        if self.weight_map:
            d["sem_seg_weights"] = self._weight_map(d, pan_ids, sem)
        return d

    def _instances_from_annotations(
        self, annos, transforms, image_shape, source_shape, file_name: str = ""
    ) -> Instances:
        annos = [a for a in annos if a.get("iscrowd", 0) == 0]
        if self.instance_mask_format == "polygon" and any(
            isinstance(a.get("segmentation"), dict) for a in annos
        ):
            raise InputError(
                f"{file_name}: its instance masks are RLE (e.g. Cityscapes' instanceIds), "
                "which INPUT.MASK_FORMAT 'polygon' cannot hold: set INPUT.MASK_FORMAT bitmask"
            )
        if self.instance_mask_format == "bitmask" and annos and all(
            isinstance(a.get("segmentation"), (list, dict)) for a in annos
        ):
            return self._bitmask_instances(annos, transforms, image_shape, source_shape)
        if self.instance_mask_format == "bitmask":
            # Rasterise polygons before transforming: the masks are then moved exactly like the
            # semantic and panoptic PNGs, and a crop needs no polygon clipping (shapely).
            h, w = source_shape
            annos = [
                dict(a, segmentation=_rasterize(a["segmentation"], h, w))
                if isinstance(a.get("segmentation"), list)
                else a
                for a in annos
            ]
        annos = [utils.transform_instance_annotations(a, transforms, image_shape) for a in annos]
        inst = utils.annotations_to_instances(
            annos, image_shape, mask_format=self.instance_mask_format
        )
        if inst.has("gt_masks"):
            # Boxes of masks cut by a crop should shrink with them.
            inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
        return utils.filter_empty_instances(inst)

    @staticmethod
    def _bitmask_instances(annos, transforms, image_shape, source_shape) -> Instances:
        """Bitmask targets: polygons are rasterised before transforming, so the masks move
        exactly like the semantic and panoptic PNGs and a crop needs no polygon clipping.
        Eight masks travel as the bits of one uint8 plane (nearest-neighbour transforms
        never mix values, so this is the per-mask result; np.packbits would order the bits
        the same, slower across this memory layout); boxes are the masks' boxes
        (Detectron2's ``BitMasks.get_bounding_boxes``) and empty instances are dropped
        (its ``filter_empty_instances``)."""
        h, w = source_shape
        rles = []
        for a in annos:
            seg = a["segmentation"]
            if isinstance(seg, list):
                seg = mask_util.merge(mask_util.frPyObjects(seg, h, w))
            elif isinstance(seg["counts"], list):
                seg = mask_util.frPyObjects(seg, *seg["size"])
            rles.append(seg)
        masks = mask_util.decode(rles)  # (h, w, n), Fortran order
        n = masks.shape[2]
        if masks.shape[:2] != (h, w):
            raise InputError(f"RLE of size {list(masks.shape[:2])} for a {h}x{w} image")
        planes = np.zeros(((n + 7) // 8, h, w), np.uint8)  # mask k is bit 7 - k % 8 of plane k // 8
        for k in range(n):
            planes[k // 8] |= masks[:, :, k] << np.uint8(7 - k % 8)
        moved = np.stack([transforms.apply_segmentation(p) for p in planes])
        bits = np.empty((n,) + moved.shape[1:], np.bool_)  # (n, H, W)
        for k in range(n):
            np.not_equal(moved[k // 8] & np.uint8(1 << (7 - k % 8)), 0, out=bits[k])
        rows = np.unpackbits(np.bitwise_or.reduce(moved, axis=2), axis=0, count=n)  # (n, H)
        cols = np.unpackbits(np.bitwise_or.reduce(moved, axis=1), axis=0, count=n)  # (n, W)
        boxes = torch.zeros(n, 4, dtype=torch.float32)
        keep = []
        for i in range(n):
            ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
            if len(xs) and len(ys):
                boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
                keep.append(i)
        inst = Instances(image_shape)
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
        inst.gt_masks = BitMasks(torch.from_numpy(bits))
        return inst[torch.tensor(keep, dtype=torch.long)] if len(keep) < n else inst

    @staticmethod
    def _instances_from_panoptic(
        pan_ids: np.ndarray, segments: List[Dict], image_shape
    ) -> Instances:
        inst = Instances(image_shape)
        segs = [s for s in segments if s["isthing"] and not s.get("iscrowd", 0)]
        masks = [pan_ids == s["id"] for s in segs]
        keep = [i for i, m in enumerate(masks) if m.any()]
        inst.gt_classes = torch.tensor([segs[i]["category_id"] for i in keep], dtype=torch.int64)
        if keep:
            inst.gt_masks = BitMasks(torch.from_numpy(np.stack([masks[i] for i in keep])))
        else:
            inst.gt_masks = BitMasks(torch.zeros((0,) + tuple(image_shape), dtype=torch.bool))
        inst.gt_boxes = inst.gt_masks.get_bounding_boxes() if keep else Boxes(torch.zeros(0, 4))
        return inst

    def _weight_map(
        self, d: Dict, pan_ids: Optional[np.ndarray], sem: Optional[np.ndarray]
    ) -> torch.Tensor:
        if sem is None or pan_ids is None:
            raise InputError(
                f"{d['file_name']}: INPUT.SEG2.WEIGHT_MAP needs 'sem_seg_file_name' and "
                "'pan_seg_file_name' (instances) in the dataset dict"
            )
        instance_ids = np.zeros(pan_ids.shape, dtype=np.int32)
        things = [s for s in d["segments_info"] if s["isthing"] and not s.get("iscrowd", 0)]
        for k, s in enumerate(things, start=1):
            instance_ids[pan_ids == s["id"]] = k
        w = unet_weight_map(
            instance_ids,
            sem,
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
            w0=self.weight_map_w0,
            sigma=self.weight_map_sigma,
        )
        return torch.as_tensor(w, dtype=torch.float32)


def _rasterize(polygons, height: int, width: int) -> dict:
    """COCO polygons as one RLE mask (pycocotools)."""
    return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
