"""Models benchmark: its FLOP counter against a hand count, its configs, and a tiny end-to-end
run through tools/benchmark.py checking the table and JSON shape."""

import importlib.util
import json
import os
import tempfile
import unittest

import torch
from torch import nn

from benchmarks.models import VARIANTS, count_flops, measure_peaks, model_cfg
from seg2_testing import REPO_ROOT, tiny_synthetic_root


def load_cli():
    spec = importlib.util.spec_from_file_location(
        "benchmark_cli", REPO_ROOT / "tools" / "benchmark.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestFlopCount(unittest.TestCase):
    def test_tiny_conv_model_matches_hand_count(self):
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(4, 2, 1, bias=False),
            nn.Flatten(),
            nn.Linear(2 * 8 * 8, 5, bias=False),
        ).eval()
        # multiply-adds: 3x3 conv 4*3*9 per output pixel, 1x1 conv 2*4, linear 128*5;
        # FLOPs = 2 x multiply-adds (a matmul's 2*n^3 convention).
        macs = 4 * 3 * 9 * 8 * 8 + 2 * 4 * 8 * 8 + 128 * 5
        self.assertEqual(count_flops(model, torch.zeros(1, 3, 8, 8)), 2 * macs)

    def test_peaks_are_positive(self):
        peaks = measure_peaks("cpu", rounds=1, matmul_n=64)
        self.assertEqual(set(peaks), {"matmul_gflops", "conv_gflops"})
        self.assertTrue(all(v > 0 for v in peaks.values()))


class TestVariantConfigs(unittest.TestCase):
    def test_heads_and_pipelines(self):
        heads = {v: model_cfg(v).MODEL.SEM_SEG_HEAD.NAME for v in VARIANTS}
        self.assertEqual(heads["seg2_panoptic_fcn8s"], "FCNSemSegHead")
        self.assertEqual(heads["seg2_panoptic_unet"], "UNetSemSegHead")
        self.assertEqual(heads["seg2_panoptic_deconvnet"], "DeconvNetSemSegHead")
        self.assertEqual(model_cfg("d2_panoptic_fpn").MODEL.META_ARCHITECTURE, "PanopticFPN")
        # same backbone and input size everywhere
        for v in VARIANTS:
            cfg = model_cfg(v, data_prefix="p")
            self.assertEqual(cfg.MODEL.RESNETS.DEPTH, 18)
            self.assertEqual(cfg.INPUT.MIN_SIZE_TEST, 128)
            self.assertTrue(cfg.DATASETS.TRAIN[0].startswith("p_train"))
        with self.assertRaisesRegex(KeyError, "nope"):
            model_cfg("nope")


class TestModelsBenchmarkSmoke(unittest.TestCase):
    def test_two_variants_through_the_cli(self):
        root = tiny_synthetic_root()
        variants = ["seg2_panoptic_fcn8s", "d2_panoptic_fpn"]
        with tempfile.TemporaryDirectory() as out:
            args = [
                "models", "--output", out, "--repeats", "1", "--ims-per-batch", "1",
                "--batch-test", "2", "--data-root", root, "--matmul-n", "128", "--no-memory",
                "--variants", *variants, "--",
                "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
            ]  # fmt: skip
            result = load_cli().main(args)
            with open(os.path.join(out, "models_benchmark.json")) as f:
                saved = json.load(f)
            with open(os.path.join(out, "models_benchmark.md")) as f:
                table = f.read()
        self.assertEqual(saved["rows"], json.loads(json.dumps(result["rows"])))
        self.assertEqual([r["variant"] for r in saved["rows"]], variants)
        self.assertEqual(set(saved["peaks"]), {"matmul_gflops", "conv_gflops"})
        for r in saved["rows"]:
            for key in ("train_s_per_iter", "ms_per_image_b1", "ms_per_image_batched",
                        "gflop_per_image", "gflops", "params_m"):  # fmt: skip
                self.assertGreater(r[key], 0, key)
            self.assertIsNone(r["peak_mb"])  # --no-memory (forked children are not tested)
            self.assertTrue(0 <= r["fusion_pct"] <= 100)
            self.assertAlmostEqual(
                r["pct_matmul_peak"], 100 * r["gflops"] / saved["peaks"]["matmul_gflops"]
            )
        lines = [line for line in table.splitlines() if line.startswith("|")]
        self.assertEqual(len(lines), 2 + len(variants))
        self.assertIn("% conv peak", lines[0])
        self.assertTrue(lines[2].startswith("| seg2_panoptic_fcn8s |"))
