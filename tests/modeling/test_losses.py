"""Semantic losses against torch's cross-entropy and hand-computed Dice / U-Net weights."""

import math
import unittest

import numpy as np
import torch
from torch.nn import functional as F

from seg2.modeling.losses import (
    SemSegLoss,
    dice_loss,
    pixel_cross_entropy,
    unet_weight_map,
    unet_weight_map_from_semantic,
)
from seg2_testing import get_seg2_cfg

L3 = math.log(3.0)


def _dice_example(num_classes: int = 2):
    """Four pixels with P(class 1) = .75, .25, .5, .75 and targets 1, 0, 1, ignore."""
    logits = torch.zeros(1, num_classes, 2, 2)
    logits[0, 1] = torch.tensor([[L3, -L3], [0.0, L3]])
    if num_classes == 3:
        logits[0, 2] = -1e4  # an absent class with ~zero probability
    target = torch.tensor([[[1, 0], [1, 255]]])
    return logits, target


class TestCrossEntropy(unittest.TestCase):
    def test_matches_torch(self):
        torch.manual_seed(0)
        logits = torch.randn(2, 4, 5, 6)
        target = torch.randint(0, 4, (2, 5, 6))
        target[0, :2] = 255
        ref = F.cross_entropy(logits, target, ignore_index=255)
        self.assertTrue(torch.allclose(pixel_cross_entropy(logits, target, 255), ref))
        ones = torch.ones(2, 5, 6)
        self.assertTrue(torch.allclose(pixel_cross_entropy(logits, target, 255, ones), ref))

    def test_weighted_by_hand(self):
        # Pixel a: P(target) = .75, weight 2; pixel b: P(target) = .5, weight 1; c ignored.
        logits = torch.tensor([[[[L3, 0.0, 5.0]], [[0.0, 0.0, 0.0]]]])
        target = torch.tensor([[[0, 1, 255]]])
        w = torch.tensor([[[2.0, 1.0, 7.0]]])
        expected = (2 * -math.log(0.75) + 1 * -math.log(0.5)) / 2
        self.assertAlmostEqual(pixel_cross_entropy(logits, target, 255, w).item(), expected, 6)

    def test_all_ignored_is_zero_with_gradient(self):
        logits = torch.randn(1, 3, 2, 2, requires_grad=True)
        target = torch.full((1, 2, 2), 255)
        for loss in (pixel_cross_entropy(logits, target, 255), dice_loss(logits, target, 255)):
            self.assertEqual(loss.item(), 0.0)
            loss.backward()

    def test_shape_error(self):
        with self.assertRaisesRegex(ValueError, "pixel_cross_entropy"):
            pixel_cross_entropy(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 4, dtype=torch.long))


class TestDice(unittest.TestCase):
    def test_hand_computed(self):
        logits, target = _dice_example()
        # class 1: inter .75 + .5, sum p 1.5, sum t 2 -> 2.5/3.5; class 0: inter .75,
        # sum p 1.5, sum t 1 -> 1.5/2.5. Loss = 1 - (5/7 + 3/5)/2 = 12/35.
        self.assertAlmostEqual(dice_loss(logits, target, 255, eps=0.0).item(), 12 / 35, 6)
        # eps = 1: (3.5/4.5 + 2.5/3.5)/2 -> 16/63.
        self.assertAlmostEqual(dice_loss(logits, target, 255, eps=1.0).item(), 16 / 63, 6)

    def test_absent_class_left_out(self):
        logits, target = _dice_example(num_classes=3)
        # Averaging over all 3 classes would add dice_2 = eps/eps = 1 and give 32/189.
        self.assertAlmostEqual(dice_loss(logits, target, 255, eps=1.0).item(), 16 / 63, 5)

    def test_perfect_prediction(self):
        target = torch.tensor([[[0, 1], [1, 0]]])
        logits = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
        self.assertAlmostEqual(dice_loss(logits, target, 255, eps=0.0).item(), 0.0, 6)


class TestUNetWeightMap(unittest.TestCase):
    """Two 4x4 squares separated by a one-pixel background column (the paper's case of
    touching cells split by a thin background line), on a 6x11 image."""

    def setUp(self):
        self.ids = np.zeros((6, 11), np.int32)
        self.ids[1:5, 1:5] = 1
        self.ids[1:5, 6:10] = 2
        self.sem = (self.ids > 0).astype(np.uint8)
        self.sem[5, 10] = 255
        # 65 labelled pixels: 32 of class 1, 33 of class 0; w_c = 65 / (2 n_c).
        self.wc0, self.wc1 = 65 / 66, 65 / 64

    def test_hand_computed(self):
        w = unet_weight_map(self.ids, self.sem, num_classes=2, w0=10.0, sigma=5.0)
        self.assertEqual(w.dtype, np.float32)
        border = lambda d1, d2: 10.0 * math.exp(-((d1 + d2) ** 2) / (2 * 25.0))
        cases = {
            (2, 5): self.wc0 + border(1, 1),  # in the gap: 1 px from each square
            (0, 5): self.wc0 + border(math.sqrt(2), math.sqrt(2)),  # diagonal to both
            (2, 0): self.wc0 + border(1, 6),  # left of square 1, 6 px from square 2
            (5, 0): self.wc0 + border(math.sqrt(2), math.sqrt(37)),
            (2, 2): self.wc1,  # inside a square: class balance only
            (4, 9): self.wc1,
            (5, 10): 0.0,  # ignored
        }
        for (y, x), expected in cases.items():
            self.assertAlmostEqual(float(w[y, x]), expected, 5, msg=(y, x))
        # Mean class-balance weight over labelled pixels is 1 by construction.
        wc = unet_weight_map(self.ids, self.sem, num_classes=2, w0=0.0)
        self.assertAlmostEqual(float(wc.sum()) / 65, 1.0, 5)

    def test_single_instance_has_no_border_term(self):
        ids = np.where(self.ids == 2, 0, self.ids)
        w = unet_weight_map(ids, self.sem, num_classes=2)
        self.assertAlmostEqual(float(w[2, 5]), self.wc0, 6)

    def test_from_semantic_components(self):
        w = unet_weight_map_from_semantic(self.sem, 2, object_classes=[1])
        self.assertTrue(np.allclose(w, unet_weight_map(self.ids, self.sem, 2)))

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, "same shape"):
            unet_weight_map(self.ids, self.sem[:5], num_classes=2)
        with self.assertRaisesRegex(ValueError, r"\[0, 2\)"):
            unet_weight_map(self.ids, self.sem * 3, num_classes=2)


class TestSemSegLoss(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.logits = torch.randn(2, 3, 6, 11)
        self.target = torch.randint(0, 3, (2, 6, 11))
        self.target[:, 0] = 255

    def test_from_config(self):
        cfg = get_seg2_cfg()
        cfg.MODEL.SEG2.LOSS.NAMES = ["ce", "dice"]
        cfg.MODEL.SEG2.LOSS.WEIGHTS = [1.0, 0.5]
        losses = SemSegLoss(cfg)(self.logits, self.target)
        self.assertEqual(set(losses), {"loss_sem_seg_ce", "loss_sem_seg_dice"})
        ref = F.cross_entropy(self.logits, self.target, ignore_index=255)
        self.assertTrue(torch.allclose(losses["loss_sem_seg_ce"], ref))
        dice = dice_loss(self.logits, self.target, 255, 1.0)
        self.assertTrue(torch.allclose(losses["loss_sem_seg_dice"], 0.5 * dice))

    def test_weighted_ce(self):
        loss = SemSegLoss(names=["weighted_ce"], weights=[1.0])
        w = torch.rand(2, 6, 11)
        ref = pixel_cross_entropy(self.logits, self.target, 255, w)
        self.assertTrue(
            torch.allclose(loss(self.logits, self.target, w)["loss_sem_seg_weighted_ce"], ref)
        )
        with self.assertRaisesRegex(ValueError, "INPUT.SEG2.WEIGHT_MAP"):
            loss(self.logits, self.target)
        # On the fly from connected components of class 1.
        fly = SemSegLoss(names=["weighted_ce"], weights=[1.0], unet_object_classes=[1])
        maps = np.stack([unet_weight_map_from_semantic(t, 3, [1]) for t in self.target.numpy()])
        ref = pixel_cross_entropy(self.logits, self.target, 255, torch.from_numpy(maps))
        self.assertTrue(
            torch.allclose(fly(self.logits, self.target)["loss_sem_seg_weighted_ce"], ref)
        )

    def test_config_errors(self):
        with self.assertRaisesRegex(ValueError, "MODEL.SEG2.LOSS.NAMES"):
            SemSegLoss(names=["focal"], weights=[1.0])
        with self.assertRaisesRegex(ValueError, "MODEL.SEG2.LOSS.WEIGHTS"):
            SemSegLoss(names=["ce", "dice"], weights=[1.0])


if __name__ == "__main__":
    unittest.main()
