#!/usr/bin/env python
"""Check datasets the way training will read them, without training: the first step of
bringing your own data.

    python tools/check_dataset.py --config-file configs/X.yaml [--datasets NAME ...] [KEY VALUE ...]
    python tools/check_dataset.py --coco-instances JSON IMAGE_ROOT
    python tools/check_dataset.py --coco-panoptic PANOPTIC_JSON IMAGE_ROOT PANOPTIC_ROOT \\
        [INSTANCES_JSON]
    python tools/check_dataset.py --semantic IMAGE_ROOT LABEL_ROOT "class0,class1,..."

With a config, the datasets are ``--datasets`` or else ``DATASETS.TRAIN``, ``DATASETS.TEST``
and every ``DATASETS.SEG2.*`` entry; ``INPUT.SEG2.BIT_DEPTH`` and ``DATASETS.SEG2.CHECK_FILES``
apply as in training (images are read from their headers unless ``DATASETS.SEG2.CHECK_FILES
True`` decodes them fully; results are kept in ``DATASETS.SEG2.VALIDATION_CACHE_DIR``); the
``DATASETS.TRAIN`` sets are checked as training checks them (something to learn from, one list
of classes) and the ``DATASETS.TEST`` sets as scoring reads them (COCO ``area``); data given by
path is checked as both. Prints one report per dataset (every problem with its file, id, field
and value; each kind of conversion once with a count). Exit status: 0 all clean, 1 problems
found, 2 unusable input (one line on stderr, no traceback).
"""

import argparse
import os
import sys
from typing import List, Optional

try:
    import seg2  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import seg2  # noqa: F401

from seg2.io import InputError
from seg2.utils.cli import add_debug_argument, set_debug, split_overrides, user_errors

# The names data given by path is registered under.
PATH_NAMES = ("check_coco_instances", "check_coco_panoptic", "check_semantic")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="", metavar="FILE")
    parser.add_argument("--datasets", nargs="+", help="registered names to check")
    parser.add_argument("--coco-instances", nargs=2, metavar=("JSON", "IMAGE_ROOT"))
    parser.add_argument(
        "--coco-panoptic",
        nargs="+",
        metavar="PATH",
        help="PANOPTIC_JSON IMAGE_ROOT PANOPTIC_ROOT [INSTANCES_JSON]",
    )
    parser.add_argument("--semantic", nargs=3, metavar=("IMAGE_ROOT", "LABEL_ROOT", "CLASSES"))
    parser.add_argument("--max-problems", type=int, default=50, help="problems listed per dataset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return add_debug_argument(parser)


def load_cfg(args):
    from detectron2.config import get_cfg

    from seg2.config import add_seg2_config

    cfg = add_seg2_config(get_cfg())
    try:
        if args.config_file:
            cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError, OSError) as e:
        raise InputError(f"{args.config_file or 'command line'}: bad config ({e})") from None
    return cfg


def dataset_names(args, cfg) -> List[str]:
    """The datasets to check: given on the command line, else everything the config names."""
    from seg2.data.datasets import (
        register_coco_instances,
        register_coco_panoptic,
        register_semantic,
    )

    names = []
    if args.coco_instances:
        register_coco_instances("check_coco_instances", *args.coco_instances)
        names.append("check_coco_instances")
    if args.coco_panoptic:
        if len(args.coco_panoptic) not in (3, 4):
            raise InputError(
                "--coco-panoptic: give PANOPTIC_JSON IMAGE_ROOT PANOPTIC_ROOT [INSTANCES_JSON]"
            )
        pan_json, image_root, pan_root = args.coco_panoptic[:3]
        inst = args.coco_panoptic[3] if len(args.coco_panoptic) == 4 else None
        register_coco_panoptic("check_coco_panoptic", image_root, pan_root, pan_json, inst)
        names.append("check_coco_panoptic")
    if args.semantic:
        image_root, label_root, classes = args.semantic
        register_semantic(
            "check_semantic", image_root, label_root, [c.strip() for c in classes.split(",")]
        )
        names.append("check_semantic")
    if args.datasets:
        names += args.datasets
    if names:
        return names
    seg2_entries = [
        e[0]
        for key in ("COCO_INSTANCES", "COCO_PANOPTIC", "SEMANTIC")
        for e in getattr(cfg.DATASETS.SEG2, key)
    ]
    return list(dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) + seg2_entries))


def check(args) -> int:
    from detectron2.data import DatasetCatalog

    from seg2.data.datasets import register_from_config
    from seg2.data.validate import (
        check_same_classes,
        check_trainable,
        configure_validation,
        validate_datasets,
    )

    cfg = load_cfg(args)
    register_from_config(cfg)
    names = dataset_names(args, cfg)
    if not names:
        raise InputError(
            "nothing to check: give --config-file with DATASETS.*, --datasets or paths"
        )
    unknown = [n for n in names if n not in DatasetCatalog.list()]
    if unknown:
        raise InputError(
            f"--datasets: {unknown} not registered (DATASETS.SEG2.* registers data by path)"
        )
    # Data given by path is checked as data that is trained on and scored; the config says
    # which others are.
    scored = frozenset(cfg.DATASETS.TEST) | (set(PATH_NAMES) & set(names))
    trained = set(cfg.DATASETS.TRAIN) | (set(PATH_NAMES) & set(names))
    configure_validation(cfg, on_bad_sample="report", scored=scored)
    bad, unusable = 0, 0
    try:  # as training checks them, when the training datasets are among those checked
        check_same_classes([n for n in cfg.DATASETS.TRAIN if n in names])
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        unusable += 1
    for name in names:
        try:
            report = validate_datasets(None, [name])[name]
            if name in trained:  # as training checks it
                check_trainable(name, DatasetCatalog.get(name))
        except InputError as e:  # the dataset as a whole is unusable (e.g. malformed JSON)
            msg = str(e)
            if not msg.startswith(f"dataset '{name}'"):
                msg = f"dataset '{name}': {msg}"
            print(f"error: {msg}", file=sys.stderr)
            unusable += 1
            continue
        print(report.format(args.max_problems))
        bad += not report.ok
    if bad or unusable:
        print(f"\n{bad + unusable} of {len(names)} dataset(s) have problems")
        return 2 if unusable else 1
    print(f"\nall {len(names)} dataset(s) OK")
    return 0


@user_errors(return_code=True)
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(split_overrides(sys.argv[1:] if argv is None else list(argv)))
    set_debug(args.debug)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
