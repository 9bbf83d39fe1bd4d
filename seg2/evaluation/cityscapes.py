"""Cityscapes scoring of saved result files: the official scripts for instances and pixels,
seg2's PQ engine for panoptic quality. The model-facing evaluators that write these files are
in :mod:`seg2.evaluation.cityscapes_evaluators`.

Instance AP/AP50 come from ``cityscapesscripts``' ``evalInstanceLevelSemanticLabeling`` and
IoU over the 19 train classes from ``evalPixelLevelSemanticLabeling``, called as functions:
inputs are validated here first so bad input raises :class:`~seg2.io.InputError` naming the
file instead of the scripts' ``sys.exit``, and their progress output is silenced. PQ is
computed by :func:`seg2.evaluation.pq_files.pq_compute_files` (the same engine as COCO panoptic;
the tests check it against ``evalPanopticSemanticLabeling``). Predictions are written in the
formats the official scripts read, so a results folder can be re-scored with
``tools/evaluate.py cityscapes-*``:

- instance: per image ``<city>_<seq>_<frame>*_pred.txt`` with lines
  ``<mask png relative to the txt> <label id> <score>``;
- semantic: per image ``<city>_<seq>_<frame>*.png`` of label ids (not train ids);
- panoptic: ``cityscapes_panoptic_<split>.json`` + folder of the same name (COCO panoptic
  format, Cityscapes label ids, ``image_id`` = ``<city>_<seq>_<frame>``).

Registration and ground-truth generation live in :mod:`seg2.data.cityscapes`.
"""

import fnmatch
import glob
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np

from ..data.cityscapes import ensure_panoptic_gt, require_dir, run_official
from ..io import InputError, open_image, read_json, read_label_png
from .offline import pair_error
from .pq_files import pq_compute_files

__all__ = [
    "evaluate_cityscapes_instances",
    "evaluate_cityscapes_semantic",
    "evaluate_cityscapes_panoptic",
    "evaluate_cityscapes_folder",
    "cityscapes_stem",
]

logger = logging.getLogger(__name__)

TASKS = ("instance", "semantic", "panoptic")


# ------------------------------------------------------------------------------ scoring


def cityscapes_stem(gt_path: str) -> str:
    """``<city>_<seq>_<frame>`` of a Cityscapes file name (what the official scripts match)."""
    parts = os.path.basename(gt_path).split("_")
    if len(parts) < 4:
        raise InputError(
            f"{gt_path}: not a Cityscapes file name (<city>_<seq>_<frame>_gtFine_*.png)"
        )
    return "_".join(parts[:3])


def _find_predictions(gt_files: List[str], pred_dir: str, ext: str) -> List[str]:
    """One prediction ``<city>_<seq>_<frame>*<ext>`` under ``pred_dir`` per ground truth,
    found as the official ``getPrediction`` does; missing or ambiguous ones name the file."""
    require_dir(pred_dir, "prediction")
    walk = [(root, files) for root, _, files in os.walk(pred_dir)]
    preds = []
    for gt in gt_files:
        pattern = cityscapes_stem(gt) + "*" + ext
        found = [os.path.join(r, f) for r, files in walk for f in fnmatch.filter(files, pattern)]
        if not found:
            raise InputError(f"{gt}: no prediction {pattern} under {pred_dir}")
        if len(found) > 1:
            raise InputError(f"{gt}: several predictions match {pattern}: {found[:3]}")
        preds.append(found[0])
    return preds


def _gt_files(gt_dir: str, suffix: str) -> List[str]:
    require_dir(gt_dir, "gtFine")
    files = sorted(glob.glob(os.path.join(gt_dir, "*", f"*_gtFine_{suffix}.png")))
    if not files:
        raise InputError(f"{gt_dir}: no */*_gtFine_{suffix}.png ground truth found")
    return files


def _validate_instance_predictions(
    gt_files: List[str], txt_files: List[str], pred_dir: str
) -> None:
    from cityscapesscripts.helpers.labels import id2label

    root = os.path.abspath(pred_dir)
    for gt, txt in zip(gt_files, txt_files):
        shape = open_image(gt, "ground truth").size[::-1]
        with open(txt) as f:
            lines = f.read().splitlines()
        for n, line in enumerate(lines, 1):
            fields = line.split(" ")
            where = f"{txt} line {n}"
            if len(fields) != 3:
                raise InputError(
                    f"{where}: expected '<mask png> <label id> <score>', got {line!r}"
                )
            mask_rel, label, score = fields
            mask = os.path.abspath(os.path.join(os.path.dirname(txt), mask_rel))
            if os.path.isabs(mask_rel) or os.path.commonprefix([mask, root]) != root:
                raise InputError(
                    f"{where}: mask path {mask_rel} must be relative and inside {pred_dir}"
                )
            try:
                label_id, _ = int(float(label)), float(score)
            except ValueError:
                raise InputError(
                    f"{where}: label id {label!r} or score {score!r} is not a number"
                ) from None
            if label_id not in id2label:
                raise InputError(f"{where}: unknown Cityscapes label id {label_id}")
            if not os.path.isfile(mask):
                raise InputError(f"{where}: mask {mask} not found")
            arr = read_label_png(mask, "instance mask")
            if arr.shape != shape:
                raise pair_error(gt, mask, shape, arr.shape)


def evaluate_cityscapes_instances(gt_dir: str, pred_dir: str) -> "OrderedDict[str, float]":
    """Official instance-level AP of the predictions in ``pred_dir``.

    Args:
        gt_dir: ``gtFine/<split>`` (``<city>/*_gtFine_instanceIds.png`` below it).
        pred_dir: one ``<city>_<seq>_<frame>*.txt`` per image (searched recursively) whose
            lines are ``<mask png, relative to the txt> <label id> <score>``.

    Returns:
        ``AP`` and ``AP50`` (percent; mean over those of the 8 instance classes that have
        ground truth of at least 100 px, the script's minimum), then ``AP-<class>`` and
        ``AP50-<class>`` for those classes, in the official order (the script prints the
        other classes as ``nan``; they are left out here and take no part in the means).
    """
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs_eval

    gt_files = _gt_files(gt_dir, "instanceIds")
    preds = _find_predictions(gt_files, pred_dir, ".txt")
    _validate_instance_predictions(gt_files, preds, pred_dir)
    args = cs_eval.args
    with tempfile.TemporaryDirectory(prefix="seg2_cs_inst_") as work:
        args.predictionPath = os.path.abspath(pred_dir)
        args.predictionWalk = None
        args.gtInstancesFile = os.path.join(work, "gtInstances.json")  # fresh cache each run
        args.JSONOutput = False
        args.quiet = True
        args.colorized = False

        def run():
            # evaluateImgLists without its matches.json dump into the working directory.
            cs_eval.setInstanceLabels(args)
            gt_instances = cs_eval.getGtInstances(gt_files, args)
            matches = cs_eval.matchGtWithPreds(preds, gt_files, gt_instances, args)
            return cs_eval.computeAverages(cs_eval.evaluateMatches(matches, args), args)

        averages = run_official(run, source=pred_dir)
    res: "OrderedDict[str, float]" = OrderedDict()
    res["AP"] = 100 * float(averages["allAp"])
    res["AP50"] = 100 * float(averages["allAp50%"])
    for name, cls in averages["classes"].items():
        if np.isfinite(cls["ap"]):
            res[f"AP-{name}"] = 100 * float(cls["ap"])
            res[f"AP50-{name}"] = 100 * float(cls["ap50%"])
    return res


def evaluate_cityscapes_semantic(gt_dir: str, pred_dir: str) -> "OrderedDict[str, float]":
    """Official pixel-level scores of the label-id PNGs in ``pred_dir``.

    Args:
        gt_dir: ``gtFine/<split>`` (``<city>/*_gtFine_labelIds.png`` and ``*_instanceIds.png``).
        pred_dir: one ``<city>_<seq>_<frame>*.png`` of Cityscapes label ids per image.

    Returns:
        ``IoU`` (mean over the 19 evaluated classes that occur in ground truth or
        prediction), ``iIoU`` (over the 8 instance classes), ``IoU_sup``, ``iIoU_sup``
        (categories; Detectron2's keys, percent), then ``IoU-<class>`` and, for the instance
        classes, ``iIoU-<class>``, in the official script's class order. The script also
        lists classes absent from both ground truth and prediction, as ``nan``; they are
        left out here (they take no part in the means either way).
    """
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import id2label

    gt_files = _gt_files(gt_dir, "labelIds")
    preds = _find_predictions(gt_files, pred_dir, ".png")
    max_id = max(i for i in id2label if i >= 0)
    for gt, pred in zip(gt_files, preds):
        p = read_label_png(pred, "predicted label-id")
        g_shape = open_image(gt, "ground truth").size[::-1]
        if p.shape != g_shape:
            raise pair_error(gt, pred, g_shape, p.shape)
        if p.size and int(p.max()) > max_id:
            bad = sorted({int(v) for v in np.unique(p) if v > max_id})
            raise InputError(
                f"{pred}: value(s) {bad[:10]} are not Cityscapes label ids (0..{max_id}); "
                "predictions use label ids, not train ids"
            )
    args = cs_eval.args
    args.predictionPath = os.path.abspath(pred_dir)
    args.predictionWalk = None
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.bold = args.nocol = ""
    args.evalInstLevelScore = all(
        os.path.isfile(g.replace("labelIds", "instanceIds")) for g in gt_files
    )
    out = run_official(cs_eval.evaluateImgLists, preds, gt_files, args, source=pred_dir)
    res: "OrderedDict[str, float]" = OrderedDict()
    res["IoU"] = 100 * out["averageScoreClasses"]
    res["iIoU"] = 100 * out["averageScoreInstClasses"]
    res["IoU_sup"] = 100 * out["averageScoreCategories"]
    res["iIoU_sup"] = 100 * out["averageScoreInstCategories"]
    for name, score in out["classScores"].items():
        if np.isfinite(score):
            res[f"IoU-{name}"] = 100 * score
    for name, score in out["classInstScores"].items():
        if np.isfinite(score):
            res[f"iIoU-{name}"] = 100 * score
    return res


def _match_panoptic(gt: Dict, pred: Dict, gt_json: str, pred_json: str) -> None:
    """Cityscapes-specific checks of the prediction JSON (pixels are checked by the PQ engine):
    every ground-truth image predicted, category ids that are Cityscapes label ids."""
    if not isinstance(pred, dict) or not isinstance(pred.get("annotations"), list):
        raise InputError(f"{pred_json}: top-level field 'annotations' missing or not a list")
    categories = {c["id"] for c in gt["categories"]}
    predicted = set()
    for i, ann in enumerate(pred["annotations"]):
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise InputError(f"{pred_json}: annotation {i} lacks field '{key}'")
        predicted.add(ann["image_id"])
        for s in ann["segments_info"]:
            if "id" not in s or "category_id" not in s:
                raise InputError(
                    f"{pred_json}: a segment of {ann['file_name']} lacks 'id' or 'category_id'"
                )
            if s["category_id"] not in categories:
                raise InputError(
                    f"{pred_json}: segment {s['id']} of {ann['file_name']} has category_id "
                    f"{s['category_id']}, not among the evaluated ids {sorted(categories)} "
                    "(predictions use Cityscapes label ids)"
                )
    for gt_ann in gt["annotations"]:
        if gt_ann["image_id"] not in predicted:
            raise InputError(
                f"{pred_json}: no prediction for ground-truth image_id {gt_ann['image_id']!r}"
            )


def evaluate_cityscapes_panoptic(
    gt_json: str, gt_folder: str, pred_json: str, pred_folder: str, num_workers: int = 1
) -> "OrderedDict[str, float]":
    """Cityscapes PQ of COCO-panoptic predictions, by seg2's PQ engine (Cityscapes' rules are
    panopticapi's; ``evalPanopticSemanticLabeling`` is the reference in the tests).

    Args:
        gt_json, gt_folder: ``gtFine/cityscapes_panoptic_<split>{.json,/}``.
        pred_json, pred_folder: predictions in the same format, Cityscapes label ids,
            ``image_id`` equal to the ground truth's (``<city>_<seq>_<frame>``).
        num_workers: processes for the per-image statistics.

    Returns:
        ``PQ``, ``SQ``, ``RQ`` and their ``_th`` (things) / ``_st`` (stuff) versions
        (Detectron2's keys, percent), then ``PQ-<class>``, ``SQ-<class>``, ``RQ-<class>`` for
        classes present in ground truth or prediction.
    """
    gt = read_json(gt_json, "Cityscapes panoptic ground-truth")
    if not os.path.isdir(pred_folder):
        raise InputError(f"{pred_folder}: panoptic prediction folder not found")
    _match_panoptic(gt, read_json(pred_json, "Cityscapes panoptic prediction"), gt_json, pred_json)
    res = pq_compute_files(gt_json, gt_folder, pred_json, pred_folder, num_workers=num_workers)
    # The official script lists only the classes present in ground truth or prediction.
    return OrderedDict(
        (k, v) for k, v in res.items() if "-" not in k or not np.isnan(v)
    )


def evaluate_cityscapes_folder(
    task: str,
    gt_root: str,
    pred_dir: str,
    split: str = "val",
    pred_json: Optional[str] = None,
    num_workers: int = 1,
) -> "OrderedDict[str, float]":
    """Score a folder of saved predictions against ``gt_root/gtFine/<split>``.

    Args:
        task: "instance", "semantic" or "panoptic".
        gt_root: the Cityscapes root (holding ``gtFine/``).
        pred_dir: the predictions (see the module docstring for the formats); for panoptic,
            ``pred_dir/cityscapes_panoptic_<split>.json`` and the folder of that name
            unless ``pred_json`` is given (its PNG folder is then the JSON path without
            ``.json``, or ``pred_dir`` when that does not exist).
    """
    if task not in TASKS:
        raise ValueError(f"Unknown Cityscapes task {task!r}; choose from {TASKS}")
    gt_dir = os.path.join(gt_root, "gtFine", split)
    if task == "instance":
        return evaluate_cityscapes_instances(gt_dir, pred_dir)
    if task == "semantic":
        return evaluate_cityscapes_semantic(gt_dir, pred_dir)
    gt_json, gt_folder = ensure_panoptic_gt(gt_root, split)
    pred_json = pred_json or os.path.join(pred_dir, f"cityscapes_panoptic_{split}.json")
    pred_folder = os.path.splitext(pred_json)[0]
    if not os.path.isdir(pred_folder):
        pred_folder = pred_dir
    return evaluate_cityscapes_panoptic(gt_json, gt_folder, pred_json, pred_folder, num_workers)
