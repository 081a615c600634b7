"""Header rules of the built-in proxy (pure logic)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from agent.proxy.headers import (
    TrustedNetworks,
    forwarded_items,
    forwarded_lines,
    forwarded_request_headers,
    request_lines,
    response_headers,
    response_items,
    strip_hop_by_hop,
)
from agent.proxy.http1 import request_head


def _incoming(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_forwarded_headers_are_believed_only_from_trusted_proxies() -> None:
    """X-Forwarded-* from a trusted peer are kept (For appended); from others replaced."""
    headers = _incoming(("Host", "a.test"), ("X-Forwarded-For", "203.0.113.9"),
                        ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "a.example"))
    trusted = TrustedNetworks(["10.0.0.0/8"])
    out = forwarded_request_headers(headers, peer="10.1.2.3", host="a.test", scheme="http",
                                    trusted=trusted)
    assert out["X-Forwarded-For"] == "203.0.113.9, 10.1.2.3"
    assert (out["X-Forwarded-Proto"], out["X-Forwarded-Host"]) == ("https", "a.example")
    out = forwarded_request_headers(headers, peer="198.51.100.7", host="a.test", scheme="http",
                                    trusted=trusted)
    assert out["X-Forwarded-For"] == "198.51.100.7"
    assert (out["X-Forwarded-Proto"], out["X-Forwarded-Host"]) == ("http", "a.test")


def test_hop_by_hop_and_connection_listed_headers_are_dropped_both_ways() -> None:
    """Connection, Keep-Alive, TE, Upgrade, Proxy-* and what Connection names go; repeats stay."""
    request = _incoming(("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("TE", "trailers"),
                        ("Proxy-Authorization", "x"), ("Expect", "100-continue"),
                        ("Cookie", "a=1"), ("Cookie", "b=2"), ("Host", "h"))
    out = forwarded_request_headers(request, peer="127.0.0.1", host="h", scheme="http",
                                    trusted=TrustedNetworks([]))
    assert sorted(k for k, _ in out.items()) == ["Cookie", "Cookie", "Host", "X-Forwarded-For",
                                                "X-Forwarded-Host", "X-Forwarded-Proto"]
    response = [("Connection", "close, X-Internal"), ("X-Internal", "1"),
                ("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                ("Proxy-Authenticate", "Basic")]
    assert list(response_headers(response).items()) == [("Set-Cookie", "a=1"),
                                                        ("Set-Cookie", "b=2")]


_REQUEST_CASES = [
    [("Host", "a.test")],
    [("Host", "a.test"), ("User-Agent", "x"), ("Connection", "keep-alive"), ("Keep-Alive", "5"),
     ("TE", "trailers"), ("Proxy-Authorization", "Basic eA=="), ("X-Forwarded-For", "6.6.6.6"),
     ("x-forwarded-proto", "https"), ("X-Forwarded-Host", "evil"), ("Expect", "100-continue"),
     ("Cookie", "a=1"), ("Cookie", "b=2"), ("Upgrade", "h2c"), ("Trailer", "x"),
     ("Transfer-Encoding", "chunked"), ("X-TE", "kept"), ("Proxy-Connection", "close")],
    [("HOST", "a.test:8080"), ("CONNECTION", "Upgrade, TE"), ("X-Forwarded-Foo", "kept")],
]


def test_raw_request_lines_apply_the_rules_of_forwarded_items() -> None:
    """The fast path's raw header lines come out as forwarded_items would write them."""
    for items in _REQUEST_CASES:
        raw = "".join(f"\r\n{name}: {value}" for name, value in items).encode()
        host = next(value for name, value in items if name.lower() == "host")
        fast = (b"GET / HTTP/1.1" + request_lines(raw)
                + forwarded_lines("198.51.100.7", host, "http") + b"\r\n\r\n")
        slow = request_head("GET", "/", forwarded_items(
            items, peer="198.51.100.7", host=host, scheme="http",
            trusted=TrustedNetworks(["10.0.0.0/8"])), False)
        assert fast == slow, items


def test_stripping_hop_by_hop_lines_applies_the_rules_of_response_items() -> None:
    """The fast path's raw response lines keep exactly what response_items keeps."""
    cases = [[("Server", "x"), ("Connection", "keep-alive")],
             [("Connection", "close, X-Internal"), ("X-Internal", "1"), ("Keep-Alive", "t=5"),
              ("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
              ("Proxy-Authenticate", "Basic"), ("TE", "x"), ("X-TE", "kept"),
              ("Upgrade", "h2c"), ("trailer", "x"), ("x-internal", "2")]]
    for items in cases:
        raw = "".join(f"\r\n{name}: {value}" for name, value in items).encode()
        listed = frozenset(t.strip().lower().encode() for name, value in items
                           if name.lower() == "connection" for t in value.split(","))
        kept = "".join(f"\r\n{name}: {value}" for name, value in response_items(items)).encode()
        assert strip_hop_by_hop(raw, listed) == kept, items
