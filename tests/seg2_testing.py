"""Test helpers (not part of the installed library): a tiny synthetic dataset, configs from
this checkout's ``configs/``, and the tools run as processes (``tool_runs``). Tests import it
as ``seg2_testing`` (pytest puts ``tests/`` on ``sys.path``); ``tools/benchmarks`` are
importable as ``benchmarks``."""
import contextlib
import functools
import os
import sys
import tempfile

import torch
from detectron2.config import CfgNode, get_cfg

from seg2.config import add_seg2_config
from seg2.data.synthetic import generate
from tool_runs import REPO_ROOT, run_tool, start_tool

__all__ = [
    "REPO_ROOT",
    "SUBPROCESS_THREADS",
    "subprocess_env",
    "subprocess_threads",
    "tiny_synthetic_root",
    "get_seg2_cfg",
    "run_tool",
    "start_tool",
]

if str(REPO_ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tools"))


# Threads of every tool a test starts as a subprocess. Sums in convolutions and matmuls round
# differently at different thread counts (and batch sizes): a mask pixel near 0.5 or a tied
# argmax can then flip. So a result made in the test process that is compared exactly with a
# subprocess's is made under subprocess_threads(), at the same count, on the same batch size.
SUBPROCESS_THREADS = 1


def subprocess_env(**extra: str) -> dict:
    """The test process's environment for a tool run as a subprocess, at
    ``SUBPROCESS_THREADS`` threads per process."""
    return dict(os.environ, OMP_NUM_THREADS=str(SUBPROCESS_THREADS), **extra)


@contextlib.contextmanager
def subprocess_threads(threads: int = SUBPROCESS_THREADS):
    """Run a block of the test process at the subprocesses' thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def tiny_synthetic_root(num_train: int = 8, num_val: int = 4, seed: int = 0) -> str:
    """Generate (once per process and arguments) a small synthetic dataset; returns the
    folder laid out like ``datasets/synthetic`` (it holds ``images/``, ``annotations/``...)."""
    root = os.path.join(tempfile.mkdtemp(prefix="seg2-synth-"), "synthetic")
    generate(root, seed=seed, num_train=num_train, num_val=num_val)
    return root


def get_seg2_cfg(config_file: str = "") -> CfgNode:
    """Detectron2's defaults + seg2's, optionally merged with a file from ``configs/``."""
    cfg = add_seg2_config(get_cfg())
    if config_file:
        cfg.merge_from_file(str(REPO_ROOT / "configs" / config_file))
    return cfg
