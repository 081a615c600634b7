"""Dockerfile builds of deployments from git (``runtime: "docker"``), as the pipeline sees them.

A remote deployment with ``runtime: "docker"`` is cloned like any other; its build stage then
builds the checkout's ``Dockerfile`` (at the repository root) into an image tagged
``dployr/<service>:<commit sha>`` through an ``ImageBuilder`` (``agent.docker.release_images``
implements it with the Docker engine), instead of resolving a toolchain and running
``build_cmd``. The release records the image id (``Release.extra["image_id"]``, and the tag
as ``extra["image_tag"]``); starting it, and rolling back to it, runs a container of that
image id. No toolchain is provisioned: the release's toolchain reads ``DOCKER_TOOLCHAIN``
(``{"runtime": "docker", "version": "", "source": "dockerfile", "executable": null}``).

This module knows nothing of Docker itself: it is the seam between the pipeline and the
engine, so the pipeline stays testable with fakes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from agent.deploy.logfile import LineSink
from agent.deploy.releases import Release
from agent.deploy.toolchains import Toolchain
from agent.records import record

__all__ = [
    "DOCKER_RUNTIME",
    "DOCKER_TOOLCHAIN",
    "BuiltImage",
    "ImageBuilder",
    "image_of",
    "image_tag",
    "step_exit_code",
]

DOCKER_RUNTIME = "docker"
DOCKER_TOOLCHAIN = Toolchain(DOCKER_RUNTIME, "", None, source="dockerfile")

_STEP_CODE = re.compile(r"returned a non-zero code: (\d+)")


@record
class BuiltImage:
    """An image built for a release: its id and the tag that keeps it on the host."""

    image_id: str
    tag: str


def image_tag(service: str, commit: str) -> str:
    """``dployr/<service>:<commit sha>``: the tag of a release's image."""
    return f"dployr/{service}:{commit}"


def image_of(release: Release) -> str | None:
    """The image id a release runs; None for a release that is not a Docker build."""
    value = release.extra.get("image_id")
    return str(value) if value else None


def step_exit_code(reason: str) -> int | None:
    """The exit code of a failed ``RUN`` step, read from the engine's message."""
    match = _STEP_CODE.search(reason)
    return int(match[1]) if match else None


class ImageBuilder(Protocol):
    """Builds release images and forgets them again (implemented over the Docker engine)."""

    async def ensure(self) -> None:
        """Raise ``RuntimeUnavailable`` (503) unless the engine answers now."""
        ...

    async def build(self, context: Path, *, service: str, commit: str, release_id: str,
                    deployment_id: str | None, sink: LineSink,
                    limit: float | None) -> BuiltImage:
        """Build ``context/Dockerfile`` as ``image_tag(service, commit)`` (at most ``limit``
        seconds, default ``[deploy] build_timeout``), every output line to ``sink``.
        Raises ``BuildFailed`` with a reason a user can act on."""
        ...

    async def forget(self, removed: Sequence[Release], kept: Sequence[Release]) -> None:
        """Releases were pruned: remove their images' tags (never one a kept release still
        uses). Best effort: never raises."""
        ...

    async def remove_all(self, service: str, deployment_id: str) -> None:
        """The deployment is deleted: remove every ``dployr/<service>:*`` tag and the images
        it built. Best effort: never raises."""
        ...
