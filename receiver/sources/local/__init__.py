"""Work submitted on this machine (``voicehooks dialogue submit``), stored like a delivery.

A submission becomes a delivery of the source ``local`` so that it gets what every delivery gets:
a durable row, a job per handler routed to its event type, leases, retries, dead letters and
``voicehooks deliveries`` to look at it. Nothing arrives over HTTP: ``/webhooks/local`` refuses
every request (401 ``local_only``), and the only way in is ``receiver.jobs.store_local_delivery``
from a process that can open the store. The body is a small JSON object; its ``type`` routes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver.body import ReceivedBody
from receiver.errors import AuthError
from receiver.sources.base import Authenticity, Identity, Source, Verifier, load_small_json

NAME = "local"
# Recorded as the delivery's authentication method: made by a local command, not received.
AUTH = Authenticity("local")


class LocalSource(Source):
    name = NAME

    def configured(self) -> bool:
        return True  # nothing to configure: nothing is accepted from outside

    def unconfigured_hint(self) -> str:
        return "the local source needs no configuration"

    def begin(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Verifier:
        raise AuthError(
            "local_only", "local submissions are made with voicehooks commands, not over HTTP"
        )

    def identify(self, body: ReceivedBody) -> Identity:
        document, error = load_small_json(body)
        if error is not None or not isinstance(document, dict):
            return Identity(None, body.sha256, parse_error=error or "not a JSON object")
        kind = document.get("type")
        key = document.get("key")
        subject = document.get("subject_id")
        return Identity(
            kind if isinstance(kind, str) else None,
            key if isinstance(key, str) else body.sha256,
            str(subject) if subject is not None else None,
        )

    def parse(self, event_type: str | None, body: ReceivedBody) -> Any:
        document, error = load_small_json(body)
        if error is not None:
            raise ValueError(error)
        return document
