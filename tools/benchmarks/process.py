"""What the benchmarks read about their own process: resident memory, peak memory, CPU time.
Standard library only, so that a measuring child imports nothing it would then count."""

import resource

__all__ = ["rss_mb", "peak_rss_mb", "cpu_s"]


def rss_mb() -> float:
    """Current resident set size (MiB), from /proc (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; ``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    """CPU seconds of this process and of its ended children (e.g. forked validation workers)."""
    return sum(
        r.ru_utime + r.ru_stime
        for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
