"""A SQLite file deleted or replaced under a running server (issue 15 item 9): ingest and
``/readyz`` answer 503 rather than acknowledge deliveries into a file nobody will read again."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import event_body, make_settings


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_store_file_gone_answers_503(tmp_path, services_factory, live_server, how: str) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "voicehooks.db"
    services = services_factory(make_settings(f"sqlite:///{db}", tmp_path / "data"))
    server = live_server(services, run_worker=False)
    assert server.post_signed(event_body(conversation_id="before")).status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200

    if how == "replaced":  # e.g. a backup restored over it: a different inode at the same path
        shutil.copy(db, tmp_path / "copy.db")
        _remove_database(db)
        (tmp_path / "copy.db").rename(db)
    else:
        _remove_database(db)

    response = server.post_signed(event_body(conversation_id="after"))
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "store_unavailable"
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503 and ready.json()["error"] == "store_gone"
    assert how in ready.json()["detail"]
