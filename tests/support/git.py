"""Real git repositories for tests, and real servers for them on 127.0.0.1.

* ``GitRepo``: a working repository with commits made by the test;
* ``GitDaemon``: ``git daemon`` serving a directory of repositories (``git://``);
* ``SmartHttpGit``: the smart HTTP protocol (``git http-backend`` as CGI) behind HTTP Basic
  auth, to test credentials for private repositories.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.support.agent import free_port, wait_until

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git and return its stdout (stripped); raise on failure."""
    result = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV},
                            capture_output=True, text=True, check=True, timeout=60)
    return result.stdout.strip()


@dataclass
class GitRepo:
    """A non-bare repository at ``path`` whose first branch is ``branch``."""

    path: Path
    branch: str = "main"

    @classmethod
    def create(cls, path: Path, files: Mapping[str, str], *, branch: str = "main") -> GitRepo:
        path.mkdir(parents=True)
        git("init", "-q", "-b", branch, str(path))
        repo = cls(path, branch)
        repo.commit(files, "initial commit")
        return repo

    def commit(self, files: Mapping[str, str], message: str = "change") -> str:
        """Write ``files`` (path -> content; executable if the content starts with #!) and commit."""
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            if content.startswith("#!"):
                target.chmod(0o755)
        git("add", "-A", cwd=self.path)
        git("commit", "-q", "-m", message, cwd=self.path)
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        return git("rev-parse", ref, cwd=self.path)

    def create_branch(self, name: str, files: Mapping[str, str]) -> str:
        git("checkout", "-q", "-b", name, cwd=self.path)
        sha = self.commit(files, f"on {name}")
        git("checkout", "-q", self.branch, cwd=self.path)
        return sha


@dataclass
class GitDaemon:
    """``git daemon`` exporting every repository under ``root`` at git://127.0.0.1:<port>/."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> GitDaemon:
        self.process = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
             f"--base-path={self.root}", "--listen=127.0.0.1", f"--port={self.port}", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._listening, timeout=15, message="git daemon to listen")
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"git daemon exited with {self.process.returncode}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)


@dataclass
class SmartHttpGit:
    """Repositories under ``root`` over smart HTTP, readable only with ``user``/``password``."""

    root: Path
    user: str
    password: str
    port: int = field(default_factory=free_port)
    seen_authorization: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def start(self) -> SmartHttpGit:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        self.seen_authorization.append(header)
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if header != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="git"'})
        env = {
            "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": request.path, "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string, "REMOTE_USER": self.user, "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
        }
        body = await request.read()
        env["CONTENT_LENGTH"] = str(len(body))
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate(body)
        head, sep, payload = out.partition(b"\r\n\r\n")
        if not sep:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        return web.Response(status=status, headers=headers, body=payload)
