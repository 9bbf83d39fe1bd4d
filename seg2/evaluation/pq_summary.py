"""From PQ accumulators (:class:`seg2.evaluation.pq.PQStat`) to figures: per-class and mean
PQ/SQ/RQ over all classes, things and stuff, Detectron2's result keys and its log tables."""

import logging
import math
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

from tabulate import tabulate

from .pq import PQStat, PQStatCat

__all__ = ["pq_average", "pq_results", "format_pq_table"]

# PQ's notes keep the engine's logger name, so a filter on it sees all of them.
logger = logging.getLogger("seg2.evaluation.pq")

_GROUPS = (("All", None, ""), ("Things", True, "_th"), ("Stuff", False, "_st"))


def pq_average(
    stat: PQStat, categories: Mapping[int, Mapping], isthing: Optional[bool] = None
) -> Tuple[Dict[str, float], Dict[int, Dict[str, float]]]:
    """Mean PQ, SQ, RQ (fractions) over the categories that have any TP, FP or FN.

    PQ_c = sum IoU / (TP + FP/2 + FN/2), SQ_c = sum IoU / TP (0 without TP),
    RQ_c = TP / (TP + FP/2 + FN/2).

    Args:
        stat: accumulators of the whole dataset.
        categories: category id -> dict with ``isthing``.
        isthing: True / False restricts to things / stuff; None takes all.

    Returns:
        ``{"pq", "sq", "rq", "n"}`` (means are NaN when n == 0) and, per category id taken
        into the mean, ``{"pq", "sq", "rq"}``.
    """
    per_class: Dict[int, Dict[str, float]] = {}
    for cat, info in categories.items():
        if isthing is not None and bool(info.get("isthing", 0)) != isthing:
            continue
        s = stat.pq_per_cat.get(cat, PQStatCat())
        if s.tp + s.fp + s.fn == 0:
            continue
        denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
        per_class[cat] = {
            "pq": s.iou / denom,
            "sq": s.iou / s.tp if s.tp else 0.0,
            "rq": s.tp / denom,
        }
    n = len(per_class)
    mean = {
        k: (sum(r[k] for r in per_class.values()) / n if n else float("nan"))
        for k in ("pq", "sq", "rq")
    }
    mean["n"] = n
    return mean, per_class


def _note_missing_ground_truth(stat: PQStat, categories: Mapping[int, Mapping]) -> None:
    """Say which categories have no ground-truth segment: their PQ is NaN without
    predictions, 0 with (false positives only), never silently."""
    gt_segments = {c: s.tp + s.fn for c, s in stat.pq_per_cat.items()}
    empty = [c for c in categories if not gt_segments.get(c)]
    if len(empty) == len(categories):
        logger.warning(
            "PQ: the ground truth has no segment of any category; "
            "PQ is NaN (0 for categories with predictions)"
        )
    elif empty:
        logger.warning(
            f"PQ: {len(empty)} of {len(categories)} categories have no ground-truth segment "
            f"(ids {sorted(empty)[:10]}): NaN without predictions, 0 with false positives only"
        )


def pq_results(stat: PQStat, categories: Mapping[int, Mapping]) -> Dict[str, float]:
    """Detectron2's panoptic keys, in percent.

    Args:
        stat: accumulators of the whole dataset.
        categories: category id -> dict with ``isthing`` and ``name``.

    Returns:
        ``PQ, SQ, RQ`` (all classes), ``PQ_th, SQ_th, RQ_th`` (things), ``PQ_st, SQ_st,
        RQ_st`` (stuff), and ``PQ-<name>, SQ-<name>, RQ-<name>`` per class. A figure over no
        class (e.g. things of a stuff-only dataset, or a class absent from both GT and
        predictions) is NaN, as Detectron2 reports absent classes.
    """
    _note_missing_ground_truth(stat, categories)
    res: Dict[str, float] = OrderedDict()
    per_class: Dict[int, Dict[str, float]] = {}
    for _, isthing, suffix in _GROUPS:
        mean, pc = pq_average(stat, categories, isthing)
        for k in ("pq", "sq", "rq"):
            res[k.upper() + suffix] = 100 * mean[k]
        if isthing is None:
            per_class = pc
    for cat, info in categories.items():
        name = info.get("name", str(cat))
        for k in ("pq", "sq", "rq"):
            res[f"{k.upper()}-{name}"] = (
                100 * per_class[cat][k] if cat in per_class else float("nan")
            )
    return res


def format_pq_table(
    results: Mapping[str, float], categories: Optional[Mapping[int, Mapping]] = None
) -> str:
    """The summary (All / Things / Stuff) and per-class tables, as Detectron2 logs them.

    Args:
        results: output of :func:`pq_results` / :func:`pq_compute_files`.
        categories: category id -> dict with ``isthing`` and ``name``; when given, the summary
            gets Detectron2's ``#categories`` column (classes taken into each mean).

    Returns:
        Two tables in Markdown "pipe" format.
    """
    headers = ["", "PQ", "SQ", "RQ"] + (["#categories"] if categories is not None else [])
    rows = []
    for name, isthing, suffix in _GROUPS:
        row = [name] + [results.get(k + suffix, float("nan")) for k in ("PQ", "SQ", "RQ")]
        if categories is not None:
            row.append(
                sum(
                    1
                    for c in categories.values()
                    if (isthing is None or bool(c.get("isthing", 0)) == isthing)
                    and not math.isnan(results.get(f"PQ-{c.get('name')}", float("nan")))
                )
            )
        rows.append(row)
    fmt = dict(tablefmt="pipe", floatfmt=".3f", stralign="center", numalign="center")
    table = tabulate(rows, headers=headers, **fmt)
    names = [k[3:] for k in results if k.startswith("PQ-")]
    if names:
        per_class = [[n] + [results[f"{k}-{n}"] for k in ("PQ", "SQ", "RQ")] for n in names]
        table += "\n\n" + tabulate(per_class, headers=["category", "PQ", "SQ", "RQ"], **fmt)
    return table
