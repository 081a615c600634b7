"""What an agent does not load until it needs it (idle memory, docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_a_built_app_has_not_loaded_what_it_does_not_use(tmp_path: Path) -> None:
    """Building the app (as serve does, upstream off, built-in proxy) loads neither PyJWT nor
    cryptography, prometheus_client, nor the upstream link."""
    script = textwrap.dedent(f"""
        import sys
        import agent.cli, agent.api.server
        from agent.app import AdminSeed, create_app
        from agent.config import load_config
        config = load_config(None, environ={{"DPLOYR_STATE__DIR": {str(tmp_path / "state")!r}}})
        create_app(config, admin=AdminSeed("a@example.com", "password-1"))
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("jwt", "cryptography", "prometheus_client")
                        or m.startswith("agent.upstream"))
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
