"""Work over the cores this process may use, in worker processes.

Validation: reading files and checking a parsed JSON are largely Python (PIL parses headers
in Python; the checks walk dicts), which holds the GIL, so the work goes to forked processes,
which inherit the parsed file and the paths instead of receiving a pickled copy, and send back
plain results. Each worker first freezes what it inherited (``gc.freeze``): its own garbage
collections then skip those objects (a parsed COCO-size JSON is millions) instead of walking
them all, which would also copy every page they lie on.

Workers (data loaders, pools) start the platform's default way, also in the training processes
that Detectron2's ``launch`` spawns: their children would otherwise be spawned as well, each
importing torch, Detectron2 and seg2 again (seconds per worker) and receiving a pickled copy of
its dataset."""

import gc
import multiprocessing
import os
import sys
from typing import Any, Callable, List, Tuple

__all__ = ["check_workers", "map_chunks", "worker_context"]


def check_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method of worker processes: the platform's default (fork on Linux), whatever
    the process itself was started with."""
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0])


_JOB: List[Any] = []  # what a forked worker inherits: (fn, job)


def _run(bounds: Tuple[int, int]):
    fn, job = _JOB[0]
    return fn(job, *bounds)


def map_chunks(fn: Callable[[Any, int, int], Any], job: Any, total: int, chunk: int) -> List:
    """``[fn(job, lo, hi)]`` for the chunks ``[lo, hi)`` of ``range(total)``, in order. With
    several chunks and cores the chunks run in forked processes (Linux; not from a daemonic
    process, which may not have children), each returning plain, picklable data. The chunks
    do not depend on the number of processes, so neither does the result."""
    ranges = [(lo, min(lo + chunk, total)) for lo in range(0, total, chunk)]
    workers = min(check_workers(), len(ranges))
    if workers < 2 or sys.platform != "linux" or multiprocessing.current_process().daemon:
        return [fn(job, lo, hi) for lo, hi in ranges]
    _JOB.append((fn, job))
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=gc.freeze) as pool:
            return pool.map(_run, ranges, chunksize=1)
    finally:
        _JOB.clear()
