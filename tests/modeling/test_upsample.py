"""Upsampling ops against textbook examples and hand-built matrices."""

import unittest

import torch
from torch.nn import functional as F

from seg2.modeling.upsample import (
    UPSAMPLE_REGISTRY,
    BedOfNailsUpsample,
    BilinearUpsample,
    MaxPoolWithSwitches,
    MaxUnpoolUpsample,
    NearestUpsample,
    TransposedUpsample,
    build_upsample,
    transposed_output_padding,
    upsample_names,
)
from seg2_testing import get_seg2_cfg


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)[None, None]


class TestPoolUnpool(unittest.TestCase):
    def test_textbook_max_pool_and_unpool(self):
        x = _t([[1, 2, 6, 3], [3, 5, 2, 1], [1, 2, 2, 1], [7, 3, 4, 8]])
        values, switches = MaxPoolWithSwitches(2)(x)
        self.assertTrue(torch.equal(values, _t([[5, 6], [7, 8]])))
        up = build_upsample("max_unpool", channels=1, scale=2)
        out = up(_t([[1, 2], [3, 4]]), output_size=(4, 4), indices=switches)
        expected = _t([[0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]])
        self.assertTrue(torch.equal(out, expected))
        # Natural size is the same here.
        self.assertTrue(torch.equal(up(_t([[1, 2], [3, 4]]), indices=switches), expected))

    def test_odd_size_roundtrip(self):
        # 3x5 pools (ceil mode) to 2x3; each maximum goes back to where it was found.
        x = _t([[1, 9, 2, 0, 4], [3, 0, 8, 1, 0], [7, 0, 0, 6, 5]])
        values, switches = MaxPoolWithSwitches(2)(x)
        self.assertTrue(torch.equal(values, _t([[9, 8, 4], [7, 6, 5]])))
        out = MaxUnpoolUpsample(1)(values, output_size=(3, 5), indices=switches)
        expected = _t([[0, 9, 0, 0, 4], [0, 0, 8, 0, 0], [7, 0, 0, 6, 5]])
        self.assertTrue(torch.equal(out, expected))

    def test_unpool_needs_switches(self):
        with self.assertRaisesRegex(ValueError, "switches"):
            MaxUnpoolUpsample(1)(_t([[1.0]]))


class TestFixedOps(unittest.TestCase):
    x = _t([[1, 2], [3, 4]])

    def test_nearest(self):
        expected = _t([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
        self.assertTrue(torch.equal(NearestUpsample(1)(self.x), expected))
        # One pixel short of the natural size: the last block is cut.
        self.assertTrue(
            torch.equal(NearestUpsample(1)(self.x, output_size=(3, 4)), expected[..., :3, :])
        )

    def test_bed_of_nails(self):
        expected = _t([[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])
        self.assertTrue(torch.equal(BedOfNailsUpsample(1)(self.x), expected))
        self.assertTrue(
            torch.equal(BedOfNailsUpsample(1)(self.x, output_size=(3, 3)), expected[..., :3, :3])
        )
        with self.assertRaisesRegex(ValueError, "unreachable"):
            BedOfNailsUpsample(1)(self.x, output_size=(5, 4))  # a 3rd row of nails

    def test_bilinear_align_corners(self):
        # align_corners=True maps the corners onto each other: 2 -> 3 puts the midpoints
        # halfway between the inputs.
        out = BilinearUpsample(1, align_corners=True)(_t([[0, 1], [2, 3]]), output_size=(3, 3))
        expected = _t([[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])
        self.assertTrue(torch.allclose(out, expected))
        # align_corners=False at scale 2: output pixel 0 samples input coordinate -0.25,
        # clamped to 0; pixel 1 samples 0.25 = 0.75 * x0 + 0.25 * x1.
        out = BilinearUpsample(1)(_t([[0, 4]]))
        self.assertTrue(torch.allclose(out[0, 0, 0], torch.tensor([0.0, 1.0, 3.0, 4.0])))


class TestTransposed(unittest.TestCase):
    def test_output_padding_table(self):
        # (in, kernel, stride, padding, requested out, output_padding), from
        # out = (in - 1) * s - 2p + k + output_padding
        cases = [
            (2, 3, 2, 1, 3, 0),
            (2, 3, 2, 1, 4, 1),
            (16, 4, 2, 1, 32, 0),
            (16, 4, 2, 1, 33, 1),
            (3, 64, 32, 16, 96, 0),
            (5, 16, 8, 4, 47, 7),
            (7, 3, 1, 1, 7, 0),
        ]
        for n_in, k, s, p, n_out, expected in cases:
            self.assertEqual(transposed_output_padding(n_in, n_out, k, s, p), expected)
        for n_in, k, s, p, n_out in [(2, 3, 2, 1, 5), (2, 3, 2, 1, 2), (5, 16, 8, 4, 48)]:
            with self.assertRaisesRegex(ValueError, "unreachable"):
                transposed_output_padding(n_in, n_out, k, s, p)

    def test_1d_equals_transposed_convolution_matrix(self):
        torch.manual_seed(0)
        x_, y_, z_ = torch.randn(3).tolist()
        op = TransposedUpsample(1, 2, kernel_size=3, padding=1, bilinear_init=False)
        with torch.no_grad():
            op.weight.zero_()
            op.weight[0, 0, 1] = torch.tensor([x_, y_, z_])  # 1-D kernel on a 1-row input
        # Convolution with kernel [x, y, z], stride 2, padding 1: out[j] = sum_t w_t in[2j-1+t]
        c4 = torch.tensor([[y_, z_, 0, 0], [0, x_, y_, z_]])  # input length 4 -> 2
        c3 = torch.tensor([[y_, z_, 0], [0, x_, y_]])  # input length 3 -> 2
        a = torch.randn(2)
        for c in (c4, c3):
            out = op(a.view(1, 1, 1, 2), output_size=(1, c.shape[1]))
            self.assertTrue(torch.allclose(out.view(-1), c.T @ a, atol=1e-6))
        with self.assertRaisesRegex(ValueError, "unreachable"):
            op(a.view(1, 1, 1, 2), output_size=(1, 5))

    def test_bilinear_init_equals_interpolation(self):
        torch.manual_seed(0)
        x = torch.randn(2, 3, 5, 6)
        for f in (2, 3, 4):
            op = TransposedUpsample(3, f, bilinear_init=True)
            out = op(x)
            ref = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)
            self.assertEqual(out.shape, ref.shape)
            b = f // 2  # interpolation clamps to the edge pixel there; the conv sees zeros
            inner = (slice(None), slice(None), slice(b, -b), slice(b, -b))
            self.assertTrue(torch.allclose(out[inner], ref[inner], atol=1e-5), f)
            self.assertFalse(torch.allclose(out[..., :b, :], ref[..., :b, :], atol=1e-3), f)


class TestRegistry(unittest.TestCase):
    def test_names(self):
        expected = {
            "nearest": NearestUpsample,
            "bed_of_nails": BedOfNailsUpsample,
            "max_unpool": MaxUnpoolUpsample,
            "bilinear": BilinearUpsample,
            "transposed": TransposedUpsample,
        }
        self.assertEqual(upsample_names(), expected)
        # registered under the class name, through fvcore's public register
        self.assertEqual({k: v for k, v in UPSAMPLE_REGISTRY}, {v.__name__: v for v in expected.values()})
        self.assertIsInstance(build_upsample("BilinearUpsample", 4, 2), BilinearUpsample)
        x = torch.randn(1, 4, 3, 5)
        for name in expected:
            op = build_upsample(name, 4, 2)
            if name == "max_unpool":
                _, idx = MaxPoolWithSwitches(2)(torch.randn(1, 4, 6, 10))
                y = op(x, indices=idx)
            else:
                y = op(x)
            self.assertEqual(tuple(y.shape), (1, 4, 6, 10), name)
        with self.assertRaisesRegex(KeyError, "MODEL.SEG2.UPSAMPLE.NAME"):
            build_upsample("bicubic", 4)

    def test_from_config(self):
        cfg = get_seg2_cfg()
        cfg.MODEL.SEG2.UPSAMPLE.NAME = "bilinear"
        cfg.MODEL.SEG2.UPSAMPLE.ALIGN_CORNERS = True
        self.assertTrue(build_upsample(cfg, 2).align_corners)
        cfg.MODEL.SEG2.UPSAMPLE.NAME = "transposed"
        cfg.MODEL.SEG2.UPSAMPLE.BILINEAR_INIT = False
        op = build_upsample(cfg, 2, 4)
        self.assertEqual((op.kernel_size, op.padding, op.scale), (8, 2, 4))
        self.assertNotEqual(op.weight[0, 1].abs().sum().item(), 0.0)  # not the diagonal init

    def test_gradients(self):
        torch.manual_seed(0)
        x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
        _, idx = MaxPoolWithSwitches(2)(torch.randn(1, 2, 5, 6, dtype=torch.float64))
        for name in ("nearest", "bed_of_nails", "max_unpool", "bilinear", "transposed"):
            op = build_upsample(name, 2, 2).double()
            kwargs = {"indices": idx, "output_size": (5, 6)} if name == "max_unpool" else {}
            self.assertTrue(torch.autograd.gradcheck(lambda t: op(t, **kwargs), (x,)), name)
        op = build_upsample("transposed", 2, 2).double()
        op(x).sum().backward()
        self.assertGreater(op.weight.grad.abs().sum().item(), 0)


if __name__ == "__main__":
    unittest.main()
