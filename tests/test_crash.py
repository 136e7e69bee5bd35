"""A receiver killed with SIGKILL loses nothing it acknowledged.

Several clients stream deliveries at a real `voicehooks serve` process; midway it is killed
without warning. Every delivery that was answered 200 must be in the store byte for byte, and once
the receiver is restarted, every job of those deliveries must complete (jobs that were running
when it died are re-claimed when their lease expires).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from receiver.sources.elevenlabs import sign
from receiver.store.db import create_db_engine
from receiver.store.models import Delivery, Job
from tests.conftest import SECRET, wait_until
from tests.serverproc import ServerProcess

CLIENTS = 4


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_delivery(
    database_url: str, tmp_path: Path
) -> None:
    env = {
        "VOICEHOOKS_PLUGINS": "tests.plugins_inline",
        "VOICEHOOKS_JOB_LEASE_SECONDS": "2",
    }
    server = ServerProcess(database_url, tmp_path / "data", **env).start()
    acknowledged: dict[int, str] = {}  # delivery id -> sha256 of the body we sent
    stop = threading.Event()
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(timeout=5) as http:
            i = 0
            while not stop.is_set():
                i += 1
                body = json.dumps(
                    {
                        "type": "plugin_probe",
                        "event_timestamp": i,
                        "data": {"conversation_id": f"client{n}-{i}", "note": "x" * 500},
                    }
                ).encode()
                try:
                    response = http.post(
                        f"{server.url}/webhooks/elevenlabs",
                        content=body,
                        headers={"ElevenLabs-Signature": sign(SECRET, body)},
                    )
                except httpx.HTTPError:
                    continue  # the receiver is gone: this one was never acknowledged
                if response.status_code == 200:
                    with lock:
                        acknowledged[response.json()["delivery_id"]] = hashlib.sha256(
                            body
                        ).hexdigest()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 150, timeout=60)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(10)

    engine = create_db_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = dict(
                conn.execute(select(Delivery.__table__.c.id, Delivery.__table__.c.sha256)).all()
            )
            unfinished = conn.execute(
                select(Job.__table__.c.id).where(Job.__table__.c.status != "done")
            ).all()
        assert acknowledged, "no delivery was acknowledged before the kill"
        missing = {i for i in acknowledged if stored.get(i) != acknowledged[i]}
        assert not missing, f"acknowledged but not stored: {sorted(missing)[:10]}"
        assert unfinished, "the kill left no backlog; the test proves nothing about recovery"

        restarted = ServerProcess(database_url, tmp_path / "data", **env).start()
        try:

            def all_done() -> bool:
                with engine.connect() as conn:
                    rows = conn.execute(
                        select(Job.__table__.c.delivery_id, Job.__table__.c.status)
                    ).all()
                by_delivery = {d: s for d, s in rows}
                return all(by_delivery.get(i) == "done" for i in acknowledged)

            wait_until(all_done, timeout=90, interval=0.2)
        finally:
            restarted.stop()
    finally:
        engine.dispose()
