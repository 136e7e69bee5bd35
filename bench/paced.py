"""An open-loop load generator: requests at a fixed rate, latency measured from the schedule.

wrk sends as fast as the server answers (closed loop), which is right for the maximum rate but
says little about latency at a given load; wrk2, the open-loop variant, is not packaged in Debian.
This sends request ``i`` at ``start + i / rate`` over a pool of keep-alive connections and measures
each latency from that intended send time, not from when a connection became free: if the server
stalls, the requests that should have been sent meanwhile are charged the stall (no "coordinated
omission"). It speaks just enough HTTP/1.1 for the benchmark's servers (Content-Length bodies) to
stay cheap enough to run on the same machine as the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class PacedResult:
    rate: float
    duration: float
    sent: int = 0
    ok: int = 0
    not_ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests only
    schedule_seconds: float = 0.0  # from the first intended send to the last one

    def percentile(self, p: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index]

    def summary(self) -> dict[str, object]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)

        return {
            "target_rate": round(self.rate, 1),
            "achieved_rate": (
                round(self.sent / self.schedule_seconds, 1) if self.schedule_seconds else None
            ),
            "duration_s": self.duration,
            "sent": self.sent,
            "ok": self.ok,
            "not_ok": self.not_ok,
            "errors": self.errors,
            "latency_ms": {
                "p50": ms(self.percentile(50)),
                "p90": ms(self.percentile(90)),
                "p99": ms(self.percentile(99)),
                "max": ms(max(self.latencies) if self.latencies else None),
            },
        }


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_paced(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    rate: float,
    duration: float,
    connections: int,
) -> PacedResult:
    """Send ``rate * duration`` requests built by ``make_request(i)``; see the module docstring."""
    loop = asyncio.get_running_loop()
    total = max(1, int(rate * duration))
    result = PacedResult(rate=rate, duration=duration)
    due: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (item := await due.get()) is not None:
                index, intended = item
                try:
                    writer.write(make_request(index))
                    status = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                result.latencies.append(loop.time() - intended)
                if 200 <= status < 300:
                    result.ok += 1
                else:
                    result.not_ok += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    workers = [asyncio.ensure_future(connection()) for _ in range(connections)]
    await asyncio.sleep(0.2)  # let the connections open before the clock starts
    start = loop.time()
    for index in range(total):
        intended = start + index / rate
        wait = intended - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        due.put_nowait((index, intended))
        result.sent += 1
    result.schedule_seconds = loop.time() - start
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    return result
