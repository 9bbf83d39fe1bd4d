"""The validation pass (seg2.data.validate, check_annotations, check_files): each broken input built from the
synthetic data is reported with its file, id, field and value, all problems of a pass
together; conversions are noted with a count; the skip policy drops exactly the broken
images. References are independent: the edit made to the input, pycocotools, PIL."""

import json
import os
import shutil
import tempfile
import unittest

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog
from PIL import Image

from seg2.data.coco import load_coco_instances
from seg2.data.coco_panoptic import load_coco_panoptic, panoptic_metadata
from seg2.data.semantic import load_semantic
from seg2.data.synthetic.meta import CATEGORIES
from seg2.data.validate import configure_validation, last_report, validate_datasets
from seg2.io import BitDepthRule, InputError, load_image, read_image
from seg2_testing import get_seg2_cfg, tiny_synthetic_root

_COUNT = [0]


def unique(prefix: str) -> str:
    _COUNT[0] += 1
    return f"{prefix}_{os.getpid()}_{_COUNT[0]}"


def copy_root() -> str:
    """A private copy of the tiny synthetic dataset, free to break."""
    dst = os.path.join(tempfile.mkdtemp(prefix="seg2-val-"), "synthetic")
    shutil.copytree(tiny_synthetic_root(), dst)
    return dst


class ValidationCase(unittest.TestCase):
    def setUp(self):
        configure_validation(
            on_bad_sample="error", check_files=True, bit_depth=BitDepthRule(), scored=None
        )
        self.root = copy_root()
        self.ann = f"{self.root}/annotations/instances_val.json"
        self.images = f"{self.root}/images/val"
        self.data = json.load(open(self.ann))

    def tearDown(self):
        configure_validation(on_bad_sample="error")

    def write(self, data, name="ann.json") -> str:
        path = os.path.join(self.root, "annotations", name)
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    def trained_on(self, register) -> str:
        """Register a dataset with ``register(name)`` and validate it as a training set
        (``DATASETS.TRAIN``), as ``setup_cfg`` does; returns the error (asserting one)."""
        name = unique("train")
        register(name)
        cfg = get_seg2_cfg()
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
        with self.assertRaises(InputError) as ctx:
            validate_datasets(cfg, [name])
        msg = str(ctx.exception)
        self.assertNotIn("\n", msg)
        self.assertTrue(msg.startswith(f"dataset '{name}': "), msg)
        return msg

    def problems(self, path, images=None) -> str:
        """Load under policy 'error'; return the message (asserting it was raised)."""
        with self.assertRaises(InputError) as ctx:
            load_coco_instances(path, images or self.images, unique("bad"))
        return str(ctx.exception)


class TestCocoInstances(ValidationCase):
    def test_every_problem_reported_together(self):
        d = self.data
        first_img = d["images"][0]["id"]
        d["images"].append(dict(d["images"][1], id=first_img))  # duplicate image id
        third = d["images"][2]["id"]
        d["images"][2]["id"] = "img-3"  # non-integer id, its annotations following it
        for x in d["annotations"]:
            if x["image_id"] == third:
                x["image_id"] = "img-3"
        a = [x for x in d["annotations"] if x["image_id"] != "img-3"]
        a[0]["category_id"] = 99
        a[1]["image_id"] = 12345
        a[2]["segmentation"] = []
        a[3]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]
        a[4]["segmentation"] = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]
        a[5]["bbox"] = [10.0, 10.0, -5.0, 4.0]
        a[6]["id"] = a[7]["id"]
        del a[8]["area"]
        msg = self.problems(self.write(d))
        expected = [
            f"image {first_img}: field 'id' = {first_img}: 2 images share this id",
            "image #2: field 'id' = 'img-3': id must be an integer",
            f"annotation {a[0]['id']}: field 'category_id' = 99: not among the category ids [3, 7, 12]",
            f"annotation {a[1]['id']}: field 'image_id' = 12345: not the id of an image",
            f"annotation {a[2]['id']}: field 'segmentation' = []: empty segmentation",
            f"annotation {a[3]['id']}: field 'segmentation[0]' = [1.0, 2.0, 3.0, 4.0]: a polygon needs at least 3 points",
            f"annotation {a[4]['id']}: field 'segmentation[0]' = 7: odd number of coordinates",
            f"annotation {a[5]['id']}: field 'bbox' = [10.0, 10.0, -5.0, 4.0]: width and height must be > 0",
            f"annotation {a[7]['id']}: field 'id' = {a[7]['id']}: 2 annotations share this id",
            f"annotation {a[8]['id']}: field 'area' = '<missing>'",
        ]
        for line in expected:
            self.assertIn(f"ann.json: {line}", msg)
        self.assertIn("ON_BAD_SAMPLE skip", msg)
        self.assertNotIn("'img-3': not the id of an image", msg)  # no cascade

    def test_rle_and_boxes(self):
        d = self.data
        im = {i["id"]: i for i in d["images"]}
        # RLE of the wrong size; a box far from its mask; a box outside the image
        rle_ann, shifted, outside = d["annotations"][0], d["annotations"][1], d["annotations"][2]
        h, w = im[rle_ann["image_id"]]["height"], im[rle_ann["image_id"]]["width"]
        bad = mask_util.encode(np.asfortranarray(np.ones((h + 1, w), np.uint8)))
        rle_ann["segmentation"] = {"size": [h + 1, w], "counts": bad["counts"].decode()}
        x, y, bw, bh = shifted["bbox"]
        shifted["bbox"] = [x + 40, y + 40, bw, bh]
        outside["bbox"] = [w + 10.0, 0.0, 5.0, 5.0]
        msg = self.problems(self.write(d))
        self.assertIn(
            f"annotation {rle_ann['id']}: field 'segmentation.size' = [{h + 1}, {w}]", msg
        )
        self.assertRegex(
            msg, rf"annotation {shifted['id']}: field 'bbox' = .*disagrees with the mask's box"
        )
        self.assertIn("bbox AP the JSON 'bbox'", msg)
        self.assertIn(
            f"annotation {outside['id']}: field 'bbox' = [{w + 10.0}, 0.0, 5.0, 5.0]: lies entirely outside",
            msg,
        )

    def test_flat_polygon_is_converted_with_a_note(self):
        d = self.data
        target = next(a for a in d["annotations"] if isinstance(a["segmentation"], list))
        target["segmentation"] = list(target["segmentation"][0])
        name = unique("flat")
        dicts = load_coco_instances(self.write(d), self.images, name)
        report = last_report(name)
        self.assertTrue(report.ok)
        self.assertEqual(
            len(
                report.notes[
                    "flat polygon list (one list of numbers instead of a list of polygons) read as one polygon"
                ]
            ),
            1,
        )
        loaded = next(
            a
            for r in dicts
            for a in r["annotations"]
            if a.get("id", None) == target["id"] or a["bbox"] == target["bbox"]
        )
        self.assertEqual(loaded["segmentation"], [target["segmentation"]])

    def test_image_files(self):
        d = self.data
        ims = d["images"]
        ims[0]["file_name"] = "missing.png"
        # truncated PNG, corrupt payload, size differing from the JSON
        src = [os.path.join(self.images, im["file_name"]) for im in ims[1:4]]
        raw = open(src[0], "rb").read()
        open(src[0], "wb").write(raw[: len(raw) // 2])
        raw = bytearray(open(src[1], "rb").read())
        for i in range(len(raw) // 2, len(raw) // 2 + 32):
            raw[i] ^= 0xFF
        open(src[1], "wb").write(bytes(raw))
        ims[3]["height"] += 2
        msg = self.problems(self.write(d))
        self.assertIn(
            f"missing.png: image {ims[0]['id']}: field 'file_name' = 'missing.png': image file not found",
            msg,
        )
        self.assertIn(f"{src[0]}: image {ims[1]['id']}: field 'file_name'", msg)
        self.assertIn("truncated", msg)
        self.assertIn(f"{src[1]}: image {ims[2]['id']}: field 'file_name'", msg)
        self.assertIn(
            f"image {ims[3]['id']}: field 'height/width' = [{ims[3]['height']}, {ims[3]['width']}]",
            msg,
        )

    def test_skip_policy_drops_exactly_the_broken_images(self):
        d = self.data
        broken = d["annotations"][0]["image_id"]
        d["annotations"][0]["category_id"] = 99
        configure_validation(on_bad_sample="skip")
        name = unique("skip")
        with self.assertLogs("seg2.data.validate", "WARNING") as logs:
            dicts = load_coco_instances(self.write(d), self.images, name)
        self.assertEqual(
            {r["image_id"] for r in dicts}, {im["id"] for im in d["images"]} - {broken}
        )
        text = "\n".join(logs.output)
        self.assertIn(f"skipping sample {broken}", text)
        self.assertIn("field 'category_id' = 99", text)
        self.assertIn(f"skipped 1 of {len(d['images'])} sample(s)", text)


class TestImageConversions(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="seg2-img-")
        rng = np.random.default_rng(0)
        self.u16 = rng.integers(70, 1200, (12, 10), dtype=np.uint16)
        self.u16[0, 0], self.u16[0, 1] = 70, 1200

    def test_16_bit_rules(self):
        path = os.path.join(self.tmp, "tile.png")
        Image.fromarray(self.u16).save(path)  # a 16-bit grayscale PNG (mode I;16)
        v = self.u16.astype(np.float64)
        expected = {
            BitDepthRule("minmax"): np.round((v - 70) * 255 / (1200 - 70)),
            BitDepthRule("divisor", divisor=8.0): np.minimum(np.floor(v / 8), 255),
            BitDepthRule("percentile", percentiles=(10.0, 90.0)): np.clip(
                np.round(
                    (v - np.percentile(v, 10)) * 255 / (np.percentile(v, 90) - np.percentile(v, 10))
                ),
                0,
                255,
            ),
        }
        for rule, ref in expected.items():
            out = read_image(path, "RGB", rule)
            self.assertEqual(out.shape, (12, 10, 3))
            for c in range(3):
                np.testing.assert_array_equal(out[:, :, c], ref.astype(np.uint8))
        # Detectron2's own reader saturates the same file (the bug the rule avoids)
        from detectron2.data.detection_utils import read_image as d2_read

        np.testing.assert_array_equal(d2_read(path, "RGB")[:, :, 0], np.minimum(self.u16, 255))
        _, notes = load_image(path)
        self.assertEqual(
            notes, ["uint16 single-band image scaled to 8 bits by per-image min-max stretch"]
        )

    def test_mode_notes_and_exif(self):
        rgb = np.zeros((6, 4, 3), np.uint8)
        rgb[0, :] = 255
        cases = {
            "gray.png": (Image.fromarray(rgb[:, :, 0]), "grayscale (L) image replicated"),
            "pal.png": (Image.fromarray(rgb).convert("P"), "palette (P) image converted to RGB"),
            "rgba.png": (
                Image.fromarray(np.dstack([rgb, np.full((6, 4), 9, np.uint8)])),
                "alpha dropped",
            ),
        }
        for name, (img, note) in cases.items():
            img.save(os.path.join(self.tmp, name))
            _, notes = load_image(os.path.join(self.tmp, name))
            self.assertTrue(any(note in n for n in notes), (name, notes))
            self.assertEqual(read_image(os.path.join(self.tmp, name), "RGB").shape, (6, 4, 3))
        # EXIF orientation 6 (rotate 90 CW): applied exactly as Detectron2 does
        path = os.path.join(self.tmp, "exif.jpg")
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(rgb).save(path, exif=exif, quality=100)
        from detectron2.data.detection_utils import read_image as d2_read

        np.testing.assert_array_equal(read_image(path, "BGR"), d2_read(path, "BGR"))
        self.assertEqual(read_image(path, "BGR").shape, (4, 6, 3))
        self.assertIn("EXIF orientation 6 applied (as Detectron2 does)", load_image(path)[1])


class TestPanoptic(ValidationCase):
    def load(self, pan_json, meta=None, **kw):
        return load_coco_panoptic(
            pan_json,
            self.images,
            f"{self.root}/panoptic_val",
            meta or panoptic_metadata(CATEGORIES),
            dataset_name=unique("pan"),
            cache_dir=os.path.join(self.root, "cache"),
            **kw,
        )

    def test_png_json_disagreement(self):
        pan = json.load(open(f"{self.root}/annotations/panoptic_val.json"))
        anns = pan["annotations"]
        dropped = anns[0]["segments_info"].pop(0)  # in the PNG, not the JSON
        anns[1]["segments_info"].append({"id": 4242, "category_id": 21, "iscrowd": 0})  # JSON only
        # a grayscale panoptic PNG, and one of the wrong size
        gray = os.path.join(self.root, "panoptic_val", anns[2]["file_name"])
        Image.open(gray).convert("L").save(gray)
        small = os.path.join(self.root, "panoptic_val", anns[3]["file_name"])
        Image.open(small).crop((0, 0, 20, 20)).save(small)
        anns[3]["segments_info"][0]["category_id"] = 98
        pan["categories"][0].pop("isthing")
        with self.assertRaises(InputError) as ctx:
            self.load(self.write(pan, "pan.json"))
        msg = str(ctx.exception)
        ids = [a["image_id"] for a in anns]
        self.assertIn(
            f"pan.json: image {ids[0]}: field 'segments_info' = [{dropped['id']}]: segment id(s) in {anns[0]['file_name']} but not in the JSON",
            msg,
        )
        self.assertIn(
            f"pan.json: image {ids[1]}: field 'segments_info' = [4242]: segment id(s) in the JSON but not in",
            msg,
        )
        self.assertIn(f"{gray}: image {ids[2]}: field 'pan_seg_file_name'", msg)
        self.assertIn("mode L; COCO panoptic PNGs are RGB", msg)
        self.assertIn(f"{small}: image {ids[3]}: field 'size' = [20, 20]", msg)
        self.assertIn("field 'category_id' = 98", msg)
        self.assertIn(f"category {pan['categories'][0]['id']}: field 'isthing' = '<missing>'", msg)

    def test_image_without_annotation(self):
        pan = json.load(open(f"{self.root}/annotations/panoptic_val.json"))
        lost = pan["annotations"].pop()
        with self.assertRaisesRegex(
            InputError, f"image {lost['image_id']}: field 'annotations' = '<none>'"
        ):
            self.load(self.write(pan, "pan.json"))

    def test_derived_semantic_cache_follows_the_json(self):
        """Editing a segment's category in the JSON (PNG untouched, mtimes older) rebuilds
        the derived target; the first one is not reused."""
        pan = json.load(open(f"{self.root}/annotations/panoptic_val.json"))
        path = self.write(pan, "pan.json")
        meta = panoptic_metadata(CATEGORIES)
        first = self.load(path, meta)[0]
        before = np.asarray(Image.open(first["sem_seg_file_name"]))
        seg = next(s for s in pan["annotations"][0]["segments_info"] if s["category_id"] == 21)
        seg["category_id"] = 25
        self.write(pan, "pan.json")
        os.utime(path, (0, 0))  # older than the cache: a time-keyed cache would be reused
        second = self.load(path, meta)[0]
        self.assertNotEqual(first["sem_seg_file_name"], second["sem_seg_file_name"])
        after = np.asarray(Image.open(second["sem_seg_file_name"]))
        ids = np.asarray(Image.open(first["pan_seg_file_name"]).convert("RGB")).astype(np.int64)
        ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
        where = ids == seg["id"]
        stuff = meta["stuff_dataset_id_to_contiguous_id"]
        self.assertTrue(where.any())
        self.assertTrue((before[where] == stuff[21]).all())
        self.assertTrue((after[where] == stuff[25]).all())
        np.testing.assert_array_equal(before[~where], after[~where])
        self.assertFalse(os.path.exists(first["sem_seg_file_name"]))  # superseded file removed


class TestSemantic(ValidationCase):
    def test_label_problems(self):
        labels = f"{self.root}/semantic_val"
        files = sorted(os.listdir(labels))
        os.remove(os.path.join(labels, files[0]))  # an image without label
        big = os.path.join(labels, files[1])
        arr = np.asarray(Image.open(big)).copy()
        arr[0, 0] = 9
        Image.fromarray(arr).save(big)  # value >= 7 classes, not 255
        Image.fromarray(arr[:10]).save(os.path.join(labels, files[2]))  # size mismatch
        Image.fromarray(np.dstack([arr] * 3)).save(os.path.join(labels, files[3]))  # RGB label
        names = [f"c{i}" for i in range(7)]
        with self.assertRaises(InputError) as ctx:
            load_semantic(self.images, labels, names, unique("sem"))
        msg = str(ctx.exception)
        stem = os.path.splitext(files[0])[0]
        self.assertIn(
            f"image '{stem}': field 'sem_seg_file_name' = '{stem}.png': no label in {labels}", msg
        )
        self.assertIn(f"{big}: label of", msg)
        self.assertIn("field 'value' = [9]: not a class id 0..6 nor the ignore label 255", msg)
        self.assertIn(f"field 'size' = [10, {arr.shape[1]}]", msg)
        self.assertIn("must have one channel of class ids, got mode 'RGB'", msg)

    def test_palette_label_read_as_indices(self):
        labels = f"{self.root}/semantic_val"
        f = sorted(os.listdir(labels))[0]
        arr = np.asarray(Image.open(os.path.join(labels, f)))
        pal = Image.fromarray(arr, "P")
        pal.putpalette([255 - (i % 256) for i in range(768)])  # luminance != index
        pal.save(os.path.join(labels, f))
        dicts = load_semantic(self.images, labels, [f"c{i}" for i in range(7)], unique("pal"))
        self.assertEqual(len(dicts), len(os.listdir(labels)))
        from seg2.io import read_label_png

        np.testing.assert_array_equal(read_label_png(os.path.join(labels, f)), arr)


class TestProbeCases(ValidationCase):
    """Inputs that once crashed training, exhausted memory or passed silently: each is one
    problem line naming the file, the id and the field (or a counted note where training
    and scoring stay right)."""

    def setUp(self):
        super().setUp()
        configure_validation(scored=None)  # loaded directly: scored, as check_dataset by path

    def one_problem(self, msg: str) -> str:
        """The message of a single problem is one line, starting with the dataset."""
        self.assertNotIn("\n", msg)
        self.assertTrue(msg.startswith("dataset '"), msg)
        return msg

    def test_polygon_far_outside_is_refused_before_rasterising(self):
        d = self.data
        a = next(x for x in d["annotations"] if isinstance(x["segmentation"], list))
        im = next(i for i in d["images"] if i["id"] == a["image_id"])
        poly = a["segmentation"][0]
        # rasterised, this edge would be walked pixel by pixel (terabytes)
        poly[0] = 1e12
        msg = self.one_problem(self.problems(self.write(d)))
        self.assertIn(
            f"ann.json: annotation {a['id']}: field 'segmentation[0]' = [1000000000000.0, {poly[1]}]: "
            f"point 0 lies 1e+12 px outside the {im['width']}x{im['height']} image",
            msg,
        )
        # the tolerance: COCO polygons reach a few pixels past the border
        poly[0], poly[1] = im["width"] + 4.0, -4.0
        a["bbox"] = [
            float(v)
            for v in mask_util.toBbox(
                mask_util.merge(mask_util.frPyObjects(a["segmentation"], im["height"], im["width"]))
            )
        ]
        name = unique("margin")
        load_coco_instances(self.write(d), self.images, name)
        self.assertFalse([p for p in last_report(name).problems], last_report(name).format())
        poly[0] = im["width"] + 4.5
        self.assertIn("point 0 lies 4.5 px outside", self.problems(self.write(d)))

    def test_zigzag_outline_is_refused_before_rasterising(self):
        d = self.data
        a = next(x for x in d["annotations"] if isinstance(x["segmentation"], list))
        im = next(i for i in d["images"] if i["id"] == a["image_id"])
        h, w = im["height"], im["width"]
        zigzag = []
        for i in range(2000):  # inside the image, each edge crossing it
            zigzag += [0.0, float(i % h), w - 1.0, float((7 * i) % h)]
        a["segmentation"] = [zigzag]
        msg = self.one_problem(self.problems(self.write(d)))
        # pixels walked: every edge's larger side, as pycocotools steps along it
        pts = np.asarray(zigzag).reshape(-1, 2)
        walk = np.abs(pts - np.roll(pts, -1, axis=0)).max(axis=1).sum()
        self.assertIn(
            f"annotation {a['id']}: field 'segmentation[0]' = '4000 points': the outline runs "
            f"{walk:.0f} px, more than {max(h * w // 8, 32 * (h + w))} px for a {w}x{h} image",
            msg,
        )

    def test_outline_capped_whatever_the_json_size(self):
        """An image whose JSON claims 10^6 x 10^6 pixels (its file is 128 x 128): outlines
        of 8e6 pixels fit that claim but are refused before rasterising (the size itself is
        found by the file check, which runs after the JSON's)."""
        d = self.data
        im = d["images"][0]
        im["height"] = im["width"] = 10**6
        a = next(x for x in d["annotations"] if x["image_id"] == im["id"])
        square = [0.0, 0.0, 999999.0, 0.0, 999999.0, 999999.0, 0.0, 999999.0]
        a["segmentation"], a["bbox"], a["area"] = [square, square], [0.0, 0.0, 1e6, 1e6], 1e12
        msg = self.problems(self.write(d))
        self.assertIn(
            f"annotation {a['id']}: field 'segmentation[1]' = '4 points': the outline runs "
            f"7999992 px, more than {2**22} px for a 1000000x1000000 image",
            msg,
        )
        self.assertIn(f"image {im['id']}: field 'height/width' = [1000000, 1000000]", msg)

    def test_training_set_without_annotations(self):
        """No annotation, or only crowd regions: nothing to train on (Detectron2 stopped on
        an assertion); the same file may be scored (NaN with a warning)."""
        from seg2.data.coco import register_coco_instances

        for edit in ("crowd", "none"):
            d = json.load(open(self.ann))
            if edit == "crowd":
                for x in d["annotations"]:
                    x["iscrowd"] = 1
            else:
                d["annotations"] = []
            path = self.write(d, f"{edit}.json")
            msg = self.trained_on(lambda n: register_coco_instances(n, path, self.images))
            self.assertIn(
                f"{path}: field 'annotations': no image has an annotation that is not a crowd "
                "region: nothing to train on",
                msg,
            )
            self.assertEqual(len(load_coco_instances(path, self.images, unique("scored"))), 4)

    def test_root_folders_that_are_files(self):
        path = self.write(self.data)
        msg = self.one_problem(self.problems(path, images=path))
        self.assertIn(f"ann.json: field 'image_root' = '{path}': folder path is a file", msg)
        with self.assertRaisesRegex(InputError, f"^{path}: label folder path is a file$"):
            load_semantic(self.images, path, ["a"], unique("semfile"))

    def test_keypoints_dropped_and_ignore_refused(self):
        """A COCO person-keypoints file: Detectron2's mapper would transform the keypoints
        and stop at the first horizontal flip (no flip indices); seg2 has no keypoint head,
        so they are dropped with a note. Detectron2's loader asserts 'ignore' is 0."""
        from detectron2.data import transforms as T
        from detectron2.data.detection_utils import transform_instance_annotations

        for a in self.data["annotations"]:
            x, y = a["bbox"][:2]
            a["keypoints"], a["num_keypoints"] = [x + 1, y + 1, 2] * 3, 3
        name = unique("kp")
        dicts = load_coco_instances(self.write(self.data), self.images, name)
        (line,) = [x for x in last_report(name).note_lines() if "keypoints" in x]
        self.assertIn(f"{len(self.data['annotations'])} time(s)", line)
        d = dicts[0]
        flip = T.TransformList([T.HFlipTransform(d["width"])])
        for anno in d["annotations"]:
            self.assertNotIn("keypoints", anno)
            transform_instance_annotations(anno, flip, (d["height"], d["width"]))
        a = self.data["annotations"][1]
        a["ignore"] = 1
        msg = self.one_problem(self.problems(self.write(self.data)))
        self.assertIn(
            f"ann.json: annotation {a['id']}: field 'ignore' = 1: Detectron2 does not", msg
        )

    def test_no_images(self):
        self.data["images"], self.data["annotations"] = [], []
        msg = self.one_problem(self.problems(self.write(self.data)))
        self.assertIn("ann.json: field 'images' = []: no images", msg)

    def test_area_against_the_segmentation(self):
        d = self.data
        a = next(x for x in d["annotations"] if isinstance(x["segmentation"], list))
        im = next(i for i in d["images"] if i["id"] == a["image_id"])
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], im["height"], im["width"]))
        pixels = int(mask_util.area(rle))
        a["area"] = 0
        msg = self.one_problem(self.problems(self.write(d)))
        self.assertRegex(
            msg,
            rf"ann.json: annotation {a['id']}: field 'area' = 0: the segmentation covers about \d+ px",
        )
        covers = int(msg.split("covers about ")[1].split()[0])
        self.assertLess(abs(covers - pixels), 0.1 * pixels)  # shoelace vs pycocotools' raster
        a["area"] = 0.6 * pixels  # within the factor: accepted
        load_coco_instances(self.write(d), self.images, unique("area"))
        # a dataset that is only trained on: a note with a count (training ignores 'area')
        a["area"] = 0
        configure_validation(scored=frozenset())
        name = unique("train_only")
        load_coco_instances(self.write(d), self.images, name)
        report = last_report(name)
        self.assertTrue(report.ok)
        (line,) = [x for x in report.note_lines() if "'area'" in x]
        self.assertIn(f"1 time(s), e.g. annotation {a['id']} (area = 0)", line)

    def test_zero_height_box_of_a_sliver_is_a_note(self):
        # instances_train2017.json, annotation 918 (cocoapi issue 355), moved into our image:
        # four points on one line, area 0.0, a box 0 px high
        d = self.data
        sliver, big = d["annotations"][0], d["annotations"][1]
        x, y = 6.65, 8.33
        sliver.update(
            segmentation=[[x, y, x, y, x + 1.03, y, x + 1.03, y]], area=0.0, iscrowd=0,
            bbox=[x, y, 1.03, 0.0],
        )
        path = self.write(d)
        name = unique("sliver")
        load_coco_instances(path, self.images, name)  # no problem: a note
        (line,) = [x for x in last_report(name).note_lines() if "sub-pixel" in x]
        self.assertIn(f"e.g. annotation {sliver['id']}", line)
        # a zero side beside a mask that covers pixels: the box disagrees with the mask
        big["bbox"] = big["bbox"][:2] + [0.0, 0.0]
        msg = self.one_problem(self.problems(self.write(d)))
        self.assertRegex(msg, rf"annotation {big['id']}: field 'bbox' = .*disagrees with the mask's box")

    def test_rle_runs_and_64_bit_ids(self):
        d = self.data
        a = d["annotations"][0]
        im = next(i for i in d["images"] if i["id"] == a["image_id"])
        big = mask_util.encode(
            np.asfortranarray(np.ones((im["height"] + 3, im["width"]), np.uint8))
        )
        a["segmentation"] = {"size": [im["height"], im["width"]], "counts": big["counts"].decode()}
        a["area"] = im["height"] * im["width"]
        d["categories"][0]["id"] = 2**70
        msg = self.problems(self.write(d))
        self.assertIn(
            f"annotation {a['id']}: field 'segmentation.counts' = 'runs summing to "
            f"{(im['height'] + 3) * im['width']}': RLE runs must sum to height*width = "
            f"{im['height'] * im['width']}",
            msg,
        )
        self.assertIn(f"category #0: field 'id' = {2**70}: id does not fit in 64 bits", msg)

    def test_directory_named_as_a_directory(self):
        d = self.data
        path = os.path.join(self.images, d["images"][0]["file_name"])
        os.remove(path)
        os.mkdir(path)
        msg = self.one_problem(self.problems(self.write(d)))
        self.assertIn(f"{path}: image {d['images'][0]['id']}: field 'file_name'", msg)
        self.assertIn("image path is a directory, not a file", msg)

    def panoptic(self):
        return json.load(open(f"{self.root}/annotations/panoptic_val.json"))

    def load_panoptic(self, pan, inst=None):
        return load_coco_panoptic(
            self.write(pan, "pan.json"),
            self.images,
            f"{self.root}/panoptic_val",
            panoptic_metadata(pan["categories"]),
            instances_json=self.write(inst, "inst.json") if inst else None,
            dataset_name=unique("pan"),
            cache_dir=os.path.join(self.root, "cache"),
        )

    def test_panoptic_categories_disagree_with_instances(self):
        pan = self.panoptic()
        thing = pan["categories"][0]
        thing["isthing"] = 0
        with self.assertRaises(InputError) as ctx:
            self.load_panoptic(pan, self.data)
        msg = self.one_problem(str(ctx.exception))
        self.assertIn(
            f"pan.json: category {thing['id']}: field 'isthing' = 0: stuff here, but a thing "
            "category of inst.json",
            msg,
        )
        # instances annotated on a stuff category
        pan = self.panoptic()
        stuff = next(c for c in pan["categories"] if not c["isthing"])
        self.data["categories"].append({"id": stuff["id"], "name": stuff["name"]})
        self.data["annotations"][0]["category_id"] = stuff["id"]
        with self.assertRaises(InputError) as ctx:
            self.load_panoptic(pan, self.data)
        self.assertIn(
            f"pan.json: category {stuff['id']}: field 'isthing' = 0: stuff here, but a thing "
            "category of inst.json",
            self.one_problem(str(ctx.exception)),
        )

    def test_crowd_stuff_and_duplicate_segments(self):
        pan = self.panoptic()
        cats = {c["id"]: c for c in pan["categories"]}
        ann = pan["annotations"][0]
        seg = next(s for s in ann["segments_info"] if not cats[s["category_id"]]["isthing"])
        seg["iscrowd"] = 1
        with self.assertRaises(InputError) as ctx:
            self.load_panoptic(pan)
        self.assertIn(
            f"pan.json: segment {seg['id']} of image {ann['image_id']}: field 'iscrowd' = 1: "
            f"category {seg['category_id']} is stuff (isthing 0)",
            self.one_problem(str(ctx.exception)),
        )
        thing = next(s for s in ann["segments_info"] if cats[s["category_id"]]["isthing"])
        thing["iscrowd"] = 1  # a crowd thing segment is COCO's own convention
        seg["iscrowd"] = 0
        ann["segments_info"].append(dict(ann["segments_info"][0]))
        with self.assertRaises(InputError) as ctx:
            self.load_panoptic(pan)
        msg = self.one_problem(str(ctx.exception))
        self.assertEqual(msg.count("share this id"), 1)
        self.assertIn(
            f"field 'id' = {ann['segments_info'][0]['id']}: 2 segments share this id", msg
        )

    def test_panoptic_training_set_without_segments(self):
        from seg2.data.coco_panoptic import register_coco_panoptic

        pan = self.panoptic()
        for ann in pan["annotations"]:
            ann["segments_info"] = []
        path = self.write(pan, "pan.json")
        pan_root = f"{self.root}/panoptic_val"
        for f in os.listdir(pan_root):  # all void, as the JSON says
            Image.new("RGB", Image.open(os.path.join(pan_root, f)).size).save(
                os.path.join(pan_root, f)
            )
        msg = self.trained_on(lambda n: register_coco_panoptic(n, self.images, pan_root, path))
        self.assertIn(f"{path}: field 'segments_info': no image has a segment", msg)


class TestSemanticLabels(ValidationCase):
    """.npy labels are held to a label PNG's rules; ignore-only labels are counted."""

    def setUp(self):
        super().setUp()
        self.labels = f"{self.root}/semantic_val"
        self.files = sorted(os.listdir(self.labels))
        self.names = [f"c{i}" for i in range(7)]

    def to_npy(self, f, arr):
        os.remove(os.path.join(self.labels, f))
        path = os.path.join(self.labels, os.path.splitext(f)[0] + ".npy")
        np.save(path, arr)
        return path

    def test_npy_dtype_and_range(self):
        arr = np.asarray(Image.open(os.path.join(self.labels, self.files[0])))
        floats = self.to_npy(self.files[0], arr.astype(np.float32))
        neg = arr.astype(np.int64)
        neg[3, 4] = -1
        negative = self.to_npy(self.files[1], neg)
        fine = self.to_npy(self.files[2], arr.astype(np.int32))
        with self.assertRaises(InputError) as ctx:
            load_semantic(self.images, self.labels, self.names, unique("npy"))
        msg = str(ctx.exception)
        self.assertIn(
            f"{floats}: label of '{self.images}/{os.path.splitext(self.files[0])[0]}.png': "
            "field 'sem_seg_file_name' = ",
            msg,
        )
        self.assertIn("label array has dtype float32; class ids must be integers", msg)
        self.assertIn(f"{negative}: label of", msg)
        self.assertIn("field 'value' = [-1]: not a class id 0..6 nor the ignore label 255", msg)
        self.assertNotIn(fine, msg)
        self.assertIn("2 problem(s) in 2 sample(s)", msg)

    def test_ignore_only_labels(self):
        for i, f in enumerate(self.files):
            arr = np.asarray(Image.open(os.path.join(self.labels, f)))
            Image.fromarray(np.full_like(arr, 255)).save(os.path.join(self.labels, f))
            if i == 0:  # one ignore-only image: a note with its count
                name = unique("one")
                load_semantic(self.images, self.labels, self.names, name)
                (line,) = [x for x in last_report(name).note_lines() if "ignore label" in x]
                self.assertIn(f"1 time(s), e.g. {f}", line)
        from seg2.data.semantic import register_semantic

        msg = self.trained_on(lambda n: register_semantic(n, self.images, self.labels, self.names))
        self.assertIn(
            f"{self.labels}: field 'sem_seg_file_name': every pixel of all {len(self.files)} "
            "label(s) is the ignore label 255: nothing to train on",
            msg,
        )
        # scored only: NaN metrics with a warning, as the evaluators do
        self.assertEqual(len(load_semantic(self.images, self.labels, self.names, unique("s"))), 4)


class TestRegisteredDatasets(ValidationCase):
    def test_config_registration_and_cityscapes_dicts(self):
        """DATASETS.SEG2.SEMANTIC registers from the config; a Cityscapes-format split (not
        one of seg2's format loaders) is checked through its dicts, with skip applied to
        what DatasetCatalog returns afterwards."""
        from seg2.data.cityscapes import register_cityscapes
        from seg2.data.datasets import register_from_config

        cfg = get_seg2_cfg()
        name = unique("cfgsem")
        cfg.DATASETS.SEG2.SEMANTIC = [
            [name, self.images, f"{self.root}/semantic_val", "a,b,c,d,e,f,g"]
        ]
        cfg.DATASETS.SEG2.ON_BAD_SAMPLE = "skip"
        register_from_config(cfg)
        reports = validate_datasets(cfg, [name])
        self.assertTrue(reports[name].ok)
        self.assertEqual(len(DatasetCatalog.get(name)), len(os.listdir(self.images)))

        prefix = unique("cs")
        register_cityscapes(os.path.join(self.root, "cityscapes"), prefix=prefix)
        cs = f"{prefix}_val_sem_seg"
        first = DatasetCatalog.get(cs)[0]
        raw = open(first["file_name"], "rb").read()
        open(first["file_name"], "wb").write(raw[: len(raw) // 3])
        with self.assertLogs("seg2.data.validate", "WARNING"):
            reports = validate_datasets(cfg, [cs])
        self.assertIn(first["file_name"], reports[cs].format())
        names = [d["file_name"] for d in DatasetCatalog.get(cs)]
        self.assertNotIn(first["file_name"], names)
        self.assertEqual(len(names), reports[cs].num_samples - 1)


if __name__ == "__main__":
    unittest.main()
