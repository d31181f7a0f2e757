"""Outgoing webhooks: notice of arrivals POSTed to a local receiver, signed per subscription.

A subscription (``/v1/admin/webhooks``, ``entente webhook add``) names a local URL (loopback or a
host the operator listed in ``ENTENTE_WEBHOOK_ALLOWED_HOSTS``, never a pinned partner's address:
:mod:`service.webhooks.destinations`) and the event kinds it wants. The node's dispatcher
(:mod:`service.webhooks.dispatch`, one of the background workers) POSTs each event that
``GET /v1/events`` would stream to it, in order, as a small JSON document signed per the
Standard Webhooks specification (:mod:`service.webhooks.signing`) with the subscription's own
secret, shown once when it is created and stored encrypted to the node's identity
(:mod:`service.webhooks.subscriptions`). Failed deliveries are retried with doubling backoff, a
bounded number of times; then the subscription is disabled, and that is audited.

What this package never does: send content or anything a reader could not see in
``GET /v1/events``, follow redirects, resolve host names to decide where a webhook may go, or
deliver to a partner.
"""

from service.webhooks.destinations import check_url
from service.webhooks.dispatch import WebhookDispatcher
from service.webhooks.signing import event_body, signed_headers
from service.webhooks.subscriptions import (
    Created,
    create_webhook,
    delete_webhook,
    list_webhooks,
    open_secret,
    webhook_out,
)

__all__ = [
    "Created",
    "WebhookDispatcher",
    "check_url",
    "create_webhook",
    "delete_webhook",
    "event_body",
    "list_webhooks",
    "open_secret",
    "signed_headers",
    "webhook_out",
]
