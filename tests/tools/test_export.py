"""TorchScript export: tools/export_model.py (a subprocess) on Seg2PanopticRCNN, the library
export on semantic models (FCN-8s with transposed upsampling, U-Net in copy-and-crop mode,
DeconvNet) and Mask R-CNN; every exported file is loaded and run in another process, and
its outputs are compared with the eager model's on the same images, one image at a time and
at the subprocess's thread count on both sides (so masks and argmaxes compare exactly)."""

import os
import tempfile
import textwrap
import unittest

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from seg2.data.augmentations import build_augmentations
from seg2.export import export_torchscript
from seg2.inference import BatchPredictor
from seg2.io import read_image
from seg2_testing import (
    get_seg2_cfg,
    run_tool,
    subprocess_env,
    subprocess_threads,
    tiny_synthetic_root,
)

PANOPTIC = "Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_synthetic.yaml"
LIBRARY_EXPORTS = {
    "fcn8s": ("Synthetic-SemanticSegmentation/fcn8s_R_18_synthetic.yaml", []),
    "unet_crop": (
        "Synthetic-SemanticSegmentation/unet_classic_synthetic.yaml",
        ["MODEL.SEG2.UNET.SKIP_MODE", "crop", "MODEL.SEG2.UNET.BASE_CHANNELS", "8"],
    ),
    "deconvnet": ("Synthetic-SemanticSegmentation/deconvnet_R_18_synthetic.yaml", []),
    "mask_rcnn": ("Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml", []),
}
LOGIT_ATOL = 1e-4  # stated tolerance for logits and scores (float32, same kernels)

# Runs in a fresh interpreter: only the exported files and seg2.export's runner.
RUNNER = textwrap.dedent(
    """
    import sys, torch
    from seg2.export import ExportedModel
    from seg2.io import read_image
    out = {}
    for name in sys.argv[3:]:
        model = ExportedModel(f"{sys.argv[1]}/{name}/model.ts")
        res = []
        for path in sys.argv[2].split(","):
            o = model([read_image(path, model.input_format)])[0]
            if "instances" in o:
                o["instances"] = {k: getattr(v, "tensor", v) for k, v in o["instances"].get_fields().items()}
            res.append(o)
        out[name] = (model.manifest, res)
    torch.save(out, f"{sys.argv[1]}/exported_outputs.pt")
"""
)


def _randomize_scores(model):
    """seg2's heads start their score layers at zero (constant logits): randomise them so
    the comparison sees varied logits and segments."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sem_seg_head" in name and "predictor" in name and p.dim() == 4:
                p.normal_(0, 0.1)


class TestExport(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tiny_synthetic_root()
        cls.tmp = tempfile.mkdtemp(prefix="seg2-export-")
        val = os.path.join(cls.root, "images", "val")
        odd = os.path.join(cls.tmp, "odd.png")  # not the traced size
        Image.fromarray(
            np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
        ).save(odd)
        cls.images = [os.path.join(val, "000000.png"), os.path.join(val, "000001.png"), odd]
        env = subprocess_env(DETECTRON2_DATASETS=os.path.dirname(cls.root))

        cls.predictors = {}
        torch.manual_seed(0)
        for name, (cfg_file, opts) in {"panoptic": (PANOPTIC, []), **LIBRARY_EXPORTS}.items():
            cfg = get_seg2_cfg(cfg_file)
            cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
            model = build_model(cfg)
            _randomize_scores(model)
            DetectionCheckpointer(model, save_dir=cls.tmp).save(name)
            cfg.MODEL.WEIGHTS = os.path.join(cls.tmp, name + ".pth")
            cls.predictors[name] = (cfg_file, opts, BatchPredictor(cfg))

        # the tool, as a user runs it (sample image: first of DATASETS.TEST[0])
        proc = run_tool(
            [
                "tools/export_model.py",
                "--config-file",
                f"configs/{PANOPTIC}",
                "--output",
                os.path.join(cls.tmp, "panoptic"),
                "MODEL.WEIGHTS",
                os.path.join(cls.tmp, "panoptic.pth"),
                "MODEL.DEVICE",
                "cpu",
            ],
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        # the library on the others, traced on the same first val image
        for name in LIBRARY_EXPORTS:
            predictor = cls.predictors[name][2]
            image = read_image(cls.images[0], predictor.cfg.INPUT.FORMAT)
            aug = T.AugInput(image)
            T.AugmentationList(build_augmentations(predictor.cfg, False))(aug)
            tensor = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1))).float()
            export_torchscript(predictor.cfg, predictor.model, tensor, os.path.join(cls.tmp, name))

        proc = run_tool(
            ["-c", RUNNER, cls.tmp, ",".join(cls.images), "panoptic", *LIBRARY_EXPORTS],
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        cls.exported = torch.load(os.path.join(cls.tmp, "exported_outputs.pt"), weights_only=False)

    def eager(self, name, path):
        """The eager model's output, made as the runner makes the exported one: one image per
        call, at the runner's thread count."""
        predictor = self.predictors[name][2]
        with subprocess_threads():
            return predictor([read_image(path, predictor.input_format)])[0]

    def assert_semantic_equal(self, eager, exported):
        np.testing.assert_allclose(exported.numpy(), eager.numpy(), atol=LOGIT_ATOL)
        self.assertTrue(torch.equal(exported.argmax(0), eager.argmax(0)))
        self.assertGreater(len(eager.argmax(0).unique()), 1)  # not a constant map

    def assert_instances_equal(self, eager, exported):
        self.assertGreater(len(eager), 0)
        self.assertTrue(torch.equal(exported["pred_classes"], eager.pred_classes))
        np.testing.assert_allclose(
            exported["scores"].numpy(), eager.scores.numpy(), atol=LOGIT_ATOL
        )
        np.testing.assert_allclose(
            exported["pred_boxes"].numpy(), eager.pred_boxes.tensor.numpy(), atol=1e-3
        )
        self.assertTrue(torch.equal(exported["pred_masks"], eager.pred_masks))

    def test_semantic_heads(self):
        for name in ("fcn8s", "unet_crop", "deconvnet"):
            manifest, outs = self.exported[name]
            self.assertEqual((manifest["kind"], manifest["fixed_input_size"]), ("semantic", True))
            for path, out in zip(self.images[:2], outs):
                with self.subTest(name=name, image=os.path.basename(path)):
                    self.assert_semantic_equal(self.eager(name, path)["sem_seg"], out["sem_seg"])
            # another size is padded to the traced one; outputs come at the image's size
            self.assertEqual(tuple(outs[2]["sem_seg"].shape), (7, 100, 150))

    def test_mask_rcnn_any_size(self):
        manifest, outs = self.exported["mask_rcnn"]
        self.assertEqual((manifest["kind"], manifest["fixed_input_size"]), ("rcnn", False))
        for path, out in zip(self.images, outs):  # the odd size too: the trace is size-generic
            with self.subTest(image=os.path.basename(path)):
                self.assert_instances_equal(
                    self.eager("mask_rcnn", path)["instances"], out["instances"]
                )

    def test_panoptic_with_fusion(self):
        manifest, outs = self.exported["panoptic"]
        self.assertEqual(manifest["fusion"]["name"], "HeuristicFusion")
        for path, out in zip(self.images[:2], outs):
            eager = self.eager("panoptic", path)
            self.assert_semantic_equal(eager["sem_seg"], out["sem_seg"])
            self.assert_instances_equal(eager["instances"], out["instances"])
            self.assertTrue(torch.equal(out["panoptic_seg"][0], eager["panoptic_seg"][0]))
            self.assertEqual(out["panoptic_seg"][1], eager["panoptic_seg"][1])
            self.assertTrue(eager["panoptic_seg"][1])  # some segments to compare
        self.assertEqual(tuple(outs[2]["panoptic_seg"][0].shape), (100, 150))


class TestLoadErrors(unittest.TestCase):
    def test_not_a_torchscript_file(self):
        from seg2.export import load_exported
        from seg2.io import InputError

        path = os.path.join(tempfile.mkdtemp(prefix="seg2-export-"), "model.ts")
        with open(path, "wb") as f:
            f.write(b"not a zip archive")
        with self.assertRaisesRegex(InputError, "model.ts: not a TorchScript file"):
            load_exported(path)
