#!/usr/bin/env python
"""seg2's benchmarks from the command line (the logic lives in ``tools/benchmarks/``, which is
not installed with seg2).

    # semantic heads trained under one budget on the synthetic data (table in DIR)
    python tools/benchmark.py heads --output DIR --iters N [--variants fcn8s unet ...] \
        [--ims-per-batch B] [--eval-images M] [--data-root PATH] [KEY VALUE ...]
    # evaluator speed against Detectron2 / pycocotools / panopticapi on the same data
    python tools/benchmark.py evaluators --output DIR [--repeats R] [--num-images M] ...
    # seg2's models against Detectron2's at equal backbone: speed, memory, FLOPs, peak share
    python tools/benchmark.py models --output DIR [--repeats R] [--variants V ...] [KEY VALUE ...]
    # registration + validation + train loader to the first batch against Detectron2's
    # DefaultTrainer loader on generated COCO-style data (CPU s, memory; first/later start)
    python tools/benchmark.py startup --output DIR --images 1000 10000 50000
    # both, into DIR/heads and DIR/evaluators
    python tools/benchmark.py all --output DIR --iters N
    # the make demo config trained and evaluated once per seed: mean and range of its figures
    python tools/benchmark.py seeds --output DIR [--seeds 1 2 3] [--threads 2] [KEY VALUE ...]

Trailing ``KEY VALUE`` pairs (after ``--`` when they follow ``--variants``) override every
head variant's config.
"""
import argparse
import contextlib
import json
import logging
import os
import tempfile
from typing import List, Optional, Sequence

import seg2  # noqa: F401  first: registers seg2's parts, imports Detectron2 quietly

# isort: split

from detectron2.utils.logger import setup_logger

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


def _add_models_args(p: argparse.ArgumentParser) -> None:
    from benchmarks.models import VARIANTS as MODEL_VARIANTS

    g = p.add_argument_group("models")
    g.add_argument(
        "--variants", nargs="+", default=list(MODEL_VARIANTS), choices=list(MODEL_VARIANTS),
        metavar="V", help="variants (default all: %(default)s)",
    )
    g.add_argument("--repeats", type=int, default=10, help="interleaved rounds (median)")
    g.add_argument("--ims-per-batch", type=int, default=8, help="training batch size")
    g.add_argument("--batch-test", type=int, default=4, help="images per batched inference")
    g.add_argument("--data-root", default=None, help="synthetic data (default datasets/synthetic)")
    g.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    g.add_argument("--matmul-n", type=int, default=2048, help="side of the peak matmul")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    g.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")


def _add_seeds_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("seeds")
    g.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run per seed")
    g.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    g.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")


def _add_startup_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("startup")
    g.add_argument("--images", nargs="+", type=int, default=[1000, 10000], help="dataset sizes")
    g.add_argument(
        "--check-files", action="store_true", help="seg2 decodes every image (CHECK_FILES True)"
    )
    g.add_argument(
        "--mapper-images", type=int, default=40, help="images per mapper round (0: none)"
    )
    g.add_argument("--mapper-rounds", type=int, default=5)
    g.add_argument(
        "--no-file-costs", action="store_true", help="skip the per-file costs at Cityscapes size"
    )
    g.add_argument(
        "--repeats", type=int, default=1, help="rounds per size (the table shows medians)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, adders in (
        ("heads", [_add_heads_args]),
        ("evaluators", [_add_evaluator_args]),
        ("models", [_add_models_args]),
        ("startup", [_add_startup_args]),
        ("all", [_add_evaluator_args, _add_heads_args]),
        ("seeds", [_add_seeds_args]),
    ):
        p = sub.add_parser(name)
        p.add_argument("--output", required=True, help="results folder")
        p.add_argument("--seed", type=int, default=0)
        for add in adders:
            add(p)
    return parser


def _write_results(output: str, name: str, table: str, data) -> None:
    """Print the table; write it as ``<name>_benchmark.md`` and the data as ``.json``."""
    print(table)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, f"{name}_benchmark.json"), "w") as f:
        json.dump(data, f, indent=2, default=float)
    with open(os.path.join(output, f"{name}_benchmark.md"), "w") as f:
        f.write(table + "\n")


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
    _write_results(output, "evaluators", table, rows)
    return rows


def run_models(args, output: str):
    from benchmarks.models import format_models_table, run_models_benchmark
    from benchmarks.semantic_heads import register_data

    prefix = "synthetic" if args.data_root is None else register_data(args.data_root)
    result = run_models_benchmark(
        args.variants,
        repeats=args.repeats,
        ims_per_batch=args.ims_per_batch,
        batch_test=args.batch_test,
        data_prefix=prefix,
        seed=args.seed,
        memory=not args.no_memory,
        matmul_n=args.matmul_n,
        threads=args.threads,
        opts=args.opts,
    )
    table = format_models_table(result)
    _write_results(output, "models", table, result)
    return result


def run_seeds(args, output: str):
    from benchmarks.seeds import format_seeds_table, run_seeds, summarize_seeds

    runs = run_seeds(output, args.seeds, threads=args.threads, opts=args.opts)
    summary = summarize_seeds(runs)
    table = format_seeds_table(runs, summary)
    _write_results(output, "seeds", table, {"runs": runs, "summary": summary})
    return runs


def run_startup(args, output: str):
    from benchmarks.startup import format_startup_table, run_startup_benchmark

    result = run_startup_benchmark(
        tempfile.mkdtemp(prefix="startup-"),
        args.images,
        seed=args.seed,
        check_files=args.check_files,
        mapper_images=args.mapper_images,
        mapper_rounds=args.mapper_rounds,
        cityscapes_files=not args.no_file_costs,
        repeats=args.repeats,
    )
    table = format_startup_table(result)
    _write_results(output, "startup", table, result)
    return result


def main(argv: Optional[Sequence[str]] = None) -> List:
    args = build_parser().parse_args(argv)
    if getattr(args, "opts", None) and args.opts[0] == "--":
        args.opts = args.opts[1:]
    if len(getattr(args, "opts", [])) % 2:
        build_parser().error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    setup_logger(name="seg2")
    setup_logger(name="detectron2")
    logging.getLogger("seg2").setLevel(logging.INFO)
    with _scratch():
        if args.command == "heads":
            return run_heads(args, args.output)
        if args.command == "evaluators":
            return run_evaluators(args, args.output)
        if args.command == "models":
            return run_models(args, args.output)
        if args.command == "seeds":
            return run_seeds(args, args.output)


        if args.command == "startup":
            return run_startup(args, args.output)
        return run_evaluators(args, os.path.join(args.output, "evaluators")) + run_heads(
            args, os.path.join(args.output, "heads")
        )


@contextlib.contextmanager
def _scratch():
    """Generated data, predictions and children's files go to one temporary folder, removed
    at the end (a 100-image evaluator run writes ~30 MB; the load benchmark much more)."""
    old_tempdir, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(prefix="seg2-bench-") as folder:
        tempfile.tempdir = os.environ["TMPDIR"] = folder
        try:
            yield
        finally:
            tempfile.tempdir = old_tempdir
            if old_env is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = old_env


if __name__ == "__main__":
    main()
