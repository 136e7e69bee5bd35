"""The ingest path end to end: real uvicorn on loopback, real HMAC, real SQLite and Postgres."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy import func, select

from receiver.registry import HandlerSpec, Registry
from receiver.sources.elevenlabs import sign
from receiver.store.models import Delivery, Job
from tests.conftest import SECRET, event_body, make_settings


async def _noop(event, ctx) -> None:  # type: ignore[no-untyped-def]
    pass


REGISTRY = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", _noop)])


def count(services, model) -> int:  # type: ignore[no-untyped-def]
    with services.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model.__table__)).scalar_one()


def test_authentic_delivery_is_stored_with_its_job_before_200(
    settings,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=False)
    body = event_body()
    response = server.post_signed(body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "received" and answer["duplicate"] is False
    with services.engine.connect() as conn:
        row = conn.execute(
            select(Delivery.__table__).where(Delivery.__table__.c.id == answer["delivery_id"])
        ).one()
        jobs = conn.execute(
            select(Job.__table__).where(Job.__table__.c.delivery_id == row.id)
        ).all()
    assert row.body == body and row.size == len(body)
    assert row.event_type == "post_call_transcription" and row.subject_id == "conv-1"
    assert row.dedupe_key == "post_call_transcription:conv-1:1739537297"
    assert (row.auth_method, row.auth_key_index) == ("hmac", 0)
    assert [(j.handler, j.status) for j in jobs] == [
        (REGISTRY.handlers_for("elevenlabs", "post_call_transcription")[0].name, "pending")
    ]


def test_retried_delivery_answers_original_id_and_creates_no_jobs(
    settings,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=False)
    body = event_body()
    first = server.post_signed(body).json()
    again = server.post_signed(body).json()  # fresh signature, same bytes: an ElevenLabs retry
    assert again == {"status": "received", "delivery_id": first["delivery_id"], "duplicate": True}
    assert count(services, Delivery) == 1 and count(services, Job) == 1


def test_dedupe_falls_back_to_sha256_without_conversation_id(
    settings,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=False)
    body = json.dumps(
        {"type": "voice_removed", "event_timestamp": 5, "data": {"voice_id": "v1"}}
    ).encode()
    first = server.post_signed(body).json()
    second = server.post_signed(body).json()
    other = server.post_signed(body.replace(b"v1", b"v2")).json()
    assert second["duplicate"] and second["delivery_id"] == first["delivery_id"]
    assert not other["duplicate"]


def test_unknown_type_and_invalid_json_are_stored_and_acknowledged(
    settings,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=False)
    unknown = server.post_signed(event_body("post_call_summary_v2"))
    broken = server.post_signed(b'{"type": "post_call_transcription", "data": ')
    assert unknown.status_code == 200 and broken.status_code == 200
    with services.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(Delivery.__table__))}
    assert rows[unknown.json()["delivery_id"]].event_type == "post_call_summary_v2"
    assert rows[broken.json()["delivery_id"]].parse_error.startswith("body is not valid JSON")
    assert count(services, Job) == 0


def test_refusals_store_nothing(settings, services_factory, live_server) -> None:  # type: ignore[no-untyped-def]
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=False)
    body = event_body()
    cases = {
        "missing_signature": server.post(body),
        "signature_mismatch": server.post(
            body, headers={"elevenlabs-signature": sign("wrong", body)}
        ),
        "malformed_signature": server.post(body, headers={"ElevenLabs-Signature": "nonsense"}),
    }
    for code, response in cases.items():
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert "Traceback" not in response.text
    assert count(services, Delivery) == 0


def test_not_configured_source_refuses_with_401(
    database_url,
    tmp_path,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(database_url, tmp_path / "d", elevenlabs_secrets=[])
    services = services_factory(settings, REGISTRY)
    assert any("VOICEHOOKS_ELEVENLABS_SECRETS" in h for h in services.warn_unconfigured())
    server = live_server(services, run_worker=False)
    body = event_body()
    response = server.post(body, headers={"ElevenLabs-Signature": sign(SECRET, body)})
    assert response.status_code == 401 and response.json()["error"] == "not_configured"


def test_oversized_body_gets_413_declared_or_streamed(
    database_url,
    tmp_path,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(
        database_url, tmp_path / "d", max_body_bytes=100_000, spool_threshold_bytes=10_000
    )
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=False)
    big = event_body(filler="x" * 200_000)
    declared = server.post_signed(big)
    assert declared.status_code == 413 and declared.json()["error"] == "body_too_large"

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    streamed = server.post(chunks(), headers={"ElevenLabs-Signature": sign(SECRET, big)})
    assert streamed.status_code == 413
    assert count(services, Delivery) == 0
    assert os.listdir(settings.spool_dir) == []  # the partial spool file was removed


def test_large_chunked_body_is_spooled_into_the_blob_store(
    database_url,
    tmp_path,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(database_url, tmp_path / "d", spool_threshold_bytes=4096)
    services = services_factory(settings, REGISTRY)
    server = live_server(services, run_worker=False)
    big = event_body(filler="y" * 100_000)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    response = server.post(
        chunks(),
        headers={"ElevenLabs-Signature": sign(SECRET, big), "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    with services.engine.connect() as conn:
        row = conn.execute(select(Delivery.__table__)).one()
    assert row.body is None and row.blob_path is not None
    assert Path(services.blobs.path(row.blob_path)).read_bytes() == big
    assert row.subject_id == "conv-1"  # identified from the spooled file, streaming
    assert os.listdir(settings.spool_dir) == []


def test_form_bodies_get_415_and_unknown_source_404(
    settings,
    services_factory,
    live_server,  # type: ignore[no-untyped-def]
) -> None:
    server = live_server(services_factory(settings, REGISTRY), run_worker=False)
    form = server.post(b"a=b", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and form.json()["error"] == "unsupported_media_type"
    nowhere = server.post(b"{}", source="nowhere")
    assert nowhere.status_code == 404 and nowhere.json()["error"] == "unknown_source"


def test_health_and_readiness(settings, services_factory, live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(services_factory(settings, REGISTRY), run_worker=False)
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    assert "voicehooks_deliveries_total" in httpx.get(f"{server.url}/metrics").text


def test_a_bug_while_receiving_is_a_logged_json_500_and_other_methods_405(
    settings,
    services_factory,
    live_server,
    capfd,  # type: ignore[no-untyped-def]
) -> None:
    """Deliveries skip Starlette's middleware (ReceiverApp), so the fast path must still turn an
    unexpected exception into the documented 500 with a traceback in the log, and the webhook
    paths must still answer other methods with the JSON 405 of the route list."""
    services = services_factory(settings, REGISTRY)
    elevenlabs = services.sources["elevenlabs"]

    class Broken(type(elevenlabs)):  # type: ignore[misc]
        def begin(self, headers, query):  # type: ignore[no-untyped-def]
            raise RuntimeError("a bug in a source")

    services.sources["elevenlabs"] = Broken(elevenlabs.settings)
    server = live_server(services, run_worker=False)
    response = server.post_signed(event_body())
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "detail": "an unexpected error occurred",
    }
    captured = capfd.readouterr()
    logged = captured.out + captured.err
    assert "unhandled_error" in logged and "a bug in a source" in logged
    assert count(services, Delivery) == 0
    for path in ("/webhooks/elevenlabs", "/webhooks/elevenlabs/"):
        wrong = httpx.get(f"{server.url}{path}")
        assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
