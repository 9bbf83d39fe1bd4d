#!/usr/bin/env python
"""Run a trained model on your own images (files, folders, globs) and videos.

    python tools/predict.py --input PATH [PATH ...] --output DIR MODEL.WEIGHTS model_final.pth \\
        [--config-file CFG] [--video-input FILE] [--confidence-threshold T] [--batch-size N] \\
        [--image-ids COCO_JSON] [KEY VALUE ...]

A checkpoint written by seg2's training carries its config and classes, so MODEL.WEIGHTS
alone is enough; --config-file is needed for other checkpoints (a Detectron2 model-zoo
.pkl), and a checkpoint whose shapes do not fit the given config is refused.

Writes under DIR, per image <stem>: vis/<stem>.jpg (overlay), and for what the model
predicts sem_seg/<stem>.png, panoptic/<stem>.png + panoptic.json, instances.json, plus
images.json (image id -> input file); a video becomes DIR/<video stem>.mp4. Class names,
colours and category ids come from the checkpoint (else from DATASETS.TRAIN[0]).
Unreadable images are skipped, listed at the end and make the exit status 1; bad arguments
stop with one line on stderr and status 2.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

try:
    import seg2  # noqa: F401  (registers heads, meta-architectures and datasets)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import seg2  # noqa: F401

from seg2.io import InputError, output_folder_problem
from seg2.utils.cli import add_debug_argument, set_debug, split_overrides, user_errors

logger = logging.getLogger("seg2")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config-file",
        default="",
        metavar="FILE",
        help="the model's config (default: the one stored in MODEL.WEIGHTS)",
    )
    p.add_argument("--input", nargs="+", default=[], help="image files, folders or globs")
    p.add_argument("--video-input", help="a video file OpenCV can read")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="minimum instance score, set on the model as Detectron2's demo does "
        "(default: the config's; overlays draw scores >= 0.5 then)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default TEST.SEG2.PREDICT_BATCH_SIZE)",
    )
    p.add_argument(
        "--image-ids",
        metavar="COCO_JSON",
        help="take image ids from this COCO (or COCO panoptic) JSON, matched by "
        "file name, so results score against it (default 1..N)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def setup(args):
    from detectron2.utils.logger import setup_logger

    from seg2.engine.defaults import build_cfg

    setup_logger(name="seg2", abbrev_name="seg2")
    setup_logger(name="detectron2", abbrev_name="d2")
    args.eval_only, args.resume = True, False
    # the images come from --input and results go to --output: no dataset or OUTPUT_DIR needed
    cfg = build_cfg(args, datasets=False, output_dir=False, require_weights=False)
    t = args.confidence_threshold
    if t is not None:  # the same keys as Detectron2's demo, plus seg2's fusion threshold
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = t
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = t
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = t
        cfg.MODEL.SEG2.FUSION.INSTANCES_SCORE_THRESH = t
    cfg.freeze()
    return cfg


@user_errors(return_code=True)
def main(argv: Optional[List[str]] = None) -> int:
    argv = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = add_debug_argument(build_parser()).parse_args(argv)
    set_debug(args.debug)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    return run(args)


def run(args) -> int:
    import functools

    import tqdm

    from seg2.engine import AtomicCheckpointer
    from seg2.engine.trained_model import model_metadata
    from seg2.inference import (
        BatchPredictor,
        assign_image_ids,
        expand_inputs,
        predict_images,
        unique_stems,
    )
    from seg2.inference.video import annotate_video
    from seg2.utils.visualize import with_class_colors

    if not args.input and not args.video_input:
        raise InputError("give --input and/or --video-input")
    if args.video_input and not os.path.isfile(args.video_input):
        raise InputError(f"{args.video_input}: video file not found (--video-input)")
    problem = output_folder_problem(args.output)
    if problem:
        raise InputError(f"--output {args.output}: {problem}")
    cfg = setup(args)
    name, metadata = model_metadata(cfg)
    logger.info(f"Classes and category ids of {name}")
    metadata = with_class_colors(metadata)
    batch_size = args.batch_size or cfg.TEST.SEG2.PREDICT_BATCH_SIZE
    score_thresh = 0.5 if args.confidence_threshold is None else args.confidence_threshold
    paths, missing = expand_inputs(args.input) if args.input else ([], [])
    stems, ids = unique_stems(paths), assign_image_ids(paths, args.image_ids)
    # strict: a checkpoint whose shapes do not fit the config is refused, not half-loaded
    predictor = BatchPredictor(cfg, functools.partial(AtomicCheckpointer, strict_shapes=True))
    os.makedirs(args.output, exist_ok=True)
    status = 0
    if paths:
        with tqdm.tqdm(total=len(paths), unit="img", desc="predict") as bar:
            summary = predict_images(
                predictor,
                paths,
                stems,
                ids,
                args.output,
                metadata,
                batch_size,
                score_thresh,
                bar.update,
            )
        for pattern in missing:
            summary.skipped.append((pattern, "--input matches no file"))
        logger.info("Summary: " + summary.format())
        logger.info(
            f"Results in {args.output}: " + ", ".join(os.path.basename(p) for p in summary.written)
        )
        status = 1 if summary.skipped else 0
    if args.video_input:
        with tqdm.tqdm(unit="frame", desc="video") as bar:
            path = annotate_video(
                predictor,
                args.video_input,
                args.output,
                metadata,
                batch_size,
                score_thresh,
                bar.update,
            )
        logger.info(f"Annotated video: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
