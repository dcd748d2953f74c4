"""Webhooks on submissions: the `webhook` URL taken from a JSON body (next to the params) or a form field,
checked before anything is queued, and registered on the job once the submission is answered.

The URL is not part of the request's identity: it is taken out before the params are parsed, so
identical requests with different webhooks (or none) still join one job or answer from its cache,
and each registration is a delivery of its own. The check resolves the host now and refuses
loopback, private, link-local and other non-public addresses (422) unless WEBHOOK_ALLOW_PRIVATE=1;
the deliverer checks again before every call (jobs.worker.deliverer), against DNS rebinding.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g

from jobs.errors import InvalidParams
from jobs.webhooks import WebhookURLError, check_url
from rest.extensions import service

#: Where a body or form names its webhook.
FIELD = "webhook"


def take_from_json(body: Any) -> None:
    """Take the webhook out of a decoded JSON body (so the params never see it) and check it."""
    if isinstance(body, dict) and FIELD in body:
        _check(body.pop(FIELD))


def take_from_form(form: Any) -> Any:
    """The form without its webhook field (checked and kept for register()); the form itself when it has none."""
    if FIELD not in form:
        return form
    values = form.getlist(FIELD)
    if len(values) != 1:
        raise InvalidParams([{"loc": ["body", FIELD], "msg": "give one webhook URL"}])
    _check(values[0])
    rest = form.copy()
    rest.pop(FIELD)
    return rest


def _check(url: Any) -> None:
    if url is None:  # null: no webhook, as if the key were absent (the document allows it)
        return
    try:
        check_url(url, current_app.config["SETTINGS"].webhook_allow_private)
    except WebhookURLError as exc:
        raise InvalidParams([{"loc": ["body", FIELD], "msg": str(exc)}]) from None
    g.crunch_webhook = url


def register(job_id: str, client: str) -> bool:
    """Register this request's webhook (if it named one) on the job it was answered with; True if one was."""
    url = g.pop("crunch_webhook", None)
    if url is None:
        return False
    service().deliveries.register("job", job_id, url, client)
    return True


def init_app(app: Flask) -> None:
    """Nothing to bind: the deliveries live in Redis (jobs.store.deliveries) and the service holds their store."""
    app.extensions.setdefault("crunch_webhooks", True)
