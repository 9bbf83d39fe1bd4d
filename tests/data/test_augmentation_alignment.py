"""Seg2DatasetMapper keeps image, semantic labels, panoptic PNG, instance masks (from COCO
polygons, rasterised before transforming, and from the panoptic PNG) and the U-Net weight map aligned under flip, resize and
the category-area crop.

The expectation never goes through a transform: the scene is drawn from rectangles, and the
flipped or 2x-resized result must equal the scene drawn mirrored or at twice the scale;
for the random crop, each image pixel encodes its source coordinates (R = x, G = y), so the
crop window is read off the output image and every target must equal the drawn scene's
window."""

import os
import tempfile
import unittest

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from seg2.data.dataset_mapper import Seg2DatasetMapper
from seg2.data.targets import unet_weight_map
from seg2.structures.panoptic import id2rgb

H, W, K = 40, 50, 4
# (segment id, class, contiguous thing id or None, x0, y0, x1, y1) inclusive pixel rectangles
SHAPES = [
    (10, 2, 0, 5, 10, 19, 24),
    (11, 2, 0, 20, 12, 31, 27),  # touches the first: the weight map's border term sits between
    (12, 3, 1, 35, 20, 45, 35),
]
BAND, BACKGROUND = 1, 2  # stuff segments: rows 0-7 are class 1, the rest class 0


def draw(scale: int = 1, mirror: bool = False):
    """(image, semantic, panoptic ids, instance ids) of the scene, drawn directly."""
    h, w = H * scale, W * scale
    sem = np.zeros((h, w), np.uint8)
    pan = np.full((h, w), BACKGROUND, np.int64)
    sem[: 8 * scale], pan[: 8 * scale] = 1, BAND
    inst = np.zeros((h, w), np.int32)
    for k, (sid, cls, _, x0, y0, x1, y1) in enumerate(SHAPES, start=1):
        xs = slice(x0 * scale, (x1 + 1) * scale)
        ys = slice(y0 * scale, (y1 + 1) * scale)
        sem[ys, xs], pan[ys, xs], inst[ys, xs] = cls, sid, k
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx, yy, 60 * sem.astype(np.int64)], axis=-1).astype(np.uint8)
    if mirror:
        sem, pan, inst = sem[:, ::-1], pan[:, ::-1], inst[:, ::-1]
        image = np.stack([w - 1 - xx, yy, 60 * sem.astype(np.int64)], axis=-1).astype(np.uint8)
    return image, sem, pan, inst


def write_record(folder: str, with_annotations: bool):
    image, sem, pan, _ = draw()
    paths = {k: os.path.join(folder, f"{k}.png") for k in ("image", "sem", "pan")}
    Image.fromarray(image).save(paths["image"])
    Image.fromarray(sem).save(paths["sem"])
    Image.fromarray(id2rgb(pan)).save(paths["pan"])
    segments = [
        {"id": BAND, "category_id": 1, "isthing": False, "iscrowd": 0},
        {"id": BACKGROUND, "category_id": 0, "isthing": False, "iscrowd": 0},
    ] + [
        {"id": sid, "category_id": thing, "isthing": True, "iscrowd": 0}
        for sid, _, thing, *_ in SHAPES
    ]
    record = {
        "file_name": paths["image"],
        "height": H,
        "width": W,
        "image_id": 1,
        "sem_seg_file_name": paths["sem"],
        "pan_seg_file_name": paths["pan"],
        "segments_info": segments,
    }
    if with_annotations:
        record["annotations"] = [
            {
                "bbox": [x0, y0, x1 + 1 - x0, y1 + 1 - y0],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": thing,
                "iscrowd": 0,
                "segmentation": [[x0, y0, x1 + 1, y0, x1 + 1, y1 + 1, x0, y1 + 1]],
            }
            for _, _, thing, x0, y0, x1, y1 in SHAPES
        ]
    return record


def mapper(augs):
    return Seg2DatasetMapper(
        True,
        augmentations=augs,
        image_format="RGB",
        instances=True,
        num_classes=K,
        ignore_label=255,
        weight_map=True,
        weight_map_w0=10.0,
        weight_map_sigma=5.0,
    )


class TestAlignment(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-align-")
        cls.rec_ann = write_record(cls.tmp, True)
        cls.rec_pan = {k: v for k, v in cls.rec_ann.items() if k != "annotations"}

    def check(self, out, image, sem, inst, image_exact=True):
        if image_exact:
            np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), image)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), sem)
        masks = out["instances"].gt_masks.tensor.numpy()
        classes = out["instances"].gt_classes.tolist()
        expected = {k: inst == k for k in np.unique(inst) if k}
        self.assertEqual(len(masks), len(expected))
        for m, cls in zip(masks, classes):
            k = int(np.bincount(inst[m]).argmax())  # the drawn instance under this mask
            self.assertEqual(cls, SHAPES[k - 1][2])
            np.testing.assert_array_equal(m, expected[k])
        boxes = out["instances"].gt_boxes.tensor.numpy()
        for m, b in zip(masks, boxes):
            ys, xs = np.nonzero(m)
            np.testing.assert_allclose(b, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        ref_w = unet_weight_map(inst, sem, num_classes=K, ignore_label=255, w0=10.0, sigma=5.0)
        np.testing.assert_allclose(out["sem_seg_weights"].numpy(), ref_w, rtol=1e-6, atol=1e-6)

    def test_flip(self):
        image, sem, _, inst = draw(mirror=True)
        for rec in (self.rec_ann, self.rec_pan):
            out = mapper([T.RandomFlip(prob=1.0, horizontal=True)])(rec)
            self.check(out, image, sem, inst)

    def test_resize_2x(self):
        image, sem, _, inst = draw(scale=2)
        for rec in (self.rec_ann, self.rec_pan):
            out = mapper([T.ResizeShortestEdge(2 * H, 4 * W, "choice")])(rec)
            self.assertEqual(tuple(out["image"].shape), (3, 2 * H, 2 * W))
            self.check(out, image, sem, inst, image_exact=False)

    def test_category_area_crop(self):
        image, sem, _, inst = draw()
        crop = T.RandomCrop_CategoryAreaConstraint("absolute", (24, 30), 0.6, 255)
        origins = set()
        for seed in range(6):
            torch.manual_seed(seed)
            np.random.seed(seed)
            for rec in (self.rec_ann, self.rec_pan):
                out = mapper([crop])(rec)
                got = out["image"].permute(1, 2, 0).numpy()
                x0, y0 = int(got[0, 0, 0]), int(got[0, 0, 1])  # the window, read off the pixels
                origins.add((x0, y0))
                win = (slice(y0, y0 + 24), slice(x0, x0 + 30))
                self.assertLessEqual(
                    np.bincount(sem[win].ravel()).max() / sem[win].size, 0.6 + 1e-9
                )
                sub_inst = inst[win]
                present = [k for k in np.unique(sub_inst) if k]
                relabel = np.zeros(len(SHAPES) + 1, np.int32)
                relabel[present] = present
                self.check(out, image[win], sem[win], relabel[sub_inst])
        self.assertGreater(len(origins), 1)  # the crops moved


if __name__ == "__main__":
    unittest.main()
