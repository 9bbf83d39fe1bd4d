"""Exact COCO box and mask AP without ``detectron2._C``.

Detectron2's fast path (``COCOeval_opt``) needs its compiled extension, which a pure-Python
install lacks, so it falls back to pycocotools' slow Python ``evaluateImg``. Here the
evaluation runs on faster-coco-eval's ``COCOeval_faster`` (C++ matching and accumulation)
when it is installed; its figures equal pycocotools' ``COCOeval`` on the same files (checked
to 1e-9 in ``tests/evaluation/test_coco.py`` on crowd regions, duplicates, misses, empty
images and non-contiguous category ids), and plain pycocotools is the fallback.

Conventions are Detectron2's: results carry the dataset's original category ids, mask AP
is computed without the results' boxes (so small/medium/large use the mask area), and the
metrics are in percent with per-category ``AP-<name>``. The ``DatasetEvaluator`` over a
model's outputs is :class:`seg2.evaluation.coco_evaluator.Seg2COCOEvaluator`.
"""

import contextlib
import io
import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..io import InputError, read_json

__all__ = [
    "default_backend",
    "load_coco_gt",
    "validate_coco_results",
    "coco_summary",
    "evaluate_coco_results",
    "evaluate_coco_files",
]

logger = logging.getLogger(__name__)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BACKENDS = ("faster_coco_eval", "pycocotools")


def default_backend() -> str:
    """``"faster_coco_eval"`` when importable, else ``"pycocotools"``."""
    try:
        import faster_coco_eval  # noqa: F401

        return "faster_coco_eval"
    except ImportError:
        return "pycocotools"


def _api(backend: str):
    """(COCO class, COCOeval class) of a backend."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ValueError(f"Unknown COCO backend {backend!r}; choose from {BACKENDS}")


def _wrap_flat_polygons(gt: Dict) -> Dict:
    """Real exports (e.g. solaris) write a polygon as one flat list of numbers, which
    pycocotools cannot rasterise; read it as a list of one polygon, as the loader does."""
    anns, n = [], 0
    for a in gt.get("annotations", []):
        seg = a.get("segmentation") if isinstance(a, dict) else None
        if isinstance(seg, list) and seg and all(isinstance(v, (int, float)) for v in seg):
            a, n = dict(a, segmentation=[seg]), n + 1
        anns.append(a)
    if n:
        logger.info(f"COCO ground truth: {n} flat polygon list(s) read as one polygon each")
        gt = dict(gt, annotations=anns)
    return gt


def _empty_results(coco_gt, backend: str):
    """A results object with no detections: pycocotools' ``loadRes`` refuses an empty list,
    but COCOeval scores one exactly (AP 0 where ground truth exists, -1 where none)."""
    coco_cls, _ = _api(backend)
    api = coco_cls()
    api.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    api.createIndex()
    return api


def load_coco_gt(gt: Union[str, Dict], backend: Optional[str] = None):
    """A COCO ground-truth API object of ``backend`` from a JSON path or a loaded dict."""
    coco_cls, _ = _api(backend or default_backend())
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, str):
            gt = read_json(gt, "COCO ground-truth")
        gt = _wrap_flat_polygons(gt)
        api = coco_cls()
        api.dataset = gt if backend != "faster_coco_eval" else dict(gt)
        api.createIndex()
    return api


def validate_coco_results(
    results: Any, gt_dataset: Dict, iou_types: Sequence[str], source: str
) -> List[Dict]:
    """Check a COCO results list against its ground truth before pycocotools sees it.

    Args:
        results: the parsed results (a list of dicts with ``image_id``, ``category_id``,
            ``score`` and ``bbox`` for "bbox" / RLE ``segmentation`` for "segm").
        gt_dataset: the ground-truth dict (``images``, ``categories``).
        iou_types: the evaluations that will run.
        source: file name for the messages.

    Returns:
        ``results``. Raises InputError naming ``source``, the entry and the field.
    """
    if not isinstance(results, list):
        raise InputError(
            f"{source}: COCO results must be a JSON list, got {type(results).__name__}"
        )
    images = {im["id"]: im for im in gt_dataset.get("images", [])}
    cat_ids = {c["id"] for c in gt_dataset.get("categories", [])}
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise InputError(f"{source}: entry {i} is not an object")
        for key in ("image_id", "category_id", "score"):
            if key not in r:
                raise InputError(f"{source}: entry {i} lacks field '{key}'")
        if r["image_id"] not in images:
            raise InputError(
                f"{source}: entry {i} has image_id {r['image_id']!r}, "
                "not an image of the ground truth"
            )
        if r["category_id"] not in cat_ids:
            raise InputError(
                f"{source}: entry {i} has category_id {r['category_id']!r}, not among the "
                f"ground-truth category ids {sorted(cat_ids)} "
                "(results use the dataset's original ids)"
            )
        if not isinstance(r["score"], (int, float)) or not np.isfinite(r["score"]):
            raise InputError(
                f"{source}: entry {i} has a non-numeric score {r['score']!r}"
            )
        if "bbox" in iou_types:
            box = r.get("bbox")
            if not (isinstance(box, (list, tuple)) and len(box) == 4):
                raise InputError(
                    f"{source}: entry {i} lacks a 'bbox' [x, y, w, h] (needed for bbox AP; "
                    "evaluate only segm to skip it)"
                )
        if "segm" in iou_types:
            seg = r.get("segmentation")
            if not (isinstance(seg, dict) and "size" in seg and "counts" in seg):
                raise InputError(
                    f"{source}: entry {i} lacks an RLE 'segmentation' {{size, counts}} "
                    "(needed for segm AP; evaluate only bbox to skip it)"
                )
            im = images[r["image_id"]]
            if list(seg["size"]) != [im["height"], im["width"]]:
                raise InputError(
                    f"{source}: entry {i} segmentation size {list(seg['size'])} differs from "
                    f"image {r['image_id']} size [{im['height']}, {im['width']}] (height, width)"
                )
    return results


def coco_summary(
    coco_eval, iou_type: str, class_names: Optional[Sequence[str]] = None
) -> Dict[str, float]:
    """Detectron2's ``COCOEvaluator._derive_coco_results``: percent AP figures and ``AP-<name>``.

    Args:
        coco_eval: a summarised COCOeval (either backend), or None when there were no results
            (every figure is then NaN).
        iou_type: "bbox" or "segm".
        class_names: one per ground-truth category in ascending id order.
    """
    if coco_eval is None:
        return {m: float("nan") for m in COCO_METRICS}
    results = {
        m: float(coco_eval.stats[i] * 100 if coco_eval.stats[i] >= 0 else "nan")
        for i, m in enumerate(COCO_METRICS)
    }
    if class_names is None or len(class_names) <= 1:
        return results
    precisions = coco_eval.eval["precision"]  # (iou, recall, class, area range, max dets)
    if len(class_names) != precisions.shape[2]:
        raise ValueError(
            f"{len(class_names)} class names for {precisions.shape[2]} COCO categories"
        )
    for idx, name in enumerate(class_names):
        precision = precisions[:, :, idx, 0, -1]
        precision = precision[precision > -1]
        results[f"AP-{name}"] = float(np.mean(precision) * 100) if precision.size else float("nan")
    return results


def evaluate_coco_results(
    coco_gt,
    results: List[Dict],
    iou_types: Sequence[str] = ("bbox", "segm"),
    class_names: Optional[Sequence[str]] = None,
    backend: Optional[str] = None,
    max_dets_per_image: Optional[Sequence[int]] = None,
    img_ids: Optional[Sequence[int]] = None,
) -> "OrderedDict[str, Dict[str, float]]":
    """Run COCOeval for each IoU type on in-memory results (original category ids).

    Args:
        coco_gt: a ground-truth API object of ``backend`` (see :func:`load_coco_gt`).
        results: COCO results; not modified.
        iou_types: subset of ("bbox", "segm").
        class_names: names in ascending category-id order (default: the GT's names).
        backend: "faster_coco_eval" or "pycocotools" (default: the former when installed).
        max_dets_per_image: COCOeval ``maxDets`` (default [1, 10, 100]).
        img_ids: evaluate on these images only.

    Returns:
        {iou_type: :func:`coco_summary`}. With no results at all every figure is 0 where
        ground truth exists (not NaN); categories and area ranges without ground truth are
        NaN, with a logged note.
    """
    backend = backend or default_backend()
    _note_missing_ground_truth(coco_gt, img_ids)
    _, eval_cls = _api(backend)
    if class_names is None:
        cats = sorted(coco_gt.dataset["categories"], key=lambda c: c["id"])
        class_names = [c["name"] for c in cats]
    out: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for iou_type in sorted(iou_types):
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"Unsupported iou_type {iou_type!r}; seg2 evaluates 'bbox' and 'segm'")
        dts = [_copy_result(r) for r in results]  # loadRes writes into the dicts
        if iou_type == "segm":
            for d in dts:  # with a box, loadRes would take the box area as the mask's
                d.pop("bbox", None)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(dts) if dts else _empty_results(coco_gt, backend)
            if backend == "faster_coco_eval":
                coco_eval = eval_cls(
                    coco_gt, coco_dt, iou_type, print_function=lambda *a, **k: None
                )
            else:
                coco_eval = eval_cls(coco_gt, coco_dt, iou_type)
            if max_dets_per_image is not None:
                coco_eval.params.maxDets = list(max_dets_per_image)
            if img_ids is not None:
                coco_eval.params.imgIds = list(img_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
            if backend == "pycocotools" and coco_eval.params.maxDets[-1] != 100:
                _summarize_max_dets(coco_eval)
            else:
                coco_eval.summarize()
        out[iou_type] = coco_summary(coco_eval, iou_type, class_names)
    return out


def _note_missing_ground_truth(coco_gt, img_ids: Optional[Sequence[int]]) -> None:
    """Say (once per evaluation) which categories have no ground truth: their AP is NaN."""
    keep = None if img_ids is None else set(img_ids)
    counts = {c["id"]: 0 for c in coco_gt.dataset["categories"]}
    for a in coco_gt.dataset["annotations"]:
        if (keep is None or a["image_id"] in keep) and not a.get("iscrowd", 0):
            counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    empty = [c for c, n in counts.items() if n == 0]
    if len(empty) == len(counts):
        logger.warning(
            "COCO evaluation: the ground truth has no (non-crowd) annotations; every AP is NaN"
        )
    elif empty:
        logger.warning(
            f"COCO evaluation: {len(empty)} of {len(counts)} categories have no ground truth "
            f"(ids {sorted(empty)[:10]}); their AP is NaN and left out of the mean"
        )


def _copy_result(r: Dict) -> Dict:
    """A copy deep enough for loadRes/COCOeval to write into (deepcopy took 40% of the time)."""
    out = dict(r)
    for key in ("segmentation", "bbox"):
        if isinstance(out.get(key), dict):
            out[key] = dict(out[key])
        elif isinstance(out.get(key), list):
            out[key] = list(out[key])
    return out


def _summarize_max_dets(coco_eval) -> None:
    """pycocotools' summarize hard-codes 100 detections; Detectron2's COCOevalMaxDets does not."""
    from detectron2.evaluation.coco_evaluation import COCOevalMaxDets

    COCOevalMaxDets.summarize(coco_eval)


def evaluate_coco_files(
    gt_json: str,
    results_json: str,
    iou_types: Sequence[str] = ("bbox", "segm"),
    backend: Optional[str] = None,
) -> "OrderedDict[str, Dict[str, float]]":
    """Evaluate a COCO results file against a COCO instances file.

    Both files are validated first (unknown image or category ids, missing fields, mask
    sizes), so bad input raises InputError naming the file and the entry.

    Returns:
        {"bbox": {...}, "segm": {...}} (the IoU types asked for), Detectron2's keys.
    """
    gt = read_json(gt_json, "COCO ground-truth")
    if not isinstance(gt, dict):
        raise InputError(f"{gt_json}: COCO ground truth must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise InputError(f"{gt_json}: top-level field '{key}' missing or not a list")
    if not gt["images"]:
        raise InputError(f"{gt_json}: field 'images' is empty: nothing to evaluate")
    from ..data.check_instances import check_coco_instances_json
    from ..data.validate import ValidationReport

    report = ValidationReport(gt_json)
    check_coco_instances_json(gt, gt_json, report)
    if not report.ok:
        count = len(report.problems)
        raise InputError(f"{report.format()}\n{count} problem(s) in the ground truth")
    for line in report.note_lines():
        logger.info(f"{gt_json}: {line}")
    results = validate_coco_results(
        read_json(results_json, "COCO results"), gt, iou_types, results_json
    )
    backend = backend or default_backend()
    return evaluate_coco_results(load_coco_gt(gt, backend), results, iou_types, backend=backend)
