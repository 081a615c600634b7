"""What an agent does not load until it needs it (idle memory, docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_a_built_app_has_not_loaded_what_it_does_not_use(tmp_path: Path) -> None:
    """Building the app (as serve does, upstream off, built-in proxy) loads neither PyJWT nor
    cryptography, prometheus_client, the Docker SDK, requests, the upstream link, the Caddy
    backend, nor tarfile (only for provisioning Node.js)."""
    script = textwrap.dedent(f"""
        import sys
        import agent.cli, agent.api.server
        from agent.app import AdminSeed, create_app
        from agent.config import load_config
        config = load_config(None, environ={{"DPLOYR_STATE__DIR": {str(tmp_path / "state")!r}}})
        create_app(config, admin=AdminSeed("a@example.com", "password-1"))
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("jwt", "cryptography", "prometheus_client",
                                               "docker", "requests", "urllib3", "tarfile")
                        or m.startswith(("agent.upstream", "agent.proxy.caddy")))
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_a_started_agent_without_containers_has_not_loaded_the_docker_sdk(tmp_path: Path) -> None:
    """Started (store, supervisor, proxy, metrics, webhooks) with no Docker service and the
    process runtime as default: neither the Docker SDK nor requests is imported (7 MB)."""
    script = textwrap.dedent(f"""
        import asyncio, socket, sys
        from aiohttp import web
        from agent.app import AdminSeed, create_app
        from agent.config import load_config
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = load_config(None, environ={{
            "DPLOYR_STATE__DIR": {str(tmp_path / "state")!r},
            "DPLOYR_PROXY__LISTEN": f"127.0.0.1:{{port}}"}})
        async def main():
            runner = web.AppRunner(create_app(config, admin=AdminSeed("a@example.com",
                                                                      "password-1")))
            await runner.setup()
            await asyncio.sleep(1.5)  # a metrics sample, an instance health pass
            loaded = sorted(m for m in sys.modules
                            if m.split(".")[0] in ("docker", "requests", "urllib3"))
            await runner.cleanup()
            assert not loaded, loaded
        asyncio.run(main())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
