"""Class table of the embedded synthetic dataset: the single source the generator
(``datasets/prepare_synthetic.py``) and the dataset registration both read.

Things are countable shapes whose colour is random, so a model must learn shape;
stuff classes are textures with random colours, so it must learn texture. Category
ids are deliberately non-contiguous, as in COCO, and each class maps onto a real
Cityscapes label so the Cityscapes-style tree can be scored by cityscapesscripts.
"""
from typing import Dict, List

# Order = contiguous training id (things first, then stuff), as Detectron2's COCO panoptic
# metadata orders them: contiguous id i is both the semantic label and, for things, the
# instance class.
CATEGORIES: List[Dict] = [
    # id: COCO category id; cityscapes: Cityscapes label name; color: RGB for visualisation
    {"id": 3, "name": "circle", "isthing": 1, "color": [220, 20, 60], "cityscapes": "person"},
    {"id": 7, "name": "square", "isthing": 1, "color": [0, 0, 142], "cityscapes": "car"},
    {"id": 12, "name": "triangle", "isthing": 1, "color": [119, 11, 32], "cityscapes": "bicycle"},
    {"id": 20, "name": "stripes", "isthing": 0, "color": [128, 64, 128], "cityscapes": "road"},
    {"id": 21, "name": "checker", "isthing": 0, "color": [70, 70, 70], "cityscapes": "building"},
    {"id": 25, "name": "dots", "isthing": 0, "color": [107, 142, 35], "cityscapes": "vegetation"},
    {"id": 30, "name": "smooth", "isthing": 0, "color": [70, 130, 180], "cityscapes": "sky"},
]

IGNORE_LABEL = 255
SPLITS = ("train", "val")
# Folder name of the single "city" in the Cityscapes-style tree.
CITY = "synth"


def thing_categories() -> List[Dict]:
    return [c for c in CATEGORIES if c["isthing"]]


def stuff_categories() -> List[Dict]:
    return [c for c in CATEGORIES if not c["isthing"]]
