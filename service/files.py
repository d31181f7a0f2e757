"""Whole files written all or nothing: the one "temporary file, fsync, rename" of the project.

:func:`atomic_write` yields a temporary file (mode 0600) beside the destination; when the block
ends without an exception the file is flushed, fsynced and renamed onto the destination (or, with
``overwrite=False``, hard-linked to it where the file system allows, so that a file that appeared
meanwhile is never clobbered); on any exception it is removed and the destination is untouched.
:func:`write_atomically` does that for bytes in hand. :func:`seal_file` and
:func:`open_sealed_file` are the crypto recipes ``crypto.sealed.seal`` and
``crypto.sealed.open_sealed`` from one file to another, so that a failed check leaves no
plaintext behind. :func:`content_disposition` and :func:`disposition_filename` carry a file's
name through a download (RFC 6266), so that it is saved under the name it was shared with.

This module does not fsync the destination's folder, lock, or decide where files go: the blob
store (``service.blobs``) has its own durability scheme for content-addressed blobs, and the
home (``service.home``) stages whole folders.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, unquote

from crypto.names import is_base_name

if TYPE_CHECKING:  # imported by the two recipes that use them: atomic writes need no crypto
    from crypto.age import Identity
    from crypto.dsse import Envelope
    from crypto.keys import VerifyKey
    from crypto.keyset import KeySet
    from crypto.sealed import Manifest, Sealed

__all__ = [
    "atomic_write",
    "content_disposition",
    "disposition_filename",
    "is_base_name",
    "open_sealed_file",
    "seal_file",
    "write_atomically",
]


def content_disposition(filename: str) -> str:
    """``attachment`` with ``filename`` (RFC 6266): an ASCII fallback, and the exact name as
    ``filename*`` (RFC 8187, UTF-8) when the fallback differs."""
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


# The media types a download may be served as, by file name: data formats a browser never runs.
# Anything else (HTML, SVG, XML, scripts: a partner chooses the name and the bytes) is served as
# application/octet-stream, always as an attachment, never sniffed, in a sandbox.
PASSIVE_MEDIA_TYPES = {
    ".eval": "application/zip",  # an Inspect log (a zip archive); `inspect view` opens it
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".tar": "application/x-tar",
    ".parquet": "application/vnd.apache.parquet",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".age": "application/octet-stream",
}


DOWNLOAD_TYPES = sorted({"application/octet-stream", *PASSIVE_MEDIA_TYPES.values()})


def media_type_for(filename: str | None) -> str:
    """The ``Content-Type`` for a download named ``filename`` (see :data:`PASSIVE_MEDIA_TYPES`)."""
    suffix = Path(filename or "").suffix.lower()
    return PASSIVE_MEDIA_TYPES.get(suffix, "application/octet-stream")


def disposition_filename(header: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header gives (``filename*`` first), if it is a
    safe base name (:func:`is_base_name`); else None."""
    if not header:
        return None
    extended = re.search(r"filename\*\s*=\s*UTF-8''([^;\s]+)", header, re.IGNORECASE)
    if extended:
        try:
            name: object = unquote(extended.group(1), errors="strict")
        except UnicodeDecodeError:
            return None
    else:
        message = Message()
        message["content-disposition"] = header
        name = message.get_filename()
    return name if isinstance(name, str) and is_base_name(name) else None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """A temporary file beside ``path``, moved to ``path`` only if the block succeeds.

    With ``overwrite=False`` an existing ``path`` raises :class:`FileExistsError`, before the
    block runs and again at the end if one appeared meanwhile.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _place_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists: a hard link fails if it appeared
    meanwhile; where the file system has no hard links, a last check and a rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FUSE file systems)
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


def write_atomically(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, overwrite=overwrite) as out:
        out.write(data)


def open_sealed_file(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    envelope: Envelope,
    identities: Iterable[Identity],
    keysets: Sequence[KeySet] | None = None,
    trusted: Mapping[str, VerifyKey] | None = None,
    origin: str | None = None,
    overwrite: bool = False,
) -> Manifest:
    """``crypto.sealed.open_sealed`` from file ``path`` to file ``out_path``, all or nothing
    (``keysets`` or ``trusted``: the origin's keys, as for ``crypto.sealed.verify_manifest``).

    The plaintext is written to a temporary file (mode 0600) in ``out_path``'s folder and renamed
    to ``out_path`` only when the signature, header digest, MAC, every chunk and the plaintext
    digest have checked out. On any failure the temporary file is removed and nothing is left.
    """
    from crypto.sealed import open_sealed

    with open(path, "rb") as src, atomic_write(out_path, overwrite=overwrite) as out:
        return open_sealed(
            src,
            out,
            envelope=envelope,
            identities=identities,
            keysets=keysets,
            trusted=trusted,
            origin=origin,
        )


def seal_file(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    **kwargs: Any,
) -> Sealed:
    """``crypto.sealed.seal`` from file ``path`` to file ``out_path`` (written atomically, like
    :func:`open_sealed_file`). Keyword arguments are those of ``seal``."""
    from crypto.sealed import seal

    with open(path, "rb") as src, atomic_write(out_path, overwrite=overwrite) as out:
        return seal(src, out, **kwargs)
