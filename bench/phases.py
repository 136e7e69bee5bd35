"""The measurements: maximum rate (wrk), latency at a fixed rate, idle ack -> completion."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bodies import Bodies
from bench.paced import run_paced
from bench.procs import Server, cpu_meter

LUA = Path(__file__).resolve().parent / "webhooks.lua"


def run_wrk(
    server: Server,
    bodies: Bodies,
    *,
    duration: float,
    grace: float,
    connections: int,
    threads: int,
    bodies_needed: int,
    workdir: Path,
) -> dict[str, Any]:
    """Closed loop, as fast as the server answers: wrk's numbers plus the 2xx count.

    New requests stop after ``duration``; wrk runs ``grace`` seconds longer so that every request
    sent is answered (and counted) before it exits. Requests per second = answered / duration.
    """
    datafile = workdir / "wrk-bodies.txt"
    bodies.write_wrk_file(datafile, bodies.take(bodies_needed), int(time.time()))
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{math.ceil(duration + grace)}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        server.url,
        "--",
        str(datafile),
        str(duration),
        str(threads),
    ]
    result: dict[str, Any] = {"bodies_prepared": bodies_needed}
    try:
        with cpu_meter(server, result):
            completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        datafile.unlink(missing_ok=True)
    line = next((x for x in completed.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
        )
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = data["errors"]
    result |= {
        "requests": data["requests"],
        "ok": data["ok"],
        "non_2xx": data["not_ok"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"],
        "timeouts": errors["timeout"],
        "exhausted": bool(data["exhausted"]),
        "rps": round(data["requests"] / duration, 1),
        "latency_ms": {k: round(v / 1000, 2) for k, v in data["latency_us"].items()},
    }
    result["server_cpu_ms_per_request"] = (
        round(result["cpu"]["server_cpu_s"] * 1000 / data["requests"], 3)
        if data["requests"]
        else None
    )
    return result


def run_paced_phase(
    server: Server, bodies: Bodies, *, rate: float, duration: float, connections: int
) -> dict[str, Any]:
    """Open loop at ``rate`` (bench/paced.py); latency counted from each intended send time."""
    timestamp = int(time.time())
    prefix = bodies.signer(timestamp)
    indices = bodies.take(max(1, int(rate * duration)))

    def make_request(i: int) -> bytes:
        return bodies.http_request(indices[i], timestamp, prefix)

    async def go() -> Any:
        return await run_paced(
            "127.0.0.1",
            server.port,
            make_request,
            rate=rate,
            duration=duration,
            connections=connections,
        )

    result: dict[str, Any] = {}
    with cpu_meter(server, result):
        paced = _run_async(go())
    return paced.summary() | result


def warm_up(server: Server, bodies: Bodies, requests: int) -> dict[str, Any]:
    """A few requests first, so first-use costs (imports, statement preparation) are not timed."""
    if requests <= 0:
        return {"sent": 0, "ok": 0, "not_ok": 0}
    result = run_paced_phase(server, bodies, rate=200, duration=requests / 200, connections=4)
    return {"sent": result["sent"], "ok": result["ok"], "not_ok": result["not_ok"]}


def _run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_idle_probe(
    server: Server, secret: str, database_url: str, *, requests: int, gap: float
) -> dict[str, Any]:
    """One delivery at a time (``gap`` apart) for the probe handler; when did each job finish?

    Acknowledgement time is taken here when the 200 arrives (same machine, same clock as the
    server's ``jobs.finished_at``); ``received -> done`` uses the server's ``received_at``.
    """
    import httpx
    from sqlalchemy import create_engine, select

    from bench.probe_handler import PROBE_EVENT, probe
    from receiver.store.models import Delivery, Job

    handler_name = f"{probe.__module__}:{probe.__qualname__}"
    bodies = Bodies(secret, event_type=PROBE_EVENT)
    acks: dict[int, datetime] = {}
    timestamp = int(time.time())
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for index in bodies.take(requests):
            body = bodies.body(index)
            mac = bodies.signer(timestamp)
            mac.update(body)
            headers = {
                "Content-Type": "application/json",
                "ElevenLabs-Signature": f"t={timestamp},v0={mac.hexdigest()}",
            }
            response = client.post("/webhooks/elevenlabs", content=body, headers=headers)
            acked = datetime.now(UTC)
            response.raise_for_status()
            acks[response.json()["delivery_id"]] = acked
            time.sleep(gap)
    jobs, deliveries = Job.__table__, Delivery.__table__  # type: ignore[attr-defined]
    query = (
        select(jobs.c.delivery_id, jobs.c.finished_at, deliveries.c.received_at)
        .join(deliveries, deliveries.c.id == jobs.c.delivery_id)
        .where(jobs.c.handler == handler_name, jobs.c.status == "done")
    )
    engine = create_engine(database_url)
    deadline = time.monotonic() + 30
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(query).all()
            if len(rows) >= len(acks) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        engine.dispose()
    ack_to_done = [
        (row.finished_at - acks[row.delivery_id]).total_seconds() * 1000
        for row in rows
        if row.delivery_id in acks
    ]
    received_to_done = [(row.finished_at - row.received_at).total_seconds() * 1000 for row in rows]
    return {
        "requests": len(acks),
        "done": len(rows),
        "ack_to_done_ms": _summary(ack_to_done),
        "received_to_done_ms": _summary(received_to_done),
    }


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)}
