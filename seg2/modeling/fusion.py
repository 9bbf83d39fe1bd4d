"""Things/stuff fusion: turn instance predictions and a semantic map into one panoptic map.

Both fusions are pure functions of their inputs (no parameters, no state), so they can be
tested on hand-made masks and swapped on a trained model at inference time
(``model.fusion = build_fusion(cfg, "ProbabilisticFusion")``).

Label spaces. Instances carry *contiguous thing ids* (``pred_classes``, 0..T-1, the ROI
heads' classes). The semantic branch predicts *all* classes (things and stuff,
contiguous 0..K-1); ``thing_ids[c]`` is the semantic id of thing class ``c`` and
``stuff_ids`` lists the semantic ids of stuff classes. In ``segments_info``, a thing's
``category_id`` is its contiguous thing id, a stuff's ``category_id`` is its semantic id
(Detectron2's convention, where ``stuff_dataset_id_to_contiguous_id`` covers all classes).

Guarantees of every fusion here: each pixel belongs to exactly one segment or is void (0);
segment ids are 1..n, unique and consecutive; ``area`` equals the segment's pixel count;
no segment has area 0.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.structures import Instances
from detectron2.utils.registry import Registry

__all__ = [
    "FUSION_REGISTRY",
    "build_fusion",
    "BaseFusion",
    "HeuristicFusion",
    "ProbabilisticFusion",
]

FUSION_REGISTRY = Registry("FUSION")
FUSION_REGISTRY.__doc__ = """
Registry for things/stuff fusion modules, which merge instance and semantic predictions
into a panoptic segmentation.

The registered object is called with ``cfg`` (through ``@configurable``) and the built
object is called as::

    panoptic_img, segments_info = fusion(instances, sem_seg_probs, thing_ids, stuff_ids)

with
    instances (Instances): image-sized predictions with ``pred_masks`` (N, H, W) bool or
        float probabilities in [0, 1], ``scores`` (N,), ``pred_classes`` (N,) contiguous
        thing ids.
    sem_seg_probs (Tensor): (K, H, W) softmax over all K semantic classes.
    thing_ids (list[int]): semantic id of each thing class (index = thing class).
    stuff_ids (list[int]): semantic ids of the stuff classes.
returning
    panoptic_img (Tensor): (H, W) int32, 0 = void, else the segment id.
    segments_info (list[dict]): one dict per segment with ``id``, ``isthing``,
        ``category_id``, ``area`` and, for things, ``score`` and ``instance_id`` (index
        into ``instances``).

A fusion whose ``uses_soft_masks`` attribute is True is given mask probabilities instead
of binary masks by the meta-architecture.
"""


def build_fusion(cfg: CfgNode, name: Optional[str] = None):
    """
    Build a fusion module from ``cfg.MODEL.SEG2.FUSION.NAME``.

    Args:
        cfg: a config with seg2's keys.
        name: registered name overriding ``MODEL.SEG2.FUSION.NAME``, so one trained model
            can be scored with each fusion without editing the config.

    Returns:
        the fusion object (see ``FUSION_REGISTRY.__doc__`` for its call signature).
    """
    name = name or cfg.MODEL.SEG2.FUSION.NAME
    return FUSION_REGISTRY.get(name)(cfg)


def _check_inputs(
    instances: Instances,
    sem_seg_probs: torch.Tensor,
    thing_ids: Sequence[int],
    stuff_ids: Sequence[int],
) -> None:
    """Fail with a message naming the field, rather than with an index error later."""
    if sem_seg_probs.dim() != 3:
        raise ValueError(
            f"fusion: sem_seg_probs must be (K, H, W), got shape {tuple(sem_seg_probs.shape)}"
        )
    k, h, w = sem_seg_probs.shape
    masks = instances.pred_masks
    if masks.dim() != 3 or tuple(masks.shape[1:]) != (h, w):
        raise ValueError(
            f"fusion: instances.pred_masks must be (N, {h}, {w}) like sem_seg_probs, "
            f"got shape {tuple(masks.shape)}"
        )
    bad = [i for i in list(thing_ids) + list(stuff_ids) if not 0 <= i < k]
    if bad:
        raise ValueError(f"fusion: thing_ids/stuff_ids {bad} are outside 0..{k - 1} (K={k})")
    if len(instances) and int(instances.pred_classes.max()) >= len(thing_ids):
        raise ValueError(
            f"fusion: instances.pred_classes has class {int(instances.pred_classes.max())} "
            f"but thing_ids has only {len(thing_ids)} entries"
        )


def _finalize(labels: torch.Tensor, candidates: List[Dict]) -> Tuple[torch.Tensor, List[Dict]]:
    """
    Renumber candidate segments to 1..n, dropping empty ones, and fill in ``area``.

    Args:
        labels: (H, W) int64, ``-1`` = void, else an index into ``candidates``.
        candidates: segment dicts without ``id``/``area``.

    Returns:
        (panoptic_img (H, W) int32, segments_info), see ``FUSION_REGISTRY.__doc__``.
    """
    panoptic = torch.zeros(labels.shape, dtype=torch.int32, device=labels.device)
    if not candidates:
        return panoptic, []
    # (shifted by one so void counts in bin 0: no boolean indexing, which is slow on CPU)
    areas = torch.bincount((labels + 1).flatten(), minlength=len(candidates) + 1)[1:].tolist()
    # Old candidate index -> new id; index len(candidates) stands for void (-1).
    new_ids = torch.zeros(len(candidates) + 1, dtype=torch.int32, device=labels.device)
    segments_info = []
    for idx, (cand, area) in enumerate(zip(candidates, areas)):
        if area == 0:
            continue
        seg_id = len(segments_info) + 1
        new_ids[idx] = seg_id
        segments_info.append({"id": seg_id, **cand, "area": int(area)})
    panoptic = new_ids[torch.where(labels >= 0, labels, len(candidates))]
    return panoptic, segments_info


def _stuff_candidates(
    labels: torch.Tensor,
    stuff_map: torch.Tensor,
    stuff_ids: Sequence[int],
    stuff_area_limit: int,
    candidates: List[Dict],
) -> None:
    """
    Paste stuff segments onto the void pixels of ``labels`` (in place).

    Args:
        labels: (H, W) int64 candidate index map, -1 = void; modified in place.
        stuff_map: (H, W) int64 semantic id proposed for each pixel (any id; only ids in
            ``stuff_ids`` are used).
        stuff_area_limit: stuff segments with fewer pixels become void.
        candidates: list the new stuff candidates are appended to.
    """
    free = labels < 0
    for sid in stuff_ids:
        mask = free & (stuff_map == sid)
        if int(mask.sum()) < max(stuff_area_limit, 1):
            continue
        labels[mask] = len(candidates)
        candidates.append({"isthing": False, "category_id": int(sid)})


class BaseFusion:
    """
    What the fusions share: the thresholds every rule applies (an instance score floor, an
    overlap limit, a smallest stuff segment) and how they are read from the config.
    Subclasses implement ``__call__`` (see ``FUSION_REGISTRY.__doc__``) and extend
    ``__init__``/``from_config`` with their own parameters.
    """

    # Whether the meta-architecture passes mask probabilities instead of binary masks.
    uses_soft_masks = False

    @configurable
    def __init__(
        self,
        *,
        instances_score_thresh: float = 0.5,
        overlap_thresh: float = 0.5,
        stuff_area_limit: int = 64,
    ):
        """
        Args:
            instances_score_thresh: instances scoring below this are not candidates.
            overlap_thresh: largest fraction of an instance's mask that may be lost to
                other segments before the instance is dropped.
            stuff_area_limit: smallest stuff segment (pixels) kept; smaller ones are void.
        """
        self.instances_score_thresh = instances_score_thresh
        self.overlap_thresh = overlap_thresh
        self.stuff_area_limit = stuff_area_limit

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        return {
            "instances_score_thresh": cfg.MODEL.SEG2.FUSION.INSTANCES_SCORE_THRESH,
            "overlap_thresh": cfg.MODEL.SEG2.FUSION.OVERLAP_THRESH,
            "stuff_area_limit": cfg.MODEL.SEG2.FUSION.STUFF_AREA_LIMIT,
        }

    def __call__(
        self,
        instances: Instances,
        sem_seg_probs: torch.Tensor,
        thing_ids: Sequence[int],
        stuff_ids: Sequence[int],
    ) -> Tuple[torch.Tensor, List[Dict]]:
        """See ``FUSION_REGISTRY.__doc__`` for arguments and return values."""
        raise NotImplementedError


@FUSION_REGISTRY.register()
class HeuristicFusion(BaseFusion):
    """
    Panoptic FPN's greedy fusion (panopticapi's
    ``combine_semantic_and_instance_predictions.py``), with thresholds from the config
    (``instances_score_thresh``: instances scoring below it are ignored; ``overlap_thresh``:
    largest fraction of an instance's mask that may already be claimed by higher-scored
    instances).

    Rule:
      1. Instances with ``score < instances_score_thresh`` are dropped; the rest are visited
         by decreasing score. Soft masks are binarised at 0.5.
      2. An instance whose fraction of already-claimed pixels exceeds ``overlap_thresh`` is
         dropped; otherwise its unclaimed pixels become its segment.
      3. Each still unclaimed pixel takes the semantic argmax over *all* classes. If that
         argmax is a thing class the pixel stays void (Detectron2's behaviour: the semantic
         branch saw an object the detector missed, and inventing stuff there would be a
         false positive). Pixels of each stuff class form one segment, kept only if its area
         is at least ``stuff_area_limit``; smaller ones become void.
    """

    def __call__(
        self,
        instances: Instances,
        sem_seg_probs: torch.Tensor,
        thing_ids: Sequence[int],
        stuff_ids: Sequence[int],
    ) -> Tuple[torch.Tensor, List[Dict]]:
        """See ``FUSION_REGISTRY.__doc__`` for arguments and return values."""
        _check_inputs(instances, sem_seg_probs, thing_ids, stuff_ids)
        device = sem_seg_probs.device
        labels = torch.full(sem_seg_probs.shape[1:], -1, dtype=torch.long, device=device)
        candidates: List[Dict] = []

        masks = instances.pred_masks.to(device)
        masks = masks if masks.dtype == torch.bool else masks >= 0.5
        scores = instances.scores.tolist()
        classes = instances.pred_classes.tolist()
        taken = torch.zeros_like(labels, dtype=torch.bool)  # == (labels >= 0), kept up to date
        for i in sorted(range(len(instances)), key=lambda j: -scores[j]):
            if scores[i] < self.instances_score_thresh:
                break
            mask = masks[i]
            area = int(mask.sum())
            if area == 0:
                continue
            overlap = mask & taken
            claimed = int(overlap.sum())
            if claimed / area > self.overlap_thresh:
                continue
            new = mask ^ overlap  # mask & ~taken
            labels.masked_fill_(new, len(candidates))  # not labels[new] =: slow on CPU
            taken |= new
            candidates.append(
                {
                    "isthing": True,
                    "category_id": int(classes[i]),
                    "score": float(scores[i]),
                    "instance_id": i,
                }
            )

        semantic = sem_seg_probs.max(dim=0).indices  # = argmax(0), which is slower on CPU
        _stuff_candidates(labels, semantic, stuff_ids, self.stuff_area_limit, candidates)
        return _finalize(labels, candidates)


@FUSION_REGISTRY.register()
class ProbabilisticFusion(BaseFusion):
    """
    Fusion by pooling the detector's and the semantic branch's per-pixel class posteriors
    (a linear opinion pool), so the semantic probabilities arbitrate between overlapping
    instances and between a weak instance and stuff.

    Rule, per pixel p:
      1. Detector posterior. Instance i (score s_i >= ``instances_score_thresh``, mask
         probability m_i(p)) claims p with q_i(p) = s_i * m_i(p). Summing q over the
         instances of thing class t gives Q_t(p); if sum_t Q_t(p) > 1 all Q are divided by
         that sum. The remainder r(p) = 1 - sum_t Q_t(p) is the mass the detector did not
         claim: "no detected object here" says nothing about which class the pixel is (a
         missed object, or stuff), so the detector defers r to the semantic branch, split
         among *all* K classes in its proportions: P_det(c|p) = Q(c|p) + r(p) * P_sem(c|p).
      2. Pooled posterior P(c|p) = (1 - w) * P_det(c|p) + w * P_sem(c|p) over all K classes,
         w = ``semantic_weight``. The pixel takes c* = argmax_c P(c|p).
      3. If c* is a thing class, the pixel goes to the instance of that class with the
         largest q_i(p); if no instance of that class covers p (q = 0), it is void. If c* is
         stuff, it goes to stuff c*. Where no instance covers p, P = P_sem, so the pixel
         takes the semantic argmax exactly as in the heuristic: a pixel the semantic branch
         calls a thing, where nothing was detected, is void (an object the detector missed),
         never a stuff segment.
      4. An instance that lost more than ``overlap_thresh`` of its own binary mask
         (m_i >= 0.5) to other segments is dropped and its pixels become void (small
         leftovers of a beaten instance are not trustworthy segments). Stuff segments
         smaller than ``stuff_area_limit`` become void.

    With w = 0.5, a confident instance (q = 0.9) keeps a pixel that the semantic branch
    calls stuff with probability 0.6, a weak one (q = 0.3) loses it to stuff at 0.9, and a
    weak one (q = 0.4) wins where the semantic branch agrees on its class (0.8).
    """

    uses_soft_masks = True

    @configurable
    def __init__(
        self, *, instances_score_thresh: float = 0.1, semantic_weight: float = 0.5, **kwargs
    ):
        """
        Args:
            instances_score_thresh: instances scoring below this are not candidates. Lower
                than the heuristic's because the pooling already discounts weak instances;
                it mainly bounds the cost.
            semantic_weight: weight w of the semantic posterior in the pool, in [0, 1].
            kwargs: ``overlap_thresh`` (largest fraction of an instance's binary mask it may
                lose to other segments before it is dropped) and ``stuff_area_limit``, see
                :class:`BaseFusion`.
        """
        if not 0.0 <= semantic_weight <= 1.0:
            raise ValueError(
                f"ProbabilisticFusion: MODEL.SEG2.FUSION.SEMANTIC_WEIGHT must be in [0, 1], "
                f"got {semantic_weight}"
            )
        super().__init__(instances_score_thresh=instances_score_thresh, **kwargs)
        self.semantic_weight = semantic_weight

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        ret = super().from_config(cfg)
        ret["instances_score_thresh"] = cfg.MODEL.SEG2.FUSION.PROB_SCORE_THRESH
        ret["semantic_weight"] = cfg.MODEL.SEG2.FUSION.SEMANTIC_WEIGHT
        return ret

    def __call__(
        self,
        instances: Instances,
        sem_seg_probs: torch.Tensor,
        thing_ids: Sequence[int],
        stuff_ids: Sequence[int],
    ) -> Tuple[torch.Tensor, List[Dict]]:
        """See ``FUSION_REGISTRY.__doc__`` for arguments and return values."""
        _check_inputs(instances, sem_seg_probs, thing_ids, stuff_ids)
        device = sem_seg_probs.device
        probs = sem_seg_probs.float()
        k, h, w = probs.shape
        num_things = len(thing_ids)
        thing_sem = torch.as_tensor(list(thing_ids), dtype=torch.long, device=device)

        keep = (instances.scores >= self.instances_score_thresh).nonzero().flatten().tolist()
        masks = instances.pred_masks.to(device)
        scores = instances.scores.tolist()
        classes = instances.pred_classes.tolist()

        # Per thing class: summed claim Q_t, and the best instance (max q) with its q.
        claim_sum = probs.new_zeros((num_things, h, w))
        best_q = probs.new_zeros((num_things, h, w))
        best_inst = torch.full((num_things, h, w), -1, dtype=torch.long, device=device)
        mask_areas = {}
        for i in keep:
            soft = masks[i].float()
            mask_areas[i] = int((soft >= 0.5).sum())
            if mask_areas[i] == 0:
                continue
            q = scores[i] * soft
            c = classes[i]
            claim_sum[c] += q
            better = q > best_q[c]
            best_q[c] = torch.where(better, q, best_q[c])
            best_inst[c] = torch.where(better, torch.full_like(best_inst[c], i), best_inst[c])

        # 1. detector posterior over all K semantic classes
        total = claim_sum.sum(dim=0)
        claim_sum = claim_sum / total.clamp(min=1.0)
        # (the unclaimed remainder is deferred to the semantic branch, over all classes)
        p_det = (1.0 - claim_sum.sum(dim=0)) * probs
        p_det.index_add_(0, thing_sem, claim_sum)
        # 2. pooled posterior
        pooled = (1.0 - self.semantic_weight) * p_det + self.semantic_weight * probs
        winner = pooled.argmax(dim=0)

        # 3. thing pixels go to the best instance of the winning class
        sem_to_thing = torch.full((k,), -1, dtype=torch.long, device=device)
        sem_to_thing[thing_sem] = torch.arange(num_things, device=device)
        win_thing = sem_to_thing[winner]
        inst_map = torch.full((h, w), -1, dtype=torch.long, device=device)
        if num_things:
            gathered = best_inst.gather(0, win_thing.clamp(min=0)[None])[0]
            inst_map = torch.where(win_thing >= 0, gathered, inst_map)

        # 4. drop instances that lost too much of their own mask, then paste in score order
        labels = torch.full((h, w), -1, dtype=torch.long, device=device)
        candidates: List[Dict] = []
        for i in sorted(mask_areas, key=lambda j: -scores[j]):
            if mask_areas[i] == 0:
                continue
            won = inst_map == i
            kept = int((won & (masks[i].float() >= 0.5)).sum())
            if 1.0 - kept / mask_areas[i] > self.overlap_thresh:
                continue
            labels[won] = len(candidates)
            candidates.append(
                {
                    "isthing": True,
                    "category_id": int(classes[i]),
                    "score": float(scores[i]),
                    "instance_id": i,
                }
            )
        # Stuff only where the pool chose stuff: pixels of dropped instances stay void.
        stuff_map = torch.where(win_thing >= 0, torch.full_like(winner, -1), winner)
        _stuff_candidates(labels, stuff_map, stuff_ids, self.stuff_area_limit, candidates)
        return _finalize(labels, candidates)
