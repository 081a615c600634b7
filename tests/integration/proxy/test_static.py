"""Static sites (``runtime: "static"``) served by each proxy backend, safely."""

from __future__ import annotations

import os
from pathlib import Path

from agent.proxy import StaticSite
from tests.integration.proxy.conftest import ProxyHarness


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "release" / "public"
    (root / "docs").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "style.css").write_text("body{}")
    (root / "app.js").write_text("1;")
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (root / ".env").write_text("SECRET=1")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    (tmp_path / "release" / "outside.txt").write_text("outside the root")
    os.symlink(tmp_path / "release" / "outside.txt", root / "escape.txt")
    return root


async def test_static_site_serves_files_with_types_and_indexes(proxy: ProxyHarness,
                                                               tmp_path: Path) -> None:
    """index.html for directories, content types by name, the route's prefix stripped."""
    root = _site(tmp_path)
    proxy.locator.add("site", StaticSite(root))
    await proxy.route("static.test", "site")
    await proxy.route("mixed.test", "site", path_prefix="/assets")

    cases = [("static.test", "/", "<h1>home</h1>", "text/html"),
             ("static.test", "/style.css", "body{}", "text/css"),
             ("static.test", "/docs/", "<h1>docs</h1>", "text/html"),
             ("mixed.test", "/assets/app.js", "1;", "javascript"),
             ("mixed.test", "/assets/", "<h1>home</h1>", "text/html")]
    for host, path, text, content_type in cases:
        async with proxy.request("GET", host, path) as resp:
            assert resp.status == 200, (host, path)
            assert await resp.text() == text
            assert content_type in resp.headers["Content-Type"], (path, resp.headers)

    async with proxy.request("GET", "static.test", "/docs", allow_redirects=False) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == "/docs/"
    async with proxy.request("HEAD", "static.test", "/style.css") as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "6"


async def test_static_site_refuses_traversal_hidden_files_and_escaping_links(
        proxy: ProxyHarness, tmp_path: Path) -> None:
    """No way out of the root: '..' (plain or encoded), dotfiles, symlinks that leave it."""
    root = _site(tmp_path)
    proxy.locator.add("site", StaticSite(root))
    await proxy.route("static.test", "site", path_prefix="/site")
    for path in ("/site/../outside.txt", "/site/%2e%2e/outside.txt", "/site/..%2foutside.txt",
                 "/site/.env", "/site/.git/config", "/site/escape.txt", "/site/missing.html",
                 "/site/docs/%00"):
        async with proxy.http.get(proxy.url + path, headers={"Host": "static.test"}) as resp:
            body = await resp.read()
            # 404 for all of them, except that Caddy answers a NUL byte with a 500.
            assert resp.status == 404 or (path.endswith("%00") and resp.status >= 400), path
            assert b"outside the root" not in body and b"SECRET" not in body, path
            assert b'"error"' in body, path
