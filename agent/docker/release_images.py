"""``ReleaseImages``: the Docker side of deployments from git with ``runtime: "docker"``.

Implements ``agent.deploy.images.ImageBuilder`` over the engine:

- ``build``: ``build_image`` on the checkout, tagged ``dployr/<service>:<commit sha>``, with
  the labels ``dployr.managed``, ``dployr.instance``, ``dployr.service`` (the service id),
  ``dployr.service.name``, ``dployr.deployment``, ``dployr.release`` and ``dployr.commit``,
  bounded by ``[deploy] build_timeout``. An engine that does not answer fails the build.
- ``forget``: pruned releases lose their image's ``dployr/...`` tag, unless a kept release
  uses the same tag (the same commit built again); an image left with no tag at all by such a
  rebuild (its tag moved to the newer build) is removed by id. Removing a tag deletes the image
  only when nothing else names it and no container uses it (the engine's rule).
- ``remove_all``: a deleted deployment loses every ``dployr/<service>:*`` tag, and the images
  labelled with its deployment id that are left with no tag.

Only ``dployr/...`` tags are ever removed: a tag a user put on a built image keeps it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from agent.deploy.errors import BuildFailed
from agent.deploy.images import BuiltImage, image_of, image_tag
from agent.deploy.logfile import LineSink
from agent.deploy.releases import Release
from agent.docker.build import build_image
from agent.docker.engine import DockerEngine
from agent.docker.sdk import docker
from agent.errors import RuntimeUnavailable

__all__ = ["ReleaseImages"]

log = structlog.get_logger("agent.docker.release_images")


class ReleaseImages:
    """Builds and forgets the images of Docker deployments from git. Implements
    ``ImageBuilder``. ``service_id(name)`` looks a service's id up (for the labels)."""

    def __init__(self, engine: DockerEngine, *, timeout: float,
                 instance_id: Callable[[], Awaitable[str]],
                 service_id: Callable[[str], str | None]) -> None:
        self._engine = engine
        self._timeout = timeout
        self._instance_id = instance_id
        self._service_id = service_id

    async def ensure(self) -> None:
        await self._engine.ensure()

    async def build(self, context: Path, *, service: str, commit: str, release_id: str,
                    deployment_id: str | None, sink: LineSink,
                    limit: float | None) -> BuiltImage:
        tag = image_tag(service, commit)
        try:
            labels = {"dployr.instance": await self._instance_id(),
                      "dployr.service": self._service_id(service) or "",
                      "dployr.service.name": service, "dployr.deployment": deployment_id or "",
                      "dployr.release": release_id, "dployr.commit": commit}
            image_id = await build_image(self._engine, context, tag, sink,
                                         limit=limit or self._timeout, labels=labels)
        except RuntimeUnavailable as exc:
            raise BuildFailed(f"the Docker engine does not answer ({exc.message})") from None
        log.info("release_image_built", service=service, release_id=release_id,
                 image_id=image_id[:19])
        return BuiltImage(image_id, tag)

    async def forget(self, removed: Sequence[Release], kept: Sequence[Release]) -> None:
        kept_ids = {image_of(r) for r in kept}
        kept_tags = {r.extra.get("image_tag") for r in kept}
        for release in removed:
            image_id = image_of(release)
            if image_id is None or image_id in kept_ids:
                continue
            tag = release.extra.get("image_tag")
            await self._drop(image_id, str(tag) if tag and tag not in kept_tags else None)

    async def _drop(self, image_id: str, tag: str | None) -> None:
        """Remove ``tag`` from the image, or the image itself when it has no tag left."""

        def drop(client: docker.DockerClient) -> None:
            api = client.api
            try:
                tags = api.inspect_image(image_id).get("RepoTags") or []  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound:
                return
            if tag is not None and tag in tags:
                api.remove_image(tag)
            elif not tags:
                api.remove_image(image_id)

        try:
            await self._engine.call(drop)
        except (RuntimeUnavailable, docker.errors.APIError) as exc:
            log.info("release_image_kept", image_id=image_id[:19], error_type=type(exc).__name__)
        else:
            log.info("release_image_forgotten", image_id=image_id[:19])

    async def remove_all(self, service: str, deployment_id: str) -> None:
        repository = image_tag(service, "")

        def remove(client: docker.DockerClient) -> int:
            api = client.api
            removed = 0
            for image in api.images(filters={"label": f"dployr.deployment={deployment_id}"}):
                mine = [t for t in image.get("RepoTags") or [] if t.startswith(repository)]
                others = [t for t in image.get("RepoTags") or []
                          if t not in mine and t != "<none>:<none>"]
                for ref in mine:  # a failure (e.g. a container uses it) keeps that image
                    with contextlib.suppress(docker.errors.APIError):
                        api.remove_image(ref)
                if not others:
                    with contextlib.suppress(docker.errors.APIError):
                        api.remove_image(image["Id"])
                removed += 1
            return removed

        try:
            count = await self._engine.call(remove)
        except (RuntimeUnavailable, docker.errors.APIError) as exc:
            log.warning("release_images_kept", service=service, error_type=type(exc).__name__)
        else:
            log.info("release_images_removed", service=service, images=count)
