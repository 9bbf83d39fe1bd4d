"""Loading weights of a model trained on other classes (fine-tuning): one summary line for
the tensors whose shapes no longer fit, instead of fvcore's warning per tensor.

fvcore's ``Checkpointer.load`` already does the right thing with such tensors (it leaves
them out of ``load_state_dict``, so they keep the model's fresh initialisation) but logs a
"Skip loading parameter ..." warning for each one: a fine-tune from a COCO model logs six
of them for the class-dependent heads alone. :func:`summarize_shape_mismatches` collects
those records with a :class:`logging.Filter` on the checkpointer's logger (public logging
API, no checkpointer internals) and logs them as one line. A record the filter cannot parse
(e.g. fvcore reworded it) passes through unchanged, so nothing is ever lost.
"""

import contextlib
import logging
import re
from collections import OrderedDict
from typing import Iterator, List, Sequence, Tuple

__all__ = ["ShapeMismatchCollector", "format_shape_mismatches", "summarize_shape_mismatches"]

# fvcore.common.checkpoint.Checkpointer's per-tensor message.
_SKIP = re.compile(
    r"Skip loading parameter '(?P<name>[^']+)' to the model due to incompatible shapes: "
    r"(?P<ckpt>\([^)]*\)) in the checkpoint but (?P<model>\([^)]*\)) in the model"
)

Mismatch = Tuple[str, str, str]  # (tensor name, shape in checkpoint, shape in model)


class ShapeMismatchCollector(logging.Filter):
    """Drops the checkpointer's per-tensor shape-mismatch warnings and keeps them in
    ``self.mismatches`` as ``(name, shape in checkpoint, shape in model)``; every other
    record passes."""

    def __init__(self):
        super().__init__()
        self.mismatches: List[Mismatch] = []

    def filter(self, record: logging.LogRecord) -> bool:
        match = _SKIP.match(record.getMessage())
        if match is None:
            return True
        self.mismatches.append((match["name"], match["ckpt"], match["model"]))
        return False


def format_shape_mismatches(mismatches: Sequence[Mismatch]) -> str:
    """
    One line naming every re-initialised tensor, grouped by module, e.g.
    ``... re-initialised: roi_heads.box_predictor.cls_score.{weight (81, 1024)->(4, 1024),
    bias (81,)->(4,)}; ...``.

    Args:
        mismatches: ``(name, shape in checkpoint, shape in model)`` triples.
    """
    modules: "OrderedDict[str, List[str]]" = OrderedDict()
    for name, ckpt, model in mismatches:
        module, _, leaf = name.rpartition(".")
        modules.setdefault(module, []).append(f"{leaf} {ckpt}->{model}")
    parts = [
        f"{m}.{{{', '.join(leaves)}}}" if m else ", ".join(leaves) for m, leaves in modules.items()
    ]
    return (
        f"Fine-tuning: {len(mismatches)} tensors in {len(modules)} modules do not fit this "
        "model's shapes (checkpoint->model), so they were not loaded and keep their fresh "
        "initialisation; every other matching tensor was loaded. Re-initialised: "
        + "; ".join(parts)
    )


@contextlib.contextmanager
def summarize_shape_mismatches(logger: logging.Logger) -> Iterator[ShapeMismatchCollector]:
    """
    Within the block, the per-tensor shape-mismatch warnings of ``logger`` (a
    checkpointer's ``.logger``) are collected instead of logged; on a normal exit they are
    logged as one warning (:func:`format_shape_mismatches`), if there were any.

    Yields:
        the :class:`ShapeMismatchCollector` (its ``mismatches`` list).
    """
    collector = ShapeMismatchCollector()
    logger.addFilter(collector)
    try:
        yield collector
    finally:
        logger.removeFilter(collector)
    if collector.mismatches:
        logger.warning(format_shape_mismatches(collector.mismatches))
