"""Collecting per-rank predictions on the main process, the one step every evaluator shares."""
import itertools
from typing import List, Optional

from detectron2.utils import comm

__all__ = ["gather_on_main"]


def gather_on_main(items: List, distributed: bool = True) -> Optional[List]:
    """All ranks' ``items`` concatenated in rank order on the main process, None elsewhere
    (every rank must call it); ``items`` itself when not distributed."""
    if not distributed:
        return items
    comm.synchronize()
    parts = comm.gather(items, dst=0)
    return list(itertools.chain(*parts)) if comm.is_main_process() else None
