"""seg2.engine.config_check: each config problem is one ConfigError naming where it came from and
the nearest valid alternative; the shipped configs raise none."""

import os
import tempfile
import unittest

import torch

import seg2  # noqa: F401  (registers heads, fusions, datasets)
from seg2.engine.config_check import (
    ConfigError,
    check_config,
    check_num_classes,
    check_weights,
    merge_config_file,
    merge_config_list,
)
from seg2.io import InputError
from seg2_testing import REPO_ROOT, get_seg2_cfg

PANOPTIC = "Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_synthetic.yaml"
PANOPTIC_FPN = "Synthetic-PanopticSegmentation/panoptic_fpn_R_18_FPN_synthetic.yaml"
SEMANTIC = "Synthetic-SemanticSegmentation/fcn8s_R_18_synthetic.yaml"


def write(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class TestMerge(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        base = os.path.join(
            REPO_ROOT,
            "configs",
            "Synthetic-InstanceSegmentation",
            "mask_rcnn_R_18_FPN_synthetic.yaml",
        )
        self.mid = write(
            self.dir, "mid.yaml", f'_BASE_: "{base}"\nMODEL:\n  ROI_HEADS:\n    NUM_CLASES: 3\n'
        )
        self.leaf = write(self.dir, "leaf.yaml", '_BASE_: "mid.yaml"\nSOLVER:\n  MAX_ITER: 2\n')

    def test_unknown_key_names_the_base_file_that_holds_it(self):
        with self.assertRaises(ConfigError) as ctx:
            merge_config_file(get_seg2_cfg(), self.leaf)
        self.assertEqual(
            str(ctx.exception),
            f"{self.mid}: unknown config key MODEL.ROI_HEADS.NUM_CLASES; did you mean MODEL.ROI_HEADS.NUM_CLASSES?",
        )
        self.assertIsInstance(ctx.exception, InputError)

    def test_unknown_node_suggests_full_key(self):
        with self.assertRaisesRegex(
            ConfigError,
            r"^command line: unknown config key MODEL\.SEG2\.FUSON\.NAME; did you mean MODEL\.SEG2\.FUSION\.NAME\?$",
        ):
            merge_config_list(get_seg2_cfg(), ["MODEL.SEG2.FUSON.NAME", "x"])

    def test_type_mismatch_and_odd_list(self):
        with self.assertRaisesRegex(ConfigError, r"^command line: .*SOLVER\.MAX_ITER"):
            merge_config_list(get_seg2_cfg(), ["SOLVER.MAX_ITER", "many"])
        with self.assertRaisesRegex(
            ConfigError, r"KEY VALUE pairs; 'SOLVER.MAX_ITER' has no value"
        ):
            merge_config_list(get_seg2_cfg(), ["SOLVER.MAX_ITER"])

    def test_yaml_and_missing_files(self):
        bad = write(self.dir, "bad.yaml", "MODEL:\n  WEIGHTS: [unclosed\n")
        with self.assertRaisesRegex(ConfigError, r"malformed YAML.*bad\.yaml.*line"):
            merge_config_file(get_seg2_cfg(), bad)
        with self.assertRaisesRegex(ConfigError, r"nope\.yaml: config file not found"):
            merge_config_file(get_seg2_cfg(), os.path.join(self.dir, "nope.yaml"))
        orphan = write(self.dir, "orphan.yaml", '_BASE_: "gone.yaml"\n')
        with self.assertRaisesRegex(
            ConfigError, r"orphan\.yaml: _BASE_ file not found: .*gone\.yaml"
        ):
            merge_config_file(get_seg2_cfg(), orphan)


class TestChecks(unittest.TestCase):
    def cfg(self, name, *opts):
        cfg = get_seg2_cfg(name)
        cfg.merge_from_list(list(opts))
        return cfg

    def test_registry_names_suggest_nearest(self):
        cases = [
            ("MODEL.SEG2.FUSION.NAME", "HeuristicFuson", "HeuristicFusion"),
            ("MODEL.SEM_SEG_HEAD.NAME", "FCNSemSegHaed", "FCNSemSegHead"),
            ("MODEL.META_ARCHITECTURE", "Seg2PanopticRCN", "Seg2PanopticRCNN"),
            ("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbon", "build_resnet_fpn_backbone"),
            ("MODEL.SEG2.UPSAMPLE.NAME", "bilinaer", "bilinear"),
        ]
        for key, value, expected in cases:
            with self.assertRaises(ConfigError) as ctx:
                check_config(self.cfg(PANOPTIC, key, value), eval_only=True)
            msg = str(ctx.exception)
            self.assertTrue(
                msg.startswith(
                    f"{key}: {value!r} is not a registered name; did you mean {expected}"
                ),
                msg,
            )
            self.assertLess(len(msg), 200)  # nearest names, not the registry

    def test_dataset_name_suggests_nearest(self):
        with self.assertRaisesRegex(
            ConfigError,
            r"^DATASETS\.TEST: dataset 'synthetic_vall' is not registered; did you mean synthetic_val\b",
        ):
            check_config(self.cfg(PANOPTIC, "DATASETS.TEST", "('synthetic_vall',)"), eval_only=True)

    def test_num_classes_against_metadata(self):
        # seg2's convention: the semantic head predicts all 7 classes, things first
        check_num_classes(self.cfg(PANOPTIC), ["synthetic_train_panoptic"])
        with self.assertRaisesRegex(
            ConfigError,
            r"MODEL\.SEM_SEG_HEAD\.NUM_CLASSES = 5 is too small: .*7 classes.*set MODEL\.SEM_SEG_HEAD\.NUM_CLASSES 7$",
        ):
            check_num_classes(
                self.cfg(PANOPTIC, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"),
                ["synthetic_train_panoptic"],
            )
        with self.assertRaisesRegex(
            ConfigError,
            r"MODEL\.ROI_HEADS\.NUM_CLASSES = 2 is too small: .*circle, square, triangle.*NUM_CLASSES 3$",
        ):
            check_num_classes(
                self.cfg(PANOPTIC, "MODEL.ROI_HEADS.NUM_CLASSES", "2"), ["synthetic_train_panoptic"]
            )
        # PanopticFPN's separated convention: stuff + 1 = 5
        check_num_classes(self.cfg(PANOPTIC_FPN), ["synthetic_train_panoptic_separated"])
        with self.assertRaisesRegex(
            ConfigError, r"= 4 is too small: .*things, stripes.*NUM_CLASSES 5$"
        ):
            check_num_classes(
                self.cfg(PANOPTIC_FPN, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4"),
                ["synthetic_train_panoptic_separated"],
            )
        # semantic-only model: ROI heads are not checked
        check_num_classes(
            self.cfg(SEMANTIC, "MODEL.ROI_HEADS.NUM_CLASSES", "1"), ["synthetic_train_sem"]
        )
        with self.assertLogs("seg2", "WARNING"):  # more than needed is only a note
            check_num_classes(
                self.cfg(SEMANTIC, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9"), ["synthetic_train_sem"]
            )

    def test_weights(self):
        d = tempfile.mkdtemp()
        good = os.path.join(d, "good.pth")
        torch.save({"model": {"w": torch.ones(3)}}, good)
        check_weights(self.cfg(PANOPTIC, "MODEL.WEIGHTS", good))
        torn = os.path.join(d, "torn.pth")
        open(torn, "wb").write(open(good, "rb").read()[:300])
        text = write(d, "notes.pth", "hello")
        for path, why in (
            (os.path.join(d, "gone.pth"), "file not found"),
            (torn, "truncated checkpoint"),
            (text, "not a checkpoint"),
        ):
            with self.assertRaises(ConfigError) as ctx:
                check_weights(self.cfg(PANOPTIC, "MODEL.WEIGHTS", path))
            self.assertEqual(str(ctx.exception).split(": ")[:2], ["MODEL.WEIGHTS", path])
            self.assertIn(why, str(ctx.exception))
        check_weights(
            self.cfg(PANOPTIC, "MODEL.WEIGHTS", "detectron2://ImageNetPretrained/MSRA/R-50.pkl")
        )


if __name__ == "__main__":
    unittest.main()
