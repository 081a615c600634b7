"""This instance: identity, host facts, runtimes, health and its events."""

from agent.instance.facts import HostFacts, read_facts
from agent.instance.runtimes import RuntimeDetector, RuntimeInfo, detect_runtimes
from agent.instance.service import SELF, InstanceReport, InstanceService, InstanceStatus

__all__ = [
    "SELF",
    "HostFacts",
    "InstanceReport",
    "InstanceService",
    "InstanceStatus",
    "RuntimeDetector",
    "RuntimeInfo",
    "detect_runtimes",
    "read_facts",
]
