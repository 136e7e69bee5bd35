"""Issue 11, item 5: kie.ai renders against a local jobs API that also sends real signed
callbacks to the real receiver (and, in one mode, never calls back).

createTask's request (Bearer key, model, input, callBackUrl), the envelope's own error codes,
the client-side limit, completion by callback and by polling alone, and confirmation: with an
API key set a callback is only a trigger, its body's claims are never recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from handlers.dialogue.render import callback_url
from handlers.kie.tables import get_task
from receiver import jobs
from receiver.settings import Settings
from receiver.sources.kie.client import CREATE_LIMIT, CREATE_PERIOD_SECONDS, KieClient
from receiver.sources.provider_api import SlidingWindowLimiter
from tests.conftest import make_settings, wait_until
from tests.dialogue_support import build_services, job_of, render, run_until_final, submit
from tests.fakes import kie_api
from tests.fakes.kie_api import KieFake, envelope
from tests.fakes.scripted import MP3, serving
from tests.test_kie_source import post_kie

HMAC_KEY = "kie_hmac_key_for_dialogue_tests"


def kie_settings(database_url: str, tmp_path: Path, url: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "kie_api_key": "kie-test-api-key",
        "kie_base_url": url,
        "kie_hmac_keys": [HMAC_KEY],
        "kie_poll_seconds": 0.1,
        "fetch_allow_private": True,  # the fake's result URLs are on loopback
    }
    values.update(extra)
    return make_settings(database_url, tmp_path / "data", **values)


def test_callback_url_follows_public_url_and_the_configured_authentication() -> None:
    assert callback_url(Settings(public_url=None)) is None
    hmac = Settings(public_url="https://hooks.example/", kie_hmac_keys=["k"], kie_url_token="t")
    assert callback_url(hmac) == "https://hooks.example/webhooks/kie"
    token_only = Settings(public_url="https://hooks.example", kie_url_token="s3cret")
    assert callback_url(token_only) == "https://hooks.example/webhooks/kie?token=s3cret"


def test_create_task_sends_the_documented_request(tmp_path: Path, services_factory) -> None:  # type: ignore[no-untyped-def]
    fake = KieFake(call_back=False, polls_before_final=0)
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = kie_settings(
            f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url, public_url="https://hooks.example"
        )
        services = build_services(services_factory, settings)
        run_until_final(services, submit(services, "kie", stability=0.5, language_code="en"))
    assert fake.created == [
        {
            "model": "elevenlabs/text-to-dialogue-v3",
            "input": {
                "dialogue": [
                    {"text": "Hello there, how are you?", "voice": "Rachel"},
                    {"text": "Very well, thank you!", "voice": "Adam"},
                ],
                "stability": 0.5,
                "language_code": "en",
            },
            "callBackUrl": "https://hooks.example/webhooks/kie",
        }
    ]


def test_no_public_url_means_no_callback_url_and_polling_finishes_it(
    database_url: str, tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    fake = KieFake(call_back=False, polls_before_final=2)
    with serving(fake.app()) as url:
        fake.base_url = url
        services = build_services(services_factory, kie_settings(database_url, tmp_path, url))
        render_id = submit(services, "kie")
        # First run: the task is created; its id is stored with the state it implies, and the
        # job comes back after KIE_POLL_SECONDS instead of finishing or failing.
        asyncio.run(services.worker.drain(render(services, render_id)["delivery_id"]))
        started = render(services, render_id)
        job = job_of(services, render_id)
        assert started["state"] == "running" and started["task_id"] in fake.tasks
        assert job["status"] == "pending" and job["attempts"] == 0 and job["last_error"] is None
        done = run_until_final(services, render_id)
    (task_id,) = fake.tasks
    assert "callBackUrl" not in fake.created[0] and fake.callbacks_sent == []
    assert fake.record_calls[task_id] == 3  # generating, generating, success
    assert done["state"] == "succeeded" and done["sha256"] == hashlib.sha256(MP3).hexdigest()
    assert done["task_id"] == task_id
    # Recorded as a callback would have been: `voicehooks tasks show` knows it too.
    task = get_task(services.engine, task_id)
    assert task is not None and task["state"] == "success" and task["audio_size"] == len(MP3)
    assert job_of(services, render_id)["status"] == "done"


def test_a_signed_callback_to_the_real_receiver_completes_the_render(
    database_url: str, tmp_path: Path, services_factory, live_server
) -> None:  # type: ignore[no-untyped-def]
    """Polling is set to an hour: only the callback can finish this render in time."""
    fake = KieFake(hmac_key=HMAC_KEY, call_back=True)
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = kie_settings(database_url, tmp_path, url, kie_poll_seconds=3600)
        services = build_services(services_factory, settings)
        server = live_server(services)
        settings.public_url = server.url
        render_id = submit(services, "kie")
        services.worker.wake()
        done = wait_until(lambda: render(services, render_id)["state"] == "succeeded", 20)
        assert done
        fake.join()
    final = render(services, render_id)
    (task_id,) = fake.tasks
    assert fake.created[0]["callBackUrl"] == f"{server.url}/webhooks/kie"
    assert fake.callbacks_sent == [(task_id, 200)]
    assert final["sha256"] == hashlib.sha256(MP3).hexdigest() and final["task_id"] == task_id


def test_a_failed_task_fails_the_render_with_kies_code_and_message(
    tmp_path: Path, services_factory
) -> None:  # type: ignore[no-untyped-def]
    fake = KieFake(call_back=False, polls_before_final=0, outcome="fail")
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = kie_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        done = run_until_final(services, submit(services, "kie"))
    assert done["state"] == "failed"
    assert done["error"] == {"code": "500", "message": "Audio generation failed: voice not found"}


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        (envelope(402, "Insufficient account balance"), "402", "Insufficient account balance"),
        (envelope(422, "stability must be 0, 0.5 or 1"), "422", "stability must be 0, 0.5 or 1"),
        (envelope(401, "Unauthorized", status=401), "401", "Unauthorized"),
    ],
)
def test_an_error_code_in_the_envelope_is_a_refusal_even_with_http_200(
    tmp_path: Path, services_factory, answer: kie_api.Answer, code: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    fake = KieFake(call_back=False)
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = kie_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        fake.fail_create(answer)
        render_id = submit(services, "kie")
        done = run_until_final(services, render_id)
    assert done["state"] == "failed" and done["task_id"] is None
    assert done["error"] == {"code": code, "message": message}
    assert job_of(services, render_id)["attempts"] == 1


def test_429_and_500_from_create_task_are_retried(tmp_path: Path, services_factory) -> None:  # type: ignore[no-untyped-def]
    fake = KieFake(call_back=False, polls_before_final=0)
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = kie_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        fake.fail_create(envelope(429, "Rate limit exceeded", status=429))
        fake.fail_create(envelope(500, "Internal server error"))
        done = run_until_final(services, submit(services, "kie"))
    assert done["state"] == "succeeded" and len(fake.tasks) == 1


def test_the_client_side_limit_keeps_under_the_providers_rate(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A fake that allows 5 new tasks a second: 12 tasks through a (4 per second) limiter get no
    429; the same burst without the limiter does."""
    assert CREATE_LIMIT < 20 and CREATE_PERIOD_SECONDS == 10.0
    monkeypatch.setattr(kie_api, "RATE_LIMIT", 5)
    monkeypatch.setattr(kie_api, "RATE_PERIOD", 1.0)

    async def burst(url: str, limiter: SlidingWindowLimiter) -> list[str]:
        outcomes = []
        async with httpx.AsyncClient() as http:
            client = KieClient(http, url, "kie-test-api-key", limiter=limiter)
            for _ in range(12):
                try:
                    await client.create_task({"dialogue": [{"text": "hi", "voice": "R"}]}, None)
                    outcomes.append("ok")
                except Exception as exc:
                    outcomes.append(str(exc))
        return outcomes

    fake = KieFake(call_back=False)
    with serving(fake.app()) as url:
        started = time.monotonic()
        limited = asyncio.run(burst(url, SlidingWindowLimiter(4, 1.0)))
        elapsed = time.monotonic() - started
        time.sleep(1.1)
        unlimited = asyncio.run(burst(url, SlidingWindowLimiter(1000, 1.0)))
    assert limited == ["ok"] * 12 and elapsed >= 2.0
    assert "kie.ai: 429: Rate limit exceeded" in unlimited


def test_confirmation_a_forged_callback_body_is_never_recorded(
    tmp_path: Path, services_factory, live_server
) -> None:  # type: ignore[no-untyped-def]
    """A correctly signed callback (the signature covers only taskId and time) claims success
    with a result URL of the forger's choosing; kie.ai's recordInfo says the task is still
    generating. What is recorded is what kie.ai says, and nothing is downloaded."""
    fake = KieFake(call_back=False, polls_before_final=100)
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = kie_settings(
            f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url, kie_poll_seconds=3600
        )
        services = build_services(services_factory, settings)
        render_id = submit(services, "kie")
        asyncio.run(services.worker.drain(render(services, render_id)["delivery_id"]))
        (task_id,) = fake.tasks
        forged = {
            "code": 200,
            "msg": "success",
            "data": {
                "taskId": task_id,
                "model": "elevenlabs/text-to-dialogue-v3",
                "state": "success",
                "resultJson": json.dumps({"resultUrls": [f"{url}/files/forged.mp3"]}),
            },
        }
        server = live_server(services)
        response = post_kie(server.url, json.dumps(forged).encode(), key=HMAC_KEY)
        assert response.status_code == 200
        delivery_id = response.json()["delivery_id"]
        wait_until(lambda: jobs.delivery_job_states(services.engine, delivery_id) == {"done"})
    task = get_task(services.engine, task_id)
    assert task is not None
    assert task["state"] == "generating" and task["result_urls"] is None
    assert task["audio_blob_path"] is None and fake.downloads == []
    assert fake.record_calls[task_id] >= 2  # confirmed by the callback handler and the trigger
    assert render(services, render_id)["state"] == "running"


def test_show_accepts_a_kie_task_id(tmp_path: Path, services_factory) -> None:  # type: ignore[no-untyped-def]
    fake = KieFake(call_back=False, polls_before_final=0)
    with serving(fake.app()) as url:
        fake.base_url = url
        settings = kie_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, url)
        services = build_services(services_factory, settings)
        render_id = submit(services, "kie")
        run_until_final(services, render_id)
    (task_id,) = fake.tasks
    assert render(services, task_id)["id"] == render_id
