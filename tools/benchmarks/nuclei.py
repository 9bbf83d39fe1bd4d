"""The real-data nuclei example: U-Net with and without its boundary weights.

Both variants (``configs/Nuclei-SemanticSegmentation/unet_nuclei.yaml`` and
``unet_weighted_nuclei.yaml``) are trained with the same budget and seed through
:class:`seg2.engine.Seg2Trainer` on random crops of the top half of stardist's nuclei
image (``nuclei_train_sem``, see :mod:`seg2.data.real`) and evaluated on the whole bottom
half (``nuclei_val_sem``) with seg2's semantic evaluator (Dice of the nucleus class, mIoU)
plus an object-level score, :func:`separation_metrics`, of whether touching nuclei come
out as separate objects.

Outputs in the output folder: ``results.json``, ``results.md`` (the table) and
``nuclei_example.png`` (image | ground truth | prediction without | with weights, each
object in its own colour), plus each run's ``OUTPUT_DIR`` (``model_final.pth``, logs).
"""

import json
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, inference_on_dataset
from detectron2.utils.env import seed_all_rng
from PIL import Image
from scipy import ndimage

from seg2.data.real import register_nuclei
from seg2.engine import Seg2Trainer
from seg2.evaluation.boundary import instance_separation, separation_summary
from seg2.evaluation.build import build_evaluators

from .common import get_seg2_cfg

__all__ = [
    "VARIANTS",
    "separation_metrics",
    "nuclei_cfg",
    "evaluate_nuclei",
    "train_variant",
    "format_results_table",
    "draw_nuclei_figure",
    "run_nuclei_example",
]

logger = logging.getLogger(__name__)

# (label, config under configs/) of the two variants, baseline first.
VARIANTS: List[Tuple[str, str]] = [
    ("U-Net, CE", "Nuclei-SemanticSegmentation/unet_nuclei.yaml"),
    ("U-Net, weighted CE", "Nuclei-SemanticSegmentation/unet_weighted_nuclei.yaml"),
]
_NUCLEUS = 1  # contiguous id of the nucleus class
_EIGHT = np.ones((3, 3), dtype=bool)


def separation_metrics(pred_foreground: np.ndarray, gt_instances: np.ndarray) -> Dict[str, float]:
    """Object-level scores of a binary nucleus prediction against instance ground truth:
    :func:`seg2.evaluation.boundary.instance_separation` with one class (the definitions
    live there, shared with the semantic-heads benchmark and ``Seg2BoundaryEvaluator``).

    Returns:
        ``gt_nuclei``, ``pred_components``, ``touching``, ``touching_separated``,
        ``touching_separated_pct``, ``separated``, ``separated_pct`` and ``f1_iou50``.
    """
    pred_foreground = np.asarray(pred_foreground, dtype=bool)
    gt_instances = np.asarray(gt_instances)
    ids = np.unique(gt_instances[gt_instances > 0])
    counts = instance_separation(
        pred_foreground.astype(np.int64), gt_instances, {int(k): 1 for k in ids}
    )
    m = separation_summary(counts)
    return OrderedDict(
        gt_nuclei=counts["instances"],
        pred_components=counts["pred_components"],
        touching=counts["touching"],
        touching_separated=counts["touching_separated"],
        touching_separated_pct=m["touching_separated_pct"],
        separated=counts["separated"],
        separated_pct=m["separated_pct"],
        f1_iou50=100.0
        * 2
        * counts["matches"]
        / max(counts["pred_components"] + counts["instances"], 1),
    )


class _Predictions(DatasetEvaluator):
    """Keeps each image's argmax labels, so one inference pass serves every metric."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.labels: Dict[str, np.ndarray] = {}

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for inp, out in zip(inputs, outputs):
            self.labels[inp["file_name"]] = out["sem_seg"].argmax(dim=0).cpu().numpy()

    def evaluate(self) -> Dict:
        return {}


def nuclei_cfg(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """A nuclei config (path relative to ``configs/``) with ``KEY VALUE`` overrides."""
    cfg = get_seg2_cfg(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def evaluate_nuclei(
    cfg: CfgNode, model: torch.nn.Module, dataset_name: Optional[str] = None
) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """Semantic metrics (seg2's evaluator) and :func:`separation_metrics` on a nuclei split.

    Args:
        cfg: the run's config.
        model: a trained ``Seg2SemanticSegmentor``.
        dataset_name: default ``cfg.DATASETS.TEST[0]``; its metadata's ``instances_file``
            holds the instance ground truth (:func:`seg2.data.real.register_nuclei`).

    Returns:
        ``({"sem_seg": {...}, "separation": {...}}, {file_name: (H, W) labels})``.
    """
    name = dataset_name or cfg.DATASETS.TEST[0]
    records = DatasetCatalog.get(name)
    if len(records) != 1:
        raise ValueError(f"evaluate_nuclei: '{name}' must hold one image, has {len(records)}")
    collector = _Predictions()
    evaluators = DatasetEvaluators(
        [build_evaluators(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference", name)), collector]
    )
    results = dict(
        inference_on_dataset(model, Seg2Trainer.build_test_loader(cfg, name), evaluators)
    )
    gt = np.load(MetadataCatalog.get(name).instances_file)
    labels = collector.labels[records[0]["file_name"]]
    results["separation"] = separation_metrics(labels == _NUCLEUS, gt)
    return results, collector.labels


def train_variant(
    config_file: str, output_dir: str, opts: Sequence[str] = ()
) -> Tuple[CfgNode, torch.nn.Module, float]:
    """Train one variant from its seed; returns (cfg, model in eval mode, train seconds)."""
    cfg = nuclei_cfg(config_file, list(opts) + ["OUTPUT_DIR", output_dir])
    # The benchmark evaluates itself (one pass for all metrics), not the trainer's hook.
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    os.makedirs(output_dir, exist_ok=True)
    seed_all_rng(cfg.SEED)
    trainer = Seg2Trainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model = trainer.model.eval()
    return cfg, model, seconds


def format_results_table(results: Dict[str, Dict]) -> str:
    """Markdown table, one row per variant."""
    rows = [
        "| variant | Dice nucleus | mIoU | touching nuclei separated | all nuclei separated "
        "| predicted objects / GT nuclei | object F1 (IoU>0.5) | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        sem, sep = r["sem_seg"], r["separation"]
        rows.append(
            f"| {label} | {sem['Dice-nucleus']:.1f} | {sem['mIoU']:.1f} "
            f"| {sep['touching_separated']}/{sep['touching']} "
            f"({sep['touching_separated_pct']:.0f}%) "
            f"| {sep['separated']}/{sep['gt_nuclei']} ({sep['separated_pct']:.0f}%) "
            f"| {sep['pred_components']} / {sep['gt_nuclei']} | {sep['f1_iou50']:.1f} "
            f"| {r['train_seconds']:.0f} s |"
        )
    return "\n".join(rows)


def _colour_labels(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W) int labels, 0 = background -> (H, W, 3) uint8, each label its own colour."""
    rng = np.random.RandomState(seed)
    lut = rng.randint(60, 256, size=(int(labels.max()) + 1, 3)).astype(np.uint8)
    lut[0] = 0
    return lut[labels]


def _caption(panel: np.ndarray, text: str) -> np.ndarray:
    import cv2

    strip = np.full((22, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def draw_nuclei_figure(
    image: np.ndarray, gt_instances: np.ndarray, predictions: Dict[str, np.ndarray]
) -> np.ndarray:
    """A 2-column grid: image | ground truth, then one panel per prediction, where each
    8-connected predicted object has its own colour (merged nuclei share one).

    Args:
        image: (H, W, 3) uint8.
        gt_instances: (H, W) int instance ids.
        predictions: caption -> (H, W) bool predicted foreground.

    Returns:
        (H', W', 3) uint8.
    """
    gt_ids = np.unique(gt_instances, return_inverse=True)[1].reshape(gt_instances.shape)
    panels = [
        _caption(image, "image (val half)"),
        _caption(_colour_labels(gt_ids), f"ground truth: {gt_ids.max()} nuclei"),
    ]
    for caption, fg in predictions.items():
        comps, n = ndimage.label(fg, structure=_EIGHT)
        panels.append(_caption(_colour_labels(comps, seed=1), f"{caption}: {n} objects"))
    if len(panels) % 2:
        panels.append(np.full_like(panels[0], 255))
    sep = np.full((panels[0].shape[0], 6, 3), 255, dtype=np.uint8)
    rows = [
        np.concatenate([panels[i], sep, panels[i + 1]], axis=1) for i in range(0, len(panels), 2)
    ]
    gap = np.full((6, rows[0].shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([x for r in rows for x in (r, gap)][:-1], axis=0)


def run_nuclei_example(
    output_dir: str,
    max_iter: Optional[int] = None,
    cache_dir: Optional[str] = None,
    opts: Sequence[str] = (),
    variants: Sequence[Tuple[str, str]] = tuple(VARIANTS),
) -> Dict[str, Dict]:
    """Train and evaluate every variant with the same budget; write the results.

    Args:
        output_dir: where ``results.json``, ``results.md``, ``nuclei_example.png`` and
            one sub-folder per run go.
        max_iter: overrides ``SOLVER.MAX_ITER`` of every variant (the LR step is kept at
            the same fraction of the schedule); None keeps the configs' budget.
        cache_dir: the nuclei cache (default ``datasets/cache/nuclei``).
        opts: ``KEY VALUE`` overrides applied to every variant.
        variants: (label, config relative to ``configs/``) pairs.

    Returns:
        label -> ``{"config", "train_seconds", "sem_seg": {...}, "separation": {...}}``.
    """
    register_nuclei(cache_dir)
    os.makedirs(output_dir, exist_ok=True)
    results: Dict[str, Dict] = OrderedDict()
    predictions: Dict[str, np.ndarray] = OrderedDict()
    for label, config_file in variants:
        run_opts = list(opts)
        if max_iter is not None:
            base = nuclei_cfg(config_file)
            steps = tuple(
                int(round(s * max_iter / base.SOLVER.MAX_ITER)) for s in base.SOLVER.STEPS
            )
            run_opts += ["SOLVER.MAX_ITER", max_iter, "SOLVER.STEPS", steps]
        run_dir = os.path.join(output_dir, os.path.splitext(os.path.basename(config_file))[0])
        cfg, model, seconds = train_variant(config_file, run_dir, run_opts)
        test_name = nuclei_cfg(config_file).DATASETS.TEST[0]
        with torch.no_grad():
            metrics, labels = evaluate_nuclei(cfg, model, test_name)
        results[label] = OrderedDict(
            config=config_file,
            max_iter=cfg.SOLVER.MAX_ITER,
            ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
            train_seconds=seconds,
            sem_seg=metrics["sem_seg"],
            separation=metrics["separation"],
        )
        predictions[label] = next(iter(labels.values())) == _NUCLEUS
        logger.info(f"{label}: {json.dumps(results[label]['separation'])}")

    test_name = nuclei_cfg(variants[0][1]).DATASETS.TEST[0]
    record = DatasetCatalog.get(test_name)[0]
    image = np.asarray(Image.open(record["file_name"]).convert("RGB"))
    gt = np.load(MetadataCatalog.get(test_name).instances_file)
    figure = draw_nuclei_figure(image, gt, predictions)
    Image.fromarray(figure).save(os.path.join(output_dir, "nuclei_example.png"))
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    table = format_results_table(results)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    logger.info("Nuclei example:\n" + table)
    return results
