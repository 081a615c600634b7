"""Image deployments on the real Docker engine: HTTP through the published port and a proxy
route, logs, env, crash loops, stop, limits, adoption after an agent restart, delete."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

from agent.keys import PROXY_KEY
from tests.integration.docker.conftest import DockerHarness
from tests.support.agent import eventually
from tests.support.docker import TICKER, docker, inspect


async def _get(url: str, **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as resp:
        return resp.status, await resp.text()


async def _answers(url: str, **kwargs: Any) -> str | None:
    try:
        status, text = await _get(url, timeout=aiohttp.ClientTimeout(total=2), **kwargs)
    except (aiohttp.ClientError, TimeoutError):
        return None
    return text if status == 200 else None


async def _logs_contain(dock: DockerHarness, service: str, text: str, query: str = "") -> bool:
    return text in await dock.logs(service, query)


async def test_image_answers_on_a_loopback_port_and_through_a_proxy_route(
        dock: DockerHarness) -> None:
    """The test image's httpd answers on 127.0.0.1:<listen_port> (published on loopback only,
    from the image's EXPOSEd port) and through a route of the built-in proxy."""
    dep = await dock.deploy_image("web", health_check={"path": "/", "interval": 0.5,
                                                       "port": 8080})
    assert dep["source"] == "image" and dep["runtime"] == "docker"
    assert dep["image_id"].startswith("sha256:")
    sid = dep["service_id"]
    status = await dock.wait_state(sid, "running")
    assert status["runtime"] == "docker" and status["container_id"]
    assert status["health"] == "passing"  # checked at the published port
    port = status["listen_port"]
    text = await eventually(lambda: _answers(f"http://127.0.0.1:{port}/"), timeout=20,
                            message="the container's httpd")
    assert text.strip() == "hello from dployr-test"

    info = inspect(status["container_id"])
    assert info["HostConfig"]["PortBindings"] == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert info["HostConfig"]["LogConfig"] == {"Type": "json-file",
                                               "Config": {"max-file": "3", "max-size": "10m"}}
    labels = info["Config"]["Labels"]
    assert labels["dployr.managed"] == "true" and labels["dployr.service"] == sid
    assert labels["dployr.deployment"] == dep["id"] and labels["dployr.instance"]
    assert "PORT=8080" in info["Config"]["Env"]

    await dock.request("POST", "/v1/proxy/routes", expect=201,
                       json={"domain": "web.test", "service_id": sid})
    host, proxy_port = dock.client.app[PROXY_KEY].address
    text = await eventually(lambda: _answers(f"http://{host}:{proxy_port}/",
                                             headers={"Host": "web.test"}),
                            message="the proxied answer")
    assert text.strip() == "hello from dployr-test"

    listed = await dock.request("GET", "/v1/services", expect=200)
    assert [s["runtime"] for s in listed["data"]] == ["docker"]


async def test_logs_tail_and_follow_like_a_process(dock: DockerHarness) -> None:
    """stdout and stderr of the container reach the service's log: tail with the stream
    filter, and a follower sees new lines as they come."""
    cmd = f"echo to-stderr >&2; {TICKER}"
    sid = (await dock.deploy_image("ticker", run_cmd=cmd, env={"TICK": "0.1"}))["service_id"]
    await dock.wait_state(sid, "running")
    await eventually(lambda: _logs_contain(dock, sid, "line 3"), timeout=20,
                     message="ticks in the log")
    errors = await dock.logs(sid, "?stream=stderr")
    assert "to-stderr" in errors and "line 1" not in errors
    tail = (await dock.logs(sid, "?tail=2&stream=stdout")).splitlines()
    assert len(tail) == 2 and all(" stdout line " in line for line in tail)

    resp = await dock.client.get(f"/v1/services/{sid}/logs?follow=true&tail=1&stream=stdout",
                                 headers=dock.headers)
    assert resp.status == 200
    numbers = []
    async with asyncio.timeout(20):
        while len(numbers) < 4:
            line = (await resp.content.readline()).decode()
            numbers.append(int(line.rsplit(" ", 1)[1]))
    resp.close()
    assert numbers == list(range(numbers[0], numbers[0] + 4))


async def test_env_change_applies_on_restart(dock: DockerHarness) -> None:
    """A variable set through the env API reaches the next container, not the running one;
    the agent's own environment never does."""
    cmd = 'echo "greeting=$GREETING home=$HOME"; exec sleep 1000'
    sid = (await dock.deploy_image("envy", run_cmd=cmd, env={"GREETING": "hi"}))["service_id"]
    await dock.wait_state(sid, "running")
    await eventually(lambda: _logs_contain(dock, sid, "greeting=hi"), message="first greeting")
    await dock.request("POST", f"/v1/services/{sid}/env", expect=200,
                       json={"key": "GREETING", "value": "hello again"})
    first = (await dock.status(sid))["container_id"]
    assert "greeting=hello again" not in await dock.logs(sid)
    await dock.action(sid, "restart", wait=True)
    second = (await dock.status(sid))["container_id"]
    assert second != first
    await eventually(lambda: _logs_contain(dock, sid, "greeting=hello again"),
                     message="the new greeting")
    env = inspect(second)["Config"]["Env"]
    assert "GREETING=hello again" in env
    assert not any(item.startswith("PATH=/usr/local/sbin") for item in env)  # the agent's
    assert docker("ps", "-aq", "--filter", f"id={first}") == ""  # the old run is removed


async def test_crash_loop_ends_crashed_with_exit_code_and_stderr(dock: DockerHarness) -> None:
    """A container that keeps exiting 3 is restarted by the agent with backoff, then
    `crashed` with the exit code and its last stderr lines."""
    restart = {"max_restarts": 2, "initial_delay": 0.1, "max_delay": 0.2, "jitter": 0}
    sid = (await dock.deploy_image("crasher", run_cmd="echo boom >&2; exit 3",
                                   restart=restart))["service_id"]
    status = await dock.wait_state(sid, "crashed", timeout=60)
    assert status["restart_count"] == 2
    assert status["last_exit"]["exit_code"] == 3 and status["last_exit"]["reason"] == "exited"
    assert "boom" in status["last_exit"]["stderr_tail"]
    instance = inspect_labels_of_instance(dock)
    assert docker("ps", "-aq", "--filter", f"label=dployr.instance={instance}") == ""


def inspect_labels_of_instance(dock: DockerHarness) -> str:
    from tests.support.docker import instance_id

    found = instance_id(dock.state_dir)
    assert found is not None
    return found


async def test_stop_sends_the_stop_signal_then_the_container_is_gone(
        dock: DockerHarness) -> None:
    """Stop: the container gets its stop signal (its init forwards it to the app), ends, and
    is removed; the exit is recorded as that signal; start runs a new container."""
    sid = (await dock.deploy_image("stopper", run_cmd="exec sleep 1000",
                                   stop_timeout=30))["service_id"]
    running = await dock.wait_state(sid, "running")
    stopped = await dock.action(sid, "stop", wait=True)
    assert stopped["state"] == "stopped" and stopped["container_id"] is None
    status = await dock.status(sid)
    assert status["last_exit"]["signal"] == "SIGTERM" and status["last_exit"]["reason"] == "stopped"
    assert docker("ps", "-aq", "--filter", f"id={running['container_id']}") == ""
    started = await dock.action(sid, "start", wait=True)
    assert started["state"] == "running" and started["container_id"] != running["container_id"]


async def test_memory_and_cpu_limits_reach_docker(dock: DockerHarness) -> None:
    """`memory` and `cpus` are Docker's limits (no swap beyond the memory limit), and the
    status shows the container's memory and CPU from Docker's stats."""
    dep = await dock.deploy_image("limited", memory="64m", cpus=0.5, run_cmd="exec sleep 1000")
    assert dep["memory"] == 64 * 1024 * 1024 and dep["cpus"] == 0.5
    status = await dock.wait_state(dep["service_id"], "running")
    host = inspect(status["container_id"])["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024 and host["MemorySwap"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    measured = await dock.wait_state(dep["service_id"], "running",
                                     where=lambda s: s["memory_bytes"] is not None)
    assert 0 < measured["memory_bytes"] < 64 * 1024 * 1024 and measured["processes"] >= 1


async def test_agent_restart_adopts_the_container(dock: DockerHarness) -> None:
    """After the agent stops and a new one starts on the same state, the service runs in the
    same container (same id and start time), its logs continue, and it can be stopped."""
    sid = (await dock.deploy_image("steady", run_cmd=TICKER, env={"TICK": "0.1"}))["service_id"]
    before = await dock.wait_state(sid, "running")
    started = inspect(before["container_id"])["State"]["StartedAt"]
    await dock.restart_agent()
    after = await dock.wait_state(sid, "running")
    assert after["container_id"] == before["container_id"] and after["pid"] == before["pid"]
    assert inspect(after["container_id"])["State"]["StartedAt"] == started
    text = await dock.logs(sid)
    last = max(int(n) for n in re.findall(r"line (\d+)", text))
    await eventually(lambda: _logs_contain(dock, sid, f"line {last + 5}\n"), timeout=20,
                     message="new lines after the restart")
    stopped = await dock.action(sid, "stop", wait=True)
    assert stopped["state"] == "stopped"


async def test_delete_removes_the_container(dock: DockerHarness) -> None:
    """Deleting an image deployment stops and removes its container and its release tag."""
    dep = await dock.deploy_image("doomed", run_cmd="exec sleep 1000")
    status = await dock.wait_state(dep["service_id"], "running")
    assert docker("images", "-q", "dployr/doomed") != ""
    await dock.request("DELETE", f"/v1/deployments/{dep['id']}", expect=204)
    assert docker("ps", "-aq", "--filter", f"id={status['container_id']}") == ""
    assert docker("images", "-q", "dployr/doomed") == ""


async def test_a_busy_container_is_measured_within_its_cpu_limit(dock: DockerHarness) -> None:
    """A container spinning on one core with `cpus: 0.5` shows in the service's metrics as a
    Docker service with its container id, using CPU but not more than its limit allows."""
    dep = await dock.deploy_image("spinner", run_cmd="while :; do :; done", cpus=0.5)
    sid = dep["service_id"]
    await dock.wait_state(sid, "running")

    async def measured() -> dict[str, Any] | None:
        body: dict[str, Any] = await dock.request("GET", f"/v1/services/{sid}/metrics",
                                                  expect=200)
        usage = body["usage"]
        return body if usage is not None and usage["cpu_percent"] > 0 else None

    body = await eventually(measured, timeout=30, message="CPU figures of the container")
    assert body["runtime"] == "docker" and body["container_id"]
    usage = body["usage"]
    assert 0 < usage["cpu_percent"] <= 75  # 50% of a core, as Docker enforces it
    assert usage["rss_bytes"] > 0 and usage["processes"] >= 1
    status = await dock.status(sid)
    assert status["cpu_seconds"] is not None and status["memory_bytes"] is not None


async def test_a_container_over_its_memory_limit_is_killed_and_reported(
        dock: DockerHarness) -> None:
    """An app that grows past `memory` is killed by the kernel inside Docker's limit; the
    service reports the run ended by SIGKILL."""
    grow = 'x=$(head -c 64000000 /dev/zero | tr "\\0" a); echo survived; exec sleep 1000'
    dep = await dock.deploy_image("hungry", run_cmd=grow, memory="16m",
                                  restart={"mode": "never"})
    status = await dock.wait_state(dep["service_id"], "crashed", timeout=60)
    assert status["last_exit"]["signal"] == "SIGKILL"
    assert "survived" not in await dock.logs(dep["service_id"])


async def test_on_start_strays_and_orphans_of_this_instance_are_removed(
        dock: DockerHarness) -> None:
    """A restarted agent keeps its recorded container and removes other containers labelled
    for this instance: a second run of the same service, one of a deleted service, one never
    started. Containers of other instances are left alone."""
    sid = (await dock.deploy_image("solo", run_cmd="exec sleep 1000"))["service_id"]
    recorded = (await dock.wait_state(sid, "running"))["container_id"]
    instance = inspect_labels_of_instance(dock)
    from tests.support.docker import BASE_IMAGE

    def labelled(service: str, *args: str) -> list[str]:
        return ["--label", "dployr.managed=true", "--label", f"dployr.instance={instance}",
                "--label", f"dployr.service={service}", *args]

    stray = docker("run", "-d", *labelled(sid), BASE_IMAGE, "sleep", "1000")
    orphan = docker("run", "-d", *labelled("svc_gone"), BASE_IMAGE, "sleep", "1000")
    never = docker("create", *labelled(sid), BASE_IMAGE, "sleep", "1000")
    foreign = docker("run", "-d", "--label", "dployr.managed=true", "--label",
                     "dployr.instance=ins_someone_else", "--label", f"dployr.service={sid}",
                     BASE_IMAGE, "sleep", "1000")
    try:
        await dock.restart_agent()
        after = await dock.wait_state(sid, "running")
        assert after["container_id"] == recorded

        def gone(cid: str) -> bool:
            return docker("ps", "-aq", "--no-trunc", "--filter", f"id={cid}") == ""

        # Done while the agent opened, before it answered.
        assert gone(stray) and gone(orphan) and gone(never)
        assert not gone(foreign) and inspect(foreign)["State"]["Running"]
    finally:
        docker("rm", "-f", foreign, check=False)


async def test_a_container_ignoring_its_stop_signal_is_killed_after_the_grace(
        dock: DockerHarness) -> None:
    """An app that ignores SIGTERM gets SIGKILL once `stop_timeout` has passed."""
    cmd = 'trap "" TERM; while :; do sleep 0.2; done'
    sid = (await dock.deploy_image("stubborn", run_cmd=cmd, stop_timeout=1))["service_id"]
    await dock.wait_state(sid, "running")
    stopped = await dock.action(sid, "stop", wait=True)
    assert stopped["state"] == "stopped"
    assert (await dock.status(sid))["last_exit"]["signal"] == "SIGKILL"
