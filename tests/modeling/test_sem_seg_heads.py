"""FCN / U-Net / DeconvNet heads inside Detectron2's semantic meta-architectures."""

import unittest

import torch
from detectron2.modeling import build_model
from torch.nn import functional as F

import seg2.modeling.backbone  # noqa: F401  (registers build_unet_backbone)
import seg2.modeling.meta_arch_semantic  # noqa: F401  (registers Seg2SemanticSegmentor)
import seg2.modeling.sem_seg  # noqa: F401  (registers the heads)
from seg2.data.synthetic.meta import CATEGORIES
from seg2.modeling.backbone.unet import UNetEncoder
from seg2.modeling.sem_seg import center_crop
from seg2.modeling.upsample import MaxPoolWithSwitches, MaxUnpoolUpsample
from seg2_testing import get_seg2_cfg

K = len(CATEGORIES)
_THREADS = torch.get_num_threads()


def setUpModule():
    # Small tensors: a second intra-op thread only adds contention on a shared CPU.
    torch.set_num_threads(1)


def tearDownModule():
    torch.set_num_threads(_THREADS)


SIZES = [(67, 93), (64, 80)]  # odd sizes, and a batch of two sizes


def make_cfg(head: str, backbone: str = "resnet", meta: str = "Seg2SemanticSegmentor"):
    cfg = get_seg2_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = meta
    cfg.MODEL.SEM_SEG_HEAD.NAME = head
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = K
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.SEG2.UNET.DECODER_CHANNELS = [64, 32, 32, 32]
    cfg.MODEL.SEG2.DECONVNET.CHANNELS = [64, 32]
    if backbone in ("resnet", "fpn"):
        cfg.MODEL.RESNETS.DEPTH = 18
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.RESNETS.NORM = "BN"
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.SEG2.DECONVNET.IN_FEATURE = "res3"
    if backbone == "fpn":
        cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
        cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.OUT_CHANNELS = 32
        cfg.MODEL.SEG2.FCN.IN_FEATURES = ["p5", "p4", "p3"]
        cfg.MODEL.SEG2.UNET.IN_FEATURES = ["p5", "p4", "p3", "p2"]
        cfg.MODEL.SEG2.DECONVNET.IN_FEATURE = "p3"
    if backbone == "unet":
        cfg.MODEL.BACKBONE.NAME = "build_unet_backbone"
        cfg.MODEL.SEG2.UNET.DEPTH = 3
        cfg.MODEL.SEG2.UNET.BASE_CHANNELS = 8
        cfg.MODEL.SEG2.UNET.NORM = ""
        cfg.MODEL.SEG2.FCN.IN_FEATURES = ["res3", "res2", "res1"]
        cfg.MODEL.SEG2.UNET.IN_FEATURES = ["res3", "res2", "res1"]
        cfg.MODEL.SEG2.UNET.DECODER_CHANNELS = [32, 32, 32]
        cfg.MODEL.SEG2.DECONVNET.IN_FEATURE = "res1"
    return cfg


def make_inputs(sizes=SIZES, seed: int = 0, weights: bool = False):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for h, w in sizes:
        sem = torch.randint(0, K, (h, w), generator=g)
        sem[:3] = 255  # ignored rows
        d = {"image": torch.rand(3, h, w, generator=g) * 255, "sem_seg": sem}
        if weights:
            d["sem_seg_weights"] = torch.ones(h, w)
        inputs.append(d)
    return inputs


class HeadCase:
    """Shapes, losses and eval outputs of one model built from a config."""

    def check_model(self, cfg, expect_keys=("loss_sem_seg_ce",)):
        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        losses = model(make_inputs())
        self.assertEqual(set(losses), set(expect_keys))
        total = sum(losses.values())
        self.assertTrue(torch.isfinite(total))
        total.backward()
        grads = [p.grad for p in model.sem_seg_head.parameters() if p.requires_grad]
        self.assertTrue(all(g is not None and torch.isfinite(g).all() for g in grads))

        model.eval()
        with torch.no_grad():
            inputs = make_inputs()
            for d in inputs:
                d.pop("sem_seg")
            inputs[0]["height"], inputs[0]["width"] = 134, 186  # output at another size
            out = model(inputs)
        self.assertEqual(tuple(out[0]["sem_seg"].shape), (K, 134, 186))
        self.assertEqual(tuple(out[1]["sem_seg"].shape), (K,) + SIZES[1])
        return model


class TestFCN(HeadCase, unittest.TestCase):
    def test_variants_count_score_convs(self):
        for levels, stride in (
            (["res5"], 32),
            (["res5", "res4"], 16),
            (["res5", "res4", "res3"], 8),
        ):
            cfg = make_cfg("FCNSemSegHead")
            cfg.MODEL.SEG2.FCN.IN_FEATURES = levels
            head = build_model(cfg).sem_seg_head
            scores = [
                m
                for m in head.modules()
                if isinstance(m, torch.nn.Conv2d)
                and m.out_channels == K
                and m.kernel_size == (1, 1)
            ]
            self.assertEqual(len(scores), len(levels))
            self.assertEqual(head.common_stride, stride)

    def test_resnet_transposed(self):
        cfg = make_cfg("FCNSemSegHead")
        cfg.MODEL.SEG2.UPSAMPLE.NAME = "transposed"
        model = self.check_model(cfg)
        self.assertEqual(len(model.sem_seg_head.upsample_ops), 2)

    def test_fpn_and_plain_semantic_segmentor(self):
        self.check_model(make_cfg("FCNSemSegHead", "fpn", meta="SemanticSegmentor"))

    def test_unet_encoder_bed_of_nails(self):
        cfg = make_cfg("FCNSemSegHead", "unet")
        cfg.MODEL.SEG2.UPSAMPLE.NAME = "bed_of_nails"
        self.check_model(cfg)

    def test_max_unpool_rejected(self):
        cfg = make_cfg("FCNSemSegHead")
        cfg.MODEL.SEG2.UPSAMPLE.NAME = "max_unpool"
        with self.assertRaisesRegex(ValueError, "switches"):
            build_model(cfg)

    def test_fusion_order_matches_the_paper_on_equal_channels(self):
        # FPN levels all have the same channels, so fusing them in the wrong order still
        # runs; only the values tell. The reference is the paper's FCN-8s built by hand
        # from the head's own weights: s3(p3) + up(s4(p4) + up(pred(p5))), each sum cut
        # to the finer level's size at the bottom/right.
        cfg = make_cfg("FCNSemSegHead", "fpn")
        cfg.MODEL.SEG2.UPSAMPLE.NAME = "transposed"
        head = build_model(cfg).sem_seg_head.eval()
        self.assertEqual(head.in_features, ["p5", "p4", "p3"])
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            # Score convs start at zero and the ops at the same bilinear kernel: give every
            # conv and op its own random weights so that no two are interchangeable.
            for conv in [head.predictor, *head.skip_scores]:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
            for op in head.upsample_ops:
                op.weight.copy_(torch.randn(op.weight.shape, generator=g))
        # Distinct inputs per level; odd sizes so that each upsampled map is cut.
        feats = {
            "p5": torch.randn(1, 32, 3, 4, generator=g),
            "p4": torch.randn(1, 32, 5, 7, generator=g),
            "p3": torch.randn(1, 32, 10, 13, generator=g),
        }

        def score(conv, x):
            return F.conv2d(x, conv.weight, conv.bias)

        def up(op, x, size):
            y = F.conv_transpose2d(x, op.weight, stride=2, padding=1)  # kernel 4: 2x
            return y[..., : size[0], : size[1]]

        s4, s3 = head.skip_scores
        up4, up3 = head.upsample_ops
        fused4 = score(s4, feats["p4"]) + up(up4, score(head.predictor, feats["p5"]), (5, 7))
        expected = score(s3, feats["p3"]) + up(up3, fused4, (10, 13))
        with torch.no_grad():
            got = head.layers(feats)
        self.assertEqual(tuple(got.shape), (1, K, 10, 13))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    def test_bad_feature_name(self):
        cfg = make_cfg("FCNSemSegHead")
        cfg.MODEL.SEG2.FCN.IN_FEATURES = ["res5", "p4"]
        with self.assertRaisesRegex(ValueError, "MODEL.SEG2.FCN.IN_FEATURES"):
            build_model(cfg)


class TestUNet(HeadCase, unittest.TestCase):
    def test_center_crop_odd_excess(self):
        # An excess of 3 leaves 1 pixel above/left and 2 below/right (rounded down).
        x = torch.arange(49.0).reshape(1, 1, 7, 7)
        self.assertTrue(torch.equal(center_crop(x, (4, 4)), x[..., 1:5, 1:5]))
        # Even excess: centred; mixed: each dim on its own.
        self.assertTrue(torch.equal(center_crop(x, (3, 5)), x[..., 2:5, 1:6]))
        self.assertTrue(torch.equal(center_crop(x, (7, 7)), x))

    def test_resnet_pad(self):
        cfg = make_cfg("UNetSemSegHead")
        cfg.MODEL.SEG2.UPSAMPLE.NAME = "nearest"
        self.check_model(cfg)

    def test_fpn_pad_dice(self):
        cfg = make_cfg("UNetSemSegHead", "fpn")
        cfg.MODEL.SEG2.LOSS.NAMES = ["ce", "dice"]
        cfg.MODEL.SEG2.LOSS.WEIGHTS = [1.0, 1.0]
        self.check_model(cfg, ("loss_sem_seg_ce", "loss_sem_seg_dice"))

    def test_classic_encoder_pad(self):
        cfg = make_cfg("UNetSemSegHead", "unet")
        model = self.check_model(cfg)
        self.assertEqual(model.backbone.size_divisibility, 4)
        shapes = model.backbone.output_shape()
        self.assertEqual([shapes[f"res{i}"].stride for i in (1, 2, 3)], [1, 2, 4])
        self.assertEqual([shapes[f"res{i}"].channels for i in (1, 2, 3)], [8, 16, 32])

    def test_classic_encoder_crop_overlap_tile(self):
        cfg = make_cfg("UNetSemSegHead", "unet")
        cfg.MODEL.SEG2.UNET.SKIP_MODE = "crop"
        cfg.MODEL.SEG2.UPSAMPLE.NAME = "transposed"
        model = self.check_model(cfg)
        enc = model.backbone
        # Margin per side: encoder 2*(1+2+4) + decoder 2*(2+1) = 20 input pixels.
        self.assertEqual(enc.overlap_margin(), 20)
        feats = enc(torch.zeros(1, 3, 67, 93))
        # Tile 67+40 -> 108 (every pooled map even): res1 104, res2 48, res3 20 px tall.
        self.assertEqual([feats[f"res{i}"].shape[-2] for i in (1, 2, 3)], [104, 48, 20])
        model.sem_seg_head.eval()
        logits, _ = model.sem_seg_head(feats)
        self.assertEqual(tuple(logits.shape[-2:]), (68, 96))  # tile - 2*margin, >= image

    def test_resnet_crop(self):
        cfg = make_cfg("UNetSemSegHead")
        cfg.MODEL.SEG2.UNET.SKIP_MODE = "crop"
        cfg.MODEL.SEG2.UNET.IN_FEATURES = ["res3", "res2"]
        cfg.MODEL.SEG2.UNET.DECODER_CHANNELS = [32, 32]
        model = self.check_model(cfg)
        head = model.sem_seg_head.eval()
        feats = {"res3": torch.randn(1, 128, 9, 12), "res2": torch.randn(1, 64, 17, 24)}
        decoded = head.predictor(
            head.blocks[0](
                torch.cat(
                    [
                        head.upsample_ops[0](head.lateral(feats["res3"]))[..., :17, :24],
                        feats["res2"],
                    ],
                    1,
                )
            )
        )
        self.assertEqual(tuple(decoded.shape[-2:]), (13, 20))  # valid convs: 17-4, 24-4
        logits = head.layers(feats)
        self.assertEqual(tuple(logits.shape[-2:]), (17, 24))  # padded back, centred
        self.assertTrue(torch.equal(logits[..., 2:15, 2:22], decoded))
        feats = {"res3": torch.randn(1, 128, 2, 2), "res2": torch.randn(1, 64, 4, 4)}
        with self.assertRaisesRegex(ValueError, "too small"):
            head.layers(feats)

    def test_crop_mode_rejected_for_other_heads(self):
        cfg = make_cfg("FCNSemSegHead", "unet")
        cfg.MODEL.SEG2.UNET.SKIP_MODE = "crop"
        with self.assertRaisesRegex(ValueError, "SKIP_MODE"):
            build_model(cfg)


class TestDeconvNet(HeadCase, unittest.TestCase):
    def test_resnet_and_fpn(self):
        self.check_model(make_cfg("DeconvNetSemSegHead"))
        self.check_model(make_cfg("DeconvNetSemSegHead", "fpn"))

    def test_classic_encoder_unpools_with_encoder_switches(self):
        model = self.check_model(make_cfg("DeconvNetSemSegHead", "unet"))
        head = model.sem_seg_head.eval()
        self.assertEqual(head.common_stride, 1)
        seen = {}
        head.pools[0].register_forward_hook(lambda m, i, o: seen.update(pool=o, inp=i[0]))
        head.unpools[0].register_forward_hook(lambda m, i, o: seen.update(unpool=o))
        with torch.no_grad():
            logits, _ = head({"res1": torch.randn(1, 8, 13, 15)})
        self.assertEqual(tuple(logits.shape), (1, K, 13, 15))
        _, switches = seen["pool"]
        unpooled = seen["unpool"]
        self.assertEqual(tuple(unpooled.shape[-2:]), (13, 15))
        # Every value sits exactly where the encoder's max was found.
        mask = torch.zeros_like(unpooled).flatten(2)
        mask.scatter_(2, switches.flatten(2), 1.0)
        self.assertTrue(torch.all(unpooled.flatten(2)[mask == 0] == 0))
        self.assertTrue(isinstance(head.unpools[0], MaxUnpoolUpsample))
        self.assertTrue(isinstance(head.pools[0], MaxPoolWithSwitches))


class TestSeg2SemanticSegmentor(unittest.TestCase):
    def test_weights_reach_the_loss(self):
        cfg = make_cfg("FCNSemSegHead")
        cfg.MODEL.SEG2.LOSS.NAMES = ["ce", "weighted_ce"]
        cfg.MODEL.SEG2.LOSS.WEIGHTS = [1.0, 1.0]
        torch.manual_seed(0)
        model = build_model(cfg).train()
        inputs = make_inputs(weights=True)
        model.backbone.eval()  # BN statistics identical across the calls below
        ones = model(inputs)
        ce = ones["loss_sem_seg_ce"]
        # All-ones weights: weighted CE is CE.
        self.assertTrue(torch.allclose(ones["loss_sem_seg_weighted_ce"], ce, rtol=1e-5))
        for d in inputs:
            d["sem_seg_weights"] = d["sem_seg_weights"] * 3
        threes = model(inputs)
        self.assertTrue(torch.allclose(threes["loss_sem_seg_weighted_ce"], 3 * ce, rtol=1e-5))
        # Zero weight on the first image leaves its pixels in the count but not the sum.
        inputs[0]["sem_seg_weights"].zero_()
        partial = model(inputs)["loss_sem_seg_weighted_ce"]
        self.assertLess(partial.item(), threes["loss_sem_seg_weighted_ce"].item())
        # Without weights (INPUT.SEG2.WEIGHT_MAP off) weighted CE has nothing to weigh by.
        for d in inputs:
            d.pop("sem_seg_weights")
        with self.assertRaisesRegex(ValueError, "INPUT.SEG2.WEIGHT_MAP"):
            model(inputs)


@unittest.skipIf(not torch.cuda.is_available(), "needs CUDA")
class TestCUDA(unittest.TestCase):
    def test_train_and_eval_step(self):
        for head in ("FCNSemSegHead", "UNetSemSegHead", "DeconvNetSemSegHead"):
            cfg = make_cfg(head, "unet")
            cfg.MODEL.DEVICE = "cuda"
            cfg.MODEL.SEG2.UPSAMPLE.NAME = "transposed"
            cfg.MODEL.SEG2.LOSS.NAMES = ["weighted_ce", "dice"]
            cfg.MODEL.SEG2.LOSS.WEIGHTS = [1.0, 1.0]
            model = build_model(cfg).train()
            inputs = make_inputs(weights=True)
            for d in inputs:
                d["sem_seg_weights"] = torch.rand(d["sem_seg"].shape) * 3
            losses = model(inputs)
            sum(losses.values()).backward()
            self.assertTrue(all(v.is_cuda and torch.isfinite(v) for v in losses.values()))
            model.eval()
            with torch.no_grad():
                out = model(make_inputs(weights=True))
            self.assertEqual(tuple(out[0]["sem_seg"].shape), (K,) + SIZES[0])


class TestOverfit(unittest.TestCase):
    """A few dozen Adam steps on one tiny image must clearly fit it: the final CE must fall
    well below the label entropy (0.84 nats), the best any per-pixel-constant output does."""

    def check_overfit(self, head: str):
        final, first = self.overfit(head)
        self.assertLess(final, 0.25)
        self.assertLess(final, 0.3 * first)

    def overfit(self, head: str, steps: int = 60):
        cfg = make_cfg(head, "unet")
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
        cfg.MODEL.SEG2.DECONVNET.CHANNELS = [32, 32]
        cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]
        torch.manual_seed(0)
        model = build_model(cfg).train()
        sem = torch.zeros(21, 27, dtype=torch.long)
        sem[4:14, 5:15] = 1
        sem[10:19, 17:25] = 2
        sem[0, :] = 255
        image = torch.stack(
            [sem.float() * 60 + 20, 120 - sem.float() * 30, torch.full_like(sem, 100.0)]
        )
        inputs = [{"image": image + torch.randn(3, 21, 27) * 5, "sem_seg": sem}]
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        first = None
        for _ in range(steps):
            loss = sum(model(inputs).values())
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item(), first

    def test_fcn(self):
        self.check_overfit("FCNSemSegHead")

    def test_unet(self):
        self.check_overfit("UNetSemSegHead")

    def test_deconvnet(self):
        self.check_overfit("DeconvNetSemSegHead")


class TestEncoder(unittest.TestCase):
    def test_pad_mode_any_size(self):
        enc = UNetEncoder(3, base_channels=4, depth=4, norm="")
        feats = enc(torch.zeros(1, 3, 67, 93))
        self.assertEqual(
            [tuple(feats[f"res{i}"].shape[-2:]) for i in (1, 2, 3, 4)],
            [(67, 93), (34, 47), (17, 24), (9, 12)],
        )

    def test_paper_tile(self):
        # Ronneberger et al.: a 572x572 tile gives a 388x388 output (92 px lost per side).
        enc = UNetEncoder(1, base_channels=1, depth=5, norm="", mode="crop")
        self.assertEqual(enc.overlap_margin(), 92)
        self.assertEqual(enc.tile_padding(388), (92, 92))
        self.assertEqual(enc.decoder_output_size(572), 388)


if __name__ == "__main__":
    unittest.main()
