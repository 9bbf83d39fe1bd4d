"""The real entry points on broken inputs, as a user runs them (subprocesses): the message
names the file and the field, the exit status is non-zero, no traceback.

tools/check_dataset.py checks several broken datasets in one run (each is reported, none
stops the others); tools/evaluate.py scores an empty prediction set as 0 AP and refuses a
ground truth with duplicate ids; tools/train_net.py stops before training on a broken
dataset and trains + evaluates on solaris' real COCO export (flat polygons, uint16 TIFFs)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import yaml
from PIL import Image

from seg2_testing import REPO_ROOT, tiny_synthetic_root


def run_tool(args, timeout=600, env_root=None):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    if env_root:
        env["DETECTRON2_DATASETS"] = env_root
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def broken_copy():
    """A copy of the tiny synthetic data with one problem per format."""
    root = os.path.join(tempfile.mkdtemp(prefix="seg2-chk-"), "synthetic")
    shutil.copytree(tiny_synthetic_root(), root)
    ann = json.load(open(f"{root}/annotations/instances_val.json"))
    ann["annotations"][0]["category_id"] = 99
    truncated = f"{root}/images/val/" + ann["images"][1]["file_name"]
    raw = open(truncated, "rb").read()
    with open(truncated, "wb") as f:
        f.write(raw[: len(raw) // 2])
    json.dump(ann, open(f"{root}/annotations/bad_instances.json", "w"))
    pan = json.load(open(f"{root}/annotations/panoptic_val.json"))
    gray = f"{root}/panoptic_val/" + pan["annotations"][2]["file_name"]
    Image.open(gray).convert("L").save(gray)
    labels = sorted(os.listdir(f"{root}/semantic_val"))
    os.remove(f"{root}/semantic_val/{labels[3]}")
    with open(f"{root}/annotations/malformed.json", "w") as f:
        f.write('{"images": [}')
    return root, ann, truncated, gray, labels[3]


class TestCheckDataset(unittest.TestCase):
    def test_broken_datasets_reported_together(self):
        root, ann, truncated, gray, missing_label = broken_copy()
        cfg = os.path.join(os.path.dirname(root), "check.yaml")
        seg2 = {
            "COCO_INSTANCES": [
                ["bad_inst", f"{root}/annotations/bad_instances.json", f"{root}/images/val"],
                ["bad_json", f"{root}/annotations/malformed.json", f"{root}/images/val"],
            ],
            "COCO_PANOPTIC": [
                [
                    "bad_pan",
                    f"{root}/images/val",
                    f"{root}/panoptic_val",
                    f"{root}/annotations/panoptic_val.json",
                ]
            ],
            "SEMANTIC": [
                ["bad_sem", f"{root}/images/val", f"{root}/semantic_val", "a,b,c,d,e,f,g"]
            ],
        }
        yaml.safe_dump({"DATASETS": {"SEG2": seg2}}, open(cfg, "w"))
        rc, out, err = run_tool(
            [
                "tools/check_dataset.py",
                "--config-file",
                cfg,
                "--datasets",
                "bad_inst",
                "bad_json",
                "bad_pan",
                "bad_sem",
                "solaris_buildings_val",
                "INPUT.SEG2.BIT_DEPTH.METHOD",
                "divisor",
                "INPUT.SEG2.BIT_DEPTH.DIVISOR",
                "16.0",
            ],
            env_root=os.path.dirname(root),
        )
        self.assertEqual(rc, 2, out + err)  # 2: one dataset is unusable as a whole
        self.assertNotIn("Traceback", out + err)
        a0 = ann["annotations"][0]
        self.assertIn(f"bad_instances.json: annotation {a0['id']}: field 'category_id' = 99", out)
        self.assertIn(f"{truncated}: image {ann['images'][1]['id']}: field 'file_name'", out)
        self.assertIn(f"{gray}: image", out)
        self.assertIn("field 'pan_seg_file_name'", out)
        self.assertIn(f"field 'sem_seg_file_name' = '{missing_label}': no label in", out)
        self.assertIn("malformed.json: malformed JSON at line 1", err)
        self.assertIn("dataset 'solaris_buildings_val': 20 sample(s), no problems", out)
        self.assertIn("flat polygon list", out)
        # the KEY VALUE overrides after --datasets chose the 16-bit rule
        self.assertIn("uint16 single-band image scaled to 8 bits by floor(v / 16): 20 time(s)", out)
        self.assertIn("4 of 5 dataset(s) have problems", out)


class TestEvaluateEdgeCases(unittest.TestCase):
    def test_no_predictions_is_zero_ap_and_bad_ground_truth_is_refused(self):
        root = tiny_synthetic_root()
        tmp = tempfile.mkdtemp(prefix="seg2-evalcli-")
        gt = f"{root}/annotations/instances_val.json"
        empty = os.path.join(tmp, "empty.json")
        json.dump([], open(empty, "w"))
        out_json = os.path.join(tmp, "m.json")
        rc, out, err = run_tool(
            [
                "tools/evaluate.py",
                "instances",
                "--gt-json",
                gt,
                "--pred-json",
                empty,
                "--output",
                out_json,
            ]
        )
        self.assertEqual(rc, 0, err)
        metrics = json.load(open(out_json))
        self.assertEqual((metrics["bbox"]["AP"], metrics["segm"]["AP"]), (0.0, 0.0))

        data = json.load(open(gt))
        data["images"].append(dict(data["images"][0]))  # duplicate image id
        bad = os.path.join(tmp, "dup.json")
        json.dump(data, open(bad, "w"))
        rc, out, err = run_tool(
            ["tools/evaluate.py", "instances", "--gt-json", bad, "--pred-json", empty]
        )
        self.assertEqual(rc, 2)
        self.assertNotIn("Traceback", out + err)
        self.assertIn(f"dup.json: image {data['images'][0]['id']}: field 'id'", err)


class TestTrainNetData(unittest.TestCase):
    SMALL = [
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.WARMUP_ITERS",
        "1",
        "SOLVER.STEPS",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "TEST.SEG2.NUM_VIS",
        "0",
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.MAX_ITER",
        "1",
    ]
    CFG = "configs/Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml"

    def test_broken_test_set_stops_before_training(self):
        """A broken DATASETS.TEST split is found at setup, not after training."""
        root, ann, truncated, _, _ = broken_copy()
        out_dir = os.path.join(os.path.dirname(root), "out")
        entry = f'[["bad_inst", "{root}/annotations/bad_instances.json", "{root}/images/val"]]'
        rc, out, err = run_tool(
            [
                "tools/train_net.py",
                "--config-file",
                self.CFG,
                "OUTPUT_DIR",
                out_dir,
                "DATASETS.SEG2.COCO_INSTANCES",
                entry,
                "DATASETS.TEST",
                '("bad_inst",)',
                *self.SMALL,
            ],
            env_root=os.path.dirname(root),
        )
        self.assertNotEqual(rc, 0)
        self.assertIn(
            f"bad_instances.json: annotation {ann['annotations'][0]['id']}: field 'category_id' = 99",
            err,
        )
        self.assertIn(f"{truncated}: image", err)
        self.assertNotIn("Starting training", out + err)

    def test_trains_and_evaluates_on_solaris_export(self):
        out_dir = tempfile.mkdtemp(prefix="seg2-solaris-")
        rc, out, err = run_tool(
            [
                "tools/train_net.py",
                "--config-file",
                self.CFG,
                "OUTPUT_DIR",
                out_dir,
                "DATASETS.TRAIN",
                '("solaris_buildings_train",)',
                "DATASETS.TEST",
                '("solaris_buildings_val",)',
                "MODEL.ROI_HEADS.NUM_CLASSES",
                "1",
                "INPUT.MIN_SIZE_TRAIN",
                "(96,)",
                "INPUT.MAX_SIZE_TRAIN",
                "128",
                "INPUT.MIN_SIZE_TEST",
                "96",
                "INPUT.MAX_SIZE_TEST",
                "128",
                *self.SMALL,
            ],
            env_root=os.path.join(out_dir, "datasets"),
        )
        log = out + err
        self.assertEqual(rc, 0, log[-4000:])
        self.assertIn("flat polygon list", log)
        self.assertIn("uint16 single-band image scaled to 8 bits", log)
        files = [f for f in os.listdir(out_dir) if f.endswith(".json")]
        results = {}
        for f in files:
            try:
                d = json.load(open(os.path.join(out_dir, f)))
            except json.JSONDecodeError:  # Detectron2's JSON-lines training log
                continue
            if isinstance(d, dict) and "solaris_buildings_val" in d:
                results = d["solaris_buildings_val"]
        self.assertIn("segm", results, files)
        self.assertTrue(np.isfinite(results["segm"]["AP"]))


if __name__ == "__main__":
    unittest.main()
