"""Errors and skip records shared by the readers and the pipeline.

A reader either raises :class:`InputError` (the whole input is unusable: the message names the file and what to
do) or records a :class:`Skip` in a :class:`SkipLog` and carries on (one frame, scan or row is unusable). Skips are
counted per kind in the final report.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)


class InputError(Exception):
    """Bad input that stops the job: the message names the file and the fix."""


class OutputError(Exception):
    """The output cannot be written (read-only folder, full disk...): the message names the path and the fix."""


@dataclasses.dataclass(frozen=True)
class Skip:
    kind: str  #: short machine-readable reason, e.g. ``missing_file``, ``corrupt_png``
    path: str  #: the file (or run) that was skipped
    detail: str = ""  #: human-readable explanation


class SkipLog:
    """Collects skipped inputs; thread-safe; mergeable across worker processes (skips are plain dataclasses)."""

    def __init__(self) -> None:
        self._items: list[Skip] = []
        self._lock = threading.Lock()

    def add(self, kind: str, path: str | Path, detail: str = "") -> None:
        skip = Skip(kind, str(path), detail)
        with self._lock:
            self._items.append(skip)
        log.debug("skip %s: %s %s", kind, path, detail)

    def extend(self, skips) -> None:
        with self._lock:
            self._items.extend(skips)

    @property
    def items(self) -> list[Skip]:
        with self._lock:
            return list(self._items)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.kind for s in self.items).items()))

    def __len__(self) -> int:
        return len(self._items)
