"""Resumable uploads: the body of a ``POST /v1/artifacts`` that arrives over several requests.

IETF httpbis draft *Resumable Uploads for HTTP* (draft-ietf-httpbis-resumable-upload). An
upload is created by a ``POST /v1/artifacts`` whose ``Upload-Complete`` is false, holds the
bytes received so far, and is appended to at its offset until its last append; the whole body
is then carried out as the share it would have been (``service.api.uploads``). The store,
``service.uploads.store``: :func:`create`, :func:`state`, :func:`append`, :func:`reopen`,
:func:`finish` (the share was carried out: the bytes go, the row stays until it expires),
:func:`discard` and :func:`purge_expired`; the stored body, read back as a pull function, is
:func:`plaintext` (``service.uploads.reading``).

Nothing is stored in plaintext. The bytes each request adds are one *segment*: an age file
(``crypto.age``: a random file key, ChaCha20-Poly1305 STREAM in 64 KiB chunks) to this node's
own identity (the hybrid post-quantum one when the node has it), written as a blob of the node's
blob store. Its plaintext begins with a line naming the upload and the offset it was written
for, checked before any of it is passed on, and the database records the blob's SHA-256, checked
as it is read: a store that swapped two segments (both valid age files to the node) or served
one of another upload is caught instead of reordering the body. The file key is
sealed to the node's identity, which every replica sharing the database and the store holds,
so an upload begun on one replica is resumed on another, and after a restart; a segment is
opened with any identity of the node, current or retired.

A segment is journaled like any blob (``service.blob_journal``): the transaction that records
it (and moves the upload's offset, only if the offset is still the one the append started
from) drops its journal row; a segment whose transaction never committed is an orphan the
sweep removes. An upload's rows go in one transaction that journals its segments for deletion,
so a crash before the store deletes them leaves rows for the sweep, never a lost blob.

An append interrupted by its client (a lost connection, a stalled body) keeps what arrived:
its segment is completed with the bytes read so far and recorded, and the interruption raised
again. Limits: the whole body is at most ``max_size`` bytes (the upload limit of
``POST /v1/artifacts``), a token has at most ``max_open_uploads`` uploads not yet complete, an
upload expires ``upload_expiry_seconds`` after its last append. Memory stays flat: segments are
encrypted and decrypted as they stream.

This package does not parse headers nor carry out the share.
"""

from service.uploads.reading import plaintext
from service.uploads.store import (
    UPLOADS,
    UploadState,
    append,
    create,
    discard,
    finish,
    purge_expired,
    reopen,
    state,
)

__all__ = [
    "UPLOADS",
    "UploadState",
    "append",
    "create",
    "discard",
    "finish",
    "plaintext",
    "purge_expired",
    "reopen",
    "state",
]
