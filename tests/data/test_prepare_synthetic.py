"""Checks of the synthetic generator (``seg2.data.synthetic``, CLI ``datasets/prepare_synthetic.py``)
against pycocotools, numpy and cityscapesscripts.

Every check reads the written files back with third-party readers and compares the formats
with each other, never with the generator's internals: only the shared class table
(``seg2.data.synthetic.meta``) is taken from the project.
"""

import filecmp
import glob
import json
import os
import tempfile
import unittest
import unittest.mock

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image
from pycocotools.coco import COCO

import seg2.data.synthetic as prepare_synthetic
from seg2.data.synthetic import meta as META
from seg2_testing import REPO_ROOT, run_tool, subprocess_env

SCRIPT = str(REPO_ROOT / "datasets" / "prepare_synthetic.py")

CATS = META.CATEGORIES
CONTIGUOUS = {c["id"]: i for i, c in enumerate(CATS)}
THING_IDS = {c["id"] for c in CATS if c["isthing"]}
NUM = {"train": 6, "val": 4}


def _pan_ids(path):
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def _adjacent(a, b):
    """True if some pixel of b is a 4-neighbour of a pixel of a."""
    grown = a.copy()
    grown[1:] |= a[:-1]
    grown[:-1] |= a[1:]
    grown[:, 1:] |= a[:, :-1]
    grown[:, :-1] |= a[:, 1:]
    return bool((grown & b).any())


CASES = {"polygon", "occluded", "crowd", "void", "touching", "overlapping"}


def _cases(root, split):
    """The special cases found in a split, read from the COCO and panoptic files.

    touching: two unoccluded (polygon) same-class instances with disjoint, 4-adjacent masks;
    overlapping: an occluded (RLE, not crowd) instance bordering a same-class instance;
    void: an unlabeled pixel (panoptic id 0) in some image.
    """
    coco = COCO(os.path.join(root, "annotations", f"instances_{split}.json"))
    found = set()
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        found |= {"crowd" for a in anns if a["iscrowd"]}
        inst = [(a, coco.annToMask(a).astype(bool)) for a in anns if not a["iscrowd"]]
        for i, (a, ma) in enumerate(inst):
            polygon_a = isinstance(a["segmentation"], list)
            found.add("polygon" if polygon_a else "occluded")
            for b, mb in inst[i + 1 :]:
                if (
                    a["category_id"] == b["category_id"]
                    and _adjacent(ma, mb)
                    and not (ma & mb).any()
                ):
                    both = polygon_a and isinstance(b["segmentation"], list)
                    found.add("touching" if both else "overlapping")
    with open(os.path.join(root, "annotations", f"panoptic_{split}.json")) as f:
        for ann in json.load(f)["annotations"]:
            if (_pan_ids(os.path.join(root, f"panoptic_{split}", ann["file_name"])) == 0).any():
                found.add("void")
    return found


class TestPrepareSynthetic(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = os.path.join(cls._tmp.name, "a")
        prepare_synthetic.generate(
            cls.root, seed=0, num_train=NUM["train"], num_val=NUM["val"], size=96
        )
        cls.coco = {
            s: COCO(os.path.join(cls.root, "annotations", f"instances_{s}.json")) for s in NUM
        }
        cls.pan = {}
        for s in NUM:
            with open(os.path.join(cls.root, "annotations", f"panoptic_{s}.json")) as f:
                cls.pan[s] = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def _instances(self, split, image_id):
        """(annotation, decoded mask) pairs of one image."""
        coco = self.coco[split]
        return [
            (a, coco.annToMask(a).astype(bool))
            for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        ]

    def _panoptic(self, split):
        """(image_id, stem, id map, segments_info) per image."""
        for ann in self.pan[split]["annotations"]:
            ids = _pan_ids(os.path.join(self.root, f"panoptic_{split}", ann["file_name"]))
            yield ann["image_id"], os.path.splitext(ann["file_name"])[0], ids, ann["segments_info"]

    def test_images(self):
        for split, n in NUM.items():
            files = sorted(os.listdir(os.path.join(self.root, "images", split)))
            self.assertEqual(files, [f"{i:06d}.png" for i in range(n)])
            im = Image.open(os.path.join(self.root, "images", split, files[0]))
            self.assertEqual((im.mode, im.size), ("RGB", (96, 96)))
            coco_images = self.coco[split].dataset["images"]
            self.assertEqual([im["file_name"] for im in coco_images], files)
            self.assertEqual(len({im["id"] for im in coco_images}), n)

    def test_instances_decode_with_matching_area_and_bbox(self):
        for split in NUM:
            coco = self.coco[split]
            ann_ids = [a["id"] for a in coco.dataset["annotations"]]
            self.assertEqual(len(set(ann_ids)), len(ann_ids))
            self.assertGreaterEqual(min(ann_ids), 1)
            kinds = set()
            for a in coco.dataset["annotations"]:
                mask = coco.annToMask(a).astype(bool)
                self.assertGreaterEqual(mask.sum(), 20, a["id"])
                self.assertEqual(a["area"], mask.sum())
                np.testing.assert_allclose(a["bbox"], _bbox(mask))
                seg = a["segmentation"]
                if isinstance(seg, list):
                    kinds.add("polygon")
                    self.assertEqual(a["iscrowd"], 0)
                    self.assertTrue(all(len(p) >= 6 and len(p) % 2 == 0 for p in seg))
                else:
                    kinds.add("crowd" if a["iscrowd"] else "rle")
                    self.assertIsInstance(seg["counts"], str)
                    self.assertEqual(seg["size"], [96, 96])
            self.assertEqual(kinds, {"polygon", "rle", "crowd"}, split)

    def test_categories_are_the_non_contiguous_thing_ids(self):
        for split in NUM:
            cats = self.coco[split].dataset["categories"]
            self.assertEqual(
                [(c["id"], c["name"]) for c in cats],
                [(c["id"], c["name"]) for c in CATS if c["isthing"]],
            )
            self.assertEqual([c["id"] for c in cats], [3, 7, 12])
            self.assertEqual(
                [(c["id"], c["name"], c["isthing"]) for c in self.pan[split]["categories"]],
                [(c["id"], c["name"], c["isthing"]) for c in CATS],
            )
            for c in self.pan[split]["categories"]:
                self.assertEqual(set(c), {"id", "name", "isthing", "color", "supercategory"})

    def test_every_case_in_every_split(self):
        for split in NUM:
            self.assertEqual(_cases(self.root, split), CASES, split)

    def test_every_case_in_small_splits(self):
        """A 4-image split holds every case whatever the seed (P(no crowd) is ~0.4 unforced)."""
        with tempfile.TemporaryDirectory() as tmp:
            for seed in (1, 2, 3):
                root = os.path.join(tmp, str(seed))
                prepare_synthetic.generate(root, seed=seed, num_train=0, num_val=4, size=64)
                self.assertEqual(_cases(root, "val"), CASES, seed)

    def test_panoptic_segments_equal_instances(self):
        for split in NUM:
            for image_id, stem, ids, segments in self._panoptic(split):
                seg_ids = [s["id"] for s in segments]
                self.assertEqual(len(set(seg_ids)), len(seg_ids))
                self.assertEqual(set(np.unique(ids)) - {0}, set(seg_ids), stem)
                self.assertNotIn(0, seg_ids)
                for s in segments:
                    self.assertNotEqual(s["id"], s["category_id"])
                    mask = ids == s["id"]
                    self.assertEqual(s["area"], mask.sum())
                    self.assertEqual(s["bbox"], _bbox(mask))
                    self.assertIn(s["category_id"], CONTIGUOUS)
                stuff = [s["category_id"] for s in segments if s["category_id"] not in THING_IDS]
                self.assertEqual(len(stuff), len(set(stuff)), "one segment per stuff class")
                self.assertFalse(
                    any(s["iscrowd"] for s in segments if s["category_id"] not in THING_IDS)
                )
                # Bijection thing segments <-> instance annotations, by class and pixels.
                things = [s for s in segments if s["category_id"] in THING_IDS]
                instances = self._instances(split, image_id)
                self.assertEqual(len(things), len(instances))
                for a, mask in instances:
                    match = [
                        s
                        for s in things
                        if s["category_id"] == a["category_id"]
                        and np.array_equal(ids == s["id"], mask)
                    ]
                    self.assertEqual(len(match), 1, (stem, a["id"]))
                    self.assertEqual(match[0]["iscrowd"], a["iscrowd"])

    def test_void_is_unannotated(self):
        for split in NUM:
            for image_id, stem, ids, segments in self._panoptic(split):
                for _, mask in self._instances(split, image_id):
                    self.assertFalse((mask & (ids == 0)).any())

    def test_semantic_agrees_with_panoptic(self):
        for split in NUM:
            for _, stem, ids, segments in self._panoptic(split):
                im = Image.open(os.path.join(self.root, f"semantic_{split}", stem + ".png"))
                self.assertEqual(im.mode, "L")
                sem = np.asarray(im)
                np.testing.assert_array_equal(sem == 255, ids == 0)
                for s in segments:
                    values = np.unique(sem[ids == s["id"]])
                    self.assertEqual(values.tolist(), [CONTIGUOUS[s["category_id"]]])

    def test_cityscapes_tree(self):
        label_of = [name2label[c["cityscapes"]] for c in CATS]
        lut = np.zeros(256, np.int64)  # semantic -> Cityscapes id, 255 -> 0 (unlabeled)
        lut[: len(CATS)] = [lab.id for lab in label_of]
        for split, n in NUM.items():
            gts = sorted(
                glob.glob(
                    os.path.join(
                        self.root, "cityscapes", "gtFine", split, "*", "*_gtFine_labelIds.png"
                    )
                )
            )
            self.assertEqual(len(gts), n)
            for (image_id, stem, ids, segments), gt in zip(self._panoptic(split), gts):
                base = gt[: -len("labelIds.png")]
                left = base.replace("gtFine", "leftImg8bit", 1).replace(
                    "_gtFine_", "_leftImg8bit.png"
                )
                self.assertEqual(
                    os.path.basename(left), f"synth_000000_{image_id:06d}_leftImg8bit.png"
                )
                self.assertTrue(
                    filecmp.cmp(
                        left, os.path.join(self.root, "images", split, stem + ".png"), shallow=False
                    )
                )
                sem = np.asarray(
                    Image.open(os.path.join(self.root, f"semantic_{split}", stem + ".png"))
                )
                label_ids = np.asarray(Image.open(gt))
                np.testing.assert_array_equal(label_ids, lut[sem])

                inst = np.asarray(Image.open(base + "instanceIds.png")).astype(np.int64)
                np.testing.assert_array_equal(inst == 0, ids == 0)
                seen = set()
                for s in segments:
                    values = np.unique(inst[ids == s["id"]])
                    self.assertEqual(len(values), 1)
                    label = label_of[CONTIGUOUS[s["category_id"]]]
                    if label.hasInstances and not s["iscrowd"]:
                        self.assertEqual(values[0] // 1000, label.id)
                        self.assertNotIn(values[0], seen)
                        seen.add(values[0])
                    else:
                        self.assertEqual(values[0], label.id)

                annotation = Annotation()
                annotation.fromJsonFile(base + "polygons.json")
                self.assertEqual((annotation.imgWidth, annotation.imgHeight), (96, 96))
                # The polygons are contours, so re-drawing them reproduces the PNGs up to edges.
                drawn = np.asarray(createLabelImage(annotation, "ids"))
                self.assertGreater((drawn == label_ids).mean(), 0.99)
                drawn_inst = np.asarray(createInstanceImage(annotation, "ids"))
                self.assertGreater((drawn_inst == inst).mean(), 0.99)

    def test_cityscapes_panoptic_from_cityscapesscripts(self):
        for split, n in NUM.items():
            path = os.path.join(
                self.root, "cityscapes", "gtFine", f"cityscapes_panoptic_{split}.json"
            )
            with open(path) as f:
                data = json.load(f)
            self.assertEqual(len(data["annotations"]), n)
            for ann in data["annotations"]:
                ids = _pan_ids(os.path.join(path[:-5], ann["file_name"]))
                self.assertEqual(set(np.unique(ids)) - {0}, {s["id"] for s in ann["segments_info"]})

    def test_deterministic(self):
        with tempfile.TemporaryDirectory() as tmp:
            same, other = os.path.join(tmp, "same"), os.path.join(tmp, "other")
            prepare_synthetic.generate(
                same, seed=0, num_train=NUM["train"], num_val=NUM["val"], size=96
            )
            prepare_synthetic.generate(
                other, seed=1, num_train=NUM["train"], num_val=NUM["val"], size=96
            )
            files = sorted(
                os.path.relpath(p, self.root)
                for p in glob.glob(os.path.join(self.root, "**", "*"), recursive=True)
                if os.path.isfile(p)
            )
            files_same = sorted(
                os.path.relpath(p, same)
                for p in glob.glob(os.path.join(same, "**", "*"), recursive=True)
                if os.path.isfile(p)
            )
            self.assertEqual(files, files_same)
            _, mismatch, errors = filecmp.cmpfiles(self.root, same, files, shallow=False)
            self.assertEqual((mismatch, errors), ([], []))
            _, mismatch, errors = filecmp.cmpfiles(self.root, other, files, shallow=False)
            self.assertEqual(errors, [])
            self.assertIn(os.path.join("images", "train", "000000.png"), mismatch)
            self.assertIn(os.path.join("annotations", "instances_val.json"), mismatch)

    def test_bad_class_table_names_file_and_field(self):
        bad = [dict(c) for c in CATS]
        bad[4]["cityscapes"] = "no-such-label"
        with unittest.mock.patch.object(prepare_synthetic, "CATEGORIES", bad):
            with self.assertRaisesRegex(
                ValueError, r"meta\.py: CATEGORIES\[4\]\.cityscapes"
            ):
                prepare_synthetic.generate(
                    os.path.join(self._tmp.name, "bad"), num_train=1, num_val=0
                )

    def test_cli(self):
        with tempfile.TemporaryDirectory() as tmp:
            args = ["--output", tmp, "--num-train", "2", "--num-val", "2", "--size", "64"]
            out = run_tool([SCRIPT] + args, env=subprocess_env(), timeout=120)
            self.assertEqual(out.returncode, 0, out.stderr)
            lines = out.stdout.strip().splitlines()
            self.assertEqual([line.split(":")[0] for line in lines], ["train", "val"])
            for split in ("train", "val"):
                with open(os.path.join(tmp, "annotations", f"panoptic_{split}.json")) as f:
                    self.assertEqual(len(json.load(f)["annotations"]), 2)
            bad = run_tool(
                [SCRIPT, "--output", tmp, "--num-val", "-1"], env=subprocess_env(), timeout=120
            )
            self.assertNotEqual(bad.returncode, 0)
            self.assertIn("num_val", bad.stderr)


if __name__ == "__main__":
    unittest.main()
