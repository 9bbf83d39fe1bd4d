"""Every YAML under configs/ merges onto Detectron2 + seg2 defaults, and every leaf config
(the GPU-sized COCO/Cityscapes ones included) builds its model and predicts at input size."""
import unittest

import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import seg2.modeling  # noqa: F401  (registers seg2's heads and meta-architectures)
from seg2.data.builtin import register_synthetic
from seg2.data.dataset_mapper import Seg2DatasetMapper
from seg2_testing import REPO_ROOT, get_seg2_cfg, tiny_synthetic_root

CONFIGS = sorted(p.relative_to(REPO_ROOT / "configs") for p in (REPO_ROOT / "configs").rglob("*.yaml"))


class TestConfigs(unittest.TestCase):
    def test_found_configs(self):
        self.assertGreaterEqual(len(CONFIGS), 4)

    def test_every_config_merges(self):
        for rel in CONFIGS:
            with self.subTest(config=str(rel)):
                cfg = get_seg2_cfg(str(rel))
                self.assertTrue(cfg.MODEL.META_ARCHITECTURE)
                # seg2 configs never climb out of this repository
                text = (REPO_ROOT / "configs" / rel).read_text()
                for line in text.splitlines():
                    if line.startswith("_BASE_"):
                        base = (REPO_ROOT / "configs" / rel).parent / line.split(":", 1)[1].strip().strip("\"'")
                        self.assertTrue(base.resolve().is_relative_to(REPO_ROOT / "configs"), line)

    def test_every_leaf_config_builds_and_predicts_at_input_size(self):
        """One inference forward on an odd-sized image: catches a wrong head name, level or
        class count in a config that is otherwise only trained on a GPU."""
        torch.manual_seed(0)
        h, w = 90, 122  # divisible by neither 32 nor the heads' strides
        image = torch.randint(0, 256, (3, h, w)).float()
        for rel in CONFIGS:
            if rel.name.startswith("Base"):
                continue
            with self.subTest(config=str(rel)):
                cfg = get_seg2_cfg(str(rel))
                cfg.MODEL.DEVICE = "cpu"
                model = build_model(cfg).eval()
                with torch.no_grad():
                    out = model([{"image": image, "height": h, "width": w}])[0]
                if "sem_seg" in out:
                    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
                    self.assertEqual(tuple(out["sem_seg"].shape), (k, h, w))
                if "instances" in out:
                    self.assertEqual(out["instances"].image_size, (h, w))
                if "panoptic_seg" in out:
                    ids, segments = out["panoptic_seg"]
                    self.assertEqual(tuple(ids.shape), (h, w))
                    self.assertEqual(
                        sorted(s["id"] for s in segments), sorted(set(ids.unique().tolist()) - {0})
                    )
                self.assertTrue({"sem_seg", "instances"} & set(out), f"outputs: {list(out)}")

    def test_synthetic_panoptic_configs_train_one_step(self):
        """Every semantic branch of Seg2PanopticRCNN (FCN-8s, U-Net, DeconvNet) takes a
        training step on real mapped data: finite losses, and the loss reaches the head."""
        register_synthetic(tiny_synthetic_root(), prefix="cfgtest_synthetic")
        leaves = sorted(
            rel for rel in CONFIGS
            if rel.parts[0] == "Synthetic-PanopticSegmentation"
            and get_seg2_cfg(str(rel)).MODEL.META_ARCHITECTURE == "Seg2PanopticRCNN"
        )
        heads = {get_seg2_cfg(str(rel)).MODEL.SEM_SEG_HEAD.NAME for rel in leaves}
        self.assertLessEqual({"FCNSemSegHead", "UNetSemSegHead", "DeconvNetSemSegHead"}, heads)
        for rel in leaves:
            with self.subTest(config=str(rel)):
                cfg = get_seg2_cfg(str(rel))
                cfg.MODEL.DEVICE = "cpu"
                cfg.DATASETS.TRAIN = ("cfgtest_synthetic_train_panoptic",)
                mapper = Seg2DatasetMapper(cfg, is_train=True)
                batch = [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:2]]
                torch.manual_seed(0)
                model = build_model(cfg).train()
                with EventStorage():
                    losses = model(batch)
                sem_losses = [k for k in losses if k.startswith("loss_sem_seg")]
                self.assertTrue(sem_losses, list(losses))
                self.assertTrue(all(torch.isfinite(v) for v in losses.values()), losses)
                sum(losses.values()).backward()
                grads = [p.grad for p in model.sem_seg_head.parameters() if p.requires_grad]
                self.assertTrue(grads and all(g is not None for g in grads))
                self.assertTrue(any(float(g.abs().sum()) > 0 for g in grads))

    def test_from_scratch_configs_do_not_freeze_norm(self):
        for rel in CONFIGS:
            cfg = get_seg2_cfg(str(rel))
            resnet = "resnet" in cfg.MODEL.BACKBONE.NAME
            if resnet and not cfg.MODEL.WEIGHTS and not rel.name.startswith("Base"):
                with self.subTest(config=str(rel)):
                    self.assertNotEqual(cfg.MODEL.RESNETS.NORM, "FrozenBN")
                    self.assertEqual(cfg.MODEL.BACKBONE.FREEZE_AT, 0)

    def test_device_default_matches_hardware(self):
        import torch

        cfg = get_seg2_cfg()
        self.assertEqual(cfg.MODEL.DEVICE, "cuda" if torch.cuda.is_available() else "cpu")
