#!/usr/bin/env python
"""Evaluate predictions already on disk, without a model.

    python tools/evaluate.py semantic --gt-dir GT --pred-dir PRED --num-classes K \\
        [--ignore-label 255] [--class-names a b ...] [--output metrics.json]
    python tools/evaluate.py instances --gt-json G --pred-json P [--iou-types bbox segm] \\
        [--output ...]
    python tools/evaluate.py panoptic --gt-json G --gt-dir GD --pred-json P --pred-dir PD \\
        [--output ...]
    python tools/evaluate.py cityscapes-{instance,semantic,panoptic} --gt-root ROOT \\
        --pred-dir PRED [--split val] [--output ...]

Prints tables and writes the metrics as JSON under the keys ``tools/train_net.py`` uses
(``sem_seg``, ``bbox``/``segm``, ``panoptic_seg``; ``cityscapes_instance``,
``cityscapes_sem_seg``, ``cityscapes_panoptic_seg`` for the official Cityscapes scores).
Semantic runs also write ``sem_seg_confusion.{csv,png}`` next to the JSON. Bad input
stops with one line naming the file on stderr and exit status 2.
"""
import argparse
import importlib.util
import os
import sys
from typing import Dict, List, Optional

# Only the standard library at import time, so that --help answers at once; seg2 (torch,
# Detectron2) is imported when a command runs.
if importlib.util.find_spec("seg2") is None:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CITYSCAPES_KEYS = {
    "cityscapes-instance": ("instance", "cityscapes_instance"),
    "cityscapes-semantic": ("semantic", "cityscapes_sem_seg"),
    "cityscapes-panoptic": ("panoptic", "cityscapes_panoptic_seg"),
}

CITYSCAPES_HELP = {
    "cityscapes-instance": "instance AP, AP50 by cityscapesscripts",
    "cityscapes-semantic": "IoU, iIoU per class by cityscapesscripts",
    "cityscapes-panoptic": "PQ, SQ, RQ (equal to cityscapesscripts')",
}

PRED_DIR_HELP = {
    "semantic": "single-channel PNGs of class ids 0..K-1 (the ignore label = no prediction), "
    "one per --gt-dir PNG at the same relative path",
    "panoptic": "the RGB PNGs named by --pred-json (segment id = R + 256 G + 256^2 B, 0 = void)",
    "cityscapes-instance": "per image one <city>_<seq>_<frame>*.txt (searched recursively) whose "
    "lines are '<mask PNG, relative to the txt> <Cityscapes label id> <score>'; each mask an "
    "image-sized single-channel PNG, non-zero = the instance",
    "cityscapes-semantic": "per image one image-sized <city>_<seq>_<frame>*.png (searched "
    "recursively) of Cityscapes label ids (7 = road, 26 = car; not train ids)",
    "cityscapes-panoptic": "holds cityscapes_panoptic_<split>.json (COCO panoptic: image_id = "
    "<city>_<seq>_<frame>, category_id = Cityscapes label id) and the folder of the same name "
    "with its RGB PNGs (segment id = R + 256 G + 256^2 B)",
}


def build_parser() -> argparse.ArgumentParser:
    import textwrap

    epilog = "--pred-dir, per command (details: COMMAND --help):\n" + "\n".join(
        textwrap.fill(
            f"{name}: {text}", width=94, initial_indent="  ", subsequent_indent="      "
        )
        for name, text in PRED_DIR_HELP.items()
    )
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("semantic", help="label PNGs matched by file name")
    p.add_argument("--gt-dir", required=True, help="ground-truth label PNGs (searched recursively)")
    p.add_argument("--pred-dir", required=True, help=PRED_DIR_HELP["semantic"])
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--ignore-label", type=int, default=255)
    p.add_argument("--class-names", nargs="+", help="K names (or one comma-separated string)")

    p = sub.add_parser("instances", help="COCO results JSON against COCO instances JSON")
    p.add_argument("--gt-json", required=True)
    p.add_argument("--pred-json", required=True)
    p.add_argument("--iou-types", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    p.add_argument("--backend", choices=["faster_coco_eval", "pycocotools"], default=None)

    p = sub.add_parser("panoptic", help="COCO panoptic predictions (JSON + PNG folder)")
    p.add_argument("--gt-json", required=True)
    p.add_argument("--gt-dir", required=True, help="the ground-truth panoptic PNGs")
    p.add_argument("--pred-json", required=True)
    p.add_argument("--pred-dir", required=True, help=PRED_DIR_HELP["panoptic"])
    p.add_argument("--num-workers", type=int, default=None)

    for name in CITYSCAPES_KEYS:
        p = sub.add_parser(name, help=CITYSCAPES_HELP[name])
        p.add_argument(
            "--gt-root", required=True, help="Cityscapes root holding gtFine/<split>/<city>/"
        )
        p.add_argument("--pred-dir", required=True, help=PRED_DIR_HELP[name])
        p.add_argument("--split", default="val")
        if name == "cityscapes-panoptic":
            p.add_argument("--pred-json", help="default PRED/cityscapes_panoptic_<split>.json")
            p.add_argument("--num-workers", type=int, default=1)

    for p in sub.choices.values():
        p.add_argument("--output", help="metrics JSON to write (default: print only)")
        # seg2.utils.cli.add_debug_argument's flag, declared here to keep seg2 out of --help.
        p.add_argument(
            "--debug", action="store_true", help="show tracebacks of user errors (SEG2_DEBUG=1)"
        )
    return parser


def evaluate(args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    """Dispatch one subcommand; returns {task key: metrics}."""
    if args.command == "semantic":
        from seg2.evaluation.semantic import evaluate_semantic_folders

        names = args.class_names
        if names and len(names) == 1 and "," in names[0]:
            names = [n.strip() for n in names[0].split(",")]
        out_dir = os.path.dirname(os.path.abspath(args.output)) if args.output else None
        return evaluate_semantic_folders(
            args.gt_dir, args.pred_dir, args.num_classes, args.ignore_label, names, out_dir
        )
    if args.command == "instances":
        from seg2.evaluation.coco import evaluate_coco_files

        return evaluate_coco_files(args.gt_json, args.pred_json, args.iou_types, args.backend)
    if args.command == "panoptic":
        from seg2.data.check_annotations import check_coco_panoptic_json
        from seg2.data.validate import ValidationReport
        from seg2.evaluation.pq_files import pq_compute_files
        from seg2.io import InputError, read_json

        report = ValidationReport(args.gt_json)  # the ground truth's JSON, checked up front
        check_coco_panoptic_json(read_json(args.gt_json), args.gt_json, report)
        if not report.ok:
            count = len(report.problems)
            raise InputError(f"{report.format()}\n{count} problem(s) in the ground truth")

        res = pq_compute_files(
            args.gt_json, args.gt_dir, args.pred_json, args.pred_dir, args.num_workers
        )
        return {"panoptic_seg": res}
    from seg2.evaluation.cityscapes import evaluate_cityscapes_folder

    task, key = CITYSCAPES_KEYS[args.command]
    res = evaluate_cityscapes_folder(
        task,
        args.gt_root,
        args.pred_dir,
        args.split,
        pred_json=getattr(args, "pred_json", None),
        num_workers=getattr(args, "num_workers", 1),
    )
    return {key: res}


def main(argv: Optional[List[str]] = None) -> int:
    """Parse (usage errors and --help end here, without importing seg2), then score; bad
    input returns exit status 2 after one line on stderr."""
    args = build_parser().parse_args(argv)
    from seg2.utils.cli import set_debug, user_errors

    set_debug(args.debug)
    return user_errors(_run, return_code=True)(args)


def _run(args: argparse.Namespace) -> int:
    from seg2.evaluation.offline import format_results
    from seg2.io import write_json

    results = evaluate(args)
    if args.command == "panoptic":
        from seg2.evaluation.pq_files import format_pq_table

        print(format_pq_table(results["panoptic_seg"]))
    else:
        print(format_results(results))
    if args.output:
        write_json(results, args.output)
        print(f"Metrics written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
