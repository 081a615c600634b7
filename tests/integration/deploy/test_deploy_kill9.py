"""A real agent killed with SIGKILL in the middle of a deploy: the old release keeps serving,
nothing it started is left running untracked, and the deploy ends failed after the restart."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.agent import LiveAgent, wait_until
from tests.support.git import GitDaemon, GitRepo
from tests.support.gitdeploy import py_files, remote_body
from tests.support.services import alive, kill_apps, wrappers_of


def _call(agent: LiveAgent, token: str, method: str, path: str, body: Any = None) -> Any:
    status, _, payload = agent.request(method, path, token=token, body=body)
    assert status < 300, (status, payload)
    return payload


def _answer(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        return str(resp.read().decode())


def test_kill_9_during_the_switch_leaves_the_old_release_serving(
        live_agent: LiveAgent, daemon: GitDaemon, repos_root: Path, shared_toolchains: Path) -> None:
    """SIGKILL while a new release waits for its health gate: after the restart the candidate is stopped."""
    repo = GitRepo.create(repos_root / "k9", py_files("v1"))
    live_agent.extra_env.update({"DPLOYR_DEPLOY__ALLOWED_SCHEMES": "git",
                                 "DPLOYR_DEPLOY__TOOLCHAINS_DIR": str(shared_toolchains),
                                 "DPLOYR_SERVICES__STARTUP_SECONDS": "0.2"})
    try:
        live_agent.start()
        token = live_agent.login()
        dep = _call(live_agent, token, "POST", "/v1/deployments", remote_body("k9", daemon.url("k9")))

        def deployment() -> dict[str, Any]:
            result: dict[str, Any] = _call(live_agent, token, "GET", f"/v1/deployments/{dep['id']}")
            return result

        wait_until(lambda: deployment()["status"] == "succeeded", timeout=120,
                   message="the first deploy")
        first = _call(live_agent, token, "GET", "/v1/services/k9/status")
        first_release = deployment()["release_id"]
        assert _answer(first["listen_port"]) == "v1 hello"
        repo.commit({"VERSION": "v2\n"})
        _call(live_agent, token, "PUT", f"/v1/deployments/{dep['id']}",
              {"run_cmd": "sleep 600; exec python app.py"})
        wait_until(lambda: deployment()["status"] == "starting"
                   and len(wrappers_of(live_agent.state_dir)) == 2, timeout=120,
                   message="the new release to wait for its health gate")
        candidate = next(w.pid for w in wrappers_of(live_agent.state_dir) if w.pid != first["pid"])

        assert live_agent.kill(signal.SIGKILL) == -signal.SIGKILL
        assert _answer(first["listen_port"]) == "v1 hello"
        live_agent.start()
        token = live_agent.login()
        after = deployment()
        failure = after["status_detail"]["failure"]
        assert (after["status"], failure["stage"], failure["code"]) == ("failed", "starting",
                                                                        "interrupted")
        assert "agent restart" in failure["reason"] and after["release_id"] == first_release
        status = _call(live_agent, token, "GET", "/v1/services/k9/status")
        assert (status["state"], status["pid"]) == ("running", first["pid"])
        wait_until(lambda: not alive(candidate), timeout=30, message="the candidate to be stopped")
        assert [w.pid for w in wrappers_of(live_agent.state_dir)] == [first["pid"]]
        assert _answer(first["listen_port"]) == "v1 hello"
        # The service deploys normally afterwards.
        _call(live_agent, token, "PUT", f"/v1/deployments/{dep['id']}",
              {"run_cmd": "exec python app.py"})
        wait_until(lambda: deployment()["status"] == "succeeded", timeout=120,
                   message="the next deploy")
        assert _answer(_call(live_agent, token, "GET", "/v1/services/k9/status")["listen_port"]) \
            == "v2 hello"
    finally:
        live_agent.stop()
        kill_apps(live_agent.state_dir)
