"""The real entry points on broken inputs, as a user runs them (processes of their own): the
message names the file and the field, the exit status is non-zero, no traceback.

tools/check_dataset.py checks several broken datasets in one run (each is reported, none
stops the others); tools/evaluate.py scores an empty prediction set as 0 AP and refuses a
ground truth with duplicate ids; tools/train_net.py stops before training on a broken
dataset and trains + evaluates on solaris' real COCO export (flat polygons, uint16 TIFFs)."""

import json
import os
import shutil
import tempfile
import unittest

import numpy as np
import yaml
from PIL import Image

from seg2_testing import run_tool, subprocess_env, tiny_synthetic_root


def tool(args, timeout=600, env_root=None):
    """(exit status, stdout, stderr) of ``python ARGS...``."""
    env = subprocess_env(**({"DETECTRON2_DATASETS": env_root} if env_root else {}))
    proc = run_tool(args, env=env, timeout=timeout)
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
        rc, out, err = tool(
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
        rc, out, err = tool(
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
        rc, out, err = tool(
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
        rc, out, err = tool(
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
        self.assertEqual(rc, 2)
        self.assertNotIn("Traceback", out + err)

    def test_trains_and_evaluates_on_solaris_export(self):
        out_dir = tempfile.mkdtemp(prefix="seg2-solaris-")
        rc, out, err = tool(
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


def probe_copy():
    """A copy of the tiny synthetic data with one broken file (or folder) per case of the
    data probe: inputs that once crashed training, exhausted memory or passed silently.
    Returns (root, {dataset: the problem line both tools must print}, the DATASETS.SEG2
    entries)."""
    root = os.path.join(tempfile.mkdtemp(prefix="seg2-probe-"), "synthetic")
    shutil.copytree(tiny_synthetic_root(), root)
    ann_dir, images = f"{root}/annotations", f"{root}/images/val"

    def inst():
        return json.load(open(f"{ann_dir}/instances_val.json"))

    def pan():
        return json.load(open(f"{ann_dir}/panoptic_val.json"))

    entries = {"COCO_INSTANCES": [], "COCO_PANOPTIC": [], "SEMANTIC": []}
    expected = {}

    def coco(name, data):
        path = f"{ann_dir}/{name}.json"
        json.dump(data, open(path, "w"))
        entries["COCO_INSTANCES"].append([name, path, images])
        return path

    d = inst()
    a = d["annotations"][0]
    a["segmentation"][0][:2] = [1e12, 5.0]
    path = coco("poly", d)
    expected["poly"] = (
        f"{path}: annotation {a['id']}: field 'segmentation[0]' = [1000000000000.0, 5.0]: "
        "point 0 lies 1e+12 px outside the 128x128 image"
    )
    d = inst()
    a = d["annotations"][0]
    a["segmentation"] = [[0.0, 0.0, 127.0, 1.0] * 1000]  # 2000 edges across the image
    path = coco("zigzag", d)
    expected["zigzag"] = (
        f"{path}: annotation {a['id']}: field 'segmentation[0]' = '2000 points': the outline "
        "runs 254000 px, more than 8192 px for a 128x128 image"
    )
    d = inst()
    for a in d["annotations"]:
        a["iscrowd"] = 1
    path = coco("allcrowd", d)
    expected["allcrowd"] = (
        f"{path}: field 'annotations': no image has an annotation that is not a crowd region"
    )
    d = inst()
    d["images"], d["annotations"] = [], []
    path = coco("noimg", d)
    expected["noimg"] = f"{path}: field 'images' = []: no images"
    for name in ("area0", "area0_train"):
        d = inst()
        d["annotations"][0]["area"] = 0
        path = coco(name, d)
    expected["area0"] = (
        f"{ann_dir}/area0.json: annotation {d['annotations'][0]['id']}: field 'area' = 0"
    )
    d = inst()
    d["annotations"][0]["category_id"] = 2**70
    path = coco("bigid", d)
    expected["bigid"] = (
        f"{path}: annotation {d['annotations'][0]['id']}: field 'category_id' = {2**70}: not among"
    )
    d = inst()
    d["images"][0]["width"] = -128
    path = coco("negwidth", d)
    expected["negwidth"] = f"{path}: image {d['images'][0]['id']}: field 'width' = -128"
    d = inst()
    dir_images = shutil.copytree(images, f"{root}/images/val_dir")  # the other cases keep theirs
    folder = os.path.join(dir_images, d["images"][1]["file_name"])
    os.remove(folder)
    os.mkdir(folder)
    path = f"{ann_dir}/dirimg.json"
    json.dump(d, open(path, "w"))
    entries["COCO_INSTANCES"].append(["dirimg", path, dir_images])
    expected["dirimg"] = (
        f"{folder}: image {d['images'][1]['id']}: field 'file_name' = '{os.path.basename(folder)}': "
        "image path is a directory, not a file"
    )

    def panoptic(name, data, instances=None):
        path = f"{ann_dir}/{name}.json"
        json.dump(data, open(path, "w"))
        entry = [name, images, f"{root}/panoptic_val", path]
        if instances:
            json.dump(instances, open(f"{ann_dir}/{name}_instances.json", "w"))
            entry.append(f"{ann_dir}/{name}_instances.json")
        entries["COCO_PANOPTIC"].append(entry)
        return path

    p = pan()
    p["categories"][0]["isthing"] = 0
    path = panoptic("pan_isthing", p, inst())
    expected["pan_isthing"] = (
        f"{path}: category {p['categories'][0]['id']}: field 'isthing' = 0: stuff here, "
        "but a thing category of pan_isthing_instances.json"
    )
    p = pan()
    stuff_ids = {c["id"] for c in p["categories"] if not c["isthing"]}
    seg = next(s for s in p["annotations"][0]["segments_info"] if s["category_id"] in stuff_ids)
    seg["iscrowd"] = 1
    path = panoptic("pan_crowd", p)
    expected["pan_crowd"] = (
        f"{path}: segment {seg['id']} of image {p['annotations'][0]['image_id']}: "
        f"field 'iscrowd' = 1: category {seg['category_id']} is stuff"
    )
    p = pan()
    segs = p["annotations"][0]["segments_info"]
    segs.append(dict(segs[0]))
    path = panoptic("pan_dup", p)
    expected["pan_dup"] = (
        f"{path}: segment {segs[0]['id']} of image {p['annotations'][0]['image_id']}: field 'id'"
    )

    def semantic(name, change):
        labels = f"{root}/{name}"
        os.mkdir(labels)
        for f in sorted(os.listdir(f"{root}/semantic_val")):
            arr = np.asarray(Image.open(f"{root}/semantic_val/{f}"))
            change(labels, f, arr)
        entries["SEMANTIC"].append([name, images, labels, "a,b,c,d,e,f,g"])
        return labels

    def npy(labels, f, arr):
        arr = arr.astype(np.int64)
        if f == "000001.png":
            arr[5, 6] = -1
        np.save(f"{labels}/{f[:-4]}.npy", arr)

    labels = semantic("sem_npy", npy)
    expected["sem_npy"] = (
        f"{labels}/000001.npy: label of '{images}/000001.png': field 'value' = [-1]"
    )

    def npy_float(labels, f, arr):
        np.save(f"{labels}/{f[:-4]}.npy", arr.astype(np.float32 if f == "000002.png" else np.uint8))

    labels = semantic("sem_float", npy_float)
    expected["sem_float"] = (
        f"{labels}/000002.npy: label of '{images}/000002.png': field 'sem_seg_file_name' = "
        "'000002.npy': label array has dtype float32"
    )

    def ignore(labels, f, arr):
        Image.fromarray(np.full_like(arr, 255)).save(f"{labels}/{f}")

    labels = semantic("sem_ignore", ignore)
    expected["sem_ignore"] = (
        f"{labels}: field 'sem_seg_file_name': every pixel of all 4 label(s) is the ignore "
        "label 255: nothing to train on"
    )
    for name, classes in (("sem_ok", "a,b,c,d,e,f,g"), ("sem_other", "a,b,c,d,e,f,x")):
        entries["SEMANTIC"].append([name, images, f"{root}/semantic_val", classes])
    expected["classes"] = (
        "DATASETS.TRAIN: 'sem_other' and 'sem_ok' have different stuff_classes "
        "(class 6 is 'x' there and 'g' in 'sem_ok')"
    )
    return root, expected, entries


class TestProbeCases(unittest.TestCase):
    """The data probe's cases through the real entry points: check_dataset reports each
    (one line, once) and train_net stops on the same line (exit 2, no traceback) before
    anything is built, where it once ran out of memory, tracebacked or trained on nothing."""

    CONFIGS = {
        "poly": "configs/Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml",
        "noimg": "configs/Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml",
        "allcrowd": "configs/Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml",
        "pan_isthing": "configs/Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_synthetic.yaml",
        "pan_crowd": "configs/Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_synthetic.yaml",
        "sem_npy": "configs/Synthetic-SemanticSegmentation/fcn8s_R_18_synthetic.yaml",
        "sem_ignore": "configs/Synthetic-SemanticSegmentation/fcn8s_R_18_synthetic.yaml",
    }

    @classmethod
    def setUpClass(cls):
        cls.root, cls.expected, cls.entries = probe_copy()
        cfg = os.path.join(os.path.dirname(cls.root), "probe.yaml")
        yaml.safe_dump(
            {
                "DATASETS": {
                    "SEG2": cls.entries,
                    # trained on: 'area' is a note, a set without anything to learn an
                    # error, two label sets trained together must agree
                    "TRAIN": ["area0_train", "allcrowd", "sem_ok", "sem_other", "sem_ignore"],
                    "TEST": ["area0"],  # scored: 'area' is an error
                }
            },
            open(cfg, "w"),
        )
        cls.rc, out, err = tool(["tools/check_dataset.py", "--config-file", cfg])
        cls.check_out = out + err

    def test_check_dataset_reports_each_case_once(self):
        self.assertEqual(self.rc, 2, self.check_out)  # 2: some datasets are unusable as a whole
        self.assertNotIn("Traceback", self.check_out)
        for name, line in self.expected.items():
            self.assertEqual(self.check_out.count(line), 1, (name, line, self.check_out))
        self.assertNotIn("dataset 'noimg': dataset 'noimg'", self.check_out)
        self.assertIn("dataset 'area0_train': 4 sample(s), no problems", self.check_out)
        self.assertRegex(self.check_out, r"note: 'area' differs .*: 1 time\(s\), e.g. annotation")

    def train(self, name, train=None):
        out_dir = tempfile.mkdtemp(prefix="seg2-probe-out-")
        rc, out, err = tool(
            [
                "tools/train_net.py",
                "--config-file",
                self.CONFIGS[name],
                "OUTPUT_DIR",
                out_dir,
                *[
                    x
                    for key, value in self.entries.items()
                    for x in (f"DATASETS.SEG2.{key}", json.dumps(value))
                ],
                "DATASETS.TRAIN",
                train or f'("{name}",)',
                "DATASETS.TEST",
                "()",
                *TestTrainNetData.SMALL,
            ],
            timeout=300,
        )
        self.assertEqual(rc, 2, (out + err)[-3000:])
        self.assertNotIn("Traceback", out + err)
        self.assertNotIn("Starting training", out + err)
        (line,) = [x for x in err.splitlines() if x.startswith("error:")]
        prefix = "error: " if train else f"error: dataset '{name}': "
        self.assertTrue(line.startswith(f"{prefix}{self.expected[name]}"), line)
        self.assertIn(self.expected[name], self.check_out)  # check_dataset says the same

    def test_train_net_polygon_far_outside(self):
        self.train("poly")

    def test_train_net_no_images(self):
        self.train("noimg")

    def test_train_net_panoptic_isthing_disagrees(self):
        self.train("pan_isthing")

    def test_train_net_crowd_stuff_segment(self):
        self.train("pan_crowd")

    def test_train_net_negative_npy_label(self):
        self.train("sem_npy")

    def test_train_net_crowd_only_split(self):
        self.train("allcrowd")

    def test_train_net_ignore_only_split(self):
        self.train("sem_ignore")

    def test_train_net_training_sets_with_different_classes(self):
        self.CONFIGS = dict(self.CONFIGS, classes=self.CONFIGS["sem_npy"])
        self.train("classes", train='("sem_ok", "sem_other")')


if __name__ == "__main__":
    unittest.main()
