"""Validation results kept between starts, so a later start with unchanged data checks
nothing again.

One cache file per dataset holds the problems and notes of its JSON checks under a digest
of the JSON's bytes, and what was read from each image, label or panoptic file (size,
errors, notes, values) under the file's identity: path, size and modification time. A
changed JSON is checked again; a changed file is read again, alone. What a file's facts
mean for the dataset (a size that disagrees with the JSON, a segment id missing) is worked
out again at every start, so an edit of the JSON alone never reuses a stale verdict.
"""

import hashlib
import json
import logging
import os
from itertools import chain
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..io import atomic_open
from .parallel import check_workers, map_chunks

__all__ = ["ValidationCache", "default_cache_dir", "file_digest"]

logger = logging.getLogger(__name__)

# Bump when a check changes what it finds, so older results are not reused.
CACHE_VERSION = 2


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/seg2/validation``, else ``~/.cache/seg2/validation``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "seg2", "validation")


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_files(job, lo: int, hi: int) -> List[Dict]:
    read, paths = job
    return [read(p) for p in paths[lo:hi]]


def _identity(path: str) -> Optional[List[int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


class ValidationCache:
    """The cached results of one dataset (``key`` names it: its kind, paths and the options
    that change what checks find). ``folder`` None keeps nothing between starts.

    Counters for the latest use: ``has_json`` (it checked or reused the results of a JSON
    file), ``json_checked``, ``files_checked`` and ``files_reused``.
    """

    def __init__(self, folder: Optional[str], key: Sequence[Any]):
        self.path = None
        if folder:
            name = hashlib.sha256(json.dumps([CACHE_VERSION, *key]).encode()).hexdigest()[:24]
            self.path = os.path.join(folder, f"{name}.json")
        self._old = self._read()
        self._json: Dict[str, Dict] = {}
        self._files: Dict[str, List] = {}
        self.has_json = False
        self.json_checked = False
        self.files_checked = 0
        self.files_reused = 0

    def _read(self) -> Dict:
        if self.path is None or not os.path.isfile(self.path):
            return {}
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
            return data if data.get("version") == CACHE_VERSION else {}
        except (OSError, ValueError, AttributeError):
            return {}  # unreadable: checked again and rewritten

    def json_results(self, digest: str) -> Optional[Dict]:
        """What :meth:`store_json` stored for a JSON file with this digest, or None."""
        found = self._old.get("json", {}).get(digest)
        if found is not None:
            self._json[digest] = found
            self.has_json = True
        return found

    def store_json(self, digest: str, results: Dict) -> None:
        """Keep the results (plain data) of checking the JSON file with this digest."""
        self.has_json = self.json_checked = True
        self._json[digest] = results

    def facts(
        self, kind: str, paths: Sequence[str], read: Callable[[str], Dict], per_chunk: int = 4
    ) -> Dict[str, Dict]:
        """{path: read(path)} for every path, reusing what was read from a file with the same
        identity; the others are read over the cores (:func:`.parallel.map_chunks`), in
        chunks of at least ``per_chunk`` files (enough work to be worth a process: a few
        decodes, or a thousand header reads). ``kind`` separates what is read of one
        file (e.g. a header or a full decode)."""
        old = self._old.get("files", {})
        out, todo = {}, []
        for path in dict.fromkeys(paths):
            key = f"{kind}:{path}"
            ident = _identity(path)
            hit = old.get(key)
            if ident is not None and hit is not None and hit[0] == ident:
                out[path] = hit[1]
                self._files[key] = hit
                self.files_reused += 1
            else:
                todo.append((key, path, ident))
        if todo:
            # a few chunks per core, so that one slow chunk does not hold up the others
            chunk = max(per_chunk, -(-len(todo) // (4 * check_workers())))
            job = (read, [p for _, p, _ in todo])
            results = chain.from_iterable(map_chunks(_read_files, job, len(todo), chunk))
            for (key, path, ident), facts in zip(todo, results):
                out[path] = facts
                if ident is not None:
                    self._files[key] = [ident, facts]
            self.files_checked += len(todo)
        return out

    def save(self) -> None:
        """Write what this use found (files no longer used are dropped), then let it go: the
        run keeps only the counters. A folder that cannot be written costs only the next
        start's time."""
        data = {"version": CACHE_VERSION, "json": self._json, "files": self._files}
        self._old, self._json, self._files = {}, {}, {}
        if self.path is None or not (self.json_checked or self.files_checked):
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with atomic_open(self.path, "w") as f:
                f.write(json.dumps(data, separators=(",", ":")))
        except OSError as e:
            logger.warning(f"[validate] cannot write the validation cache {self.path}: {e}")
