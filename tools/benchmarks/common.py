"""What the benchmarks share: this checkout's root and its configs."""
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

from seg2.config import add_seg2_config

__all__ = ["REPO_ROOT", "get_seg2_cfg"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def get_seg2_cfg(config_file: str = "") -> CfgNode:
    """Detectron2's defaults + seg2's, optionally merged with a file from ``configs/``."""
    cfg = add_seg2_config(get_cfg())
    if config_file:
        cfg.merge_from_file(str(REPO_ROOT / "configs" / config_file))
    return cfg
