"""Projects: named groups of deployments. Knows nothing of HTTP."""

from __future__ import annotations

import sqlite3

from agent.clock import Clock
from agent.errors import Conflict, NotFound
from agent.ids import new_id
from agent.records import record
from agent.store import Database, Tx

__all__ = ["Project", "ProjectService"]


@record
class Project:
    id: str
    name: str
    description: str
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Project:
        return cls(id=row["id"], name=row["name"], description=row["description"],
                   created_at=row["created_at"], updated_at=row["updated_at"])


class ProjectService:
    """Create, list, fetch and delete projects."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def list(self, *, limit: int, after: str | None = None) -> tuple[list[Project], str | None]:
        """Up to ``limit`` projects in creation order after the cursor, and the next cursor."""
        rows = self._db.query("SELECT * FROM projects WHERE id > ? ORDER BY id LIMIT ?",
                              (after or "", limit + 1))
        projects = [Project.from_row(r) for r in rows[:limit]]
        return projects, (projects[-1].id if len(rows) > limit else None)

    def get(self, project_id: str) -> Project:
        """The project; NotFound if there is none with that id."""
        row = self._db.query_one("SELECT * FROM projects WHERE id = ?", (project_id,))
        if row is None:
            raise NotFound(f"No project with id '{project_id}'")
        return Project.from_row(row)

    async def create(self, name: str, description: str) -> Project:
        """A new project; Conflict if the name is taken."""
        now = self._clock.time()
        project = Project(id=new_id("prj"), name=name, description=description,
                          created_at=now, updated_at=now)

        def _insert(tx: Tx) -> None:
            tx.execute("INSERT INTO projects (id, name, description, created_at, updated_at)"
                       " VALUES (?, ?, ?, ?, ?)",
                       (project.id, name, description, now, now))

        try:
            await self._db.write(_insert)
        except sqlite3.IntegrityError:
            raise Conflict(f"A project named '{name}' already exists",
                           details={"field": "name", "issue": "Already taken"}) from None
        return project

    async def delete(self, project_id: str) -> None:
        """Delete the project; NotFound if absent, Conflict while deployments belong to it."""
        try:
            deleted = await self._db.write(
                lambda tx: tx.execute("DELETE FROM projects WHERE id = ?", (project_id,)).rowcount)
        except sqlite3.IntegrityError:
            raise Conflict("The project still has deployments; delete them first") from None
        if not deleted:
            raise NotFound(f"No project with id '{project_id}'")
