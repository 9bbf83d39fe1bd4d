"""One image's overlap table for :class:`seg2.evaluation.pq.PQBatch`: how many pixels each
(GT id, predicted id) pair shares, from the two id maps as uint32 words.

Segments are spatially coherent, so the pixels come in few runs of one pair along the raster
(~2% of the pixels at 256 px): each run's ids are ranked in the image's small sorted id tables
and its length added to their cell. Where seg2 was built with a C compiler this is one compiled
pass (``seg2._C.pq_overlaps``, ``seg2/csrc/pq_overlaps.c``); otherwise numpy passes give the
same cells (on freshly decoded 256 px PNGs ~75 µs per image against ~15-20).
"""

import contextlib
import sys
from typing import Optional, Tuple

import numpy as np

try:  # built at install where a C compiler was found
    from .._C import pq_isa, pq_overlaps as _kernel
except ImportError:
    _kernel = pq_isa = None
if sys.byteorder != "little":  # the kernel reads the PNGs' little-endian words natively
    _kernel = None

__all__ = ["OverlapCounter", "pq_engine", "numpy_engine"]


def pq_engine() -> str:
    """What sums each image's overlaps in this process: ``"C (avx512)"`` (or avx2, sse2,
    scalar) when ``seg2._C`` was built, else ``"numpy"`` (same figures, slower)."""
    return f"C ({pq_isa()})" if _kernel is not None else "numpy"


@contextlib.contextmanager
def numpy_engine():
    """Sums overlaps on the numpy path inside the block (and in worker processes it forks),
    as where ``seg2._C`` is not built: benchmarks time it, tests check it."""
    global _kernel
    saved, _kernel = _kernel, None
    try:
        yield
    finally:
        _kernel = saved


class OverlapCounter:
    """Counts the images of a batch one after the other; the numpy path's buffers are kept
    across images of one size."""

    def __init__(self):
        self._change = self._scratch = None

    def count(
        self, g: np.ndarray, p: np.ndarray, gt_tab: np.ndarray, pred_tab: np.ndarray, width: int
    ) -> Tuple[np.ndarray, Optional[Tuple[np.ndarray, np.ndarray]]]:
        """The pixels of every cell ``gt_rank * width + pred_rank`` (flat), and the runs' GT
        and pred words for error messages (None when the kernel found every id listed).

        Args:
            g, p: (H, W) C-contiguous uint32 words, GT and predicted.
            gt_tab, pred_tab: sorted uint32 ``[id - 1, id]`` tables (:meth:`PQBatch._split`).
            width: ``len(pred_tab) + 1``.
        """
        if _kernel is not None:
            counts = np.empty((len(gt_tab) + 1) * width, dtype=np.int64)
            unknown = _kernel(g, p, gt_tab, pred_tab, counts)[1]
            return counts, (self.runs(g, p)[1:] if unknown else None)
        # The same cells in numpy: the runs, two searches, one bincount (written for few
        # calls: at 256 px their fixed cost is a third of the time).
        bounds, gv, pv = self.runs(g, p)
        starts = bounds[:-1]
        cell = gt_tab.searchsorted(gv)
        cell *= width
        cell += pred_tab.searchsorted(pv)
        return np.bincount(cell, weights=bounds[1:] - starts), (gv, pv)

    def runs(self, g: np.ndarray, p: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the runs start (and where the last one ends), and their GT and pred words."""
        g = g.reshape(-1)
        p = p.reshape(-1)
        n = g.size
        if self._change is None or self._change.size != n + 1:
            # change[i]: pixel i starts a run (the first and one-past-last always do).
            self._change = np.ones(n + 1, dtype=bool)
            self._scratch = np.empty(max(n - 1, 0), dtype=bool)
        inner = self._change[1:n]
        np.not_equal(g[1:], g[:-1], out=inner)
        np.not_equal(p[1:], p[:-1], out=self._scratch)
        inner |= self._scratch
        bounds = self._change.nonzero()[0]
        starts = bounds[:-1]
        return bounds, g.take(starts), p.take(starts)
