"""Load: every evaluator over a few thousand images in one run, memory and chunk-sums.

A small synthetic split (``base`` images) is replicated to ``num_images`` image ids (new
ids, the same files), so thousands of images cost little to generate. Predictions are the
ground truth perturbed (semantic: noisy logits; instances: shifted masks, dropped and
duplicated detections; panoptic: void filled, one thing merged into stuff). One pass feeds
every image to :class:`Seg2SemSegEvaluator`, :class:`Seg2COCOEvaluator` and
:class:`Seg2PanopticEvaluator` together, recording the process's resident memory after each
chunk; then the figures are checked against chunked evaluations:

* semantic: the confusion matrices of each chunk, summed, give exactly the run's metrics;
* PQ: the per-image PQ statistics of each chunk, summed, give the run's PQ (float sums);
* COCO (AP does not add up over chunks): the run's results file re-scored offline with
  pycocotools instead of faster-coco-eval gives the same AP.

    python -c "from benchmarks.load import main; main()"   # with tools/ on sys.path
    python tools/benchmarks/load.py --num-images 3000
"""

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from .process import peak_rss_mb, rss_mb

__all__ = ["run_load_benchmark", "main"]


def _replicate(root: str, out: str, num_images: int) -> Dict[str, str]:
    """Instances and panoptic JSONs with ``num_images`` images cycling over the split's."""
    inst = json.load(open(os.path.join(root, "annotations", "instances_val.json")))
    pan = json.load(open(os.path.join(root, "annotations", "panoptic_val.json")))
    base = sorted(inst["images"], key=lambda im: im["id"])
    anns = {}
    for a in inst["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    pan_by = {a["image_id"]: a for a in pan["annotations"]}
    images, annotations, pan_anns, next_id = [], [], [], 1
    for k in range(num_images):
        src = base[k % len(base)]
        images.append(dict(src, id=k))
        for a in anns.get(src["id"], []):
            annotations.append(dict(a, id=next_id, image_id=k))
            next_id += 1
        pan_anns.append(dict(pan_by[src["id"]], image_id=k))
    paths = {
        "instances": os.path.join(out, "instances.json"),
        "panoptic": os.path.join(out, "panoptic.json"),
    }
    json.dump(dict(inst, images=images, annotations=annotations), open(paths["instances"], "w"))
    json.dump(dict(pan, images=images, annotations=pan_anns), open(paths["panoptic"], "w"))
    return paths


def _predictions(root: str, seed: int):
    """Per base image: semantic logits, Instances and (panoptic ids, segments_info)."""
    import pycocotools.mask as mask_util
    from detectron2.structures import Boxes, Instances

    from seg2.data.coco_panoptic import panoptic_metadata
    from seg2.data.synthetic.meta import CATEGORIES
    from seg2.io import read_label_png, read_panoptic_png

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    meta = panoptic_metadata(CATEGORIES)
    thing_map, stuff_map = (
        meta["thing_dataset_id_to_contiguous_id"],
        meta["stuff_dataset_id_to_contiguous_id"],
    )
    inst = json.load(open(os.path.join(root, "annotations", "instances_val.json")))
    pan = {
        a["image_id"]: a
        for a in json.load(open(os.path.join(root, "annotations", "panoptic_val.json")))[
            "annotations"
        ]
    }
    k = len(meta["stuff_classes"])
    out = {}
    for im in inst["images"]:
        h, w = im["height"], im["width"]
        stem = os.path.splitext(im["file_name"])[0]
        gt = torch.from_numpy(
            read_label_png(os.path.join(root, "semantic_val", stem + ".png")).astype(np.int64)
        )
        logits = torch.randn((k, h, w), generator=g)
        logits += 2.0 * torch.nn.functional.one_hot(gt.clamp(max=k - 1), k).permute(2, 0, 1)
        masks, classes, scores = [], [], []
        for a in inst["annotations"]:
            if a["image_id"] != im["id"] or a.get("iscrowd", 0) or rng.random() < 0.1:
                continue
            seg = a["segmentation"]
            rle = (
                mask_util.merge(mask_util.frPyObjects(seg, h, w)) if isinstance(seg, list) else seg
            )
            if isinstance(rle.get("counts"), list):
                rle = mask_util.frPyObjects(rle, h, w)
            m = np.roll(
                mask_util.decode(rle).astype(bool),
                tuple(int(v) for v in rng.integers(-2, 3, 2)),
                (0, 1),
            )
            for _ in range(1 + int(rng.random() < 0.2)):
                masks.append(m)
                classes.append(thing_map[a["category_id"]])
                scores.append(float(rng.random()))
        ins = Instances((h, w))
        ins.pred_masks = (
            torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.bool)
        )
        ins.pred_boxes = Boxes(ins.pred_masks.float().new_zeros((len(masks), 4)))
        if masks:
            from detectron2.structures import BitMasks

            ins.pred_boxes = BitMasks(ins.pred_masks).get_bounding_boxes()
        ins.scores = torch.tensor(scores, dtype=torch.float32)
        ins.pred_classes = torch.tensor(classes, dtype=torch.int64)
        p = pan[im["id"]]
        ids = read_panoptic_png(os.path.join(root, "panoptic_val", p["file_name"]))
        segs = list(p["segments_info"])
        stuff = [
            s for s in segs if s["category_id"] in stuff_map and s["category_id"] not in thing_map
        ]
        if stuff:
            ids[ids == 0] = stuff[0]["id"]
        things = [s for s in segs if s["category_id"] in thing_map and not s.get("iscrowd", 0)]
        if stuff and things and rng.random() < 0.5:
            ids[ids == things[0]["id"]] = stuff[0]["id"]
        present = set(np.unique(ids).tolist())
        info = [
            {
                "id": s["id"],
                "category_id": (
                    thing_map[s["category_id"]]
                    if s["category_id"] in thing_map
                    else stuff_map[s["category_id"]]
                ),
                "isthing": s["category_id"] in thing_map,
            }
            for s in segs
            if s["id"] in present
        ]
        out[im["file_name"]] = (logits, ins, (torch.from_numpy(ids), info))
    return out


def run_load_benchmark(
    num_images: int = 3000,
    base: int = 40,
    size: int = 64,
    chunk: int = 500,
    seed: int = 0,
    log_every: Optional[int] = None,
) -> Dict:
    """Evaluate ``num_images`` images with every evaluator in one pass (see module doc).

    Returns:
        dict with ``rows`` (per evaluator: seconds, headline figure, chunk check and its
        max abs difference in percent points), ``rss_mb`` (resident MiB after each chunk),
        ``peak_rss_mb`` and the sizes.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from seg2.data.coco_panoptic import panoptic_metadata
    from seg2.data.synthetic import generate
    from seg2.data.synthetic.meta import CATEGORIES, IGNORE_LABEL
    from seg2.evaluation.coco import evaluate_coco_files
    from seg2.evaluation.coco_evaluator import Seg2COCOEvaluator
    from seg2.evaluation.panoptic import Seg2PanopticEvaluator
    from seg2.evaluation.pq import PQStat, pq_compute_single, pq_results
    from seg2.evaluation.pq_files import panoptic_categories
    from seg2.evaluation.semantic import (
        ConfusionMatrix,
        argmax_channels,
        semantic_metrics,
    )
    from seg2.evaluation.semantic_evaluator import Seg2SemSegEvaluator
    from seg2.io import read_label_png, read_panoptic_png

    tmp = tempfile.mkdtemp(prefix="seg2-load-")
    root = os.path.join(tmp, "synthetic")
    with contextlib.redirect_stdout(io.StringIO()):
        generate(root, seed=seed, num_train=0, num_val=base, size=size)
    paths = _replicate(root, tmp, num_images)
    meta = panoptic_metadata(CATEGORIES)
    images = json.load(open(paths["instances"]))["images"]
    records = [
        {
            "file_name": os.path.join(root, "images", "val", im["file_name"]),
            "image_id": im["id"],
            "height": im["height"],
            "width": im["width"],
            "sem_seg_file_name": os.path.join(
                root, "semantic_val", os.path.splitext(im["file_name"])[0] + ".png"
            ),
        }
        for im in images
    ]
    name = f"seg2_load_{os.getpid()}_{id(records)}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        json_file=paths["instances"],
        panoptic_json=paths["panoptic"],
        panoptic_root=os.path.join(root, "panoptic_val"),
        stuff_classes=meta["stuff_classes"],
        thing_classes=meta["thing_classes"],
        ignore_label=IGNORE_LABEL,
        label_divisor=1000,
        thing_dataset_id_to_contiguous_id=meta["thing_dataset_id_to_contiguous_id"],
        stuff_dataset_id_to_contiguous_id=meta["stuff_dataset_id_to_contiguous_id"],
    )
    preds = _predictions(root, seed)
    out_dir = os.path.join(tmp, "eval")
    evaluators = {
        "semantic": Seg2SemSegEvaluator(name, distributed=False),
        "coco": Seg2COCOEvaluator(
            name, distributed=False, output_dir=os.path.join(out_dir, "coco")
        ),
        "panoptic": Seg2PanopticEvaluator(name, distributed=False, num_workers=1),
    }
    for ev in evaluators.values():
        ev.reset()
    rss = [round(rss_mb(), 1)]
    t0 = time.perf_counter()
    for i, r in enumerate(records):
        logits, ins, pan = preds[os.path.basename(r["file_name"])]
        out = {"sem_seg": logits, "instances": ins, "panoptic_seg": pan}
        for ev in evaluators.values():
            ev.process([r], [out])
        if (i + 1) % chunk == 0 or i + 1 == len(records):
            rss.append(round(rss_mb(), 1))
            if log_every:
                print(f"{i + 1} images, RSS {rss[-1]} MiB", file=sys.stderr)
    t_process = time.perf_counter() - t0
    results, seconds = {}, {}
    for key, ev in evaluators.items():
        t = time.perf_counter()
        results[key] = ev.evaluate()
        seconds[key] = time.perf_counter() - t + t_process / len(evaluators)
    rss.append(round(rss_mb(), 1))

    # semantic: per-chunk confusion matrices, summed
    k = len(meta["stuff_classes"])
    total = ConfusionMatrix(k, IGNORE_LABEL)
    gt_cache = {}
    for start in range(0, len(records), chunk):
        part = ConfusionMatrix(k, IGNORE_LABEL)
        for r in records[start : start + chunk]:
            logits = preds[os.path.basename(r["file_name"])][0]
            gt = gt_cache.setdefault(r["sem_seg_file_name"], read_label_png(r["sem_seg_file_name"]))
            part.update(argmax_channels(logits).numpy(), gt, pred_is_valid=True)
        total.merge(part)
    sem_chunks = semantic_metrics(total.matrix, meta["stuff_classes"])

    # PQ: per-image statistics of each chunk, summed chunk by chunk
    pan_gt = json.load(open(paths["panoptic"]))
    cats = panoptic_categories(pan_gt, paths["panoptic"])
    to_dataset = {v: c for c, v in meta["stuff_dataset_id_to_contiguous_id"].items()}
    thing_to_dataset = {v: c for c, v in meta["thing_dataset_id_to_contiguous_id"].items()}
    pq_total = PQStat()
    pan_ids = {}
    for start in range(0, len(records), chunk):
        part = PQStat()
        for r, a in zip(
            records[start : start + chunk], pan_gt["annotations"][start : start + chunk]
        ):
            ids, info = preds[os.path.basename(r["file_name"])][2]
            segs = [
                dict(
                    s,
                    category_id=(thing_to_dataset if s["isthing"] else to_dataset)[
                        s["category_id"]
                    ],
                )
                for s in info
            ]
            gt_ids = pan_ids.setdefault(
                a["file_name"],
                read_panoptic_png(os.path.join(root, "panoptic_val", a["file_name"])),
            )
            part += pq_compute_single(gt_ids, a["segments_info"], ids.numpy(), segs, cats)
        pq_total += part
    pq_chunks = pq_results(pq_total, cats)

    # COCO: the run's results re-scored by pycocotools
    coco_offline = evaluate_coco_files(
        paths["instances"],
        os.path.join(out_dir, "coco", "coco_instances_results.json"),
        backend="pycocotools",
    )

    def diff(a: Dict, b: Dict) -> float:
        worst = 0.0
        for key in a:
            x, y = float(a[key]), float(b[key])
            if not (math.isnan(x) and math.isnan(y)):
                worst = max(worst, abs(x - y)) if not (math.isnan(x) or math.isnan(y)) else math.inf
        return worst

    rows = [
        {
            "evaluator": "Seg2SemSegEvaluator",
            "figure": "mIoU",
            "value": results["semantic"]["sem_seg"]["mIoU"],
            "check": "sum of per-chunk confusion matrices",
            "max_abs_diff": diff(results["semantic"]["sem_seg"], sem_chunks),
            "seconds": seconds["semantic"],
        },
        {
            "evaluator": "Seg2COCOEvaluator",
            "figure": "segm AP",
            "value": results["coco"]["segm"]["AP"],
            "check": "results file re-scored by pycocotools",
            "max_abs_diff": max(
                diff(results["coco"][t], coco_offline[t]) for t in ("bbox", "segm")
            ),
            "seconds": seconds["coco"],
        },
        {
            "evaluator": "Seg2PanopticEvaluator",
            "figure": "PQ",
            "value": results["panoptic"]["panoptic_seg"]["PQ"],
            "check": "sum of per-chunk PQ statistics",
            "max_abs_diff": diff(results["panoptic"]["panoptic_seg"], pq_chunks),
            "seconds": seconds["panoptic"],
        },
    ]
    return {
        "num_images": num_images,
        "base_images": base,
        "size": size,
        "chunk": chunk,
        "rows": rows,
        "rss_mb": rss,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def format_load_table(res: Dict) -> str:
    from tabulate import tabulate

    rows = [
        [
            r["evaluator"],
            f"{r['figure']}={r['value']:.2f}",
            r["check"],
            f"{r['max_abs_diff']:.1e}",
            f"{r['seconds']:.1f}",
        ]
        for r in res["rows"]
    ]
    head = (
        f"{res['num_images']} images ({res['base_images']} distinct, {res['size']}px), "
        f"chunks of {res['chunk']}; RSS after each chunk (MiB): {res['rss_mb']}; "
        f"peak {res['peak_rss_mb']} MiB"
    )
    return (
        head
        + "\n"
        + tabulate(
            rows, headers=["evaluator", "figure", "chunk check", "max |diff|", "s"], tablefmt="pipe"
        )
    )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=3000)
    parser.add_argument("--base", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--output", help="write the figures as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = run_load_benchmark(
        args.num_images, args.base, args.size, args.chunk, log_every=args.chunk
    )
    print(format_load_table(res))
    if args.output:
        json.dump(res, open(args.output, "w"), indent=2, default=float)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main()
