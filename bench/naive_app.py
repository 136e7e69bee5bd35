"""The naive design: verify the HMAC, then one SQLite transaction (and fsync) per request.

This is what a careful but straightforward receiver looks like: it is just as durable as voicehooks
(WAL, ``synchronous=FULL``, 200 only after COMMIT), but every request pays for its own commit, and
concurrent requests queue on SQLite's write lock. It is the baseline group commit is measured
against. Configured by environment: ``BENCH_NAIVE_DB`` (SQLite file) and ``BENCH_SECRET``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DB_PATH = os.environ.get("BENCH_NAIVE_DB", "naive.db")
SECRET = os.environ.get("BENCH_SECRET", "").encode()
TOLERANCE_SECONDS = 1800
SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    received_at REAL NOT NULL
)
"""
_local = threading.local()


def connection() -> sqlite3.Connection:
    """One connection per thread of the thread pool, with voicehooks' durability pragmas."""
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(DB_PATH, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        _local.conn = conn
    return conn


def authentic(header: str, body: bytes) -> bool:
    parts = dict(p.strip().split("=", 1) for p in header.split(",") if "=" in p)
    timestamp, digest = parts.get("t", ""), parts.get("v0", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(SECRET, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), digest.encode())


def store(key: str, body: bytes) -> int:
    conn = connection()
    conn.execute("BEGIN IMMEDIATE")
    try:
        cursor = conn.execute(
            "INSERT INTO deliveries (dedupe_key, body, received_at) VALUES (?, ?, ?) "
            "ON CONFLICT (dedupe_key) DO NOTHING",
            (key, body, time.time()),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(cursor.lastrowid or 0)


async def receive(request: Request) -> Response:
    body = await request.body()
    if not authentic(request.headers.get("elevenlabs-signature", ""), body):
        return JSONResponse({"error": "signature_mismatch"}, status_code=401)
    document = json.loads(body)
    key = f"{document['type']}:{document['data']['conversation_id']}:{document['event_timestamp']}"
    delivery_id = await anyio.to_thread.run_sync(store, key, body)
    return JSONResponse({"status": "received", "delivery_id": delivery_id})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    with contextlib.closing(sqlite3.connect(DB_PATH, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)
    yield


app = Starlette(
    routes=[
        Route("/webhooks/{source}", receive, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    lifespan=lifespan,
)
