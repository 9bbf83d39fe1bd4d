"""Test helpers (not part of the installed library): a tiny synthetic dataset and configs
from this checkout's ``configs/``. Tests import it as ``seg2_testing`` (pytest puts
``tests/`` on ``sys.path``); ``tools/benchmarks`` are importable as ``benchmarks``."""
import functools
import os
import sys
import tempfile
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

from seg2.config import add_seg2_config
from seg2.data.synthetic import generate

__all__ = ["REPO_ROOT", "tiny_synthetic_root", "get_seg2_cfg"]

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tools"))


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
