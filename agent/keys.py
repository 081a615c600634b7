"""Typed keys for everything stored on the application or a request. Nothing is global."""

from __future__ import annotations

from aiohttp import web

from agent.auth import AuthService, Principal
from agent.auth.accounts import AccountService
from agent.clock import Clock
from agent.config import AgentConfig
from agent.deployments import DeploymentService
from agent.docker.releases import ImageDeployments
from agent.env import EnvService
from agent.events import EventBus
from agent.instance import InstanceService
from agent.metrics import AgentMetrics, Sampler
from agent.projects import ProjectService
from agent.proxy import ProxyBackend, RouteService, ServiceLocator
from agent.ratelimit import Decision, RateLimits
from agent.store import Database
from agent.supervisor.docker import DockerRuntime
from agent.supervisor.manager import Supervisor
from agent.upstream import UpstreamLink
from agent.webhooks import WebhookRuntime, WebhookService

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
    "RATE_DECISION_KEY",
    "RATE_LIMITS_KEY",
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
RATE_DECISION_KEY = web.RequestKey("rate_decision", Decision)
PROJECTS_KEY = web.AppKey("projects", ProjectService)
ACCOUNTS_KEY = web.AppKey("accounts", AccountService)
OPENAPI_KEY = web.AppKey("openapi", bytes)
SAMPLER_KEY = web.AppKey("sampler", Sampler)
INSTANCE_KEY = web.AppKey("instance", InstanceService)
AGENT_METRICS_KEY = web.AppKey("agent_metrics", AgentMetrics)

WEBHOOKS_KEY = web.AppKey("webhooks", WebhookService)
WEBHOOK_RUNTIME_KEY = web.AppKey("webhook_runtime", WebhookRuntime)
UPSTREAM_KEY = web.AppKey("upstream", UpstreamLink)

ROUTES_KEY = web.AppKey("routes", RouteService)
# A Protocol cannot be passed as the key's type (mypy: type-abstract), hence the annotation.
PROXY_KEY: web.AppKey[ProxyBackend] = web.AppKey("proxy")
LOCATOR_KEY: web.AppKey[ServiceLocator] = web.AppKey("locator")
SUPERVISOR_KEY = web.AppKey("supervisor", Supervisor)
ENV_KEY = web.AppKey("env", EnvService)
DEPLOYMENTS_KEY = web.AppKey("deployments", DeploymentService)
DOCKER_KEY = web.AppKey("docker", DockerRuntime)
IMAGES_KEY = web.AppKey("images", ImageDeployments)
