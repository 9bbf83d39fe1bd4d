"""A trained model that describes itself. seg2's training writes into every checkpoint the
config it was trained with and its training dataset's class metadata (names, colours, the
dataset's own category ids, which classes are things and which stuff), so the file alone
rebuilds the model and names its outputs: ``tools/predict.py``, ``tools/export_model.py``
and ``tools/train_net.py --eval-only`` take ``MODEL.WEIGHTS`` without ``--config-file``.
"""

import functools
import logging
import os
import pickle
import zipfile
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog

from ..io import InputError
from ..utils.visualize import with_class_colors
from .checkpoint import CONFIG_KEY, METADATA_KEY, checkpoint_problem
from .config_check import ConfigError, merge_config_file, merge_config_text

__all__ = [
    "CLASS_METADATA_KEYS",
    "describe_training",
    "merge_base_config",
    "model_metadata",
    "read_description",
    "read_trained_config",
    "weights_in_overrides",
]

logger = logging.getLogger("seg2")

# What a checkpoint keeps of its training dataset's metadata: what the model's outputs mean.
CLASS_METADATA_KEYS = (
    "thing_classes",
    "thing_colors",
    "thing_dataset_id_to_contiguous_id",
    "stuff_classes",
    "stuff_colors",
    "stuff_dataset_id_to_contiguous_id",
    "label_divisor",
    "ignore_label",
)


def _plain(value: Any) -> Any:
    """Builtin ints, floats, strings, lists and dicts only (what ``torch.load`` reads back
    with ``weights_only``)."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy/torch scalars
        return value.item()
    return value


def describe_training(cfg: CfgNode) -> Dict[str, Any]:
    """The entries a training run adds to its checkpoints: its config (``cfg.dump()``) and
    the class metadata of ``DATASETS.TRAIN[0]`` (colours filled in as overlays draw them)."""
    meta: Dict[str, Any] = {}
    if cfg.DATASETS.TRAIN:
        values = with_class_colors(MetadataCatalog.get(cfg.DATASETS.TRAIN[0])).as_dict()
        meta = {k: _plain(values[k]) for k in CLASS_METADATA_KEYS if values.get(k) is not None}
        meta["dataset"] = cfg.DATASETS.TRAIN[0]
    return {CONFIG_KEY: cfg.dump(), METADATA_KEY: meta}


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime: float, size: int) -> Tuple[Optional[str], Optional[Dict]]:
    if not zipfile.is_zipfile(path):  # Detectron2's .pkl and other pickles: nothing stored
        return None, None
    try:  # mmap: the tensors are mapped, not read, so a large checkpoint costs little here
        data = torch.load(path, map_location="cpu", mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"MODEL.WEIGHTS {path}: unreadable checkpoint ({type(e).__name__})")
    if not isinstance(data, dict):
        return None, None
    text = data.get(CONFIG_KEY)
    meta = data.get(METADATA_KEY)
    return (
        text if isinstance(text, str) else None,
        dict(meta) if isinstance(meta, dict) and meta else None,
    )


def read_description(path: str) -> Tuple[Optional[str], Optional[Dict]]:
    """(config text, class metadata) stored in a checkpoint, each None when absent (a
    Detectron2 model-zoo file, a checkpoint not written by seg2's training, a URL)."""
    if not path or "://" in path or checkpoint_problem(path) is not None:
        return None, None
    st = os.stat(path)
    return _read(os.path.abspath(path), st.st_mtime, st.st_size)


def read_trained_config(path: str) -> Optional[str]:
    """The config text a checkpoint was trained with, None if it holds none."""
    return read_description(path)[0]


def weights_in_overrides(opts: Sequence[str]) -> str:
    """The last ``MODEL.WEIGHTS`` value of trailing ``KEY VALUE`` overrides ("" if none)."""
    weights = ""
    for key, value in zip(opts[0::2], opts[1::2]):
        if key == "MODEL.WEIGHTS":
            weights = value
    return weights


def merge_base_config(
    cfg: CfgNode, config_file: str, opts: Sequence[str], training: bool = False
) -> str:
    """Merge ``config_file``, or, without one, the config stored in the checkpoint that the
    overrides' ``MODEL.WEIGHTS`` names; returns where the config came from. The stored
    ``MODEL.DEVICE`` is the training machine's, so this machine's default stays (a
    ``MODEL.DEVICE`` override still applies)."""
    if config_file:
        merge_config_file(cfg, config_file)
        return config_file
    weights = weights_in_overrides(opts)
    if not weights:
        raise ConfigError(
            "give --config-file FILE, or MODEL.WEIGHTS of a checkpoint written by seg2's "
            "training (it carries the config it was trained with)"
        )
    if training:
        raise ConfigError(
            "training needs --config-file FILE (a checkpoint's own config is taken only by "
            "--eval-only, tools/predict.py and tools/export_model.py)"
        )
    problem = None if "://" in weights else checkpoint_problem(weights)
    if problem:
        raise ConfigError(f"MODEL.WEIGHTS: {weights}: {problem}")
    text = read_trained_config(weights)
    if text is None:
        raise ConfigError(
            f"MODEL.WEIGHTS {weights} carries no config (a Detectron2 model-zoo file, or a "
            "checkpoint not written by seg2's training): pass the config the model was "
            "trained with, --config-file FILE"
        )
    device = cfg.MODEL.DEVICE
    merge_config_text(cfg, text, f"MODEL.WEIGHTS {weights}")
    cfg.MODEL.DEVICE = device
    return weights


def model_metadata(cfg: CfgNode) -> Tuple[str, Metadata]:
    """(name, metadata) of the classes the model of ``cfg`` predicts: those stored in
    ``MODEL.WEIGHTS``, registered in Detectron2's ``MetadataCatalog`` under a name of their
    own, or else ``DATASETS.TRAIN[0]``'s. Raises :class:`InputError` when neither names any
    class."""
    weights = cfg.MODEL.WEIGHTS
    _, stored = read_description(weights)
    if stored:
        name = f"{stored.get('dataset', 'model')}@{os.path.abspath(weights)}"
        values = {k: stored[k] for k in CLASS_METADATA_KEYS if k in stored}
        for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
            if key in values:
                values[key] = {int(k): int(v) for k, v in values[key].items()}
        if name in MetadataCatalog.list():  # the file may have changed since
            MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(**values)
        return name, MetadataCatalog.get(name)
    if cfg.DATASETS.TRAIN:
        name = cfg.DATASETS.TRAIN[0]
        meta = MetadataCatalog.get(name)
        if meta.get("thing_classes", None) or meta.get("stuff_classes", None):
            return name, meta
    raise InputError(
        "the model's classes are unknown: MODEL.WEIGHTS "
        f"{weights or '(empty)'} carries none (not written by seg2's training) and "
        + (
            f"DATASETS.TRAIN[0] {cfg.DATASETS.TRAIN[0]!r} has no class names (not registered?)"
            if cfg.DATASETS.TRAIN
            else "DATASETS.TRAIN is empty"
        )
        + "; set DATASETS.TRAIN to the dataset the model was trained on"
    )
