"""Issue 11, item 4 (durable work on the same engine) and item 7 (Sonna), against local fakes.

A submission is a render row plus a job of a ``local`` delivery, committed together; the worker
calls the provider; 429 (after its ``Retry-After``), 5xx and network errors are retried;
refusals end the render as failed with the provider's own code and message.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import httpx
import pytest

from handlers.dialogue.tables import dialogue_renders
from receiver import jobs
from tests.conftest import free_port, make_settings
from tests.dialogue_support import build_services, job_of, render, run_until_final, submit
from tests.fakes.scripted import MP3, Answer, serving
from tests.fakes.sonna_api import SonnaFake, error


def sonna_settings(database_url: str, tmp_path: Path, url: str, **extra: object):  # type: ignore[no-untyped-def]
    return make_settings(
        database_url,
        tmp_path / "data",
        sonna_api_key="sonna-test-api-key",
        sonna_base_url=url,
        fetch_allow_private=True,  # the fake's audio URL is on loopback
        **extra,
    )


def test_a_submission_is_a_render_and_a_job_committed_together(
    database_url: str, tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    services = build_services(services_factory, sonna_settings(database_url, tmp_path, "x"))
    render_id = submit(services, "sonna")
    found = render(services, render_id)
    assert found["state"] == "queued" and found["provider"] == "sonna"
    delivery = jobs.get_delivery(services.engine, found["delivery_id"])
    assert delivery is not None
    assert (delivery["source"], delivery["event_type"], delivery["auth_method"]) == (
        "local",
        "dialogue_render",
        "local",
    )
    assert [j["status"] for j in delivery["jobs"]] == ["pending"]
    assert delivery["jobs"][0]["handler"] == "handlers.dialogue.render:run_render"


def test_a_failed_submission_leaves_neither_render_nor_job(
    tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    """No handler routed to renders (plugin missing): the render row is rolled back too."""
    from handlers.dialogue import store
    from handlers.dialogue.script import parse_script
    from receiver.registry import Registry
    from tests.dialogue_support import script_doc

    settings = sonna_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, "x")
    services = services_factory(settings, Registry())
    with pytest.raises(RuntimeError, match="no handler"):
        store.submit(services.engine, services.registry, parse_script(script_doc()), "sonna")
    with services.engine.connect() as conn:
        assert conn.execute(dialogue_renders.select()).all() == []
    assert jobs.list_deliveries(services.engine) == []


def test_sonna_render_downloads_the_answered_url_into_the_blob_store(
    database_url: str, tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    fake = SonnaFake()
    with serving(fake.app()) as url:
        fake.base_url = url
        services = build_services(services_factory, sonna_settings(database_url, tmp_path, url))
        render_id = submit(services, "sonna")
        done = run_until_final(services, render_id)
    assert done["state"] == "succeeded", done
    assert done["sha256"] == hashlib.sha256(MP3).hexdigest() and done["size"] == len(MP3)
    assert services.blobs.path(done["audio"]["blob_path"]).read_bytes() == MP3
    assert fake.downloads == 1
    assert fake.requests == [
        {
            "turns": [
                {"text": "Hello there, how are you?", "voice": "Rachel"},
                {"text": "Very well, thank you!", "voice": "Adam"},
            ],
            "title": "Test call",
        }
    ]


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        (error(400, "TEXT_TOO_LONG", "Total characters exceed 2,000"), "TEXT_TOO_LONG", "2,000"),
        (
            error(400, "PROVIDER_MISMATCH", "A turn uses a non-ElevenLabs voice"),
            "PROVIDER_MISMATCH",
            "non-ElevenLabs",
        ),
        (
            error(402, "INSUFFICIENT_CREDITS", "Not enough credits"),
            "INSUFFICIENT_CREDITS",
            "credits",
        ),
        (
            error(403, "PAID_ACCESS_REQUIRED", "Paid access required"),
            "PAID_ACCESS_REQUIRED",
            "Paid",
        ),
    ],
)
def test_sonna_refusals_fail_the_render_with_sonnas_code_at_once(
    tmp_path: Path, services_factory, answer: Answer, code: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    fake = SonnaFake()
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = sonna_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        fake.fail_next(answer)
        render_id = submit(services, "sonna")
        done = run_until_final(services, render_id)
    assert done["state"] == "failed"
    assert done["error"]["code"] == code and message in done["error"]["message"]
    assert len(fake.requests) == 1  # not retried
    assert job_of(services, render_id)["status"] == "dead"


def test_sonna_checks_its_own_limits_too(tmp_path: Path, services_factory) -> None:  # type: ignore[no-untyped-def]
    """Past our own check (a script stored by other means), Sonna's 400 is what fails it."""
    fake = SonnaFake()
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = sonna_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        long_id = submit(services, "sonna", turns=[{"text": "a" * 2001, "voice": "Rachel"}])
        mismatch_id = submit(services, "sonna", turns=[{"text": "hi", "voice": "openai-nova"}])
        long_done = run_until_final(services, long_id)
        mismatch_done = run_until_final(services, mismatch_id)
    assert long_done["error"]["code"] == "TEXT_TOO_LONG"
    assert mismatch_done["error"]["code"] == "PROVIDER_MISMATCH"


@pytest.mark.parametrize(
    "answer",
    [
        error(409, "CONCURRENT_REQUEST", "One synthesis at a time"),
        error(429, "RATE_LIMITED", "Slow down"),
        error(503, "UNAVAILABLE", "Try again later"),
    ],
)
def test_sonna_busy_answers_are_retried_until_it_renders(
    tmp_path: Path, services_factory, answer: Answer
) -> None:  # type: ignore[no-untyped-def]
    fake = SonnaFake()
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = sonna_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        fake.fail_next(answer, times=2)
        render_id = submit(services, "sonna")
        done = run_until_final(services, render_id)
    assert done["state"] == "succeeded"
    assert len(fake.requests) == 3


def test_retry_after_is_honoured_even_when_backoff_would_come_back_sooner(
    database_url: str, tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    fake = SonnaFake()
    times: list[float] = []
    with serving(fake.app()) as url:
        fake.base_url = url
        services = build_services(services_factory, sonna_settings(database_url, tmp_path, url))
        fake.fail_next(error(429, "RATE_LIMITED", "Slow down", {"Retry-After": "2"}))
        render_id = submit(services, "sonna")
        times.append(time.monotonic())
        asyncio.run(services.worker.drain(render(services, render_id)["delivery_id"]))
        job = job_of(services, render_id)
        assert job["status"] == "pending"
        assert "RATE_LIMITED" in job["last_error"]
        done = run_until_final(services, render_id)
        times.append(time.monotonic())
    assert done["state"] == "succeeded"
    # The settings' backoff is 0.01-0.05 s; Retry-After said 2 s.
    assert times[1] - times[0] >= 1.9


def test_network_errors_are_retried_and_out_of_retries_shows_failed(
    tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = sonna_settings(
        f"sqlite:///{tmp_path / 'v.db'}", tmp_path, closed, job_max_attempts=3
    )
    services = build_services(services_factory, settings)
    render_id = submit(services, "sonna")
    done = run_until_final(services, render_id)
    job = job_of(services, render_id)
    assert job["status"] == "dead" and job["attempts"] == 3
    assert done["state"] == "failed" and done["error"]["code"] == "job_dead"
    assert "network" in done["error"]["message"]


def test_bad_key_is_a_refusal_and_the_key_never_shows(tmp_path: Path, services_factory) -> None:  # type: ignore[no-untyped-def]
    fake = SonnaFake(api_key="the-right-key")
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = sonna_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        render_id = submit(services, "sonna")
        done = run_until_final(services, render_id)
    assert done["state"] == "failed" and done["error"]["code"] == "UNAUTHORIZED"
    assert "sonna-test-api-key" not in str(done) + str(job_of(services, render_id))


def test_the_local_source_refuses_every_http_request(tmp_path: Path, live_server) -> None:  # type: ignore[no-untyped-def]
    from receiver.registry import load_registry
    from receiver.service import Services

    settings = make_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path / "data")
    services = Services.create(settings, load_registry())
    services.migrate()
    server = live_server(services)
    body = b'{"type": "dialogue_render", "key": "render:1", "subject_id": "1"}'
    response = httpx.post(f"{server.url}/webhooks/local", content=body)
    assert response.status_code == 401 and response.json()["error"] == "local_only"
    assert jobs.list_deliveries(services.engine) == []
