"""Seg2PanopticRCNN: a weightless ResNet-18 FPN on 64x64 random images, one train step and
one inference pass, on CPU (and on CUDA when present)."""

import unittest

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from seg2.config import add_seg2_config
from seg2.modeling.fusion import HeuristicFusion, ProbabilisticFusion, build_fusion
from seg2.modeling.meta_arch_panoptic import Seg2PanopticRCNN

NUM_THINGS, NUM_CLASSES = 3, 7


def tiny_cfg(norm: str = "BN", device: str = "cpu"):
    cfg = add_seg2_config(get_cfg())
    cfg.MODEL.DEVICE = device
    cfg.MODEL.META_ARCHITECTURE = "Seg2PanopticRCNN"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FPN.NORM = norm if norm == "GN" else ""
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_THINGS
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    # Random weights give scores around 1/(T+1); let every detection reach the fusion.
    cfg.MODEL.SEG2.FUSION.INSTANCES_SCORE_THRESH = 0.0
    cfg.MODEL.SEG2.FUSION.STUFF_AREA_LIMIT = 4
    return cfg


def train_inputs(seed: int = 0, with_weights: bool = False):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(2):
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 4.0, 28.0, 30.0], [20.0, 30.0, 60.0, 62.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        masks = torch.zeros(2, 64, 64, dtype=torch.bool)
        masks[0, 4:30, 4:28] = True
        masks[1, 30:62, 20:60] = True
        inst.gt_masks = BitMasks(masks)
        sem = torch.full((64, 64), 5, dtype=torch.long)
        sem[masks[0]] = 0
        sem[masks[1]] = 2
        sem[0:2] = 255
        d = {
            "image": torch.randint(0, 256, (3, 64, 64), generator=g).float(),
            "instances": inst,
            "sem_seg": sem,
            "height": 64,
            "width": 64,
        }
        if with_weights:
            d["sem_seg_weights"] = torch.rand(64, 64, generator=g)
        inputs.append(d)
    return inputs


def build(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg)


class TestSeg2PanopticRCNNTraining(unittest.TestCase):
    def setUp(self):
        # small tensors: one thread; restored, so later tests keep the session's count
        self.addCleanup(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(1)

    def test_train_step(self):
        for norm in ("BN", "GN"):
            with self.subTest(norm=norm):
                model = build(tiny_cfg(norm))
                self.assertIsInstance(model, Seg2PanopticRCNN)
                model.train()
                with EventStorage():
                    losses = model(train_inputs())
                self.assertEqual(
                    set(losses),
                    {
                        "loss_rpn_cls",
                        "loss_rpn_loc",
                        "loss_cls",
                        "loss_box_reg",
                        "loss_mask",
                        "loss_sem_seg",
                    },
                )
                for k, v in losses.items():
                    self.assertTrue(torch.isfinite(v).all(), k)
                sum(losses.values()).backward()
                for name in ("backbone", "proposal_generator", "roi_heads", "sem_seg_head"):
                    grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
                    self.assertTrue(any(g is not None and g.abs().sum() > 0 for g in grads), name)

    def test_instance_loss_weight_scales_roi_losses(self):
        cfg = tiny_cfg()
        results = []
        for weight in (1.0, 2.5):
            cfg.MODEL.SEG2.PANOPTIC.INSTANCE_LOSS_WEIGHT = weight
            model = build(cfg, seed=0).train()
            torch.manual_seed(1)  # same proposal sampling in both runs
            with EventStorage():
                results.append({k: v.detach() for k, v in model(train_inputs()).items()})
        base, scaled = results
        for k in ("loss_cls", "loss_box_reg", "loss_mask"):
            torch.testing.assert_close(scaled[k], 2.5 * base[k], msg=k)
        for k in ("loss_rpn_cls", "loss_rpn_loc", "loss_sem_seg"):
            torch.testing.assert_close(scaled[k], base[k], msg=k)

    def test_semantic_loss_is_cross_entropy_with_ignore(self):
        # Reference: F.cross_entropy on the head's own logits, 255 ignored.
        model = build(tiny_cfg()).train()
        inputs = train_inputs()
        with EventStorage():
            losses = model(inputs)
        head = model.sem_seg_head
        with torch.no_grad():
            images = model.preprocess_image(inputs)
            logits = head.layers(model.backbone(images.tensor))
            logits = torch.nn.functional.interpolate(
                logits, scale_factor=4, mode="bilinear", align_corners=False
            )
            target = torch.stack([x["sem_seg"] for x in inputs])
            ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
        torch.testing.assert_close(losses["loss_sem_seg"].detach(), ref)

    def test_sem_seg_weights_reach_heads_that_take_them(self):
        cfg = tiny_cfg()

        class WeightedHead(torch.nn.Module):
            """Records its inputs; returns a loss so the step completes."""

            ignore_value = 255
            takes_pixel_weights = True

            def __init__(self):
                super().__init__()
                self.scale = torch.nn.Parameter(torch.ones(()))
                self.seen = {}

            def forward(self, features, targets=None, weights=None):
                self.seen = {"targets": targets, "weights": weights}
                return None, {"loss_sem_seg_weighted": self.scale * weights.mean()}

        args = Seg2PanopticRCNN.from_config(cfg)
        args["sem_seg_head"] = WeightedHead()
        model = Seg2PanopticRCNN(**args).train()
        inputs = train_inputs(with_weights=True)
        # A 60x56 second image: the batch is padded to 64x64 (size divisibility 32).
        small = inputs[1]
        for key in ("sem_seg", "sem_seg_weights"):
            small[key] = small[key][:60, :56]
        small["image"] = small["image"][:, :60, :56]
        small["instances"] = Instances((60, 56), **small["instances"].get_fields())
        with EventStorage():
            losses = model(inputs)
        seen = model.sem_seg_head.seen
        self.assertIn("loss_sem_seg_weighted", losses)
        expected_w = torch.zeros(2, 64, 64)
        expected_t = torch.full((2, 64, 64), 255, dtype=torch.long)
        for i, x in enumerate(inputs):
            h, w = x["sem_seg"].shape
            expected_w[i, :h, :w] = x["sem_seg_weights"]
            expected_t[i, :h, :w] = x["sem_seg"]
        torch.testing.assert_close(seen["weights"], expected_w)
        self.assertTrue(torch.equal(seen["targets"], expected_t))

    def test_bad_config_names_the_key(self):
        cfg = tiny_cfg()
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
        with self.assertRaisesRegex(ValueError, "SEM_SEG_HEAD.NUM_CLASSES"):
            build_model(cfg)
        cfg = tiny_cfg()
        cfg.MODEL.MASK_ON = False
        with self.assertRaisesRegex(ValueError, "MASK_ON"):
            build_model(cfg)


class TestSeg2PanopticRCNNInference(unittest.TestCase):
    def setUp(self):
        # small tensors: one thread; restored, so later tests keep the session's count
        self.addCleanup(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(1)

    def check_outputs(self, outputs, sizes, model):
        self.assertEqual(len(outputs), len(sizes))
        for out, (h, w) in zip(outputs, sizes):
            self.assertEqual(set(out), {"instances", "sem_seg", "panoptic_seg"})
            inst = out["instances"]
            self.assertEqual(inst.image_size, (h, w))
            self.assertGreater(len(inst), 0)
            self.assertEqual(tuple(inst.pred_masks.shape), (len(inst), h, w))
            self.assertEqual(inst.pred_masks.dtype, torch.bool)
            self.assertEqual(tuple(out["sem_seg"].shape), (NUM_CLASSES, h, w))
            pan, segs = out["panoptic_seg"]
            self.assertEqual((tuple(pan.shape), pan.dtype), ((h, w), torch.int32))
            self.assertEqual([s["id"] for s in segs], list(range(1, len(segs) + 1)))
            self.assertEqual(sorted(set(pan.unique().tolist()) - {0}), [s["id"] for s in segs])
            for s in segs:
                self.assertEqual(s["area"], int((pan == s["id"]).sum()))
                if s["isthing"]:
                    self.assertEqual(s["category_id"], int(inst.pred_classes[s["instance_id"]]))
                    self.assertIn("score", s)
                else:
                    self.assertIn(s["category_id"], model.stuff_ids)

    def test_inference_outputs_at_requested_size(self):
        model = build(tiny_cfg()).eval()
        inputs = [
            {"image": torch.rand(3, 64, 64) * 255, "height": 50, "width": 70},
            {"image": torch.rand(3, 48, 64) * 255},  # no height/width: input size
        ]
        with torch.no_grad():
            outputs = model(inputs)
        self.check_outputs(outputs, [(50, 70), (48, 64)], model)
        self.assertEqual((model.thing_ids, model.stuff_ids), ([0, 1, 2], [3, 4, 5, 6]))

    def test_fusion_switch_on_same_model(self):
        cfg = tiny_cfg()
        model = build(cfg).eval()
        inputs = [{"image": torch.rand(3, 64, 64) * 255, "height": 40, "width": 40}]
        model.fusion = build_fusion(cfg, "ProbabilisticFusion")
        self.assertIsInstance(model.fusion, ProbabilisticFusion)
        calls = []
        inner = model.fusion

        class Spy:
            uses_soft_masks = True

            def __call__(self, instances, probs, thing_ids, stuff_ids):
                calls.append((instances.pred_masks, probs))
                return inner(instances, probs, thing_ids, stuff_ids)

        model.fusion = Spy()
        with torch.no_grad():
            outputs = model(inputs)
        self.check_outputs(outputs, [(40, 40)], model)
        soft, probs = calls[0]
        bool_masks = outputs[0]["instances"].pred_masks
        self.assertTrue(soft.is_floating_point())
        self.assertEqual(soft.shape, bool_masks.shape)
        self.assertTrue(((soft >= 0) & (soft <= 1)).all())
        # Soft masks are the same pasted probabilities: they agree with the bool masks
        # except where uint8 rounding crosses 0.5.
        self.assertLess(((soft >= 0.5) != bool_masks).float().mean().item(), 0.01)
        torch.testing.assert_close(probs.sum(0), torch.ones(40, 40))
        torch.testing.assert_close(probs, outputs[0]["sem_seg"].softmax(0))

    def test_soft_masks_follow_box_filtering(self):
        # Hand-made detections: the middle one has an empty box, which detector_postprocess
        # drops; the soft masks given to the fusion must still line up with the survivors.
        model = build(tiny_cfg()).eval()

        class FixedROIHeads(torch.nn.Module):
            def forward(self, images, features, proposals, targets=None):
                inst = Instances(images.image_sizes[0])
                inst.pred_boxes = Boxes(
                    torch.tensor(
                        [[2.0, 2.0, 20.0, 20.0], [30.0, 30.0, 30.0, 40.0], [32.0, 32.0, 60.0, 60.0]]
                    )
                )
                inst.scores = torch.tensor([0.9, 0.8, 0.7])
                inst.pred_classes = torch.tensor([0, 1, 2])
                inst.pred_masks = (
                    torch.tensor([0.2, 0.9, 0.7]).view(3, 1, 1, 1).expand(3, 1, 28, 28)
                )
                return [inst], {}

        model.roi_heads = FixedROIHeads()
        seen = []

        class Spy:
            uses_soft_masks = True

            def __call__(self, instances, probs, thing_ids, stuff_ids):
                seen.append(instances)
                return HeuristicFusion()(instances, probs, thing_ids, stuff_ids)

        model.fusion = Spy()
        with torch.no_grad():
            out = model([{"image": torch.rand(3, 64, 64) * 255}])
        self.assertEqual(out[0]["instances"].pred_classes.tolist(), [0, 2])
        soft = seen[0].pred_masks
        self.assertEqual(seen[0].pred_classes.tolist(), [0, 2])
        self.assertAlmostEqual(soft[0, 10, 10].item(), 0.2, delta=1 / 255)
        self.assertAlmostEqual(soft[1, 45, 45].item(), 0.7, delta=1 / 255)
        self.assertEqual(soft[1, 10, 10].item(), 0.0)
        # The bool masks binarise the same pasted masks: 0.2 -> empty, 0.7 -> its box.
        bool_masks = out[0]["instances"].pred_masks
        self.assertFalse(bool_masks[0].any())
        self.assertTrue(bool_masks[1, 33:59, 33:59].all())

    def test_raw_outputs_without_postprocess(self):
        model = build(tiny_cfg()).eval()
        with torch.no_grad():
            instances, sem = model.inference(
                [{"image": torch.rand(3, 64, 64) * 255}], do_postprocess=False
            )
        self.assertEqual(tuple(sem.shape), (1, NUM_CLASSES, 64, 64))
        self.assertEqual(tuple(instances[0].pred_masks.shape[1:]), (1, 28, 28))

    @unittest.skipIf(not torch.cuda.is_available(), "needs CUDA")
    def test_cuda_train_and_inference(self):
        model = build(tiny_cfg(device="cuda"))
        with EventStorage():
            losses = model(train_inputs())
        self.assertTrue(all(torch.isfinite(v).all() for v in losses.values()))
        model.eval()
        for name in ("HeuristicFusion", "ProbabilisticFusion"):
            model.fusion = build_fusion(tiny_cfg(), name)
            with torch.no_grad():
                out = model([{"image": torch.rand(3, 64, 64) * 255, "height": 50, "width": 70}])
            self.check_outputs(out, [(50, 70)], model)
            self.assertEqual(out[0]["panoptic_seg"][0].device.type, "cuda")


if __name__ == "__main__":
    unittest.main()
