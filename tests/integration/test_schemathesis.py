"""schemathesis, with all its checks and every phase (stateful links included), against a
live agent's own /v1/openapi.json.

Runs the schemathesis CLI as a subprocess (the same thing a user would run), authenticated
with an admin machine token, and again without credentials. A failure prints schemathesis'
report, which includes a curl command reproducing each problem.

The stateful phase follows the OpenAPI links from each create operation to the operations
on what it created. A deployment cannot be made up by a fuzzer (its path must be a real
directory under an allowed root), so one real service (a ``sleep``) is deployed before the
run and the operations on services get its id: start, stop, restart, status, env and
metrics are then fuzzed against a real process rather than answering 404.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agent import LiveAgent, wait_until
from tests.support.cli import create_token
from tests.support.services import kill_apps

# Fixed by default so that CI is deterministic; set DPLOYR_SCHEMATHESIS_SEED to explore.
SEED = os.environ.get("DPLOYR_SCHEMATHESIS_SEED", "20261129")
MAX_EXAMPLES = os.environ.get("DPLOYR_SCHEMATHESIS_EXAMPLES", "25")
# The token used for the run must survive it, so revoking tokens is fuzzed separately: a
# stateful run would otherwise find the run's own token in GET /v1/tokens and revoke it.
REVOKE_TOKEN = "/v1/tokens/{id}"
# Per-operation settings: where validation needs more than the schema can say.
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Operations given the real service's id (following a log stream would only time out, and
# deleting the deployment would end the run's service).
REAL_SERVICE_OPERATIONS = ["GET /v1/services/{id}", "GET /v1/services/{id}/status",
                           "POST /v1/services/{id}/start", "POST /v1/services/{id}/stop",
                           "POST /v1/services/{id}/restart", "GET /v1/services/{id}/env",
                           "POST /v1/services/{id}/env", "DELETE /v1/services/{id}/env/{key}",
                           "GET /v1/services/{id}/metrics"]


def _config(workdir: Path, service_id: str | None) -> Path:
    """The base config, plus the real service's id for the operations on services."""
    text = CONFIG.read_text()
    if service_id is not None:
        text += ("\n[[operations]]\ninclude-name = " + json.dumps(REAL_SERVICE_OPERATIONS)
                 + '\nexclude-path = "/v1/services/{id}/logs"'
                 + f'\nparameters = {{ "path.id" = "{service_id}" }}\n')
    path = workdir / "schemathesis.toml"
    path.write_text(text)
    return path


def _schemathesis(agent: LiveAgent, workdir: Path, *args: str,
                  service_id: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file",
               str(_config(workdir, service_id)),
               "run", f"{agent.url}/v1/openapi.json",
               "--checks", "all", "--max-examples", MAX_EXAMPLES, "--seed", SEED,
               "--generation-database", "none", "--no-color", "--workers", "1",
               "--request-timeout", "30", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS")}
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture
def fuzz_agent(live_agent: LiveAgent, tmp_path: Path):
    """A live agent whose rate limits do not get in the fuzzer's way (429 is still declared),
    allowed to run apps from one directory; its apps are killed afterwards."""
    apps = tmp_path / "srv" / "sleeper"
    apps.mkdir(parents=True)
    live_agent.extra_env = {"DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR": "1000000",
                            "DPLOYR_RATELIMIT__UNAUTHENTICATED_PER_HOUR": "1000000",
                            "DPLOYR_SERVICES__ALLOWED_LOCAL_ROOTS": json.dumps([str(apps.parent)]),
                            "DPLOYR_SERVICES__STARTUP_SECONDS": "0.1",
                            "DPLOYR_SERVICES__WAIT_TIMEOUT": "5"}
    try:
        yield live_agent.start()
    finally:
        live_agent.stop()
        kill_apps(live_agent.state_dir)


def _real_service(agent: LiveAgent) -> str:
    token = agent.login()
    apps = json.loads(agent.env()["DPLOYR_SERVICES__ALLOWED_LOCAL_ROOTS"])[0]
    status, _, dep = agent.request("POST", "/v1/deployments", token=token, body={
        "name": "sleeper", "source": "local", "path": f"{apps}/sleeper",
        "run_cmd": "exec sleep 100000"})
    assert status == 201, dep
    wait_until(lambda: agent.request("GET", f"/v1/services/{dep['service_id']}",
                                     token=token)[2]["state"] == "running", timeout=30)
    return str(dep["service_id"])


def _assert_passed(result: subprocess.CompletedProcess[str]) -> None:
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert " passed" in report and "FAILURES" not in report, report


def test_schemathesis_authenticated_as_admin(fuzz_agent: LiveAgent, tmp_path: Path) -> None:
    """Every operation, every phase (stateful included), fuzzed with an admin token: no check
    fails."""
    _, token = create_token(fuzz_agent.state_dir, "schemathesis", "admin")
    service_id = _real_service(fuzz_agent)
    auth = ("--header", f"Authorization: Bearer {token}")
    result = _schemathesis(fuzz_agent, tmp_path, *auth, "--exclude-path", REVOKE_TOKEN,
                           service_id=service_id)
    _assert_passed(result)
    assert "Stateful" in result.stdout and "Scenarios" in result.stdout, result.stdout
    # Alone, revoking has no link to follow (its creator is filtered out): no stateful phase.
    _assert_passed(_schemathesis(fuzz_agent, tmp_path, *auth, "--include-path", REVOKE_TOKEN,
                                 "--phases", "examples,coverage,fuzzing"))
    # The agent never crashed or logged an internal error.
    assert fuzz_agent.healthy()
    assert "request_failed" not in fuzz_agent.log()


def test_schemathesis_unauthenticated(fuzz_agent: LiveAgent, tmp_path: Path) -> None:
    """Every operation, fuzzed without credentials: no check fails."""
    _assert_passed(_schemathesis(fuzz_agent, tmp_path))
    assert fuzz_agent.healthy()
    assert "request_failed" not in fuzz_agent.log()
