"""Instance-id maps ((H, W) int, 0 = none): which instances touch, and the lines that part
them. Used to prepare data (U-Net's separated nuclei) and to score separation."""
import numpy as np

__all__ = ["touching_instances", "separation_lines"]


def touching_instances(instance_ids: np.ndarray) -> np.ndarray:
    """Ids of instances 8-adjacent to another instance.

    Args:
        instance_ids: (H, W) int, 0 = none.

    Returns:
        sorted 1-D array of ids.
    """
    ids = np.asarray(instance_ids)
    touching = set()
    h, w = ids.shape
    # Each unordered neighbour pair once: right, down, down-right, down-left.
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = ids[: h - dy, max(0, -dx) : w - max(0, dx)]
        b = ids[dy:, max(0, dx) : w - max(0, -dx)]
        contact = (a != b) & (a > 0) & (b > 0)
        touching.update(a[contact].tolist())
        touching.update(b[contact].tolist())
    return np.array(sorted(touching), dtype=np.int64)


def separation_lines(instance_ids: np.ndarray) -> np.ndarray:
    """Pixels to set to background so that no two instances stay 8-adjacent.

    Of every 8-adjacent pair of pixels from different instances, the one whose instance id
    is smaller is marked; removing the marked pixels leaves one-pixel background lines
    between touching instances and every other pixel as it was.

    Args:
        instance_ids: (H, W) int, 0 = none.

    Returns:
        (H, W) bool.
    """
    ids = np.asarray(instance_ids)
    h, w = ids.shape
    marked = np.zeros(ids.shape, dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ya, xa = np.s_[: h - dy], np.s_[max(0, -dx) : w - max(0, dx)]
        yb, xb = np.s_[dy:], np.s_[max(0, dx) : w - max(0, -dx)]
        a, b = ids[ya, xa], ids[yb, xb]
        contact = (a != b) & (a > 0) & (b > 0)
        marked[ya, xa] |= contact & (a < b)
        marked[yb, xb] |= contact & (b < a)
    return marked
