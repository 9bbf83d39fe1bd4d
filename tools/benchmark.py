#!/usr/bin/env python
"""seg2's benchmarks from the command line (the logic lives in ``seg2/benchmark/``).

    # semantic heads trained under one budget on the synthetic data (table in DIR)
    python tools/benchmark.py heads --output DIR --iters N [--variants fcn8s unet ...] \
        [--ims-per-batch B] [--eval-images M] [--data-root PATH] [KEY VALUE ...]
    # evaluator speed against Detectron2 / pycocotools / panopticapi on the same data
    python tools/benchmark.py evaluators --output DIR [--repeats R] [--num-images M] ...
    # both, into DIR/heads and DIR/evaluators
    python tools/benchmark.py all --output DIR --iters N

Trailing ``KEY VALUE`` pairs (after ``--`` when they follow ``--variants``) override every
head variant's config.
"""
import argparse
import json
import logging
import os
from typing import List, Optional, Sequence

from detectron2.utils.logger import setup_logger

import seg2  # noqa: F401  (registers heads, meta-architectures and datasets)
from benchmarks.semantic_heads import DEFAULT_VARIANTS, VARIANTS, run_heads_benchmark


def _add_heads_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("heads")
    g.add_argument("--iters", type=int, required=True, help="training iterations per variant")
    g.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        choices=list(VARIANTS),
        metavar="V",
        help=f"variants to run (default: {' '.join(DEFAULT_VARIANTS)}; also: "
        f"{' '.join(v for v in VARIANTS if v not in DEFAULT_VARIANTS)})",
    )
    g.add_argument("--data-root", default=None, help="synthetic data (default datasets/synthetic)")
    g.add_argument("--ims-per-batch", type=int, default=None, help="override SOLVER.IMS_PER_BATCH")
    g.add_argument(
        "--eval-images", type=int, default=None, help="score the first N val images only"
    )
    g.add_argument("--no-isolate", action="store_true", help="run all variants in this process")
    g.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")


def _add_evaluator_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluators")
    g.add_argument(
        "--data-dir", default=None, help="folder like datasets/synthetic (default: generated)"
    )
    g.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    g.add_argument("--num-images", type=int, default=50, help="images generated without --data-dir")
    g.add_argument("--size", type=int, default=256, help="side of generated images")
    g.add_argument("--split", default="val")
    g.add_argument("--include", nargs="+", default=["semantic", "coco", "panoptic"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, adders in (
        ("heads", [_add_heads_args]),
        ("evaluators", [_add_evaluator_args]),
        ("all", [_add_evaluator_args, _add_heads_args]),
    ):
        p = sub.add_parser(name)
        p.add_argument("--output", required=True, help="results folder")
        p.add_argument("--seed", type=int, default=0)
        for add in adders:
            add(p)
    return parser


def run_heads(args, output: str):
    return run_heads_benchmark(
        output,
        args.iters,
        args.variants,
        args.data_root,
        ims_per_batch=args.ims_per_batch,
        seed=args.seed,
        eval_images=args.eval_images,
        isolate=not args.no_isolate,
        opts=args.opts,
    )


def run_evaluators(args, output: str):
    from benchmarks.evaluators import format_benchmark_table, run_evaluator_benchmark

    rows = run_evaluator_benchmark(
        data_dir=args.data_dir,
        repeats=args.repeats,
        num_images=args.num_images,
        size=args.size,
        seed=args.seed,
        split=args.split,
        include=args.include,
    )
    table = format_benchmark_table(rows)
    print(table)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "evaluators_benchmark.json"), "w") as f:
        json.dump(rows, f, indent=2, default=float)
    with open(os.path.join(output, "evaluators_benchmark.md"), "w") as f:
        f.write(table + "\n")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List:
    args = build_parser().parse_args(argv)
    if getattr(args, "opts", None) and args.opts[0] == "--":
        args.opts = args.opts[1:]
    if len(getattr(args, "opts", [])) % 2:
        build_parser().error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    setup_logger(name="seg2")
    setup_logger(name="detectron2")
    logging.getLogger("seg2").setLevel(logging.INFO)
    if args.command == "heads":
        return run_heads(args, args.output)
    if args.command == "evaluators":
        return run_evaluators(args, args.output)
    return run_evaluators(args, os.path.join(args.output, "evaluators")) + run_heads(
        args, os.path.join(args.output, "heads")
    )


if __name__ == "__main__":
    main()
