"""``entente share``'s retries (``service.cli.client.send_with_retries``): bounded, growing
pauses, only for what a retry can fix, each one said on stderr."""

from __future__ import annotations

import json

import httpx
import pytest

from service.cli.client import RETRY_MAX_SECONDS, send_with_retries
from service.errors import RemoteError

REQUEST = httpx.Request("POST", "http://node/v1/artifacts")


def _problem(status: int, kind: str) -> httpx.Response:
    body = json.dumps({"type": f"urn:entente:problem:{kind}", "title": "t", "status": status,
                       "detail": "d"}).encode()  # fmt: skip
    return httpx.Response(
        status, content=body, headers={"content-type": "application/problem+json"}
    )


class Attempts:
    def __init__(self, *outcomes: httpx.Response | Exception) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self) -> httpx.Response:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_a_lost_connection_is_retried_until_an_answer(capsys: pytest.CaptureFixture[str]) -> None:
    pauses: list[float] = []
    attempts = Attempts(
        httpx.RemoteProtocolError("Server disconnected", request=REQUEST),
        _problem(409, "idempotency-key-in-flight"),
        httpx.Response(201, json={"id": "art_1"}),
    )
    response = send_with_retries(attempts, retries=4, sleep=pauses.append)
    assert response.status_code == 201
    assert attempts.calls == 3
    assert len(pauses) == 2 and pauses[1] > pauses[0]
    err = capsys.readouterr().err
    assert "connection was lost" in err and "attempt 2 of 5" in err
    assert "still carrying out an earlier attempt" in err


def test_retries_are_bounded() -> None:
    pauses: list[float] = []
    attempts = Attempts(httpx.ConnectError("refused", request=REQUEST))
    with pytest.raises(RemoteError, match="3 attempts"):
        send_with_retries(attempts, retries=2, sleep=pauses.append)
    assert attempts.calls == 3
    assert len(pauses) == 2 and all(p <= RETRY_MAX_SECONDS * 1.25 for p in pauses)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(_problem(403, "policy-denied"), id="refused"),
        pytest.param(_problem(422, "idempotency-key-reused"), id="key-reused"),
        pytest.param(_problem(409, "conflict"), id="another-conflict"),
    ],
)
def test_a_refusal_is_not_retried(answer: httpx.Response) -> None:
    attempts = Attempts(answer)
    assert send_with_retries(attempts, retries=4, sleep=lambda s: None) is answer
    assert attempts.calls == 1


def test_the_last_retryable_answer_is_returned() -> None:
    attempts = Attempts(_problem(503, "busy"))
    assert send_with_retries(attempts, retries=1, sleep=lambda s: None).status_code == 503
    assert attempts.calls == 2


def test_tlp_labels_are_accepted_as_people_write_them() -> None:
    from service.cli.client import tlp_label

    assert tlp_label("amber") == "TLP:AMBER"
    assert tlp_label(" Amber+Strict ") == "TLP:AMBER+STRICT"
    assert tlp_label("tlp:green") == "TLP:GREEN"
    assert tlp_label("TLP:RED") == "TLP:RED"
    assert tlp_label("purple") == "TLP:PURPLE"  # passed on: the node refuses it by name
