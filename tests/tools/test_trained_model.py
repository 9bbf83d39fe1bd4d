"""A trained model describes itself: a panoptic model trained 2 iterations (tools/train_net.py)
on a dataset by path whose classes are not the base config's (4 things + 5 stuff, ids
101-104 and 201-205) predicts, exports and evaluates from its checkpoint alone with those
classes' names and category ids; a config that does not fit the checkpoint, a model-zoo
file without a config, --eval-only without weights and --resume with a changed config each
end with one line and exit status 2."""

import contextlib
import io
import json
import os
import pickle
import tempfile
import unittest

import torch

from seg2.data.synthetic import generate
from seg2_testing import REPO_ROOT, run_tool, subprocess_env

PANOPTIC = str(
    REPO_ROOT / "configs" / "Synthetic-PanopticSegmentation" / "fcn8s_rcnn_R_18_FPN_synthetic.yaml"
)
# The synthetic categories renamed and renumbered, plus one unused thing and one unused stuff
# class: 4 thing and 9 semantic classes, where the base config has 3 and 7.
RENAMED = {
    3: (101, "ring"),
    7: (102, "block"),
    12: (103, "wedge"),
    20: (201, "lines"),
    21: (202, "grid"),
    25: (203, "spots"),
    30: (204, "flat"),
}
UNUSED = [
    {"id": 104, "name": "star", "isthing": 1, "color": [1, 2, 3]},
    {"id": 205, "name": "fog", "isthing": 0, "color": [4, 5, 6]},
]
# The class layers of the base config's model (3 things, 7 semantic classes; box head
# FC_DIM 256, mask head CONV_DIM 64, FPN 64 channels) against the checkpoint's 4 and 9.
MISMATCHED = [
    "roi_heads.box_predictor.cls_score.{weight (5, 256)->(4, 256), bias (5,)->(4,)}",
    "roi_heads.box_predictor.bbox_pred.{weight (16, 256)->(12, 256), bias (16,)->(12,)}",
    "roi_heads.mask_head.predictor.{weight (4, 64, 1, 1)->(3, 64, 1, 1), bias (4,)->(3,)}",
    "sem_seg_head.predictor.{weight (9, 64, 1, 1)->(7, 64, 1, 1), bias (9,)->(7,)}",
]
COUNTS = (
    "the checkpoint has 4 thing classes and 9 semantic classes, "
    "the config's model 3 thing classes and 7 semantic classes"
)


def write_renamed_dataset(tmp: str):
    """Synthetic images and panoptic PNGs with COCO panoptic JSONs naming the RENAMED classes;
    returns (synthetic root, {split: json path}, categories as written)."""
    root = os.path.join(tmp, "synthetic")
    generate(root, seed=0, num_train=4, num_val=2, size=64)
    paths = {}
    for split in ("train", "val"):
        with open(os.path.join(root, "annotations", f"panoptic_{split}.json")) as f:
            data = json.load(f)
        cats = [dict(c, id=RENAMED[c["id"]][0], name=RENAMED[c["id"]][1]) for c in data["categories"]]
        data["categories"] = cats + UNUSED
        for ann in data["annotations"]:
            for seg in ann["segments_info"]:
                seg["category_id"] = RENAMED[seg["category_id"]][0]
        paths[split] = os.path.join(tmp, f"renamed_{split}.json")
        with open(paths[split], "w") as f:
            json.dump(data, f)
    return root, paths, data["categories"]


def run(tool, *args, env_extra=None):
    p = run_tool([f"tools/{tool}", *args], env=subprocess_env(**(env_extra or {})))
    return p.returncode, p.stdout + p.stderr, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""


def call_main(main, argv):
    """A tool's ``main`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


class TestTrainedModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-trained-")
        cls.root, cls.json, cats = write_renamed_dataset(cls.tmp)
        # The expectations, from the categories as written and Detectron2's panoptic
        # convention (things by id; the semantic classes are the things, then stuff by id).
        cls.things = sorted((c for c in cats if c["isthing"]), key=lambda c: c["id"])
        stuff = sorted((c for c in cats if not c["isthing"]), key=lambda c: c["id"])
        cls.semantic = cls.things + stuff
        r = cls.root
        cls.data = (
            f"[['mine_train','{r}/images/train','{r}/panoptic_train','{cls.json['train']}'],"
            f"['mine_val','{r}/images/val','{r}/panoptic_val','{cls.json['val']}']]"
        )
        cls.out = os.path.join(cls.tmp, "run")
        code, log, _ = run(
            "train_net.py", "--config-file", PANOPTIC,
            "DATASETS.SEG2.COCO_PANOPTIC", cls.data, "DATASETS.TRAIN", "('mine_train',)",
            "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9", "SOLVER.MAX_ITER", "2",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
            "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MIN_SIZE_TEST", "64", "TEST.SEG2.NUM_VIS", "0", "OUTPUT_DIR", cls.out,
        )  # fmt: skip
        assert code == 0, log[-4000:]
        cls.weights = os.path.join(cls.out, "model_final.pth")

    def assert_one_line_error(self, code, log, last, *parts):
        self.assertEqual(code, 2, log[-3000:])
        self.assertNotIn("Traceback", log)
        self.assertTrue(last.startswith("error: "), last)
        for part in parts:
            self.assertIn(part, last)

    def test_checkpoint_carries_config_and_classes(self):
        ckpt = torch.load(self.weights, map_location="cpu", weights_only=True)
        self.assertIn("NUM_CLASSES: 4", ckpt["seg2_config"])
        meta = ckpt["seg2_metadata"]
        self.assertEqual(meta["thing_classes"], [c["name"] for c in self.things])
        self.assertEqual(
            meta["stuff_dataset_id_to_contiguous_id"],
            {c["id"]: i for i, c in enumerate(self.semantic)},
        )
        self.assertEqual(meta["thing_colors"][-1], [1, 2, 3])  # the dataset's own colours

    def test_predict_from_weights_alone(self):
        out = os.path.join(self.tmp, "pred")
        code, log, _ = run(
            "predict.py", "--input", os.path.join(self.root, "images", "val"), "--output", out,
            "--confidence-threshold", "0", "MODEL.WEIGHTS", self.weights,
        )  # fmt: skip
        self.assertEqual(code, 0, log[-3000:])
        self.assertNotIn("Skip loading", log)
        self.assertNotIn("Fine-tuning", log)
        panoptic = json.load(open(os.path.join(out, "panoptic.json")))
        self.assertEqual(
            [(c["id"], c["name"], c["isthing"]) for c in panoptic["categories"]],
            sorted((c["id"], c["name"], c["isthing"]) for c in self.semantic),
        )
        ids = {c["id"] for c in self.semantic}
        segments = [s for a in panoptic["annotations"] for s in a["segments_info"]]
        self.assertTrue(segments)
        self.assertLessEqual({s["category_id"] for s in segments}, ids)
        instances = json.load(open(os.path.join(out, "instances.json")))
        self.assertTrue(instances)  # threshold 0: every detection is kept
        self.assertLessEqual({r["category_id"] for r in instances}, {c["id"] for c in self.things})

    def test_export_from_weights_alone(self):
        out = os.path.join(self.tmp, "export")
        image = os.path.join(self.root, "images", "val", "000000.png")
        code, log, _ = run(
            "export_model.py", "--output", out, "--sample-image", image,
            "MODEL.WEIGHTS", self.weights,
        )  # fmt: skip
        self.assertEqual(code, 0, log[-3000:])
        manifest = json.load(open(os.path.join(out, "seg2_export.json")))
        self.assertEqual(manifest["thing_classes"], [c["name"] for c in self.things])
        self.assertEqual(manifest["thing_category_ids"], [c["id"] for c in self.things])
        self.assertEqual(manifest["stuff_classes"], [c["name"] for c in self.semantic])
        self.assertEqual(manifest["stuff_category_ids"], [c["id"] for c in self.semantic])

    def test_eval_only_from_weights_alone(self):
        # the stored config registers the data by path; overrides still apply
        out = os.path.join(self.tmp, "eval")
        code, log, _ = run(
            "train_net.py", "--eval-only", "MODEL.WEIGHTS", self.weights,
            "DATASETS.TEST", "('mine_val',)", "OUTPUT_DIR", out,
        )  # fmt: skip
        self.assertEqual(code, 0, log[-3000:])
        results = json.load(open(os.path.join(out, "eval_results.json")))["mine_val"]
        self.assertEqual(
            sorted(k[len("IoU-") :] for k in results["sem_seg"] if k.startswith("IoU-")),
            sorted(c["name"] for c in self.semantic),
        )
        self.assertIn("PQ", results["panoptic_seg"])

    def test_config_that_does_not_fit_is_refused(self):
        # --eval-only, through the real entry point
        code, log, last = run(
            "train_net.py", "--eval-only", "--config-file", PANOPTIC,
            "MODEL.WEIGHTS", self.weights, "DATASETS.TEST", "()",
            "OUTPUT_DIR", os.path.join(self.tmp, "eval_mismatch"),
        )  # fmt: skip
        self.assert_one_line_error(code, log, last, f"MODEL.WEIGHTS {self.weights}: 12 tensors", COUNTS, *MISMATCHED)
        # predict and export, in this process (they fail once the model is built)
        import export_model  # tools/
        import predict

        for main, argv in (
            (predict.main, ["--input", os.path.join(self.root, "images", "val"), "--output",
                            os.path.join(self.tmp, "p2")]),
            (export_model.main, ["--output", os.path.join(self.tmp, "e2"), "--sample-image",
                                 os.path.join(self.root, "images", "val", "000000.png")]),
        ):  # fmt: skip
            code, err = call_main(
                main,
                [*argv, "--config-file", PANOPTIC, "MODEL.WEIGHTS", self.weights, "MODEL.DEVICE", "cpu"],
            )
            # (other libraries may log to stderr in this process: only seg2's lines count)
            errors = [line for line in err.splitlines() if line.startswith("error")]
            self.assertEqual(len(errors), 1, err[-3000:])
            self.assertTrue(err.rstrip().endswith(errors[0]))
            self.assert_one_line_error(code, err, errors[0], COUNTS, *MISMATCHED)

    def test_eval_only_on_other_classes_is_refused(self):
        import train_net  # tools/
        from detectron2.engine import default_argument_parser

        args = default_argument_parser().parse_args(
            ["--eval-only", "MODEL.WEIGHTS", self.weights, "OUTPUT_DIR", self.tmp + "/e3",
             "DATASETS.TEST", "('synthetic_val_panoptic',)"]
        )  # fmt: skip
        code, err = call_main(train_net.main, args)
        lines = [line for line in err.splitlines() if line.startswith("error")]
        self.assertEqual((code, len(lines)), (2, 1), err)
        self.assertEqual(
            lines[0],
            "error: DATASETS.TEST: dataset 'synthetic_val_panoptic' has thing_classes [circle, "
            f"square, triangle], but MODEL.WEIGHTS {self.weights} was trained on [ring, block, "
            "wedge, star] (dataset 'mine_train'); evaluate on data with the model's classes",
        )

    def test_resume_with_changed_config(self):
        import train_net  # tools/
        from detectron2.engine import default_argument_parser

        before = sorted(os.listdir(self.out))
        args = default_argument_parser().parse_args(
            ["--resume", "--config-file", PANOPTIC,
             "DATASETS.SEG2.COCO_PANOPTIC", self.data, "DATASETS.TRAIN", "('mine_train',)",
             "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "5",
             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9", "SOLVER.MAX_ITER", "4",
             "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
             "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(64,)",
             "INPUT.MIN_SIZE_TEST", "64", "TEST.SEG2.NUM_VIS", "0", "OUTPUT_DIR", self.out]
        )  # fmt: skip
        code, err = call_main(train_net.main, args)
        lines = [line for line in err.splitlines() if line.startswith("error")]
        self.assertEqual((code, len(lines)), (2, 1), err)
        # a longer SOLVER.MAX_ITER is how a run is extended: not named
        self.assertEqual(
            lines[0],
            f"error: --resume: {self.weights} was trained with another config; keys that "
            "differ (checkpoint -> now): MODEL.ROI_HEADS.NUM_CLASSES 4 -> 5; resume with the "
            f"config the run was trained with ({os.path.join(self.out, 'config.yaml')}) or "
            "train in a new OUTPUT_DIR",
        )
        self.assertEqual(sorted(os.listdir(self.out)), before)


class TestWithoutStoredConfig(unittest.TestCase):
    def test_model_zoo_pickle_alone_asks_for_the_config(self):
        import export_model  # tools/
        import predict

        tmp = tempfile.mkdtemp(prefix="seg2-zoo-")
        pkl = os.path.join(tmp, "model_final_zoo.pkl")
        with open(pkl, "wb") as f:  # the model zoo's layout: weights + __author__, no config
            pickle.dump({"model": {}, "__author__": "Detectron2 Model Zoo"}, f)
        for main, argv in (
            (predict.main, ["--input", tmp, "--output", os.path.join(tmp, "p")]),
            (export_model.main, ["--output", os.path.join(tmp, "e")]),
        ):
            code, err = call_main(main, [*argv, "MODEL.WEIGHTS", pkl])
            self.assertEqual(code, 2, err)
            self.assertEqual(
                [line for line in err.splitlines(True) if line.startswith("error")][0],
                f"error: MODEL.WEIGHTS {pkl} carries no config (a Detectron2 model-zoo file, or "
                "a checkpoint not written by seg2's training): pass the config the model was "
                "trained with, --config-file FILE\n",
            )

    def test_stored_config_with_a_key_this_version_lacks(self):
        import predict  # tools/

        tmp = tempfile.mkdtemp(prefix="seg2-stored-")
        path = os.path.join(tmp, "model_final.pth")
        torch.save({"model": {}, "seg2_config": "MODEL:\n  ROI_HEADS:\n    NUM_CLASES: 3\n"}, path)
        code, err = call_main(
            predict.main, ["--input", tmp, "--output", os.path.join(tmp, "p"), "MODEL.WEIGHTS", path]
        )
        self.assertEqual(code, 2, err)
        self.assertEqual(
            [line for line in err.splitlines() if line.startswith("error")],
            [f"error: MODEL.WEIGHTS {path}: its stored config: unknown config key "
             "MODEL.ROI_HEADS.NUM_CLASES; did you mean MODEL.ROI_HEADS.NUM_CLASSES?"],
        )  # fmt: skip


if __name__ == "__main__":
    unittest.main()
