"""Header rules of the built-in proxy (pure logic)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from agent.proxy.headers import TrustedNetworks, forwarded_request_headers, response_headers


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
