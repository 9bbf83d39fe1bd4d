"""Fusion modules on tiny hand-made masks with answers worked out by hand, plus Detectron2's
own ``combine_semantic_and_instance_outputs`` as reference for the heuristic."""

import unittest

import torch
from detectron2.config import get_cfg
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Instances

from seg2.config import add_seg2_config
from seg2.modeling.fusion import (
    FUSION_REGISTRY,
    HeuristicFusion,
    ProbabilisticFusion,
    build_fusion,
)


def _instances(masks, scores, classes) -> Instances:
    masks = torch.as_tensor(masks)
    inst = Instances(tuple(masks.shape[1:]))
    inst.pred_masks = masks
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def _box(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _onehot_probs(label_map, k, p=0.9):
    """(K, H, W) probabilities with ``p`` on the label and the rest spread evenly."""
    probs = torch.full((k,) + tuple(label_map.shape), (1 - p) / (k - 1))
    probs.scatter_(0, label_map[None], p)
    return probs


def _strip(segments, keys=("id", "isthing", "category_id")):
    return [{k: s[k] for k in keys} for s in segments]


class TestHeuristicFusion(unittest.TestCase):
    # 6x6 image, thing classes 0, 1 (semantic ids 0, 1), stuff semantic ids 2, 3.
    THINGS, STUFF = [0, 1], [2, 3]

    def setUp(self):
        # A: rows 0-2, cols 0-2 (9 px); B: rows 1-3, cols 1-3 (9 px), 4 px shared with A.
        self.a = _box(6, 6, 0, 3, 0, 3)
        self.b = _box(6, 6, 1, 4, 1, 4)
        self.sem = _onehot_probs(torch.full((6, 6), 3, dtype=torch.long), 4)

    def fuse(self, inst, sem=None, **kw):
        args = dict(instances_score_thresh=0.5, overlap_thresh=0.5, stuff_area_limit=1)
        args.update(kw)
        return HeuristicFusion(**args)(
            inst, self.sem if sem is None else sem, self.THINGS, self.STUFF
        )

    def test_overlapping_instance_kept_and_trimmed(self):
        # B has 4/9 = 0.44 of its pixels claimed by A: <= 0.5, so it keeps its other 5.
        inst = _instances(torch.stack([self.b, self.a]), [0.8, 0.9], [1, 0])
        pan, segs = self.fuse(inst)
        expected = torch.full((6, 6), 3, dtype=torch.int32)
        expected[self.b] = 2
        expected[self.a] = 1
        self.assertTrue(torch.equal(pan, expected))
        self.assertEqual(
            segs,
            [
                {
                    "id": 1,
                    "isthing": True,
                    "category_id": 0,
                    "score": 0.8999999761581421,
                    "instance_id": 1,
                    "area": 9,
                },
                {
                    "id": 2,
                    "isthing": True,
                    "category_id": 1,
                    "score": 0.800000011920929,
                    "instance_id": 0,
                    "area": 5,
                },
                {"id": 3, "isthing": False, "category_id": 3, "area": 22},
            ],
        )

    def test_overlapping_instance_dropped(self):
        # 0.44 claimed > 0.4: B is dropped, its unclaimed pixels go to stuff.
        inst = _instances(torch.stack([self.a, self.b]), [0.9, 0.8], [0, 1])
        pan, segs = self.fuse(inst, overlap_thresh=0.4)
        expected = torch.full((6, 6), 2, dtype=torch.int32)
        expected[self.a] = 1
        self.assertTrue(torch.equal(pan, expected))
        self.assertEqual(
            [(s["id"], s["isthing"], s["area"]) for s in segs], [(1, True, 9), (2, False, 27)]
        )

    def test_score_threshold(self):
        inst = _instances(torch.stack([self.a, self.b]), [0.9, 0.49], [0, 1])
        pan, segs = self.fuse(inst)
        self.assertEqual([s["area"] for s in segs], [9, 27])
        # A score equal to the threshold is kept (only scores below it are dropped).
        inst.scores[1] = 0.5
        pan, segs = self.fuse(inst)
        self.assertEqual([s["area"] for s in segs], [9, 5, 22])
        inst.scores[1] = 0.49
        pan, segs = self.fuse(inst, instances_score_thresh=0.95)
        self.assertTrue(torch.equal(pan, torch.ones(6, 6, dtype=torch.int32)))
        self.assertEqual(_strip(segs), [{"id": 1, "isthing": False, "category_id": 3}])

    def test_soft_masks_binarised_at_half(self):
        soft = self.a.float() * 0.7 + 0.2  # 0.9 inside A, 0.2 outside
        pan, segs = self.fuse(_instances(soft[None], [0.9], [0]))
        self.assertTrue(torch.equal(pan == 1, self.a))
        self.assertEqual(segs[0]["area"], 9)

    def test_stuff_area_limit_and_thing_argmax_void(self):
        labels = torch.full((6, 6), 3, dtype=torch.long)
        labels[5, 0:3] = 2  # 3 px of stuff 2: below a limit of 4 -> void
        labels[5, 5] = 1  # semantic says thing 1 but no instance: void
        labels[0, 0] = 1  # under instance A: the instance wins
        inst = _instances(self.a[None], [0.9], [0])
        pan, segs = self.fuse(inst, sem=_onehot_probs(labels, 4), stuff_area_limit=4)
        expected = torch.full((6, 6), 2, dtype=torch.int32)
        expected[self.a] = 1
        expected[5, 0:3] = 0
        expected[5, 5] = 0
        self.assertTrue(torch.equal(pan, expected))
        self.assertEqual(
            [(s["id"], s["category_id"], s["area"]) for s in segs], [(1, 0, 9), (2, 3, 23)]
        )
        # At a limit of 3 the small segment survives; stuff ids follow semantic id order.
        pan, segs = self.fuse(inst, sem=_onehot_probs(labels, 4), stuff_area_limit=3)
        self.assertEqual(
            [(s["id"], s["category_id"], s["area"]) for s in segs],
            [(1, 0, 9), (2, 2, 3), (3, 3, 23)],
        )
        self.assertEqual(int(pan[5, 5]), 0)

    def test_matches_detectron2_combine(self):
        # Detectron2's function treats semantic label 0 as "thing" and every other label as
        # stuff; that is our rule with thing_ids=[0] and stuff_ids=[1..K-1].
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            h, w, n, k = 12, 14, 6, 5
            masks = torch.zeros(n, h, w, dtype=torch.bool)
            for i in range(n):
                y0, x0 = torch.randint(0, h - 2, (2,), generator=g).tolist()
                masks[i, y0 : y0 + 2 + i, x0 : x0 + 3 + i % 3] = True
            scores = torch.rand(n, generator=g).tolist()
            inst = _instances(masks, scores, [0] * n)
            probs = torch.rand(k, h, w, generator=g).softmax(dim=0)
            ours = HeuristicFusion(
                instances_score_thresh=0.3, overlap_thresh=0.5, stuff_area_limit=6
            )(inst, probs, [0], list(range(1, k)))
            ref = combine_semantic_and_instance_outputs(inst, probs.argmax(0), 0.5, 6, 0.3)
            self.assertTrue(torch.equal(ours[0], ref[0]))
            keys = ("id", "isthing", "category_id")
            self.assertEqual(_strip(ours[1], keys), _strip(ref[1], keys))


class TestProbabilisticFusion(unittest.TestCase):
    def fuse(self, inst, probs, things, stuff, **kw):
        args = dict(
            instances_score_thresh=0.1, overlap_thresh=0.5, stuff_area_limit=1, semantic_weight=0.5
        )
        args.update(kw)
        return ProbabilisticFusion(**args)(inst, probs, things, stuff)

    def test_semantic_arbitrates_overlap_and_weak_instance(self):
        # 1x4 image; thing classes 0, 1 = semantic 0, 1; stuff = semantic 2.
        # A (class 0, 0.9) covers px 0-1; B (class 1, 0.8) covers px 1-2.
        a = torch.tensor([[[1, 1, 0, 0]]], dtype=torch.bool)
        b = torch.tensor([[[0, 1, 1, 0]]], dtype=torch.bool)
        inst = _instances(torch.cat([a, b]), [0.9, 0.8], [0, 1])
        probs = torch.tensor(
            [[0.35, 0.05, 0.60], [0.10, 0.80, 0.10], [0.05, 0.05, 0.90], [0.10, 0.10, 0.80]]
        ).T.reshape(3, 1, 4)
        # P_det = Q + r * P_sem (r = unclaimed mass, deferred to the semantic branch):
        # px0: r = .1: P_det = [.935, .005, .06]; pool = [.6425, .0275, .33]  -> A
        # px1: q = (.9, .8) sums to 1.7 -> [.529, .471, 0], r = 0;
        #      pool = [.315, .635, .05]                                       -> B (heuristic: A)
        # px2: r = .2: P_det = [.01, .81, .18]; pool = [.03, .43, .54]       -> stuff
        # px3: no claim: pool = P_sem = [.1, .1, .8]                          -> stuff
        # A and B each keep 1 of 2 mask pixels: lost 0.5, not > 0.5, both kept.
        pan, segs = self.fuse(inst, probs, [0, 1], [2])
        self.assertEqual(pan.tolist(), [[1, 2, 3, 3]])
        self.assertEqual(
            [(s["id"], s["isthing"], s["category_id"], s["area"]) for s in segs],
            [(1, True, 0, 1), (2, True, 1, 1), (3, False, 2, 2)],
        )
        self.assertEqual([s["instance_id"] for s in segs[:2]], [0, 1])
        # Dropping rule: lost 0.5 > 0.4 -> both instances dropped, their won pixels void.
        pan, segs = self.fuse(inst, probs, [0, 1], [2], overlap_thresh=0.4)
        self.assertEqual(pan.tolist(), [[0, 0, 1, 1]])
        self.assertEqual(_strip(segs), [{"id": 1, "isthing": False, "category_id": 2}])
        # The heuristic on the same input: score order decides px1, B keeps px2.
        pan, _ = HeuristicFusion(
            instances_score_thresh=0.5, overlap_thresh=0.5, stuff_area_limit=1
        )(inst, probs, [0, 1], [2])
        self.assertEqual(pan.tolist(), [[1, 1, 2, 3]])

    def test_weak_instance_needs_semantic_support(self):
        # W (class 0, score 0.4) covers px 0-1. Semantic: px0 agrees (0.8), px1 says stuff.
        w = torch.tensor([[[1, 1, 0]]], dtype=torch.bool)
        inst = _instances(w, [0.4], [0])
        probs = torch.tensor([[0.8, 0.05, 0.15], [0.05, 0.05, 0.9], [0.05, 0.05, 0.9]])
        probs = probs.T.reshape(3, 1, 3)
        # px0: r = .6: P_det = [.88, .03, .09]; pool = [.84, .04, .12]  -> W
        # px1: P_det = [.43, .03, .54]; pool = [.24, .04, .72]           -> stuff
        pan, segs = self.fuse(inst, probs, [0, 1], [2])
        self.assertEqual(pan.tolist(), [[1, 2, 2]])
        self.assertAlmostEqual(segs[0]["score"], 0.4, places=6)
        # Below the score floor W is no candidate: pool = P_sem; px0 says thing 0 (0.8)
        # with no instance -> void, as in the heuristic; px1-2 stuff.
        pan, segs = self.fuse(inst, probs, [0, 1], [2], instances_score_thresh=0.5)
        self.assertEqual(pan.tolist(), [[0, 1, 1]])

    def test_overlapping_claims_are_normalised(self):
        # A (class 0) and B (class 1), both q = 0.9 on one pixel whose semantic says stuff.
        # Claims sum to 1.8 -> P_det = [.5, .5, 0]; pool = [.3, .3, .4] -> stuff.
        inst = _instances(torch.ones(2, 1, 1, dtype=torch.bool), [0.9, 0.9], [0, 1])
        probs = torch.tensor([0.1, 0.1, 0.8]).reshape(3, 1, 1)
        pan, segs = self.fuse(inst, probs, [0, 1], [2])
        self.assertEqual(pan.tolist(), [[1]])
        self.assertEqual(_strip(segs), [{"id": 1, "isthing": False, "category_id": 2}])

    def test_soft_mask_and_label_mapping(self):
        # Thing class 0 is semantic id 1; stuff are semantic 0 and 2. Soft mask 0.5,
        # score 0.8 -> q = 0.4 on both pixels.
        inst = _instances(torch.full((1, 1, 2), 0.5), [0.8], [0])
        probs = torch.tensor([[0.1, 0.8, 0.1], [0.6, 0.2, 0.2]]).T.reshape(3, 1, 2)
        # px0: r = .6: P_det = [.06, .4 + .48, .06]; pool = [.08, .84, .08]   -> thing
        # px1: P_det = [.36, .4 + .12, .12]; pool = [.48, .36, .16]           -> stuff 0
        pan, segs = self.fuse(inst, probs, [1], [0, 2])
        self.assertEqual(pan.tolist(), [[1, 2]])
        self.assertEqual(
            _strip(segs),
            [
                {"id": 1, "isthing": True, "category_id": 0},
                {"id": 2, "isthing": False, "category_id": 0},
            ],
        )

    def test_thing_without_instance_is_void(self):
        # No instances: P_det = P_sem, so pool = P_sem. px0 says thing (0.8) vs two stuff
        # (0.1 each) -> thing, but no instance -> void; px1 -> stuff 2.
        inst = _instances(torch.zeros(0, 1, 2, dtype=torch.bool), [], [])
        probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]).T.reshape(3, 1, 2)
        pan, segs = self.fuse(inst, probs, [0], [1, 2])
        self.assertEqual(pan.tolist(), [[0, 1]])
        self.assertEqual(_strip(segs), [{"id": 1, "isthing": False, "category_id": 2}])

    def test_missed_object_is_void_even_with_one_stuff_class(self):
        # A missed object beside the only stuff class: thing class 0 = semantic 0, stuff = 1,
        # w = 0.5. 2x2 image, columns: left semantic P(thing) = .9, right P(stuff) = .9.
        # One instance (class 0, score .9) covers the bottom-left pixel only.
        probs = torch.tensor([[[0.9, 0.1], [0.9, 0.1]], [[0.1, 0.9], [0.1, 0.9]]])
        inst = _instances(_box(2, 2, 1, 2, 0, 1)[None], [0.9], [0])
        # (0,0): no claim, pool = P_sem = [.9, .1] -> thing, no instance covers -> void
        #        (the old posterior, all unclaimed mass to stuff, gave [.45, .55] -> stuff).
        # (1,0): r = .1: P_det = [.99, .01]; pool = [.945, .055]           -> the instance
        # (0,1), (1,1): pool = P_sem = [.1, .9]                             -> stuff
        pan, segs = self.fuse(inst, probs, [0], [1])
        self.assertEqual(pan.tolist(), [[0, 2], [1, 2]])
        self.assertEqual(
            [(s["id"], s["isthing"], s["category_id"], s["area"]) for s in segs],
            [(1, True, 0, 1), (2, False, 1, 2)],
        )
        # Without any instance, the whole thing column is void, like HeuristicFusion's.
        none = _instances(torch.zeros(0, 2, 2, dtype=torch.bool), [], [])
        pan, segs = self.fuse(none, probs, [0], [1])
        self.assertEqual(pan.tolist(), [[0, 1], [0, 1]])
        heur, _ = HeuristicFusion(stuff_area_limit=1)(none, probs, [0], [1])
        self.assertEqual(pan.tolist(), heur.tolist())


class TestFusionInvariants(unittest.TestCase):
    def test_random_inputs(self):
        g = torch.Generator().manual_seed(1)
        things, stuff = [0, 1, 2], [3, 4, 5, 6]
        fusions = [
            HeuristicFusion(instances_score_thresh=0.3, overlap_thresh=0.5, stuff_area_limit=5),
            HeuristicFusion(instances_score_thresh=0.0, overlap_thresh=1.0, stuff_area_limit=0),
            ProbabilisticFusion(
                instances_score_thresh=0.1,
                overlap_thresh=0.5,
                stuff_area_limit=5,
                semantic_weight=0.5,
            ),
            ProbabilisticFusion(
                instances_score_thresh=0.0,
                overlap_thresh=1.0,
                stuff_area_limit=0,
                semantic_weight=0.2,
            ),
        ]
        for trial in range(15):
            h, w, n = 16, 20, int(torch.randint(0, 8, (1,), generator=g))
            soft = torch.rand(n, h, w, generator=g)
            soft = soft * (torch.rand(n, 1, 1, generator=g) > 0.2)  # some empty masks
            masks = soft if trial % 2 else soft > 0.5
            inst = _instances(
                masks,
                torch.rand(n, generator=g).tolist(),
                torch.randint(0, 3, (n,), generator=g).tolist(),
            )
            probs = (3 * torch.randn(7, h, w, generator=g)).softmax(dim=0)
            for fusion in fusions:
                with self.subTest(trial=trial, fusion=type(fusion).__name__):
                    pan, segs = fusion(inst, probs, things, stuff)
                    self.assertEqual(pan.dtype, torch.int32)
                    self.assertEqual(tuple(pan.shape), (h, w))
                    ids = [s["id"] for s in segs]
                    self.assertEqual(ids, list(range(1, len(segs) + 1)))
                    present = sorted(set(pan.unique().tolist()) - {0})
                    self.assertEqual(present, ids)
                    for s in segs:
                        self.assertEqual(s["area"], int((pan == s["id"]).sum()))
                        self.assertGreater(s["area"], 0)
                        if s["isthing"]:
                            self.assertIn(s["category_id"], [0, 1, 2])
                            self.assertEqual(
                                int(inst.pred_classes[s["instance_id"]]), s["category_id"]
                            )
                        else:
                            self.assertIn(s["category_id"], stuff)
                            self.assertGreaterEqual(s["area"], fusion.stuff_area_limit)
                    inst_ids = [s["instance_id"] for s in segs if s["isthing"]]
                    self.assertEqual(len(inst_ids), len(set(inst_ids)))
                    self.assertEqual(sum(s["area"] for s in segs), int((pan > 0).sum()))


class TestFusionRegistry(unittest.TestCase):
    def test_build_from_config(self):
        cfg = add_seg2_config(get_cfg())
        cfg.MODEL.SEG2.FUSION.INSTANCES_SCORE_THRESH = 0.6
        cfg.MODEL.SEG2.FUSION.OVERLAP_THRESH = 0.3
        cfg.MODEL.SEG2.FUSION.STUFF_AREA_LIMIT = 10
        cfg.MODEL.SEG2.FUSION.PROB_SCORE_THRESH = 0.2
        cfg.MODEL.SEG2.FUSION.SEMANTIC_WEIGHT = 0.7
        heur = build_fusion(cfg)
        self.assertIsInstance(heur, HeuristicFusion)
        self.assertEqual(
            (heur.instances_score_thresh, heur.overlap_thresh, heur.stuff_area_limit),
            (0.6, 0.3, 10),
        )
        cfg.MODEL.SEG2.FUSION.NAME = "ProbabilisticFusion"
        prob = build_fusion(cfg)
        self.assertIsInstance(prob, ProbabilisticFusion)
        self.assertEqual(
            (
                prob.instances_score_thresh,
                prob.overlap_thresh,
                prob.stuff_area_limit,
                prob.semantic_weight,
            ),
            (0.2, 0.3, 10, 0.7),
        )
        # The exported model rebuilds a fusion from its from_config keyword arguments.
        again = FUSION_REGISTRY.get("ProbabilisticFusion")(**ProbabilisticFusion.from_config(cfg))
        self.assertEqual(vars(again), vars(prob))
        # Constructor defaults: the heuristic's score floor is Detectron2's 0.5, the pool's 0.1.
        self.assertEqual(
            (
                HeuristicFusion().instances_score_thresh,
                ProbabilisticFusion().instances_score_thresh,
            ),
            (0.5, 0.1),
        )
        self.assertEqual(
            (ProbabilisticFusion().overlap_thresh, ProbabilisticFusion().stuff_area_limit),
            (0.5, 64),
        )
        self.assertIsInstance(build_fusion(cfg, "HeuristicFusion"), HeuristicFusion)
        self.assertIs(FUSION_REGISTRY.get("ProbabilisticFusion"), ProbabilisticFusion)
        with self.assertRaises(KeyError):
            build_fusion(cfg, "NoSuchFusion")

    def test_bad_inputs_name_the_field(self):
        fusion = HeuristicFusion()
        inst = _instances(torch.zeros(1, 4, 4, dtype=torch.bool), [0.9], [0])
        with self.assertRaisesRegex(ValueError, "pred_masks"):
            fusion(inst, torch.rand(3, 5, 4), [0], [1, 2])
        with self.assertRaisesRegex(ValueError, "pred_classes"):
            fusion(
                _instances(torch.zeros(1, 4, 4, dtype=torch.bool), [0.9], [1]),
                torch.rand(3, 4, 4),
                [0],
                [1, 2],
            )
        with self.assertRaisesRegex(ValueError, "stuff_ids"):
            fusion(inst, torch.rand(3, 4, 4), [0], [1, 3])
        with self.assertRaisesRegex(ValueError, "SEMANTIC_WEIGHT"):
            ProbabilisticFusion(semantic_weight=1.5)


if __name__ == "__main__":
    unittest.main()
