"""Helpers for tests and benchmarks: a tiny synthetic dataset and small CPU configs."""
import functools
import importlib.util
import os
import tempfile
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

from ..config import add_seg2_config

__all__ = ["REPO_ROOT", "load_prepare_synthetic", "tiny_synthetic_root", "get_seg2_cfg"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_prepare_synthetic():
    """Import ``datasets/prepare_synthetic.py`` (a script, not a package module)."""
    path = REPO_ROOT / "datasets" / "prepare_synthetic.py"
    spec = importlib.util.spec_from_file_location("prepare_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def tiny_synthetic_root(num_train: int = 8, num_val: int = 4, seed: int = 0) -> str:
    """Generate (once per process and arguments) a small synthetic dataset; returns the
    folder laid out like ``datasets/synthetic`` (it holds ``images/``, ``annotations/``...)."""
    root = os.path.join(tempfile.mkdtemp(prefix="seg2-synth-"), "synthetic")
    load_prepare_synthetic().generate(root, seed=seed, num_train=num_train, num_val=num_val)
    return root


def get_seg2_cfg(config_file: str = "") -> CfgNode:
    """Detectron2's defaults + seg2's, optionally merged with a file from ``configs/``."""
    cfg = add_seg2_config(get_cfg())
    if config_file:
        cfg.merge_from_file(str(REPO_ROOT / "configs" / config_file))
    return cfg
