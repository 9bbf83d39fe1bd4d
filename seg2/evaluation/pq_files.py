"""PQ of COCO panoptic files (PNG + JSON), ground truth against predictions: reading and
checking the files, scoring them by batches of images (:class:`seg2.evaluation.pq.PQBatch`)
with a worker pool over images (the same figures for any worker count), and the summary
tables Detectron2 logs."""
import logging
import math
import os
from collections import OrderedDict
from functools import partial
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
from tabulate import tabulate

from ..data.parallel import worker_context
from ..io import InputError, read_json, read_panoptic_png
from .pq import PQ_GROUPS, PQBatch, PQScores, pq_results

__all__ = ["load_panoptic_json", "panoptic_categories", "pq_compute_files", "format_pq_table"]

logger = logging.getLogger(__name__)


def load_panoptic_json(path: str, what: str) -> Dict:
    """A COCO panoptic JSON (ground truth or predictions) with an ``annotations`` list."""
    data = read_json(path, f"{what} JSON")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(f"{path}: top-level field 'annotations' missing or not a list")
    return data


def _read_ids(path: str, image_name: str) -> np.ndarray:
    try:
        return read_panoptic_png(path)
    except InputError as e:
        raise InputError(f"{image_name}: {e}") from None


# (image name for errors, gt PNG, gt segments, pred PNG, pred segments)
_Task = Tuple[str, str, List[Dict], str, List[Dict]]


# Images are scored in batches: large enough to pay numpy's per-call cost once per many
# images, small enough to bound what is kept per image (its run ids, for error messages).
_BATCH_IMAGES = 256


def _compute_chunk(tasks: List[_Task], categories: Mapping[int, Mapping]) -> PQScores:
    scores = []
    for b in range(0, len(tasks), _BATCH_IMAGES):
        part = tasks[b : b + _BATCH_IMAGES]
        batch = PQBatch([(t[0], t[2], t[4]) for t in part], categories)
        for k, (image_name, gt_png, _, pred_png, _) in enumerate(part):
            batch.add(k, _read_ids(gt_png, image_name), _read_ids(pred_png, image_name))
        scores.append(batch.scores())
    return PQScores.concatenate(scores)


def panoptic_categories(gt: Dict, gt_json: str) -> Dict[int, Dict]:
    cats = gt.get("categories")
    if not isinstance(cats, list) or not cats:
        raise InputError(f"{gt_json}: top-level field 'categories' missing or empty")
    out: Dict[int, Dict] = {}
    for c in cats:
        for key in ("id", "isthing"):
            if key not in c:
                raise InputError(f"{gt_json}: category {c} lacks field '{key}'")
        if c["id"] in out:
            raise InputError(f"{gt_json}: category id {c['id']} appears twice")
        out[c["id"]] = c
    return out


def pq_compute_files(
    gt_json: str,
    gt_dir: str,
    pred_json: str,
    pred_dir: str,
    num_workers: Optional[int] = None,
    image_ids: Optional[Iterable] = None,
) -> Dict[str, float]:
    """PQ of COCO panoptic predictions against COCO panoptic ground truth.

    Args:
        gt_json: GT JSON with ``categories`` (``id``, ``name``, ``isthing``) and
            ``annotations`` (``image_id``, ``file_name``, ``segments_info``).
        gt_dir: folder of the GT PNGs named by ``file_name``.
        pred_json: predictions JSON with ``annotations`` in the same format.
        pred_dir: folder of the predicted PNGs.
        num_workers: processes reading and scoring images; None = one per CPU, 0 or 1 = in
            this process. Results do not depend on it.
        image_ids: score only these GT images (default: every GT annotation).

    Returns:
        :func:`pq_results`' dict: ``PQ, SQ, RQ, PQ_th, ..., RQ_st`` and per-class entries, in %.

    Raises:
        InputError: naming the file, the image and the segment, for a GT image
            without prediction, a malformed JSON, a missing or non-RGB PNG, or any error of
            :func:`seg2.evaluation.pq.pq_compute_single`.
    """
    gt = load_panoptic_json(gt_json, "ground-truth")
    pred = load_panoptic_json(pred_json, "prediction")
    categories = panoptic_categories(gt, gt_json)

    gt_anns: Dict = OrderedDict()
    for ann in gt["annotations"]:
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise InputError(
                    f"{gt_json}: annotation lacks field '{key}': "
                    f"{ann.get('file_name', ann.get('image_id'))}"
                )
        gt_anns[ann["image_id"]] = ann
    pred_anns: Dict = {}
    for ann in pred["annotations"]:
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise InputError(
                    f"{pred_json}: prediction lacks field '{key}': "
                    f"{ann.get('file_name', ann.get('image_id'))}"
                )
        if ann["image_id"] in pred_anns:
            raise InputError(
                f"{pred_json}: image_id {ann['image_id']} ({ann['file_name']}) has two predictions"
            )
        pred_anns[ann["image_id"]] = ann

    if not gt_anns:
        raise InputError(f"{gt_json}: field 'annotations' is empty: nothing to evaluate")
    if image_ids is not None:
        wanted = list(image_ids)
        unknown = [i for i in wanted if i not in gt_anns]
        if unknown:
            raise InputError(
                f"{gt_json}: image_id(s) {unknown[:10]} not in the ground truth"
            )
        gt_anns = OrderedDict((i, gt_anns[i]) for i in wanted)

    tasks: List[_Task] = []
    for image_id, g in gt_anns.items():
        if image_id not in pred_anns:
            raise InputError(
                f"{pred_json}: no prediction for image {g['file_name']} (image_id {image_id})"
            )
        p = pred_anns[image_id]
        name = f"image {g['file_name']} (image_id {image_id})"
        tasks.append(
            (
                name,
                os.path.join(gt_dir, g["file_name"]),
                g["segments_info"],
                os.path.join(pred_dir, p["file_name"]),
                p["segments_info"],
            )
        )

    if num_workers is None:
        num_workers = os.cpu_count() or 1
    num_workers = max(1, min(num_workers, len(tasks)))
    if num_workers == 1:
        scores = _compute_chunk(tasks, categories)
    else:
        # A few chunks per worker balance uneven image sizes with little IPC.
        size = math.ceil(len(tasks) / (4 * num_workers))
        chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        with worker_context().Pool(processes=num_workers) as pool:
            scores = PQScores.concatenate(
                pool.map(partial(_compute_chunk, categories=categories), chunks)
            )
    # Summed in image order, so the float sums are bit-identical for any num_workers.
    stat = scores.to_stat()
    logger.info(f"PQ computed over {len(tasks)} images with {num_workers} worker(s)")
    return pq_results(stat, categories)


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
    for name, isthing, suffix in PQ_GROUPS:
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
