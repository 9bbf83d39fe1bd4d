"""What tools/train_net.py does around training: config setup and the results it leaves."""

import logging
import os
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from ..config import add_seg2_config
from ..data.datasets import register_from_config, validate_datasets
from ..io import write_json
from .config_check import check_config, merge_config_list
from .trained_model import merge_base_config

__all__ = [
    "build_cfg",
    "setup_run",
    "setup_cfg",
    "write_metrics",
    "format_metrics_table",
    "RESULTS_FILE",
]

# Evaluation results of tools/train_net.py. Not metrics.json: that is Detectron2's JSONWriter
# log of every training iteration (JSON lines), which its tools and TensorBoard curves read.
RESULTS_FILE = "eval_results.json"

logger = logging.getLogger("seg2")

# Headline metrics shown in the summary table, per task key; everything goes to JSON.
_HEADLINE = {
    "bbox": ("AP", "AP50", "AP75"),
    "segm": ("AP", "AP50", "AP75"),
    "sem_seg": ("mIoU", "fwIoU", "mACC", "pACC", "mDice"),
    "panoptic_seg": ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"),
}


def build_cfg(args, **checks) -> CfgNode:
    """Config from ``--config-file`` (or, without one, the config stored in the checkpoint
    that ``MODEL.WEIGHTS`` names: :mod:`seg2.engine.trained_model`) plus trailing
    ``KEY VALUE`` overrides, with seg2's defaults and user datasets (``DATASETS.SEG2.*``)
    registered, and checked (:func:`seg2.engine.config_check.check_config`, given
    ``checks``: a problem raises ``ConfigError`` before anything is built); not frozen."""
    eval_only = getattr(args, "eval_only", False)
    cfg = get_cfg()
    add_seg2_config(cfg)
    merge_base_config(cfg, args.config_file, args.opts, training=not eval_only)
    merge_config_list(cfg, args.opts)
    register_from_config(cfg)
    check_config(cfg, eval_only=eval_only, resume=getattr(args, "resume", False), **checks)
    return cfg


def setup_run(cfg: CfgNode, args, validate: Optional[Sequence[str]] = None) -> None:
    """Detectron2's ``default_setup`` (OUTPUT_DIR, its config.yaml and log, seeds), seg2's
    logger, and the datasets the run reads validated before the first iteration: ``validate``,
    by default DATASETS.TRAIN and TEST (TEST only for ``--eval-only``)."""
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="seg2", abbrev_name="seg2")
    if validate is None:
        eval_only = getattr(args, "eval_only", False)
        validate = cfg.DATASETS.TEST if eval_only else cfg.DATASETS.TRAIN + cfg.DATASETS.TEST
    validate_datasets(cfg, validate)


def setup_cfg(args, validate: Optional[Sequence[str]] = None, **checks) -> CfgNode:
    """:func:`build_cfg`, frozen, then :func:`setup_run`."""
    cfg = build_cfg(args, **checks)
    cfg.freeze()
    setup_run(cfg, args, validate)
    return cfg


def _flatten(results: Mapping) -> Dict[str, Dict[str, float]]:
    """{dataset: {task: {k: v}}} or {task: {k: v}} -> {"dataset/task": {k: v}}."""
    flat = OrderedDict()
    for key, value in results.items():
        if (
            isinstance(value, Mapping)
            and value
            and all(isinstance(v, Mapping) for v in value.values())
        ):
            for task, metrics in value.items():
                flat[f"{key}/{task}"] = metrics
        else:
            flat[key] = value
    return flat


def format_metrics_table(results: Mapping) -> str:
    """One row per dataset/task with its headline metrics (percent)."""
    rows = []
    for name, metrics in _flatten(results).items():
        task = name.split("/")[-1]
        keys = [k for k in _HEADLINE.get(task, ()) if k in metrics] or list(metrics)[:5]
        rows.append([name, "  ".join(f"{k}={metrics[k]:.2f}" for k in keys)])
    return tabulate(rows, headers=["dataset/task", "metrics"], tablefmt="pipe")


def write_metrics(results: Mapping, output_dir: str, filename: str = RESULTS_FILE) -> str:
    """Write all evaluation results as JSON (atomically) on the main process; returns the
    path. ``{dataset: {task: {metric: value}}}``."""
    path = os.path.join(output_dir, filename)
    if comm.is_main_process():
        write_json(dict(results), path)
        logger.info(f"Evaluation results written to {path}")
    return path
