"""One writer per format of the synthetic dataset; each gets every scene and writes its files,
so the four formats are views of the same pixels.

- :class:`CocoInstancesWriter`: ``annotations/instances_<split>.json`` (polygons for
  unoccluded shapes, RLE otherwise, crowd regions, non-contiguous category ids);
- :class:`CocoPanopticWriter`: ``panoptic_<split>/*.png`` + ``annotations/panoptic_<split>.json``;
- :class:`SemanticWriter`: ``semantic_<split>/*.png`` (contiguous ids, 255 = void);
- :class:`CityscapesWriter`: a Cityscapes tree (``leftImg8bit``, ``gtFine`` label/instance/
  colour PNGs and polygons, panoptic ground truth made by cityscapesscripts).
"""
import contextlib
import io
import json
import os
import shutil
from typing import Dict, List

import numpy as np
from PIL import Image

from ...structures.panoptic import id2rgb
from .meta import CATEGORIES, CITY, IGNORE_LABEL
from .scenes import area_bbox, mask_polygons, mask_rle

__all__ = ["CocoInstancesWriter", "CocoPanopticWriter", "SemanticWriter", "CityscapesWriter"]

INFO = {"description": "seg2 synthetic shapes and textures", "version": "1.0", "year": 2024}


def write_compact_json(obj: Dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _coco_file(images: List[Dict], annotations: List[Dict], categories: List[Dict]) -> Dict:
    return {
        "info": INFO,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


class CocoInstancesWriter:
    """COCO instances: one annotation per kept object (things first in ``segments``)."""

    def __init__(self, out: str, split: str):
        self.path = os.path.join(out, "annotations", f"instances_{split}.json")
        self.annotations: List[Dict] = []
        self.n_crowd = 0

    def add(self, idx: int, stem: str, scene, pan: np.ndarray, segments: List[Dict], kept) -> None:
        for obj in kept:
            rle = mask_rle(obj.visible)
            area, bbox = area_bbox(rle)
            unoccluded = not obj.iscrowd and np.array_equal(obj.visible, obj.full)
            self.n_crowd += obj.iscrowd
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": idx,
                    "category_id": CATEGORIES[obj.cat]["id"],
                    "segmentation": obj.polygons if unoccluded else rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": obj.iscrowd,
                }
            )

    def finish(self, images: List[Dict]) -> None:
        cats = [
            {"id": c["id"], "name": c["name"], "supercategory": "shape"}
            for c in CATEGORIES
            if c["isthing"]
        ]
        write_compact_json(_coco_file(images, self.annotations, cats), self.path)


class CocoPanopticWriter:
    """COCO panoptic: one RGB-encoded id PNG per image and one JSON."""

    def __init__(self, out: str, split: str):
        self.folder = os.path.join(out, f"panoptic_{split}")
        self.path = os.path.join(out, "annotations", f"panoptic_{split}.json")
        os.makedirs(self.folder, exist_ok=True)
        self.annotations: List[Dict] = []

    def add(self, idx: int, stem: str, scene, pan: np.ndarray, segments: List[Dict], kept) -> None:
        Image.fromarray(id2rgb(pan)).save(os.path.join(self.folder, stem + ".png"))
        self.annotations.append(
            {
                "image_id": idx,
                "file_name": stem + ".png",
                "segments_info": [
                    {
                        "id": s["id"],
                        "category_id": CATEGORIES[s["cat"]]["id"],
                        "iscrowd": s["iscrowd"],
                        "bbox": s["bbox"],
                        "area": s["area"],
                    }
                    for s in segments
                ],
            }
        )

    def finish(self, images: List[Dict]) -> None:
        cats = [
            {
                "id": c["id"],
                "name": c["name"],
                "isthing": c["isthing"],
                "color": c["color"],
                "supercategory": "shape" if c["isthing"] else "texture",
            }
            for c in CATEGORIES
        ]
        write_compact_json(_coco_file(images, self.annotations, cats), self.path)


class SemanticWriter:
    """Semantic label PNGs over all classes (contiguous ids, 255 = void)."""

    def __init__(self, out: str, split: str):
        self.folder = os.path.join(out, f"semantic_{split}")
        os.makedirs(self.folder, exist_ok=True)

    @staticmethod
    def labels(pan_shape, segments: List[Dict]) -> np.ndarray:
        sem = np.full(pan_shape, IGNORE_LABEL, np.uint8)
        for s in segments:
            sem[s["mask"]] = s["cat"]
        return sem

    def add(self, idx: int, stem: str, scene, pan: np.ndarray, segments: List[Dict], kept) -> None:
        sem = self.labels(pan.shape, segments)
        Image.fromarray(sem, "L").save(os.path.join(self.folder, stem + ".png"))

    def finish(self, images: List[Dict]) -> None:
        pass


class CityscapesWriter:
    """A Cityscapes tree with Cityscapes' own label ids (``meta.CATEGORIES[i]["cityscapes"]``);
    things are numbered per class in drawing order, as ``json2instanceImg`` does."""

    def __init__(self, out: str, split: str):
        from cityscapesscripts.helpers.labels import name2label

        self.out, self.split = out, split
        self.img_dir = os.path.join(out, "cityscapes", "leftImg8bit", split, CITY)
        self.gt_dir = os.path.join(out, "cityscapes", "gtFine", split, CITY)
        for d in (self.img_dir, self.gt_dir):
            os.makedirs(d, exist_ok=True)
        self.labels = [name2label[c["cityscapes"]] for c in CATEGORIES]
        self.void = name2label["unlabeled"]
        self.lut_id = np.zeros(256, np.uint8)  # contiguous id -> Cityscapes id (void -> 0)
        self.lut_train = np.full(256, 255, np.uint8)
        self.lut_colour = np.zeros((256, 4), np.uint8)
        self.lut_colour[:, 3] = 255
        for i, lab in enumerate(self.labels):
            self.lut_id[i], self.lut_train[i] = lab.id, lab.trainId
            self.lut_colour[i, :3] = lab.color
        self.lut_id[IGNORE_LABEL], self.lut_colour[IGNORE_LABEL, :3] = self.void.id, self.void.color
        self.count = 0

    def add(self, idx: int, stem: str, scene, pan: np.ndarray, segments: List[Dict], kept) -> None:
        sem = SemanticWriter.labels(pan.shape, segments)
        cs_stem = f"{CITY}_000000_{idx:06d}"
        Image.fromarray(scene.image).save(os.path.join(self.img_dir, cs_stem + "_leftImg8bit.png"))
        inst = self.lut_id[sem].astype(np.uint16)
        counters: Dict[int, int] = {}
        objects_json = [
            {"label": self.labels[cat].name, "polygon": poly}
            for r, cat in enumerate(scene.region_cats)
            for poly in mask_polygons(scene.regions == r)
        ]
        objects_json += [{"label": self.void.name, "polygon": p} for p in mask_polygons(scene.void)]
        for obj in scene.objects:
            lab = self.labels[obj.cat]
            if not obj.kept:
                name, polys = self.void.name, mask_polygons(obj.full)
            elif obj.iscrowd:
                name, polys = lab.name + "group", mask_polygons(obj.full)
            else:
                k = counters.get(lab.id, 0)
                counters[lab.id] = k + 1
                inst[obj.visible] = lab.id * 1000 + k
                # One polygon per instance, or json2instanceImg would count it twice.
                name, polys = lab.name, [max(mask_polygons(obj.full), key=len)]
            objects_json += [{"label": name, "polygon": p} for p in polys]
        gt = os.path.join(self.gt_dir, cs_stem + "_gtFine_")
        Image.fromarray(self.lut_id[sem], "L").save(gt + "labelIds.png")
        Image.fromarray(self.lut_train[sem], "L").save(gt + "labelTrainIds.png")
        Image.fromarray(inst, "I;16").save(gt + "instanceIds.png")
        Image.fromarray(self.lut_colour[sem], "RGBA").save(gt + "color.png")
        size = sem.shape
        write_compact_json(
            {"imgHeight": size[0], "imgWidth": size[1], "objects": objects_json},
            gt + "polygons.json",
        )
        self.count += 1

    def finish(self, images: List[Dict]) -> None:
        if self.count:
            # The Cityscapes panoptic files Detectron2's cityscapes_panoptic loader reads, made
            # by cityscapesscripts itself (its progress output is silenced).
            from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

            with contextlib.redirect_stdout(io.StringIO()):
                gt_fine = os.path.join(self.out, "cityscapes", "gtFine")
                convert2panoptic(gt_fine, setNames=[self.split])


def clear_split(out: str, split: str) -> None:
    """Regenerating in place must not leave files of a larger earlier run behind."""
    for d in (
        os.path.join(out, "images", split),
        os.path.join(out, f"panoptic_{split}"),
        os.path.join(out, f"semantic_{split}"),
        os.path.join(out, "cityscapes", "leftImg8bit", split),
        os.path.join(out, "cityscapes", "gtFine", split),
        os.path.join(out, "cityscapes", "gtFine", f"cityscapes_panoptic_{split}"),
    ):
        if os.path.isdir(d):
            shutil.rmtree(d)
