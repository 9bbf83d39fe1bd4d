#!/usr/bin/env python
"""The real-data nuclei example: U-Net with and without boundary weights, same budget.

    python tools/nuclei_example.py [--output-dir output/nuclei] [--max-iter N] \
        [--cache-dir datasets/cache/nuclei] [--num-threads T] [KEY VALUE ...]

Needs stardist's data (``pip install --no-deps stardist==0.9.2 tifffile==2024.8.30``).
Writes results.json, results.md and nuclei_example.png; see tools/benchmarks/nuclei.py.
"""
import argparse

import seg2  # noqa: F401  first: registers seg2's parts, imports Detectron2 quietly

# isort: split

import torch
from detectron2.utils.logger import setup_logger

from benchmarks.nuclei import run_nuclei_example


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="output/nuclei")
    parser.add_argument(
        "--max-iter", type=int, default=None, help="default: the configs' SOLVER.MAX_ITER"
    )
    parser.add_argument("--cache-dir", default=None, help="default: datasets/cache/nuclei")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both variants"
    )
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    setup_logger(name="seg2")
    setup_logger()
    return run_nuclei_example(args.output_dir, args.max_iter, args.cache_dir, args.opts)


if __name__ == "__main__":
    main()
