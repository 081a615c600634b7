"""Images and limits: what a deployment may name, and how an image is found on this host.

- ``validate_reference``: Docker's reference grammar (``[registry[:port]/]name[:tag][@digest]``,
  or an image id ``sha256:<64 hex>``); anything else is a 400 naming ``image``.
- ``parse_memory`` / ``check_cpus``: the ``memory`` ("256m", "1.5g", "64MiB", bytes) and
  ``cpus`` (0.5) limits of a deployment, with Docker's own bounds (at least 6 MiB; between
  0.01 and this host's CPU count), else a 400 naming the field.
- ``resolve_image``: the image's inspect, pulled first when it is not on this host (bounded
  by ``[docker] pull_timeout``); ``ImageMissing`` says why it cannot be had.
- ``release_tag``: the tag ``dployr/<name>:<release id>`` that keeps a release's image on the
  host until the release is pruned (removing the tag deletes the image only when no other tag,
  e.g. the user's own, still names it).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from agent.docker.engine import DockerEngine
from agent.docker.sdk import docker
from agent.errors import InvalidRequest

__all__ = [
    "MIN_MEMORY",
    "ImageMissing",
    "check_cpus",
    "parse_memory",
    "release_tag",
    "resolve_image",
    "validate_reference",
]

MIN_MEMORY = 6 * 1024 * 1024          # Docker refuses less
MAX_MEMORY = 1 << 40
RELEASE_REPOSITORY = "dployr/{name}"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?", re.ASCII)
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b)?", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ImageMissing(Exception):
    """The image is not on this host and could not be pulled; ``str()`` says why."""


def validate_reference(value: str, field: str = "image") -> str:
    """``value`` when it is an image reference or id; InvalidRequest naming ``field`` else."""
    if _IMAGE_ID.fullmatch(value):
        return value
    match = _REFERENCE.fullmatch(value)
    if match is None:
        raise InvalidRequest("Invalid image reference", field=field,
                             issue="Expected name[:tag][@digest], e.g. nginx:1.25 or "
                                   "registry.example.com:5000/team/app:2.1 (lowercase name)")
    if len(match["name"]) > 255:
        raise InvalidRequest("Invalid image reference", field=field,
                             issue="The name is longer than 255 characters")
    return value


def parse_memory(value: str | int, field: str = "memory") -> int:
    """Bytes of a memory limit: ``"256m"``, ``"1.5g"``, ``"512MiB"``, or a number of bytes."""
    if isinstance(value, int):
        size = value
    else:
        match = _MEMORY.fullmatch(value.strip())
        if match is None:
            raise InvalidRequest("Invalid memory limit", field=field,
                                 issue="Expected a size such as 256m, 1.5g or 536870912")
        size = int(float(match[1]) * _UNITS[match[2].lower()])
    if size < MIN_MEMORY:
        raise InvalidRequest("Memory limit too small", field=field,
                             issue="At least 6m (Docker's minimum)")
    if size > MAX_MEMORY:
        raise InvalidRequest("Memory limit too large", field=field, issue="At most 1t")
    return size


def check_cpus(value: float, field: str = "cpus") -> float:
    """A CPU limit between 0.01 and the number of CPUs of this host (Docker's bounds)."""
    available = os.cpu_count() or 1
    if not 0.01 <= value <= available:
        raise InvalidRequest("Invalid CPU limit", field=field,
                             issue=f"Between 0.01 and {available} (the CPUs of this instance)")
    return round(value, 2)


def release_tag(name: str, release_id: str) -> tuple[str, str]:
    """(repository, tag) of a release's image: ``dployr/<name>``, ``<release id>``."""
    return RELEASE_REPOSITORY.format(name=name), release_id


async def resolve_image(engine: DockerEngine, ref: str, *, limit: float) -> dict[str, Any]:
    """The inspect of ``ref``, pulled first when absent. Raises ImageMissing, or
    RuntimeUnavailable when the engine does not answer."""

    def inspect_or_pull(client: docker.DockerClient) -> dict[str, Any]:
        try:
            return dict(client.api.inspect_image(ref))  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            if _IMAGE_ID.fullmatch(ref):
                raise ImageMissing(f"no image {ref} on this host") from None
        repository, tag = docker.utils.parse_repository_tag(ref)
        try:
            client.api.pull(repository, tag=tag or "latest")
            return dict(client.api.inspect_image(ref))  # type: ignore[no-untyped-call]
        except docker.errors.APIError as exc:
            reason = str(exc.explanation or exc)[:300]
            raise ImageMissing(f"{ref} is not on this host and could not be pulled: "
                               f"{reason}") from None

    try:
        return await asyncio.wait_for(engine.call(inspect_or_pull), limit)
    except TimeoutError:
        raise ImageMissing(f"pulling {ref} took longer than {limit:g}s") from None
