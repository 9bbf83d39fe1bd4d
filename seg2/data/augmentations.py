"""The one augmentation builder every seg2 mapper uses."""
from typing import List

from detectron2.config import CfgNode
from detectron2.data import transforms as T

from ..capabilities import model_capabilities

__all__ = ["build_augmentations", "ResizeShortestEdge"]


class ResizeShortestEdge(T.ResizeShortestEdge):
    """Detectron2's ``ResizeShortestEdge`` that skips resizes to the same size: it draws the
    same random size (same RNG use), but a no-op resize would still convert every image and
    mask through PIL (about a third of the mapper's time on 128 px data already at size)."""

    def get_transform(self, image):
        t = super().get_transform(image)
        if isinstance(t, T.ResizeTransform) and (t.h, t.w) == (t.new_h, t.new_w):
            return T.NoOpTransform()
        return t


def build_augmentations(cfg: CfgNode, is_train: bool) -> List[T.Augmentation]:
    """Resize (+ crop + flip when training), from the core ``INPUT.*`` keys.

    Args:
        cfg: a config with ``add_seg2_config`` applied.
        is_train: training augmentations (random) or the deterministic test resize.

    Returns:
        list of Detectron2 augmentations.
    """
    if not is_train:
        return [ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs: List[T.Augmentation] = [
        ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        if model_capabilities(cfg).category_area_crop:
            # Keeps a crop from being nearly all one class (Detectron2's DeepLab recipe).
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE,
                    cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.SEG2.CROP_SINGLE_CATEGORY_MAX_AREA,
                    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                )
            )
        else:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    return augs
