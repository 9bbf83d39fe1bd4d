"""Config problems found before anything is built, each as one :class:`ConfigError` line
that names where the value came from and what would be valid.

- :func:`merge_config_file` / :func:`merge_config_list`: Detectron2's merges, with unknown
  keys, type mismatches and YAML errors traced to the file of the ``_BASE_`` chain that holds
  the key (or to the command line), plus the nearest valid key.
- :func:`merge_config_text`: the same for a config stored in a checkpoint.
- :func:`check_config`: registry names (nearest registered names, not the whole registry),
  dataset names, values that cannot train (batch size, learning rate, sizes), the device,
  ``OUTPUT_DIR``, ``NUM_CLASSES`` of the ROI and semantic heads against the training data's
  metadata, ``MODEL.WEIGHTS``, and on ``--resume`` the checkpoint's config against the run's.
"""

import difflib
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode

from ..io import InputError, output_folder_problem
from .checkpoint import checkpoint_problem

__all__ = [
    "ConfigError",
    "merge_config_file",
    "merge_config_list",
    "merge_config_text",
    "check_config",
    "check_values",
    "check_device",
    "check_output_dir",
    "check_test_classes",
    "config_differences",
    "nearest",
]

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


def _merge_nested(cfg: CfgNode, key: str, value) -> None:
    cfg.merge_from_other_cfg(CfgNode(_nested(key, value)))


def _raise_refused(cfg: CfgNode, pairs, merge_one, where) -> None:
    """A :class:`ConfigError` for the first ``(key, value)`` that ``cfg`` refuses when merged
    alone into a copy (``merge_one(copy, key, value)``); ``where`` is the source's name, or a
    function of the key that gives it. Returns when every pair merges alone."""
    for key, value in pairs:
        why = _refused(cfg, key, lambda c: merge_one(c, key, value))
        if why:
            source = where(key) if callable(where) else where
            raise ConfigError(f"{source}: {why}") from None


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
        _raise_refused(cfg, _leaves(cfg, merged), _merge_nested, lambda k: _file_with_key(files, k))
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
        pairs = zip(opts[0::2], opts[1::2])
        _raise_refused(cfg, pairs, lambda c, k, v: c.merge_from_list([k, v]), "command line")
        raise
    return cfg


def merge_config_text(cfg: CfgNode, text: str, source: str) -> CfgNode:
    """Merge a config dumped by ``cfg.dump()`` (as a checkpoint stores it); an error names
    ``source`` and the key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: malformed stored config: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the stored config is not a mapping")
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (KeyError, ValueError, AssertionError, TypeError):
        _raise_refused(cfg, _leaves(cfg, data), _merge_nested, f"{source}: its stored config")
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


def check_values(cfg: CfgNode, world_size: int) -> None:
    """Training values that cannot work: today they fail late (a loader that never yields
    a batch, an assertion deep in Detectron2) or not at all (a learning rate of 0)."""
    ims = cfg.SOLVER.IMS_PER_BATCH
    if ims < 1:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH = {ims}: the images per iteration, all processes together, "
            "must be at least 1"
        )
    ref = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if ref and ims % ref:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH = {ims} is not divisible by SOLVER.REFERENCE_WORLD_SIZE = {ref}"
        )
    # Detectron2's auto_scale_workers: with a reference world size the batch is rescaled.
    effective = int(round(ims * world_size / ref)) if ref else ims
    if effective % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH = {ims} is not divisible by the {world_size} processes "
            f"(--num-gpus x --num-machines): each takes an equal share; use a multiple of "
            f"{world_size}"
        )
    lr = cfg.SOLVER.BASE_LR
    if not lr > 0:  # also NaN
        raise ConfigError(f"SOLVER.BASE_LR = {lr}: the learning rate must be > 0")
    sizes = cfg.INPUT.MIN_SIZE_TRAIN
    sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
    if not sizes:
        raise ConfigError(
            "INPUT.MIN_SIZE_TRAIN is empty: give the training sizes of the shorter image side, "
            "e.g. (640, 672, 704)"
        )
    bad = [s for s in sizes if not s > 0]
    if bad:
        raise ConfigError(f"INPUT.MIN_SIZE_TRAIN = {sizes}: sizes must be > 0, not {bad}")
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(sizes) != 2:
        raise ConfigError(
            f"INPUT.MIN_SIZE_TRAIN = {sizes}: INPUT.MIN_SIZE_TRAIN_SAMPLING 'range' takes "
            "two values, (low, high)"
        )


def check_device(cfg: CfgNode) -> None:
    """``MODEL.DEVICE`` names a device this machine has."""
    import torch

    name = cfg.MODEL.DEVICE
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"MODEL.DEVICE = {name!r} is not a device name (cpu, cuda, cuda:N)"
        ) from None
    if device.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(
            f"MODEL.DEVICE = {name!r}, but CUDA is not available here ({why}); "
            "set MODEL.DEVICE cpu"
        )
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"MODEL.DEVICE = {name!r}, but {count} CUDA device(s) are visible "
            f"(cuda:0 to cuda:{count - 1})"
        )


def check_output_dir(cfg: CfgNode) -> None:
    problem = output_folder_problem(cfg.OUTPUT_DIR)
    if problem:
        raise ConfigError(f"OUTPUT_DIR = {cfg.OUTPUT_DIR}: {problem}")


def check_eval_weights(cfg: CfgNode, resuming: bool) -> None:
    """Evaluating or exporting needs trained weights: without, it is a random model's."""
    if not cfg.MODEL.WEIGHTS and not resuming:
        raise ConfigError(
            "MODEL.WEIGHTS is empty: evaluating (--eval-only) or exporting needs the trained "
            "model, MODEL.WEIGHTS path/to/model_final.pth (or --resume with a checkpoint in "
            "OUTPUT_DIR)"
        )


def check_test_classes(cfg: CfgNode) -> None:
    """Evaluating a checkpoint that stores its classes on data with other classes compares
    class ids that mean different things: refused, naming both lists."""
    from detectron2.data import MetadataCatalog

    from .trained_model import read_description

    _, stored = read_description(cfg.MODEL.WEIGHTS)
    if not stored:
        return
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        for key in ("thing_classes", "stuff_classes"):
            mine, theirs = stored.get(key), meta.get(key, None)
            if mine and theirs and list(mine) != list(theirs):
                raise ConfigError(
                    f"DATASETS.TEST: dataset {name!r} has {key} {_shown(theirs)}, but "
                    f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} was trained on {_shown(mine)} (dataset "
                    f"{stored.get('dataset', '?')!r}); evaluate on data with the model's classes"
                )


def _shown(names: Sequence[str], n: int = 8) -> str:
    return "[" + ", ".join(list(names)[:n]) + (", ..." if len(names) > n else "") + "]"


# Keys a resumed run may change: where and how long it runs, and test-time settings.
_RESUMABLE_KEYS = (
    "OUTPUT_DIR",
    "MODEL.WEIGHTS",
    "MODEL.DEVICE",
    "SOLVER.MAX_ITER",
    "SOLVER.STEPS",
    "SOLVER.CHECKPOINT_PERIOD",
    "DATALOADER.NUM_WORKERS",
    "DATASETS.TEST",
    "VIS_PERIOD",
    "CUDNN_BENCHMARK",
)
_RESUMABLE_PREFIXES = ("TEST.", "DATASETS.SEG2.")


def _resumable(key: str) -> bool:
    return (
        key in _RESUMABLE_KEYS
        or key.startswith(_RESUMABLE_PREFIXES)
        or key.split(".")[-1].endswith("_TEST")
    )


def _flat(node, prefix: str = "") -> Dict[str, object]:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_differences(stored: str, cfg: CfgNode) -> List[Tuple[str, object, object]]:
    """(key, stored value, ``cfg``'s value) for each key both configs have and set
    differently; ``stored`` is ``cfg.dump()`` text (tuples and lists compare equal)."""
    old = _flat(yaml.safe_load(stored) or {})
    new = _flat(yaml.safe_load(cfg.dump()))
    return [(k, old[k], new[k]) for k in new if k in old and old[k] != new[k]]


def _last_checkpoint(output_dir: str) -> Optional[str]:
    tag = os.path.join(output_dir, "last_checkpoint")
    try:
        with open(tag) as f:
            name = f.read().strip()
    except OSError:
        return None
    path = os.path.join(output_dir, name)
    return path if name and checkpoint_problem(path) is None else None


def check_resume_config(cfg: CfgNode, world_size: int) -> None:
    """The checkpoint ``--resume`` continues from must come from this config: a changed
    model or training key would fail iterations later (a class count: the optimizer's state
    no longer fits) or silently train something else. Keys a resumed run may change (length,
    schedule steps, test settings) are allowed."""
    from .trained_model import read_trained_config

    path = _last_checkpoint(cfg.OUTPUT_DIR)
    stored = read_trained_config(path) if path else None
    if stored is None:
        return
    if cfg.SOLVER.REFERENCE_WORLD_SIZE:  # the trainer saves its rescaled config
        from detectron2.engine import DefaultTrainer

        cfg = DefaultTrainer.auto_scale_workers(cfg, world_size)
    changed = [(k, a, b) for k, a, b in config_differences(stored, cfg) if not _resumable(k)]
    if not changed:
        return
    shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed[:6])
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    raise ConfigError(
        f"--resume: {path} was trained with another config; keys that differ (checkpoint -> "
        f"now): {shown}{more}; resume with the config the run was trained with "
        f"({os.path.join(cfg.OUTPUT_DIR, 'config.yaml')}) or train in a new OUTPUT_DIR"
    )


def check_config(
    cfg: CfgNode,
    eval_only: bool = False,
    resume: bool = False,
    *,
    world_size: Optional[int] = None,
    datasets: bool = True,
    output_dir: bool = True,
    require_weights: Optional[bool] = None,
    test_classes: bool = True,
) -> None:
    """Everything checkable before the model and data are built (datasets already
    registered). ``MODEL.WEIGHTS`` is not needed when resuming from OUTPUT_DIR.

    Args:
        eval_only: evaluation or export: no training values; trained weights required.
        resume: ``--resume``: its checkpoint's config must match.
        world_size: processes sharing the batch (default: Detectron2's ``comm``).
        datasets: check that ``DATASETS.TRAIN``/``TEST`` are registered (off for tools that
            need no data, e.g. prediction on the user's images).
        output_dir: check that ``OUTPUT_DIR`` can be written (off for tools that write
            elsewhere).
        require_weights: ``MODEL.WEIGHTS`` (or a checkpoint to resume) must be given
            (default: ``eval_only``).
        test_classes: with ``eval_only``, ``DATASETS.TEST`` must have the classes stored in
            ``MODEL.WEIGHTS`` (off for export, which reads no labels).
    """
    if world_size is None:
        from detectron2.utils import comm

        world_size = comm.get_world_size()
    check_registry_names(cfg)
    if datasets:
        check_dataset_names(cfg)
    if not eval_only:
        check_values(cfg, world_size)
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
    resuming = resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if not resuming:
        check_weights(cfg)
    if eval_only if require_weights is None else require_weights:
        check_eval_weights(cfg, resuming)
    if eval_only and datasets and test_classes and not resuming:
        check_test_classes(cfg)
    check_device(cfg)
    if output_dir:
        check_output_dir(cfg)
    if resuming and not eval_only:
        check_resume_config(cfg, world_size)
