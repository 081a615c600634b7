"""Fetch one branch of a validated remote: a shallow, single-branch, time-limited git clone.

How git is run (each line a defence):

* ``git clone --depth 1 --single-branch --branch <b> --no-tags -- <url> <dest>``: the ``--``
  ends option parsing, and the remote and branch were validated by ``agent.deploy.remote``;
* ``GIT_ALLOW_PROTOCOL`` and ``-c protocol.allow=never`` + ``protocol.<scheme>.allow=always``
  limit every transport (redirects and submodules included) to the allowed schemes;
* ``GIT_TERMINAL_PROMPT=0``, ``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``, a fixed
  minimal environment (``LC_ALL=C`` so errors can be classified), ``credential.helper=``;
* ``core.hooksPath=/dev/null`` and ``--template=``: no hook runs; no submodules unless asked;
* ssh runs with ``BatchMode=yes`` (never prompts), its own known_hosts file (host keys are
  trusted on first use and pinned after), ``-F /dev/null``;
* credentials never reach argv: an https password/token is answered by a ``GIT_ASKPASS``
  helper script that echoes environment variables; an ssh key is written to a 0600 file in a
  private temporary directory named in ``GIT_SSH_COMMAND``, removed when the clone ends;
* the clone runs in its own process group, killed whole when ``timeout`` expires;
* ``.git`` is removed from the checkout: a release holds files, and the commit is recorded.

Errors are typed (``UnknownBranch``, ``RemoteUnreachable``, ``AuthenticationFailed``,
``FetchTimeout``) and their messages are scrubbed of every credential value.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import tempfile
from collections.abc import Iterable
from pathlib import Path

import structlog

from agent.deploy.errors import (
    AuthenticationFailed,
    FetchError,
    FetchTimeout,
    RemoteUnreachable,
    UnknownBranch,
    scrub,
)
from agent.deploy.logfile import LineSink
from agent.deploy.procs import signal_group, spawn_grouped
from agent.deploy.remote import Remote, validate_branch
from agent.records import record

__all__ = ["FetchResult", "GitFetcher"]

log = structlog.get_logger("agent.deploy.git")

_ASKPASS = """#!/bin/sh
case "$1" in
  [Uu]sername*) printf '%s\\n' "$DPLOYR_GIT_USERNAME" ;;
  *) printf '%s\\n' "$DPLOYR_GIT_PASSWORD" ;;
esac
"""
_AUTH_MARKERS = ("authentication failed", "could not read username", "could not read password",
                 "permission denied", "terminal prompts disabled", "access denied",
                 "invalid username or password", "the requested url returned error: 401",
                 "the requested url returned error: 403", "host key verification failed")
_BRANCH_MARKERS = ("remote branch", "not found in upstream")
_OUTPUT_LIMIT = 64 * 1024


@record
class FetchResult:
    """What was fetched: the full commit SHA at the tip of ``branch`` of ``remote``."""

    commit: str
    branch: str
    remote: str


class GitFetcher:
    """Clones branches of validated remotes. One instance serves the whole agent.

    ``allowed_schemes`` is ``[deploy] allowed_schemes``; ``known_hosts`` is the file that pins
    ssh host keys; ``git`` and ``ssh`` name the programs (tests may wrap them).
    """

    def __init__(self, *, allowed_schemes: Iterable[str], timeout: float, known_hosts: Path,
                 submodules: bool = False, git: str = "git", ssh: str = "ssh") -> None:
        self._schemes = tuple(sorted({s.lower() for s in allowed_schemes}))
        self._timeout = timeout
        self._known_hosts = known_hosts
        self._submodules = submodules
        self._git = git
        self._ssh = ssh

    async def fetch(self, remote: Remote, branch: str, dest: Path, *,
                    sink: LineSink | None = None, time_limit: float | None = None) -> FetchResult:
        """Clone ``branch`` of ``remote`` into ``dest`` (absent or empty) and return its commit.

        ``remote`` must come from ``validate_remote`` with this agent's allowed schemes; the
        scheme and branch are checked again here so that no caller can skip the validation.
        Raises a ``FetchError`` subclass; ``dest`` is then removed.
        """
        validate_branch(branch)
        if remote.scheme not in self._schemes:
            raise FetchError(f"Scheme '{remote.scheme}' is not allowed by this agent")
        limit = time_limit if time_limit is not None else self._timeout
        secrets = remote.credentials.secrets() if remote.credentials else ()
        with tempfile.TemporaryDirectory(prefix="dployr-git-") as scratch:
            env = self._environment(remote, Path(scratch))
            argv = self._clone_argv(remote, branch, dest)
            if sink is not None:
                await sink(f"cloning {remote.url} (branch {branch})")
            code, stderr = await _run(argv, env, limit)
            if code is None:
                _remove(dest)
                raise FetchTimeout(f"git clone of {remote.url} did not finish within {limit:g}s; "
                                   "check that the remote answers, or raise [deploy] clone_timeout")
            if code != 0:
                _remove(dest)
                raise _classify(scrub(stderr, secrets), remote, branch)
            code, out = await _run([self._git, "-C", str(dest), "rev-parse", "HEAD"], env, 30)
        commit = out.strip()
        if code != 0 or len(commit) not in (40, 64):
            _remove(dest)
            raise FetchError("git clone succeeded but the commit could not be read")
        await asyncio.to_thread(shutil.rmtree, dest / ".git", True)
        log.info("git_fetched", remote=remote.url, branch=branch, commit=commit)
        if sink is not None:
            await sink(f"fetched commit {commit}")
        return FetchResult(commit=commit, branch=branch, remote=remote.url)

    def _clone_argv(self, remote: Remote, branch: str, dest: Path) -> list[str]:
        config = ["protocol.allow=never", "core.hooksPath=/dev/null", "credential.helper=",
                  "core.fsmonitor=false", "advice.detachedHead=false", "http.followRedirects=initial",
                  *(f"protocol.{scheme}.allow=always" for scheme in self._schemes)]
        argv = [self._git]
        for item in config:
            argv += ["-c", item]
        argv += ["clone", "--quiet", "--depth", "1", "--single-branch", "--branch", branch,
                 "--no-tags", "--template="]
        if self._submodules:
            argv += ["--recurse-submodules", "--shallow-submodules"]
        else:
            argv += ["--no-recurse-submodules"]
        return [*argv, "--", remote.url, str(dest)]

    def _environment(self, remote: Remote, scratch: Path) -> dict[str, str]:
        home = scratch / "home"
        home.mkdir(mode=0o700)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(home), "LC_ALL": "C", "LANG": "C",
            "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_ALLOW_PROTOCOL": ":".join(self._schemes),
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false",
        }
        ssh = [self._ssh, "-F", "/dev/null", "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=accept-new",
               "-o", f"UserKnownHostsFile={self._known_hosts}", "-o", "ConnectTimeout=20"]
        creds = remote.credentials
        if creds is not None and (creds.password is not None or creds.username is not None):
            askpass = scratch / "askpass"
            askpass.write_text(_ASKPASS, encoding="utf-8")
            askpass.chmod(0o700)
            env["GIT_ASKPASS"] = str(askpass)
            env["DPLOYR_GIT_USERNAME"] = creds.username or "x-access-token"
            env["DPLOYR_GIT_PASSWORD"] = creds.password or ""  # a token given as the username
        if creds is not None and creds.ssh_key is not None:
            key = scratch / "id_key"
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(creds.ssh_key.strip() + "\n")
            ssh += ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
        if remote.scheme == "ssh":
            self._known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        env["GIT_SSH_VARIANT"] = "ssh"
        return env


async def _run(argv: list[str], env: dict[str, str], time_limit: float) -> tuple[int | None, str]:
    """Run ``argv`` in its own process group; (exit code or None on timeout, output tail).

    The whole group is killed on timeout or cancellation, and after the command ends (so
    nothing it started, such as an ssh ControlMaster, outlives it).
    """
    child = await spawn_grouped(argv, env=env)
    tail = bytearray()

    async def _read() -> None:
        while chunk := await child.output.read(65536):
            tail.extend(chunk)
            del tail[:-_OUTPUT_LIMIT]

    reader = asyncio.create_task(_read())
    code: int | None
    try:
        async with asyncio.timeout(time_limit):
            code = await child.process.wait()
    except TimeoutError:
        signal_group(child.pid, signal.SIGKILL)
        await child.process.wait()
        code = None
    except asyncio.CancelledError:
        signal_group(child.pid, signal.SIGKILL)
        await asyncio.shield(child.process.wait())
        reader.cancel()
        child.close()
        raise
    signal_group(child.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), 5.0)
    reader.cancel()
    child.close()
    return code, tail.decode("utf-8", errors="replace")


def _remove(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)


def _detail(output: str) -> str:
    """git's own first ``fatal:``/``error:`` line (without the prefix), else its last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in lines:
        for prefix in ("fatal:", "error:"):
            if line.lower().startswith(prefix):
                return line[len(prefix):].strip()[:300]
    return lines[-1][:300] if lines else "no output"


def _classify(stderr: str, remote: Remote, branch: str) -> FetchError:
    text = stderr.lower()
    detail = _detail(stderr)
    if any(marker in text for marker in _BRANCH_MARKERS):
        return UnknownBranch(f"Branch '{branch}' does not exist on {remote.url}; "
                             "push it or choose an existing branch")
    if any(marker in text for marker in _AUTH_MARKERS):
        hint = ("check the ssh key and that the host key has not changed" if remote.scheme == "ssh"
                else "check the username and token, and that they can read this repository")
        return AuthenticationFailed(f"{remote.url} refused the credentials: {hint} ({detail})")
    return RemoteUnreachable(f"Cannot fetch from {remote.url}: {detail}; "
                             "check the URL and that the repository exists and is reachable")
