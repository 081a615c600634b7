"""schemathesis, with all its checks, against a live agent's own /v1/openapi.json.

Runs the schemathesis CLI as a subprocess (the same thing a user would run), authenticated
with an admin machine token, and again without credentials. A failure prints schemathesis'
report, which includes a curl command reproducing each problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agent import LiveAgent
from tests.support.cli import create_token

# Fixed by default so that CI is deterministic; set DPLOYR_SCHEMATHESIS_SEED to explore.
SEED = os.environ.get("DPLOYR_SCHEMATHESIS_SEED", "20261129")
MAX_EXAMPLES = os.environ.get("DPLOYR_SCHEMATHESIS_EXAMPLES", "25")
# The token used for the run must survive it, so revoking tokens is fuzzed separately: a
# stateful run would otherwise find the run's own token in GET /v1/tokens and revoke it.
REVOKE_TOKEN = "/v1/tokens/{id}"
# Per-operation settings: where validation needs more than the schema can say.
CONFIG = Path(__file__).with_name("schemathesis.toml")


def _schemathesis(agent: LiveAgent, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
               "run", f"{agent.url}/v1/openapi.json",
               "--checks", "all", "--max-examples", MAX_EXAMPLES, "--seed", SEED,
               "--generation-database", "none", "--no-color", "--workers", "1",
               "--request-timeout", "30", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS")}
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture
def fuzz_agent(live_agent: LiveAgent) -> LiveAgent:
    """A live agent whose rate limits do not get in the fuzzer's way (429 is still declared)."""
    live_agent.extra_env = {"DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR": "1000000",
                            "DPLOYR_RATELIMIT__UNAUTHENTICATED_PER_HOUR": "1000000"}
    return live_agent.start()


def _assert_passed(result: subprocess.CompletedProcess[str]) -> None:
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert " passed" in report and "FAILURES" not in report, report


def test_schemathesis_authenticated_as_admin(fuzz_agent: LiveAgent, tmp_path: Path) -> None:
    """Every operation, fuzzed with an admin token: no check fails."""
    _, token = create_token(fuzz_agent.state_dir, "schemathesis", "admin")
    auth = ("--header", f"Authorization: Bearer {token}")
    _assert_passed(_schemathesis(fuzz_agent, tmp_path, *auth, "--exclude-path", REVOKE_TOKEN))
    _assert_passed(_schemathesis(fuzz_agent, tmp_path, *auth, "--include-path", REVOKE_TOKEN))
    # The agent never crashed or logged an internal error.
    assert fuzz_agent.healthy()
    assert "request_failed" not in fuzz_agent.log()


def test_schemathesis_unauthenticated(fuzz_agent: LiveAgent, tmp_path: Path) -> None:
    """Every operation, fuzzed without credentials: no check fails."""
    _assert_passed(_schemathesis(fuzz_agent, tmp_path))
    assert fuzz_agent.healthy()
    assert "request_failed" not in fuzz_agent.log()
