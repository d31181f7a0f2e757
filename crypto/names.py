"""File names a signed manifest may carry, and that Entente writes to disk or shows: a base name
that displays as what it is.

Characters that change how text displays without being seen are refused: C0 and C1 controls
and DEL; the bidi embeddings, overrides, isolates and marks (``invoice\\u202egpj.exe`` shows as
``invoiceexe.jpg``, an executable named as a picture); the Unicode line and paragraph
separators; the byte order mark and the interlinear annotations. Letters of right-to-left
scripts are ordinary characters and stay allowed.
"""

from __future__ import annotations

import re

__all__ = ["HIDDEN", "MAX_FILENAME_CHARS", "is_base_name"]

MAX_FILENAME_CHARS = 255

HIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
    "\ufff9-\ufffb]"
)


def is_base_name(name: str) -> bool:
    """A file name without a path: no separators, nothing from :data:`HIDDEN`, not ``.`` or
    ``..``, 1 to 255 characters."""
    return (
        0 < len(name) <= MAX_FILENAME_CHARS
        and name not in (".", "..")
        and not any(c in name for c in "/\\")
        and HIDDEN.search(name) is None
    )
