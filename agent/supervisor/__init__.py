"""Process and container supervision: states, restart policy, runtimes, the supervisor.

Import from the submodules (``agent.supervisor.manager.Supervisor``,
``agent.supervisor.runtime.Runtime``, ...); this package module stays empty so that the log
capture can import ``runtime`` without pulling the whole supervisor in.
"""

__all__: list[str] = []
