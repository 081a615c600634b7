"""Route matching and name rules shared by both proxies (pure logic)."""

from __future__ import annotations

import pytest

from agent.proxy import Route
from agent.proxy.names import (
    InvalidName,
    host_of,
    normalize_domain,
    normalize_path_prefix,
    path_has_prefix,
)
from agent.proxy.table import RouteTable


def _route(rid: str, domain: str, prefix: str = "/", service: str = "s") -> Route:
    return Route(id=rid, domain=domain, path_prefix=prefix, service_id=service, port=None,
                 created_at=0.0)


def test_exact_host_beats_wildcard_and_longest_prefix_wins() -> None:
    """Exact host routes first (longest prefix), then the wildcard of the parent domain."""
    table = RouteTable([
        _route("r1", "*.example.com"), _route("r2", "api.example.com", "/v1"),
        _route("r3", "api.example.com", "/v1/admin"), _route("r4", "*.example.com", "/static"),
        _route("r5", "www.example.com"),
    ])
    cases = {("api.example.com", "/v1/x"): "r2", ("api.example.com", "/v1/admin/y"): "r3",
             ("api.example.com", "/V1/Admin"): "r3", ("api.example.com", "/other"): "r1",
             ("api.example.com", "/static/a.css"): "r4", ("www.example.com", "/static"): "r5",
             ("x.example.com", "/"): "r1"}
    for (host, path), expected in cases.items():
        match = table.match(host, path)
        assert match is not None and match.id == expected, (host, path)
    assert table.match("example.com", "/") is None
    assert table.match("a.b.example.com", "/") is None  # a wildcard covers one label
    assert table.match("", "/") is None
    assert table.size == 5


def test_path_prefix_matches_whole_segments() -> None:
    """/api covers /api and /api/..., not /apix; / covers everything."""
    assert path_has_prefix("/api", "/api") and path_has_prefix("/api/x", "/api")
    assert not path_has_prefix("/apix", "/api") and not path_has_prefix("/ap", "/api")
    assert path_has_prefix("/anything", "/")


@pytest.mark.parametrize(("header", "host"), [
    ("Example.COM", "example.com"), ("example.com:8080", "example.com"),
    ("example.com.", "example.com"), ("[::1]:80", "[::1]"), ("", ""),
    ("bücher.example", "xn--bcher-kva.example"),
])
def test_host_header_is_canonicalized(header: str, host: str) -> None:
    """Port, case and trailing dot are removed from the Host header before matching."""
    assert host_of(header) == host


def test_domain_rules() -> None:
    """Valid names come out canonical; invalid ones raise with a reason."""
    assert normalize_domain("*.Bücher.Example.") == "*.xn--bcher-kva.example"
    assert normalize_domain("a" * 63 + ".com") == "a" * 63 + ".com"
    for bad in ("a.*.b", "**.b", "a" * 64 + ".com", "a..b", "1.2.3.4", "a_b.com"):
        with pytest.raises(InvalidName):
            normalize_domain(bad)


def test_path_prefix_rules() -> None:
    """Prefixes are folded to one form; dot segments and special characters are refused."""
    assert normalize_path_prefix("/") == "/"
    assert normalize_path_prefix("///") == "/"
    assert normalize_path_prefix("/a//b/") == "/a/b"
    for bad in ("", "a", "/a/./b", "/..", "/a%2f", "/a b", "/{x}", "/a*", "/a#b"):
        with pytest.raises(InvalidName):
            normalize_path_prefix(bad)
