"""A real ``dployr-agent serve``: first start, SIGTERM, sd_notify, corruption, secrets in logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.support.agent import FAST_HASH_ENV, LiveAgent, free_port, wait_until


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _log_records(agent: LiveAgent) -> list[dict[str, object]]:
    records = []
    for line in agent.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


# -- first start ------------------------------------------------------------------------------

def test_first_start_with_admin_from_environment(live_agent: LiveAgent) -> None:
    """DPLOYR_ADMIN_EMAIL/PASSWORD create that admin; no password is printed or saved."""
    live_agent.extra_env = {"DPLOYR_ADMIN_EMAIL": "boss@example.com",
                            "DPLOYR_ADMIN_PASSWORD": "boss-password-1"}
    live_agent.start()
    token = live_agent.login("boss@example.com", "boss-password-1")
    status, _, me = live_agent.request("GET", "/v1/auth/me", token=token)
    assert status == 200 and me["role"] == "admin"
    assert not (live_agent.state_dir / "initial-admin-password").exists()
    assert "boss-password-1" not in live_agent.log()


def test_first_start_generates_a_password_once(live_agent: LiveAgent) -> None:
    """Without the variables a password is printed once and saved 0600; a restart prints none."""
    live_agent.extra_env = {"DPLOYR_ADMIN_EMAIL": "", "DPLOYR_ADMIN_PASSWORD": ""}
    old_umask = os.umask(0o022)
    try:
        live_agent.start()
    finally:
        os.umask(old_umask)
    saved = live_agent.state_dir / "initial-admin-password"
    assert _mode(saved) == 0o600
    email, password = saved.read_text().splitlines()
    assert email == "admin@localhost" and len(password) >= 20
    first_log = live_agent.log()
    assert first_log.count(password) == 1
    assert f"created the first admin admin@localhost with password {password}" in first_log
    assert live_agent.request("GET", "/v1/auth/me", token=live_agent.login(email, password))[0] == 200

    live_agent.stop()
    live_agent.start()
    second_log = live_agent.log()[len(first_log):]
    assert "first admin" not in second_log and password not in second_log
    assert saved.read_text() == f"{email}\n{password}\n"


def test_state_files_are_private(live_agent: LiveAgent) -> None:
    """The state dir is 0700; the database, WAL, shm, jwt-secret and password file are 0600."""
    live_agent.extra_env = {"DPLOYR_ADMIN_EMAIL": "", "DPLOYR_ADMIN_PASSWORD": ""}
    live_agent.start()
    state = live_agent.state_dir
    assert _mode(state) == 0o700
    for name in ("agent.db", "agent.db-wal", "agent.db-shm", "jwt-secret", "initial-admin-password"):
        assert _mode(state / name) == 0o600, name


# -- corruption -------------------------------------------------------------------------------

def test_corrupt_database_stops_the_start(tmp_path: Path) -> None:
    """With a corrupt database ``serve`` exits non-zero with one line saying what to do."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "agent.db").write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPLOYR_")}
    env.update(FAST_HASH_ENV, DPLOYR_STATE__DIR=str(state),
               DPLOYR_SERVER__LISTEN=f"127.0.0.1:{free_port()}")
    result = subprocess.run([sys.executable, "-m", "agent", "serve"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "agent.db" in lines[0] and "corrupt" in lines[0] and "backup" in lines[0]
    assert "Traceback" not in result.stderr


# -- SIGTERM ----------------------------------------------------------------------------------

def _server_side_rx_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the server has not read yet on this loopback connection (None if not found)."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[1], 16)
    return None


def test_sigterm_finishes_the_in_flight_request(live_agent: LiveAgent) -> None:
    """SIGTERM during a slow login (hashing): the login still gets its 200, the agent exits 0."""
    # A deliberately slow hash so that the login is still hashing when SIGTERM arrives.
    live_agent.extra_env = {"DPLOYR_AUTH__HASH_TIME_COST": "6", "DPLOYR_AUTH__HASH_MEMORY_KIB": "131072"}
    live_agent.start()
    body = json.dumps({"email": "admin@example.com", "password": "admin-password-1"}).encode()
    request = (b"POST /v1/auth/login HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", live_agent.port), timeout=60) as conn:
        conn.sendall(request)
        client_port = conn.getsockname()[1]
        # The agent has read the request (its receive queue is empty): the handler is running.
        wait_until(lambda: _server_side_rx_queue(live_agent.port, client_port) == 0,
                   message="the agent to read the request")
        assert live_agent.process is not None
        live_agent.process.send_signal(signal.SIGTERM)
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert b"access_token" in response
    assert live_agent.process.wait(timeout=60) == 0
    events = [r["event"] for r in _log_records(live_agent)]
    login_line = next(i for i, r in enumerate(_log_records(live_agent))
                      if r.get("event") == "http_request" and r.get("path") == "/v1/auth/login")
    assert events.index("agent_stopping") < login_line < events.index("agent_stopped")
    assert "store_closed" in events


def test_sigterm_when_idle_exits_0_quickly(live_agent: LiveAgent) -> None:
    """An idle agent stops cleanly on SIGTERM and closes its store."""
    live_agent.start()
    assert live_agent.kill(signal.SIGTERM) == 0
    events = [r["event"] for r in _log_records(live_agent)]
    assert events[-3:] == ["agent_stopping", "store_closed", "agent_stopped"]


# -- sd_notify --------------------------------------------------------------------------------

def _receive(sock: socket.socket, until: str, seen: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while until not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {until} in {seen}"
        sock.settimeout(remaining)
        seen.append(sock.recv(4096).decode())


def test_sd_notify_ready_watchdog_stopping(live_agent: LiveAgent, tmp_path: Path) -> None:
    """READY=1 once listening, WATCHDOG=1 pings with WATCHDOG_USEC, STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        live_agent.extra_env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
        live_agent.start(wait=False)
        seen: list[str] = []
        _receive(sock, "READY=1", seen)
        assert live_agent.healthy()  # READY comes only once the API answers
        while seen.count("WATCHDOG=1") < 3:  # pings keep coming at half the interval
            _receive_one(sock, seen)
        assert live_agent.process is not None
        live_agent.process.send_signal(signal.SIGTERM)
        _receive(sock, "STOPPING=1", seen)
        assert live_agent.process.wait(timeout=30) == 0
    assert seen.index("READY=1") < seen.index("STOPPING=1")
    assert seen.count("READY=1") == 1


def _receive_one(sock: socket.socket, seen: list[str], timeout: float = 30) -> None:
    sock.settimeout(timeout)
    seen.append(sock.recv(4096).decode())


def test_sd_notify_abstract_socket_and_no_watchdog_without_usec(live_agent: LiveAgent) -> None:
    """An abstract NOTIFY_SOCKET (@name) works; without WATCHDOG_USEC no pings are sent."""
    name = f"dployr-test-{os.getpid()}-{live_agent.port}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        live_agent.extra_env = {"NOTIFY_SOCKET": "@" + name}
        live_agent.start()
        seen: list[str] = []
        _receive(sock, "READY=1", seen)
        assert live_agent.process is not None
        live_agent.process.send_signal(signal.SIGTERM)
        _receive(sock, "STOPPING=1", seen)
        live_agent.process.wait(timeout=30)
    assert "WATCHDOG=1" not in seen


def test_without_notify_socket_nothing_breaks(live_agent: LiveAgent) -> None:
    """Outside systemd (no NOTIFY_SOCKET) the agent serves normally."""
    live_agent.start()
    assert live_agent.healthy()


# -- secrets never logged ---------------------------------------------------------------------

def test_secrets_never_appear_in_the_log(live_agent: LiveAgent) -> None:
    """Passwords, access/refresh/machine tokens and Authorization headers are never logged."""
    admin_password = "Canary-Admin-Pw-1"
    live_agent.extra_env = {"DPLOYR_ADMIN_EMAIL": "admin@example.com",
                            "DPLOYR_ADMIN_PASSWORD": admin_password,
                            "DPLOYR_LOGGING__LEVEL": "debug"}
    live_agent.start()
    canaries = [admin_password, "Canary-Wrong-Pw-2", "Canary-User-Pw-3", "Canary.Bad.Token4"]
    status, _, tokens = live_agent.request("POST", "/v1/auth/login",
                                           body={"email": "admin@example.com", "password": admin_password})
    assert status == 200
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    assert live_agent.request("POST", "/v1/auth/login",
                              body={"email": "admin@example.com", "password": canaries[1]})[0] == 401
    assert live_agent.request("POST", "/v1/auth/login",
                              body={"email": canaries[1], "password": canaries[1]})[0] in (400, 401)
    assert live_agent.request("POST", "/v1/users", token=access,
                              body={"email": "u@example.com", "password": canaries[2]})[0] == 201
    status, _, rotated = live_agent.request("POST", "/v1/auth/refresh", body={"refresh_token": refresh})
    assert status == 200
    assert live_agent.request("POST", "/v1/auth/refresh", body={"refresh_token": refresh})[0] == 401
    access = live_agent.login("admin@example.com", admin_password)
    status, _, machine = live_agent.request("POST", "/v1/tokens", token=access, body={"name": "cp"})
    assert status == 201
    assert live_agent.request("GET", "/v1/auth/me", token=machine["token"])[0] == 200
    assert live_agent.request("GET", "/v1/auth/me", token=canaries[3])[0] == 401
    assert live_agent.request("GET", f"/v1/projects?password={canaries[0]}&token={access}",
                              token=access)[0] == 200
    live_agent.stop()

    log = live_agent.log()
    assert sum(r["event"] == "http_request" for r in _log_records(live_agent)) >= 10  # access log on
    secret = (live_agent.state_dir / "jwt-secret").read_text().strip()
    values = [*canaries, access, refresh, rotated["access_token"], rotated["refresh_token"],
              machine["token"], secret, "Bearer "]
    for value in values:
        assert value not in log, f"a secret leaked into the log: {value[:12]}..."
    assert "authorization" not in log.lower()


# -- one agent per state dir, one per port ----------------------------------------------------

def _serve_once(state: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPLOYR_")}
    env.update(FAST_HASH_ENV, DPLOYR_STATE__DIR=str(state), DPLOYR_SERVER__LISTEN=f"127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-m", "agent", "serve"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_second_agent_on_the_same_state_dir_is_refused(live_agent: LiveAgent) -> None:
    """A second ``serve`` on a state dir in use exits 1 naming the running agent's pid."""
    live_agent.start()
    assert live_agent.process is not None
    result = _serve_once(live_agent.state_dir, free_port())
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {live_agent.process.pid}" in lines[0], result.stderr
    assert live_agent.healthy()


def test_port_in_use_is_one_clear_line(live_agent: LiveAgent, tmp_path: Path) -> None:
    """``serve`` on a port already taken exits 1 with one line saying so."""
    live_agent.start()
    result = _serve_once(tmp_path / "other-state", live_agent.port)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0], result.stderr
    assert not (tmp_path / "other-state").exists()  # stopped before touching any state


# -- malformed HTTP ---------------------------------------------------------------------------

def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        response = b""
        while chunk := conn.recv(65536):  # the agent closes the connection after an error
            response += chunk
    return response


def test_malformed_http_gets_the_envelope_without_echo(live_agent: LiveAgent) -> None:
    """Requests that are not valid HTTP get a 400 envelope that does not quote the input."""
    live_agent.start()
    canary = b"Canary-Header-Value-9"
    cases = [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + canary + b"a" * 10_000 + b"\r\n\r\n",
        b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: " + canary + b"\r\n\r\n",
    ]
    for data in cases:
        response = _raw_exchange(live_agent.port, data)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].endswith(b"400 Bad Request"), response[:200]
        assert b"Content-Type: application/json" in head and b"X-Request-ID:" in head
        assert b"aiohttp" not in head
        assert json.loads(body)["error"]["code"] == "invalid_request"
        assert canary not in response
    assert live_agent.healthy()
    assert canary.decode() not in live_agent.log()
