"""Speed of seg2's evaluators against the peers a user would otherwise run, on the same data.

One call times, on the same synthetic split (or a folder laid out like ``datasets/synthetic``):

- semantic: :class:`~seg2.evaluation.semantic_evaluator.Seg2SemSegEvaluator` vs Detectron2's
  ``SemSegEvaluator`` (reset + process every image + evaluate, same logits);
- COCO: :func:`~seg2.evaluation.coco.evaluate_coco_files` (faster-coco-eval) vs plain
  pycocotools ``COCOeval`` (box and mask AP from the same files; this is also what
  Detectron2's ``COCOEvaluator`` runs without ``detectron2._C``);
- PQ: ``seg2.evaluation.panoptic.pq_compute_files`` vs the reference algorithm as shipped in
  cityscapesscripts (panopticapi's ``pq_compute_single_core``), and vs torchmetrics'
  ``PanopticQuality`` when torchmetrics is installed (on images without crowd regions and
  with void-free predictions, where its definition coincides with COCO's).

Every row says whether the figures are identical (``max_abs_diff`` in percent points).
"""

import contextlib
import io
import json
import logging
import math
import os
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from seg2.io import read_panoptic_png
from seg2.structures.panoptic import id2rgb

__all__ = ["run_evaluator_benchmark", "format_benchmark_table"]

logger = logging.getLogger(__name__)

# Figures within this many percent points count as identical (float64 vs float32 peers
# differ in the last bits only).
_TOL = 1e-9


def _best_time(fn: Callable, repeats: int):
    """(min wall time over ``repeats`` runs, result of the last run)."""
    best, out = math.inf, None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _max_diff(a: Mapping[str, float], b: Mapping[str, float], keys: Sequence[str]) -> float:
    """Largest |a - b| over ``keys``; a NaN on one side only counts as infinite."""
    worst = 0.0
    for k in keys:
        x, y = float(a[k]), float(b[k])
        if math.isnan(x) and math.isnan(y):
            continue
        worst = max(worst, abs(x - y) if not (math.isnan(x) or math.isnan(y)) else math.inf)
    return worst


def _row(name, seg2, peer, n, t_seg2, t_peer, diff, tol=_TOL, note="") -> Dict:
    return {
        "evaluator": name,
        "seg2": seg2,
        "peer": peer,
        "images": n,
        "seg2_s": t_seg2,
        "peer_s": t_peer,
        "speedup": t_peer / t_seg2 if t_seg2 > 0 else math.inf,
        "identical": diff <= tol,
        "max_abs_diff": diff,
        "note": note,
    }


# ------------------------------------------------------------------------------ data


def _prepare_data(data_dir: Optional[str], num_images: int, size: int, seed: int) -> str:
    if data_dir:
        return data_dir
    from seg2.data.synthetic import generate

    root = os.path.join(tempfile.mkdtemp(prefix="seg2-bench-"), "synthetic")
    with contextlib.redirect_stdout(io.StringIO()):
        generate(
            root, seed=seed, num_train=0, num_val=num_images, size=size
        )
    return root


# ------------------------------------------------------------------------------ semantic


def bench_semantic(root: str, split: str, repeats: int, seed: int) -> Dict:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    from seg2.data.synthetic.meta import CATEGORIES, IGNORE_LABEL
    from seg2.evaluation.semantic_evaluator import Seg2SemSegEvaluator

    sem_dir = os.path.join(root, f"semantic_{split}")
    files = sorted(f for f in os.listdir(sem_dir) if f.endswith(".png"))
    names = [c["name"] for c in CATEGORIES]
    records = [{"file_name": f, "sem_seg_file_name": os.path.join(sem_dir, f)} for f in files]
    name = f"seg2_bench_sem_{os.getpid()}_{id(records)}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=names, ignore_label=IGNORE_LABEL)

    # Logits that are right most of the time: one-hot of the truth plus noise.
    g = torch.Generator().manual_seed(seed)
    outputs = []
    for r in records:
        gt = torch.from_numpy(np.array(Image.open(r["sem_seg_file_name"]))).long()
        logits = torch.randn((len(names),) + tuple(gt.shape), generator=g)
        logits += 2.0 * torch.nn.functional.one_hot(
            gt.clamp(max=len(names) - 1), len(names)
        ).permute(2, 0, 1)
        outputs.append({"sem_seg": logits})

    def run(evaluator):
        evaluator.reset()
        for r, o in zip(records, outputs):
            evaluator.process([r], [o])
        return evaluator.evaluate()["sem_seg"]

    logging.getLogger("detectron2.evaluation.sem_seg_evaluation").setLevel(logging.ERROR)
    peer_ev = SemSegEvaluator(name, distributed=False)
    ours_ev = Seg2SemSegEvaluator(name, distributed=False)
    t_peer, ref = _best_time(lambda: run(peer_ev), repeats)
    t_ours, ours = _best_time(lambda: run(ours_ev), repeats)
    shared = ["mIoU", "fwIoU", "mACC", "pACC"] + [f"{k}-{n}" for k in ("IoU", "ACC") for n in names]
    return _row(
        "semantic",
        "Seg2SemSegEvaluator",
        "detectron2 SemSegEvaluator",
        len(records),
        t_ours,
        t_peer,
        _max_diff(ours, ref, shared),
        note="peer also computes boundary IoU and RLE-encodes every prediction",
    )


# ------------------------------------------------------------------------------ COCO


def _perturbed_instances(gt_json: str, out_json: str, seed: int) -> None:
    """Detections from the ground truth: shifted masks, jittered boxes, random scores,
    duplicates, wrong classes and misses."""
    import pycocotools.mask as mask_util
    from pycocotools.coco import COCO

    rng = np.random.default_rng(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt_json)
    cat_ids = sorted(coco.getCatIds())
    res = []
    for ann in coco.dataset["annotations"]:
        if rng.random() < 0.1:
            continue
        m = np.roll(
            coco.annToMask(ann), tuple(int(v) for v in rng.integers(-2, 3, size=2)), axis=(0, 1)
        )
        rle = mask_util.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode("ascii")
        box = [float(v + rng.normal(0, 1.0)) for v in mask_util.toBbox(rle)]
        cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
        for _ in range(1 + int(rng.random() < 0.3)):
            res.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": cat,
                    "bbox": box,
                    "score": float(rng.random()),
                    "segmentation": rle,
                }
            )
    with open(out_json, "w") as f:
        json.dump(res, f)


def _pycocotools_files(gt_json: str, res_json: str) -> Dict[str, Dict[str, float]]:
    """What a user runs by hand: pycocotools on the two files, boxes dropped for segm."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        for iou_type in ("bbox", "segm"):
            with open(res_json) as f:
                dts = json.load(f)
            if iou_type == "segm":
                for d in dts:
                    d.pop("bbox", None)
            ev = COCOeval(gt, gt.loadRes(dts), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[iou_type] = {
                m: float(ev.stats[i] * 100 if ev.stats[i] >= 0 else "nan")
                for i, m in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl"))
            }
    return out


def bench_coco(root: str, split: str, repeats: int, seed: int) -> Dict:
    from seg2.evaluation.coco import default_backend, evaluate_coco_files

    gt_json = os.path.join(root, "annotations", f"instances_{split}.json")
    res_json = os.path.join(tempfile.mkdtemp(prefix="seg2-bench-coco-"), "results.json")
    _perturbed_instances(gt_json, res_json, seed)
    with open(gt_json) as f:
        n = len(json.load(f)["images"])
    t_peer, ref = _best_time(lambda: _pycocotools_files(gt_json, res_json), repeats)
    t_ours, ours = _best_time(lambda: evaluate_coco_files(gt_json, res_json), repeats)
    keys = list(ref["bbox"])
    diff = max(_max_diff(ours[t], ref[t], keys) for t in ("bbox", "segm"))
    return _row(
        "coco (bbox+segm)",
        f"evaluate_coco_files [{default_backend()}]",
        "pycocotools COCOeval",
        n,
        t_ours,
        t_peer,
        diff,
    )


# ------------------------------------------------------------------------------ PQ


def _ids(path: str) -> np.ndarray:
    return read_panoptic_png(path)


def _perturbed_panoptic(gt_json: str, gt_dir: str, out_dir: str, seed: int) -> Tuple[str, str]:
    """Predictions without void: GT void goes to the image's first stuff segment, one thing
    per image is merged into it, another is shifted by a pixel or two."""
    rng = np.random.default_rng(seed)
    with open(gt_json) as f:
        gt = json.load(f)
    isthing = {c["id"]: c.get("isthing", 0) for c in gt["categories"]}
    pred_dir = os.path.join(out_dir, "pred")
    os.makedirs(pred_dir, exist_ok=True)
    annotations = []
    for ann in gt["annotations"]:
        ids = _ids(os.path.join(gt_dir, ann["file_name"]))
        segs = [s for s in ann["segments_info"]]
        stuff = [s for s in segs if not isthing[s["category_id"]]]
        things = [s for s in segs if isthing[s["category_id"]] and not s.get("iscrowd", 0)]
        keep = list(segs)
        if stuff:
            base = stuff[0]["id"]
            ids[ids == 0] = base
            if things:
                victim = things[int(rng.integers(len(things)))]
                ids[ids == victim["id"]] = base
                keep = [s for s in keep if s["id"] != victim["id"]]
                things = [s for s in things if s["id"] != victim["id"]]
        if things:
            moved = things[int(rng.integers(len(things)))]
            mask = ids == moved["id"]
            shifted = np.roll(mask, tuple(int(v) for v in rng.integers(-2, 3, size=2)), axis=(0, 1))
            ids[mask & ~shifted] = stuff[0]["id"] if stuff else moved["id"]
            ids[shifted] = moved["id"]
        present = set(np.unique(ids).tolist())
        keep = [
            {"id": s["id"], "category_id": s["category_id"]} for s in keep if s["id"] in present
        ]
        Image.fromarray(id2rgb(ids)).save(os.path.join(pred_dir, ann["file_name"]))
        annotations.append(
            {"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": keep}
        )
    pred_json = os.path.join(out_dir, "pred.json")
    with open(pred_json, "w") as f:
        json.dump({"annotations": annotations}, f)
    return pred_json, pred_dir


def _reference_pq(gt_json, gt_dir, pred_json, pred_dir, image_ids=None) -> Dict[str, float]:
    """panopticapi's algorithm as shipped in cityscapesscripts, single process."""
    import cityscapesscripts.evaluation.evalPanopticSemanticLabeling as ref

    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        preds = {a["image_id"]: a for a in json.load(f)["annotations"]}
    pairs = [
        (a, preds[a["image_id"]])
        for a in gt["annotations"]
        if image_ids is None or a["image_id"] in image_ids
    ]
    categories = {c["id"]: c for c in gt["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        stat = ref.pq_compute_single_core(0, pairs, gt_dir, pred_dir, categories)
    out = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        avg, _ = stat.pq_average(categories, isthing=isthing)
        for k in ("pq", "sq", "rq"):
            out[k.upper() + suffix] = 100 * avg[k]
    return out


def _torchmetrics_pq(gt_json, gt_dir, pred_json, pred_dir, image_ids) -> Dict[str, float]:
    """torchmetrics' PanopticQuality from the same files (loading included, as a user would)."""
    from torchmetrics.detection import PanopticQuality

    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        preds = {a["image_id"]: a for a in json.load(f)["annotations"]}
    things = [c["id"] for c in gt["categories"] if c.get("isthing", 0)]
    stuffs = [c["id"] for c in gt["categories"] if not c.get("isthing", 0)]
    metric = PanopticQuality(things=things, stuffs=stuffs, return_sq_and_rq=True)
    void = 1 + max(things + stuffs)

    def pairs(ann, folder):
        ids = _ids(os.path.join(folder, ann["file_name"]))
        cat = np.full(ids.shape, void, np.int64)
        inst = np.zeros(ids.shape, np.int64)
        for s in ann["segments_info"]:
            m = ids == s["id"]
            cat[m], inst[m] = s["category_id"], s["id"]
        return torch.from_numpy(np.stack([cat, inst], axis=-1))[None]

    for ann in gt["annotations"]:
        if ann["image_id"] in image_ids:
            metric.update(pairs(preds[ann["image_id"]], pred_dir), pairs(ann, gt_dir))
    pq, sq, rq = (100 * float(v) for v in metric.compute())
    return {"PQ": pq, "SQ": sq, "RQ": rq}


def bench_panoptic(root: str, split: str, repeats: int, seed: int) -> List[Dict]:
    try:
        from seg2.evaluation.pq_files import pq_compute_files
    except ImportError as e:
        return [
            _skip(
                "panoptic PQ",
                "pq_compute_files",
                "panopticapi algorithm",
                f"seg2.evaluation.pq: {e}",
            )
        ]
    gt_json = os.path.join(root, "annotations", f"panoptic_{split}.json")
    gt_dir = os.path.join(root, f"panoptic_{split}")
    pred_json, pred_dir = _perturbed_panoptic(
        gt_json, gt_dir, tempfile.mkdtemp(prefix="seg2-bench-pq-"), seed
    )
    with open(gt_json) as f:
        gt = json.load(f)
    all_ids = [a["image_id"] for a in gt["annotations"]]
    keys = ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]

    def ours(ids=None):
        return pq_compute_files(gt_json, gt_dir, pred_json, pred_dir, num_workers=0, image_ids=ids)

    t_ours, res = _best_time(ours, repeats)
    t_ref, ref = _best_time(lambda: _reference_pq(gt_json, gt_dir, pred_json, pred_dir), repeats)
    rows = [
        _row(
            "panoptic PQ",
            "pq_compute_files (1 process)",
            "panopticapi algorithm (cityscapesscripts)",
            len(all_ids),
            t_ours,
            t_ref,
            _max_diff(res, ref, keys),
        )
    ]
    rows.append(_pq_decode_floor(gt, gt_dir, pred_json, pred_dir, ours, repeats))
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        rows.append(
            _skip(
                "panoptic PQ",
                "pq_compute_files",
                "torchmetrics PanopticQuality",
                "torchmetrics not installed",
            )
        )
        return rows
    # torchmetrics knows no crowd regions: compare on the images without any.
    plain = [
        a["image_id"]
        for a in gt["annotations"]
        if not any(s.get("iscrowd", 0) for s in a["segments_info"])
    ]
    t_ours, res = _best_time(lambda: ours(plain), repeats)
    t_tm, tm = _best_time(
        lambda: _torchmetrics_pq(gt_json, gt_dir, pred_json, pred_dir, set(plain)), repeats
    )
    rows.append(
        _row(
            "panoptic PQ",
            "pq_compute_files (1 process)",
            "torchmetrics PanopticQuality",
            len(plain),
            t_ours,
            t_tm,
            _max_diff(res, tm, ["PQ", "SQ", "RQ"]),
            tol=1e-4,  # torchmetrics accumulates in float32: ~1e-7 relative on ~50-point figures
            note="crowd-free images; predictions without void; float32 peer",
        )
    )
    return rows


def _pq_decode_floor(gt: Dict, gt_dir: str, pred_json: str, pred_dir: str, ours, repeats):
    """The PNG-decoding floor: PIL decoding both PNGs of each image, one image at a time as
    the evaluator does, and nothing else (the cheaper of copying out the 4-byte pixels or
    ``np.asarray`` of the RGB bytes). Its "speed-up" column is the evaluator's speed as a
    share of the decode-only speed (1 = no cost beyond decoding); both are timed in turns,
    best of ``repeats``. The note gives the matching alone (a ``PQBatch`` over all images,
    on maps read beforehand)."""
    from seg2.evaluation.pq import PQBatch
    from seg2.io import read_panoptic_png

    with open(pred_json) as f:
        preds = {a["image_id"]: a for a in json.load(f)["annotations"]}
    categories = {c["id"]: c for c in gt["categories"]}
    pairs = [
        (
            os.path.join(gt_dir, a["file_name"]),
            a["segments_info"],
            os.path.join(pred_dir, preds[a["image_id"]]["file_name"]),
            preds[a["image_id"]]["segments_info"],
        )
        for a in gt["annotations"]
    ]
    pngs = [path for g, _, p, _ in pairs for path in (g, p)]

    def pixels(as_words: bool):
        for path in pngs:
            with Image.open(path) as img:
                if as_words:
                    np.frombuffer(img.tobytes("raw", "RGBX"), "<u4")
                else:
                    np.asarray(img)

    runs = {"words": lambda: pixels(True), "rgb": lambda: pixels(False), "ours": ours}
    best = {k: math.inf for k in runs}
    for _ in range(max(1, repeats)):  # in turns, so that a change of machine load hits all
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    t_decode = min(best["words"], best["rgb"])
    maps = [(read_panoptic_png(g), read_panoptic_png(p)) for g, _, p, _ in pairs]

    def match():
        batch = PQBatch([(g, g_segs, p_segs) for g, g_segs, _, p_segs in pairs], categories)
        for k, (g_ids, p_ids) in enumerate(maps):
            batch.add(k, g_ids, p_ids)
        batch.scores()

    t_match, _ = _best_time(match, repeats)
    n = len(pairs)

    def ms(t):
        return f"{1000 * t / n:.2f}"

    row = _row(
        "panoptic PQ",
        "pq_compute_files (1 process)",
        "decode only (floor)",
        n,
        best["ours"],
        t_decode,
        0.0,
    )
    row.update(
        identical=None,
        note=f"per image: decode {ms(t_decode)} ms (PIL memory + 4-byte copy "
        f"{ms(best['words'])}, RGB np.asarray {ms(best['rgb'])}), overlaps and matching "
        f"{ms(t_match)} ms; speed-up = share of decode-only speed",
    )
    return row


def _skip(name: str, seg2: str, peer: str, why: str) -> Dict:
    row = _row(name, seg2, peer, 0, math.nan, math.nan, math.nan)
    row.update(identical=None, speedup=math.nan, note=f"skipped: {why}")
    return row


# ------------------------------------------------------------------------------ entry point


def run_evaluator_benchmark(
    data_dir: Optional[str] = None,
    repeats: int = 3,
    num_images: int = 50,
    size: int = 256,
    seed: int = 0,
    split: str = "val",
    include: Sequence[str] = ("semantic", "coco", "panoptic"),
) -> List[Dict]:
    """Time seg2's evaluators and their peers on the same data.

    Args:
        data_dir: a folder laid out like ``datasets/synthetic`` (``semantic_<split>/``,
            ``annotations/{instances,panoptic}_<split>.json``, ``panoptic_<split>/``); None
            generates ``num_images`` synthetic images of ``size`` px into a temporary folder.
        repeats: each timing is the best of this many runs.
        seed: of the generated data and the perturbed predictions.
        include: which comparisons to run.

    Returns:
        one dict per comparison: ``evaluator``, ``seg2``, ``peer``, ``images``, ``seg2_s``,
        ``peer_s`` (seconds), ``speedup`` (peer / seg2), ``identical`` (bool, None when
        skipped), ``max_abs_diff`` (percent points) and ``note``.
    """
    torch.set_num_threads(1)
    root = _prepare_data(data_dir, num_images, size, seed)
    rows: List[Dict] = []
    if "semantic" in include:
        rows.append(bench_semantic(root, split, repeats, seed))
    if "coco" in include:
        rows.append(bench_coco(root, split, repeats, seed))
    if "panoptic" in include:
        rows.extend(bench_panoptic(root, split, repeats, seed))
    for r in rows:
        logger.info(
            f"{r['evaluator']}: seg2 {r['seg2_s']:.3f}s vs {r['peer']} {r['peer_s']:.3f}s "
            f"(x{r['speedup']:.2f}), identical={r['identical']}"
        )
    return rows


def format_benchmark_table(rows: List[Dict]) -> str:
    """Markdown table of :func:`run_evaluator_benchmark`'s rows."""
    from tabulate import tabulate

    table = [
        [
            r["evaluator"],
            r["seg2"],
            r["peer"],
            r["images"],
            r["seg2_s"],
            r["peer_s"],
            r["speedup"],
            r["identical"],
            r["max_abs_diff"],
            r["note"],
        ]
        for r in rows
    ]
    headers = [
        "evaluator",
        "seg2",
        "peer",
        "images",
        "seg2 s",
        "peer s",
        "speed-up",
        "identical",
        "max |diff|",
        "note",
    ]
    return tabulate(table, headers=headers, tablefmt="pipe", floatfmt=".3g")


if __name__ == "__main__":
    print(format_benchmark_table(run_evaluator_benchmark()))
