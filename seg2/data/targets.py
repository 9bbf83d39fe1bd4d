"""Training targets derived from annotations (not model code): U-Net's per-pixel loss
weights, built by the dataset mapper from instance masks (``INPUT.SEG2.WEIGHT_MAP``) as
Panoptic-DeepLab builds its targets in the data pipeline."""
import numpy as np
from scipy import ndimage

__all__ = ["unet_weight_map"]


def unet_weight_map(
    instance_ids: np.ndarray,
    semantic: np.ndarray,
    num_classes: int,
    ignore_label: int = 255,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> np.ndarray:
    """
    U-Net's per-pixel loss weights (Ronneberger et al. 2015, eq. 2):
    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``.

    * Class balance ``w_c``: with ``n`` non-ignored pixels, ``n_c`` of them of class ``c``
      and ``C`` classes present, ``w_c = n / (C * n_c)`` -- inverse frequency normalised so
      that the mean of ``w_c`` over the non-ignored pixels is 1 and each present class
      carries the same total weight ``n / C``.
    * Border term: ``d1``/``d2`` are the Euclidean distances (pixel centres,
      ``scipy.ndimage.distance_transform_edt``) to the nearest pixel of the nearest and
      second-nearest instance, so a pixel adjacent to an instance has distance 1. As in
      the paper (which separates touching cells by thin background lines), the term is
      added only to non-ignored pixels outside every instance (``instance_ids == 0``), and
      only when the image has at least two instances (``d2`` is undefined otherwise).
    * Ignored pixels (``semantic == ignore_label``) get weight 0.

    Args:
        instance_ids: (H, W) int, 0 = no object, k > 0 = instance k.
        semantic: (H, W) int labels in [0, num_classes) or ``ignore_label``.
        num_classes: number of semantic classes.
        ignore_label: label of ignored pixels.
        w0: border term amplitude.
        sigma: border term width in pixels.

    Returns:
        (H, W) float32 weights.
    """
    instance_ids = np.asarray(instance_ids)
    semantic = np.asarray(semantic)
    if instance_ids.ndim != 2 or instance_ids.shape != semantic.shape:
        raise ValueError(
            f"unet_weight_map: instance_ids {instance_ids.shape} and semantic "
            f"{semantic.shape} must be (H, W) arrays of the same shape"
        )
    valid = semantic != ignore_label
    labels = semantic[valid].astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"unet_weight_map: semantic labels must lie in [0, {num_classes}) or be "
            f"{ignore_label}; found {sorted(set(np.unique(labels).tolist()))}"
        )
    weights = np.zeros(semantic.shape, dtype=np.float64)
    if labels.size == 0:
        return weights.astype(np.float32)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    class_w = np.zeros(num_classes, dtype=np.float64)
    class_w[present] = labels.size / (present.sum() * counts[present])
    weights[valid] = class_w[labels]

    ids = np.unique(instance_ids[instance_ids > 0])
    if len(ids) >= 2:
        dists = np.stack([ndimage.distance_transform_edt(instance_ids != k) for k in ids])
        d1, d2 = np.partition(dists, 1, axis=0)[:2]
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
        outside = valid & (instance_ids == 0)
        weights[outside] += border[outside]
    return weights.astype(np.float32)

