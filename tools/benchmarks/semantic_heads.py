"""Semantic heads trained under one budget and compared: accuracy, boundaries, touching
objects, speed and memory.

Every variant is a config in ``configs/Synthetic-SemanticSegmentation/`` (ResNet-18 from
scratch, except the sliding-window baseline, whose small per-window CNN is the point of the
comparison), trained with :class:`~seg2.engine.Seg2Trainer` on the synthetic train split for
the same number of iterations at the same batch size, and scored on the val split.

Metrics (all computed on the val images processed):

* ``mIoU``, ``pACC``: :class:`~seg2.evaluation.semantic.Seg2SemSegEvaluator` (Detectron2's
  conventions), in percent.
* ``BF``: boundary F-score (Csurka et al., BMVC 2013; the F measure of the DAVIS
  benchmark), tolerance 2 px, in percent. For each image and each class ``c`` present in the
  ground truth or the prediction, the boundary of a binary mask is its pixels with a
  4-neighbour outside it (the image border is not a boundary); boundary pixels within one
  pixel (8-neighbourhood) of an ignored ground-truth pixel are dropped from both sides.
  Precision is the fraction of predicted boundary pixels within Euclidean distance 2 of a
  ground-truth boundary pixel, recall the converse, ``F_c = 2PR / (P + R)`` (0 if exactly
  one side has no boundary; skipped if neither has). ``BF`` = mean over classes of the
  mean of ``F_c`` over images -- the per-class averaging of Csurka et al.
* ``touching``: "separated / total" over ground-truth thing instances (not crowd) that are
  4-adjacent to another instance of the same class (the data's touching and overlapping
  pairs). A semantic map cannot label instances, so separation can only show as a gap:
  an instance is *recovered* when one 4-connected component of its class in the predicted
  map covers at least half of it (its *dominant* component), and *separated* when it is
  recovered and its dominant component is not the dominant component of any touching
  neighbour. The ground-truth semantic map itself scores 0 (touching instances merge).
* ``s/iter``: median wall time of a training iteration (data loading included, no worker
  processes), ``ms/img``: median wall time of one inference forward pass (batch 1), both
  after warm-up; medians because the CPU may be shared.
* ``peak MB``: on CUDA, ``torch.cuda.max_memory_allocated`` over training and evaluation;
  on CPU, the growth of the process's peak resident set size (``ru_maxrss``) from just
  before the model is built to the end of evaluation. Each variant runs in a fresh process
  (``isolate=True``) so that this is its own peak; in-process runs only see growth above
  the earlier variants' peak.
"""

import hashlib
import json
import logging
import multiprocessing as mp
import os
import resource
import statistics
import time
import traceback
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from PIL import Image
from scipy import ndimage

__all__ = [
    "VARIANTS",
    "DEFAULT_VARIANTS",
    "class_boundary",
    "BoundaryFScore",
    "touching_separation",
    "benchmark_cfg",
    "run_variant",
    "run_heads_benchmark",
    "format_heads_table",
]

logger = logging.getLogger(__name__)

# variant -> config under configs/
VARIANTS: "OrderedDict[str, str]" = OrderedDict(
    (name, f"Synthetic-SemanticSegmentation/{file}")
    for name, file in [
        ("fcn32s", "fcn32s_R_18_synthetic.yaml"),
        ("fcn16s", "fcn16s_R_18_synthetic.yaml"),
        ("fcn8s", "fcn8s_R_18_synthetic.yaml"),
        ("unet", "unet_R_18_synthetic.yaml"),
        ("unet_weighted", "unet_weighted_R_18_synthetic.yaml"),
        ("deconvnet", "deconvnet_R_18_synthetic.yaml"),
        ("sliding_window", "sliding_window_synthetic.yaml"),
        ("unet_classic", "unet_classic_synthetic.yaml"),
    ]
)
# Same ResNet-18 backbone (or, for the baseline, none); unet_classic has its own encoder.
DEFAULT_VARIANTS: Tuple[str, ...] = tuple(v for v in VARIANTS if v != "unet_classic")

BOUNDARY_TOLERANCE = 2


# ----------------------------------------------------------------------------- metrics


def class_boundary(mask: np.ndarray) -> np.ndarray:
    """
    Inner boundary of a binary mask: its pixels with at least one 4-neighbour outside it.
    The image border is not a boundary.

    Args:
        mask: (H, W) bool.

    Returns:
        (H, W) bool.
    """
    mask = np.asarray(mask, dtype=bool)
    inner = ndimage.binary_erosion(
        mask, structure=ndimage.generate_binary_structure(2, 1), border_value=1
    )
    return mask & ~inner


def _matched(src: np.ndarray, dst: np.ndarray, tolerance: float) -> int:
    """Number of ``src`` pixels within ``tolerance`` (Euclidean) of a ``dst`` pixel."""
    if not src.any() or not dst.any():
        return 0
    dist = ndimage.distance_transform_edt(~dst)
    return int((dist[src] <= tolerance).sum())


class BoundaryFScore:
    """Accumulates the per-class, per-image boundary F-score described in the module doc."""

    def __init__(
        self, num_classes: int, ignore_label: int = 255, tolerance: float = BOUNDARY_TOLERANCE
    ):
        """
        Args:
            num_classes: K.
            ignore_label: ground-truth label of ignored pixels.
            tolerance: matching distance in pixels.
        """
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.tolerance = tolerance
        self.scores: Dict[int, List[float]] = defaultdict(list)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> Dict[int, float]:
        """
        Args:
            pred: (H, W) predicted labels in [0, K).
            gt: (H, W) ground-truth labels in [0, K) or ``ignore_label``.

        Returns:
            ``{class: F_c}`` for this image (classes with a boundary on either side).
        """
        if pred.shape != gt.shape:
            raise ValueError(
                f"BoundaryFScore: prediction {pred.shape} and ground truth {gt.shape} differ"
            )
        ignored = gt == self.ignore_label
        keep = ~ndimage.binary_dilation(ignored, structure=np.ones((3, 3), bool))
        image_scores = {}
        for c in np.union1d(np.unique(pred), np.unique(gt[~ignored])):
            c = int(c)
            b_pred = class_boundary(pred == c) & keep
            b_gt = class_boundary(gt == c) & keep
            n_pred, n_gt = int(b_pred.sum()), int(b_gt.sum())
            if n_pred == 0 and n_gt == 0:
                continue
            if n_pred == 0 or n_gt == 0:
                f = 0.0
            else:
                p = _matched(b_pred, b_gt, self.tolerance) / n_pred
                r = _matched(b_gt, b_pred, self.tolerance) / n_gt
                f = 2 * p * r / (p + r) if p + r > 0 else 0.0
            image_scores[c] = f
            self.scores[c].append(f)
        return image_scores

    def evaluate(self) -> Dict[str, float]:
        """``{"BF": mean over classes of the mean F_c over images, "BF-<c>": ...}`` in percent."""
        per_class = {c: 100.0 * float(np.mean(v)) for c, v in sorted(self.scores.items())}
        out = {"BF": float(np.mean(list(per_class.values()))) if per_class else float("nan")}
        out.update({f"BF-{c}": v for c, v in per_class.items()})
        return out


def touching_separation(
    pred: np.ndarray, pan_ids: np.ndarray, segments: Sequence[Dict]
) -> Tuple[int, int]:
    """
    Touching same-class instances, and how many of them the predicted semantic map
    separates (see the module doc).

    Args:
        pred: (H, W) predicted labels.
        pan_ids: (H, W) panoptic segment ids (0 = void).
        segments: ``segments_info`` with ``id``, contiguous ``category_id``, ``isthing`` and
            optional ``iscrowd``.

    Returns:
        (number of touching instances, number of them separated).
    """
    things = [s for s in segments if s.get("isthing") and not s.get("iscrowd", 0)]
    masks = {s["id"]: pan_ids == s["id"] for s in things}
    cross = ndimage.generate_binary_structure(2, 1)
    neighbours: Dict[int, List[int]] = {}
    for s in things:
        grown = ndimage.binary_dilation(masks[s["id"]], structure=cross)
        near = [
            t["id"]
            for t in things
            if t["id"] != s["id"]
            and t["category_id"] == s["category_id"]
            and (grown & masks[t["id"]]).any()
        ]
        if near:
            neighbours[s["id"]] = near
    if not neighbours:
        return 0, 0
    components: Dict[int, np.ndarray] = {}
    dominant: Dict[int, Optional[int]] = {}
    for s in things:
        c = s["category_id"]
        if c not in components:
            components[c] = ndimage.label(pred == c, structure=cross)[0]
        labels = components[c][masks[s["id"]]]
        counts = np.bincount(labels[labels > 0])
        if counts.size and counts.max() * 2 >= labels.size:
            dominant[s["id"]] = int(counts.argmax())
        else:
            dominant[s["id"]] = None
    separated = sum(
        1
        for i, near in neighbours.items()
        if dominant[i] is not None and all(dominant[j] != dominant[i] for j in near)
    )
    return len(neighbours), separated


# ---------------------------------------------------------------------------- training


def _register_data(data_root: Optional[str]) -> str:
    """Register the synthetic splits (prefix returned); idempotent."""
    from seg2.data.datasets import register_synthetic
    from .common import REPO_ROOT

    if data_root is None:
        base = os.getenv("DETECTRON2_DATASETS", str(REPO_ROOT / "datasets"))
        data_root = os.path.join(base, "synthetic")
    data_root = os.path.abspath(data_root)
    ann = os.path.join(data_root, "annotations", "panoptic_val.json")
    if not os.path.isfile(ann):
        raise FileNotFoundError(
            f"{ann}: synthetic data not found; run datasets/prepare_synthetic.py --output "
            f"{data_root} (or pass data_root)"
        )
    prefix = "seg2bench_" + hashlib.md5(data_root.encode()).hexdigest()[:8]
    if f"{prefix}_train_sem" not in DatasetCatalog.list():
        register_synthetic(data_root, prefix=prefix)
    return prefix


def benchmark_cfg(
    variant: str,
    output_dir: str,
    iters: int,
    prefix: str,
    ims_per_batch: Optional[int] = None,
    seed: int = 0,
    opts: Sequence = (),
) -> CfgNode:
    """
    The variant's config with the benchmark's budget: ``iters`` iterations (warm-up and LR
    steps scaled from the config's schedule), the registered synthetic data, no periodic
    evaluation, no data-loader workers.

    Args:
        variant: a key of :data:`VARIANTS`.
        output_dir: this variant's output folder.
        iters: training iterations.
        prefix: name prefix of the registered synthetic splits.
        ims_per_batch: overrides ``SOLVER.IMS_PER_BATCH``.
        seed: ``SEED``.
        opts: extra ``KEY VALUE`` overrides, applied last.

    Returns:
        a frozen config.
    """
    from .common import get_seg2_cfg

    if variant not in VARIANTS:
        raise KeyError(f"unknown benchmark variant {variant!r}; choose from {list(VARIANTS)}")
    cfg = get_seg2_cfg(VARIANTS[variant])
    scale = iters / max(cfg.SOLVER.MAX_ITER, 1)
    cfg.SOLVER.STEPS = tuple(
        max(int(s * scale), 1) for s in cfg.SOLVER.STEPS if int(s * scale) < iters
    )
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(iters // 10, 1))
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.CHECKPOINT_PERIOD = iters + 1  # only the final checkpoint
    if ims_per_batch:
        cfg.SOLVER.IMS_PER_BATCH = ims_per_batch
    cfg.DATASETS.TRAIN = (f"{prefix}_train_sem",)
    cfg.DATASETS.TEST = ()  # evaluated by run_variant, with timing
    cfg.TEST.EVAL_PERIOD = 0
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = seed
    cfg.OUTPUT_DIR = output_dir
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


class _StepTimer(HookBase):
    """Wall time of each training iteration (CUDA-synchronised)."""

    def __init__(self):
        self.times: List[float] = []

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def before_step(self):
        self._sync()
        self._start = time.perf_counter()

    def after_step(self):
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def _median_after_warmup(times: List[float], warmup: int = 2) -> float:
    return (
        statistics.median(times[warmup:] if len(times) > warmup else times)
        if times
        else float("nan")
    )


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_variant(
    variant: str,
    output_dir: str,
    iters: int,
    data_root: Optional[str] = None,
    *,
    ims_per_batch: Optional[int] = None,
    seed: int = 0,
    eval_images: Optional[int] = None,
    opts: Sequence = (),
) -> Dict:
    """
    Train one variant in this process and evaluate it (see the module doc for the metrics).

    Args:
        variant: a key of :data:`VARIANTS`.
        output_dir: the benchmark's folder; the variant writes to ``output_dir/<variant>``.
        iters: training iterations.
        data_root: synthetic data folder (default ``$DETECTRON2_DATASETS/synthetic``, else
            ``datasets/synthetic``).
        ims_per_batch: overrides the config's batch size.
        seed: seeds weights, data order and sampled pixels.
        eval_images: evaluate on the first N val images only (None = all).
        opts: extra config overrides.

    Returns:
        one result row (dict), also written to ``output_dir/<variant>/result.json``.
    """
    from seg2.data.dataset_mapper import Seg2DatasetMapper
    from seg2.io import read_panoptic_png
    from seg2.engine.trainer import Seg2Trainer
    from seg2.evaluation.semantic import Seg2SemSegEvaluator
    from seg2.modeling import sliding_window  # noqa: F401  (registers SlidingWindowSegmentor)

    torch.set_num_threads(2)
    prefix = _register_data(data_root)
    out = os.path.join(output_dir, variant)
    cfg = benchmark_cfg(variant, out, iters, prefix, ims_per_batch, seed, opts)
    os.makedirs(out, exist_ok=True)
    on_cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_start = _max_rss_mb()

    seed_all_rng(seed)
    trainer = Seg2Trainer(cfg)
    timer = _StepTimer()
    trainer.register_hooks([timer])
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    model = trainer.model
    model.eval()

    val = f"{prefix}_val_sem"
    records = {d["file_name"]: d for d in DatasetCatalog.get(val)}
    meta = MetadataCatalog.get(val)
    evaluator = Seg2SemSegEvaluator(val, distributed=False, output_dir=out)
    evaluator.reset()
    bf = BoundaryFScore(len(meta.stuff_classes), meta.ignore_label)
    touching = separated = 0
    infer_times: List[float] = []
    loader = build_detection_test_loader(cfg, val, mapper=Seg2DatasetMapper(cfg, False))
    with torch.no_grad():
        for i, inputs in enumerate(loader):
            if eval_images is not None and i >= eval_images:
                break
            if on_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outputs = model(inputs)
            if on_cuda:
                torch.cuda.synchronize()
            infer_times.append(time.perf_counter() - t0)
            evaluator.process(inputs, outputs)
            for inp, output in zip(inputs, outputs):
                rec = records[inp["file_name"]]
                pred = output["sem_seg"].argmax(dim=0).cpu().numpy()
                gt = np.asarray(Image.open(rec["sem_seg_file_name"]))
                bf.update(pred, gt)
                pan = read_panoptic_png(rec["pan_seg_file_name"])
                t, s = touching_separation(pred, pan, rec["segments_info"])
                touching, separated = touching + t, separated + s
    sem = evaluator.evaluate()["sem_seg"]
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else _max_rss_mb() - rss_start

    row = OrderedDict(
        variant=variant,
        config=VARIANTS[variant],
        iters=iters,
        ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
        mIoU=sem["mIoU"],
        pACC=sem["pACC"],
        BF=bf.evaluate()["BF"],
        touching_total=touching,
        touching_separated=separated,
        s_per_iter=_median_after_warmup(timer.times),
        ms_per_image=1000 * _median_after_warmup(infer_times, warmup=1),
        peak_mb=peak,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        train_s=train_s,
        eval_images=len(infer_times),
        device="cuda" if on_cuda else f"cpu ({torch.get_num_threads()} threads)",
    )
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(row, f, indent=2)
    return row


def _variant_worker(kwargs: Dict, result_path: str) -> None:
    """Entry point of an isolated variant process."""
    from detectron2.utils.logger import setup_logger

    setup_logger(name="detectron2")
    setup_logger(name="seg2")
    try:
        run_variant(**kwargs)
    except BaseException:
        with open(result_path + ".error", "w") as f:
            f.write(traceback.format_exc())
        raise


def run_heads_benchmark(
    output_dir: str,
    iters: int,
    variants: Optional[Sequence[str]] = None,
    data_root: Optional[str] = None,
    *,
    ims_per_batch: Optional[int] = None,
    seed: int = 0,
    eval_images: Optional[int] = None,
    isolate: bool = True,
    opts: Sequence = (),
) -> List[Dict]:
    """
    Train and evaluate each variant under the same budget; print the table and write
    ``heads_benchmark.json`` and ``heads_benchmark.md`` to ``output_dir``.

    Args:
        output_dir: results folder (one subfolder per variant).
        iters: training iterations per variant.
        variants: keys of :data:`VARIANTS`; default :data:`DEFAULT_VARIANTS`.
        data_root: synthetic data folder (see :func:`run_variant`).
        ims_per_batch: overrides every config's batch size.
        seed: same seed for every variant.
        eval_images: evaluate on the first N val images only (None = all).
        isolate: run each variant in a fresh spawned process (own peak memory, no state
            shared between variants).
        opts: extra config overrides for every variant.

    Returns:
        one row per variant (see :func:`run_variant`).
    """
    variants = list(variants or DEFAULT_VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise KeyError(f"unknown benchmark variant(s) {unknown}; choose from {list(VARIANTS)}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    os.makedirs(output_dir, exist_ok=True)
    rows = []
    for variant in variants:
        kwargs = dict(
            variant=variant,
            output_dir=output_dir,
            iters=iters,
            data_root=data_root,
            ims_per_batch=ims_per_batch,
            seed=seed,
            eval_images=eval_images,
            opts=list(opts),
        )
        logger.info(f"heads benchmark: {variant} ({VARIANTS[variant]}), {iters} iterations")
        if isolate:
            result = os.path.join(output_dir, variant, "result.json")
            os.makedirs(os.path.dirname(result), exist_ok=True)
            for stale in (result, result + ".error"):
                if os.path.exists(stale):
                    os.remove(stale)
            proc = mp.get_context("spawn").Process(target=_variant_worker, args=(kwargs, result))
            proc.start()
            proc.join()
            if proc.exitcode != 0 or not os.path.isfile(result):
                detail = ""
                if os.path.isfile(result + ".error"):
                    with open(result + ".error") as f:
                        detail = "\n" + f.read()
                raise RuntimeError(
                    f"heads benchmark: variant {variant!r} failed "
                    f"(exit code {proc.exitcode}){detail}"
                )
            with open(result) as f:
                rows.append(json.load(f, object_pairs_hook=OrderedDict))
        else:
            rows.append(run_variant(**kwargs))
    table = format_heads_table(rows)
    print(table)
    with open(os.path.join(output_dir, "heads_benchmark.json"), "w") as f:
        json.dump(rows, f, indent=2)
    with open(os.path.join(output_dir, "heads_benchmark.md"), "w") as f:
        f.write(table + "\n")
    return rows


def format_heads_table(rows: Sequence[Dict]) -> str:
    """Markdown table of :func:`run_heads_benchmark`'s rows."""
    from tabulate import tabulate

    headers = [
        "variant",
        "mIoU",
        "pACC",
        "BF (2 px)",
        "touching sep.",
        "s/iter",
        "ms/img",
        "peak MB",
        "params (M)",
    ]
    table = [
        [
            r["variant"],
            f"{r['mIoU']:.1f}",
            f"{r['pACC']:.1f}",
            f"{r['BF']:.1f}",
            f"{r['touching_separated']}/{r['touching_total']}",
            f"{r['s_per_iter']:.2f}",
            f"{r['ms_per_image']:.0f}",
            f"{r['peak_mb']:.0f}",
            f"{r['params_m']:.2f}",
        ]
        for r in rows
    ]
    return tabulate(table, headers=headers, tablefmt="pipe", disable_numparse=True)
