"""Cityscapes: registration from the standard layout and the official evaluation scripts.

Scores come from ``cityscapesscripts`` itself (instance AP/AP50 from
``evalInstanceLevelSemanticLabeling``, IoU over the 19 train classes from
``evalPixelLevelSemanticLabeling``, PQ from ``evalPanopticSemanticLabeling``), called as
functions: inputs are validated here first so that bad input raises
:class:`~seg2.evaluation.offline.EvaluationInputError` naming the file instead of the
scripts' ``sys.exit``, their progress output is silenced, and nothing is written to the
working directory. Predictions are written in the formats the official scripts read, so a
run's results folder can be re-scored with ``tools/evaluate.py cityscapes-*``:

- instance: per image ``<city>_<seq>_<frame>*_pred.txt`` with lines
  ``<mask png relative to the txt> <label id> <score>``;
- semantic: per image ``<city>_<seq>_<frame>*.png`` of label ids (not train ids);
- panoptic: ``cityscapes_panoptic_<split>.json`` + folder of the same name (COCO panoptic
  format, Cityscapes label ids, ``image_id`` = ``<city>_<seq>_<frame>``).

Layout (``root`` = ``$DETECTRON2_DATASETS/cityscapes`` or ``DATASETS.SEG2.CITYSCAPES_ROOT``)::

    root/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_{labelIds,instanceIds,polygons}...
    root/gtFine/cityscapes_panoptic_{train,val}{.json,/}   (generated when missing)
"""

import fnmatch
import glob
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.cityscapes_evaluation import (
    CityscapesEvaluator,
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
)
from detectron2.utils import comm
from PIL import Image

from .offline import (
    EvaluationInputError,
    pair_error,
    read_json,
    read_label_png,
    read_rgb_png,
    run_official,
)

__all__ = [
    "cityscapes_root",
    "register_cityscapes",
    "ensure_train_id_labels",
    "ensure_panoptic_gt",
    "evaluate_cityscapes_instances",
    "evaluate_cityscapes_semantic",
    "evaluate_cityscapes_panoptic",
    "evaluate_cityscapes_folder",
    "Seg2CityscapesInstanceEvaluator",
    "Seg2CityscapesSemSegEvaluator",
    "Seg2CityscapesPanopticEvaluator",
    "build_cityscapes_evaluator",
]

logger = logging.getLogger(__name__)

TASKS = ("instance", "semantic", "panoptic")


# ------------------------------------------------------------------------------ layout


def cityscapes_root(cfg=None) -> str:
    """``cfg.DATASETS.SEG2.CITYSCAPES_ROOT`` if set, else ``$DETECTRON2_DATASETS/cityscapes``
    (``datasets/cityscapes``), Detectron2's convention."""
    root = cfg.DATASETS.SEG2.CITYSCAPES_ROOT if cfg is not None else ""
    return root or os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "cityscapes")


def _split_dirs(root: str, split: str) -> Tuple[str, str]:
    return os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split)


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise EvaluationInputError(f"{path}: Cityscapes {what} folder not found")


def ensure_train_id_labels(gt_dir: str) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to each ``*_gtFine_labelIds.png`` lacking one.

    Mapping label ids through cityscapesscripts' ``labels`` table gives the same pixels as
    its ``createTrainIdLabelImgs`` (which redraws the polygons) without needing the polygons.

    Returns:
        the number of files written.
    """
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, 255, dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < 255:
            lut[lab.id] = lab.trainId
    written = 0
    for path in sorted(glob.glob(os.path.join(gt_dir, "*", "*_gtFine_labelIds.png"))):
        out = path.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
        if os.path.isfile(out):
            continue
        ids = read_label_png(path, "Cityscapes labelIds")
        tmp = out + ".tmp.png"
        Image.fromarray(lut[np.clip(ids, 0, 255).astype(np.uint8)]).save(tmp)
        os.replace(tmp, out)
        written += 1
    return written


def ensure_panoptic_gt(root: str, split: str) -> Tuple[str, str]:
    """Panoptic ground truth ``(json, png folder)`` under ``root/gtFine``, generated from the
    ``*_instanceIds.png`` with cityscapesscripts' ``createPanopticImgs`` when missing."""
    gt_fine = os.path.join(root, "gtFine")
    gt_json = os.path.join(gt_fine, f"cityscapes_panoptic_{split}.json")
    gt_folder = os.path.join(gt_fine, f"cityscapes_panoptic_{split}")
    if not (os.path.isfile(gt_json) and os.path.isdir(gt_folder)):
        _require_dir(os.path.join(gt_fine, split), f"gtFine/{split}")
        from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

        logger.info(f"Generating Cityscapes panoptic ground truth {gt_json} ...")
        run_official(convert2panoptic, gt_fine, setNames=[split], source=gt_fine)
    return gt_json, gt_folder


# ------------------------------------------------------------------------------ registration


def _cityscapes_meta() -> Dict:
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    return _get_builtin_metadata("cityscapes")


def _panoptic_meta() -> Dict:
    """Detectron2's ``register_all_cityscapes_panoptic`` metadata: contiguous id = train id."""
    from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

    names = [k["name"] for k in CITYSCAPES_CATEGORIES]
    colors = [k["color"] for k in CITYSCAPES_CATEGORIES]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {
            k["id"]: k["trainId"] for k in CITYSCAPES_CATEGORIES if k["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            k["id"]: k["trainId"] for k in CITYSCAPES_CATEGORIES if not k["isthing"]
        },
    }


def _load_instances(image_dir: str, gt_dir: str) -> List[Dict]:
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    _require_dir(image_dir, "image")
    _require_dir(gt_dir, "gtFine")
    # From the instanceIds PNGs (the pixels the official evaluation uses); the polygon
    # path needs shapely, which Detectron2 does not require.
    return load_cityscapes_instances(image_dir, gt_dir, from_json=False, to_polygons=True)


def _load_semantic(image_dir: str, gt_dir: str) -> List[Dict]:
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    _require_dir(image_dir, "image")
    _require_dir(gt_dir, "gtFine")
    ensure_train_id_labels(gt_dir)
    return load_cityscapes_semantic(image_dir, gt_dir)


def _load_panoptic(root: str, split: str, meta: Dict) -> List[Dict]:
    from detectron2.data.datasets.cityscapes_panoptic import load_cityscapes_panoptic

    image_dir, gt_dir = _split_dirs(root, split)
    _require_dir(image_dir, "image")
    ensure_train_id_labels(gt_dir)
    gt_json, gt_folder = ensure_panoptic_gt(root, split)
    return load_cityscapes_panoptic(image_dir, gt_folder, gt_json, meta)


def register_cityscapes(
    root: Optional[str] = None, prefix: str = "cityscapes", splits: Sequence[str] = ("train", "val")
) -> List[str]:
    """Register Cityscapes (or a tree in its layout) for the three tasks.

    Names are ``{prefix}_{split}_instance_seg`` (evaluator_type ``cityscapes_instance``),
    ``{prefix}_{split}_sem_seg`` (``cityscapes_sem_seg``, train-id labels, generated from
    label ids when missing) and ``{prefix}_{split}_panoptic`` (``cityscapes_panoptic_seg``,
    ground truth generated by cityscapesscripts when missing), with Detectron2's Cityscapes
    metadata. Nothing is read until a dataset is first loaded; names already registered are
    skipped.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/`` (default
            :func:`cityscapes_root`).
        prefix: name prefix, e.g. ``"synthetic_cityscapes"``.
        splits: splits to register.

    Returns:
        the names registered by this call.
    """
    root = root or cityscapes_root()
    names = []
    pan_meta = _panoptic_meta()
    for split in splits:
        image_dir, gt_dir = _split_dirs(root, split)
        entries = [
            (
                f"{prefix}_{split}_instance_seg",
                lambda i=image_dir, g=gt_dir: _load_instances(i, g),
                dict(
                    image_dir=image_dir,
                    gt_dir=gt_dir,
                    evaluator_type="cityscapes_instance",
                    **_cityscapes_meta(),
                ),
            ),
            (
                f"{prefix}_{split}_sem_seg",
                lambda i=image_dir, g=gt_dir: _load_semantic(i, g),
                dict(
                    image_dir=image_dir,
                    gt_dir=gt_dir,
                    evaluator_type="cityscapes_sem_seg",
                    ignore_label=255,
                    **_cityscapes_meta(),
                ),
            ),
            (
                f"{prefix}_{split}_panoptic",
                lambda r=root, s=split: _load_panoptic(r, s, pan_meta),
                dict(
                    image_root=image_dir,
                    panoptic_root=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}"),
                    panoptic_json=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json"),
                    gt_dir=gt_dir,
                    evaluator_type="cityscapes_panoptic_seg",
                    ignore_label=255,
                    label_divisor=1000,
                    **pan_meta,
                ),
            ),
        ]
        for name, loader, meta in entries:
            if name in DatasetCatalog.list():
                continue
            DatasetCatalog.register(name, loader)
            MetadataCatalog.get(name).set(**meta)
            names.append(name)
    return names


# ------------------------------------------------------------------------------ scoring


def _stem_pattern(gt_path: str) -> str:
    """``<city>_<seq>_<frame>`` of a Cityscapes file name (what the official scripts match)."""
    parts = os.path.basename(gt_path).split("_")
    if len(parts) < 4:
        raise EvaluationInputError(
            f"{gt_path}: not a Cityscapes file name (<city>_<seq>_<frame>_gtFine_*.png)"
        )
    return "_".join(parts[:3])


def _find_predictions(gt_files: List[str], pred_dir: str, ext: str) -> List[str]:
    """One prediction ``<city>_<seq>_<frame>*<ext>`` under ``pred_dir`` per ground truth,
    found as the official ``getPrediction`` does; missing or ambiguous ones name the file."""
    _require_dir(pred_dir, "prediction")
    walk = [(root, files) for root, _, files in os.walk(pred_dir)]
    preds = []
    for gt in gt_files:
        pattern = _stem_pattern(gt) + "*" + ext
        found = [os.path.join(r, f) for r, files in walk for f in fnmatch.filter(files, pattern)]
        if not found:
            raise EvaluationInputError(f"{gt}: no prediction {pattern} under {pred_dir}")
        if len(found) > 1:
            raise EvaluationInputError(f"{gt}: several predictions match {pattern}: {found[:3]}")
        preds.append(found[0])
    return preds


def _gt_files(gt_dir: str, suffix: str) -> List[str]:
    _require_dir(gt_dir, "gtFine")
    files = sorted(glob.glob(os.path.join(gt_dir, "*", f"*_gtFine_{suffix}.png")))
    if not files:
        raise EvaluationInputError(f"{gt_dir}: no */*_gtFine_{suffix}.png ground truth found")
    return files


def _validate_instance_predictions(
    gt_files: List[str], txt_files: List[str], pred_dir: str
) -> None:
    from cityscapesscripts.helpers.labels import id2label

    root = os.path.abspath(pred_dir)
    for gt, txt in zip(gt_files, txt_files):
        shape = Image.open(gt).size[::-1]
        with open(txt) as f:
            lines = f.read().splitlines()
        for n, line in enumerate(lines, 1):
            fields = line.split(" ")
            where = f"{txt} line {n}"
            if len(fields) != 3:
                raise EvaluationInputError(
                    f"{where}: expected '<mask png> <label id> <score>', got {line!r}"
                )
            mask_rel, label, score = fields
            mask = os.path.abspath(os.path.join(os.path.dirname(txt), mask_rel))
            if os.path.isabs(mask_rel) or os.path.commonprefix([mask, root]) != root:
                raise EvaluationInputError(
                    f"{where}: mask path {mask_rel} must be relative and inside {pred_dir}"
                )
            try:
                label_id, _ = int(float(label)), float(score)
            except ValueError:
                raise EvaluationInputError(
                    f"{where}: label id {label!r} or score {score!r} is not a number"
                ) from None
            if label_id not in id2label:
                raise EvaluationInputError(f"{where}: unknown Cityscapes label id {label_id}")
            if not os.path.isfile(mask):
                raise EvaluationInputError(f"{where}: mask {mask} not found")
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
        ``AP50-<class>`` for those classes.
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
        prediction), ``iIoU``, ``IoU_sup``, ``iIoU_sup`` (Detectron2's keys, percent) and
        ``IoU-<class>`` for those classes.
    """
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import id2label

    gt_files = _gt_files(gt_dir, "labelIds")
    preds = _find_predictions(gt_files, pred_dir, ".png")
    max_id = max(i for i in id2label if i >= 0)
    for gt, pred in zip(gt_files, preds):
        p = read_label_png(pred, "predicted label-id")
        g_shape = Image.open(gt).size[::-1]
        if p.shape != g_shape:
            raise pair_error(gt, pred, g_shape, p.shape)
        if p.size and int(p.max()) > max_id:
            bad = sorted({int(v) for v in np.unique(p) if v > max_id})
            raise EvaluationInputError(
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
    return res


def _validate_panoptic(
    gt: Dict, pred: Dict, gt_json: str, pred_json: str, gt_folder: str, pred_folder: str
):
    E = EvaluationInputError  # noqa: N806 (many raises below)
    if not isinstance(pred, dict) or not isinstance(pred.get("annotations"), list):
        raise E(f"{pred_json}: top-level field 'annotations' missing or not a list")
    categories = {c["id"] for c in gt["categories"]}
    by_image = {}
    for i, ann in enumerate(pred["annotations"]):
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise E(f"{pred_json}: annotation {i} lacks field '{key}'")
        by_image[ann["image_id"]] = ann
    matched = []
    for gt_ann in gt["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in by_image:
            raise E(f"{pred_json}: no prediction for ground-truth image_id {image_id!r}")
        ann = by_image[image_id]
        png = os.path.join(pred_folder, ann["file_name"])
        ids = read_rgb_png(png, "predicted panoptic").astype(np.int64)
        ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
        gt_png = os.path.join(gt_folder, gt_ann["file_name"])
        if not os.path.isfile(gt_png):
            raise E(f"{gt_json}: ground-truth PNG {gt_png} not found")
        gt_shape = Image.open(gt_png).size[::-1]
        if ids.shape != gt_shape:
            raise pair_error(gt_png, png, gt_shape, ids.shape)
        json_ids = set()
        for s in ann["segments_info"]:
            if "id" not in s or "category_id" not in s:
                raise E(f"{pred_json}: a segment of {ann['file_name']} lacks 'id' or 'category_id'")
            if s["category_id"] not in categories:
                raise E(
                    f"{pred_json}: segment {s['id']} of {ann['file_name']} has category_id "
                    f"{s['category_id']}, not among the evaluated ids {sorted(categories)} "
                    "(predictions use Cityscapes label ids)"
                )
            json_ids.add(s["id"])
        png_ids = set(np.unique(ids).tolist()) - {0}
        if png_ids - json_ids:
            raise E(
                f"{png}: segment id(s) {sorted(png_ids - json_ids)[:10]} are not in {pred_json}"
            )
        if json_ids - png_ids:
            raise E(
                f"{pred_json}: segment id(s) {sorted(json_ids - png_ids)[:10]} of {ann['file_name']} are not in its PNG"
            )
        matched.append((gt_ann, ann))
    return matched


def evaluate_cityscapes_panoptic(
    gt_json: str, gt_folder: str, pred_json: str, pred_folder: str, num_workers: int = 1
) -> "OrderedDict[str, float]":
    """Official Cityscapes PQ (``evalPanopticSemanticLabeling``) of COCO-panoptic predictions.

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
    import cityscapesscripts.evaluation.evalPanopticSemanticLabeling as cs_eval

    gt = read_json(gt_json, "Cityscapes panoptic ground-truth")
    if not os.path.isdir(pred_folder):
        raise EvaluationInputError(f"{pred_folder}: panoptic prediction folder not found")
    pred = read_json(pred_json, "Cityscapes panoptic prediction")
    matched = _validate_panoptic(gt, pred, gt_json, pred_json, gt_folder, pred_folder)
    categories = {c["id"]: c for c in gt["categories"]}
    if num_workers > 1 and len(matched) > 1:
        import multiprocessing as mp

        chunks = [c for c in np.array_split(np.arange(len(matched)), num_workers) if len(c)]
        with mp.get_context("fork").Pool(len(chunks)) as pool:
            parts = pool.starmap(
                _pq_single_core_quiet,
                [
                    (i, [matched[j] for j in c], gt_folder, pred_folder, categories)
                    for i, c in enumerate(chunks)
                ],
            )
        stat = cs_eval.PQStat()
        for p in parts:
            stat += p
    else:
        stat = _pq_single_core_quiet(0, matched, gt_folder, pred_folder, categories)

    res: "OrderedDict[str, float]" = OrderedDict()
    per_class = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        try:
            avg, classes = stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:  # no category of this kind in ground truth or prediction
            avg, classes = {"pq": float("nan"), "sq": float("nan"), "rq": float("nan")}, {}
        for key in ("pq", "sq", "rq"):
            res[key.upper() + suffix] = 100 * float(avg[key])
        if isthing is None:
            per_class = classes
    for cat_id, scores in sorted(per_class.items()):
        s = stat.pq_per_cat[cat_id]
        if s.tp + s.fp + s.fn > 0:
            for key in ("pq", "sq", "rq"):
                res[f"{key.upper()}-{categories[cat_id]['name']}"] = 100 * float(scores[key])
    return res


def _pq_single_core_quiet(proc_id, pairs, gt_folder, pred_folder, categories):
    import cityscapesscripts.evaluation.evalPanopticSemanticLabeling as cs_eval

    return run_official(
        cs_eval.pq_compute_single_core,
        proc_id,
        pairs,
        gt_folder,
        pred_folder,
        categories,
        source=pred_folder,
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


# ------------------------------------------------------------------------------ evaluators


class _ResultsFolder:
    """Write predictions to ``output_dir/<subdir>`` (kept for re-scoring) when an output
    folder is given, else to a temporary folder as Detectron2 does."""

    _subdir = "cityscapes_results"

    def _init_folder(self, output_dir: Optional[str]) -> None:
        self._output_dir = output_dir

    def reset(self) -> None:
        if not self._output_dir:
            return CityscapesEvaluator.reset(self)
        self._working_dir = None
        self._temp_dir = os.path.join(self._output_dir, self._subdir)
        if comm.is_main_process() and os.path.isdir(self._temp_dir):
            shutil.rmtree(self._temp_dir)  # stale files would count as extra predictions
        comm.synchronize()
        os.makedirs(self._temp_dir, exist_ok=True)

    def _cleanup(self) -> None:
        if self._working_dir is not None:
            self._working_dir.cleanup()


class Seg2CityscapesInstanceEvaluator(_ResultsFolder, CityscapesInstanceEvaluator):
    """Detectron2's Cityscapes instance evaluator (same prediction files) scored by
    :func:`evaluate_cityscapes_instances`; returns ``{"segm": {AP, AP50, AP-<class>, ...}}``.
    Needs metadata ``thing_classes`` (Cityscapes names) and ``gt_dir``."""

    _subdir = "cityscapes_instance_results"

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        super().__init__(dataset_name)
        self._init_folder(output_dir)

    def evaluate(self):
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        res = evaluate_cityscapes_instances(self._metadata.gt_dir, self._temp_dir)
        self._cleanup()
        return OrderedDict(segm=res)


class Seg2CityscapesSemSegEvaluator(_ResultsFolder, CityscapesSemSegEvaluator):
    """Detectron2's Cityscapes semantic evaluator (argmax train id -> label-id PNGs) scored by
    :func:`evaluate_cityscapes_semantic`; returns ``{"sem_seg": {IoU, iIoU, ..., IoU-<class>}}``.
    The model's ``sem_seg`` has the 19 train-id channels."""

    _subdir = "cityscapes_semantic_results"

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        super().__init__(dataset_name)
        self._init_folder(output_dir)

    def evaluate(self):
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        res = evaluate_cityscapes_semantic(self._metadata.gt_dir, self._temp_dir)
        self._cleanup()
        return OrderedDict(sem_seg=res)


class Seg2CityscapesPanopticEvaluator(_ResultsFolder, CityscapesEvaluator):
    """Writes ``outputs[i]["panoptic_seg"]`` in the official format and scores it with
    :func:`evaluate_cityscapes_panoptic`; returns ``{"panoptic_seg": {PQ, SQ, RQ, ...}}``.

    Contiguous category ids are mapped back to Cityscapes label ids with the metadata's
    ``thing_/stuff_dataset_id_to_contiguous_id`` (as Detectron2's ``COCOPanopticEvaluator``
    does); outputs without ``segments_info`` are decoded with ``label_divisor``.
    """

    _subdir = "cityscapes_panoptic_results"

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        super().__init__(dataset_name)
        self._init_folder(output_dir)
        meta = self._metadata
        self._thing_ids = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
        self._stuff_ids = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}
        # Cityscapes' contiguous (train) ids of things and stuff do not overlap.
        self._any_ids = {**self._stuff_ids, **self._thing_ids}
        self._name = os.path.splitext(os.path.basename(meta.panoptic_json))[0]

    def reset(self) -> None:
        super().reset()
        self._annotations: List[Dict] = []
        os.makedirs(os.path.join(self._temp_dir, self._name), exist_ok=True)

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """
        Args:
            inputs: records with ``file_name`` (``<city>_<seq>_<frame>_leftImg8bit.png``).
            outputs: each with ``panoptic_seg``: ((H, W) int segment ids, 0 = void, and
                ``segments_info`` with contiguous ``category_id`` and ``isthing``; or None
                with ids ``category * label_divisor + instance`` and -1 = void).
        """
        for inp, out in zip(inputs, outputs):
            seg, segments_info = out["panoptic_seg"]
            seg = seg.cpu().numpy().astype(np.int64)
            if segments_info is None:
                divisor = self._metadata.label_divisor
                segments_info = []
                for label in np.unique(seg):
                    if label == -1:
                        continue
                    cls = int(label) // divisor
                    segments_info.append(
                        {
                            "id": int(label) + 1,
                            "category_id": cls,
                            "isthing": cls in self._thing_ids,
                        }
                    )
                seg = seg + 1
            image_id = _stem_pattern(inp["file_name"])
            file_name = image_id + "_panoptic.png"
            rgb = np.stack([seg % 256, seg // 256 % 256, seg // 65536 % 256], axis=-1).astype(
                np.uint8
            )
            Image.fromarray(rgb).save(os.path.join(self._temp_dir, self._name, file_name))
            present = set(np.unique(seg).tolist())
            segments = []
            for s in segments_info:
                if s["id"] not in present:  # fully covered by later segments
                    continue
                isthing = s.get("isthing")
                table = (
                    self._any_ids
                    if isthing is None
                    else self._thing_ids if isthing else self._stuff_ids
                )
                segments.append({"id": int(s["id"]), "category_id": int(table[s["category_id"]])})
            self._annotations.append(
                {"image_id": image_id, "file_name": file_name, "segments_info": segments}
            )

    def evaluate(self):
        comm.synchronize()
        annotations = comm.gather(self._annotations, dst=0)
        if comm.get_rank() > 0:
            return None
        import json

        pred_json = os.path.join(self._temp_dir, self._name + ".json")
        with open(pred_json, "w") as f:
            json.dump({"annotations": [a for part in annotations for a in part]}, f)
        meta = self._metadata
        gt_json, gt_folder = meta.panoptic_json, meta.panoptic_root
        if not os.path.isfile(gt_json):
            root = os.path.dirname(os.path.dirname(gt_json.rstrip("/")))
            gt_json, gt_folder = ensure_panoptic_gt(
                root, self._name.replace("cityscapes_panoptic_", "")
            )
        res = evaluate_cityscapes_panoptic(
            gt_json, gt_folder, pred_json, os.path.join(self._temp_dir, self._name)
        )
        self._cleanup()
        return OrderedDict(panoptic_seg=res)


_EVALUATORS = {
    "instance": Seg2CityscapesInstanceEvaluator,
    "semantic": Seg2CityscapesSemSegEvaluator,
    "panoptic": Seg2CityscapesPanopticEvaluator,
}


def build_cityscapes_evaluator(
    kind: str, dataset_name: str, output_dir: Optional[str] = None
) -> DatasetEvaluator:
    """The Cityscapes evaluator for ``kind`` in ("instance", "semantic", "panoptic")."""
    if kind not in _EVALUATORS:
        raise ValueError(
            f"Unknown Cityscapes evaluator {kind!r}; choose from {sorted(_EVALUATORS)}"
        )
    return _EVALUATORS[kind](dataset_name, output_dir=output_dir)
