"""Errors of the deploy pipeline: why a deploy failed, in words a user can act on.

::

    DeployError                     a deploy step failed (not a bad request)
    +-- FetchError                  the git clone failed
    |   +-- UnknownBranch           the branch does not exist on the remote
    |   +-- RemoteUnreachable       no such host / repository, connection refused
    |   +-- AuthenticationFailed    the remote refused the credentials (or needs some)
    |   +-- FetchTimeout            the clone took longer than ``clone_timeout``
    +-- ToolchainError              a toolchain could not be provided
    |   +-- ProvisioningFailed      the download or extraction of a toolchain failed
    |   +-- IntegrityMismatch       a download did not match its published checksum
    +-- BuildFailed                 the build could not run or failed
    +-- StartFailed                 the new release did not start or pass its health gate

A request that is wrong before anything runs (a remote with a forbidden scheme, a malformed
branch, a runtime version that cannot be had) is not a DeployError but an
``agent.errors.InvalidRequest`` naming the field, so the API can answer 400 with it.

``reason`` is the one-line message shown to users in the deployment's status. It never holds a
credential: messages built from git's output go through ``scrub`` first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

__all__ = [
    "AuthenticationFailed",
    "BuildFailed",
    "DeployError",
    "FetchError",
    "FetchTimeout",
    "IntegrityMismatch",
    "ProvisioningFailed",
    "RemoteUnreachable",
    "StartFailed",
    "ToolchainError",
    "UnknownBranch",
    "scrub",
]

REDACTED = "[redacted]"


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``[redacted]``."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, REDACTED)
    return text


class DeployError(Exception):
    """A deploy step failed. ``reason`` is safe to show and to store."""

    code: ClassVar[str] = "deploy_failed"

    def __init__(self, reason: str, *, exit_code: int | None = None) -> None:
        self.reason = reason
        self.exit_code = exit_code
        super().__init__(reason)


class FetchError(DeployError):
    code = "fetch_failed"


class UnknownBranch(FetchError):
    code = "unknown_branch"


class RemoteUnreachable(FetchError):
    code = "remote_unreachable"


class AuthenticationFailed(FetchError):
    code = "authentication_failed"


class FetchTimeout(FetchError):
    code = "fetch_timeout"


class ToolchainError(DeployError):
    code = "toolchain_failed"


class ProvisioningFailed(ToolchainError):
    code = "provisioning_failed"


class IntegrityMismatch(ProvisioningFailed):
    code = "integrity_mismatch"


class BuildFailed(DeployError):
    code = "build_failed"


class StartFailed(DeployError):
    """Raised by a ``ReleaseStarter``: the release did not start or failed its health gate.

    The starter guarantees the previously running release is still serving when it raises.
    """

    code = "start_failed"
