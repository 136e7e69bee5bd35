"""The render handler: calls the provider, follows it to stored audio, or records why not.

It runs as the job of the render's ``local`` delivery, so it has the worker's leases, retries
and dead letters. Errors are sorted by ``receiver.sources.provider_api``: a refusal
(``ProviderRefused``: bad key, no credit, the provider's own validation) ends the render as
failed with the provider's code and message, committed with the job's death; a provider that is
unavailable (429, 5xx, network) is retried with backoff, never sooner than its ``Retry-After``.

Slow work (the provider call, the download, decoding the audio) happens before the first
``ctx.write``, so SQLite's write lock is never held across the network.

kie.ai renders are asynchronous: createTask's ``taskId`` is stored in the same transaction that
marks the render ``running``, and the job then comes back every ``VOICEHOOKS_KIE_POLL_SECONDS``
(``RunAgainLater``) to ask ``recordInfo`` until the task is final, so a render completes even
when kie.ai's callback never arrives. A callback that does arrive completes it at once
(``complete_kie_render``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import anyio
import structlog
from sqlmodel import Session

from handlers.dialogue import store
from handlers.dialogue.script import Script, parse_script
from handlers.dialogue.segments import check_segments, estimate_seconds
from handlers.dialogue.tables import FAILED, FINAL_STATES, RUNNING, SUCCEEDED
from handlers.kie.dialogue import record_task
from receiver import jsonstream
from receiver.download import DownloadRefused, download_audio
from receiver.events import Event, HandlerContext, PermanentFailure, RetryLater, RunAgainLater
from receiver.settings import Settings
from receiver.sources.elevenlabs.dialogue_api import DEFAULT_MODEL, ElevenLabsDialogueClient
from receiver.sources.kie.client import KieClient
from receiver.sources.provider_api import ProviderError, ProviderRefused, ProviderUnavailable
from receiver.sources.sonna.client import SonnaClient
from receiver.store.blobs import BlobStore
from receiver.store.types import utcnow

log = structlog.get_logger(__name__)
# Audio accepted from a provider's result URL (Sonna's). The URL is the provider's, not ours.
MAX_AUDIO_BYTES = 200 * 1024 * 1024
# A kie.ai task still not final after this long is given up (kie.ai keeps media 14 days, but a
# render nobody hears of for a day has failed for every practical purpose).
KIE_GIVE_UP = timedelta(hours=24)
_SUFFIXES = {"mp3": ".mp3", "wav": ".wav", "pcm": ".pcm", "opus": ".opus"}
_CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/L16", "opus": "audio/ogg"}


class NotConfigured(ProviderRefused):
    pass


def _key(settings: Settings, provider: str) -> str:
    names = {"kie": "kie_api_key", "elevenlabs": "elevenlabs_api_key", "sonna": "sonna_api_key"}
    secret = getattr(settings, names[provider])
    if secret is None or not secret.get_secret_value():
        setting = "VOICEHOOKS_" + names[provider].upper()
        raise NotConfigured(provider, "not_configured", f"{setting} is not set")
    return str(secret.get_secret_value())


def callback_url(settings: Settings) -> str | None:
    """Where kie.ai should call back: ``{PUBLIC_URL}/webhooks/kie``, with ``?token=`` when a URL
    token is the only way callbacks are authenticated; None without a public URL (then the
    render is followed by polling alone)."""
    if not settings.public_url:
        return None
    url = settings.public_url.rstrip("/") + "/webhooks/kie"
    if settings.kie_url_token is not None and not settings.kie_hmac_keys:
        url += "?token=" + settings.kie_url_token.get_secret_value()
    return url


# -- writes (each runs in the job's transaction, through ctx.write) ----------------------------


def _set(session: Session, render_id: int, **values: Any) -> None:
    store.change(session.connection(), render_id, **values)


def _succeed(
    session: Session, render_id: int, segments: list[dict[str, Any]] | None, **values: Any
) -> None:
    conn = session.connection()
    if segments is not None:
        store.replace_segments(conn, render_id, segments)
    store.change(conn, render_id, state=SUCCEEDED, error=None, error_code=None, **values)


async def _fail(ctx: HandlerContext, render_id: int, code: str, message: str) -> PermanentFailure:
    await ctx.write(_set, render_id, state=FAILED, error_code=code[:64], error=message)
    return PermanentFailure(f"render {render_id}: {code}: {message}", keep_writes=True)


# -- the handler ----------------------------------------------------------------------------


async def run_render(event: Event, ctx: HandlerContext) -> None:
    """Run the render this local delivery stands for."""
    try:
        render_id = int(event.subject_id or "")
    except ValueError:
        raise PermanentFailure(f"delivery {event.delivery_id} names no render") from None
    render = await ctx.read(store.load, render_id)
    if render is None:
        raise PermanentFailure(f"render {render_id} does not exist")
    if render["state"] in FINAL_STATES:
        return
    runner = RUNNERS.get(render["provider"])
    if runner is None:
        raise await _fail(ctx, render_id, "unknown_provider", f"no provider {render['provider']}")
    try:
        await runner(render, ctx, event.delivery_id)
    except ProviderRefused as exc:
        raise await _fail(ctx, render_id, exc.code, exc.message) from exc
    except ProviderUnavailable as exc:
        if exc.retry_after is not None:
            raise RetryLater(str(exc), delay=exc.retry_after) from exc
        raise
    except PermanentFailure as exc:
        # Out of the provider's hands (expired result URL, unreadable answer): the render ends.
        # A handler further down may have recorded what it learned; that is kept too.
        raise await _fail(ctx, render_id, "failed", str(exc)) from exc


# -- kie.ai ---------------------------------------------------------------------------------


def _kie_client(ctx: HandlerContext) -> KieClient:
    return KieClient(ctx.http, ctx.settings.kie_base_url, _key(ctx.settings, "kie"))


async def run_kie(render: dict[str, Any], ctx: HandlerContext, delivery_id: int) -> None:
    client = _kie_client(ctx)
    if render["task_id"] is None:
        script = parse_script(render["script"])
        task_input: dict[str, Any] = {
            "dialogue": [{"text": t.text, "voice": t.voice} for t in script.turns]
        }
        if script.stability is not None:
            task_input["stability"] = script.stability
        if script.language_code is not None:
            task_input["language_code"] = script.language_code
        task_id = await client.create_task(task_input, callback_url(ctx.settings))
        # The outside id and the state it implies, in one transaction with the job's next step.
        await ctx.write(_set, render["id"], state=RUNNING, task_id=task_id)
        log.info("dialogue_kie_task_created", render_id=render["id"], task_id=task_id)
        raise RunAgainLater(ctx.settings.kie_poll_seconds, f"kie.ai task {task_id} created")
    finished = await follow_kie(render, ctx, client, delivery_id)
    if not finished:
        if utcnow() - render["submitted_at"] > KIE_GIVE_UP:
            raise ProviderRefused(
                "kie.ai", "timeout", f"task {render['task_id']} not final after {KIE_GIVE_UP}"
            )
        raise RunAgainLater(ctx.settings.kie_poll_seconds, "kie.ai task not final")


def _task_final(task: dict[str, Any] | None) -> bool:
    if task is None:
        return False
    if task["state"] == "fail":
        return True
    return task["state"] == "success" and bool(task["audio_blob_path"] or task["audio_error"])


async def follow_kie(
    render: dict[str, Any], ctx: HandlerContext, client: KieClient, delivery_id: int
) -> bool:
    """Bring the render up to date with its kie.ai task; True when it is final now.

    ``dialogue_tasks`` (the kie.ai plugin's table) may know already: the callback was recorded.
    Otherwise kie.ai's ``recordInfo`` is asked, and its answer recorded exactly as a callback
    would be (state, result, audio), so ``voicehooks tasks`` shows the same either way.
    """
    task_id = render["task_id"]
    task = await ctx.read(store.load_task, task_id)
    if not _task_final(task):
        callback, document = await client.record_info(task_id)
        task = await record_task(ctx, callback, document.get("data"), task_id, delivery_id)
    assert task is not None
    if task["state"] == "fail":
        code = task["fail_code"] or "fail"
        message = task["fail_msg"] or task["kie_msg"] or "kie.ai reports the task failed"
        raise ProviderRefused("kie.ai", str(code), message)
    if task["state"] == "success" and task["audio_blob_path"]:
        await ctx.write(
            _succeed,
            render["id"],
            None,
            audio_blob_path=task["audio_blob_path"],
            audio_size=task["audio_size"],
            audio_sha256=task["audio_sha256"],
            audio_content_type=task["audio_content_type"],
        )
        return True
    if task["state"] == "success" and task["audio_error"]:
        raise ProviderRefused("kie.ai", "audio_unavailable", task["audio_error"])
    return False


async def complete_kie_render(event: Event, ctx: HandlerContext) -> None:
    """A kie.ai callback for a task one of our renders follows completes that render now,
    instead of at its next poll. The callback is only a trigger: the task's state and result
    come from kie.ai's recordInfo (or from ``dialogue_tasks`` once confirmed there)."""
    task_id = event.subject_id
    if not task_id:
        return
    render = await ctx.read(store.find_by_task, task_id)
    if render is None or render["state"] in FINAL_STATES:
        return
    # The render's own job reports refusals; here a refusal only means "not from this trigger".
    with contextlib.suppress(ProviderRefused):
        await follow_kie(render, ctx, _kie_client(ctx), event.delivery_id)


# -- ElevenLabs -------------------------------------------------------------------------------


def elevenlabs_body(script: Script) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"text": t.text, "voice_id": t.voice} for t in script.turns],
        "model_id": script.model_id or DEFAULT_MODEL,
    }
    if script.language_code is not None:
        body["language_code"] = script.language_code
    if script.stability is not None:
        body["settings"] = {"stability": script.stability}
    if script.seed is not None:
        body["seed"] = script.seed
    return body


def decode_answer(blobs: BlobStore, answer: Any, output_format: str | None) -> dict[str, Any]:
    """From the spooled JSON answer: the audio into the blob store (base64 decoded as it is
    read, in one pass, never whole in memory), then the segments and alignments."""
    codec = (output_format or "mp3").split("_")[0]
    try:
        with open(answer, "rb") as fp, blobs.writer(_SUFFIXES.get(codec, ".audio")) as out:
            jsonstream.decode_base64_string(fp, ("audio_base64",), out)  # type: ignore[arg-type]
            blob_path = out.commit()
            size, sha256 = out.size, out.sha256
        with open(answer, "rb") as fp:
            fields = jsonstream.read_fields(
                fp,
                [("voice_segments",), ("alignment",), ("normalized_alignment",)],
                max_value_bytes=64 * 1024 * 1024,
            )
    except (jsonstream.JSONStreamError, ValueError) as exc:
        raise ProviderUnavailable("ElevenLabs", "bad_answer", f"unreadable answer: {exc}") from exc
    return {
        "blob_path": blob_path,
        "size": size,
        "sha256": sha256,
        "content_type": _CONTENT_TYPES.get(codec),
        "voice_segments": fields.get(("voice_segments",)) or [],
        "alignment": fields.get(("alignment",)),
        "normalized_alignment": fields.get(("normalized_alignment",)),
    }


def segment_rows(raw: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        try:
            rows.append(
                {
                    "voice_id": str(item["voice_id"]),
                    "start_seconds": float(item["start_time_seconds"]),
                    "end_seconds": float(item["end_time_seconds"]),
                    "character_start": int(item["character_start_index"]),
                    "character_end": int(item["character_end_index"]),
                    "input_index": int(item["dialogue_input_index"]),
                }
            )
        except (KeyError, TypeError, ValueError):
            continue
    return rows


async def run_elevenlabs(render: dict[str, Any], ctx: HandlerContext, delivery_id: int) -> None:
    script = parse_script(render["script"])
    client = ElevenLabsDialogueClient(
        ctx.http, ctx.settings.elevenlabs_base_url, _key(ctx.settings, "elevenlabs")
    )
    spool, fh = ctx.blobs.new_spool_file()
    try:
        with fh:
            await client.with_timestamps(
                elevenlabs_body(script), fh, output_format=script.output_format
            )
        answer = await anyio.to_thread.run_sync(
            decode_answer, ctx.blobs, spool, script.output_format
        )
    finally:
        spool.unlink(missing_ok=True)
    rows = segment_rows(answer["voice_segments"])
    seconds = estimate_seconds(script.output_format, answer["size"])
    anomalies = check_segments(rows, len(script.turns), seconds, answer["alignment"])
    if len(rows) != len(answer["voice_segments"]):
        anomalies.insert(0, "some voice segments could not be read")
    if anomalies:
        log.warning("dialogue_segment_anomalies", render_id=render["id"], anomalies=anomalies)
    await ctx.write(
        _succeed,
        render["id"],
        rows,
        audio_blob_path=answer["blob_path"],
        audio_size=answer["size"],
        audio_sha256=answer["sha256"],
        audio_content_type=answer["content_type"],
        audio_seconds=seconds,
        alignment=answer["alignment"],
        normalized_alignment=answer["normalized_alignment"],
        warning="; ".join(anomalies) or None,
    )


# -- Sonna ------------------------------------------------------------------------------------


async def run_sonna(render: dict[str, Any], ctx: HandlerContext, delivery_id: int) -> None:
    script = parse_script(render["script"])
    client = SonnaClient(ctx.http, ctx.settings.sonna_base_url, _key(ctx.settings, "sonna"))
    body: dict[str, Any] = {"turns": [{"text": t.text, "voice": t.voice} for t in script.turns]}
    if script.title:
        body["title"] = script.title
    answer = await client.synthesize_dialogue(body)
    # The URL expires within a day: fetch it now, in this job.
    try:
        audio = await download_audio(ctx.http, ctx.blobs, answer.url, max_bytes=MAX_AUDIO_BYTES)
    except DownloadRefused as exc:
        raise ProviderRefused("Sonna", "audio_unavailable", str(exc)) from exc
    await ctx.write(
        _succeed,
        render["id"],
        None,
        audio_blob_path=audio.blob_path,
        audio_size=audio.size,
        audio_sha256=audio.sha256,
        audio_content_type=audio.content_type,
    )


Runner = Callable[[dict[str, Any], HandlerContext, int], Awaitable[None]]
RUNNERS: dict[str, Runner] = {"kie": run_kie, "elevenlabs": run_elevenlabs, "sonna": run_sonna}
__all__ = ["ProviderError", "complete_kie_render", "run_render"]
