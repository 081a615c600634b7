"""Static sites served by the built-in proxy (``runtime: "static"`` deployments).

The route's path prefix is stripped (a site routed at ``/docs`` has its ``index.html`` at the
root of its directory), as the Caddy backend does with ``strip_path_prefix``. Requests are
resolved safely: no ``..`` segment, no hidden file or directory (``.git``, ``.env``), no
symlink leading out of the root. A directory gives its ``index.html``; a directory asked for
without its trailing slash is redirected to it (308, as Caddy's file_server does), so
relative links work. Content types come from the file name; ranges, conditional requests and
HEAD are handled by aiohttp's ``FileResponse``. The file system is touched in a thread.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Literal

from aiohttp import web

__all__ = ["escaping_links", "locate", "serve_static"]

Found = tuple[Literal["file"], Path] | tuple[Literal["redirect", "missing"], None]


def locate(root: Path, relative: str) -> Found:
    """Find the file for a request path relative to the site root (blocking; run in a thread)."""
    parts = [p for p in relative.split("/") if p]
    if any(p in (".", "..") or p.startswith(".") or "\x00" in p or "\\" in p for p in parts):
        return ("missing", None)
    try:
        base = root.resolve(strict=True)
        candidate = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, loop of symlinks, permission
        return ("missing", None)
    if not candidate.is_relative_to(base):
        return ("missing", None)
    if candidate.is_dir():
        if parts and not relative.endswith("/"):
            return ("redirect", None)
        candidate = candidate / "index.html"
    if not candidate.is_file():
        return ("missing", None)
    return ("file", candidate)


async def serve_static(request: web.BaseRequest, root: Path, path_prefix: str,
                       ) -> web.StreamResponse | None:
    """The response for a static file, a redirect to a directory's slash, or None when the
    path names nothing (the caller answers 404). Only GET and HEAD reach this."""
    relative = request.path[len(path_prefix):] if path_prefix != "/" else request.path
    kind, path = await asyncio.to_thread(locate, root, relative)
    if kind == "redirect":
        location = request.rel_url.raw_path + "/"
        if request.rel_url.raw_query_string:
            location += "?" + request.rel_url.raw_query_string
        return web.Response(status=308, headers={"Location": location})
    if kind == "missing" or path is None:
        return None
    return web.FileResponse(path)


def escaping_links(root: Path, *, limit: int = 200_000) -> tuple[str, ...]:
    """The symlinks under ``root`` (as spelled, joined to ``root``) that lead out of it.

    For the Caddy backend, whose file_server follows symlinks anywhere: it is told to hide
    these. Hidden directories are not entered (they are hidden anyway); at most ``limit``
    entries are looked at. Blocking: run in a thread.
    """
    try:
        base = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return ()
    found: list[str] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in (*dirnames, *filenames):
            seen += 1
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):
                continue  # dangling or looping: nothing is served through it
            if not target.is_relative_to(base):
                found.append(str(path))
        if seen > limit:
            break
    return tuple(sorted(found))
