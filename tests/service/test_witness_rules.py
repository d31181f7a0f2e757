"""The tlog-witness rules as a pure checker: facts in, a verdict out, no database."""

from __future__ import annotations

from crypto.merkle import EMPTY_ROOT
from crypto.note import AddCheckpointRequest, Checkpoint
from service.audit.errors import WitnessSizeConflictError
from service.audit.witness_rules import (
    Refusal,
    Submission,
    check_against_cosigned,
    check_submitter,
    parse_submission,
)
from service.errors import ConflictError, InvalidInputError, NotFoundError

ROOT = bytes(range(32))


def _submission(*, old: int, size: int, root: bytes = ROOT) -> Submission:
    checkpoint = Checkpoint("entente.dev/audit/uk-aisi", size, root)
    request = AddCheckpointRequest(old_size=old, proof=(), checkpoint=b"unused")
    return Submission(b"", request, checkpoint)


def test_a_malformed_body_is_refused_before_any_origin_is_known() -> None:
    verdict = parse_submission(b"not a request")
    assert isinstance(verdict, Refusal)
    assert isinstance(verdict.error, InvalidInputError)
    assert verdict.origin is None and not verdict.error.quiet


def test_an_unknown_log_is_a_404() -> None:
    verdict = check_submitter(_submission(old=0, size=1), submitter="uk-aisi", log_owner=None)
    assert isinstance(verdict, Refusal) and isinstance(verdict.error, NotFoundError)


def test_a_stale_old_size_is_a_409_that_is_not_audited() -> None:
    verdict = check_against_cosigned(
        _submission(old=1, size=2), cosigned_size=2, cosigned_root=ROOT
    )
    assert verdict is not None and verdict.error.quiet
    assert isinstance(verdict.error, WitnessSizeConflictError) and verdict.error.latest_size == 2


def test_a_different_root_at_the_cosigned_size_is_kept_as_evidence() -> None:
    verdict = check_against_cosigned(
        _submission(old=2, size=2, root=ROOT), cosigned_size=2, cosigned_root=bytes(32)
    )
    assert verdict is not None and isinstance(verdict.error, ConflictError)
    assert verdict.evidence is not None and not verdict.error.quiet


def test_the_first_checkpoint_of_a_log_is_accepted() -> None:
    assert (
        check_against_cosigned(
            _submission(old=0, size=5), cosigned_size=0, cosigned_root=EMPTY_ROOT
        )
        is None
    )
