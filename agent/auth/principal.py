"""Who is calling: a user (via a login session) or a machine token, and what their role allows."""

from __future__ import annotations

from dataclasses import field
from typing import Literal, get_args

from agent.records import record

__all__ = ["ROLES", "Principal", "Role", "role_allows"]

Role = Literal["viewer", "developer", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}


def role_allows(role: str, required: str) -> bool:
    """Whether ``role`` may do what ``required`` may: viewer < developer < admin."""
    return _RANK.get(role, -1) >= _RANK[required]


@record
class Principal:
    """An authenticated caller. ``id`` is the user id or the machine token id."""

    kind: Literal["user", "token"]
    id: str
    role: Role
    name: str
    session_id: str | None = None
    # The key this caller's requests are counted under (made once: principals are cached).
    rate_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate_key", f"{self.kind}:{self.id}")

    def allows(self, required: Role) -> bool:
        """Whether this caller's role covers ``required``."""
        return role_allows(self.role, required)
