"""An operator's list of witnesses or logs (``ENTENTE_WITNESSED_LOGS_FILE``,
``ENTENTE_EXTERNAL_WITNESSES_FILE``): read and parsed once, again only when the file changes.

:class:`ListedFile` keeps the parsed value per path with the file's modification time and size;
a file that cannot be read, or that its parser refuses, is a :class:`WitnessConfigError` (so
``serve`` stops on it at start, and a request meeting it later answers 503). Lines are the
parser's business: :func:`lines` gives the meaningful ones, numbered, without ``#`` comments.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from service.audit.errors import WitnessConfigError

__all__ = ["ListedFile", "lines"]

T = TypeVar("T")


def lines(setting: str, path: Path) -> Iterator[tuple[int, str]]:
    """(number, text) of each line of ``path`` that is not blank once its comment is cut."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WitnessConfigError(f"{setting}: cannot read {path}: {exc}") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            yield number, line


class ListedFile(Generic[T]):
    """``parse(path)`` of the file named by ``setting``, cached until the file changes."""

    def __init__(self, setting: str, parse: Callable[[Path], T]) -> None:
        self.setting = setting
        self._parse = parse
        self._cache: dict[Path, tuple[int, int, T]] = {}
        self._lock = threading.Lock()

    def read(self, path: Path) -> T:
        try:
            stat = path.stat()
        except OSError as exc:
            raise WitnessConfigError(f"{self.setting}: cannot read {path}: {exc}") from None
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
                return cached[2]
        value = self._parse(path)
        with self._lock:
            self._cache[path] = (stat.st_mtime_ns, stat.st_size, value)
        return value
