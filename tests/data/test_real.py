"""Real data from PyPI packages (seg2/data/real.py) and the nuclei example's object metric.

The conversion is checked against the raw stardist mask read here with tifffile, not
through the code under test; the metric against hand-worked masks.
"""

import importlib.util
import os
import shutil
import tempfile
import unittest

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image
from scipy import ndimage

from benchmarks.nuclei import draw_nuclei_figure, nuclei_cfg, separation_metrics
from seg2.data import Seg2DatasetMapper
from seg2.data.real import (
    NUCLEI_CLASSES,
    load_nuclei,
    prepare_nuclei,
    register_nuclei,
    separation_lines,
    touching_instances,
)
from seg2.structures.panoptic import rgb2id as rgb_to_id

_SPEC = importlib.util.find_spec("stardist")
_DIR = os.path.join(list(_SPEC.submodule_search_locations)[0], "data", "images") if _SPEC else ""
_IMG, _MASK = os.path.join(_DIR, "img2d.tif"), os.path.join(_DIR, "mask2d.tif")
HAVE_DATA = (
    bool(_SPEC) and os.path.isfile(_MASK) and importlib.util.find_spec("tifffile") is not None
)
SKIP_REASON = (
    "stardist's nuclei data (stardist/data/images/mask2d.tif) or tifffile is not installed: "
    "pip install --no-deps stardist==0.9.2 tifffile==2024.8.30"
)
EIGHT = np.ones((3, 3), dtype=bool)


def _png(path):
    return np.asarray(Image.open(path))


def _neighbour_ids(mask, k):
    """Ids 8-adjacent to instance k, by dilation (independent of touching_instances)."""
    ring = ndimage.binary_dilation(mask == k, structure=EIGHT) & (mask != k)
    return set(np.unique(mask[ring]).tolist()) - {0}


@unittest.skipUnless(HAVE_DATA, SKIP_REASON)
class TestNucleiConversion(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import tifffile

        cls.raw_image = tifffile.imread(_IMG)
        cls.raw = tifffile.imread(_MASK).astype(np.int64)
        cls.tmp = tempfile.mkdtemp(prefix="seg2-nuclei-")
        cls.plain = prepare_nuclei(os.path.join(cls.tmp, "plain"), separate_touching=False)
        cls.sep = prepare_nuclei(os.path.join(cls.tmp, "sep"), separate_touching=True)
        cls.halves = {"train": cls.raw[:256], "val": cls.raw[256:]}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _panoptic(self, paths, split):
        import json

        with open(paths[split]["panoptic_json"]) as f:
            data = json.load(f)
        (ann,) = data["annotations"]
        return rgb_to_id(_png(paths[split]["pan_seg"])), ann["segments_info"], data["categories"]

    def test_instance_count_is_the_issues(self):
        self.assertEqual(self.raw.shape, (512, 512))
        self.assertEqual(len(np.unique(self.raw)) - 1, 125)
        kept = set()
        for split in ("train", "val"):
            _, segments, _ = self._panoptic(self.plain, split)
            kept |= {s["id"] for s in segments if s["category_id"] == 2}
        self.assertEqual(kept, set(np.unique(self.raw).tolist()) - {0})

    def test_halves_partition_the_image(self):
        train, val = (_png(self.plain[s]["image"]) for s in ("train", "val"))
        self.assertEqual(train.shape, (256, 512, 3))
        self.assertEqual(val.shape, (256, 512, 3))
        full = np.concatenate([train, val], axis=0)
        for c in (1, 2):
            np.testing.assert_array_equal(full[..., c], full[..., 0])
        # The documented 8-bit mapping: a linear stretch of the whole image to 0..255.
        raw = self.raw_image.astype(np.float64)
        expected = np.round(255 * (raw - raw.min()) / (raw.max() - raw.min())).astype(np.uint8)
        np.testing.assert_array_equal(full[..., 0], expected)
        inst = np.concatenate([np.load(self.plain[s]["instances"]) for s in ("train", "val")])
        np.testing.assert_array_equal(inst, self.raw)

    def test_semantic_png_is_mask_foreground(self):
        for split, half in self.halves.items():
            sem = _png(self.plain[split]["sem_seg"])
            self.assertEqual(sem.dtype, np.uint8)
            np.testing.assert_array_equal(sem, (half > 0).astype(np.uint8))

    def test_each_panoptic_segment_is_one_instance(self):
        for split, half in self.halves.items():
            pan, segments, categories = self._panoptic(self.plain, split)
            self.assertEqual({c["name"] for c in categories}, set(NUCLEI_CLASSES))
            self.assertEqual(sorted(s["id"] for s in segments), sorted(np.unique(pan).tolist()))
            things = [s for s in segments if s["category_id"] == 2]
            self.assertEqual(len(things), len(np.unique(half)) - 1)
            for s in things:
                np.testing.assert_array_equal(pan == s["id"], half == s["id"])
                ys, xs = np.nonzero(half == s["id"])
                self.assertEqual(s["area"], len(ys))
                self.assertEqual(s["bbox"], [xs.min(), ys.min(), xs.ptp() + 1, ys.ptp() + 1])
            (background,) = [s for s in segments if s["category_id"] == 1]
            np.testing.assert_array_equal(pan == background["id"], half == 0)

    def test_cut_nuclei_keep_their_part(self):
        cut = set(np.unique(self.raw[255])) & set(np.unique(self.raw[256])) - {0}
        self.assertGreater(len(cut), 0)
        for split, half in self.halves.items():
            pan, _, _ = self._panoptic(self.plain, split)
            for k in cut:
                np.testing.assert_array_equal(pan == k, half == k)

    def test_touching_instances_matches_dilation(self):
        expected = [k for k in np.unique(self.raw)[1:] if _neighbour_ids(self.raw, k)]
        self.assertEqual(touching_instances(self.raw).tolist(), expected)
        self.assertEqual(len(expected), 42)  # counted when the example was written

    def test_separation_lines_split_touching_nuclei_only(self):
        for split, half in self.halves.items():
            pan, segments, _ = self._panoptic(self.sep, split)
            sem = _png(self.sep[split]["sem_seg"])
            things = {s["id"] for s in segments if s["category_id"] == 2}
            np.testing.assert_array_equal(sem, np.isin(pan, list(things)).astype(np.uint8))
            nuclei = np.where(np.isin(pan, list(things)), pan, 0)
            removed = (half > 0) & (nuclei == 0)
            self.assertTrue(removed.any())
            np.testing.assert_array_equal(nuclei[nuclei > 0], half[nuclei > 0])
            for k in np.unique(half)[1:]:
                if _neighbour_ids(half, k):
                    self.assertFalse(_neighbour_ids(nuclei, k), f"nucleus {k} still touches")
                    self.assertGreater((nuclei == k).sum(), 0.5 * (half == k).sum())
                else:
                    np.testing.assert_array_equal(nuclei == k, half == k)
            # Only pixels that had a neighbour from another nucleus are removed.
            other = np.zeros(half.shape, dtype=bool)
            for k in np.unique(half[removed]):
                ring = ndimage.binary_dilation((half > 0) & (half != k), structure=EIGHT)
                other |= (half == k) & ring
            self.assertFalse((removed & ~other).any())

    def test_cache_is_reused(self):
        path = self.sep["val"]["sem_seg"]
        before = os.path.getmtime(path)
        prepare_nuclei(os.path.join(self.tmp, "sep"), separate_touching=True)
        self.assertEqual(os.path.getmtime(path), before)

    def test_registration_is_lazy_and_standard(self):
        root = os.path.join(self.tmp, "lazy")
        prefix = f"tnuclei{len(DatasetCatalog.list())}"
        register_nuclei(root, prefix=prefix)
        self.assertFalse(os.path.exists(root))
        meta = MetadataCatalog.get(f"{prefix}_val_sem")
        self.assertEqual(meta.evaluator_type, "sem_seg")
        self.assertEqual(meta.stuff_classes, ["background", "nucleus"])
        self.assertEqual(meta.ignore_label, 255)
        (record,) = DatasetCatalog.get(f"{prefix}_val_sem")
        for key in ("file_name", "sem_seg_file_name", "pan_seg_file_name", "segments_info"):
            self.assertIn(key, record)
        self.assertEqual((record["height"], record["width"]), (256, 512))
        ids = {s["id"]: s for s in record["segments_info"]}
        self.assertEqual(ids[int(self.raw.max()) + 1]["category_id"], 0)  # background
        self.assertTrue(all(s["isthing"] == (s["category_id"] == 1) for s in ids.values()))

    def test_mapper_weight_map_on_a_crop(self):
        (record,) = load_nuclei("train", os.path.join(self.tmp, "sep"))
        sem_full = _png(record["sem_seg_file_name"])
        inst_full = np.load(self.sep["train"]["instances"])
        lines = separation_lines(inst_full) & (sem_full == 0)
        y, x = (int(v) for v in np.argwhere(lines)[0])
        y0, x0 = min(max(y - 32, 0), 256 - 64), min(max(x - 32, 0), 512 - 64)
        mapper = Seg2DatasetMapper(
            True,
            augmentations=[T.CropTransform(x0, y0, 64, 64)],
            image_format="BGR",
            instances=False,
            num_classes=2,
            weight_map=True,
            weight_map_w0=10.0,
            weight_map_sigma=5.0,
        )
        out = mapper(record)
        sem = sem_full[y0 : y0 + 64, x0 : x0 + 64]
        np.testing.assert_array_equal(out["sem_seg"].numpy(), sem)
        w = out["sem_seg_weights"].numpy()
        self.assertEqual(w.shape, (64, 64))
        # Class balance: each class carries half of the total weight (U-Net's w_c).
        n, n_fg = sem.size, int((sem == 1).sum())
        np.testing.assert_allclose(w[sem == 1], n / (2 * n_fg), rtol=1e-5)
        # A separation-line pixel: w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2)) (U-Net eq. 2),
        # with d1, d2 measured here by brute force over the crop's nuclei.
        pan = rgb_to_id(_png(record["pan_seg_file_name"]))[y0 : y0 + 64, x0 : x0 + 64]
        things = [s["id"] for s in record["segments_info"] if s["isthing"]]
        dists = sorted(
            np.sqrt(((np.argwhere(pan == k) - (y - y0, x - x0)) ** 2).sum(1)).min()
            for k in things
            if (pan == k).any()
        )
        self.assertLessEqual(dists[1], 1.5)  # right between two nuclei
        w_bg = n / (2 * (n - n_fg))
        expected = w_bg + 10 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * 5.0**2))
        self.assertAlmostEqual(float(w[y - y0, x - x0]), expected, places=4)
        self.assertGreater(float(w[y - y0, x - x0]), w_bg + 7)

    def test_mapper_from_config_random_crop(self):
        cfg = nuclei_cfg(
            "Nuclei-SemanticSegmentation/unet_weighted_nuclei.yaml",
            ["INPUT.CROP.SIZE", (96, 96)],
        )
        (record,) = load_nuclei("train", os.path.join(self.tmp, "sep"))
        np.random.seed(0)
        out = Seg2DatasetMapper(cfg, True)(record)
        self.assertEqual(tuple(out["image"].shape), (3, 96, 96))
        self.assertEqual(tuple(out["sem_seg_weights"].shape), (96, 96))
        self.assertTrue(bool((out["sem_seg_weights"] > 0).all()))


class TestSeparationLines(unittest.TestCase):
    def test_two_squares_side_by_side(self):
        ids = np.zeros((4, 6), dtype=np.int32)
        ids[1:3, 1:3], ids[1:3, 3:5] = 1, 2
        expected = np.zeros_like(ids, dtype=bool)
        expected[1:3, 2] = True  # the smaller id gives up its contact column
        np.testing.assert_array_equal(separation_lines(ids), expected)
        self.assertEqual(touching_instances(ids).tolist(), [1, 2])

    def test_diagonal_contact_and_isolated(self):
        ids = np.zeros((5, 5), dtype=np.int32)
        ids[0, 0], ids[1, 1], ids[4, 4] = 3, 5, 7
        np.testing.assert_array_equal(np.argwhere(separation_lines(ids)), [[0, 0]])
        self.assertEqual(touching_instances(ids).tolist(), [3, 5])


class TestSeparationMetrics(unittest.TestCase):
    def setUp(self):
        # Two touching 4x4 nuclei (ids 1, 2) and an isolated one (id 3).
        self.gt = np.zeros((8, 14), dtype=np.int32)
        self.gt[2:6, 1:5], self.gt[2:6, 5:9], self.gt[2:6, 10:13] = 1, 2, 3

    def test_foreground_of_the_gt_merges_touching_nuclei(self):
        m = separation_metrics(self.gt > 0, self.gt)
        self.assertEqual((m["gt_nuclei"], m["pred_components"], m["touching"]), (3, 2, 2))
        self.assertEqual((m["touching_separated"], m["separated"]), (0, 1))
        self.assertAlmostEqual(m["f1_iou50"], 100 * 2 * 1 / 5)

    def test_a_one_pixel_gap_separates(self):
        pred = self.gt > 0
        pred[:, 4] = False
        m = separation_metrics(pred, self.gt)
        self.assertEqual((m["pred_components"], m["touching_separated"], m["separated"]), (3, 2, 3))
        self.assertEqual(m["touching_separated_pct"], 100.0)
        self.assertEqual(m["f1_iou50"], 100.0)

    def test_diagonal_bridge_still_merges(self):
        pred = self.gt > 0
        pred[:, 4:6] = False
        pred[3, 4], pred[4, 5] = True, True  # touch only diagonally: one 8-connected object
        m = separation_metrics(pred, self.gt)
        self.assertEqual((m["pred_components"], m["touching_separated"]), (2, 0))

    def test_half_coverage_is_not_enough(self):
        pred = np.zeros_like(self.gt, dtype=bool)
        pred[2:4, 10:13] = True  # 6 of nucleus 3's 12 pixels: exactly 50%
        m = separation_metrics(pred, self.gt)
        self.assertEqual(m["separated"], 0)
        pred[4, 10] = True
        self.assertEqual(separation_metrics(pred, self.gt)["separated"], 1)

    def test_empty_prediction_and_shape_error(self):
        m = separation_metrics(np.zeros_like(self.gt, dtype=bool), self.gt)
        self.assertEqual((m["pred_components"], m["separated"], m["f1_iou50"]), (0, 0, 0.0))
        with self.assertRaisesRegex(ValueError, "same shape"):
            separation_metrics(np.zeros((3, 3), dtype=bool), self.gt)

    def test_figure_has_one_panel_per_prediction(self):
        image = np.zeros(self.gt.shape + (3,), dtype=np.uint8)
        fig = draw_nuclei_figure(image, self.gt, {"a": self.gt > 0, "b": self.gt > 1})
        self.assertEqual(fig.shape[1], 2 * self.gt.shape[1] + 6)
        self.assertEqual(fig.shape[0], 2 * (self.gt.shape[0] + 22) + 6)


if __name__ == "__main__":
    unittest.main()
