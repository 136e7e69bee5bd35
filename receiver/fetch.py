"""The one guarded way to fetch a URL that came from a payload or a provider's answer.

A kie.ai callback's result URL is not covered by its signature, and any URL a provider hands us
could point anywhere: at this host's loopback services, at the private network, at a cloud
metadata service (169.254.169.254). So outbound requests made by handlers go through a client
whose transport vets every connection it opens:

- only ``http`` and ``https``;
- the host name is resolved once, every address it resolves to must be public (not loopback,
  private, link-local, shared 100.64/10, multicast, reserved or unspecified, IPv4 or IPv6,
  IPv4-mapped and 6to4/NAT64-embedded IPv4 included), and the connection is made to that vetted
  address: a DNS answer that changes between the check and the connect (rebinding) is never
  used. TLS still verifies the certificate for, and sends SNI with, the URL's host name;
- ``stream`` follows redirects itself (at most ``MAX_REDIRECTS``), and each hop is a new request
  whose connection is vetted again;
- ``VOICEHOOKS_FETCH_ALLOWED_HOSTS``, when set, narrows fetches to those host names (``*.example``
  matches subdomains); ``VOICEHOOKS_FETCH_ALLOW_PRIVATE=true`` lifts the address check for local
  development and tests.

The provider API origins the operator configured (``*_BASE_URL``) are trusted as they are, so the
same client can call a provider API on a private network. Environment proxies are ignored: a proxy
would connect on our behalf to an address we never saw.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore
import httpx

from receiver.settings import Settings

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchRefused(Exception):
    """The guard will not fetch this URL; retrying cannot change that. The message says why."""


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address we may connect to, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_refusal(embedded)
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def _host_matches(host: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def _origin(url: str) -> tuple[str, int] | None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    if parsed.scheme not in SCHEMES or not parsed.host:
        return None
    return parsed.host.lower(), parsed.port or _DEFAULT_PORTS[parsed.scheme]


@dataclass(frozen=True)
class FetchPolicy:
    """Where outbound fetches may go."""

    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()
    # Provider API origins the operator configured: (host, port), trusted as they are.
    trusted_origins: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        bases = (settings.kie_base_url, settings.elevenlabs_base_url, settings.sonna_base_url)
        return cls(
            allow_private=settings.fetch_allow_private,
            allowed_hosts=tuple(settings.fetch_allowed_hosts),
            trusted_origins=frozenset(o for o in map(_origin, bases) if o is not None),
        )

    def trusts(self, host: str, port: int) -> bool:
        return (host.lower(), port) in self.trusted_origins

    def check_host(self, host: str, port: int) -> None:
        """Refuse a host name outside the allowlist (when there is one)."""
        listed = not self.allowed_hosts or _host_matches(host, self.allowed_hosts)
        if not listed and not self.trusts(host, port):
            raise FetchRefused(
                f"{host} is not in VOICEHOOKS_FETCH_ALLOWED_HOSTS, so it is not fetched"
            )

    def check_address(self, host: str, ip: IPAddress) -> None:
        if self.allow_private:
            return
        reason = address_refusal(ip)
        if reason is not None:
            shown = host if host == str(ip) else f"{host} resolves to {ip}, which"
            raise FetchRefused(
                f"not fetched: {shown} is {reason}; only public addresses are fetched "
                "(VOICEHOOKS_FETCH_ALLOW_PRIVATE=true allows others, for local development)"
            )


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, vets and connects to the vetted address."""

    def __init__(self, policy: FetchPolicy, inner: httpcore.AsyncNetworkBackend | None = None):
        self.policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        policy = self.policy
        if policy.trusts(host, port):
            addresses = [host]
        else:
            policy.check_host(host, port)
            resolved = await self._resolve(host, port, timeout)
            for ip in resolved:  # any private answer refuses the host: no mixing and matching
                policy.check_address(host, ip)
            addresses = [str(ip) for ip in resolved]
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        return addresses

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise FetchRefused("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, with its connection pool opening connections through
    ``GuardedBackend`` (httpx 0.28 has no public parameter for a network backend yet)."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(trust_env=False, limits=limits)
        self.policy = policy
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(settings: Settings, **kwargs: Any) -> httpx.AsyncClient:
    """The shared client handlers get as ``ctx.http``: every connection it opens is vetted."""
    kwargs.setdefault("follow_redirects", True)
    kwargs.setdefault("max_redirects", MAX_REDIRECTS)
    return httpx.AsyncClient(
        transport=GuardedTransport(FetchPolicy.from_settings(settings)), trust_env=False, **kwargs
    )


def is_guarded(http: httpx.AsyncClient) -> bool:
    return isinstance(getattr(http, "_transport", None), GuardedTransport)


def _check_url(url: httpx.URL) -> None:
    if url.scheme not in SCHEMES:
        raise FetchRefused(f"only http and https URLs are fetched, not {url.scheme or 'none'}")
    if not url.host:
        raise FetchRefused("the URL has no host")


@contextlib.asynccontextmanager
async def stream(
    http: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: httpx.Timeout | None = None,
    max_redirects: int = MAX_REDIRECTS,
) -> AsyncIterator[httpx.Response]:
    """``GET url`` through the guarded client ``http``, redirects followed here (each hop
    checked again), and yield the final response with its body not yet read.

    Raises ``FetchRefused`` for a URL the guard refuses (and for a client that is not guarded:
    that is a programming error that must not fetch anything).
    """
    if not is_guarded(http):
        raise FetchRefused("refusing to fetch through a client without the address guard")
    current = httpx.URL(url)
    for hop in range(max_redirects + 1):
        _check_url(current)
        request = http.build_request(
            "GET", current, headers=headers, timeout=timeout or httpx.USE_CLIENT_DEFAULT
        )
        response = await http.send(request, stream=True, follow_redirects=False)
        location = response.headers.get("location")
        if response.status_code not in REDIRECT_STATUSES or not location:
            try:
                yield response
            finally:
                await response.aclose()
            return
        await response.aclose()
        if hop == max_redirects:
            break
        try:
            current = current.join(location)
        except httpx.InvalidURL as exc:
            raise FetchRefused("a redirect points at something that is not a URL") from exc
    raise FetchRefused(f"more than {max_redirects} redirects")
