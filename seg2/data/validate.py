"""One validation pass per dataset, before anything trains or scores on it.

Every problem found in a pass is collected in a :class:`ValidationReport` (file, image /
annotation / segment id, field, value) rather than stopping at the first; what then happens
is the user's choice (``DATASETS.SEG2.ON_BAD_SAMPLE``): ``"error"`` stops with the whole list,
``"skip"`` drops each broken image with a logged reason and a count. Conversions that keep a
sample usable (a flat polygon list, a grayscale or 16-bit image) are not problems but are
reported once per kind with a count, so nothing is altered silently.

The checks live in :mod:`.check_annotations` and :mod:`.check_instances` (JSON) and
:mod:`.check_files` (files); the loaders of :mod:`.coco`,
:mod:`.coco_panoptic` and :mod:`.semantic` call them, and :func:`validate_datasets` covers any
other registered dataset (Cityscapes, the real samples) through its dataset dicts. Results
are kept between starts by :mod:`.validation_cache`.
"""

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Hashable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..io import BitDepthRule, InputError
from .validation_cache import ValidationCache, default_cache_dir

__all__ = [
    "Problem",
    "ValidationReport",
    "ValidationOptions",
    "configure_validation",
    "validation_options",
    "finish_validation",
    "validate_datasets",
    "validation_cache",
    "last_report",
    "check_same_classes",
    "check_trainable",
]

logger = logging.getLogger(__name__)

POLICIES = ("error", "skip", "report")


@dataclass
class Problem:
    """One thing wrong with the input. ``sample`` is the image (id or file) a skip drops;
    None means the dataset as a whole is unusable (no skip can help)."""

    file: str
    where: str
    field: str
    value: Any
    message: str
    sample: Optional[Hashable] = None
    # Set for a problem only where the dataset is scored: the note kind it becomes elsewhere.
    note: Optional[str] = None

    def __str__(self) -> str:
        where = f" {self.where}:" if self.where else ""
        value = repr(self.value)
        limit = 300 if isinstance(self.value, str) else 80  # a path stays whole
        if len(value) > limit:
            value = value[: limit - 3] + "..."
        fld = f" field '{self.field}' = {value}:" if self.field else ""
        return f"{self.file}:{where}{fld} {self.message}"


@dataclass
class ValidationReport:
    """Problems and conversion notes of one dataset."""

    dataset: str
    problems: List[Problem] = field(default_factory=list)
    notes: "OrderedDict[str, List[str]]" = field(default_factory=OrderedDict)
    num_samples: int = 0
    # the ValidationCache the pass used (what it checked and what it reused), if any
    cache: Optional[ValidationCache] = field(default=None, repr=False, compare=False)

    def add(self, file: str, where: str, fld: str, value: Any, message: str, sample=None) -> None:
        self.problems.append(Problem(file, where, fld, value, message, sample))

    def add_scored(
        self, note: str, file: str, where: str, fld: str, value: Any, message: str, sample=None
    ) -> None:
        """A problem where the dataset is scored (``DATASETS.TEST``), else a note of kind
        ``note`` (e.g. a COCO 'area' that training never reads)."""
        self.problems.append(Problem(file, where, fld, value, message, sample, note))

    def problem_rows(self) -> List[List]:
        """The problems as plain data (for a cache); :meth:`extend` takes them back."""
        return [
            [p.file, p.where, p.field, p.value, p.message, p.sample, p.note]
            for p in self.problems
        ]

    def extend(self, rows: List[List], notes: Dict[str, List[str]]) -> None:
        """Add problems (as :meth:`problem_rows` gives them) and notes of another pass."""
        self.problems.extend(Problem(*row) for row in rows)
        for kind, items in notes.items():
            self.notes.setdefault(kind, []).extend(items)

    def note(self, kind: str, item: str) -> None:
        """Record one conversion of ``kind`` (counted, the first items shown)."""
        self.notes.setdefault(kind, []).append(item)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def fatal(self) -> bool:
        return any(p.sample is None for p in self.problems)

    @property
    def bad_samples(self) -> set:
        return {p.sample for p in self.problems if p.sample is not None}

    def note_lines(self) -> List[str]:
        lines = []
        for kind, items in self.notes.items():
            eg = ", ".join(items[:2]) + (", ..." if len(items) > 2 else "")
            lines.append(f"note: {kind}: {len(items)} time(s), e.g. {eg}")
        return lines

    def format(self, max_problems: Optional[int] = None) -> str:
        """The report as text: a headline, one line per problem, one line per note kind."""
        n = len(self.problems)
        head = f"dataset '{self.dataset}': {self.num_samples} sample(s), "
        if n:
            head += f"{n} problem(s) in {len(self.bad_samples)} sample(s)"
            if self.fatal:
                head += " (some concern the whole dataset)"
        else:
            head += "no problems"
        shown = self.problems if max_problems is None else self.problems[:max_problems]
        lines = [head] + [f"  {p}" for p in shown]
        if len(shown) < n:
            lines.append(f"  ... and {n - len(shown)} more")
        lines += [f"  {line}" for line in self.note_lines()]
        return "\n".join(lines)


@dataclass(frozen=True)
class ValidationOptions:
    """How loaders treat what validation finds (set from a config by
    :func:`configure_validation`; datasets are registered before any config exists)."""

    on_bad_sample: str = "error"
    check_files: bool = False
    bit_depth: BitDepthRule = BitDepthRule()
    cache_dir: str = ""  # "" the default folder, "none" nothing kept between starts
    # Names of the datasets that are scored (DATASETS.TEST); None: every dataset.
    scored: Optional[FrozenSet[str]] = None


_OPTIONS = [ValidationOptions()]
_REPORTS: Dict[str, ValidationReport] = {}


def validation_options() -> ValidationOptions:
    return _OPTIONS[0]


def configure_validation(cfg=None, **overrides) -> ValidationOptions:
    """Set the options every dataset loader uses from ``DATASETS.SEG2.ON_BAD_SAMPLE``,
    ``DATASETS.SEG2.CHECK_FILES``, ``DATASETS.SEG2.VALIDATION_CACHE_DIR`` and
    ``INPUT.SEG2.BIT_DEPTH``; keyword overrides win."""
    kw = {}
    if cfg is not None:
        kw = dict(
            on_bad_sample=cfg.DATASETS.SEG2.ON_BAD_SAMPLE,
            check_files=bool(cfg.DATASETS.SEG2.CHECK_FILES),
            bit_depth=BitDepthRule.from_cfg(cfg),
            scored=frozenset(cfg.DATASETS.TEST),
            cache_dir=cfg.DATASETS.SEG2.VALIDATION_CACHE_DIR,
        )
    kw.update(overrides)
    opts = ValidationOptions(**{**validation_options().__dict__, **kw})
    if opts.on_bad_sample not in POLICIES:
        raise InputError(
            f"DATASETS.SEG2.ON_BAD_SAMPLE: {opts.on_bad_sample!r} is not one of ['error', 'skip']"
        )
    _OPTIONS[0] = opts
    return opts


def validation_cache(key: Optional[Sequence]) -> ValidationCache:
    """The cache of the dataset ``key`` names (its kind and paths) under the current options
    (which are part of the key); ``key`` None, or ``VALIDATION_CACHE_DIR`` "none", keeps
    nothing between starts."""
    opts = validation_options()
    if key is None or opts.cache_dir.lower() == "none":
        return ValidationCache(None, [])
    rule = opts.bit_depth
    return ValidationCache(
        opts.cache_dir or default_cache_dir(),
        [*key, opts.check_files, rule.method, rule.divisor, list(rule.percentiles)],
    )


def last_report(name: str) -> Optional[ValidationReport]:
    """The report of the latest load of dataset ``name`` in this process (None if none)."""
    return _REPORTS.get(name)


def finish_validation(
    report: ValidationReport, dicts: List[Dict], sample_of: Callable[[Dict], Hashable]
) -> List[Dict]:
    """Apply the policy to a finished report: log the notes, then raise (``error``) or drop
    the broken samples (``skip``; each logged). ``sample_of`` maps a dict to its sample key."""
    _REPORTS[report.dataset] = report
    report.num_samples = report.num_samples or len(dicts)
    cache = report.cache
    if cache is not None:
        json_part = ""
        if cache.has_json:
            json_part = "JSON checked; " if cache.json_checked else "JSON unchanged (cached); "
        logger.info(
            f"[validate] {report.dataset}: {report.num_samples} sample(s); {json_part}files: "
            f"{cache.files_checked} read, {cache.files_reused} unchanged (cached)"
        )
    demote_unscored(report, validation_options().scored)
    for line in report.note_lines():
        logger.info(f"[validate] {report.dataset}: {line}")
    policy = validation_options().on_bad_sample
    if report.ok:
        return dicts
    if policy == "error" or report.fatal:
        hint = (
            ""
            if report.fatal
            else "; DATASETS.SEG2.ON_BAD_SAMPLE skip drops broken samples instead"
        )
        raise InputError(error_message(report, hint))
    bad = report.bad_samples
    kept = [d for d in dicts if sample_of(d) not in bad]
    if policy == "skip":
        for p in report.problems:
            logger.warning(f"[validate] {report.dataset}: skipping sample {p.sample!r}: {p}")
        logger.warning(
            f"[validate] {report.dataset}: skipped {len(dicts) - len(kept)} of {len(dicts)} "
            f"sample(s) for {len(report.problems)} problem(s) (DATASETS.SEG2.ON_BAD_SAMPLE=skip)"
        )
    if not kept:
        raise InputError(f"{report.format()}\nevery sample of '{report.dataset}' is broken")
    return kept


def demote_unscored(report: ValidationReport, scored: Optional[FrozenSet[str]]) -> None:
    """Turn the problems that matter only for scoring into notes when the dataset is not
    scored (``scored`` None: every dataset is)."""
    if scored is None or report.dataset in scored:
        return
    for p in [p for p in report.problems if p.note]:
        report.note(p.note, f"{p.where} ({p.field} = {p.value!r})")
    report.problems = [p for p in report.problems if not p.note]


def error_message(report: ValidationReport, hint: str = "") -> str:
    """One line for a single problem, else the report with a count."""
    if len(report.problems) == 1:
        return f"dataset '{report.dataset}': {report.problems[0]}{hint}"
    return f"{report.format()}\n{len(report.problems)} problem(s){hint}"


def _sample_key(d: Dict) -> Hashable:
    return d.get("image_id", d.get("file_name"))


def _checked_dicts(name: str, loader: Callable[[], List[Dict]]) -> List[Dict]:
    """Run ``loader``; if it is not one of seg2's validating loaders (Cityscapes, the real
    samples, a user's own ``DatasetCatalog.register``), check its dicts here."""
    from .check_files import check_dataset_dicts

    _REPORTS.pop(name, None)
    dicts = loader()
    if name not in _REPORTS:
        report = ValidationReport(name)
        report.cache = validation_cache(["dataset_dicts", name])
        check_dataset_dicts(
            dicts,
            report,
            MetadataCatalog.get(name).as_dict(),
            validation_options(),
            cache=report.cache,
        )
        report.cache.save()
        dicts = finish_validation(report, dicts, _sample_key)
    return dicts


# Validated dicts not yet handed to their first DatasetCatalog.get, by dataset name.
_HANDOVER: Dict[str, List[Dict]] = {}


class _ValidatedLoader:
    """What a validated dataset is registered with: its first call returns the dicts the
    validation pass produced (the same list, no copy; then this process holds them no
    more); a later call loads again, the checks replayed from the validation cache."""

    _seg2_validated = True

    def __init__(self, name: str, loader: Callable[[], List[Dict]]):
        self.name, self.loader = name, loader

    def __call__(self) -> List[Dict]:
        dicts = _HANDOVER.pop(self.name, None)
        return dicts if dicts is not None else _checked_dicts(self.name, self.loader)


def validate_datasets(cfg, names: Sequence[str]) -> Dict[str, ValidationReport]:
    """Configure validation from ``cfg`` and run it once on each registered dataset in
    ``names`` (call it before the first iteration; ``setup_cfg`` does).

    Each dataset is then re-registered so that the trainer and the evaluators load what was
    checked, under the chosen policy, without a second pass (see :class:`_ValidatedLoader`).
    With several processes the main one validates first while the others wait, then they
    find its results in the validation cache. Raises InputError (policy ``error``) listing
    every problem of the first broken dataset; returns {name: report}.
    """
    if cfg is not None:
        configure_validation(cfg)
        check_same_classes(cfg.DATASETS.TRAIN)
    reports = {}
    todo = []
    for name in dict.fromkeys(names):
        if name not in DatasetCatalog.list():
            continue  # Detectron2 itself reports unknown names, with the registered ones
        if getattr(DatasetCatalog[name], "_seg2_validated", False):
            reports[name] = _REPORTS.get(name)
        else:
            todo.append(name)
    main = comm.is_main_process()
    if todo and not main:
        comm.synchronize()  # the main process validates first and fills the cache
    try:
        for name in todo:
            loader = DatasetCatalog[name]
            dicts = _checked_dicts(name, loader)
            if cfg is not None and name in cfg.DATASETS.TRAIN:
                check_trainable(name, dicts)
            _HANDOVER[name] = dicts
            DatasetCatalog.remove(name)
            DatasetCatalog.register(name, _ValidatedLoader(name, loader))
            reports[name] = _REPORTS[name]
    finally:
        if todo and main:
            comm.synchronize()
    return reports


def check_same_classes(names: Sequence[str]) -> None:
    """The datasets trained on together must name the same classes in the same order (one
    set of class ids): Detectron2 stops on differing ``thing_classes`` with a ValueError
    traceback once everything is loaded, and semantic sets would train silently. Read from
    the metadata, before anything is loaded."""
    names = [n for n in dict.fromkeys(names) if n in DatasetCatalog.list()]
    for key in ("thing_classes", "stuff_classes"):
        have = [(n, list(MetadataCatalog.get(n).get(key, None) or [])) for n in names]
        have = [(n, v) for n, v in have if v]
        for name, classes in have[1:]:
            first, ref = have[0]
            if classes == ref:
                continue
            i = next((i for i, (a, b) in enumerate(zip(classes, ref)) if a != b), None)
            diff = (
                f"class {i} is {classes[i]!r} there and {ref[i]!r} in '{first}'"
                if i is not None
                else f"{len(classes)} classes there, {len(ref)} in '{first}'"
            )
            raise InputError(
                f"DATASETS.TRAIN: '{name}' and '{first}' have different {key} ({diff}); "
                "datasets trained on together need one list of classes"
            )


def check_trainable(name: str, dicts: List[Dict]) -> None:
    """A training set must hold something to learn from: a non-crowd instance (where the
    dicts carry ``annotations``), a panoptic segment, a label pixel that is not the ignore
    label. Detectron2 would stop on an assertion naming no file, or train at loss 0 without
    a word. Scoring such a set stays allowed (its metrics are NaN, with a warning)."""
    from .check_files import ALL_IGNORE_NOTE

    meta = MetadataCatalog.get(name)
    if any("annotations" in d for d in dicts) and not any(
        not a.get("iscrowd", 0) for d in dicts for a in d.get("annotations", [])
    ):
        raise InputError(
            f"dataset '{name}': {meta.get('json_file', name)}: field 'annotations': no image "
            "has an annotation that is not a crowd region: nothing to train on"
        )
    if any("segments_info" in d for d in dicts) and not any(d.get("segments_info") for d in dicts):
        raise InputError(
            f"dataset '{name}': {meta.get('panoptic_json', name)}: field 'segments_info': no "
            "image has a segment: nothing to train on"
        )
    labels = [d["sem_seg_file_name"] for d in dicts if "sem_seg_file_name" in d]
    report = _REPORTS.get(name)
    ignored = set(report.notes.get(ALL_IGNORE_NOTE, [])) if report else set()
    if labels and all(os.path.basename(f) in ignored for f in labels):
        folder = os.path.dirname(labels[0])
        raise InputError(
            f"dataset '{name}': {folder}: field 'sem_seg_file_name': every pixel of all "
            f"{len(labels)} label(s) is the ignore label {meta.get('ignore_label', 255)}: "
            "nothing to train on"
        )
