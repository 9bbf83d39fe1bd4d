"""Validation at scale: results kept between starts (an unchanged dataset is not checked
again, a changed file alone is, and its error is still reported), box checks that tolerate
what training tolerates, image headers read as a full decode would, one parse into
Detectron2's records, no copies of a split, and the bitmask mapper equal to the per-mask
path. References: pycocotools, PIL, Detectron2's own loader and transforms."""

import copy
import gc
import json
import os
import random
import shutil
import tempfile
import unittest
from unittest import mock

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode
from PIL import Image

from seg2.data import check_instances, parallel
from seg2.data.check_instances import BOX_NOTE, SHORT_POLYGON_NOTE, check_coco_instances_json
from seg2.data.coco import load_coco_instances, read_coco_categories
from seg2.data.dataset_mapper import Seg2DatasetMapper
from seg2.data.validate import (
    ValidationReport,
    configure_validation,
    last_report,
    validate_datasets,
)
from seg2.io import BitDepthRule, InputError, load_image, read_image_header
from seg2_testing import get_seg2_cfg, tiny_synthetic_root

_COUNT = [0]


def unique(prefix: str) -> str:
    _COUNT[0] += 1
    return f"{prefix}_{os.getpid()}_{_COUNT[0]}"


class Case(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="seg2-scale-")
        self.root = os.path.join(self.tmp, "synthetic")
        shutil.copytree(tiny_synthetic_root(), self.root)
        self.cache = os.path.join(self.tmp, "cache")
        configure_validation(
            on_bad_sample="error", check_files=False, bit_depth=BitDepthRule(), cache_dir=self.cache
        )
        self.ann = f"{self.root}/annotations/instances_val.json"
        self.images = f"{self.root}/images/val"
        self.data = json.load(open(self.ann))

    def tearDown(self):
        configure_validation(on_bad_sample="error", cache_dir="")

    def write(self, data, name="ann.json") -> str:
        path = os.path.join(self.root, "annotations", name)
        with open(path, "w") as f:
            json.dump(data, f)
        return path


class TestCache(Case):
    def load(self, path, name):
        load_coco_instances(path, self.images, name)
        return last_report(name)

    def test_later_start_checks_nothing_and_a_changed_file_alone(self):
        name = unique("cache")
        n = len({im["file_name"] for im in self.data["images"]})
        first = self.load(self.ann, name).cache
        self.assertTrue(first.json_checked)
        self.assertEqual((first.files_checked, first.files_reused), (n, 0))
        later = self.load(self.ann, name).cache
        self.assertFalse(later.json_checked)
        self.assertEqual((later.files_checked, later.files_reused), (0, n))

        # one image rewritten, truncated: only it is read again, and its error is reported
        im = self.data["images"][1]
        path = os.path.join(self.images, im["file_name"])
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[: len(raw) // 2])
        for attempt in ("changed", "unchanged since"):
            with self.assertRaises(InputError, msg=attempt) as ctx:
                load_coco_instances(self.ann, self.images, name)
            self.assertIn(f"{path}: image {im['id']}: field 'file_name'", str(ctx.exception))
            self.assertIn("truncated", str(ctx.exception))
            report = last_report(name)
            expected = 1 if attempt == "changed" else 0
            self.assertEqual(report.cache.files_checked, expected, attempt)
            self.assertFalse(report.cache.json_checked)

    def test_changed_json_is_checked_again_its_files_are_not(self):
        name = unique("json")
        self.load(self.ann, name)
        self.data["annotations"][0]["category_id"] = 99
        self.write(self.data, "instances_val.json")
        with self.assertRaisesRegex(InputError, "field 'category_id' = 99"):
            load_coco_instances(self.ann, self.images, name)
        report = last_report(name)
        self.assertTrue(report.cache.json_checked)
        self.assertEqual(report.cache.files_checked, 0)
        # and the problem found is replayed from the cache on the next start
        with self.assertRaisesRegex(InputError, "field 'category_id' = 99"):
            load_coco_instances(self.ann, self.images, name)
        self.assertFalse(last_report(name).cache.json_checked)

    def test_size_in_json_still_compared_with_a_cached_header(self):
        name = unique("hw")
        self.load(self.ann, name)
        self.data["images"][0]["height"] += 3
        with self.assertRaisesRegex(InputError, "field 'height/width'"):
            load_coco_instances(self.write(self.data), self.images, name)


class TestBoxes(Case):
    def test_tiny_spiky_polygon_is_a_note_not_an_error(self):
        """A 3x3 px object with a thin spike: its vertex extent (= its JSON bbox, as in
        COCO) is far larger than the pixels pycocotools rasterises, which training boxes:
        a note with a count, not an error."""
        a = self.data["annotations"][0]
        im = next(i for i in self.data["images"] if i["id"] == a["image_id"])
        spike = [10, 10, 13, 10, 13, 13, 11.8, 13, 11.75, 25, 11.7, 13, 10, 13]
        xs, ys = spike[0::2], spike[1::2]
        a["segmentation"] = [spike]
        a["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        a["area"] = 9.6
        rle = mask_util.merge(mask_util.frPyObjects([spike], im["height"], im["width"]))
        mbox = mask_util.toBbox(rle).tolist()
        off = max(abs(u - v) for u, v in zip(
            (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]),
            (mbox[0], mbox[1], mbox[0] + mbox[2], mbox[1] + mbox[3]),
        ))
        self.assertGreater(off, max(3.0, 0.5 * max(a["bbox"][2:])))  # an error by mask boxes
        name = unique("spike")
        load_coco_instances(self.write(self.data), self.images, name)
        report = last_report(name)
        self.assertTrue(report.ok, report.format())
        self.assertIn(f"annotation {a['id']}", report.notes[BOX_NOTE])

    def test_box_off_its_polygon_and_empty_mask_are_errors(self):
        anns = self.data["annotations"]
        x, y, w, h = anns[0]["bbox"]
        anns[0]["bbox"] = [x + 30, y, w, h]
        anns[1]["segmentation"] = [[5.1, 5.1, 5.3, 5.1, 5.2, 5.4]]  # no pixel centre inside
        anns[1]["bbox"] = [5.1, 5.1, 0.2, 0.3]
        anns[1]["area"] = 2.0
        with self.assertRaises(InputError) as ctx:
            load_coco_instances(self.write(self.data), self.images, unique("box"))
        msg = str(ctx.exception)
        self.assertRegex(msg, rf"annotation {anns[0]['id']}: field 'bbox' = .*disagrees with the mask's box")
        self.assertIn(f"annotation {anns[1]['id']}: field 'segmentation' = '<empty mask>'", msg)


class TestPolygons(Case):
    def test_short_polygon_beside_valid_ones_is_a_note(self):
        """Detectron2's loader drops a polygon of fewer than 3 points and keeps the
        annotation's others: a note; alone, the instance would vanish: a problem."""
        anns = self.data["annotations"]
        extra = next(a for a in anns if isinstance(a["segmentation"], list))
        extra["segmentation"] = extra["segmentation"] + [[1.0, 2.0, 3.0, 4.0]]
        name = unique("short")
        dicts = load_coco_instances(self.write(self.data), self.images, name)
        report = last_report(name)
        self.assertTrue(report.ok, report.format())
        self.assertEqual(report.notes[SHORT_POLYGON_NOTE], [f"annotation {extra['id']}"])
        ref = load_coco_json(self.write(self.data), self.images, unique("ref"))
        self.assertEqual(dicts, ref)  # the same polygons kept as Detectron2 keeps
        other = next(a for a in anns if isinstance(a["segmentation"], list) and a is not extra)
        other["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]
        with self.assertRaisesRegex(InputError, "a polygon needs at least 3 points"):
            load_coco_instances(self.write(self.data), self.images, unique("short"))


class TestChunks(Case):
    """The annotation check over the cores: the same problems and notes whether the file is
    checked in one piece or in chunks, and the same order whether the chunks run here or in
    forked processes."""

    def _check(self, data, chunk, workers):
        with mock.patch.object(check_instances, "CHUNK", chunk), mock.patch.object(
            parallel, "check_workers", lambda: workers
        ):
            report = ValidationReport("chunks")
            check_coco_instances_json(data, "ann.json", report)
        return [str(p) for p in report.problems], dict(report.notes)

    def test_chunks_find_what_one_pass_finds(self):
        anns = self.data["annotations"]
        polygons = [a for a in anns if isinstance(a["segmentation"], list)]
        self.assertGreater(len(anns), 12)
        anns[1]["category_id"] = 99
        x, y, w, h = polygons[2]["bbox"]
        polygons[2]["bbox"] = [x + 30, y, w, h]
        polygons[-1]["segmentation"] = polygons[-1]["segmentation"][0]  # a flat list: a note
        polygons[-3]["segmentation"] = polygons[-3]["segmentation"] + [[1.0, 2.0, 3.0, 4.0]]
        anns[-2]["iscrowd"] = 3
        problems, notes = self._check(self.data, 10**9, 1)
        self.assertEqual(len(problems), 3, problems)
        self.assertEqual(sum(map(len, notes.values())), 2, notes)
        chunked = self._check(self.data, 5, 1)
        forked = self._check(self.data, 5, 2)
        self.assertEqual(sorted(chunked[0]), sorted(problems))
        self.assertEqual({k: sorted(v) for k, v in chunked[1].items()}, notes)
        self.assertEqual(forked, chunked)

    def test_map_chunks_forks_and_keeps_order(self):
        with mock.patch.object(parallel, "check_workers", lambda: 2):
            out = parallel.map_chunks(lambda job, lo, hi: (job, lo, hi, os.getpid()), "j", 7, 3)
        self.assertEqual([o[:3] for o in out], [("j", 0, 3), ("j", 3, 6), ("j", 6, 7)])
        self.assertNotIn(os.getpid(), [o[3] for o in out])
        # a worker's collections skip the objects it inherited (they are frozen)
        with mock.patch.object(parallel, "check_workers", lambda: 2):
            frozen = parallel.map_chunks(lambda job, lo, hi: gc.get_freeze_count(), None, 4, 2)
        self.assertTrue(all(n > 10_000 for n in frozen), frozen)
        self.assertEqual(gc.get_freeze_count(), 0)  # not this process's
        with mock.patch.object(parallel, "check_workers", lambda: 1):
            out = parallel.map_chunks(lambda job, lo, hi: os.getpid(), None, 7, 3)
        self.assertEqual(out, [os.getpid()] * 3)


class TestOneParse(Case):
    def test_records_equal_detectron2s_loader(self):
        name = unique("recs")
        ours = load_coco_instances(self.ann, self.images, name)
        ref = load_coco_json(self.ann, self.images, unique("ref"))
        self.assertEqual(ours, ref)
        cats = json.load(open(self.ann))["categories"]
        self.assertEqual(read_coco_categories(self.ann), cats)
        self.assertEqual(
            MetadataCatalog.get(name).thing_classes, [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
        )

    def test_json_parsed_once(self):
        import seg2.data.coco as coco

        with mock.patch.object(coco, "read_json", wraps=coco.read_json) as read:
            load_coco_instances(self.ann, self.images, unique("once"))
        self.assertEqual(read.call_count, 1)


class TestNoCopies(Case):
    def test_validated_split_is_handed_over_not_copied(self):
        name = unique("nocopy")
        made = []

        def loader():
            made.append(load_coco_instances(self.ann, self.images, name))
            return made[-1]

        DatasetCatalog.register(name, loader)
        cfg = get_seg2_cfg()
        cfg.DATASETS.SEG2.VALIDATION_CACHE_DIR = self.cache
        with mock.patch.object(copy, "deepcopy", side_effect=AssertionError("deepcopy")):
            validate_datasets(cfg, [name])
            first = DatasetCatalog.get(name)
        self.assertIs(first, made[0])
        again = DatasetCatalog.get(name)  # loads again, the checks replayed from the cache
        self.assertEqual(again, first)
        self.assertFalse(last_report(name).cache.json_checked)

    def test_sampler_factory_keeps_no_dataset(self):
        from seg2.engine.resume import build_sampler_factory

        cfg = get_seg2_cfg()
        dataset = load_coco_json(self.ann, self.images, unique("samp"))
        for sampler in ("TrainingSampler", "RepeatFactorTrainingSampler"):
            cfg.DATALOADER.SAMPLER_TRAIN = sampler
            make = build_sampler_factory(cfg, dataset)
            cells = [c.cell_contents for c in (make.__closure__ or ())]
            self.assertFalse(any(c is dataset for c in cells), sampler)
            self.assertEqual(len(list(zip(range(5), iter(make(0))))), 5)


class TestImageHeaders(unittest.TestCase):
    def test_header_answers_as_a_full_decode(self):
        tmp = tempfile.mkdtemp(prefix="seg2-hdr-")
        rgb = (np.arange(6 * 4 * 3).reshape(6, 4, 3) * 7 % 256).astype(np.uint8)
        cases = {
            "rgb.jpg": Image.fromarray(rgb),
            "gray.png": Image.fromarray(rgb[:, :, 0]),
            "pal.png": Image.fromarray(rgb).convert("P"),
            "rgba.png": Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])),
            "u16.png": Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 200)),
        }
        for name, img in cases.items():
            img.save(os.path.join(tmp, name))
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(rgb).save(os.path.join(tmp, "exif.jpg"), exif=exif)
        raw = open(os.path.join(tmp, "rgb.jpg"), "rb").read()
        open(os.path.join(tmp, "cut.jpg"), "wb").write(raw[: len(raw) - 40])
        raw = open(os.path.join(tmp, "gray.png"), "rb").read()
        open(os.path.join(tmp, "cut.png"), "wb").write(raw[: len(raw) // 2])
        for name in sorted(os.listdir(tmp)):
            path = os.path.join(tmp, name)
            try:
                img, notes = load_image(path)
                full = ((img.height, img.width), notes)
            except InputError as e:
                full = str(e)
            try:
                header = read_image_header(path)
            except InputError as e:
                header = str(e)
            self.assertEqual(header, full, name)
        self.assertEqual(read_image_header(os.path.join(tmp, "exif.jpg"))[0], (4, 6))


class TestMapper(unittest.TestCase):
    def test_bitmask_targets_equal_the_per_mask_path(self):
        """Masks moved eight to a byte equal Detectron2's one-mask-at-a-time transform,
        boxes its BitMasks boxes, empty instances dropped as filter_empty_instances does."""
        rng = np.random.default_rng(0)
        h, w = 120, 160
        annos = []
        for k in range(11):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 40)
            a = np.sort(rng.uniform(0, 2 * np.pi, 12))
            poly = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1).ravel().tolist()
            annos.append(
                {"segmentation": [poly], "bbox": [0, 0, 1, 1], "bbox_mode": BoxMode.XYWH_ABS,
                 "category_id": k, "iscrowd": 0}
            )
        crowdless = copy.deepcopy(annos)
        mapper = Seg2DatasetMapper(
            is_train=True, augmentations=[], image_format="BGR", instances=True
        )
        augs = [T.RandomCrop("absolute", (70, 90)), T.ResizeShortestEdge((100,), 300, "choice"), T.RandomFlip()]
        for seed in range(4):
            random.seed(seed)
            np.random.seed(seed)
            aug_input = T.AugInput(np.zeros((h, w, 3), np.uint8))
            transforms = T.AugmentationList(augs)(aug_input)
            shape = aug_input.image.shape[:2]
            got = mapper._instances_from_annotations(copy.deepcopy(crowdless), transforms, shape, (h, w))
            ref_annos = [
                utils.transform_instance_annotations(
                    dict(a, segmentation=mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))),
                    transforms,
                    shape,
                )
                for a in copy.deepcopy(crowdless)
            ]
            ref = utils.annotations_to_instances(ref_annos, shape, mask_format="bitmask")
            ref.gt_boxes = ref.gt_masks.get_bounding_boxes()
            ref = utils.filter_empty_instances(ref)
            self.assertEqual(len(got), len(ref))
            self.assertTrue(torch.equal(got.gt_masks.tensor, ref.gt_masks.tensor))
            self.assertTrue(torch.equal(got.gt_boxes.tensor, ref.gt_boxes.tensor))
            self.assertTrue(torch.equal(got.gt_classes, ref.gt_classes))

    def test_undecodable_image_skipped_or_refused_by_policy(self):
        tmp = tempfile.mkdtemp(prefix="seg2-bad-")
        path = os.path.join(tmp, "bad.jpg")
        open(path, "wb").write(b"\xff\xd8 not really a jpeg \xff\xd9")
        d = {"file_name": path, "height": 4, "width": 4, "image_id": 1, "annotations": []}
        kw = dict(augmentations=[], image_format="BGR", instances=True)
        with self.assertLogs("seg2.data.dataset_mapper", "WARNING") as logs:
            self.assertIsNone(Seg2DatasetMapper(is_train=True, on_bad_sample="skip", **kw)(d))
        self.assertIn("bad.jpg", "\n".join(logs.output))
        with self.assertRaisesRegex(InputError, "bad.jpg"):
            Seg2DatasetMapper(is_train=True, on_bad_sample="error", **kw)(d)
        with self.assertRaisesRegex(InputError, "bad.jpg"):  # never at inference
            Seg2DatasetMapper(is_train=False, on_bad_sample="skip", **kw)(d)


if __name__ == "__main__":
    unittest.main()
