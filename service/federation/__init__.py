"""Node-to-node federation: RFC 9421-signed requests and responses, delivery, feed, notices.

signing.py   sign and verify federation messages against pinned partner keys, nonce store
client.py    PartnerClient: signed calls to one partner; every failure is PartnerUnavailableError
receive.py   accepting artifacts (inbox push, batch or feed pull): verify, apply policy, store once
inbox_partial.py  resumable pushes: what a cut large delivery brought, kept per sender
onward.py    onward sharing: the holder's checks and re-seal, and the chain rules receivers verify
outbox.py    the delivery worker: claim, deliver (batched), record receipts, back off
feed.py      what this node offers each partner to pull, by cursor
pull.py      catch-up: read partners' feeds and store what never arrived, send back receipts
notices.py   revocations (cascading to onward copies) and access notices, both directions
rotation.py  key rotation: queue and push the new descriptor to every partner
status.py    delivery state per partner (GET /v1/sync, entente sync status)
workers.py   the background loops inside ``entente serve``
setup.py     a group of nodes that pin each other (the demo and the integration tests)

Wire format (``/federation/v1``; every request and every successful answer RFC 9421-signed,
``keyid`` = the signer's key fingerprint, ``content-digest`` sha-256 over the body):

- ``POST inbox``: ``application/vnd.entente.delivery`` = the manifest (DSSE JSON) on one line,
  ``\\n``, the age ciphertext (streamed); or ``application/vnd.entente.delivery-batch`` = records
  of manifest line, ``\\n``, ciphertext length in decimal, ``\\n``, ciphertext. Answer: a signed
  receipt (DSSE) per artifact, 201 when stored now, 200 for a repeat (the same receipt).
  A large delivery cut mid-body resumes: ``GET inbox/partial/{key}`` (key: the SHA-256 of the
  delivery's first line) answers ``{"offset": N}``, the bytes of the ciphertext kept, and
  ``POST inbox`` with a signed ``Entente-Resume-Offset: N`` carries the manifest line and the
  ciphertext from byte N on.
- ``GET feed?after=CURSOR&limit=N``: ``{"items": [{"cursor", "artifact_id", "manifest",
  "payload"?}], "next", "more"}``; ``GET artifacts/{id}/payload`` for what is not inline.
- ``POST receipts``: ``{"receipts": [...]}``, the puller's receipts for what it pulled.
- ``POST notices``: ``{"notice_id", "type": "revocation"|"access", "artifact_id", "sha256",
  ...}``, answered with a signed receipt.
- ``POST descriptor``: a rotated node descriptor signed by the pinned key and the new one.
"""
