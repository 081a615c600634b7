"""The SSRF guard's rules: address classes, URL forms, and the resolver (no connections made)."""

from __future__ import annotations

import ipaddress

import pytest

from agent.webhooks.ssrf import GuardedResolver, TargetRefused, check_url, classify

REFUSED = {
    "127.0.0.1": "loopback", "127.255.0.9": "loopback", "::1": "loopback",
    "10.1.2.3": "private", "172.16.0.1": "private", "192.168.1.1": "private",
    "fc00::1": "private", "fd12:3456::1": "private",
    "169.254.1.1": "link-local", "fe80::1": "link-local", "fe80::1%eth0": "link-local",
    "100.64.0.1": "carrier-grade NAT", "100.127.255.254": "carrier-grade NAT",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "ff02::1": "multicast",
    "240.0.0.1": "reserved", "255.255.255.255": "reserved",
    "0.0.0.0": "unspecified", "::": "unspecified",
    "169.254.169.254": "metadata", "fd00:ec2::254": "metadata", "100.100.100.200": "metadata",
    "::ffff:127.0.0.1": "IPv4-mapped", "::ffff:8.8.8.8": "IPv4-mapped",
    "::127.0.0.1": "IPv4-compatible",
    "64:ff9b::7f00:1": "embedding 127.0.0.1", "2002:7f00:1::": "embedding 127.0.0.1",
    "192.0.2.1": "private", "198.18.0.1": "private", "0.1.2.3": "private",
}


@pytest.mark.parametrize(("address", "why"), sorted(REFUSED.items()))
def test_refused_addresses(address: str, why: str) -> None:
    """Every non-public address class is refused, with its class named."""
    reason = classify(ipaddress.ip_address(address))
    assert reason is not None and why in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2002:808:808::"])
def test_public_addresses_pass(address: str) -> None:
    """Public addresses (including 6to4 of a public IPv4) are allowed."""
    assert classify(ipaddress.ip_address(address)) is None


def test_allow_private_still_refuses_metadata() -> None:
    """allow_private_targets opens loopback and private ranges, never cloud metadata."""
    assert classify(ipaddress.ip_address("127.0.0.1"), allow_private=True) is None
    assert classify(ipaddress.ip_address("10.0.0.1"), allow_private=True) is None
    for metadata in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        reason = classify(ipaddress.ip_address(metadata), allow_private=True)
        assert reason is not None and "metadata" in reason


@pytest.mark.parametrize("url", [
    "http://2130706433/", "http://0x7f.1/", "http://017700000001/", "http://127.1/",
    "http://0x7f000001/", "http://127.000.000.001/", "http://0177.0.0.1/", "http://1.2.3.4.5/",
    "http://foo.0x10/", "http://127.0.1/", "http://2130706433./",
])
@pytest.mark.parametrize("allow_private", [False, True])
def test_odd_numeric_hosts_are_refused(url: str, allow_private: bool) -> None:
    """Numeric hosts that are not a canonical dotted quad are refused, even when private
    targets are allowed: resolvers would read them as 127.0.0.1."""
    with pytest.raises(TargetRefused, match="canonical"):
        check_url(url, allow_private=allow_private)


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.com/", "http or https"), ("file:///etc/passwd", "http or https"),
    ("gopher://x/", "http or https"), ("http:///path", "no host"),
    ("http://example.com/#frag", "fragment"), ("not a url", "spaces or control"),
    ("https://a.com/\x00x", "control"), ("https://a.com/a b", "spaces"),
    ("http://-bad-.com/", "not a valid name"), ("http://xn--/", "not valid"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"), ("http://[::1]:8080/", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
])
def test_bad_urls(url: str, why: str) -> None:
    """Wrong schemes, missing hosts, fragments and refused IP literals are named."""
    with pytest.raises(TargetRefused, match=why):
        check_url(url, allow_private=False)


def test_https_can_be_required() -> None:
    """With require_https, http URLs are refused; by default they are allowed."""
    assert str(check_url("http://example.com/h", allow_private=False)) == "http://example.com/h"
    with pytest.raises(TargetRefused, match="https"):
        check_url("http://example.com/h", allow_private=False, require_https=True)


async def test_resolver_refuses_names_of_loopback() -> None:
    """'localhost' resolves to loopback and is refused; allowed, it is pinned to what was checked."""
    with pytest.raises(TargetRefused, match=r"localhost resolves to 127\.0\.0\.1, a loopback"):
        await GuardedResolver(allow_private=False).resolve("localhost", 80)
    [result] = await GuardedResolver(allow_private=True).resolve("localhost", 80)
    assert result["host"] == "127.0.0.1" and result["hostname"] == "localhost"
    with pytest.raises(TargetRefused, match="canonical"):
        await GuardedResolver(allow_private=True).resolve("127.1", 80)
