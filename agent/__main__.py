"""``python -m agent``: the same as the ``dployr-agent`` command."""

from agent.cli import main

raise SystemExit(main())
