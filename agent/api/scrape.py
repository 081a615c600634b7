"""``GET /metrics``: the Prometheus exposition, for scrapers.

Declared public in the route table (Prometheus cannot log in) and guarded here instead:
a request passes with the ``[metrics] token`` as a bearer token, with a valid API token or
login of any role, or from an address in ``[metrics] allow`` (loopback by default). A
credential that is presented must be valid: a wrong one is 401 even from an allowed
address. Not counted against the rate limit.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from agent.api.middleware import client_address
from agent.api.routing import EndpointTable
from agent.errors import Forbidden, Unauthorized
from agent.keys import AGENT_METRICS_KEY, CONFIG_KEY, PRINCIPAL_KEY

__all__ = ["routes"]

routes = EndpointTable("metrics")


def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _allowed(address: str, cidrs: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _networks(cidrs))


def check_scrape_access(request: web.Request) -> None:
    """Raise Unauthorized or Forbidden unless the caller may read ``/metrics``."""
    config = request.app[CONFIG_KEY]
    settings = config.metrics
    if request.get(PRINCIPAL_KEY) is not None:
        return  # a valid API token or login
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, presented = header.partition(" ")
        if (settings.token and scheme.lower() == "bearer"
                and hmac.compare_digest(presented.strip().encode(), settings.token.encode())):
            return
        raise Unauthorized("Invalid token for /metrics")
    address = client_address(request, _networks(config.server.trusted_proxies))
    if _allowed(address, settings.allow):
        return
    if settings.token:
        raise Unauthorized("/metrics needs the metrics token as a bearer token")
    raise Forbidden("Your address may not read /metrics",
                    details={"hint": "add your network to [metrics] allow or set [metrics] token"})


@routes.get("/metrics", summary="Prometheus metrics of the host, the services and the agent",
            access="public", rate_limited=False, content_types=("text/plain",),
            errors=(401, 403),
            description="Prometheus text format (OpenMetrics when the Accept header asks for "
                        "it). Allowed with the `[metrics] token` as a bearer token, an API "
                        "token or login, or from an address in `[metrics] allow`.")
async def get_prometheus_metrics(request: web.Request) -> web.Response:
    check_scrape_access(request)
    body, content_type = request.app[AGENT_METRICS_KEY].render(
        request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
