"""``voicehooks demo``: a newcomer's first minute, with nothing to configure.

It runs the real thing end to end rather than a simulation: a receiver under uvicorn on a free
loopback port (throwaway secrets, a temporary SQLite store and data directory), every bundled
fixture signed and sent over HTTP exactly as ``voicehooks replay`` sends it, the in-process
workers running the built-in handlers, then a report read back from the store. kie.ai result URLs
in the fixtures point at ``tempfile.example.com``, which does not resolve; the demo serves
``fixtures/audio/hello.mp3`` from a tiny local HTTP server and sends copies of those fixtures that
point there, so the download step runs for real too.

The doc's ``post_call_audio`` example elides its MP3 as ``...`` (not valid base64): its job is
*expected* to go dead, and the report says so. Any other dead job, an unacknowledged delivery or a
job still unfinished at the timeout makes the demo fail.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine, MetaData, func, inspect, select
from sqlalchemy import Table as SqlTable

from receiver.replay import Replayer, ReplayResult
from receiver.settings import Settings
from receiver.store.models import Delivery, Job, JobStatus

EXPECTED_DEAD = {
    "elevenlabs/post_call_audio_doc_example.json": (
        "the docs' example elides the MP3 as '...', which is not base64, so the audio "
        "handler refuses it instead of storing a broken file"
    ),
}
# Sent a second time at the end: the receiver answers with the first delivery's id.
RESEND = "elevenlabs/post_call_transcription.json"
UNREACHABLE_AUDIO_HOST = b"https://tempfile.example.com"
AUDIO_FIXTURE = "audio/hello.mp3"
jobs_table = Job.__table__  # type: ignore[attr-defined]
deliveries_table = Delivery.__table__  # type: ignore[attr-defined]


class DemoError(Exception):
    """The demo could not run at all (as opposed to running and finding problems)."""


def find_fixtures() -> Path | None:
    """The repository's ``fixtures/`` (next to the package), else ``./fixtures``."""
    for candidate in (Path(__file__).resolve().parent.parent / "fixtures", Path.cwd() / "fixtures"):
        if (candidate / "elevenlabs").is_dir() or (candidate / "kie").is_dir():
            return candidate
    return None


# -- the pieces it runs ---------------------------------------------------------------------


@contextmanager
def audio_server(mp3: bytes) -> Iterator[str]:
    """Serve ``mp3`` for any ``GET *.mp3`` on a loopback port; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.path.split("?")[0].endswith(".mp3"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.send_header("Content-Length", str(len(mp3)))
            self.end_headers()
            self.wfile.write(mp3)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="demo-audio", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def running_receiver(settings: Settings) -> Iterator[tuple[str, Engine]]:
    """The real app under uvicorn with its workers, on a port bound before it starts."""
    import uvicorn

    from receiver.app import create_app

    app = create_app(settings, run_worker=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="critical", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="demo-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise DemoError("the demo receiver did not start (run `voicehooks serve` to see why)")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.services.engine
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def prepare_fixtures(source: Path, target: Path, audio_base: str) -> list[tuple[Path, str]]:
    """Copies of every ``*.json`` fixture, kie.ai result URLs pointed at ``audio_base``.

    Returns ``(copy, name relative to the fixture directory)`` in sorted order, with ``RESEND``
    once more at the end.
    """
    files: list[tuple[Path, str]] = []
    for path in sorted(source.rglob("*.json")):
        name = path.relative_to(source).as_posix()
        copy = target / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(path.read_bytes().replace(UNREACHABLE_AUDIO_HOST, audio_base.encode()))
        files.append((copy, name))
    files += [(copy, name) for copy, name in files if name == RESEND]
    return files


def job_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(jobs_table.c.status, func.count()).group_by(jobs_table.c.status)
        ).all()
    return {status: count for status, count in rows}


def wait_for_jobs(engine: Engine, timeout: float, console: Console) -> dict[str, int]:
    """Poll until no job is pending or running (or the timeout); returns the final counts."""
    from receiver.cli_replay import progress_bar

    deadline = time.monotonic() + timeout
    counts = job_counts(engine)
    with progress_bar("handlers") as progress:
        task = progress.add_task("running handlers", total=sum(counts.values()), current="")
        while True:
            finished = counts.get(JobStatus.done, 0) + counts.get(JobStatus.dead, 0)
            progress.update(task, completed=finished, current=f"{counts.get('dead', 0)} dead")
            unfinished = counts.get(JobStatus.pending, 0) + counts.get(JobStatus.running, 0)
            if not unfinished or time.monotonic() > deadline:
                return counts
            time.sleep(0.1)
            counts = job_counts(engine)


# -- the report -----------------------------------------------------------------------------


def _reflect(engine: Engine, *names: str) -> dict[str, SqlTable]:
    """The handler tables that exist (a store without the built-in handlers has none)."""
    present = [n for n in names if inspect(engine).has_table(n)]
    metadata = MetaData()
    metadata.reflect(engine, only=present)
    return {name: metadata.tables[name] for name in present}


def _short(value: Any, width: int = 60) -> str:
    text = "-" if value is None else str(value)
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def conversations_table(engine: Engine) -> Table | None:
    tables = _reflect(engine, "conversations", "conversation_turns", "conversation_audio")
    if "conversations" not in tables:
        return None
    conv = tables["conversations"]
    with engine.connect() as conn:
        rows = conn.execute(select(conv).order_by(conv.c.conversation_id)).all()
        turns: dict[str, int] = {}
        if "conversation_turns" in tables:
            t = tables["conversation_turns"]
            turns = dict(
                conn.execute(
                    select(t.c.conversation_id, func.count()).group_by(t.c.conversation_id)
                ).all()
            )
        audio: dict[str, int] = {}
        if "conversation_audio" in tables:
            a = tables["conversation_audio"]
            audio = dict(conn.execute(select(a.c.conversation_id, a.c.size)).all())
    table = Table("conversation", "agent", "status", "successful", "turns", "audio", "summary")
    for row in rows:
        size = audio.get(row.conversation_id)
        table.add_row(
            _short(row.conversation_id),
            _short(row.agent_id),
            _short(row.status),
            _short(row.call_successful),
            str(turns.get(row.conversation_id, 0)),
            f"{size:,} B mp3" if size else "-",
            _short(row.call_summary_title or row.transcript_summary, 34),
        )
    return table


def call_failures_table(engine: Engine) -> Table | None:
    tables = _reflect(engine, "call_failures")
    if not tables:
        return None
    t = tables["call_failures"]
    with engine.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.id)).all()
    table = Table("conversation", "reason", "provider", "detail")
    for row in rows:
        detail = row.sip_status_code or row.twilio_call_status or row.sip_reason
        table.add_row(
            _short(row.conversation_id),
            _short(row.failure_reason),
            _short(row.provider_type),
            _short(detail),
        )
    return table


def notices_table(engine: Engine) -> Table | None:
    tables = _reflect(engine, "workspace_notices")
    if not tables:
        return None
    t = tables["workspace_notices"]
    with engine.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.id)).all()
    table = Table("event", "voice")
    for row in rows:
        table.add_row(_short(row.event_type), _short(row.voice_id))
    return table


def tasks_table(engine: Engine) -> Table | None:
    tables = _reflect(engine, "dialogue_tasks")
    if not tables:
        return None
    t = tables["dialogue_tasks"]
    with engine.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.task_id)).all()
    table = Table("task", "state", "turns", "audio", "failure")
    for row in rows:
        if row.audio_size:
            audio = f"{row.audio_size:,} B {row.audio_content_type or ''}".strip()
        else:
            audio = "error" if row.audio_error else "-"
        table.add_row(
            _short(row.task_id),
            _short(row.state),
            str(len(row.dialogue or [])),
            escape(audio),
            _short(row.fail_msg or row.audio_error, 40),
        )
    return table


def dead_jobs(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(jobs_table.c.delivery_id, jobs_table.c.handler, jobs_table.c.last_error)
            .where(jobs_table.c.status == JobStatus.dead)
            .order_by(jobs_table.c.id)
        ).all()
    return [dict(row._mapping) for row in rows]


def delivery_job_states(engine: Engine, delivery_id: int) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(jobs_table.c.status).where(jobs_table.c.delivery_id == delivery_id)
            ).scalars()
        )


def check(
    engine: Engine, results: list[ReplayResult], counts: dict[str, int], dead: list[dict[str, Any]]
) -> list[str]:
    """What did not go as expected (empty: everything did)."""
    problems = [
        f"{r.name} was not acknowledged: {r.outcome}" for r in results if not r.acknowledged
    ]
    unfinished = counts.get(JobStatus.pending, 0) + counts.get(JobStatus.running, 0)
    if unfinished:
        problems.append(f"{unfinished} job(s) still unfinished at the timeout")
    files = {r.delivery_id: r.name for r in results if r.delivery_id is not None}
    for job in dead:
        name = files.get(job["delivery_id"], f"delivery {job['delivery_id']}")
        if name not in EXPECTED_DEAD:
            problems.append(f"{name}: {job['handler']} failed: {job['last_error']}")
    for r in results:
        if r.name in EXPECTED_DEAD and r.delivery_id is not None:
            states = delivery_job_states(engine, r.delivery_id)
            if JobStatus.done in states and JobStatus.dead not in states:
                problems.append(f"{r.name} was processed as if it were good; it must be refused")
    return problems


def print_duplicates(console: Console, results: list[ReplayResult]) -> None:
    """Say which earlier file each duplicate matched: the docs reuse one conversation id and
    timestamp across examples, so some fixtures are the same event by the dedupe key."""
    first: dict[int, str] = {}
    lines = []
    for r in results:
        if r.delivery_id is None:
            continue
        if r.duplicate:
            original = first.get(r.delivery_id, f"delivery {r.delivery_id}")
            same = "the same file again" if original == r.name else f"same event as {original}"
            lines.append(f"  {r.name}: {same} (delivery {r.delivery_id}); no job runs again")
        else:
            first.setdefault(r.delivery_id, r.name)
    if lines:
        console.print("Duplicates, answered with the first delivery's id:", highlight=False)
        for line in lines:
            console.print(escape(line), highlight=False)


def print_report(
    console: Console,
    engine: Engine,
    results: list[ReplayResult],
    counts: dict[str, int],
    dead: list[dict[str, Any]],
) -> None:
    sections = [
        ("Conversations", conversations_table(engine)),
        ("Call initiation failures", call_failures_table(engine)),
        ("Workspace notices", notices_table(engine)),
        ("kie.ai dialogue tasks", tasks_table(engine)),
    ]
    for title, table in sections:
        console.print()
        if table is None:
            console.print(
                f"[bold]{title}[/bold]: no table (the built-in handlers are not installed)"
            )
        elif not table.row_count:
            console.print(f"[bold]{title}[/bold]: none")
        else:
            console.print(f"[bold]{title}[/bold] ({table.row_count})")
            console.print(table)
    files = {r.delivery_id: r.name for r in results if r.delivery_id is not None}
    console.print()
    console.print(f"[bold]Dead jobs[/bold] ({len(dead)})")
    # Not a table: the error sentences are the point, and table cells would chop them up.
    for job in dead:
        name = files.get(job["delivery_id"], "?")
        console.print(
            f"  delivery {job['delivery_id']}  {escape(name)}  ({escape(job['handler'])})",
            highlight=False,
        )
        if name in EXPECTED_DEAD:
            console.print(f"    [green]EXPECTED[/green]: {escape(EXPECTED_DEAD[name])}")
        else:
            console.print("    [red]UNEXPECTED[/red]")
        console.print(f"    error: {_short(job['last_error'], 400)}", highlight=False)
    console.print()
    order = [JobStatus.done, JobStatus.dead, JobStatus.pending, JobStatus.running]
    summary = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
    console.print(f"jobs: {summary or 'none'}", highlight=False)


# -- the command ----------------------------------------------------------------------------


def demo_settings(workdir: Path) -> Settings:
    """Throwaway secrets and store; fast polls and short retries so the demo ends quickly."""
    return Settings(
        database_url=f"sqlite:///{workdir / 'voicehooks-demo.db'}",
        data_dir=workdir / "data",
        elevenlabs_secrets=[secrets.token_urlsafe(24)],  # type: ignore[list-item]
        kie_hmac_keys=[secrets.token_urlsafe(24)],  # type: ignore[list-item]
        kie_url_token=None,
        worker_poll_seconds=0.1,
        job_max_attempts=3,
        job_retry_base_seconds=0.2,
        job_retry_max_seconds=1.0,
        migrate_on_start=True,
        log_level="critical",
    )


def run_demo(fixtures: Path, *, timeout: float, keep: bool, console: Console) -> bool:
    """Run the whole demo, print its report; True when everything expected happened."""
    from receiver.cli_replay import replay_files, results_table, summary_line

    mp3_path = fixtures / AUDIO_FIXTURE
    if not mp3_path.is_file():
        raise DemoError(f"{mp3_path} is missing: the kie.ai fixtures need it as their result audio")
    workdir = Path(tempfile.mkdtemp(prefix="voicehooks-demo-"))
    settings = demo_settings(workdir)
    try:
        with audio_server(mp3_path.read_bytes()) as audio_base:
            files = prepare_fixtures(fixtures, workdir / "fixtures", audio_base)
            if not files:
                raise DemoError(f"no *.json fixtures under {fixtures}")
            with running_receiver(settings) as (url, engine):
                console.print(
                    f"[bold]voicehooks demo[/bold]: a throwaway receiver on {url}, "
                    f"SQLite store in {workdir}",
                    highlight=False,
                )
                resent = f"; {RESEND} is sent twice" if any(n == RESEND for _, n in files) else ""
                console.print(
                    f"kie.ai result URLs are served from {audio_base} ({AUDIO_FIXTURE}){resent}.",
                    highlight=False,
                )

                async def send_all() -> list[ReplayResult]:
                    async with Replayer(settings, url=url) as replayer:
                        return await replay_files(replayer, files, description="replaying fixtures")

                results = asyncio.run(send_all())
                console.print(f"\nReplayed from {fixtures}:", highlight=False)
                console.print(results_table(results, width=console.width))
                console.print(summary_line(results), highlight=False)
                print_duplicates(console, results)
                counts = wait_for_jobs(engine, timeout, console)
                dead = dead_jobs(engine)
                print_report(console, engine, results, counts, dead)
                problems = check(engine, results, counts, dead)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if problems:
        console.print("[red bold]Not everything went as expected:[/red bold]")
        for problem in problems:
            console.print(f"  - {escape(problem)}", highlight=False)
    else:
        console.print("[green bold]Everything expected happened.[/green bold]")
    if keep:
        console.print(
            "The receiver stopped; its store was kept. Look at it with:\n"
            f"  VOICEHOOKS_DATABASE_URL={settings.database_url} "
            f"VOICEHOOKS_DATA_DIR={settings.data_dir} voicehooks deliveries list",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print("The receiver stopped and its temporary store was removed.")
    return not problems
