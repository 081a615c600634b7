"""The SSRF guard: which webhook targets the agent may connect to.

Three layers, all sharing ``classify``:

1. ``check_url`` (when a hook is created or changed, and before every attempt): the URL must be
   http(s) with a host; a host that ends in a number must be a canonical dotted-quad IPv4
   address (``2130706433``, ``0x7f.1``, ``017700000001`` and ``127.1`` are refused: resolvers
   read them as 127.0.0.1); an IP literal must be allowed by ``classify``.
2. ``GuardedResolver`` (every connection): resolves the name (``getaddrinfo`` in the loop's
   executor) and refuses the whole name if ANY address is not allowed. The connector then
   connects to exactly the addresses that were checked, so there is no window for DNS
   rebinding between the check and the connect.
3. ``classify``: loopback, private, link-local, CGNAT, multicast, reserved, unspecified,
   documentation, IPv4-mapped/compatible IPv6 (and NAT64/6to4/Teredo embedding a refused IPv4)
   are refused unless private targets are allowed; cloud metadata addresses
   (169.254.169.254, fd00:ec2::254, 100.100.100.200) are refused always.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

__all__ = ["GuardedResolver", "TargetRefused", "check_url", "classify", "numeric_host_issue"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = frozenset(ipaddress.ip_address(a) for a in
                      ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)
_CANONICAL_OCTET = re.compile(r"^(0|[1-9][0-9]{0,2})$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


class TargetRefused(Exception):
    """The target may not be contacted; ``reason`` says why, for the attempt log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _V4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def classify(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why the agent must not connect to ``ip``, or None when it may."""
    if ip in _METADATA:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        inner = _embedded_v4(ip)
        if inner is not None:
            if ip.ipv4_mapped is not None or ip in _V4_COMPATIBLE:
                # The mapped forms are how filters are usually dodged: refused outright.
                if inner in _METADATA:
                    return "a cloud metadata address"
                return None if allow_private else "an IPv4-mapped or IPv4-compatible IPv6 address"
            reason = classify(inner, allow_private=allow_private)
            if reason is not None:
                return f"an IPv6 address embedding {inner}, {reason}"
    if allow_private:
        return None
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "a carrier-grade NAT address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


def numeric_host_issue(host: str) -> str | None:
    """Why a host that looks numeric is refused: resolvers read ``127.1`` or ``0x7f.1`` as
    127.0.0.1, so a host ending in a number must be a canonical dotted quad."""
    labels = host.rstrip(".").split(".")
    if not labels or not _NUMERIC_LABEL.match(labels[-1]):
        return None
    if len(labels) == 4 and all(_CANONICAL_OCTET.match(p) and int(p) <= 255 for p in labels):
        return None
    return f"'{host}' is not a canonical IPv4 address (numeric forms like 127.1 are refused)"


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, *, allow_private: bool, require_https: bool = False) -> URL:
    """The parsed URL if the agent may send to it as far as can be told without DNS.

    Raises TargetRefused with a reason a user can act on.
    """
    if any(c.isspace() or not c.isprintable() for c in url):
        raise TargetRefused("the URL must not contain spaces or control characters")
    try:
        parsed = URL(url)
    except Exception:  # the parser has more failure modes than ValueError on hostile input
        raise TargetRefused("not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused("the scheme must be http or https")
    if require_https and parsed.scheme != "https":
        raise TargetRefused("the scheme must be https ([webhooks] require_https = true)")
    try:
        host = parsed.raw_host
        parsed.host  # noqa: B018 - an invalid IDNA name raises here
        parsed.port  # noqa: B018 - an out-of-range port raises here
        fragment = parsed.fragment
    except Exception:  # ValueError, UnicodeError (IDNA), IndexError on hostile input
        raise TargetRefused("the host or port is not valid") from None
    if not host:
        raise TargetRefused("the URL has no host")
    if fragment:
        raise TargetRefused("the URL must not have a fragment")
    if _literal(host) is None and not _HOST_NAME.match(host):
        raise TargetRefused("the host is not a valid name")
    issue = numeric_host_issue(host)
    if issue is not None:
        raise TargetRefused(issue)
    ip = _literal(host)
    if ip is not None:
        reason = classify(ip, allow_private=allow_private)
        if reason is not None:
            raise TargetRefused(f"{ip} is {reason}")
    return parsed


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that resolves every name afresh and refuses it if any of its
    addresses is not allowed. The connector connects only to the addresses returned here."""

    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        issue = numeric_host_issue(host)
        if issue is not None:
            raise TargetRefused(issue)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise OSError(exc.errno, f"cannot resolve {host}: {exc.strerror}") from None
        results: list[ResolveResult] = []
        for fam, _type, proto, _canon, sockaddr in infos:
            address = str(sockaddr[0])
            ip = ipaddress.ip_address(address)
            reason = classify(ip, allow_private=self._allow_private)
            if reason is not None:
                raise TargetRefused(f"{host} resolves to {ip}, {reason}")
            results.append(_result(host, address, int(sockaddr[1]), fam, proto))
        if not results:
            raise OSError(0, f"cannot resolve {host}: no addresses")
        return results

    async def close(self) -> None:
        return None


def _result(host: str, address: str, port: int, family: int, proto: int) -> ResolveResult:
    return ResolveResult(hostname=host, host=address, port=port, family=family, proto=proto,
                         flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
