"""The demo's figures over several seeds: ``tools/train_net.py`` on the ``make demo`` config
once per seed, each in its own process with the same thread count, then every figure's mean
and range. One run says little: another seed, thread count or machine moves PQ by a few
points, so the README reports the mean and the range."""
import json
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from tabulate import tabulate

from .common import REPO_ROOT

__all__ = ["DEMO_CONFIG", "FIGURES", "run_seeds", "summarize_seeds", "format_seeds_table"]

DEMO_CONFIG = "configs/Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_demo_synthetic.yaml"
# (column, task in eval_results.json, metric)
FIGURES = (
    ("box AP", "bbox", "AP"),
    ("mask AP", "segm", "AP"),
    ("mask AP50", "segm", "AP50"),
    ("mIoU", "sem_seg", "mIoU"),
    ("pACC", "sem_seg", "pACC"),
    ("PQ", "panoptic_seg", "PQ"),
    ("SQ", "panoptic_seg", "SQ"),
    ("RQ", "panoptic_seg", "RQ"),
    ("PQ things", "panoptic_seg", "PQ_th"),
    ("PQ stuff", "panoptic_seg", "PQ_st"),
)


def run_seeds(
    output: str,
    seeds: Sequence[int],
    threads: int = 2,
    config: str = DEMO_CONFIG,
    opts: Sequence[str] = (),
) -> List[Dict]:
    """Train and evaluate ``config`` once per seed into ``output/seed<N>``; returns per seed
    ``seed``, ``seconds`` (wall time of the whole run) and ``figures`` (column -> value)."""
    runs = []
    for seed in seeds:
        out = os.path.join(output, f"seed{seed}")
        cmd = [sys.executable, str(REPO_ROOT / "tools" / "train_net.py"), "--config-file",
               str(REPO_ROOT / config), "SEED", str(seed), "OUTPUT_DIR", out, *opts]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env)
        seconds = time.perf_counter() - start
        with open(os.path.join(out, "eval_results.json")) as f:
            results = json.load(f)
        runs.append({"seed": seed, "seconds": seconds, "figures": _figures(results)})
    return runs


def _figures(results: Dict) -> Dict[str, float]:
    """The table's columns from ``eval_results.json`` (``{dataset: {task: {metric: v}}}``)."""
    dataset = next(iter(results.values()))
    return {
        column: float(dataset.get(task, {}).get(metric, math.nan))
        for column, task, metric in FIGURES
    }


def summarize_seeds(runs: Sequence[Dict]) -> Dict[str, Dict[str, float]]:
    """Per column: ``mean``, ``min``, ``max`` over the runs."""
    summary = {}
    for column, _, _ in FIGURES:
        values = [r["figures"][column] for r in runs]
        summary[column] = {
            "mean": sum(values) / len(values), "min": min(values), "max": max(values)
        }
    return summary


def format_seeds_table(runs: Sequence[Dict], summary: Optional[Dict] = None) -> str:
    """One row per seed, then the mean and the range (min-max)."""
    summary = summary or summarize_seeds(runs)
    columns = [c for c, _, _ in FIGURES]
    rows = [
        [f"SEED {r['seed']}", f"{r['seconds'] / 60:.1f}"]
        + [f"{r['figures'][c]:.1f}" for c in columns]
        for r in runs
    ]
    rows.append(["mean", ""] + [f"{summary[c]['mean']:.1f}" for c in columns])
    rows.append(
        ["range", ""] + [f"{summary[c]['min']:.1f}-{summary[c]['max']:.1f}" for c in columns]
    )
    return tabulate(rows, headers=["run", "min"] + columns, tablefmt="pipe", disable_numparse=True)
