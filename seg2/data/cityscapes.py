"""Cityscapes as users download it: registration for the three tasks, read from the PNGs of
the standard tree (no polygon files, no shapely), and the ground truth the official scripts
need (train-id labels, panoptic PNG + JSON), derived and cached when missing.

Layout (``root`` = ``DATASETS.SEG2.CITYSCAPES_ROOT`` or ``$DETECTRON2_DATASETS/cityscapes``)::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_polygons.json     (optional)
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png (derived if missing)
    root/gtFine/cityscapes_panoptic_<split>{.json,/}                         (derived if missing)

The images are listed from ``leftImg8bit``; each needs its ``gtFine`` files. Instances come
from ``instanceIds`` (or, with ``DATASETS.SEG2.CITYSCAPES_POLYGONS``, from the polygon files
drawn as cityscapesscripts' ``json2instanceImg`` draws them), semantic targets from
``labelIds``.

Class orders (contiguous ids):

- ``{prefix}_{split}_instance_seg``: the 8 instance classes in label-id order (person, rider,
  car, truck, bus, train, motorcycle, bicycle), Detectron2's Cityscapes order;
- ``{prefix}_{split}_sem_seg``: the 19 evaluated classes in train-id order (Detectron2's);
- ``{prefix}_{split}_panoptic``: the 8 instance classes first (as above), then the 11 stuff
  classes in label-id order, seg2's panoptic convention (:func:`.coco_panoptic.panoptic_metadata`):
  ROI class ``c`` is semantic class ``c``, which is what ``Seg2PanopticRCNN``, its fusion,
  the evaluators and the overlays all assume.
"""
import contextlib
import glob
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..io import InputError, open_image, read_json, read_label_png, write_png
from .coco_panoptic import panoptic_metadata
from .parallel import worker_context

__all__ = [
    "CityscapesFrame",
    "cityscapes_root",
    "cityscapes_split_dirs",
    "cityscapes_frames",
    "cityscapes_categories",
    "instance_metadata",
    "semantic_metadata",
    "cityscapes_panoptic_metadata",
    "require_dir",
    "run_official",
    "register_cityscapes",
    "ensure_train_id_labels",
    "ensure_panoptic_gt",
    "load_cityscapes_instances",
    "load_cityscapes_semantic",
    "load_cityscapes_panoptic",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
LABEL_DIVISOR = 1000
_IMAGE_SUFFIX = "_leftImg8bit.png"
# Frames above which loading instances spreads over worker processes (as Detectron2 does).
_POOL_MIN_FRAMES = 64


def run_official(fn: Callable, *args, source: str = "", **kwargs):
    """Call an official evaluation or preparation function (cityscapesscripts) quietly.

    The scripts print progress to stdout and report bad input with ``sys.exit``; both are
    captured here, and an exit becomes :class:`~seg2.io.InputError` with the script's message
    (which names the file), prefixed by ``source``.
    """
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return fn(*args, **kwargs)
    except SystemExit:
        errors = [line for line in out.getvalue().splitlines() if "ERROR" in line]
        message = errors[-1].replace("ERROR: ", "") if errors else out.getvalue()[-500:]
        raise InputError(f"{source}: {message}" if source else message) from None


def cityscapes_root(cfg=None) -> str:
    """``cfg.DATASETS.SEG2.CITYSCAPES_ROOT`` if set, else ``$DETECTRON2_DATASETS/cityscapes``
    (``datasets/cityscapes``), Detectron2's convention."""
    root = cfg.DATASETS.SEG2.CITYSCAPES_ROOT if cfg is not None else ""
    return root or os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "cityscapes")


def cityscapes_split_dirs(root: str, split: str) -> Tuple[str, str]:
    return os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split)


def require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise InputError(f"{path}: Cityscapes {what} folder not found")


# ------------------------------------------------------------------------------ classes


def cityscapes_categories() -> List[Dict]:
    """The 19 evaluated Cityscapes classes (cityscapesscripts' ``labels``) as
    ``{id (label id), train_id, name, color, isthing}``, in label-id order."""
    from cityscapesscripts.helpers.labels import labels

    return [
        {
            "id": lab.id,
            "train_id": lab.trainId,
            "name": lab.name,
            "color": list(lab.color),
            "isthing": int(lab.hasInstances),
        }
        for lab in labels
        if not lab.ignoreInEval and 0 <= lab.trainId < IGNORE_LABEL
    ]


def instance_metadata() -> Dict:
    """The 8 instance classes in label-id order (Detectron2's Cityscapes thing order)."""
    things = [c for c in cityscapes_categories() if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
    }


def semantic_metadata() -> Dict:
    """The 19 evaluated classes in train-id order (contiguous id = train id)."""
    cats = sorted(cityscapes_categories(), key=lambda c: c["train_id"])
    return {
        "stuff_classes": [c["name"] for c in cats],
        "stuff_colors": [c["color"] for c in cats],
        "stuff_dataset_id_to_contiguous_id": {c["id"]: c["train_id"] for c in cats},
        "ignore_label": IGNORE_LABEL,
    }


def cityscapes_panoptic_metadata() -> Dict:
    """seg2's panoptic convention over Cityscapes: the 8 things, then the 11 stuff classes."""
    meta = panoptic_metadata(cityscapes_categories())
    meta.update(ignore_label=IGNORE_LABEL, label_divisor=LABEL_DIVISOR)
    return meta


def _label_lut(id_to_contiguous: Dict[int, int]) -> np.ndarray:
    """Label id -> contiguous id, every other value (void, ignored classes) -> 255."""
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for label_id, contiguous in id_to_contiguous.items():
        lut[label_id] = contiguous
    return lut


# ------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class CityscapesFrame:
    """One image of the tree and its ground-truth files (``polygons`` is None when absent)."""

    image: str
    stem: str  # <city>_<seq>_<frame>, the id the official scripts match
    label_ids: str
    instance_ids: str
    polygons: Optional[str]


def cityscapes_frames(
    root: str,
    split: str,
    need: Sequence[str] = ("labelIds", "instanceIds"),
    polygons: bool = False,
) -> List[CityscapesFrame]:
    """The images of ``root/leftImg8bit/<split>/<city>/`` with their ``gtFine`` files.

    Args:
        need: the ``*_gtFine_<kind>.png`` files each image must have.
        polygons: each image must also have its ``*_gtFine_polygons.json``.

    Raises:
        InputError: a split folder is missing or holds no images, an image has no ``gtFine``
            file at all, or lacks one of those needed (the message names the file).
    """
    image_dir, gt_dir = cityscapes_split_dirs(root, split)
    require_dir(image_dir, f"leftImg8bit/{split}")
    require_dir(gt_dir, f"gtFine/{split}")
    images = sorted(glob.glob(os.path.join(glob.escape(image_dir), "*", "*" + _IMAGE_SUFFIX)))
    if not images:
        raise InputError(f"{image_dir}: no <city>/*{_IMAGE_SUFFIX} images found")
    frames = []
    for image in images:
        city = os.path.basename(os.path.dirname(image))
        stem = os.path.basename(image)[: -len(_IMAGE_SUFFIX)]
        gt = os.path.join(gt_dir, city, stem + "_gtFine_")
        files = {k: gt + k + ".png" for k in ("labelIds", "instanceIds")}
        if not any(os.path.isfile(f) for f in files.values()):
            raise InputError(
                f"{image}: image without labels (no {gt}labelIds.png or instanceIds.png)"
            )
        for kind in need:
            if not os.path.isfile(files[kind]):
                raise InputError(f"{files[kind]}: gtFine file not found (labels of {image})")
        poly = gt + "polygons.json"
        if polygons and not os.path.isfile(poly):
            raise InputError(
                f"{poly}: polygon file not found (DATASETS.SEG2.CITYSCAPES_POLYGONS is True)"
            )
        frames.append(
            CityscapesFrame(
                image, stem, files["labelIds"], files["instanceIds"],
                poly if os.path.isfile(poly) else None,
            )
        )
    return frames


def _derive_labels(src: str, out: str, lut: np.ndarray) -> None:
    ids = read_label_png(src, "Cityscapes labelIds")
    try:
        write_png(lut[np.clip(ids, 0, 255).astype(np.uint8)], out)  # atomic: ranks may race
    except OSError as e:
        raise InputError(f"{out}: cannot write labels derived from {src} ({e})") from None


def ensure_train_id_labels(gt_dir: str) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to each ``*_gtFine_labelIds.png`` lacking one.

    Mapping label ids through cityscapesscripts' ``labels`` table gives the same pixels as
    its ``createTrainIdLabelImgs`` (which redraws the polygons) without needing the polygons.

    Returns:
        the number of files written.
    """
    lut = _label_lut(semantic_metadata()["stuff_dataset_id_to_contiguous_id"])
    written = 0
    for path in sorted(glob.glob(os.path.join(glob.escape(gt_dir), "*", "*_gtFine_labelIds.png"))):
        out = path.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
        if not os.path.isfile(out):
            _derive_labels(path, out, lut)
            written += 1
    return written


def ensure_panoptic_gt(root: str, split: str) -> Tuple[str, str]:
    """Panoptic ground truth ``(json, png folder)`` under ``root/gtFine``, generated from the
    ``*_instanceIds.png`` with cityscapesscripts' ``createPanopticImgs`` when missing."""
    gt_fine = os.path.join(root, "gtFine")
    gt_json = os.path.join(gt_fine, f"cityscapes_panoptic_{split}.json")
    gt_folder = os.path.join(gt_fine, f"cityscapes_panoptic_{split}")
    if not (os.path.isfile(gt_json) and os.path.isdir(gt_folder)):
        require_dir(os.path.join(gt_fine, split), f"gtFine/{split}")
        from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

        logger.info(f"Generating Cityscapes panoptic ground truth {gt_json} ...")
        # Written aside and moved in place, so processes loading the split at the same time
        # (one per GPU) never read a half-written file.
        try:
            work = tempfile.mkdtemp(prefix=f".cityscapes_panoptic_{split}.", dir=gt_fine)
        except OSError as e:
            raise InputError(f"{gt_fine}: cannot write the panoptic ground truth ({e})") from None
        try:
            run_official(convert2panoptic, gt_fine, work, setNames=[split], source=gt_fine)
            try:
                os.rename(os.path.join(work, os.path.basename(gt_folder)), gt_folder)
            except OSError:
                if not os.path.isdir(gt_folder):  # else another process moved its copy first
                    raise
            os.replace(os.path.join(work, os.path.basename(gt_json)), gt_json)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return gt_json, gt_folder


# ------------------------------------------------------------------------------ loaders


def _polygon_instance_ids(path: str) -> np.ndarray:
    """A ``*_gtFine_polygons.json`` drawn into instance ids exactly as cityscapesscripts'
    ``json2instanceImg`` draws it (in order, later polygons over earlier ones; no shapely)."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage

    annotation = Annotation()
    try:
        annotation.fromJsonFile(path)
        image = run_official(createInstanceImage, annotation, "ids", source=path)
    except (ValueError, KeyError, TypeError) as e:
        why = f"{type(e).__name__}: {e}"
        raise InputError(f"{path}: not a Cityscapes polygon file ({why})") from None
    return np.asarray(image)


def _instance_record(frame: CityscapesFrame, use_polygons: bool, thing_map: Dict[int, int]) -> Dict:
    """One image's dict with COCO-style ``annotations`` (RLE masks, contiguous thing ids)."""
    import pycocotools.mask as mask_util

    if use_polygons:
        inst = _polygon_instance_ids(frame.polygons)
    else:
        inst = read_label_png(frame.instance_ids, "Cityscapes instanceIds")
    annotations = []
    # Values >= 1000 are label id * 1000 + instance; smaller ones a class's crowd region.
    for value in np.unique(inst[inst >= min(thing_map)]):
        value = int(value)
        label_id = value // LABEL_DIVISOR if value >= LABEL_DIVISOR else value
        if label_id not in thing_map:
            continue
        rle = mask_util.encode(np.asfortranarray((inst == value).astype(np.uint8)))
        annotations.append(
            {
                "iscrowd": int(value < LABEL_DIVISOR),
                "category_id": thing_map[label_id],
                "segmentation": rle,
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "bbox_mode": BoxMode.XYWH_ABS,
            }
        )
    return {
        "file_name": frame.image,
        "image_id": frame.stem,
        "height": int(inst.shape[0]),
        "width": int(inst.shape[1]),
        "annotations": annotations,
    }


def _map(fn: Callable, items: List) -> List:
    if len(items) < _POOL_MIN_FRAMES:
        return [fn(x) for x in items]
    with worker_context().Pool(processes=min(8, max(2, (os.cpu_count() or 2) // 2))) as pool:
        return pool.map(fn, items, chunksize=8)


class _InstanceRecords:
    """Picklable ``frame -> dict`` for the worker processes."""

    def __init__(self, use_polygons: bool):
        self.use_polygons = use_polygons
        self.thing_map = instance_metadata()["thing_dataset_id_to_contiguous_id"]

    def __call__(self, frame: CityscapesFrame) -> Dict:
        return _instance_record(frame, self.use_polygons, self.thing_map)


def load_cityscapes_instances(root: str, split: str, polygons: bool = False) -> List[Dict]:
    """Instance dicts of a split: one per image, ``annotations`` from ``instanceIds`` (or from
    the polygon files with ``polygons``), categories in :func:`instance_metadata`'s order,
    ``image_id`` = ``<city>_<seq>_<frame>``."""
    frames = cityscapes_frames(root, split, ("instanceIds",), polygons=polygons)
    dicts = _map(_InstanceRecords(polygons), frames)
    logger.info(f"Loaded {len(dicts)} Cityscapes {split} images from {root}")
    return dicts


def _image_size(path: str) -> Tuple[int, int]:
    """(height, width) from the PNG header."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Exception:
        img = open_image(path, "Cityscapes ground truth")  # raises InputError naming it
        return img.height, img.width


def load_cityscapes_semantic(root: str, split: str) -> List[Dict]:
    """Semantic dicts of a split: ``sem_seg_file_name`` = ``*_gtFine_labelTrainIds.png``
    (19 classes in train-id order, 255 = void), derived from ``labelIds`` when missing."""
    frames = cityscapes_frames(root, split, ("labelIds",))
    lut = _label_lut(semantic_metadata()["stuff_dataset_id_to_contiguous_id"])
    dicts = []
    for f in frames:
        train_ids = f.label_ids.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
        if not os.path.isfile(train_ids):
            _derive_labels(f.label_ids, train_ids, lut)
        h, w = _image_size(f.label_ids)
        dicts.append(
            {
                "file_name": f.image,
                "image_id": f.stem,
                "height": h,
                "width": w,
                "sem_seg_file_name": train_ids,
            }
        )
    return dicts


def panoptic_semantic_dir(root: str, split: str) -> str:
    """Where the panoptic-order semantic targets of a split are cached."""
    return os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}_semantic")


def load_cityscapes_panoptic(root: str, split: str, polygons: bool = False) -> List[Dict]:
    """Panoptic dicts of a split, in :func:`cityscapes_panoptic_metadata`'s class order:
    ``pan_seg_file_name`` + ``segments_info`` (contiguous ``category_id``, ``isthing``) from
    the panoptic ground truth (generated when missing), ``sem_seg_file_name`` = labels in
    the same order derived from ``labelIds`` (cached in :func:`panoptic_semantic_dir`); with
    ``polygons`` also ``annotations`` drawn from the polygon files (else the mapper takes the
    instances from the panoptic PNG)."""
    frames = cityscapes_frames(root, split, ("labelIds", "instanceIds"), polygons=polygons)
    gt_json, gt_folder = ensure_panoptic_gt(root, split)
    data = read_json(gt_json, "Cityscapes panoptic ground-truth")
    anns = {a.get("image_id"): a for a in data.get("annotations", []) if isinstance(a, dict)}
    sizes = {im.get("id"): im for im in data.get("images", []) if isinstance(im, dict)}
    meta = cityscapes_panoptic_metadata()
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    lut = _label_lut(stuff_map)
    sem_dir = panoptic_semantic_dir(root, split)
    instances = _InstanceRecords(True) if polygons else None
    dicts = []
    for f in frames:
        ann = anns.get(f.stem)
        if ann is None or f.stem not in sizes:
            raise InputError(
                f"{gt_json}: no annotation for image {f.image} (the file predates it: delete "
                f"{gt_json} and {gt_folder}/ to regenerate them)"
            )
        sem = os.path.join(sem_dir, f.stem + "_gtFine_panopticSemIds.png")
        if not os.path.isfile(sem):
            _derive_labels(f.label_ids, sem, lut)
        segments = []
        for s in ann["segments_info"]:
            isthing = s["category_id"] in thing_map
            table = thing_map if isthing else stuff_map
            if s["category_id"] not in table:
                raise InputError(
                    f"{gt_json}: segment {s.get('id')} of {f.stem} has category_id "
                    f"{s['category_id']}, not an evaluated Cityscapes label id"
                )
            segments.append(
                dict(s, category_id=table[s["category_id"]], isthing=isthing,
                     iscrowd=int(s.get("iscrowd", 0)))
            )
        record = {
            "file_name": f.image,
            "image_id": f.stem,
            "height": int(sizes[f.stem]["height"]),
            "width": int(sizes[f.stem]["width"]),
            "pan_seg_file_name": os.path.join(gt_folder, ann["file_name"]),
            "segments_info": segments,
            "sem_seg_file_name": sem,
        }
        if instances is not None:
            record["annotations"] = instances(f)["annotations"]
        dicts.append(record)
    return dicts


# ------------------------------------------------------------------------------ registration


def register_cityscapes(
    root: Optional[str] = None,
    prefix: str = "cityscapes",
    splits: Sequence[str] = ("train", "val"),
    polygons: bool = False,
) -> List[str]:
    """Register Cityscapes (or a tree in its layout) for the three tasks.

    Names are ``{prefix}_{split}_instance_seg`` (evaluator_type ``cityscapes_instance``),
    ``{prefix}_{split}_sem_seg`` (``cityscapes_sem_seg``) and ``{prefix}_{split}_panoptic``
    (``cityscapes_panoptic_seg``: scored as panoptic, instances and semantic), with the
    class orders of the module docstring. Nothing is read until a dataset is first loaded.
    A name already registered for the same root and ``polygons`` is kept; one registered
    otherwise (an earlier config in this process) is replaced.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/`` (default
            :func:`cityscapes_root`).
        prefix: name prefix, e.g. ``"synthetic_cityscapes"``.
        splits: splits to register.
        polygons: instance masks from ``*_gtFine_polygons.json`` (then required) instead of
            ``*_gtFine_instanceIds.png`` (``DATASETS.SEG2.CITYSCAPES_POLYGONS``).

    Returns:
        the names registered by this call.
    """
    root = root or cityscapes_root()
    names = []
    inst_meta, sem_meta, pan_meta = (
        instance_metadata(), semantic_metadata(), cityscapes_panoptic_metadata()
    )
    for split in splits:
        image_dir, gt_dir = cityscapes_split_dirs(root, split)
        common = dict(
            image_root=image_dir, image_dir=image_dir, gt_dir=gt_dir,
            cityscapes_root=root, cityscapes_polygons=bool(polygons),
        )
        entries = [
            (
                f"{prefix}_{split}_instance_seg",
                lambda s=split: load_cityscapes_instances(root, s, polygons),
                dict(evaluator_type="cityscapes_instance", **inst_meta),
            ),
            (
                f"{prefix}_{split}_sem_seg",
                lambda s=split: load_cityscapes_semantic(root, s),
                dict(evaluator_type="cityscapes_sem_seg", **sem_meta),
            ),
            (
                f"{prefix}_{split}_panoptic",
                lambda s=split: load_cityscapes_panoptic(root, s, polygons),
                dict(
                    panoptic_root=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}"),
                    panoptic_json=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json"),
                    evaluator_type="cityscapes_panoptic_seg",
                    **pan_meta,
                ),
            ),
        ]
        for name, loader, meta in entries:
            if name in DatasetCatalog.list():
                old = MetadataCatalog.get(name)
                if (old.get("cityscapes_root", None), old.get("cityscapes_polygons", None)) == (
                    root, bool(polygons)
                ):
                    continue
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(name, loader)
            MetadataCatalog.get(name).set(**common, **meta)
            names.append(name)
    return names
