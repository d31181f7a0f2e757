"""Catch-up: read each partner's feed after the last cursor and fetch what never arrived.

Runs at start, then once every ``pull_interval_seconds`` per partner, each partner at its own
moment of the interval (:class:`PullLoops`). A page's items are checked and staged one by
one (small ciphertexts come inline in the page; others are downloaded, streamed and verified),
then stored together in one transaction; an artifact already held is skipped without a download,
one the inbound policy refuses is skipped after its refusal is audited. A download that breaks
off resumes where it stopped on the next round (``service.federation.partial``): the bytes
received are kept under the home, in the partner's own folder, the rest is asked for with a
``Range``, and the whole is checked against the ciphertext digest the feed names before the
receiver sees it. The receipts issued for the page go back to the partner (``POST receipts``),
which settles its outbox rows as delivered without pushing them again. A partner that cannot
be reached keeps its cursor for the next round.

What a partner can make us take is bounded, as a push is: a page of more items than asked for
is refused, at most ``MAX_PAGES_PER_ROUND`` pages are pulled per round (the rest next round), a
page's items that hold no manifest are one audit entry, not one each, the refusals of a round
past the first ``REFUSALS_AUDITED_PER_ROUND`` are counted into one summary entry
(``service.audit.budget``: each still on record, the entries a round adds bounded), an item
naming a
ciphertext larger than its manifest's plaintext can be sealed into is refused before its
download, a download stops at the size the item names (and the decryption at the manifest's
size: ``crypto.sealed.decrypt_verified``), and the partner's daily volume cap
(``service.limits.check_volume``) counts what a pull stores: once it would be passed, the pull
stores what the page brought so far and stops, its cursor kept, until the day allows.

Each partner is a bulkhead: its pull runs on its own thread (:class:`PullLoops`), and whatever
goes wrong in it (unreachable, a bad signature, a hostile page: too deep, a number too long,
malformed) is that partner's pull error, shown per partner by ``GET /v1/sync`` and ``entente sync
status``, while the other partners are pulled as usual.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlmodel import col, select

from crypto.age import largest_file
from service.audit.budget import RefusalBudget
from service.db import DATABASE_UNAVAILABLE, say_unavailable
from service.errors import (
    EntenteError,
    InvalidInputError,
    PartnerRefusedError,
    PartnerUnavailableError,
    RateLimitedError,
)
from service.federation.client import PartnerClient
from service.federation.feed import PAGE_INLINE_BUDGET
from service.federation.inbox_partial import inbox_partials
from service.federation.partial import PartialPayloads
from service.federation.receive import Received, Receiver, summarise_refusals
from service.limits import check_volume
from service.models import Partner, PullState
from service.node import Node
from service.policy_store import decision_scope

__all__ = ["PullLoops", "next_pull", "pull_all", "pull_partner", "pull_phase", "take_page"]

log = logging.getLogger("entente.pull")

PAGE_SIZE = 500  # feed items per request
PAGE_MAX_BYTES = PAGE_INLINE_BUDGET * 2 + (8 << 20)  # bytes of one feed page's JSON
MAX_PAGES_PER_ROUND = 40  # feed pages pulled from one partner per round; the rest next round
# refusals of a round's items audited one entry each; the rest are one summary entry
REFUSALS_AUDITED_PER_ROUND = 100
PULL_PARALLEL = 8  # partners pulled at the same time
OVERDUE_RECHECK = 1.0  # seconds between looks at a partner whose pull overran its next moment
_SHA256 = re.compile(r"[0-9a-f]{64}")


def pull_partner(
    node: Node,
    client: PartnerClient,
    partner: Partner,
    *,
    page: int = PAGE_SIZE,
    max_pages: int = MAX_PAGES_PER_ROUND,
) -> int:
    """Pull one partner's feed to its end, or ``max_pages`` pages of it (a feed that says
    "more" without end holds one round only); returns how many artifacts were newly stored.

    The next page is fetched (and the last page's receipts sent) on a helper thread while this
    one is verified and stored, so the partner's time and ours overlap.
    """
    with node.db.session() as session:
        state = session.get(PullState, partner.node_id)
        cursor = state.cursor if state else 0
    partials = partial_payloads(node)
    partials.clean(older_than_seconds=node.settings.blob_orphan_grace_seconds)
    inbox_partials(node).clean(older_than_seconds=node.settings.blob_orphan_grace_seconds)

    def fetch(after: int) -> dict[str, Any]:
        reply = client.call_json(
            partner,
            "GET",
            f"/federation/v1/feed?after={after}&limit={page}",
            max_reply_bytes=PAGE_MAX_BYTES,
        )
        return _checked_page(partner, reply.data, after, page)

    stored = 0
    pages = 0
    error: str | None = None
    budget = RefusalBudget(REFUSALS_AUDITED_PER_ROUND)
    with (
        ThreadPoolExecutor(1, thread_name_prefix="entente-pull") as io_thread,
        _summarised(node, partner.node_id, budget),
    ):
        try:
            ahead: Future[dict[str, Any]] | None = io_thread.submit(fetch, cursor)
            while ahead is not None:
                data = ahead.result()
                pages += 1
                nxt = data["next"]
                more = data["more"] and nxt > cursor
                if more and pages >= max_pages:
                    log.info("pulled %d pages of %s: the rest next round", pages, partner.node_id)
                    more = False
                ahead = io_thread.submit(fetch, nxt) if more else None
                volume = DailyVolume(node, partner.node_id)
                with decision_scope():  # the whole page on one policy version, checked once
                    received = take_page(
                        node, client, partner, data["items"], partials, volume=volume,
                        budget=budget,
                    )  # fmt: skip
                stored += sum(1 for r in received if r.created)
                if received:
                    io_thread.submit(_acknowledge, client, partner, received)
                if volume.refused is not None:  # the rest of the page once the day allows
                    error = volume.refused
                    ahead = None
                elif nxt > cursor:
                    cursor = nxt
                    _save(node, partner.node_id, cursor, None)
        except PartnerUnavailableError as exc:
            error = exc.message
    _save(node, partner.node_id, cursor, error)
    return stored


@contextlib.contextmanager
def _summarised(node: Node, partner: str, budget: RefusalBudget) -> Iterator[None]:
    """Audit what ``budget`` counted when the round ends, however it ends (the summary met by
    a database that does not answer is logged: the rest of the round met it too)."""
    try:
        yield
    finally:
        try:
            summarise_refusals(node, budget, sender=partner, via="pull")
        except DATABASE_UNAVAILABLE as exc:
            say_unavailable(log, exc, "the summary of %d refusals", budget.held, then="lost")


def _pull_isolated(node: Node, client: PartnerClient, partner: Partner) -> int:
    """:func:`pull_partner` as a bulkhead: whatever goes wrong while pulling one partner (its
    page, our handling of it) is recorded as that partner's pull error and never escapes. Our
    own database not answering is not the partner's error: it is said in one line."""
    try:
        return pull_partner(node, client, partner)
    except DATABASE_UNAVAILABLE as exc:
        # Nothing to record against the partner (and the record would meet the same database).
        # The cursor is saved after each page: the next round starts after the last page kept,
        # and what this page had stored already is found stored, not taken twice.
        say_unavailable(
            log, exc, "pulling %s stopped", partner.node_id, then="pulled again next round"
        )
        return 0
    except Exception as exc:
        log.exception("pulling %s failed", partner.node_id)
        why = (str(exc).splitlines() or [""])[0][:300] or type(exc).__name__
        try:
            _save(node, partner.node_id, 0, f"pulling {partner.node_id} failed: {why}")
        except DATABASE_UNAVAILABLE as unavailable:
            say_unavailable(
                log, unavailable, "could not record the pull error of %s", partner.node_id
            )
        except Exception:  # the database itself is failing: the log has it
            log.exception("could not record the pull error of %s", partner.node_id)
        return 0


def _checked_page(partner: Partner, data: Any, after: int, limit: int) -> dict[str, Any]:
    """The page's shape (``{"items": [objects], "next": int, "more": bool}``, at most ``limit``
    items), or the partner's error: a malformed page says nothing about where its feed goes on,
    and a longer one than asked for is a flood (each bad item is a refusal to audit)."""
    items = data.get("items") if isinstance(data, dict) else None
    nxt = data.get("next", after) if isinstance(data, dict) else None
    more = data.get("more", False) if isinstance(data, dict) else None
    if (
        not isinstance(items, list)
        or not all(isinstance(i, dict) for i in items)
        or not isinstance(nxt, int)
        or isinstance(nxt, bool)
        or not 0 <= nxt < 2**62
        or not isinstance(more, bool)
    ):
        raise PartnerUnavailableError(
            f"{partner.node_id} sent a malformed feed page (after {after}): a page is "
            '{"items": [objects], "next": cursor, "more": true|false}'
        )
    if len(items) > limit:
        raise PartnerUnavailableError(
            f"{partner.node_id} sent a feed page of {len(items)} items (after {after}), more "
            f"than the {limit} asked for"
        )
    return {"items": items, "next": nxt, "more": more}


def partial_payloads(node: Node) -> PartialPayloads:
    """The node's partial payloads (``<home>/partial``, a folder per partner, each under
    ``2 * max_artifact_bytes``)."""
    return PartialPayloads(
        node.home.path / "partial", max_bytes=2 * node.settings.max_artifact_bytes
    )


class DailyVolume:
    """What a partner may still deliver today (``service.limits``), spent item by item as a
    page is taken: the cap counts the bytes a pull stores as it counts a push's, so a partner
    refused at the inbox must not pass it by the feed. ``refused`` says why taking stopped."""

    def __init__(self, node: Node, partner: str) -> None:
        self.partner = partner
        self.refused: str | None = None
        try:
            self.left = check_volume(node, partner, None)
        except RateLimitedError as exc:
            self.left, self.refused = 0, f"pulling {partner} paused: {exc.message}"

    def allows(self, size: int | None) -> bool:
        """Whether an item of ``size`` bytes (None: not known before it is read) fits; as at
        the inbox, one of unknown size is refused only once nothing is left."""
        if self.refused is None and (self.left <= 0 or (size is not None and size > self.left)):
            self.refused = (
                f"pulling {self.partner} paused at its daily volume cap: an item of "
                f"{size if size is not None else 'unknown'} bytes would pass the {self.left} "
                "bytes left today (UTC); the rest of its feed is pulled once the day allows"
            )
        return self.refused is None

    def spend(self, size: int) -> None:
        self.left -= size


def _ciphertext(item: dict[str, Any]) -> tuple[str, int] | None:
    """The ciphertext's SHA-256 and size a feed item names, or None (an older origin, or
    values that are not a digest and a size: then the payload is fetched whole, as before)."""
    digest, size = item.get("ciphertext_sha256"), item.get("ciphertext_size")
    if (
        isinstance(digest, str)
        and _SHA256.fullmatch(digest)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and 0 <= size < 2**62
    ):
        return digest, size
    return None


def take_page(
    node: Node,
    client: PartnerClient,
    partner: Partner,
    items: list[Any],
    partials: PartialPayloads,
    *,
    volume: DailyVolume | None = None,
    budget: RefusalBudget | None = None,
) -> list[Received]:
    """Check, stage and store the items of one feed page of ``partner``'s (``bench/profile.py
    receive`` times it alone); a partner's error ends the page and stores nothing of it. Taking
    stops at the first item ``volume`` does not allow: the items staged before it are stored."""
    receiver = Receiver(node, sender=partner.node_id, via="pull", budget=budget)
    own = partials.of(partner.node_id)
    wanted = [i for i in items if isinstance(i, dict) and isinstance(i.get("manifest"), dict)]
    if len(wanted) < len(items):  # one audit entry for the page, however many there are
        receiver.reject(
            artifact_id=None,
            reason=f"{len(items) - len(wanted)} of the {len(items)} items of a feed page "
            "hold no manifest",
        )
    held = receiver.held([str(i.get("artifact_id", ""))[:64] for i in wanted])
    staged = []
    done: list[str] = []  # the partial payloads to remove once the page is stored
    try:
        for item in wanted:
            if volume is not None and volume.refused is not None:  # the cap was reached already
                break
            artifact_id = str(item.get("artifact_id", ""))[:64]
            expected = _ciphertext(item)
            if expected is not None:
                done.append(expected[0])
            if artifact_id in held:
                continue
            head: Any = item.get("manifest")
            if "disclosure" in item:
                head = {"manifest": head, "disclosure": item["disclosure"]}
            line = json.dumps(head, separators=(",", ":")).encode()
            try:
                checked = receiver.check(line)
                if expected is not None and expected[1] > largest_file(checked.manifest.size):
                    raise _refused(
                        receiver,
                        artifact_id,
                        f"the feed names a ciphertext of {expected[1]} bytes, more than its "
                        f"{checked.manifest.size}-byte plaintext is sealed into",
                    )
                inline = item.get("payload")
                raw = None
                if isinstance(inline, str):
                    try:
                        raw = base64.b64decode(inline, validate=True)
                    except binascii.Error:
                        raise _refused(receiver, artifact_id, "inline payload not base64") from None
                incoming = len(raw) if raw is not None else expected[1] if expected else None
                if volume is not None and not volume.allows(incoming):
                    if expected is not None:
                        done.pop()  # what was downloaded of it is kept for when the day allows
                    break
                if raw is not None:
                    staged.append(receiver.stage(checked, io.BytesIO(raw)))
                else:
                    path = f"/federation/v1/artifacts/{checked.manifest.artifact_id}/payload"
                    if expected is None:
                        with client.download(partner, path) as stream:
                            staged.append(receiver.stage(checked, stream))
                    else:
                        digest, size = expected
                        fetched = own.fetch(client, partner, path=path, digest=digest, size=size)
                        with fetched as whole:
                            staged.append(receiver.stage(checked, whole))
                if volume is not None:
                    volume.spend(staged[-1].ciphertext_size)
            except PartnerRefusedError as exc:
                if exc.status_code in (404, 410) and expected is not None:  # revoked or deleted
                    own.remove([expected[0]])
                raise
            except PartnerUnavailableError:  # the partial payload stays for the next round
                raise
            except EntenteError as exc:  # refused here: audited by the receiver
                log.info("pull from %s skipped %s: %s", partner.node_id, artifact_id, exc.message)
        received = receiver.commit(staged)
    except BaseException:
        receiver.discard(staged)
        raise
    own.remove(done)
    return received


def _refused(receiver: Receiver, artifact_id: str, reason: str) -> InvalidInputError:
    """A feed item refused here, audited as the receiver's own refusals are."""
    receiver.reject(artifact_id=artifact_id, reason=reason)
    return InvalidInputError(reason, reason="pull")


def _acknowledge(client: PartnerClient, partner: Partner, received: list[Received]) -> None:
    """Send the receipts for what a page brought; a failure only delays the partner's view."""
    receipts = [json.loads(r.receipt) for r in received]
    for start in range(0, len(receipts), 500):
        try:
            client.call_json(
                partner,
                "POST",
                "/federation/v1/receipts",
                {"receipts": receipts[start : start + 500]},
            )
        except PartnerUnavailableError as exc:
            log.info("could not send receipts to %s: %s", partner.node_id, exc.message)
            return


def _save(node: Node, partner: str, cursor: int, error: str | None) -> None:
    now = node.now()
    with node.db.session() as session:
        state = session.get(PullState, partner) or PullState(partner=partner)
        state.cursor = max(state.cursor, cursor)
        state.last_pull_at = now
        state.last_error = error
        if error is None:
            state.last_ok_at = now
        session.add(state)


def pull_phase(puller: str, partner: str) -> float:
    """Where in the pull interval ``puller`` pulls ``partner``: a fraction in [0, 1), the same
    at every start and on every replica, spread evenly over the pairs of a network."""
    digest = hashlib.sha256(f"entente-pull\n{puller}\n{partner}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def next_pull(now: float, interval: float, phase: float) -> float:
    """The first moment of the form ``k * interval + phase * interval`` at least half an
    interval after ``now``: one pull per interval, at the pair's phase (the first one after a
    start comes between a half and one and a half intervals after the catch-up)."""
    offset = phase * interval
    k = math.floor((now + interval / 2 - offset) / interval) + 1
    return k * interval + offset


def _partners(node: Node) -> list[Partner]:
    with node.db.session() as session:
        return list(session.exec(select(Partner).order_by(col(Partner.node_id))))


def pull_all(node: Node, client: PartnerClient, *, parallel: int = PULL_PARALLEL) -> int:
    """Pull every partner once, side by side, and wait; how many artifacts were stored.

    Each partner is pulled in isolation: one that fails (unreachable, or serving a hostile
    page) records its own error (``GET /v1/sync``) and the others are pulled all the same.
    """
    partners = _partners(node)
    if not partners:
        return 0
    with ThreadPoolExecutor(
        min(parallel, len(partners)), thread_name_prefix="entente-pull-partner"
    ) as pool:
        return sum(pool.map(lambda p: _pull_isolated(node, client, p), partners))


class PullLoops:
    """The pull worker's bulkheads and schedule: at most one pull in flight per partner, each
    on its own thread (up to ``parallel`` partners at once), so a slow or hostile partner holds
    only its own pull, never another partner's.

    Every partner is pulled at once when first seen (at start: the catch-up after a restart),
    then once per ``interval`` at its own moment: each (puller, partner) pair has a fixed phase
    in the interval (:func:`pull_phase`, from a hash of the two ids), so a node's pulls, and a
    network's, are spread evenly over the interval instead of all falling in the same second.
    Twenty nodes started together would otherwise pull their 380 feeds in one burst every
    interval, and every share made during it waits for the cores (docs/performance.md).
    """

    def __init__(
        self,
        node: Node,
        client: PartnerClient,
        *,
        parallel: int = PULL_PARALLEL,
        interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.node = node
        self.client = client
        self.interval = interval if interval is not None else node.settings.pull_interval_seconds
        self._clock = clock
        self._pool = ThreadPoolExecutor(parallel, thread_name_prefix="entente-pull-partner")
        self._running: dict[str, Future[int]] = {}
        self._due: dict[str, float] = {}  # partner -> when its next pull starts (clock time)

    def round(self) -> int:
        """Start a pull of every partner that is due and whose previous pull has finished; how
        many started."""
        now = self._clock()
        self._running = {p: f for p, f in self._running.items() if not f.done()}
        partners = _partners(self.node)
        known = {p.node_id for p in partners}
        self._due = {p: t for p, t in self._due.items() if p in known}  # removed partners
        started = 0
        for partner in partners:
            pid = partner.node_id
            if pid in self._running or self._due.get(pid, now) > now:
                continue
            self._running[pid] = self._pool.submit(_pull_isolated, self.node, self.client, partner)
            self._due[pid] = next_pull(now, self.interval, pull_phase(self.node.node_id, pid))
            started += 1
        return started

    def until_next(self) -> float:
        """Seconds until the next partner's pull is due (at most ``interval``). A partner whose
        pull is still running when its next one falls due is looked at again every
        ``OVERDUE_RECHECK`` seconds (its pull starts once the running one has finished), not
        in a loop that would spin until it finishes."""
        now = self._clock()
        running = self.in_flight()
        waiting = [t for p, t in self._due.items() if p not in running]
        wake = min(waiting, default=now + self.interval) - now
        if any(self._due.get(p, now + self.interval) <= now for p in running):
            wake = min(wake, OVERDUE_RECHECK)
        return min(self.interval, max(0.0, wake))

    def in_flight(self) -> set[str]:
        """The partners whose pull is running now."""
        return {p for p, f in self._running.items() if not f.done()}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
