from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.nodekit import CREATED


@pytest.fixture(autouse=True)
def _dispose_nodes() -> Iterator[None]:
    yield
    while CREATED:
        CREATED.pop().db.dispose()
