"""Server-side request forgery: which addresses a webhook may reach, checked where it counts.

A URL is checked when it is registered and again on every attempt, on the address actually
connected to: :class:`SafeTransport` resolves the host itself, refuses the request when any
address it resolves to is refused, and connects to the checked address (the ``Host`` header
and the TLS server name stay the URL's host). DNS that changes between the check and the use
(rebinding) has nothing to exploit. Redirects are never followed (a 3xx is a failure).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses a connection could go to.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_LINK_LOCAL: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # includes the 169.254.169.254 metadata service
    ipaddress.ip_network("fe80::/10"),
)
# Metadata services outside link-local (AWS's IPv6 one): treated as link-local.
_METADATA: tuple[IPNetwork, ...] = (ipaddress.ip_network("fd00:ec2::254/128"),)


class UrlRefusedError(Exception):
    """The URL may not be called: its address is not public and not allowed, or it is not
    an http(s) URL with a host."""


def _plain(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class AddressPolicy:
    """Public addresses pass; loopback passes when ``allow_loopback``; an address inside an
    ``allow`` network passes, except link-local and metadata addresses, which pass only when
    an allowed network lies inside the link-local range itself (named explicitly)."""

    def __init__(self, *, allow_loopback: bool = False, allow: Iterable[str] = ()) -> None:
        self.allow_loopback = allow_loopback
        self.allow: list[IPNetwork] = [ipaddress.ip_network(a, strict=False) for a in allow]

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or None when it may be connected to."""
        ip = _plain(address)
        if any(ip in net for net in _LINK_LOCAL + _METADATA):
            named = any(
                ip in net
                and any(
                    net.version == ll.version and net.subnet_of(ll)  # type: ignore[arg-type]
                    for ll in _LINK_LOCAL + _METADATA
                )
                for net in self.allow
            )
            return None if named else f"{ip} is a link-local or metadata address"
        if any(ip in net for net in self.allow):
            return None
        if ip.is_loopback:
            return None if self.allow_loopback else f"{ip} is a loopback address"
        if ip.is_unspecified:
            return f"{ip} is the unspecified address"
        if ip.is_multicast:
            return f"{ip} is a multicast address"
        if not ip.is_global:
            return f"{ip} is a private or reserved address"
        return None


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    seen: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def checked_addresses(
    host: str, port: int, policy: AddressPolicy, resolver: Resolver
) -> list[IPAddress]:
    """The addresses of ``host``; :class:`UrlRefusedError` when any of them is refused."""
    literal = _literal(host)
    addresses = [literal] if literal is not None else await resolver(host, port)
    if not addresses:
        raise UrlRefusedError(f"{host} resolves to no address")
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            shown = host if literal is not None else f"{host} ({address})"
            raise UrlRefusedError(f"refused to connect to {shown}: {reason}")
    return addresses


def split_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL; :class:`UrlRefusedError` for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefusedError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefusedError("not an http(s) URL with a host")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_url(
    url: str, policy: AddressPolicy, resolver: Resolver = system_resolver, timeout_s: float = 3
) -> None:
    """Check a URL at registration. A literal address, or a name that resolves now, must be
    allowed; a name that does not resolve now is accepted (each attempt checks again)."""
    _scheme, host, port = split_url(url)
    if _literal(host) is not None:
        await checked_addresses(host, port, policy, resolver)
        return
    try:
        addresses = await asyncio.wait_for(resolver(host, port), timeout_s)
    except (OSError, TimeoutError):
        return
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            raise UrlRefusedError(f"refused: {host} resolves to {address}: {reason}")


class SafeTransport(httpx.AsyncBaseTransport):
    """An httpx transport that connects only to addresses the policy allows.

    It resolves the host itself, checks every address, and sends the request to the first
    checked address: the URL's host stays in the ``Host`` header and is the TLS server name
    (SNI and certificate check), so HTTPS works as usual. No proxy is ever used.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver = system_resolver,
        max_connections: int = 100,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = httpx.AsyncHTTPTransport(
            retries=0,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme, host, port = split_url(str(request.url))
        addresses = await checked_addresses(host, port, self._policy, self._resolver)
        # The Host header was set from the original URL when the request was built.
        request.url = request.url.copy_with(host=str(addresses[0]))
        if scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
