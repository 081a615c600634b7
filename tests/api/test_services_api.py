"""The services endpoints' shapes, roles and errors, and their place in the OpenAPI document."""

from __future__ import annotations

from tests.conftest import Client, bearer, login
from tests.support.services import Harness


async def test_list_get_and_status_shapes(svc: Harness) -> None:
    """A service is listed, fetched by id or name, and its status has every documented field."""
    dep = await svc.deploy("shape", "exec sleep 1000", port=8080)
    sid = dep["service_id"]
    status = await svc.wait_state(sid, "running")
    listing = await svc.request("GET", "/v1/services", expect=200)
    assert [s["id"] for s in listing["data"]] == [sid] and listing["next_cursor"] is None
    by_name = await svc.request("GET", "/v1/services/shape", expect=200)
    assert by_name["id"] == sid and by_name["deployment_id"] == dep["id"]
    assert by_name["port"] == 8080 and by_name["listen_port"] not in (None, 8080)
    for key in ("state", "desired_state", "pid", "started_at", "uptime_seconds", "restart_count",
                "port", "listen_port", "health", "health_detail", "cpu_percent", "cpu_seconds",
                "memory_bytes", "processes", "last_exit", "runtime"):
        assert key in status, key
    assert status["runtime"] == "process" and status["uptime_seconds"] >= 0


async def test_pages_of_services(svc: Harness) -> None:
    """limit and cursor page through services in creation order."""
    ids = [(await svc.deploy(f"s{i}", "exec sleep 1000"))["service_id"] for i in range(3)]
    page = await svc.request("GET", "/v1/services?limit=2", expect=200)
    assert [s["id"] for s in page["data"]] == ids[:2] and page["next_cursor"] == ids[1]
    rest = await svc.request("GET", f"/v1/services?limit=2&cursor={page['next_cursor']}")
    assert [s["id"] for s in rest["data"]] == ids[2:] and rest["next_cursor"] is None


async def test_unknown_services_are_404_in_the_envelope(svc: Harness) -> None:
    """Every service endpoint answers 404 for an unknown id."""
    for method, path in (("GET", "/v1/services/nope"), ("GET", "/v1/services/nope/status"),
                         ("POST", "/v1/services/nope/start"), ("POST", "/v1/services/nope/stop"),
                         ("POST", "/v1/services/nope/restart")):
        body = await svc.request(method, path, expect=404)
        assert body["error"]["code"] == "not_found"


async def test_viewers_read_developers_act(client: Client,
                                          role_headers: dict[str, dict[str, str]]) -> None:
    """A viewer may list but not start; no token is 401."""
    resp = await client.get("/v1/services", headers=role_headers["viewer"])
    assert resp.status == 200
    resp = await client.post("/v1/services/x/start", headers=role_headers["viewer"])
    assert resp.status == 403
    resp = await client.post("/v1/services/x/start", headers=role_headers["developer"])
    assert resp.status == 404
    resp = await client.get("/v1/services")
    assert resp.status == 401


async def test_bad_query_values_are_400(svc: Harness) -> None:
    """wait, timeout and tail are validated."""
    sid = (await svc.deploy("q", "exec sleep 1000"))["service_id"]
    for path in (f"/v1/services/{sid}/start?wait=maybe", f"/v1/services/{sid}/stop?timeout=-1"):
        body = await svc.request("POST", path, expect=400)
        assert body["error"]["code"] == "invalid_request"
    body = await svc.request("GET", f"/v1/services/{sid}/logs?tail=-5", expect=400)
    assert body["error"]["details"]["field"] == "tail"


async def test_openapi_lists_the_services_endpoints(client: Client) -> None:
    """Every endpoint of this area is described, with its roles."""
    headers = bearer((await login(client))["access_token"])
    doc = await (await client.get("/v1/openapi.json", headers=headers)).json()
    paths = doc["paths"]
    for path, method in (("/v1/services", "get"), ("/v1/services/{id}/status", "get"),
                         ("/v1/services/{id}/start", "post"), ("/v1/services/{id}/logs", "get"),
                         ("/v1/services/{id}/env", "post"), ("/v1/services/{id}/env/{key}", "delete"),
                         ("/v1/deployments", "post"), ("/v1/deployments/{id}", "delete")):
        assert method in paths[path], (path, method)
    logs = paths["/v1/services/{id}/logs"]["get"]["responses"]["200"]["content"]
    assert set(logs) == {"text/plain", "application/x-ndjson", "text/event-stream"}


async def test_bodies_are_what_the_models_would_write(svc: Harness) -> None:
    """The service bodies, serialized from the supervisor's records directly, are valid for
    their models and byte for byte what the models write: a running service with a health
    check, a stopped one with its last exit, the list, and a command's answer."""
    from pydantic import BaseModel

    from agent.api.services import Service, ServicePage, ServiceStatusBody
    from tests.support.services import PYTHON, SERVER_APP

    check = {"type": "http", "path": "/", "interval": 0.1, "timeout": 1, "threshold": 1}
    checked = (await svc.deploy("checked", f"exec {PYTHON} server.py",
                                files={"server.py": SERVER_APP}, health_check=check))["service_id"]
    await svc.wait_state(checked, "running")
    stopped = (await svc.deploy("stopped", "echo 'bye \"now\"' >&2; exec sleep 1000"))["service_id"]
    await svc.wait_state(stopped, "running")
    await svc.action(stopped, "stop", wait=True)

    async def same_as_model(method: str, path: str, model: type[BaseModel]) -> dict[str, object]:
        resp = await svc.client.request(method, path, headers=svc.headers)
        assert resp.status == 200 and resp.content_type == "application/json"
        body = await resp.read()
        assert model.model_validate_json(body).model_dump_json().encode() == body
        parsed: dict[str, object] = await resp.json()
        return parsed

    running = await same_as_model("GET", f"/v1/services/{checked}/status", ServiceStatusBody)
    detail = running["health_detail"]
    assert isinstance(detail, dict) and detail["last_checked_at"] is not None
    gone = await same_as_model("GET", f"/v1/services/{stopped}/status", ServiceStatusBody)
    last_exit = gone["last_exit"]
    assert isinstance(last_exit, dict) and last_exit["reason"] == "stopped"
    assert last_exit["signal"] == "SIGTERM" and last_exit["stderr_tail"] == ['bye "now"']
    await same_as_model("GET", f"/v1/services/{checked}", Service)
    await same_as_model("GET", "/v1/services", ServicePage)
    await same_as_model("GET", "/v1/services?limit=1", ServicePage)
    await same_as_model("POST", f"/v1/services/{stopped}/start?wait=true", ServiceStatusBody)
