"""The one augmentation builder every seg2 mapper uses."""
from typing import List

from detectron2.config import CfgNode
from detectron2.data import transforms as T

from ..capabilities import model_capabilities


def build_augmentations(cfg: CfgNode, is_train: bool) -> List[T.Augmentation]:
    """Resize (+ crop + flip when training), from the core ``INPUT.*`` keys.

    Args:
        cfg: a config with ``add_seg2_config`` applied.
        is_train: training augmentations (random) or the deterministic test resize.

    Returns:
        list of Detectron2 augmentations.
    """
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(
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
