"""The control-plane link: one outbound WebSocket carrying hello, updates, events and tasks.

- ``protocol``: the messages (docs/upstream.md is the specification);
- ``providers``: what ``update`` reports, replaceable callables;
- ``tasks``: API calls from the control plane, run through the agent's own listener;
- ``link``: the connection, its reconnects and heartbeats.
"""

from agent.upstream.link import UpstreamLink
from agent.upstream.providers import UpstreamProviders, default_providers
from agent.upstream.tasks import local_base_url

__all__ = ["UpstreamLink", "UpstreamProviders", "default_providers", "local_base_url"]
