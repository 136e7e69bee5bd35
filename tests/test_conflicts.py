"""Same dedupe key, different body (issue 15 item 7): answered 200 as a duplicate, as before, but
the conflict is recorded on the stored delivery (``deliveries show``) and counted in /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

import httpx
from typer.testing import CliRunner

from receiver.cli.main import app
from receiver.jobs import IncomingDelivery, get_delivery
from receiver.sources.base import Authenticity, Identity
from tests.conftest import event_body


def conflicts_metric(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(
        r'^voicehooks_delivery_conflicts_total\{source="elevenlabs"\} (\S+)$', text, re.M
    )
    return float(match.group(1)) if match else 0.0


def test_same_key_different_body_is_recorded_and_counted(  # type: ignore[no-untyped-def]
    settings, services_factory, live_server, monkeypatch
) -> None:
    server = live_server(services_factory(settings), run_worker=False)
    original = event_body(conversation_id="conv-x", status="done")
    altered = event_body(conversation_id="conv-x", status="failed")  # same type/id/timestamp
    counted = conflicts_metric(server.url)

    first = server.post_signed(original).json()
    again = server.post_signed(original).json()  # an honest retry: no conflict
    assert again == {**first, "duplicate": True}
    assert get_delivery(server.services.engine, first["delivery_id"])["conflicts"] == 0
    assert conflicts_metric(server.url) == counted

    for _ in range(2):
        response = server.post_signed(altered)
        assert response.status_code == 200
        assert response.json() == {**first, "duplicate": True}
    info = get_delivery(server.services.engine, first["delivery_id"])
    assert info["conflicts"] == 2
    assert info["last_conflict_sha256"] == hashlib.sha256(altered).hexdigest()
    assert info["last_conflict_at"] is not None
    assert info["sha256"] == hashlib.sha256(original).hexdigest()  # the evidence is unchanged
    assert conflicts_metric(server.url) == counted + 2

    monkeypatch.setenv("VOICEHOOKS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("VOICEHOOKS_DATA_DIR", str(settings.data_dir))
    shown = CliRunner().invoke(app, ["deliveries", "show", str(first["delivery_id"])])
    assert shown.exit_code == 0, shown.output
    assert "conflicts: 2" in shown.output
    unwrapped = shown.output.replace("\n", "")  # the console wraps at 80 columns
    assert f"last_conflict_sha256: {hashlib.sha256(altered).hexdigest()}" in unwrapped
    as_json = CliRunner().invoke(app, ["deliveries", "show", str(first["delivery_id"]), "--json"])
    assert json.loads(as_json.output)["conflicts"] == 2


def test_conflict_within_one_batch(settings, services_factory) -> None:  # type: ignore[no-untyped-def]
    """Two copies with one key in the same group commit: the second is the conflict."""
    services = services_factory(settings)

    def incoming(body: bytes) -> IncomingDelivery:
        return IncomingDelivery(
            source="elevenlabs",
            identity=Identity("post_call_transcription", "post_call_transcription:c:1", "c"),
            auth=Authenticity("hmac", 0),
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
            body=body,
        )

    async def both() -> list:  # type: ignore[type-arg]
        return list(
            await asyncio.gather(*(services.inbox.accept(incoming(b)) for b in (b"1", b"2")))
        )

    services.inbox.start()
    try:
        first, second = asyncio.run(both())
    finally:
        services.inbox.stop()
    assert (first.duplicate, second.duplicate, second.conflict) == (False, True, True)
    info = get_delivery(services.engine, first.delivery_id)
    assert (
        info["conflicts"] == 1 and info["last_conflict_sha256"] == hashlib.sha256(b"2").hexdigest()
    )
