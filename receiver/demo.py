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
from rich.text import Text
from sqlalchemy import Engine

from receiver import jobs
from receiver.cli.output import literal, short
from receiver.registry import Registry
from receiver.replay import Replayer, ReplayResult
from receiver.settings import Settings
from receiver.store.models import JobStatus

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
def running_receiver(settings: Settings) -> Iterator[tuple[str, Engine, Registry]]:
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
        services = app.state.services
        yield f"http://127.0.0.1:{port}", services.engine, services.registry
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


def wait_for_jobs(engine: Engine, timeout: float, console: Console) -> dict[str, int]:
    """Poll until no job is pending or running (or the timeout); returns the final counts."""
    from receiver.cli.replay import progress_bar

    deadline = time.monotonic() + timeout
    counts = jobs.job_counts(engine)
    with progress_bar("handlers") as progress:
        task = progress.add_task("running handlers", total=sum(counts.values()), current="")
        while True:
            finished = counts.get(JobStatus.done, 0) + counts.get(JobStatus.dead, 0)
            progress.update(task, completed=finished, current=f"{counts.get('dead', 0)} dead")
            unfinished = counts.get(JobStatus.pending, 0) + counts.get(JobStatus.running, 0)
            if not unfinished or time.monotonic() > deadline:
                return counts
            time.sleep(0.1)
            counts = jobs.job_counts(engine)


# -- the report -----------------------------------------------------------------------------


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
            states = jobs.delivery_job_states(engine, r.delivery_id)
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
            console.print(literal(line))


def print_report(
    console: Console,
    engine: Engine,
    registry: Registry,
    results: list[ReplayResult],
    counts: dict[str, int],
    dead: list[dict[str, Any]],
) -> None:
    # Each installed plugin reports on its own tables; the demo knows none of them.
    for report in registry.reports():
        title, table = report(engine)
        console.print()
        if not table.row_count:
            console.print(Text.assemble((title, "bold"), ": none"))
        else:
            console.print(Text.assemble((title, "bold"), f" ({table.row_count})"))
            console.print(table)
    files = {r.delivery_id: r.name for r in results if r.delivery_id is not None}
    console.print()
    console.print(f"[bold]Dead jobs[/bold] ({len(dead)})")
    # Not a table: the error sentences are the point, and table cells would chop them up.
    for job in dead:
        name = files.get(job["delivery_id"], "?")
        console.print(literal(f"  delivery {job['delivery_id']}  {name}  ({job['handler']})"))
        if name in EXPECTED_DEAD:
            console.print(Text.assemble("    ", ("EXPECTED", "green"), ": ", EXPECTED_DEAD[name]))
        else:
            console.print("    [red]UNEXPECTED[/red]")
        console.print(Text.assemble("    error: ", short(job["last_error"], 400)))
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
        elevenlabs_secrets=[secrets.token_urlsafe(24)],
        kie_hmac_keys=[secrets.token_urlsafe(24)],
        kie_url_token=None,
        # Self-contained whatever the environment says: no provider API is called (with a kie.ai
        # key, callbacks would be confirmed against the real recordInfo), nothing periodic runs.
        kie_api_key=None,
        elevenlabs_api_key=None,
        sonna_api_key=None,
        elevenlabs_reconcile_seconds=0,
        retention_days=None,
        public_url=None,
        # The demo serves its kie.ai result audio on loopback, which the guarded fetch refuses
        # unless told otherwise.
        fetch_allow_private=True,
        worker_poll_seconds=0.1,
        job_max_attempts=3,
        job_retry_base_seconds=0.2,
        job_retry_max_seconds=1.0,
        migrate_on_start=True,
        log_level="critical",
    )


def run_demo(fixtures: Path, *, timeout: float, keep: bool, console: Console) -> bool:
    """Run the whole demo, print its report; True when everything expected happened."""
    from receiver.cli.replay import replay_files, results_table, summary_line

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
            with running_receiver(settings) as (url, engine, registry):
                console.print(
                    Text.assemble(
                        ("voicehooks demo", "bold"),
                        f": a throwaway receiver on {url}, SQLite store in {workdir}",
                    )
                )
                resent = f"; {RESEND} is sent twice" if any(n == RESEND for _, n in files) else ""
                console.print(
                    literal(
                        f"kie.ai result URLs are served from {audio_base} "
                        f"({AUDIO_FIXTURE}){resent}."
                    )
                )

                async def send_all() -> list[ReplayResult]:
                    async with Replayer(settings, url=url) as replayer:
                        return await replay_files(replayer, files, description="replaying fixtures")

                results = asyncio.run(send_all())
                console.print(literal(f"\nReplayed from {fixtures}:"))
                console.print(results_table(results, width=console.width))
                console.print(summary_line(results), highlight=False)
                print_duplicates(console, results)
                counts = wait_for_jobs(engine, timeout, console)
                dead = jobs.dead_jobs(engine)
                print_report(console, engine, registry, results, counts, dead)
                problems = check(engine, results, counts, dead)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if problems:
        console.print("[red bold]Not everything went as expected:[/red bold]")
        for problem in problems:
            console.print(literal(f"  - {problem}"))
    else:
        console.print("[green bold]Everything expected happened.[/green bold]")
    if keep:
        console.print(
            literal(
                "The receiver stopped; its store was kept. Look at it with:\n"
                f"  VOICEHOOKS_DATABASE_URL={settings.database_url} "
                f"VOICEHOOKS_DATA_DIR={settings.data_dir} voicehooks deliveries list"
            ),
            soft_wrap=True,
        )
    else:
        console.print("The receiver stopped and its temporary store was removed.")
    return not problems
