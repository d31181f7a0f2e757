"""The blob store contract, on both stores: the folder and an S3-compatible object store (a real
SeaweedFS started by the suite, ``tests/seaweed.py``), plus what only the object store does:
multipart uploads with a bounded part size, flat memory, reads resumed with ``Range``, and
every failure of the object store as one error."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ResponseStreamingError

from service.blobs import BlobStore, FileBlobStore
from service.blobs_s3 import S3BlobStore
from service.errors import BlobStoreError, NotFoundError, UsageError
from service.settings import Settings
from tests.seaweed import BUCKET, SeaweedFS

PART = 5 << 20  # bytes: the smallest part S3 allows, so that multipart tests stay small


class Journal:
    """Records the journal calls, and whether the blob was already visible at ``intend``."""

    def __init__(self) -> None:
        self.store: BlobStore | None = None
        self.intended: list[tuple[str, bool]] = []
        self.forgotten: list[str] = []

    def intend(self, *digests: str) -> None:
        assert self.store is not None
        self.intended.extend((digest, self.store.exists(digest)) for digest in digests)

    def touch(self, name: str, /) -> None:
        raise AssertionError(f"a short write touched its claim {name}")

    def forget(self, digests: Any, /) -> None:
        self.forgotten.extend(digests)


def s3_settings(server: SeaweedFS, prefix: str, **changes: Any) -> Settings:
    """The settings a node on ``server`` reads from its environment, with ``changes``."""
    given: dict[str, Any] = {
        k.removeprefix("ENTENTE_").lower(): v for k, v in server.env(prefix).items()
    }
    return Settings(**{**given, **changes})


def s3_store(server: SeaweedFS, prefix: str, journal: Journal | None = None) -> S3BlobStore:
    return S3BlobStore.from_settings(
        s3_settings(server, prefix, s3_part_bytes=PART), journal=journal
    )


@pytest.fixture(params=["folder", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def store(kind: str, tmp_path: Path, journal: Journal, request: pytest.FixtureRequest) -> BlobStore:
    made: BlobStore
    if kind == "folder":
        made = FileBlobStore(tmp_path / "blobs", journal=journal)
    else:
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        made = s3_store(server, request.getfixturevalue("s3_prefix"), journal)
    journal.store = made
    return made


def put(store: BlobStore, data: bytes, chunk: int = 64 << 10) -> str:
    writer = store.writer()
    for start in range(0, len(data), chunk):
        writer.write(data[start : start + chunk])
    return writer.place()


def read_all(store: BlobStore, digest: str) -> bytes:
    with store.open(digest) as fh:
        return fh.read()


def test_a_blob_is_named_by_its_digest_and_reads_back(store: BlobStore, journal: Journal) -> None:
    data = os.urandom(100_000)
    digest = put(store, data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert read_all(store, digest) == data
    assert store.exists(digest) and store.size(digest) == len(data)
    assert list(store.iter_digests()) == [digest]
    assert journal.intended == [(digest, False)]  # journaled before it was visible


def test_a_blob_reads_from_an_offset(store: BlobStore) -> None:
    """What a partial payload answer (``Range: bytes=N-``) streams."""
    data = os.urandom(300_000)
    digest = put(store, data)
    for offset in (1, 123_457, len(data) - 1):
        with store.open(digest, offset=offset) as fh:
            assert fh.read() == data[offset:]


def test_an_empty_blob(store: BlobStore) -> None:
    digest = put(store, b"")
    assert digest == hashlib.sha256(b"").hexdigest() and read_all(store, digest) == b""


def test_an_aborted_write_leaves_nothing(store: BlobStore, journal: Journal) -> None:
    data = os.urandom(PART + 1000)  # one part already sent to an object store
    writer = store.writer()
    writer.write(data)
    writer.abort()
    assert not store.exists(hashlib.sha256(data).hexdigest())
    assert list(store.iter_digests()) == [] and journal.intended == []
    assert store.clean_temporary(older_than_seconds=0) == 0  # nothing was left to clean


def test_a_blob_is_invisible_until_placed(store: BlobStore) -> None:
    data = os.urandom(2 * PART + 10)
    digest = hashlib.sha256(data).hexdigest()
    writer = store.writer()
    writer.write(data)
    assert writer.size == len(data)
    assert not store.exists(digest) and list(store.iter_digests()) == []
    assert writer.place() == digest
    assert store.exists(digest) and read_all(store, digest) == data


def test_delete_removes_the_blob_and_forgets_it(store: BlobStore, journal: Journal) -> None:
    digest = put(store, b"ciphertext")
    store.delete(digest)
    assert not store.exists(digest) and journal.forgotten == [digest]
    with pytest.raises(NotFoundError):
        store.open(digest)
    store.delete(digest)  # twice: still fine


@pytest.mark.parametrize("name", ["0" * 64, "../../etc/passwd", "A" * 64, ""])
def test_unknown_or_malformed_names_are_not_found(store: BlobStore, name: str) -> None:
    with pytest.raises(NotFoundError):
        store.open(name)


def test_an_abandoned_write_is_cleaned_once_old(store: BlobStore) -> None:
    writer = store.writer()
    writer.write(os.urandom(PART + 10))  # a crash now: no abort
    assert store.clean_temporary(older_than_seconds=3600) == 0  # young: maybe in flight
    assert store.clean_temporary(older_than_seconds=0) >= 1
    assert store.clean_temporary(older_than_seconds=0) == 0
    writer.abort()  # the dead process's handles: closed, with nothing left to remove


# --- the object store only ----------------------------------------------------------------------


@pytest.fixture
def s3(seaweedfs: SeaweedFS, s3_prefix: str, journal: Journal) -> S3BlobStore:
    made = s3_store(seaweedfs, s3_prefix, journal)
    journal.store = made
    return made


def _keys(store: S3BlobStore) -> list[str]:
    listed = store.client.list_objects_v2(Bucket=BUCKET, Prefix=store.prefix + "/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_a_blob_larger_than_a_part_goes_as_a_multipart_upload(
    s3: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for name in ("put_object", "upload_part", "complete_multipart_upload", "copy_object"):
        original = getattr(s3.client, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(s3.client, name, spy)
    data = os.urandom(2 * PART + 12345)
    digest = put(s3, data, chunk=1 << 20)
    assert calls == [
        "upload_part", "upload_part", "upload_part", "complete_multipart_upload", "copy_object",
    ]  # fmt: skip
    assert read_all(s3, digest) == data
    assert _keys(s3) == [s3.key_for(digest)]  # the temporary object is gone
    small = put(s3, b"small")
    assert calls[-1] == "put_object" and read_all(s3, small) == b"small"


def test_memory_stays_flat_for_a_large_upload_and_read(s3: S3BlobStore) -> None:
    chunk = os.urandom(1 << 20)
    total = 48 << 20  # bytes: nine and a half parts
    hasher = hashlib.sha256()
    tracemalloc.start()
    try:
        writer = s3.writer()
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            hasher.update(chunk)
        digest = writer.place()
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read = hashlib.sha256()
        with s3.open(digest) as fh:
            while data := fh.read(1 << 20):
                read.update(data)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == hasher.hexdigest() == read.hexdigest()
    assert upload_peak < 4 * PART, upload_peak  # a part buffered, a copy sent: not 48 MiB
    assert read_peak < 8 << 20, read_peak


class _Claims(Journal):
    """A journal that lets long writes touch their claim, and records each touch."""

    def __init__(self) -> None:
        super().__init__()
        self.touches: list[str] = []

    def touch(self, name: str, /) -> None:
        self.touches.append(name)


def test_a_copy_in_parts_keeps_its_claim_alive_between_ranges(
    seaweedfs: SeaweedFS, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above 5 GiB (here, scaled down: above 6 MiB) the move to the content address is a
    server-side copy in ranges, which can take minutes: the write's claim is touched before
    each range, so the sweep never takes its temporary object for abandoned meanwhile."""
    claims = _Claims()
    ticks = iter(range(0, 10**9, 1000))  # every reading of the clock: 1,000 s later
    store = S3BlobStore(
        s3_store(seaweedfs, s3_prefix).client, BUCKET, s3_prefix, part_bytes=PART,
        journal=claims, heartbeat_seconds=1, clock=lambda: float(next(ticks)),
        copy_max=6 << 20, copy_part=PART,
    )  # fmt: skip
    claims.store = store
    touched_at_each_range: list[int] = []
    part_copy = store.client.upload_part_copy

    def spy(**kw: Any) -> Any:
        touched_at_each_range.append(len(claims.touches))
        return part_copy(**kw)

    monkeypatch.setattr(store.client, "upload_part_copy", spy)
    data = os.urandom(2 * PART + 4321)
    digest = put(store, data, chunk=PART)
    assert read_all(store, digest) == data
    assert len(touched_at_each_range) == 3  # 5 MiB, 5 MiB and the rest
    first = touched_at_each_range[0]  # touches while the bytes were written, and one more
    assert touched_at_each_range == [first, first + 1, first + 2]  # one before each range
    assert set(claims.touches) == {claims.touches[0]}  # the one claim of this write


def test_an_abandoned_copy_upload_at_a_content_address_is_aborted(s3: S3BlobStore) -> None:
    """A crash mid-copy leaves a multipart upload under the final key (outside tmp/): the
    cleaning of abandoned writes aborts it once old, and leaves uploads not the store's."""
    digest = hashlib.sha256(b"never completed").hexdigest()
    s3.client.create_multipart_upload(Bucket=BUCKET, Key=s3.key_for(digest))
    s3.client.create_multipart_upload(Bucket=BUCKET, Key=s3.key("elsewhere/not-a-blob"))

    def uploads() -> list[str]:
        listed = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=s3.key(""))
        return sorted(u["Key"] for u in listed.get("Uploads", []))

    assert s3.clean_temporary(older_than_seconds=3600) == 0  # young: maybe still copying
    assert s3.clean_temporary(older_than_seconds=0) == 1
    assert uploads() == [s3.key("elsewhere/not-a-blob")]


class _Breaking(io.RawIOBase):
    """A response body that breaks off after ``limit`` bytes, as a dropped connection does."""

    def __init__(self, body: Any, limit: int) -> None:
        self._body, self._left = body, limit

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise ResponseStreamingError(error="connection reset")
        data: bytes = self._body.read(min(size, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._body.close()
        super().close()


def _breaking_reads(
    s3: S3BlobStore, monkeypatch: pytest.MonkeyPatch, limit: int, ranges: list[str]
) -> None:
    """Every GET of ``s3`` from now on breaks off after ``limit`` bytes; ``ranges`` collects
    the Range header of each."""
    get = s3.client.get_object

    def spy(**kw: Any) -> dict[str, Any]:
        ranges.append(str(kw.get("Range", "")))
        got: dict[str, Any] = dict(get(**kw))
        got["Body"] = _Breaking(got["Body"], limit)
        return got

    monkeypatch.setattr(s3.client, "get_object", spy)


def test_a_broken_read_resumes_with_a_range_request(
    s3: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 << 20)
    digest = put(s3, data)
    ranges: list[str] = []
    _breaking_reads(s3, monkeypatch, 1 << 20, ranges)  # each connection breaks after 1 MiB
    assert read_all(s3, digest) == data
    assert ranges == ["", "bytes=1048576-", "bytes=2097152-"]


def test_a_blob_replaced_mid_read_is_not_spliced(
    s3: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resumed read is pinned to the ETag of the first: never two objects' bytes in one."""
    data = os.urandom(1 << 20)
    digest = put(s3, data)
    _breaking_reads(s3, monkeypatch, 1000, [])
    with s3.open(digest) as fh:
        fh.read(10)
        s3.client.put_object(Bucket=BUCKET, Key=s3.key_for(digest), Body=b"other bytes")
        with pytest.raises(BlobStoreError):
            fh.read()


def test_every_object_store_failure_is_a_blob_store_error(
    seaweedfs: SeaweedFS, s3_prefix: str
) -> None:
    wrong = s3_settings(
        seaweedfs, s3_prefix, s3_access_key_id="nobody", s3_secret_access_key="wrong"
    )
    store = S3BlobStore.from_settings(wrong)
    writer = store.writer()
    writer.write(b"ciphertext")
    with pytest.raises(BlobStoreError) as caught:
        writer.place()
    assert "wrong" not in str(caught.value) and caught.value.status == 503
    with pytest.raises(BlobStoreError):
        store.open("0" * 64)
    nothing_there = boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
        aws_access_key_id="a", aws_secret_access_key="b",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )  # fmt: skip
    gone = S3BlobStore(nothing_there, "bucket", "x")
    with pytest.raises(BlobStoreError):
        gone.exists("0" * 64)
    with pytest.raises(BlobStoreError):
        put(gone, b"ciphertext")


@pytest.mark.parametrize(
    "url", ["s3://", "s3://UPPER/x", "s3://bucket/../x", "s3://bucket//x", "http://bucket/x"]
)
def test_a_malformed_blob_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(UsageError, match="ENTENTE_BLOB_URL"):
        Settings.load(blob_url=url)


def test_the_prefix_is_taken_from_the_url() -> None:
    assert Settings(blob_url="s3://bucket/a/b/").blob_location() == ("bucket", "a/b")
    assert Settings(blob_url="s3://bucket").blob_location() == ("bucket", "")
    assert Settings().blob_location() is None
