#!/usr/bin/env python
"""Export a trained model to TorchScript.

    python tools/export_model.py --output DIR MODEL.WEIGHTS model_final.pth \\
        [--config-file CFG] [--format torchscript] [--sample-image IMG] [KEY VALUE ...]

A checkpoint written by seg2's training carries its config and classes, so MODEL.WEIGHTS
alone is enough (--config-file for other checkpoints); a checkpoint whose shapes do not fit
the given config is refused. Writes DIR/model.ts (with its manifest inside: input format
and size, class names and the dataset's category ids...) and DIR/seg2_export.json. The model is
traced on --sample-image (default: the first image of DATASETS.TEST[0]) after the test
resize; seg2's semantic heads then need that input size, which seg2.export.ExportedModel
pads to. Run the file with:

    from seg2.export import ExportedModel
    outputs = ExportedModel("DIR/model.ts")([image])    # image: HxWxC uint8 in INPUT.FORMAT
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

from seg2.io import InputError
from seg2.utils.cli import add_debug_argument, set_debug, user_errors

logger = logging.getLogger("seg2")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config-file",
        default="",
        metavar="FILE",
        help="the model's config (default: the one stored in MODEL.WEIGHTS)",
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--format", choices=["torchscript"], default="torchscript")
    p.add_argument("--sample-image", help="image to trace on (default: first of DATASETS.TEST[0])")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def sample_path(cfg, given: Optional[str]) -> str:
    if given:
        return given
    from detectron2.data import DatasetCatalog

    if not cfg.DATASETS.TEST:
        raise InputError("DATASETS.TEST is empty: give --sample-image to trace on")
    return DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"]


def run(args) -> int:
    import functools

    import numpy as np
    import torch
    from detectron2.data import transforms as T
    from detectron2.utils.logger import setup_logger

    from seg2.data.augmentations import build_augmentations
    from seg2.engine import AtomicCheckpointer
    from seg2.engine.defaults import setup_cfg
    from seg2.engine.trained_model import model_metadata
    from seg2.export import export_torchscript
    from seg2.inference import BatchPredictor
    from seg2.io import read_image

    args.eval_only, args.resume = True, False
    # datasets only for the default sample image (DATASETS.TEST[0])
    needed = not args.sample_image
    cfg = setup_cfg(
        _with_output(args), validate=None if needed else (), datasets=needed, test_classes=False
    )
    setup_logger(name="detectron2", abbrev_name="d2")
    try:
        _, metadata = model_metadata(cfg)
    except InputError as e:  # an export without class names still runs
        logger.warning(f"{e}; the manifest names no classes")
        metadata = None
    # built, weights loaded (a checkpoint that does not fit the config is refused), eval mode
    model = BatchPredictor(cfg, functools.partial(AtomicCheckpointer, strict_shapes=True)).model
    path = sample_path(cfg, args.sample_image)
    image = read_image(path, cfg.INPUT.FORMAT)
    aug = T.AugInput(image)
    T.AugmentationList(build_augmentations(cfg, is_train=False))(aug)
    tensor = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1))).float()
    manifest = export_torchscript(cfg, model, tensor, args.output, metadata)
    logger.info(
        f"Exported {manifest['meta_architecture']} ({manifest['kind']}) traced on {path} at "
        f"{manifest['input_size']} to {os.path.join(args.output, 'model.ts')}"
        + (" (fixed input size)" if manifest["fixed_input_size"] else " (any input size)")
    )
    return 0


def _with_output(args):
    """setup_cfg's Namespace: OUTPUT_DIR follows --output so Detectron2's log lands there."""
    args.opts = list(args.opts) + ["OUTPUT_DIR", args.output]
    return args


@user_errors(return_code=True)
def main(argv: Optional[List[str]] = None) -> int:
    args = add_debug_argument(build_parser()).parse_args(argv)
    set_debug(args.debug)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
