"""Semantic losses against torch's cross-entropy and hand-computed Dice."""

import math
import unittest

import torch
from torch.nn import functional as F

from seg2.modeling.losses import SemSegLoss, dice_loss, pixel_cross_entropy
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
        # The weights come only from the dataset mapper (sem_seg_weights).
        with self.assertRaisesRegex(ValueError, "INPUT.SEG2.WEIGHT_MAP"):
            loss(self.logits, self.target)

    def test_config_errors(self):
        with self.assertRaisesRegex(ValueError, "MODEL.SEG2.LOSS.NAMES"):
            SemSegLoss(names=["focal"], weights=[1.0])
        with self.assertRaisesRegex(ValueError, "MODEL.SEG2.LOSS.WEIGHTS"):
            SemSegLoss(names=["ce", "dice"], weights=[1.0])


if __name__ == "__main__":
    unittest.main()
