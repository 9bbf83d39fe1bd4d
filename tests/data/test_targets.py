"""U-Net's weight map (Ronneberger et al. 2015, eq. 2) on a hand-worked example: class
balance plus w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) between instances."""

import math
import unittest

import numpy as np

from seg2.data.targets import unet_weight_map


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
        def border(d1, d2):
            return 10.0 * math.exp(-((d1 + d2) ** 2) / (2 * 25.0))

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

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, "same shape"):
            unet_weight_map(self.ids, self.sem[:5], num_classes=2)
        with self.assertRaisesRegex(ValueError, r"\[0, 2\)"):
            unet_weight_map(self.ids, self.sem * 3, num_classes=2)


if __name__ == "__main__":
    unittest.main()
