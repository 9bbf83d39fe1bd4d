"""Every YAML under configs/ merges onto Detectron2 + seg2 defaults."""
import unittest
from pathlib import Path

from seg2.utils.testing import REPO_ROOT, get_seg2_cfg

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
