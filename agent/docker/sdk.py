"""The Docker SDK and ``requests``, imported on first use.

Together they cost about 7 MB of resident memory and 40 ms of start-up, which an agent that
runs only processes should not pay. Modules of the Docker runtime take ``docker`` and
``requests`` from here: for the type checker they are the real modules; at run time they are
stand-ins that import the real module the first time an attribute is read (an engine call, an
``except docker.errors.X`` that is reached), which happens only once Docker is in use.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["docker", "requests"]


class _OnFirstUse:
    """A module imported when one of its attributes is first read."""

    __slots__ = ("_module", "_name", "_submodules")

    def __init__(self, name: str, submodules: tuple[str, ...] = ()) -> None:
        self._name = name
        self._submodules = submodules  # read as attributes of the package: imported with it
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            module = importlib.import_module(self._name)
            for sub in self._submodules:
                importlib.import_module(f"{self._name}.{sub}")
            self._module = module
        return getattr(self._module, attribute)


_DOCKER_SUBMODULES = ("errors", "transport", "types", "types.daemon", "utils")

if TYPE_CHECKING:
    import docker
    import docker.errors
    import docker.transport
    import docker.types
    import docker.types.daemon
    import docker.utils
    import requests
else:
    docker = _OnFirstUse("docker", _DOCKER_SUBMODULES)
    requests = _OnFirstUse("requests")
