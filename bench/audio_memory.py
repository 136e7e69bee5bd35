"""Peak memory of the server while it receives and processes big ``post_call_audio`` deliveries.

Why: an ElevenLabs audio webhook carries the whole call recording as one base64 string, so a body
can be hundreds of MB. The documented way to handle it (``await request.body()``, ``json.loads``,
``base64.b64decode``) holds the body several times over in memory. voicehooks spools the body to
disk while it computes the HMAC and the audio handler stream-decodes ``data.full_audio`` into the
blob store, so its peak memory should not grow with the body. This script measures that.

For each size it writes a signed body to a temp file (real MP3 bytes, ``fixtures/audio/hello.mp3``
repeated, base64'd into the JSON envelope), then, each in a fresh server process:

* **ours**: ``voicehooks serve`` (SQLite store, throwaway secret, data dir in the temp dir);
* **baseline**: a minimal Starlette app under uvicorn doing what the ElevenLabs docs show.

The body is sent with ``Transfer-Encoding: chunked``, streamed from disk. Before the request the
server's peak-RSS counter is reset (``/proc/<pid>/clear_refs``) and its RSS read; after the audio is
processed (for ours: the delivery's jobs are done, polled in the SQLite file) ``VmHWM`` is read.
Peak growth = ``VmHWM`` after - ``VmRSS`` before.

    python -m bench.audio_memory                 # 10, 100, 300 MiB bodies
    python -m bench.audio_memory --quick         # 2, 10 MiB smoke run
    python -m bench.audio_memory --sizes 50,500

Results go to stdout (a table) and ``bench/out/audio_memory.json``. Needs Linux (``/proc``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MP3 = ROOT / "fixtures" / "audio" / "hello.mp3"
OUT = ROOT / "bench" / "out" / "audio_memory.json"
MIB = 1 << 20
GOAL_MIB = 64
SECRET = "wsec_bench_throwaway_secret"
CHUNK = 1 << 20  # what the client sends per chunk, and what the body writer encodes per block
CONVERSATION_ID = "conv_bench_audio"


# -- the body --------------------------------------------------------------------------------


@dataclass
class Body:
    path: Path
    size: int
    audio_size: int
    audio_sha256: str


def write_body(path: Path, target_size: int) -> Body:
    """Write a ``post_call_audio`` body of about ``target_size`` bytes, never whole in memory."""
    head = json.dumps(
        {
            "type": "post_call_audio",
            "event_timestamp": int(time.time()),
            "data": {"agent_id": "agent_bench", "conversation_id": CONVERSATION_ID},
        }
    )
    head = head[:-2] + ', "full_audio": "'  # reopen data for the last member
    tail = '"}}'
    room = max(target_size - len(head) - len(tail), 4)
    audio_size = room // 4 * 3
    mp3 = MP3.read_bytes()
    digest = hashlib.sha256()
    block = 3 * (CHUNK // 4)  # a multiple of 3 encodes without padding mid-stream
    pending = bytearray()
    written = 0
    with open(path, "wb") as out:
        out.write(head.encode())
        while written < audio_size:
            while len(pending) < block and written + len(pending) < audio_size:
                pending += mp3
            take = min(block, audio_size - written)
            piece = bytes(pending[:take])
            del pending[:take]
            digest.update(piece)
            out.write(base64.b64encode(piece))
            written += take
        out.write(tail.encode())
    return Body(path, path.stat().st_size, audio_size, digest.hexdigest())


def stream_sign(secret: str, path: Path, timestamp: int) -> str:
    """``receiver.sources.elevenlabs.sign`` over a file, reading it in chunks."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode(), hashlib.sha256)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            mac.update(chunk)
    return f"t={timestamp},v0={mac.hexdigest()}"


def check_stream_sign(tmp: Path) -> None:
    """The streamed signature must be exactly what our ``sign()`` gives for the same bytes."""
    from receiver.sources.elevenlabs import sign

    sample = tmp / "sign-check.json"
    body = write_body(sample, 64 * 1024)
    ts = int(time.time())
    assert stream_sign(SECRET, body.path, ts) == sign(SECRET, sample.read_bytes(), ts)
    sample.unlink()


def file_chunks(path: Path) -> Iterator[bytes]:
    """A generator body: httpx sends it with Transfer-Encoding: chunked."""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


# -- /proc -------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so startup peaks are not counted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("VOICEHOOKS_", "BENCH_"))}


@contextlib.contextmanager
def server(kind: str, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start ``ours`` or ``baseline`` on a free loopback port; yield (process, base url)."""
    port = free_port()
    env = clean_env()
    if kind == "ours":
        env.update(
            VOICEHOOKS_DATABASE_URL=f"sqlite:///{workdir / 'voicehooks.db'}",
            VOICEHOOKS_DATA_DIR=str(workdir / "data"),
            VOICEHOOKS_ELEVENLABS_SECRETS=SECRET,
            # The default cap (256 MiB) would refuse the 300 MiB body with 413.
            VOICEHOOKS_MAX_BODY_BYTES=str(4 << 30),
            VOICEHOOKS_LOG_LEVEL="warning",
        )
        voicehooks = Path(sys.executable).parent / "voicehooks"
        command = [str(voicehooks)] if voicehooks.exists() else [sys.executable, "-m", "receiver"]
        command += ["serve", "--host", "127.0.0.1", "--port", str(port)]
    else:
        env.update(
            BENCH_SECRET=SECRET,
            BENCH_OUT_DIR=str(workdir / "baseline"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bench.audio_memory:create_baseline_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    log_path = workdir / f"{kind}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, log_path)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited at start:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not become ready:\n{log_path.read_text()[-3000:]}")


# -- one measured run --------------------------------------------------------------------------


@dataclass
class Run:
    kind: str
    rss_before: int = 0
    peak_after: int = 0
    rss_after: int = 0
    peak_growth: int = 0
    peak_was_reset: bool = False
    ack_seconds: float = 0.0
    done_seconds: float = 0.0
    status_code: int = 0
    outcome: str = ""
    audio_ok: bool = False
    error: str | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)


def measure(kind: str, body: Body, workdir: Path) -> Run:
    import httpx

    run = Run(kind)
    with server(kind, workdir) as (process, url):
        time.sleep(1.0)  # let the worker thread and the allocator settle after startup
        run.peak_was_reset = reset_peak(process.pid)
        run.rss_before = proc_status(process.pid)["VmRSS"]
        header = stream_sign(SECRET, body.path, int(time.time()))
        started = time.monotonic()
        with httpx.Client(timeout=httpx.Timeout(900.0)) as client:
            response = client.post(
                f"{url}/webhooks/elevenlabs",
                content=file_chunks(body.path),
                headers={"ElevenLabs-Signature": header, "Content-Type": "application/json"},
            )
        run.ack_seconds = time.monotonic() - started
        run.status_code = response.status_code
        if response.status_code != 200:
            run.error = f"HTTP {response.status_code}: {response.text[:500]}"
        elif kind == "ours":
            wait_for_jobs(run, workdir, response.json()["delivery_id"])
        else:
            run.outcome = "processed in the request"
        run.done_seconds = time.monotonic() - started
        status = proc_status(process.pid)
        run.peak_after, run.rss_after = status["VmHWM"], status["VmRSS"]
    run.peak_growth = run.peak_after - run.rss_before
    if run.error is None:
        run.audio_ok = audio_stored(kind, workdir, body)
        if run.outcome != "ingest only (no audio handler)" and not run.audio_ok:
            run.error = "the decoded MP3 was not found with the expected sha256 and size"
    return run


def wait_for_jobs(run: Run, workdir: Path, delivery_id: int, timeout: float = 1800) -> None:
    """Poll the SQLite store until every job of the delivery is done (or one is dead)."""
    deadline = time.monotonic() + timeout
    with contextlib.closing(sqlite3.connect(workdir / "voicehooks.db", timeout=30)) as db:
        while True:
            rows = db.execute(
                "SELECT handler, status, attempts, last_error FROM jobs WHERE delivery_id = ?",
                (delivery_id,),
            ).fetchall()
            run.jobs = [
                dict(zip(("handler", "status", "attempts", "last_error"), r, strict=True))
                for r in rows
            ]
            if not rows:
                run.outcome = "ingest only (no audio handler)"
                return
            if any(r[1] == "dead" for r in rows):
                run.outcome = "job dead"
                run.error = f"job dead: {rows}"
                return
            if all(r[1] == "done" for r in rows):
                run.outcome = "jobs done"
                return
            if time.monotonic() > deadline:
                run.error = f"jobs not done after {timeout}s: {rows}"
                return
            time.sleep(0.05)


def audio_stored(kind: str, workdir: Path, body: Body) -> bool:
    """Is there a file holding exactly the audio bytes (ours: a blob named by their sha256)?"""
    if kind == "ours":
        candidates = list((workdir / "data" / "blobs").rglob(f"{body.audio_sha256}*"))
    else:
        candidates = [workdir / "baseline" / f"{CONVERSATION_ID}.mp3"]
    for path in candidates:
        if path.is_file() and path.stat().st_size == body.audio_size:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() == body.audio_sha256:
                return True
    return False


# -- the baseline server -----------------------------------------------------------------------


def create_baseline_app():  # type: ignore[no-untyped-def]
    """The approach the ElevenLabs docs show, as a Starlette app (run by uvicorn --factory).

    Verification is the docs' FastAPI example verbatim in substance: ``payload.decode("utf-8")``
    into an f-string, encoded again and HMAC'd; then ``json.loads`` and ``base64.b64decode`` (as
    the docs' audio example does) and the MP3 is written out.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    secret = os.environ["BENCH_SECRET"]
    out_dir = Path(os.environ["BENCH_OUT_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)

    async def receive(request: Request) -> Response:
        payload = await request.body()
        headers = request.headers.get("elevenlabs-signature")
        if headers is None:
            return JSONResponse({"error": "missing signature"}, status_code=401)
        timestamp = headers.split(",")[0][2:]
        hmac_signature = headers.split(",")[1]
        if int(timestamp) < int(time.time()) - 30 * 60:
            return JSONResponse({"error": "expired"}, status_code=401)
        full_payload_to_sign = f"{timestamp}.{payload.decode('utf-8')}"
        mac = hmac.new(
            key=secret.encode("utf-8"),
            msg=full_payload_to_sign.encode("utf-8"),
            digestmod=hashlib.sha256,
        )
        digest = "v0=" + mac.hexdigest()
        if not hmac.compare_digest(hmac_signature, digest):
            return JSONResponse({"error": "bad signature"}, status_code=401)
        event = json.loads(payload)
        audio = base64.b64decode(event["data"]["full_audio"])
        (out_dir / f"{event['data']['conversation_id']}.mp3").write_bytes(audio)
        return JSONResponse({"status": "received"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/webhooks/elevenlabs", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


# -- report ------------------------------------------------------------------------------------


def mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"


def table(results: list[dict[str, Any]]) -> str:
    header = (
        "body size",
        "ours peak RSS growth",
        "baseline peak RSS growth",
        "ratio",
        "ours wall (ack / done)",
        "baseline wall",
    )
    rows = [header]
    for r in results:
        ours, base = r["ours"], r["baseline"]
        ratio = base["peak_growth"] / max(ours["peak_growth"], 1)
        rows.append(
            (
                f"{r['size_mib']} MiB",
                mib(ours["peak_growth"]),
                mib(base["peak_growth"]),
                f"{ratio:.1f}x",
                f"{ours['ack_seconds']:.1f} s / {ours['done_seconds']:.1f} s",
                f"{base['done_seconds']:.1f} s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="10,100,300", help="body sizes in MiB (default %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: --sizes 2,10")
    args = parser.parse_args(argv)
    sizes = [2, 10] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if not Path("/proc/self/status").exists():
        print("this benchmark reads /proc and needs Linux", file=sys.stderr)
        return 2

    results: list[dict[str, Any]] = []
    failed = False
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="voicehooks-bench-") as tmp_name:
            tmp = Path(tmp_name)
            check_stream_sign(tmp)
            body = write_body(tmp / "body.json", size * MIB)
            print(
                f"{size} MiB: body {body.size:,} bytes, audio {body.audio_size:,} bytes",
                file=sys.stderr,
                flush=True,
            )
            runs = {}
            for kind in ("ours", "baseline"):
                workdir = tmp / kind
                workdir.mkdir()
                run = measure(kind, body, workdir)
                print(
                    f"  {kind}: peak growth {mib(run.peak_growth)}, {run.outcome or run.error}",
                    file=sys.stderr,
                    flush=True,
                )
                failed |= run.error is not None
                runs[kind] = asdict(run)
            results.append(
                {
                    "size_mib": size,
                    "body_bytes": body.size,
                    "audio_bytes": body.audio_size,
                    **runs,
                }
            )

    print(table(results))
    handler_ran = all(r["ours"]["outcome"] == "jobs done" for r in results)
    worst = max(r["ours"]["peak_growth"] for r in results)
    goal_met = worst < GOAL_MIB * MIB
    print(
        f"\nours: worst peak growth {mib(worst)} (goal < {GOAL_MIB} MiB: "
        f"{'met' if goal_met else 'MISSED'}); "
        + ("audio decoded by the handler" if handler_ran else "INGEST ONLY: no audio handler ran")
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "command": "python -m bench.audio_memory " + " ".join(sys.argv[1:]),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "goal_mib": GOAL_MIB,
                "goal_met": goal_met,
                "handler_ran": handler_ran,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {OUT.relative_to(ROOT)}")
    return 1 if failed or not goal_met or not handler_ran else 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))  # `python bench/audio_memory.py` from anywhere
    sys.exit(main())
