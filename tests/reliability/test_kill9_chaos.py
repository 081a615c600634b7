"""kill -9 the agent at random moments for a minute while it deploys, restarts apps, changes
env vars and delivers webhooks; then check what users were promised.

- every acknowledged write is there: each 2xx response's effect is visible afterwards
  (projects, deployments, env vars); writes whose answer was lost may or may not be;
- no app was restarted or duplicated: the services nobody asked to restart keep their pid and
  process start time through every kill, and every service has exactly one process tree;
- no event was lost: every event committed to the outbox after the webhook was created
  reached the receiver, verified with ``standardwebhooks``, at least once (duplicates are
  allowed after a crash mid-delivery, and counted);
- no redeploy was lost: each acknowledged ``PUT`` of a deployment from git (a new commit each
  time) left a deploy run that ended (succeeded, superseded by a newer one, or failed with the
  reason ``interrupted`` by the agent's restart; never stuck, never another failure), the
  deployment serves the release it says it runs, and it deploys normally afterwards.

``DPLOYR_CHAOS_SECONDS`` sets how long the kills go on (default 60, the issue's minute). The
Docker runtime has its own kill -9 tests (tests/integration/docker/).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.supervisor import procfs
from tests.reliability.figures import record
from tests.support.agent import LiveAgent, wait_until
from tests.support.git import GitDaemon, GitRepo
from tests.support.gitdeploy import py_files, remote_body
from tests.support.services import kill_apps, wrappers_of
from tests.support.webhooks import Receiver, ThreadedServer

CHAOS_SECONDS = float(os.environ.get("DPLOYR_CHAOS_SECONDS", "60"))
CONTROL_APPS = 4        # never touched by the driver: must never restart
WORKING_APPS = 3        # restarted and given env vars by the driver
MAX_DEPLOYS = 12
REDEPLOY_EVERY = 1.5    # seconds at least between two redeploys from git
ENDED_RUNS = {"succeeded", "failed", "superseded"}
SETTLED = {"running", "stopped", "crashed", "failed"}


@dataclass
class Ledger:
    """What the driver asked for, split by whether the agent acknowledged it."""

    projects: list[str] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)
    env: list[tuple[str, str, str]] = field(default_factory=list)  # (service, key, value)
    redeploys: list[str] = field(default_factory=list)  # commits of acknowledged PUTs
    commits: dict[str, str] = field(default_factory=dict)  # commit -> the VERSION it serves
    counts: Counter[str] = field(default_factory=Counter)


def _start_ticks(pid: int) -> int | None:
    stat = procfs.read_stat(pid)
    return None if stat is None or stat.zombie else stat.start_ticks


class Driver:
    """Makes writes of every kind against the agent, recording which were acknowledged."""

    def __init__(self, agent: LiveAgent, token: str, apps: Path, hook_id: str,
                 working: list[str], rng: random.Random, repo: GitRepo, git_dep: str) -> None:
        self.agent, self.token, self.apps = agent, token, apps
        self.hook_id, self.working, self.rng = hook_id, working, rng
        self.repo, self.git_dep = repo, git_dep
        self.ledger = Ledger()
        self.n = 0
        self.last_redeploy = 0.0

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            status, _, payload = self.agent.request(method, path, token=self.token, body=body)
        except OSError:  # the agent died under the request: not acknowledged
            return 0, None
        return status, payload

    def step(self) -> None:
        self.n += 1
        n = self.n
        kind = self.rng.choice(("project", "env", "env", "restart", "ping", "deploy",
                                "redeploy"))
        if kind == "deploy" and len(self.ledger.deployments) >= MAX_DEPLOYS:
            kind = "project"
        if kind == "redeploy" and time.monotonic() - self.last_redeploy < REDEPLOY_EVERY:
            kind = "ping"
        self.ledger.counts[f"{kind}_sent"] += 1
        if kind == "project":
            status, _ = self._call("POST", "/v1/projects", {"name": f"p{n}"})
            if status == 201:
                self.ledger.projects.append(f"p{n}")
        elif kind == "env":
            service = self.rng.choice(self.working)
            query = "?restart=true" if self.rng.random() < 0.2 else ""
            status, _ = self._call("POST", f"/v1/services/{service}/env{query}",
                                   {"key": f"K{n}", "value": f"v{n}"})
            if status in (200, 201):
                self.ledger.env.append((service, f"K{n}", f"v{n}"))
        elif kind == "restart":
            status, _ = self._call("POST", f"/v1/services/{self.rng.choice(self.working)}/restart")
        elif kind == "ping":
            status, _ = self._call("POST", f"/v1/webhooks/{self.hook_id}/test")
        elif kind == "redeploy":
            self.last_redeploy = time.monotonic()
            commit = self.repo.commit({"VERSION": f"c{n}\n"})
            self.ledger.commits[commit] = f"c{n}"
            status, _ = self._call("PUT", f"/v1/deployments/{self.git_dep}", {})
            if status == 202:
                self.ledger.redeploys.append(commit)
        else:
            status, dep = self._call("POST", "/v1/deployments", {
                "name": f"d{n}", "source": "local", "path": str(self.apps),
                "build_cmd": "sleep 0.3", "run_cmd": "exec sleep 100000"})
            if status == 201:
                self.ledger.deployments.append(dep["id"])
        if 200 <= status < 300:
            self.ledger.counts[f"{kind}_acknowledged"] += 1


class Killer(threading.Thread):
    """kill -9 the agent at random moments and start it again, until told to stop."""

    def __init__(self, agent: LiveAgent, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.agent, self.rng = agent, rng
        self.kills = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(0.3, 2.5)):
                assert self.agent.kill(signal.SIGKILL) == -signal.SIGKILL
                self.kills += 1
                self.agent.start()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _page_names(agent: LiveAgent, token: str, path: str) -> set[str]:
    names: set[str] = set()
    cursor = ""
    while True:
        status, _, page = agent.request("GET", f"{path}?limit=100{cursor}", token=token)
        assert status == 200, page
        names |= {item["name"] for item in page["data"]}
        if not page.get("next_cursor"):
            return names
        cursor = f"&cursor={page['next_cursor']}"


@pytest.mark.timeout(CHAOS_SECONDS + 300)
def test_kill_9_during_deploys_restarts_env_changes_and_deliveries(tmp_path: Path) -> None:
    """A minute of kill -9 at random moments under a mixed write load: acknowledged writes
    kept, untouched apps never restarted, no duplicate process, no event lost."""
    rng = random.Random(int(os.environ.get("DPLOYR_CHAOS_SEED", "9")))
    apps = tmp_path / "srv" / "app"
    apps.mkdir(parents=True)
    repo = GitRepo.create(tmp_path / "repos" / "site", py_files("c0"))
    daemon = GitDaemon(tmp_path / "repos").start()
    receiver = Receiver()
    server = ThreadedServer(receiver.app(), receiver.port).start()
    agent = LiveAgent(state_dir=tmp_path / "state", extra_env={
        "DPLOYR_SERVICES__ALLOWED_LOCAL_ROOTS": json.dumps([str(apps.parent)]),
        "DPLOYR_SERVICES__STARTUP_SECONDS": "0.2",
        "DPLOYR_LOGGING__ACCESS_LOG": "false",
        "DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR": "1000000",
        "DPLOYR_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
        "DPLOYR_WEBHOOKS__RETRY_BASE_DELAY": "0.2",
        "DPLOYR_WEBHOOKS__RETRY_MAX_DELAY": "1",
        "DPLOYR_METRICS__DETECT_RUNTIMES": "false",
        "DPLOYR_DEPLOY__ALLOWED_SCHEMES": "git",
    })
    killer = Killer(agent, rng)
    try:
        agent.start()
        token = agent.login()
        status, _, hook = agent.request("POST", "/v1/webhooks", token=token,
                                        body={"url": receiver.url(), "events": ["*"]})
        assert status == 201, hook
        receiver.expect("/hook", hook["secret"])
        services = []
        for i in range(CONTROL_APPS + WORKING_APPS):
            status, _, dep = agent.request("POST", "/v1/deployments", token=token, body={
                "name": f"app{i}", "source": "local", "path": str(apps),
                "run_cmd": "exec sleep 100000"})
            assert status == 201, dep
            services.append(dep["service_id"])
        control, working = services[:CONTROL_APPS], services[CONTROL_APPS:]
        status, _, git_dep = agent.request("POST", "/v1/deployments", token=token,
                                           body=remote_body("site", daemon.url("site")))
        assert status == 202, git_dep

        def deployment() -> dict[str, Any]:
            return agent.request("GET", f"/v1/deployments/{git_dep['id']}", token=token)[2]

        wait_until(lambda: deployment()["status"] in ("succeeded", "failed"), timeout=120,
                   message="the first deploy from git")
        assert deployment()["status"] == "succeeded", deployment()["status_detail"]

        def service(sid: str) -> dict[str, Any]:
            return agent.request("GET", f"/v1/services/{sid}", token=token)[2]

        wait_until(lambda: all(service(s)["state"] == "running" for s in services), timeout=30,
                   message="the first apps to run")
        before = {sid: (pid := service(sid)["pid"], _start_ticks(pid)) for sid in control}

        driver = Driver(agent, token, apps, hook["id"], working, rng, repo, git_dep["id"])
        driver.ledger.commits[repo.head()] = "c0"
        killer.start()
        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline and killer.error is None:
            driver.step()
            time.sleep(rng.uniform(0, 0.05))
        killer.stop.set()
        killer.join(60)
        assert killer.error is None, killer.error
        assert agent.healthy() or agent.start()

        # -- acknowledged writes are there ---------------------------------------------------
        ledger = driver.ledger
        assert _page_names(agent, token, "/v1/projects") >= set(ledger.projects)
        for dep_id in ledger.deployments:
            status, _, dep = agent.request("GET", f"/v1/deployments/{dep_id}", token=token)
            assert status == 200, (dep_id, dep)
        env_by_service: dict[str, dict[str, str]] = {}
        for sid in working:
            status, _, listing = agent.request("GET", f"/v1/services/{sid}/env", token=token)
            env_by_service[sid] = {v["key"]: v["value"] for v in listing["data"]}
        missing = [(s, k) for s, k, v in ledger.env if env_by_service[s].get(k) != v]
        assert not missing, missing

        # -- redeploys from git: each acknowledged one left a run that ended ----------------
        wait_until(lambda: deployment()["status"] in ("succeeded", "failed"), timeout=180,
                   message="the last redeploy to end")
        with sqlite3.connect(f"file:{agent.state_dir / 'agent.db'}?mode=ro", uri=True) as db:
            runs = [(status, json.loads(detail)) for status, detail in db.execute(
                "SELECT status, detail FROM deploy_runs WHERE deployment_id = ? AND"
                " kind = 'deploy' ORDER BY created_at", (git_dep["id"],))]
        assert len(runs) >= 1 + len(ledger.redeploys), (len(runs), len(ledger.redeploys))
        assert all(status in ENDED_RUNS for status, _ in runs), [s for s, _ in runs]
        failures = [d["failure"] for status, d in runs if status == "failed"]
        assert [f for f in failures if f["code"] != "interrupted"] == []
        current = deployment()
        assert current["commit"] in ledger.commits, current

        # -- apps: untouched ones never restarted; one process tree per service ----------------
        everything = [s["id"] for s in agent.request("GET", "/v1/services?limit=100",
                                                     token=token)[2]["data"]]

        def settled() -> list[dict[str, Any]] | None:
            states = [service(sid) for sid in everything]
            return states if all(s["state"] in SETTLED for s in states) else None

        try:
            final = wait_until(settled, timeout=60, interval=0.2,
                               message="every service to settle")
        except AssertionError:
            raise AssertionError([(sid, agent.request("GET", f"/v1/services/{sid}/status",
                                                      token=token)[2])
                                  for sid in everything
                                  if service(sid)["state"] not in SETTLED]) from None
        after = {sid: (service(sid)["pid"], _start_ticks(service(sid)["pid"])) for sid in control}
        assert after == before, "an app nobody asked to restart was restarted"
        assert all(service(sid)["restart_count"] == 0 for sid in control)
        running = sorted(s["pid"] for s in final if s["state"] == "running")
        assert sorted(w.pid for w in wrappers_of(agent.state_dir)) == running, \
            "a service has no process tree, or more than one"
        assert all(s["state"] == "running" for s in final if s["id"] in services)

        # -- no event lost: every committed event reached the receiver -------------------------
        with sqlite3.connect(f"file:{agent.state_dir / 'agent.db'}?mode=ro", uri=True) as db:
            after_seq = db.execute("SELECT after_seq FROM webhooks WHERE id = ?",
                                   (hook["id"],)).fetchone()[0]
            committed = [row[0] for row in db.execute(
                "SELECT id FROM events WHERE seq > ? ORDER BY seq", (after_seq,))]

        def all_delivered() -> bool:
            return set(committed) <= set(receiver.verified_ids("/hook"))

        wait_until(all_delivered, timeout=60, interval=0.2, message="every event to be delivered")
        received = Counter(receiver.verified_ids("/hook"))
        assert all(r.verified for r in receiver.at("/hook")), "a delivery failed verification"
        record("kill9_chaos", seconds=CHAOS_SECONDS, kills=killer.kills,
               operations=dict(ledger.counts), events=len(committed),
               duplicate_deliveries=sum(n - 1 for n in received.values()),
               services=len(everything))
        assert killer.kills >= CHAOS_SECONDS / 3

        # -- the deployment from git serves the release it runs, and deploys normally -------
        def answer() -> str:
            port = service(current["service_id"])["listen_port"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                return str(resp.read().decode())

        assert answer() == f"{ledger.commits[current['commit']]} hello"
        newest = repo.commit({"VERSION": "final\n"})
        status, _, _ = agent.request("PUT", f"/v1/deployments/{git_dep['id']}", token=token,
                                     body={})
        assert status == 202
        wait_until(lambda: deployment()["status"] in ("succeeded", "failed"), timeout=120,
                   message="the redeploy after the chaos")
        assert (deployment()["status"], deployment()["commit"]) == ("succeeded", newest)
        assert answer() == "final hello"
        record("kill9_chaos_git", redeploys_acknowledged=len(ledger.redeploys), runs=len(runs),
               interrupted=len(failures),
               superseded=sum(1 for status, _ in runs if status == "superseded"))
    finally:
        killer.stop.set()
        agent.stop()
        kill_apps(agent.state_dir)
        server.stop()
        daemon.stop()
