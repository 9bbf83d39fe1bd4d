"""Fine-tuning from a checkpoint trained on other classes: a Detectron2 model-zoo pickle
(written here from a model Detectron2 builds) and a seg2 checkpoint. Every tensor whose
shape fits is loaded bit for bit, the class-dependent heads keep their fresh init and are
named in ONE log line, and tools/train_net.py trains from both on data given by path."""
import os
import pickle
import re
import tempfile
import unittest

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import seg2.modeling  # noqa: F401  (registers seg2's meta-architectures)
from seg2.engine import AtomicCheckpointer
from seg2_testing import REPO_ROOT, get_seg2_cfg, run_tool, subprocess_env, tiny_synthetic_root

INSTANCE_CFG = "configs/Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml"
PANOPTIC_CFG = "configs/Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_synthetic.yaml"

# Class-dependent tensors, worked out by hand for a source with 5 thing classes (9 semantic
# classes for seg2's panoptic model) and a target with 3 (7): box head FC_DIM 256, mask
# head CONV_DIM 64, FPN 64 channels (mask_rcnn_R_18_FPN_synthetic.yaml).
ROI_MISMATCHES = {
    "roi_heads.box_predictor.cls_score.weight": ((6, 256), (4, 256)),
    "roi_heads.box_predictor.cls_score.bias": ((6,), (4,)),
    "roi_heads.box_predictor.bbox_pred.weight": ((20, 256), (12, 256)),
    "roi_heads.box_predictor.bbox_pred.bias": ((20,), (12,)),
    "roi_heads.mask_head.predictor.weight": ((5, 64, 1, 1), (3, 64, 1, 1)),
    "roi_heads.mask_head.predictor.bias": ((5,), (3,)),
}
# FCN-8s scores each fused level (p5 by the predictor, p4 and p3 by skip scores) into K.
SEM_MISMATCHES = {
    f"sem_seg_head.{layer}.{leaf}": shapes
    for layer in ("predictor", "skip_scores.0", "skip_scores.1")
    for leaf, shapes in (("weight", ((9, 64, 1, 1), (7, 64, 1, 1))), ("bias", ((9,), (7,))))
}
CKPT_LOGGER = "fvcore.common.checkpoint"


def detectron2_model_zoo_pickle(path: str, num_classes: int = 5) -> dict:
    """A Mask R-CNN built by Detectron2 alone (its own ``get_cfg``/``build_model``), saved
    the way the model zoo's ``model_final_*.pkl`` files are: numpy arrays + ``__author__``."""
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / INSTANCE_CFG))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(1)
    weights = {k: v.detach().numpy().copy() for k, v in build_model(cfg).state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
    return weights


def seg2_checkpoint(out_dir: str) -> dict:
    """A Seg2PanopticRCNN on other classes (5 things, 9 semantic), saved by seg2."""
    cfg = get_seg2_cfg(PANOPTIC_CFG.split("configs/")[1])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5, 9
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(2)
    model = build_model(cfg)
    AtomicCheckpointer(model, save_dir=out_dir).save("model_other")
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def run_train_net(config: str, args) -> str:
    proc = run_tool(
        ["tools/train_net.py", "--config-file", config, *args], env=subprocess_env()
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"train_net failed ({proc.returncode}):\n{log[-6000:]}")
    return log


class TestLoadOtherClasses(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-finetune-")

    def load_into_panoptic_model(self, path):
        """Fresh 3-thing/7-class Seg2PanopticRCNN; returns (fresh state, loaded state, log)."""
        cfg = get_seg2_cfg(PANOPTIC_CFG.split("configs/")[1])
        cfg.MODEL.DEVICE = "cpu"
        torch.manual_seed(3)
        model = build_model(cfg)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        with self.assertLogs(CKPT_LOGGER, level="INFO") as logs:
            AtomicCheckpointer(model).load(path)
        return fresh, model.state_dict(), [r.getMessage() for r in logs.records]

    def check(self, source, fresh, loaded, messages, mismatches):
        # Independent expectation: the hand-listed heads are exactly what does not fit.
        unfit = {k for k, v in source.items() if tuple(v.shape) != tuple(loaded[k].shape)}
        self.assertEqual(unfit, set(mismatches))
        for name, (ckpt_shape, model_shape) in mismatches.items():
            self.assertEqual(tuple(source[name].shape), ckpt_shape)
            self.assertTrue(torch.equal(loaded[name], fresh[name]), f"{name} not fresh")
        for name in set(source) - unfit:  # every other tensor of the file, bit for bit
            self.assertTrue(torch.equal(loaded[name], torch.from_numpy(source[name])), name)
        for name in set(loaded) - set(source):  # not in the file: fresh init kept
            self.assertTrue(torch.equal(loaded[name], fresh[name]), name)
        # One line names them all (with both shapes); no warning per tensor.
        self.assertFalse([m for m in messages if m.startswith("Skip loading parameter")])
        summary = [m for m in messages if m.startswith("Fine-tuning:")]
        self.assertEqual(len(summary), 1, messages)
        self.assertNotIn("\n", summary[0])
        for name, (ckpt_shape, model_shape) in mismatches.items():
            module, leaf = name.rsplit(".", 1)
            self.assertIn(module + ".{", summary[0])
            self.assertIn(f"{leaf} {ckpt_shape}->{model_shape}", summary[0])
        self.assertIn(f"Fine-tuning: {len(mismatches)} tensors", summary[0])

    def test_detectron2_model_zoo_pickle(self):
        path = os.path.join(self.tmp, "model_final_test.pkl")
        source = detectron2_model_zoo_pickle(path)
        fresh, loaded, messages = self.load_into_panoptic_model(path)
        self.assertFalse([k for k in source if k.startswith("sem_seg_head")])
        self.check(source, fresh, loaded, messages, ROI_MISMATCHES)
        self.assertGreater(len(source), 100)  # the whole backbone, FPN, RPN and heads

    def test_strict_mode_refuses_in_one_line(self):
        # inference, evaluation and export load strictly: the same file is an error naming
        # every tensor, both class counts (5 in the file, 3 in the model) and what to pass
        from seg2.io import InputError

        path = os.path.join(self.tmp, "model_final_strict.pkl")
        detectron2_model_zoo_pickle(path)
        cfg = get_seg2_cfg(INSTANCE_CFG.split("configs/")[1])
        cfg.MODEL.DEVICE = "cpu"
        with self.assertRaises(InputError) as ctx:
            AtomicCheckpointer(build_model(cfg), strict_shapes=True).load(path)
        msg = str(ctx.exception)
        self.assertNotIn("\n", msg)
        self.assertTrue(msg.startswith(f"MODEL.WEIGHTS {path}: 6 tensors do not fit"), msg)
        for name, (ckpt_shape, model_shape) in ROI_MISMATCHES.items():
            self.assertIn(f"{name.rsplit('.', 1)[1]} {ckpt_shape}->{model_shape}", msg)
        self.assertIn(
            "the checkpoint has 5 thing classes, the config's model 3 thing classes; pass the "
            "config the checkpoint was trained with and the class counts it has",
            msg,
        )

    def test_resuming_a_checkpoint_that_does_not_fit_is_refused(self):
        # resuming continues the same run: other shapes mean another config (for checkpoints
        # without a stored config, which config_check compares first)
        from seg2.io import InputError

        out = tempfile.mkdtemp(dir=self.tmp)
        AtomicCheckpointer(torch.nn.Linear(4, 5), save_dir=out).save("model_0000001")
        with self.assertRaises(InputError) as ctx:
            AtomicCheckpointer(torch.nn.Linear(4, 3), save_dir=out).resume_or_load("", resume=True)
        self.assertEqual(
            str(ctx.exception),
            f"--resume {os.path.join(out, 'model_0000001.pth')}: 2 tensors do not fit the model "
            "of this config (checkpoint->model): weight (5, 4)->(3, 4), bias (5,)->(3,); resume "
            "with the config this run was trained with (OUTPUT_DIR/config.yaml), or train in a "
            "new OUTPUT_DIR",
        )
        # loading it as MODEL.WEIGHTS (fine-tuning) is allowed, with its summary line
        with self.assertLogs(CKPT_LOGGER, level="WARNING") as logs:
            AtomicCheckpointer(torch.nn.Linear(4, 3), save_dir=out).resume_or_load(
                os.path.join(out, "model_0000001.pth"), resume=False
            )
        self.assertTrue(any("Fine-tuning: 2 tensors" in r.getMessage() for r in logs.records))

    def test_seg2_checkpoint_on_other_classes(self):
        source = seg2_checkpoint(self.tmp)
        fresh, loaded, messages = self.load_into_panoptic_model(
            os.path.join(self.tmp, "model_other.pth")
        )
        self.check(source, fresh, loaded, messages, {**ROI_MISMATCHES, **SEM_MISMATCHES})


class TestFineTuneCLI(unittest.TestCase):
    """Fine-tuning as docs/GETTING_STARTED.md gives it: MODEL.WEIGHTS + data by path + class counts, then train."""

    SMALL = [
        "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()",
        "MODEL.DEVICE", "cpu",
    ]

    @classmethod
    def setUpClass(cls):
        cls.root = tiny_synthetic_root()
        cls.tmp = tempfile.mkdtemp(prefix="seg2-finetune-cli-")

    def check_trained(self, log, out, num_mismatched):
        summary = [line for line in log.splitlines() if "Fine-tuning:" in line]
        self.assertEqual(len(summary), 1, log[-3000:])
        self.assertIn(f"Fine-tuning: {num_mismatched} tensors", summary[0])
        self.assertNotIn("Skip loading parameter", log)
        losses = [float(x) for x in re.findall(r"total_loss: ([0-9.eE+-]+|nan|inf)", log)]
        self.assertTrue(losses and all(torch.isfinite(torch.tensor(losses))), log[-3000:])
        self.assertTrue(os.path.isfile(os.path.join(out, "model_final.pth")))

    def test_model_zoo_pickle_to_coco_instances_by_path(self):
        pkl = os.path.join(self.tmp, "model_final_zoo.pkl")
        detectron2_model_zoo_pickle(pkl)
        out = os.path.join(self.tmp, "mine")
        data = (
            f"[['mine_train','{self.root}/annotations/instances_train.json',"
            f"'{self.root}/images/train']]"
        )
        log = run_train_net(INSTANCE_CFG, [
            "MODEL.WEIGHTS", pkl, "DATASETS.SEG2.COCO_INSTANCES", data,
            "DATASETS.TRAIN", "('mine_train',)", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
            "OUTPUT_DIR", out, *self.SMALL,
        ])
        self.check_trained(log, out, len(ROI_MISMATCHES))

    def test_seg2_checkpoint_to_coco_panoptic_by_path(self):
        seg2_checkpoint(self.tmp)
        out = os.path.join(self.tmp, "mine_pan")
        data = (
            f"[['mine_pan_train','{self.root}/images/train','{self.root}/panoptic_train',"
            f"'{self.root}/annotations/panoptic_train.json']]"
        )
        log = run_train_net(PANOPTIC_CFG, [
            "MODEL.WEIGHTS", os.path.join(self.tmp, "model_other.pth"),
            "DATASETS.SEG2.COCO_PANOPTIC", data, "DATASETS.TRAIN", "('mine_pan_train',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7",
            "OUTPUT_DIR", out, *self.SMALL,
        ])
        self.check_trained(log, out, len(ROI_MISMATCHES) + len(SEM_MISMATCHES))
