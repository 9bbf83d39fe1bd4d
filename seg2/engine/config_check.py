"""Config problems found before anything is built, each as one :class:`ConfigError` line
that names where the value came from and what would be valid.

- :func:`merge_config_file` / :func:`merge_config_list`: Detectron2's merges, with unknown
  keys, type mismatches and YAML errors traced to the file of the ``_BASE_`` chain that holds
  the key (or to the command line), plus the nearest valid key.
- :func:`check_config`: registry names (nearest registered names, not the whole registry),
  dataset names, ``NUM_CLASSES`` of the ROI and semantic heads against the training data's
  metadata, and ``MODEL.WEIGHTS``.
"""

import difflib
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode

from ..io import InputError
from .checkpoint import checkpoint_problem

__all__ = ["ConfigError", "merge_config_file", "merge_config_list", "check_config", "nearest"]

logger = logging.getLogger("seg2")


class ConfigError(InputError):
    """A config value that cannot work: the message names the file (or command line), the
    key and, where one exists, the nearest valid alternative."""


def nearest(word: str, choices: Iterable[str], n: int = 3) -> List[str]:
    """Up to ``n`` of ``choices`` closest to ``word`` (difflib ratio >= 0.6, case-insensitive),
    keeping only those about as close as the best."""
    lower = {c.lower(): c for c in choices}
    scored = []
    for low, orig in lower.items():
        ratio = difflib.SequenceMatcher(None, word.lower(), low).ratio()
        if ratio >= 0.6:
            scored.append((-ratio, orig))
    scored.sort()
    if not scored:
        return []
    best = -scored[0][0]
    return [orig for r, orig in scored[:n] if -r >= best - 0.08]


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    hits = nearest(word, choices)
    return f"; did you mean {' or '.join(hits)}?" if hits else ""


def _all_keys(node: CfgNode, prefix: str = "") -> List[str]:
    """Dotted names of every node and leaf of a config."""
    keys = []
    for k, v in node.items():
        full = prefix + k
        keys.append(full)
        if isinstance(v, dict):
            keys += _all_keys(v, full + ".")
    return keys


def _suggest_key(bad: str, cfg: CfgNode) -> str:
    """Nearest valid keys of the same depth under the longest valid prefix of ``bad``
    (``MODEL.SEG2.FUSON.NAME`` -> ``MODEL.SEG2.FUSION.NAME``), compared on the differing part."""
    keys = _all_keys(cfg)
    parts = bad.split(".")
    valid = set(keys)
    n = 0
    while n < len(parts) and ".".join(parts[: n + 1]) in valid:
        n += 1
    prefix = ".".join(parts[:n]) + "." if n else ""
    rest = ".".join(parts[n:])
    same_depth = [k for k in keys if k.startswith(prefix) and k.count(".") == bad.count(".")]
    pool = same_depth or [k for k in keys if k.startswith(prefix)]
    hits = nearest(rest, [k[len(prefix) :] for k in pool])
    return f"; did you mean {' or '.join(prefix + h for h in hits)}?" if hits else ""


# ---- merge errors: which key, and which file of the _BASE_ chain holds it


def load_config_chain(config_file: str, files: List[str]) -> Dict:
    """The YAML of ``config_file`` merged with its ``_BASE_`` chain, by Detectron2's own
    ``load_yaml_with_base``; ``files`` receives the files it opens, leaf first."""

    class Recorder(CfgNode):
        @classmethod
        def load_yaml_with_base(cls, filename, allow_unsafe=False):
            files.append(filename)
            return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)

    return Recorder.load_yaml_with_base(config_file, allow_unsafe=True)


def _leaves(cfg: CfgNode, data: Dict, prefix: str = "") -> Iterable[Tuple[str, object]]:
    """(dotted key, value) of every value in ``data``, descending where ``cfg`` has a node."""
    for key, value in data.items():
        if key == "_BASE_" and not prefix:
            continue
        node = cfg.get(key) if isinstance(cfg, dict) else None
        if isinstance(value, dict) and isinstance(node, CfgNode):
            yield from _leaves(node, value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _has_key(cfg: CfgNode, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _nested(dotted: str, value) -> Dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _refused(cfg: CfgNode, key: str, merge) -> Optional[str]:
    """Why ``cfg`` refuses ``key`` (None if it takes it): merged alone into a copy."""
    if cfg.key_is_deprecated(key):
        return None
    if cfg.key_is_renamed(key):
        return f"config key {key} was renamed"
    if not _has_key(cfg, key):
        return f"unknown config key {key}{_suggest_key(key, cfg)}"
    try:
        merge(cfg.clone())
    except (KeyError, ValueError, AssertionError, TypeError):
        default = _get(cfg, key)
        return (
            f"config key {key}: the value does not fit its type "
            f"{type(default).__name__} (default {default!r})"
        )
    return None


def _file_with_key(files: Sequence[str], dotted: str) -> str:
    """The leaf-most file of the chain whose own YAML sets ``dotted``."""
    for path in files:
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and _has_key(CfgNode(data), dotted):
            return path
    return files[0]


def merge_config_file(cfg: CfgNode, config_file: str) -> CfgNode:
    """``cfg.merge_from_file`` whose errors name the key and the YAML file of the ``_BASE_``
    chain that sets it."""
    if not os.path.isfile(config_file):
        raise ConfigError(f"{config_file}: config file not found")
    files: List[str] = []
    try:
        merged = load_config_chain(config_file, files)
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML: {e}".replace("\n", " ")) from None
    except OSError as e:  # a _BASE_ that does not exist: the file before it asked for it
        asking = files[-2] if len(files) > 1 else config_file
        raise ConfigError(f"{asking}: _BASE_ file not found: {e.filename or e}") from None
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, ValueError, AssertionError, TypeError):
        for key, value in _leaves(cfg, merged):
            why = _refused(
                cfg, key, lambda c: c.merge_from_other_cfg(CfgNode(_nested(key, value)))
            )
            if why:
                raise ConfigError(f"{_file_with_key(files, key)}: {why}") from None
        raise
    return cfg


def merge_config_list(cfg: CfgNode, opts: Sequence[str]) -> CfgNode:
    """``cfg.merge_from_list`` (command-line ``KEY VALUE`` pairs) with clear errors."""
    if len(opts) % 2:
        raise ConfigError(
            f"command line: config overrides come as KEY VALUE pairs; {opts[-1]!r} has no value"
        )
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError, TypeError):
        for key, value in zip(opts[0::2], opts[1::2]):
            why = _refused(cfg, key, lambda c: c.merge_from_list([key, value]))
            if why:
                raise ConfigError(f"command line: {why}") from None
        raise
    return cfg


# ---- checks on the merged config


def _registries():
    from detectron2.modeling import (
        BACKBONE_REGISTRY,
        META_ARCH_REGISTRY,
        PROPOSAL_GENERATOR_REGISTRY,
        ROI_BOX_HEAD_REGISTRY,
        ROI_HEADS_REGISTRY,
        ROI_MASK_HEAD_REGISTRY,
        SEM_SEG_HEADS_REGISTRY,
    )

    from ..modeling.fusion import FUSION_REGISTRY
    from ..modeling.upsample import UPSAMPLE_REGISTRY, upsample_names

    def names(registry):
        return [n for n, _ in registry]

    return [
        ("MODEL.META_ARCHITECTURE", names(META_ARCH_REGISTRY)),
        ("MODEL.BACKBONE.NAME", names(BACKBONE_REGISTRY)),
        ("MODEL.PROPOSAL_GENERATOR.NAME", names(PROPOSAL_GENERATOR_REGISTRY)),
        ("MODEL.ROI_HEADS.NAME", names(ROI_HEADS_REGISTRY)),
        ("MODEL.ROI_BOX_HEAD.NAME", names(ROI_BOX_HEAD_REGISTRY)),
        ("MODEL.ROI_MASK_HEAD.NAME", names(ROI_MASK_HEAD_REGISTRY)),
        ("MODEL.SEM_SEG_HEAD.NAME", names(SEM_SEG_HEADS_REGISTRY)),
        ("MODEL.SEG2.FUSION.NAME", names(FUSION_REGISTRY)),
        # Config names (lowercase) and class names both build an op.
        ("MODEL.SEG2.UPSAMPLE.NAME", list(upsample_names()) + names(UPSAMPLE_REGISTRY)),
    ]


def _get(cfg: CfgNode, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


# Names Detectron2's builders accept without a registry entry.
_UNREGISTERED_OK = {"MODEL.PROPOSAL_GENERATOR.NAME": {"PrecomputedProposals"}}


def check_registry_names(cfg: CfgNode) -> None:
    for key, names in _registries():
        name = _get(cfg, key)
        if not name or name in names or name in _UNREGISTERED_OK.get(key, ()):
            continue
        hint = _did_you_mean(name, names) or f" ({len(names)} names registered, none close)"
        raise ConfigError(f"{key}: {name!r} is not a registered name{hint}")


def check_dataset_names(cfg: CfgNode) -> None:
    from detectron2.data import DatasetCatalog

    known = DatasetCatalog.list()
    for key in ("TRAIN", "TEST"):
        for name in getattr(cfg.DATASETS, key):
            if name not in known:
                raise ConfigError(
                    f"DATASETS.{key}: dataset {name!r} is not registered"
                    f"{_did_you_mean(name, known) or ''} (user data: DATASETS.SEG2.*)"
                )


def _classes_needed(meta, kind: str) -> Tuple[int, List[str]]:
    """(number of contiguous ids the head must predict, class names) from metadata."""
    names = list(meta.get(f"{kind}_classes", None) or [])
    mapping = meta.get(f"{kind}_dataset_id_to_contiguous_id", None) or {}
    needed = max([len(names)] + [int(v) + 1 for v in mapping.values()]) if names else 0
    return needed, names


def check_num_classes(cfg: CfgNode, dataset_names: Sequence[str]) -> None:
    """The heads must cover the datasets' classes: ROI heads ``thing_classes``; a semantic
    head ``stuff_classes`` (seg2's panoptic convention: all classes, things first;
    PanopticFPN's ``*_separated`` metadata: one "things" class + stuff). Too few is an error
    (that class would never be learnt); more only a note."""
    from detectron2.data import MetadataCatalog

    from ..capabilities import model_capabilities

    caps = model_capabilities(cfg)
    heads = []
    if caps.instances:
        heads.append(("MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES, "thing"))
    if caps.sem_seg:
        heads.append(
            ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "stuff")
        )
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        for key, value, kind in heads:
            needed, names = _classes_needed(meta, kind)
            if not needed or value == needed:
                continue
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            what = (
                f"dataset {name!r} has {needed} classes for it ({kind}_classes in its metadata: "
                f"{shown})"
            )
            if value < needed:
                raise ConfigError(f"{key} = {value} is too small: {what}; set {key} {needed}")
            logger.warning(f"{key} = {value} is more than needed: {what}")


def check_weights(cfg: CfgNode) -> None:
    path = cfg.MODEL.WEIGHTS
    if not path or "://" in path:  # URLs are fetched (and reported) by the checkpointer
        return
    problem = checkpoint_problem(path)
    if problem:
        raise ConfigError(f"MODEL.WEIGHTS: {path}: {problem}")


def check_config(cfg: CfgNode, eval_only: bool = False, resume: bool = False) -> None:
    """Everything checkable before the model and data are built (datasets already
    registered). ``MODEL.WEIGHTS`` is not needed when resuming from OUTPUT_DIR."""
    check_registry_names(cfg)
    check_dataset_names(cfg)
    if not eval_only:
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
    resuming = resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if not resuming:
        check_weights(cfg)
