"""The ``dployr-agent`` command line, run as real subprocesses against a state dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import __version__
from tests.support.agent import ADMIN_EMAIL, LiveAgent
from tests.support.cli import run_cli


def test_version(tmp_path: Path) -> None:
    """``version`` prints the package version."""
    result = run_cli(tmp_path / "state", "version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dployr-agent {__version__}"


def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    """``config check`` on a valid file exits 0 and summarizes it."""
    config = tmp_path / "config.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:7999"\n')
    result = run_cli(tmp_path / "state", "config", "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:7999" in result.stdout


def test_config_check_names_a_misspelled_key(tmp_path: Path) -> None:
    """A misspelled key makes ``config check`` exit 2 with one line naming it."""
    config = tmp_path / "config.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:7999"\nshutdown_timout = 5\n')
    result = run_cli(tmp_path / "state", "config", "check", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.shutdown_timout" in lines[0] and "unknown key" in lines[0]


def test_config_check_names_a_bad_environment_value(tmp_path: Path) -> None:
    """A bad value from the environment names the key and the variable."""
    result = run_cli(tmp_path / "state", "config", "check",
                     env={"DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR": "lots"})
    assert result.returncode == 2
    assert "ratelimit.authenticated_per_hour" in result.stderr
    assert "DPLOYR_RATELIMIT__AUTHENTICATED_PER_HOUR" in result.stderr


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    """``serve`` with an unknown key stops before starting, exit 2, one line naming it."""
    config = tmp_path / "config.toml"
    config.write_text("[ratelimit]\nenabeld = false\n")
    result = run_cli(tmp_path / "state", "serve", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "ratelimit.enabeld" in result.stderr
    assert not (tmp_path / "state").exists()


def test_user_add_list_passwd_remove(tmp_path: Path) -> None:
    """Users are added with a password from stdin, listed, re-passworded and removed."""
    state = tmp_path / "state"
    added = run_cli(state, "user", "add", "ops@example.com", "--role", "admin", "--password-stdin",
                    stdin="ops-password-1\n")
    assert added.returncode == 0, added.stderr
    assert "ops@example.com" in added.stdout and "ops-password-1" not in added.stdout
    dev = run_cli(state, "user", "add", "dev@example.com", "--password-stdin", stdin="dev-password\n")
    assert dev.returncode == 0
    listed = run_cli(state, "user", "list")
    rows = [line.split("\t") for line in listed.stdout.strip().splitlines()]
    assert sorted((r[1], r[2]) for r in rows) == [("dev@example.com", "developer"),
                                                  ("ops@example.com", "admin")]
    again = run_cli(state, "user", "add", "ops@example.com", "--password-stdin", stdin="whatever-1\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    short = run_cli(state, "user", "add", "x@example.com", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least" in short.stderr
    bad = run_cli(state, "user", "add", "not-an-email", "--password-stdin", stdin="long-enough\n")
    assert bad.returncode == 2
    changed = run_cli(state, "user", "passwd", "dev@example.com", "--password-stdin", stdin="new-password\n")
    assert changed.returncode == 0 and "sessions were ended" in changed.stdout
    missing = run_cli(state, "user", "passwd", "ghost@example.com", "--password-stdin",
                      stdin="new-password\n")
    assert missing.returncode == 1
    last = run_cli(state, "user", "remove", "ops@example.com")
    assert last.returncode == 1 and "last admin" in last.stderr
    removed = run_cli(state, "user", "remove", "dev@example.com")
    assert removed.returncode == 0
    assert "dev@example.com" not in run_cli(state, "user", "list").stdout
    assert run_cli(state, "user", "remove", "dev@example.com").returncode == 1


def test_user_add_without_password_generates_one(tmp_path: Path) -> None:
    """With no terminal and no --password-stdin a password is generated and printed once."""
    result = run_cli(tmp_path / "state", "user", "add", "gen@example.com")
    assert result.returncode == 0
    [line] = [ln for ln in result.stdout.splitlines() if ln.startswith("password: ")]
    assert len(line.removeprefix("password: ")) >= 16


def test_token_create_list_revoke(tmp_path: Path) -> None:
    """A token is printed once on stdout (alone), listed as active, then revoked."""
    state = tmp_path / "state"
    created = run_cli(state, "token", "create", "control-plane", "--role", "viewer")
    assert created.returncode == 0
    token = created.stdout.strip()
    assert token.startswith("dpl_") and "\n" not in token
    token_id = created.stderr.split()[1]
    assert token_id.startswith("tok_")
    listed = run_cli(state, "token", "list").stdout
    assert f"{token_id}\tcontrol-plane\tviewer\tactive" in listed and token not in listed
    assert run_cli(state, "token", "revoke", token_id).returncode == 0
    assert f"{token_id}\tcontrol-plane\tviewer\trevoked" in run_cli(state, "token", "list").stdout
    assert run_cli(state, "token", "revoke", token_id).returncode == 1


@pytest.mark.parametrize("args", [[], ["user"], ["token", "create"],
                                  ["user", "add", "x@y.z", "--role", "root"]])
def test_bad_usage_exits_2(tmp_path: Path, args: list[str]) -> None:
    """Missing or invalid arguments exit 2 with usage on stderr."""
    result = run_cli(tmp_path / "state", *args)
    assert result.returncode == 2 and "usage" in result.stderr


def test_cli_changes_apply_to_a_running_agent(live_agent: LiveAgent) -> None:
    """Tokens and users managed by the CLI take effect at once in a running agent."""
    live_agent.start()
    state = live_agent.state_dir
    created = run_cli(state, "token", "create", "ci", "--role", "admin")
    token = created.stdout.strip()
    token_id = created.stderr.split()[1]
    status, _, me = live_agent.request("GET", "/v1/auth/me", token=token)
    assert status == 200 and me["kind"] == "token" and me["role"] == "admin"
    assert run_cli(state, "token", "revoke", token_id).returncode == 0
    assert live_agent.request("GET", "/v1/auth/me", token=token)[0] == 401

    assert run_cli(state, "user", "add", "dev@example.com", "--password-stdin",
                   stdin="dev-password\n").returncode == 0
    session = live_agent.login("dev@example.com", "dev-password")
    assert live_agent.request("GET", "/v1/projects", token=session)[0] == 200
    assert run_cli(state, "user", "passwd", "dev@example.com", "--password-stdin",
                   stdin="dev-password-2\n").returncode == 0
    assert live_agent.request("GET", "/v1/projects", token=session)[0] == 401
    assert live_agent.login("dev@example.com", "dev-password-2")
    users = run_cli(state, "user", "list").stdout
    assert ADMIN_EMAIL in users
