#!/usr/bin/env python
"""Generate the embedded synthetic segmentation dataset (no download, seconds on one core).

One scene set written in four formats that must agree pixel for pixel: COCO instances,
COCO panoptic, semantic PNGs and a Cityscapes-style tree (see ``datasets/README.md``). The
generator is ``seg2.data.synthetic``; this is its command line.

Usage::

    python datasets/prepare_synthetic.py --output datasets/synthetic [--seed 0]
        [--num-train 200] [--num-val 300] [--size 128]
"""
import argparse
from typing import Optional, Sequence

from seg2.data.synthetic import generate

__all__ = ["generate", "main"]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="output folder, e.g. datasets/synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=300)
    parser.add_argument("--size", type=int, default=128, help="image side in px (>= 64)")
    args = parser.parse_args(argv)
    try:
        generate(args.output, args.seed, args.num_train, args.num_val, args.size)
    except ValueError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
