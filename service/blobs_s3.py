"""Content-addressed ciphertext in an S3-compatible object store (AWS S3, SeaweedFS, MinIO, ...).

The same interface and guarantees as :class:`service.blobs.FileBlobStore`, on a bucket instead
of a folder: blobs are named ``<prefix>/<aa>/<bb>/<sha256>`` by the SHA-256 of their bytes; only
ciphertext is ever written; the client is boto3, created once and shared by every thread.

Writing, memory flat: a writer holds at most one part (``ENTENTE_S3_PART_BYTES``) in memory.
The digest, and so the key, is known only once the last byte is written, so:

- a blob smaller than one part is sent with one ``PutObject`` under its final key when it is
  placed: S3 makes an object visible only once the request that writes it completes;
- a larger blob goes as a multipart upload to a temporary key ``<prefix>/tmp/<random>``
  (invisible under its content address while it is written), which ``place`` completes and then
  copies server-side (``CopyObject``, or ``UploadPartCopy`` ranges above 5 GiB) to the final key,
  deleting the temporary object after. A copy appears at the final key whole or not at all, so
  a reader never sees a partial blob under a content address. (A multipart upload cannot be
  completed under the final key instead: its key is fixed when it starts, before the digest is
  known.)

Before anything appears under a content address the store records the digest in its journal
(:class:`service.blobs.BlobJournal`), so a crash before the referring row commits leaves an
entry for the start-up sweep. :meth:`S3BlobStore.clean_temporary` removes what a crash left:
objects under ``<prefix>/tmp/`` and the store's multipart uploads. A long write keeps a claim
alive in the journal (:class:`service.blobs.Heartbeat`: touched as bytes arrive, and before each
range of a copy above 5 GiB), and the temporary objects and uploads of a young claim are
spared; a copy's upload at a final key, which names no claim, is aborted past the grace period.

An object PUT is durable once acknowledged, so :meth:`S3BlobStore.sync_placed` has nothing to do.

Reading streams the object (``GetObject``); a connection that breaks mid-body is resumed with a
``Range`` request from the last byte read, pinned to the object's ETag (``If-Match``).

Every failure of the object store leaves this module as :class:`service.errors.BlobStoreError`
(or :class:`service.errors.NotFoundError` for a missing blob); credentials never appear in its
messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.blobs import BlobJournal, Heartbeat, NoJournal, temporary_token
from service.errors import BlobStoreError, NotFoundError
from service.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef, ObjectTypeDef

__all__ = ["S3BlobStore", "s3_client"]

log = logging.getLogger("entente.blobs")

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
COPY_MAX = 5 << 30  # bytes: the most one CopyObject may copy (S3's limit)
COPY_PART = 1 << 30  # bytes per UploadPartCopy range above that
_READ_RESUMES = 3  # times a broken read is resumed with a Range request
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


def s3_client(settings: Settings) -> S3Client:
    """A boto3 S3 client from the settings; whatever they leave unset comes from boto3's usual
    sources (``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, profiles, ...)."""
    secret = settings.s3_secret_access_key
    session = boto3.session.Session(
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
        region_name=settings.s3_region,
    )
    config = Config(
        s3={"addressing_style": settings.s3_addressing_style},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=settings.request_timeout_seconds,
        max_pool_connections=max(10, settings.body_worker_threads * 2),
    )
    return session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code") or status or "error")


def _failed(what: str, exc: Exception) -> BlobStoreError:
    reason = _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    log.warning("blob store: %s failed: %s", what, exc)
    return BlobStoreError(f"the blob store could not {what} ({reason})")


class _S3BlobWriter:
    def __init__(self, store: S3BlobStore) -> None:
        self._store = store
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        token = secrets.token_hex(16)
        self._tmp_key = store.key(f"tmp/{token}")
        self._claim = store.heartbeat(token)
        self._upload: str | None = None  # the multipart upload, once a whole part was written
        self._parts: list[CompletedPartTypeDef] = []
        self._closed = False
        self._tmp_written = False  # the multipart upload completed: an object to delete

    @property
    def size(self) -> int:
        return self._size

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._closed:
            raise ValueError("blob writer is closed")
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self._size += len(view)
        self._claim.beat()
        part = self._store.part_bytes
        while view:
            room = part - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) >= part:
                self._send_part()
        return len(data)

    def _send_part(self) -> None:
        """Upload the buffer as the next part of the multipart upload (started on demand)."""
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload is None:
                started = client.create_multipart_upload(Bucket=bucket, Key=self._tmp_key)
                self._upload = started["UploadId"]
            number = len(self._parts) + 1
            sent = client.upload_part(
                Bucket=bucket,
                Key=self._tmp_key,
                UploadId=self._upload,
                PartNumber=number,
                Body=bytes(self._buf),
            )
        except (ClientError, BotoCoreError) as exc:
            raise _failed("store a part of a blob", exc) from None
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})
        self._buf.clear()

    def commit(self) -> str:
        """Store the blob under its content address; durable once this returns."""
        return self.place()

    def place(self, *, journaled: bool = False) -> str:
        """Store the blob under its content address (journaled first, unless the caller did)."""
        try:
            if self._closed:
                raise ValueError("blob writer is closed")
            self._closed = True
            digest, store = self._hash.hexdigest(), self._store
            if not journaled:
                store.journal.intend(digest)  # before it can appear under its address
            if self._upload is None:
                store.put(digest, bytes(self._buf))
            else:
                if self._buf:
                    self._send_part()
                self._complete()
                store.copy(self._tmp_key, digest, self._size, beat=self._claim.beat)
                self._drop_temporary()
            self._buf = bytearray()
            self._claim.release()
            return digest
        except BaseException:
            self.abort()
            raise

    def _complete(self) -> None:
        assert self._upload is not None  # noqa: S101 - checked by the caller
        try:
            self._store.client.complete_multipart_upload(
                Bucket=self._store.bucket,
                Key=self._tmp_key,
                UploadId=self._upload,
                MultipartUpload={"Parts": self._parts},
            )
        except (ClientError, BotoCoreError) as exc:
            raise _failed("complete the upload of a blob", exc) from None
        self._upload = None
        self._tmp_written = True

    def _drop_temporary(self) -> None:
        if self._tmp_written:
            self._tmp_written = False
            try:
                self._store.client.delete_object(Bucket=self._store.bucket, Key=self._tmp_key)
            except (ClientError, BotoCoreError) as exc:  # clean_temporary removes it later
                log.warning("blob store: could not delete a temporary object: %s", exc)

    def abort(self) -> None:
        self._closed = True
        self._buf = bytearray()
        if self._upload is not None:
            upload, self._upload = self._upload, None
            try:
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._tmp_key, UploadId=upload
                )
            except (ClientError, BotoCoreError) as exc:  # clean_temporary aborts it later
                log.warning("blob store: could not abort an upload: %s", exc)
        self._drop_temporary()
        self._claim.release()

    def __enter__(self) -> _S3BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class _S3Reader(io.RawIOBase):
    """The body of one object, read in order; a broken connection resumes with ``Range``."""

    def __init__(self, store: S3BlobStore, key: str, got: Any, offset: int = 0) -> None:
        self._store, self._key = store, key
        self._etag: str = got["ETag"]
        self._length: int = offset + got["ContentLength"]
        self._body: Any = got["Body"]
        self._pos = offset
        self._resumes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self._length or not view:
            return 0
        while True:
            try:
                data: bytes = self._body.read(len(view))
            except (BotoCoreError, OSError) as exc:
                self._resume(exc)
                continue
            if not data and self._pos < self._length:  # cut short without an error
                self._resume(None)
                continue
            view[: len(data)] = data
            self._pos += len(data)
            return len(data)

    def _resume(self, exc: Exception | None) -> None:
        if self._resumes >= _READ_RESUMES:
            raise BlobStoreError("the blob store broke off reading a blob") from exc
        self._resumes += 1
        self._close_body()
        try:
            got = self._store.client.get_object(
                Bucket=self._store.bucket,
                Key=self._key,
                Range=f"bytes={self._pos}-",
                IfMatch=self._etag,
            )
        except (ClientError, BotoCoreError) as again:
            raise _failed("resume reading a blob", again) from None
        self._body = got["Body"]

    def _close_body(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection may fail to close: dropped
            self._body.close()

    def close(self) -> None:
        if not self.closed:
            self._close_body()
        super().close()


class S3BlobStore:
    """Blobs in ``s3://<bucket>/<prefix>``: ``<prefix>/<aa>/<bb>/<sha256>``; temporary objects
    and multipart uploads under ``<prefix>/tmp/``."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        part_bytes: int = 8 << 20,
        journal: BlobJournal | None = None,
        heartbeat_seconds: float = 900.0,
        clock: Callable[[], float] = time.time,
        copy_max: int = COPY_MAX,
        copy_part: int = COPY_PART,
    ) -> None:
        if part_bytes < 5 << 20:
            raise ValueError("S3 parts are at least 5 MiB")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_bytes = part_bytes
        self.journal: BlobJournal = journal if journal is not None else NoJournal()
        self.heartbeat_seconds = heartbeat_seconds  # seconds between touches of a write's claim
        self.clock = clock
        self.copy_max = copy_max  # above this, a copy goes in UploadPartCopy ranges of copy_part
        self.copy_part = copy_part

    def heartbeat(self, token: str) -> Heartbeat:
        return Heartbeat(self.journal, token, every=self.heartbeat_seconds, clock=self.clock)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, journal: BlobJournal | None = None
    ) -> S3BlobStore:
        location = settings.blob_location()
        if location is None:
            raise ValueError("ENTENTE_BLOB_URL does not name an S3 store")
        bucket, prefix = location
        return cls(
            s3_client(settings),
            bucket,
            prefix,
            part_bytes=settings.s3_part_bytes,
            journal=journal,
            heartbeat_seconds=settings.blob_orphan_grace_seconds / 4,
        )

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def key_for(self, digest: str) -> str:
        if not _DIGEST_RE.match(digest):
            raise NotFoundError("no such blob")
        return self.key(f"{digest[:2]}/{digest[2:4]}/{digest}")

    def writer(self) -> _S3BlobWriter:
        return _S3BlobWriter(self)

    def sync_placed(self) -> None:
        return None  # an acknowledged PUT is durable

    def put(self, digest: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key_for(digest), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise _failed("store a blob", exc) from None

    def copy(
        self, source_key: str, digest: str, size: int, *, beat: Callable[[], None] = lambda: None
    ) -> None:
        """Copy ``source_key`` to ``digest``'s key server-side; ``beat`` before each range."""
        target = self.key_for(digest)
        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": source_key}
        try:
            if size <= self.copy_max:
                self.client.copy_object(Bucket=self.bucket, Key=target, CopySource=source)
                return
            started = self.client.create_multipart_upload(Bucket=self.bucket, Key=target)
            upload = started["UploadId"]
            try:
                parts: list[CompletedPartTypeDef] = []
                for number, start in enumerate(range(0, size, self.copy_part), start=1):
                    beat()
                    end = min(start + self.copy_part, size) - 1
                    done = self.client.upload_part_copy(
                        Bucket=self.bucket, Key=target, UploadId=upload, PartNumber=number,
                        CopySource=source, CopySourceRange=f"bytes={start}-{end}",
                    )  # fmt: skip
                    parts.append({"ETag": done["CopyPartResult"]["ETag"], "PartNumber": number})
                self.client.complete_multipart_upload(Bucket=self.bucket, Key=target,
                    UploadId=upload, MultipartUpload={"Parts": parts})  # fmt: skip
            except BaseException:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload)
                raise
        except (ClientError, BotoCoreError) as exc:
            raise _failed("place a blob", exc) from None

    def open(self, digest: str, *, offset: int = 0) -> BinaryIO:
        """The blob's bytes, from ``offset`` on (a ``Range`` request)."""
        key = self.key_for(digest)
        try:
            if offset:
                got = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-")
            else:
                got = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFoundError("the ciphertext for this artifact is missing") from None
            raise _failed("read a blob", exc) from None
        except BotoCoreError as exc:
            raise _failed("read a blob", exc) from None
        return io.BufferedReader(_S3Reader(self, key, got, offset), buffer_size=1 << 16)

    def _head(self, digest: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key_for(digest))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise _failed("look up a blob", exc) from None
        except BotoCoreError as exc:
            raise _failed("look up a blob", exc) from None
        return head["ContentLength"]

    def exists(self, digest: str) -> bool:
        return self._head(digest) is not None

    def size(self, digest: str) -> int:
        size = self._head(digest)
        if size is None:
            raise NotFoundError("no such blob")
        return size

    def delete(self, digest: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key_for(digest))
        except (ClientError, BotoCoreError) as exc:
            raise _failed("delete a blob", exc) from None
        self.journal.forget([digest])

    def _list(self, prefix: str) -> Iterator[ObjectTypeDef]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        try:
            for page in pages:
                yield from page.get("Contents", [])
        except (ClientError, BotoCoreError) as exc:
            raise _failed("list blobs", exc) from None

    def iter_digests(self) -> Iterator[str]:
        """Every blob in the store (a whole listing: for tools and tests, not the sweep)."""
        for item in self._list(self.key("")):
            if self._is_blob_key(item["Key"]):
                yield item["Key"].rsplit("/", 1)[-1]

    def clean_temporary(
        self,
        older_than_seconds: float = 3600.0,
        *,
        alive: Collection[str] = (),
        now: float | None = None,
    ) -> int:
        """Remove temporary objects (``<prefix>/tmp/``) and abort multipart uploads (the whole
        prefix's) older than the given age, except those of ``alive`` (the tokens of writes
        whose claim in the journal is young)."""
        cutoff = datetime.fromtimestamp(
            (time.time() if now is None else now) - older_than_seconds, UTC
        )
        tmp = self.key("tmp/")
        removed = 0
        for item in self._list(tmp):
            if temporary_token(item["Key"]) in alive:
                continue
            if item["LastModified"] < cutoff:
                self._delete_keys([item["Key"]])
                removed += 1
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.key("")
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    key = upload["Key"]
                    if key.startswith(tmp):
                        if temporary_token(key) in alive:
                            continue
                    elif not self._is_blob_key(key):  # not this store's: left alone
                        continue
                    if upload["Initiated"] < cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
        except (ClientError, BotoCoreError) as exc:
            raise _failed("clean abandoned uploads", exc) from None
        return removed

    def _is_blob_key(self, key: str) -> bool:
        name = key.rsplit("/", 1)[-1]
        return bool(_DIGEST_RE.match(name)) and key == self.key_for(name)

    def _delete_keys(self, keys: Sequence[str]) -> None:
        try:
            for key in keys:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _failed("delete a temporary object", exc) from None
