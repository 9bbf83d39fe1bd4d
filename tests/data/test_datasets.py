"""Dataset registration, id mapping, user data by path, and clear errors on bad input."""
import json
import os
import shutil
import tempfile
import unittest

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools.coco import COCO

from seg2.data import Seg2DatasetMapper, register_from_config, register_synthetic
from seg2.data.datasets import load_coco_instances, register_coco_panoptic
from seg2.io import InputError
from seg2_testing import get_seg2_cfg, tiny_synthetic_root


def _unique(prefix):
    return f"{prefix}_{len(DatasetCatalog.list())}"


class TestSyntheticRegistration(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tiny_synthetic_root()
        cls.prefix = _unique("tsyn")
        register_synthetic(cls.root, prefix=cls.prefix)

    def test_instances_ids_map_to_contiguous(self):
        meta = MetadataCatalog.get(f"{self.prefix}_train")
        self.assertEqual(meta.thing_dataset_id_to_contiguous_id, {3: 0, 7: 1, 12: 2})
        self.assertEqual(meta.thing_classes, ["circle", "square", "triangle"])
        self.assertEqual(meta.evaluator_type, "coco")
        dicts = DatasetCatalog.get(f"{self.prefix}_train")
        coco = COCO(meta.json_file)
        self.assertEqual(len(dicts), len(coco.getImgIds()))
        inverse = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
        for d in dicts:
            original = sorted(a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=d["image_id"])))
            mapped = sorted(inverse[a["category_id"]] for a in d["annotations"])
            self.assertEqual(mapped, original)

    def test_panoptic_dicts(self):
        name = f"{self.prefix}_val_panoptic"
        meta = MetadataCatalog.get(name)
        self.assertEqual(meta.evaluator_type, "coco_panoptic_seg")
        self.assertEqual(len(meta.stuff_classes), 7)
        self.assertEqual(meta.stuff_classes[:3], meta.thing_classes)
        for d in DatasetCatalog.get(name):
            self.assertTrue(os.path.isfile(d["sem_seg_file_name"]))
            self.assertIn("annotations", d)
            for s in d["segments_info"]:
                self.assertEqual(s["isthing"], s["category_id"] < 3)
                self.assertLess(s["category_id"], 7)

    def test_panoptic_separated_semantic_convention(self):
        """PanopticFPN's targets: things -> 0, stuff -> 1..4, void 255; checked against the
        generator's all-classes PNGs remapped by hand."""
        name = f"{self.prefix}_val_panoptic_separated"
        meta = MetadataCatalog.get(name)
        self.assertEqual(meta.stuff_classes, ["things", "stripes", "checker", "dots", "smooth"])
        self.assertEqual(meta.stuff_dataset_id_to_contiguous_id, {20: 1, 21: 2, 25: 3, 30: 4})
        remap = np.array([0, 0, 0, 1, 2, 3, 4] + [255] * 249, dtype=np.uint8)
        for d in DatasetCatalog.get(name):
            derived = np.asarray(Image.open(d["sem_seg_file_name"]))
            reference = np.asarray(Image.open(f"{self.root}/semantic_val/" + os.path.basename(d["pan_seg_file_name"])))
            np.testing.assert_array_equal(derived, remap[reference])
            for s in d["segments_info"]:
                self.assertLess(s["category_id"], 3 if s["isthing"] else 5)

    def test_semantic_dicts(self):
        dicts = DatasetCatalog.get(f"{self.prefix}_val_sem")
        self.assertEqual(MetadataCatalog.get(f"{self.prefix}_val_sem").ignore_label, 255)
        self.assertTrue(all(os.path.isfile(d["sem_seg_file_name"]) for d in dicts))

    def test_mapper_instances_from_panoptic_match_annotations(self):
        """Instances built from the panoptic PNG equal those decoded from the COCO JSON."""
        cfg = get_seg2_cfg("Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml")
        cfg.INPUT.RANDOM_FLIP = "none"
        mapper = Seg2DatasetMapper(cfg, True)
        record = DatasetCatalog.get(f"{self.prefix}_train_panoptic")[0]
        from_json = mapper(record)["instances"]
        from_png = mapper({k: v for k, v in record.items() if k != "annotations"})["instances"]
        self.assertGreater(len(from_json), 0)
        order_j = np.lexsort(from_json.gt_boxes.tensor.numpy().T)
        order_p = np.lexsort(from_png.gt_boxes.tensor.numpy().T)
        np.testing.assert_array_equal(
            from_json.gt_classes.numpy()[order_j], from_png.gt_classes.numpy()[order_p]
        )
        np.testing.assert_array_equal(
            from_json.gt_masks.tensor.numpy()[order_j], from_png.gt_masks.tensor.numpy()[order_p]
        )


class TestUserData(unittest.TestCase):
    """User data registered by path through config keys only."""

    def setUp(self):
        self.root = tiny_synthetic_root()
        self.tmp = tempfile.mkdtemp()

    def test_coco_instances_by_config(self):
        cfg = get_seg2_cfg()
        name = _unique("mine")
        cfg.DATASETS.SEG2.COCO_INSTANCES = [
            [name, f"{self.root}/annotations/instances_val.json", f"{self.root}/images/val"]
        ]
        register_from_config(cfg)
        register_from_config(cfg)  # idempotent
        self.assertEqual(MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id, {3: 0, 7: 1, 12: 2})
        self.assertGreater(len(DatasetCatalog.get(name)), 0)

    def test_coco_panoptic_by_config_derives_semantic_once(self):
        """Semantic targets derived from the panoptic PNGs equal the generator's own PNGs."""
        pan_root = os.path.join(self.tmp, "panoptic_val")
        shutil.copytree(f"{self.root}/panoptic_val", pan_root)
        cfg = get_seg2_cfg()
        name = _unique("mine_pan")
        cfg.DATASETS.SEG2.COCO_PANOPTIC = [
            [name, f"{self.root}/images/val", pan_root, f"{self.root}/annotations/panoptic_val.json"]
        ]
        register_from_config(cfg)
        dicts = DatasetCatalog.get(name)
        self.assertNotIn("annotations", dicts[0])
        for d in dicts:
            derived = np.asarray(Image.open(d["sem_seg_file_name"]))
            reference = np.asarray(Image.open(f"{self.root}/semantic_val/" + os.path.basename(d["pan_seg_file_name"])))
            np.testing.assert_array_equal(derived, reference)
        mtime = os.path.getmtime(dicts[0]["sem_seg_file_name"])
        DatasetCatalog.get(name)  # cached: not rewritten
        self.assertEqual(os.path.getmtime(dicts[0]["sem_seg_file_name"]), mtime)

    def test_bad_config_entry(self):
        cfg = get_seg2_cfg()
        cfg.DATASETS.SEG2.COCO_INSTANCES = [["only_a_name"]]
        with self.assertRaisesRegex(InputError, "DATASETS.SEG2.COCO_INSTANCES"):
            register_from_config(cfg)


class TestBadInput(unittest.TestCase):
    def setUp(self):
        self.root = tiny_synthetic_root()
        self.tmp = tempfile.mkdtemp()
        self.data = json.load(open(f"{self.root}/annotations/instances_val.json"))

    def _write(self, data_or_text):
        path = os.path.join(self.tmp, "ann.json")
        with open(path, "w") as f:
            f.write(data_or_text if isinstance(data_or_text, str) else json.dumps(data_or_text))
        return path

    def test_malformed_json_names_file_and_line(self):
        path = self._write('{"images": [}')
        with self.assertRaisesRegex(InputError, f"{path}: malformed JSON at line 1"):
            load_coco_instances(path, f"{self.root}/images/val", "bad")

    def test_unknown_category_names_annotation(self):
        self.data["annotations"][0]["category_id"] = 99
        path = self._write(self.data)
        ann_id = self.data["annotations"][0]["id"]
        with self.assertRaisesRegex(InputError, f"ann.json: annotation {ann_id}: field 'category_id' = 99"):
            load_coco_instances(path, f"{self.root}/images/val", "bad")

    def test_missing_field(self):
        del self.data["images"][0]["height"]
        path = self._write(self.data)
        with self.assertRaisesRegex(InputError, r"ann.json: image \d+: field 'height' = '<missing>'"):
            load_coco_instances(path, f"{self.root}/images/val", "bad")

    def test_missing_image_file(self):
        self.data["images"][0]["file_name"] = "nope.png"
        path = self._write(self.data)
        with self.assertRaisesRegex(InputError, r"nope.png: image \d+: field 'file_name' = 'nope.png': image file not found"):
            load_coco_instances(path, f"{self.root}/images/val", "bad")

    def test_corrupt_image_and_bad_label_in_mapper(self):
        cfg = get_seg2_cfg()
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
        mapper = Seg2DatasetMapper(cfg, True)
        corrupt = os.path.join(self.tmp, "corrupt.png")
        open(corrupt, "wb").write(b"\x89PNG not really")
        with self.assertRaisesRegex(InputError, "corrupt.png: unreadable image"):
            mapper({"file_name": corrupt})
        image = os.path.join(self.tmp, "img.png")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
        label = os.path.join(self.tmp, "label.png")
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(label)
        with self.assertRaisesRegex(InputError, r"label.png: label value\(s\) \[9\]"):
            mapper({"file_name": image, "sem_seg_file_name": label})

    def test_palette_label_png_is_read_as_indices_in_training_and_evaluation(self):
        """A P-mode label PNG whose palette colours have luminances unrelated to the indices:
        the training mapper and the offline evaluator must both see the indices."""
        from seg2.evaluation.semantic import evaluate_semantic_folders

        cfg = get_seg2_cfg()
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
        cfg.INPUT.RANDOM_FLIP = "none"
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (8,), 8
        indices = np.zeros((8, 8), np.uint8)
        indices[:, 3:6], indices[:, 6:] = 1, 2
        pal = Image.fromarray(indices, "P")
        pal.putpalette([255, 255, 255, 200, 0, 0, 0, 0, 90] + [0] * (256 - 3) * 3)
        gt_dir, pred_dir = os.path.join(self.tmp, "gt"), os.path.join(self.tmp, "pred")
        os.makedirs(gt_dir), os.makedirs(pred_dir)
        label = os.path.join(gt_dir, "a.png")
        pal.save(label)
        self.assertNotEqual(np.asarray(Image.open(label).convert("L"))[0, 0], 0)  # luminance != index
        image = os.path.join(self.tmp, "img.png")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
        out = Seg2DatasetMapper(cfg, True)({"file_name": image, "sem_seg_file_name": label})
        np.testing.assert_array_equal(out["sem_seg"].numpy(), indices)
        Image.fromarray(indices).save(os.path.join(pred_dir, "a.png"))  # an "L" PNG of the indices
        res = evaluate_semantic_folders(gt_dir, pred_dir, num_classes=3)
        self.assertEqual(res["sem_seg"]["mIoU"], 100.0)

    def test_panoptic_unknown_category(self):
        pan = json.load(open(f"{self.root}/annotations/panoptic_val.json"))
        pan["annotations"][0]["segments_info"][0]["category_id"] = 98
        path = self._write(pan)
        name = _unique("badpan")
        register_coco_panoptic(name, f"{self.root}/images/val", f"{self.root}/panoptic_val", path)
        with self.assertRaisesRegex(InputError, r"ann.json: segment \d+ of image \d+: field 'category_id' = 98"):
            DatasetCatalog.get(name)
