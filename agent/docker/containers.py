"""One run's container: how it is made and found again. Blocking SDK calls: run them through
``DockerEngine.call``.

- ``create_container``: the container of a ``RunSpec`` (image, ``/bin/sh -c`` command or the
  image's own, env + ``PORT``, labels, the port published on 127.0.0.1, json-file logging,
  restart policy ``no``, init, memory/swap and CPU limits, the stop signal);
- ``start_container``: start it (removed again if it cannot start) and inspect it;
- ``scan_containers``: the running containers of one agent instance, by label; containers of
  services that no longer exist, and containers never started, are removed on the way;
- ``container_port`` and ``exit_status``: the rules for the container port and for reading
  how a container ended.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
from collections.abc import Mapping
from typing import Any

import structlog

from agent.config import DockerConfig
from agent.docker.sdk import docker
from agent.supervisor.runtime import ExitStatus, RunSpec, RuntimeFailure, signal_name

__all__ = [
    "MANAGED_LABEL",
    "container_port",
    "create_container",
    "exit_status",
    "scan_containers",
    "start_container",
]

log = structlog.get_logger("agent.docker")

MANAGED_LABEL = "dployr.managed"


def exit_status(state: Mapping[str, Any]) -> ExitStatus:
    """How a container ended, from ``State`` of its inspect (OOM kill = SIGKILL)."""
    if state.get("OOMKilled"):
        return ExitStatus(signal=int(signal.SIGKILL))
    code = state.get("ExitCode")
    if not isinstance(code, int) or code < 0:
        return ExitStatus()
    return ExitStatus.from_shell(code)


def container_port(spec: RunSpec, image: Mapping[str, Any], listen_port: int) -> int:
    """The deployment's port, else the image's one EXPOSEd TCP port, else the listen port."""
    if spec.port:
        return spec.port
    exposed = (image.get("Config") or {}).get("ExposedPorts") or {}
    tcp = [int(p.split("/")[0]) for p in exposed
           if p.endswith("/tcp") and p.split("/")[0].isdigit()]
    return tcp[0] if len(tcp) == 1 else listen_port


def _explain(exc: docker.errors.APIError) -> str:
    text = str(exc.explanation or exc)
    return text if len(text) <= 400 else text[:400] + "..."


def create_container(client: docker.DockerClient, config: DockerConfig, spec: RunSpec, *,
                     instance: str, container_port: int, listen_port: int) -> str:
    """Create (not start) the run's container; return its id. RuntimeFailure if refused."""
    api = client.api
    limits = spec.limits or {}
    memory = limits.get("memory")
    cpus = limits.get("cpus")
    host_config = api.create_host_config(
        port_bindings={f"{container_port}/tcp": ("127.0.0.1", listen_port)},
        log_config=docker.types.LogConfig(type="json-file",
                             config={"max-size": config.log_max_size,
                                     "max-file": str(config.log_max_file)}),
        restart_policy={"Name": "no"}, init=config.init or None,
        mem_limit=int(memory) if memory else None,
        memswap_limit=int(memory) if memory else None,  # no swap beyond the limit
        nano_cpus=round(float(cpus) * 1e9) if cpus else None)
    env = dict(spec.env)
    env["PORT"] = str(container_port)
    labels = {MANAGED_LABEL: "true", "dployr.instance": instance,
              "dployr.service": spec.service_id, "dployr.service.name": spec.name,
              "dployr.deployment": spec.deployment_id or ""}
    command = ["/bin/sh", "-c", spec.command] if spec.command else None
    try:
        created = api.create_container(
            spec.image, command=command, name=f"dployr-{spec.name}-{secrets.token_hex(3)}",
            labels=labels, environment=env, ports=[container_port], host_config=host_config,
            detach=True, stop_signal=signal_name(spec.stop_signal))
    except docker.errors.APIError as exc:
        raise RuntimeFailure(f"Docker could not create the container: {_explain(exc)}") \
            from None
    return str(created["Id"])


def start_container(client: docker.DockerClient, container_id: str) -> dict[str, Any]:
    """Start the container and return its inspect; removed again if it cannot start."""
    try:
        client.api.start(container_id)
    except docker.errors.APIError as exc:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_container(container_id, force=True, v=True)
        raise RuntimeFailure(f"Docker could not start the container: {_explain(exc)}") \
            from None
    return dict(client.api.inspect_container(container_id))


def scan_containers(client: docker.DockerClient, instance: str,
                    wanted: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """(service id, inspect) of every running container of ``instance`` whose service is in
    ``wanted``; containers of other services of this instance are removed."""
    api = client.api
    filters = {"label": [f"{MANAGED_LABEL}=true", f"dployr.instance={instance}"]}
    found = []
    for item in api.containers(all=True, filters=filters):
        service_id = (item.get("Labels") or {}).get("dployr.service", "")
        # Never started: an agent died between creating and starting it (a recorded run
        # was always started), or its service no longer exists.
        if service_id not in wanted or item.get("State") == "created":
            log.warning("container_orphan_removed", container_id=item["Id"][:12])
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(item["Id"], force=True, v=True)
        elif item.get("State") == "running":
            with contextlib.suppress(docker.errors.NotFound):
                found.append((service_id, dict(api.inspect_container(item["Id"]))))
    return found
