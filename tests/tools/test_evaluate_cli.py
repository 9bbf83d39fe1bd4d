"""tools/evaluate.py: every subcommand on tiny inputs, and bad input stopping with exit
status 2 and one line that names the file."""

import contextlib
import glob
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from seg2_testing import REPO_ROOT, run_tool, subprocess_env, tiny_synthetic_root


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "seg2_evaluate_cli", REPO_ROOT / "tools" / "evaluate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = _load_cli()


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = CLI.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


class TestSemantic(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="seg2-cli-sem-")
        self.gt, self.pred = os.path.join(self.tmp, "gt"), os.path.join(self.tmp, "pred")
        # image a: gt [0 0 | 1 1], pred [0 1 | 1 1]; image b (in a subfolder): all correct, one ignored
        _png(os.path.join(self.gt, "a.png"), [[0, 0], [1, 1]])
        _png(os.path.join(self.pred, "a.png"), [[0, 1], [1, 1]])
        _png(os.path.join(self.gt, "sub", "b.png"), [[2, 255]])
        _png(os.path.join(self.pred, "sub", "b.png"), [[2, 0]])

    def args(self, *extra):
        return [
            "semantic",
            "--gt-dir",
            self.gt,
            "--pred-dir",
            self.pred,
            "--num-classes",
            3,
            *extra,
        ]

    def test_metrics_json_and_table(self):
        out_json = os.path.join(self.tmp, "out", "metrics.json")
        code, out, err = run_cli(*self.args("--class-names", "x,y,z", "--output", out_json))
        self.assertEqual(code, 0, err)
        res = json.load(open(out_json))["sem_seg"]
        # tp = 1, 2, 1; pos_gt = 2, 2, 1; pos_pred = 1, 3, 1
        self.assertAlmostEqual(res["IoU-x"], 50.0)
        self.assertAlmostEqual(res["IoU-y"], 100 * 2 / 3)
        self.assertAlmostEqual(res["IoU-z"], 100.0)
        self.assertAlmostEqual(res["pACC"], 80.0)
        self.assertIn("mIoU", out)
        self.assertIn("| x ", out)
        self.assertTrue(os.path.isfile(os.path.join(self.tmp, "out", "sem_seg_confusion.csv")))

    def _fails(self, pattern, *extra):
        code, _, err = run_cli(*self.args(*extra))
        self.assertEqual(code, 2)
        self.assertRegex(err, pattern)
        self.assertNotIn("Traceback", err)
        self.assertEqual(len(err.strip().splitlines()), 1)

    def test_missing_prediction(self):
        os.remove(os.path.join(self.pred, "sub", "b.png"))
        self._fails(r"gt/sub/b\.png: no prediction")

    def test_size_mismatch(self):
        _png(os.path.join(self.pred, "a.png"), [[0, 1, 1]])
        self._fails(r"pred/a\.png: prediction is \(1, 3\)")

    def test_label_out_of_range(self):
        _png(os.path.join(self.gt, "a.png"), [[0, 7], [1, 1]])
        self._fails(r"gt/a\.png: ground-truth label value\(s\) \[7\]")

    def test_unreadable_png(self):
        with open(os.path.join(self.pred, "a.png"), "wb") as f:
            f.write(b"not a png")
        self._fails(r"pred/a\.png: unreadable predicted label PNG")

    def test_wrong_number_of_names(self):
        self._fails(r"--class-names: 2 names", "--class-names", "x", "y")

    def test_exit_status_of_the_script(self):
        os.remove(os.path.join(self.pred, "a.png"))
        proc = run_tool(
            ["tools/evaluate.py", *map(str, self.args())], env=subprocess_env(), timeout=120
        )
        self.assertEqual(proc.returncode, 2)
        self.assertIn("gt/a.png: no prediction", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)


def _coco_gt(path):
    images = [
        {"id": 1, "file_name": "1.jpg", "height": 20, "width": 30},
        {"id": 2, "file_name": "2.jpg", "height": 20, "width": 30},
    ]
    anns = []
    for img, (y, x, cat) in [(1, (2, 3, 4)), (1, (10, 15, 8)), (2, (5, 5, 4))]:
        m = np.zeros((20, 30), np.uint8)
        m[y : y + 8, x : x + 10] = 1
        rle = mask_util.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": img,
                "category_id": cat,
                "segmentation": rle,
                "area": 80.0,
                "bbox": [float(x), float(y), 10.0, 8.0],
                "iscrowd": 0,
            }
        )
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 4, "name": "four"}, {"id": 8, "name": "eight"}],
    }
    json.dump(gt, open(path, "w"))
    return gt


class TestInstances(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="seg2-cli-coco-")
        self.gt_json = os.path.join(self.tmp, "gt.json")
        gt = _coco_gt(self.gt_json)
        self.results = [
            {k: a[k] for k in ("image_id", "category_id", "bbox", "segmentation")}
            for a in gt["annotations"]
        ]
        for r in self.results:
            r["score"] = 0.9

    def _write(self, results):
        path = os.path.join(self.tmp, "res.json")
        json.dump(results, open(path, "w"))
        return path

    def test_perfect_detections(self):
        out_json = os.path.join(self.tmp, "metrics.json")
        code, out, err = run_cli(
            "instances",
            "--gt-json",
            self.gt_json,
            "--pred-json",
            self._write(self.results),
            "--output",
            out_json,
        )
        self.assertEqual(code, 0, err)
        res = json.load(open(out_json))
        self.assertEqual(sorted(res), ["bbox", "segm"])
        for task in ("bbox", "segm"):
            self.assertAlmostEqual(res[task]["AP"], 100.0)
            self.assertAlmostEqual(res[task]["AP-eight"], 100.0)
        self.assertIn("segm:", out)

    def test_unknown_ids(self):
        for field, value, pattern in (
            ("image_id", 7, "image_id 7"),
            ("category_id", 1, "category_id 1"),
        ):
            bad = [dict(r) for r in self.results]
            bad[1][field] = value
            code, _, err = run_cli(
                "instances", "--gt-json", self.gt_json, "--pred-json", self._write(bad)
            )
            self.assertEqual(code, 2)
            self.assertRegex(err, rf"res\.json: entry 1 has {pattern}")


@unittest.skipIf(
    importlib.util.find_spec("seg2.evaluation.panoptic") is None, "panoptic evaluator not present"
)
class TestPanopticCoco(unittest.TestCase):
    def test_gt_against_itself(self):
        root = tiny_synthetic_root()
        gt_json = os.path.join(root, "annotations", "panoptic_val.json")
        gt_dir = os.path.join(root, "panoptic_val")
        out_json = os.path.join(tempfile.mkdtemp(prefix="seg2-cli-pan-"), "m.json")
        code, out, err = run_cli(
            "panoptic",
            "--gt-json",
            gt_json,
            "--gt-dir",
            gt_dir,
            "--pred-json",
            gt_json,
            "--pred-dir",
            gt_dir,
            "--num-workers",
            0,
            "--output",
            out_json,
        )
        self.assertEqual(code, 0, err)
        self.assertAlmostEqual(json.load(open(out_json))["panoptic_seg"]["PQ"], 100.0)
        self.assertIn("PQ", out)


class TestCityscapes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        src = os.path.join(tiny_synthetic_root(), "cityscapes")
        cls.root = os.path.join(tempfile.mkdtemp(prefix="seg2-cli-cs-"), "cityscapes")
        shutil.copytree(os.path.join(src, "gtFine", "val"), os.path.join(cls.root, "gtFine", "val"))
        cls.gt_files = sorted(
            glob.glob(os.path.join(cls.root, "gtFine", "val", "*", "*_labelIds.png"))
        )

    def test_semantic_instance_panoptic(self):
        sem = os.path.join(self.root, "pred_sem")
        inst = os.path.join(self.root, "pred_inst")
        os.makedirs(sem), os.makedirs(inst)
        for f in self.gt_files:
            stem = "_".join(os.path.basename(f).split("_")[:3])
            shutil.copy(f, os.path.join(sem, stem + "_pred.png"))
            ids = np.array(Image.open(f.replace("labelIds", "instanceIds")))
            lines = []
            for v in np.unique(ids[ids >= 1000]):
                _png(os.path.join(inst, f"{stem}_{v}.png"), (ids == v) * 255)
                lines.append(f"{stem}_{v}.png {v // 1000} 1.0\n")
            open(os.path.join(inst, stem + "_pred.txt"), "w").write("".join(lines))
        out_json = os.path.join(self.root, "m.json")
        for command, pred, key, metric in (
            ("cityscapes-semantic", sem, "cityscapes_sem_seg", "IoU"),
            ("cityscapes-instance", inst, "cityscapes_instance", "AP"),
        ):
            code, out, err = run_cli(
                command, "--gt-root", self.root, "--pred-dir", pred, "--output", out_json
            )
            self.assertEqual(code, 0, err)
            self.assertEqual(json.load(open(out_json))[key][metric], 100.0, command)
        # Panoptic: the GT (generated on first use) copied as the prediction.
        code, _, err = run_cli(
            "cityscapes-panoptic",
            "--gt-root",
            self.root,
            "--pred-dir",
            os.path.join(self.root, "gtFine"),
            "--output",
            out_json,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.load(open(out_json))["cityscapes_panoptic_seg"]["PQ"], 100.0)

    def test_missing_prediction(self):
        empty = os.path.join(self.root, "empty")
        os.makedirs(empty, exist_ok=True)
        code, _, err = run_cli("cityscapes-semantic", "--gt-root", self.root, "--pred-dir", empty)
        self.assertEqual(code, 2)
        self.assertIn(f"{self.gt_files[0]}: no prediction", err)


class TestHelp(unittest.TestCase):
    def test_help_describes_pred_dir_without_importing_seg2(self):
        """--help is answered before seg2 (and with it torch and Detectron2) is imported, and
        says what --pred-dir holds for each command."""
        probe = (
            "import runpy, sys\n"
            "sys.argv = ['evaluate.py', '--help']\n"
            "try:\n"
            "    runpy.run_path('tools/evaluate.py', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "print('IMPORTED', sorted(m for m in ('seg2', 'torch', 'detectron2') if m in sys.modules))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("IMPORTED []", proc.stdout)
        text = " ".join(proc.stdout.split())
        for command, words in (
            ("cityscapes-instance", "<city>_<seq>_<frame>*.txt"),
            ("cityscapes-semantic", "Cityscapes label ids"),
            ("cityscapes-panoptic", "cityscapes_panoptic_<split>.json"),
            ("semantic", "class ids"),
        ):
            self.assertRegex(text, f"{command}: [^:]*{re.escape(words)}")


if __name__ == "__main__":
    unittest.main()
