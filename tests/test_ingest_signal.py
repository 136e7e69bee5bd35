"""Ingest takes priority: workers start nothing while deliveries wait for a commit (issue 16)."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

from receiver.ingest_signal import HOLDOFF_SECONDS, STALE_SECONDS, IngestSignal
from receiver.registry import HandlerSpec, Registry
from tests.conftest import make_settings, wait_until
from tests.test_worker import job_rows, store


def test_the_mark_is_shared_through_the_file_and_goes_stale(tmp_path: Path) -> None:
    receiver_side = IngestSignal.in_dir(tmp_path)
    worker_side = IngestSignal.in_dir(tmp_path)  # another process maps the same file
    assert not worker_side.busy()
    receiver_side.set_busy(True)
    assert worker_side.busy()
    receiver_side.set_busy(False)
    assert worker_side.busy()  # idle only once the gap lasts
    time.sleep(HOLDOFF_SECONDS * 2)
    assert not worker_side.busy()
    # A receiver that died while busy leaves an old mark: it must not hold workers back.
    struct.pack_into("d", receiver_side._map, 0, time.time() - STALE_SECONDS - 1)
    assert not worker_side.busy()


def test_a_worker_defers_jobs_while_deliveries_wait_then_runs_them(
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
) -> None:
    ran: list[float] = []

    def record(event, ctx) -> None:  # type: ignore[no-untyped-def]
        ran.append(time.monotonic())

    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", record)])
    settings = make_settings(database_url, tmp_path / "d")
    services = services_factory(settings, registry)
    signal = services.worker.ingest_signal
    assert signal is not None  # Services wires the same mark into the inbox and the worker
    store(services, 1)
    signal.set_busy(True)
    busy_until = time.monotonic() + 0.6
    keep_busy = threading.Thread(
        target=lambda: [signal.set_busy(True) or time.sleep(0.05) for _ in range(12)]
    )
    keep_busy.start()
    services.worker.start_in_thread()
    try:
        time.sleep(0.4)
        assert ran == [] and job_rows(services)[0].status == "pending"
        keep_busy.join()
        signal.set_busy(False)
        wait_until(lambda: job_rows(services)[0].status == "done", timeout=15)
    finally:
        services.worker.stop()
    assert ran and ran[0] >= busy_until - 0.1


def test_the_inbox_lowers_the_mark_once_its_deliveries_are_committed(
    database_url,  # type: ignore[no-untyped-def]
    tmp_path,
    services_factory,
) -> None:
    import asyncio

    from tests.test_worker import transcription

    registry = Registry.of([HandlerSpec("elevenlabs", "post_call_transcription", print)])
    services = services_factory(make_settings(database_url, tmp_path / "d"), registry)
    signal = services.worker.ingest_signal
    assert signal is not None

    async def burst() -> list[bool]:
        services.inbox.start()
        try:
            seen: list[bool] = []
            pending = [
                asyncio.ensure_future(services.inbox.accept(transcription(str(i))))
                for i in range(50)
            ]
            for _ in range(3):  # the requests run, then their hand-over to the writer
                await asyncio.sleep(0)
            seen.append(signal.busy())  # deliveries wait for a commit
            await asyncio.gather(*pending)
            # The writer lowers the mark right after answering the batch.
            seen.append(bool(await asyncio.to_thread(wait_until, lambda: not signal.busy(), 2)))
            return seen
        finally:
            services.inbox.stop()

    assert asyncio.run(burst()) == [True, True]
