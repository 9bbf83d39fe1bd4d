"""Semantic heads trained under one budget and compared: accuracy, boundaries, touching
objects, speed and memory.

Every variant is a config in ``configs/Synthetic-SemanticSegmentation/`` (ResNet-18 from
scratch, except the sliding-window baseline, whose small per-window CNN is the point of the
comparison), trained with :class:`~seg2.engine.Seg2Trainer` on the synthetic train split for
the same number of iterations at the same batch size, and scored on the val split.

Metrics (all computed on the val images processed):

* ``mIoU``, ``pACC``: :class:`~seg2.evaluation.semantic_evaluator.Seg2SemSegEvaluator` (Detectron2's
  conventions), in percent.
* ``BF`` (boundary F-score at 2 px) and ``touching`` ("separated / total" ground-truth thing
  instances that touch a same-class instance):
  :class:`~seg2.evaluation.boundary.Seg2BoundaryEvaluator`, whose module docstring defines them
  (the same definitions as the nuclei example).
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
import statistics
import time
import traceback
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from .process import peak_rss_mb

__all__ = [
    "VARIANTS",
    "DEFAULT_VARIANTS",
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


# ---------------------------------------------------------------------------- training


def register_data(data_root: Optional[str]) -> str:
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
    from seg2.engine.trainer import Seg2Trainer
    from seg2.evaluation.boundary import Seg2BoundaryEvaluator
    from seg2.evaluation.semantic_evaluator import Seg2SemSegEvaluator
    from seg2.modeling import sliding_window  # noqa: F401  (registers SlidingWindowSegmentor)

    torch.set_num_threads(2)
    prefix = register_data(data_root)
    out = os.path.join(output_dir, variant)
    cfg = benchmark_cfg(variant, out, iters, prefix, ims_per_batch, seed, opts)
    os.makedirs(out, exist_ok=True)
    on_cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_start = peak_rss_mb()

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
    evaluator = Seg2SemSegEvaluator(val, distributed=False, output_dir=out)
    evaluator.reset()
    boundary = Seg2BoundaryEvaluator(val, BOUNDARY_TOLERANCE, distributed=False)
    boundary.reset()
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
            boundary.process(inputs, outputs)
    sem = evaluator.evaluate()["sem_seg"]
    bnd = boundary.evaluate()["boundary"]
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else peak_rss_mb() - rss_start

    row = OrderedDict(
        variant=variant,
        config=VARIANTS[variant],
        iters=iters,
        ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
        mIoU=sem["mIoU"],
        pACC=sem["pACC"],
        BF=bnd["BF"],
        touching_total=bnd["touching"],
        touching_separated=bnd["touching_separated"],
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
