"""The guarded outbound fetch (receiver/fetch.py): public addresses only, checked on the address
actually connected to and after every redirect, with the kie.ai handler ending a refused
download's job dead while keeping what the callback said.

The servers are real (``http.server`` on loopback); only DNS is stood in for in the rebinding
test, since a real resolver that changes its answer cannot be had offline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from receiver import fetch
from receiver.download import FetchForbidden, TransientDownloadError, download_audio
from receiver.fetch import FetchPolicy, FetchRefused, GuardedBackend, address_refusal
from receiver.settings import Settings
from receiver.store.blobs import BlobStore
from tests import test_kie_handler as kie_tests
from tests.test_kie_handler import MP3, REGISTRY, blob_files, body_with, deliver, drain, jobs, task
from tests.test_kie_source import SUCCESS_ID, kie_settings

audio_server = kie_tests.audio_server  # the loopback file host, a fixture
quick_retries = kie_tests.quick_retries

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "shared"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private"),
    ("fd00:ec2::254", "private"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
    ("::ffff:169.254.169.254", "link-local"),
    ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
    ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    reason = address_refusal(ipaddress.ip_address(address))
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


def _settings(tmp_path: Any, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path, **overrides)


async def _download(settings: Settings, url: str, tmp_path: Any) -> Any:
    async with fetch.guarded_client(settings) as http:
        return await download_audio(
            http, BlobStore(tmp_path / "blobs"), url, max_bytes=10**7, attempts=1
        )


def test_loopback_result_url_is_refused_before_any_request(tmp_path, audio_server) -> None:  # type: ignore[no-untyped-def]
    url = audio_server.route("/a.mp3")
    with pytest.raises(FetchForbidden, match="loopback") as caught:
        asyncio.run(_download(_settings(tmp_path), url, tmp_path))
    assert "VOICEHOOKS_FETCH_ALLOW_PRIVATE" in str(caught.value)
    assert audio_server.hits["/a.mp3"] == 0
    # A name that resolves to loopback is refused just the same: the check is on the address.
    named = url.replace("127.0.0.1", "localhost")
    with pytest.raises(FetchForbidden, match="localhost resolves to"):
        asyncio.run(_download(_settings(tmp_path), named, tmp_path))
    assert audio_server.hits["/a.mp3"] == 0
    # And allowed when the operator says so (local development, the demo, these tests).
    done = asyncio.run(_download(_settings(tmp_path, fetch_allow_private=True), url, tmp_path))
    assert done.size == len(MP3) and audio_server.hits["/a.mp3"] == 1


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.mp3", "gopher://127.0.0.1:70/"]
)
def test_only_http_and_https(tmp_path, url: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FetchForbidden, match="only http and https"):
        asyncio.run(_download(_settings(tmp_path, fetch_allow_private=True), url, tmp_path))


def test_allowlist_narrows_fetches_to_its_hosts(tmp_path, audio_server) -> None:  # type: ignore[no-untyped-def]
    url = audio_server.route("/a.mp3")
    listed = _settings(tmp_path, fetch_allow_private=True, fetch_allowed_hosts="127.0.0.1")
    assert asyncio.run(_download(listed, url, tmp_path)).size == len(MP3)
    other = _settings(tmp_path, fetch_allow_private=True, fetch_allowed_hosts="*.kie.ai")
    with pytest.raises(FetchForbidden, match="VOICEHOOKS_FETCH_ALLOWED_HOSTS"):
        asyncio.run(_download(other, url, tmp_path))
    assert audio_server.hits["/a.mp3"] == 1


@pytest.fixture
def redirector() -> Iterator[tuple[str, list[str]]]:
    """``/hop/N`` redirects to ``/hop/N+1`` forever; ``/to?url`` redirects to ``url``."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path.startswith("/hop/"):
                target = f"/hop/{int(self.path.rsplit('/', 1)[1]) + 1}"
            else:
                target = self.path.split("?", 1)[1]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_redirects_are_checked_again_and_bounded(tmp_path, redirector, audio_server) -> None:  # type: ignore[no-untyped-def]
    base, seen = redirector
    # The redirector is a configured provider origin (trusted as it is); where it redirects
    # to is not: the hop to loopback is refused before that server sees a request.
    trusting = _settings(tmp_path, kie_base_url=base)
    target = audio_server.route("/private.mp3").replace("127.0.0.1", "localhost")
    with pytest.raises(FetchForbidden, match="loopback"):
        asyncio.run(_download(trusting, f"{base}/to?{target}", tmp_path))
    assert audio_server.hits["/private.mp3"] == 0 and len(seen) == 1
    with pytest.raises(FetchForbidden, match="only http and https"):
        asyncio.run(_download(trusting, f"{base}/to?file:///etc/passwd", tmp_path))
    # At most five redirects are followed: six requests, then a refusal.
    seen.clear()
    with pytest.raises(FetchForbidden, match=r"more than 5 redirects"):
        asyncio.run(_download(trusting, f"{base}/hop/0", tmp_path))
    assert seen == [f"/hop/{n}" for n in range(6)]
    # With a redirect that lands on audio, the download works.
    allowed = _settings(tmp_path, fetch_allow_private=True)
    done = asyncio.run(_download(allowed, f"{base}/to?{audio_server.route('/b.mp3')}", tmp_path))
    assert done.size == len(MP3)


class _RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.connected: list[str] = []

    async def connect_tcp(self, host: str, port: int, **kwargs: Any) -> Any:
        self.connected.append(host)
        raise httpcore.ConnectError("recorded")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_connects_to_the_vetted_address_not_a_second_lookup(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """DNS rebinding: the first answer is public, every later one loopback. The connection goes
    to the address that was checked; the name is never resolved again."""
    answers: list[str] = []

    async def rebinding_getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        address = "8.8.8.8" if not answers else "127.0.0.1"
        answers.append(address)
        return [(2, 1, 6, "", (address, port))]

    monkeypatch.setattr(fetch.anyio, "getaddrinfo", rebinding_getaddrinfo)
    inner = _RecordingBackend()
    backend = GuardedBackend(FetchPolicy(), inner)
    with pytest.raises(httpcore.ConnectError):
        asyncio.run(backend.connect_tcp("rebind.example", 80, timeout=1))
    assert inner.connected == ["8.8.8.8"] and answers == ["8.8.8.8"]
    # A name with a private address among its answers is refused outright.
    answers.append("again")
    with pytest.raises(FetchRefused, match=r"rebind\.example resolves to 127\.0\.0\.1"):
        asyncio.run(backend.connect_tcp("rebind.example", 80, timeout=1))
    assert inner.connected == ["8.8.8.8"]


def test_a_client_without_the_guard_fetches_nothing(tmp_path, audio_server) -> None:  # type: ignore[no-untyped-def]
    async def plain() -> None:
        async with httpx.AsyncClient() as http:
            await download_audio(
                http, BlobStore(tmp_path), audio_server.route("/c.mp3"), max_bytes=10**6
            )

    with pytest.raises(FetchForbidden, match="without the address guard"):
        asyncio.run(plain())
    assert audio_server.hits["/c.mp3"] == 0


def test_refused_result_url_ends_the_job_dead_and_keeps_the_callback(  # type: ignore[no-untyped-def]
    database_url, tmp_path, services_factory, audio_server
) -> None:
    """The handler path end to end, on SQLite and Postgres, with the default policy."""
    settings = kie_settings(database_url, tmp_path / "data", fetch_allow_private=False)
    services = services_factory(settings, REGISTRY)
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    deliver(services, body_with("success", [metadata]))
    drain(services)
    (job,) = jobs(services)
    assert job.status == "dead" and job.attempts == 1
    assert f"kie task {SUCCESS_ID}" in job.last_error
    assert "169.254.169.254 is a link-local address" in job.last_error
    row = task(services, SUCCESS_ID)
    assert row["state"] == "success" and row["audio_blob_path"] is None
    assert row["audio_error"] == job.last_error and row["result_urls"] == [metadata]
    assert blob_files(services) == []


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for the name ``localhost`` only (no IP address)."""
    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.pem", "k", "csr", "c"))
    ext = tmp_path / "ext"
    ext.write_text("subjectAltName=DNS:localhost\n")
    commands = [
        f"req -x509 -newkey rsa:2048 -nodes -keyout {ca_key} -out {ca} -days 1 -subj /CN=test-ca",
        f"req -newkey rsa:2048 -nodes -keyout {key} -out {csr} -subj /CN=localhost",
        f"x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -out {cert} -days 1 "
        f"-extfile {ext}",
    ]
    for command in commands:
        subprocess.run(["openssl", *command.split()], check=True, capture_output=True)
    return ca, cert, key


def test_tls_verifies_the_url_host_while_connecting_to_the_vetted_address(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Connecting to the checked IP must not weaken TLS: the certificate is still verified
    for (and SNI still names) the URL's host."""
    ca, cert, key = _tls_files(tmp_path)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.send_header("Content-Length", str(len(MP3)))
            self.end_headers()
            self.wfile.write(MP3)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    httpd.socket = server_context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    port = httpd.server_address[1]
    trusted = ssl.create_default_context(cafile=str(ca))

    async def get(url: str) -> Any:
        transport = fetch.GuardedTransport(FetchPolicy(allow_private=True), verify=trusted)
        async with httpx.AsyncClient(transport=transport) as http:
            return await download_audio(
                http, BlobStore(tmp_path / "blobs"), url, max_bytes=10**7, attempts=1
            )

    try:
        done = asyncio.run(get(f"https://localhost:{port}/a.mp3"))
        assert done.size == len(MP3)
        # The same server by its address: the certificate does not name it, so TLS refuses.
        with pytest.raises(TransientDownloadError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(get(f"https://127.0.0.1:{port}/a.mp3"))
    finally:
        httpd.shutdown()
        httpd.server_close()
