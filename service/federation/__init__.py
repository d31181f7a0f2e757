"""Node-to-node federation: RFC 9421-signed requests and responses, delivery, feed, notices.

signing.py  sign and verify federation messages against pinned partner keys, nonce store
client.py   PartnerClient: signed calls to one partner; every failure is PartnerUnavailableError
receive.py  accepting an artifact (inbox push or feed pull): verify, apply policy, store once
outbox.py   the delivery worker: claim, deliver, record receipts, back off
pull.py     catch-up: read partners' feeds and fetch what never arrived
notices.py  revocations and access notices, both directions
"""
