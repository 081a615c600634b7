"""Typed keys for everything stored on the application or a request. Nothing is global."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from agent.auth import AuthService, Principal
from agent.auth.accounts import AccountService
from agent.clock import Clock
from agent.config import AgentConfig
from agent.delivery import RemoteDeployments
from agent.deployments import DeploymentService
from agent.docker.releases import ImageDeployments
from agent.env import EnvService
from agent.events import EventBus
from agent.instance import InstanceService
from agent.metrics import AgentMetrics, Sampler
from agent.projects import ProjectService
from agent.proxy import ProxyBackend, RouteService, ServiceLocator
from agent.ratelimit import RateLimits
from agent.store import Database
from agent.supervisor.docker import DockerRuntime
from agent.supervisor.manager import Supervisor
from agent.webhooks import WebhookRuntime, WebhookService

if TYPE_CHECKING:  # imported only when the link is enabled (see create_app)
    from agent.upstream import UpstreamLink

__all__ = [
    "ACCOUNTS_KEY",
    "AGENT_METRICS_KEY",
    "AUTH_KEY",
    "BUS_KEY",
    "CLOCK_KEY",
    "CONFIG_KEY",
    "DB_KEY",
    "DEPLOYMENTS_KEY",
    "DOCKER_KEY",
    "ENV_KEY",
    "IMAGES_KEY",
    "INSTANCE_KEY",
    "LOCATOR_KEY",
    "OPENAPI_KEY",
    "PRINCIPAL_KEY",
    "PROJECTS_KEY",
    "PROXY_KEY",
    "RATE_LIMITS_KEY",
    "REMOTE_DEPLOYMENTS_KEY",
    "REQUEST_ID_KEY",
    "ROUTES_KEY",
    "SAMPLER_KEY",
    "STARTED_AT_KEY",
    "SUPERVISOR_KEY",
    "UPSTREAM_KEY",
    "WEBHOOKS_KEY",
    "WEBHOOK_RUNTIME_KEY",
]

CONFIG_KEY = web.AppKey("config", AgentConfig)
CLOCK_KEY = web.AppKey("clock", Clock)
BUS_KEY = web.AppKey("bus", EventBus)
DB_KEY = web.AppKey("db", Database)
AUTH_KEY = web.AppKey("auth", AuthService)
RATE_LIMITS_KEY = web.AppKey("rate_limits", RateLimits)
STARTED_AT_KEY = web.AppKey("started_at", float)

PRINCIPAL_KEY = web.RequestKey("principal", Principal)
REQUEST_ID_KEY = web.RequestKey("request_id", str)
PROJECTS_KEY = web.AppKey("projects", ProjectService)
ACCOUNTS_KEY = web.AppKey("accounts", AccountService)
# The OpenAPI document (JSON bytes), generated on the first call and then kept.
OPENAPI_KEY: web.AppKey[Callable[[], bytes]] = web.AppKey("openapi")
SAMPLER_KEY = web.AppKey("sampler", Sampler)
INSTANCE_KEY = web.AppKey("instance", InstanceService)
AGENT_METRICS_KEY = web.AppKey("agent_metrics", AgentMetrics)

WEBHOOKS_KEY = web.AppKey("webhooks", WebhookService)
WEBHOOK_RUNTIME_KEY = web.AppKey("webhook_runtime", WebhookRuntime)
# Set only when [upstream] url is: the link's code is not even imported otherwise.
UPSTREAM_KEY: web.AppKey[UpstreamLink] = web.AppKey("upstream")

ROUTES_KEY = web.AppKey("routes", RouteService)
# A Protocol cannot be passed as the key's type (mypy: type-abstract), hence the annotation.
PROXY_KEY: web.AppKey[ProxyBackend] = web.AppKey("proxy")
LOCATOR_KEY: web.AppKey[ServiceLocator] = web.AppKey("locator")
SUPERVISOR_KEY = web.AppKey("supervisor", Supervisor)
ENV_KEY = web.AppKey("env", EnvService)
DEPLOYMENTS_KEY = web.AppKey("deployments", DeploymentService)
REMOTE_DEPLOYMENTS_KEY = web.AppKey("remote_deployments", RemoteDeployments)
DOCKER_KEY = web.AppKey("docker", DockerRuntime)
IMAGES_KEY = web.AppKey("images", ImageDeployments)
