"""The deploy queue over real pipelines: supersede, bounded concurrency, one run per service, shutdown."""

from __future__ import annotations

import pytest

from agent.deploy.pipeline import DeployRun
from agent.deploy.queue import DeployQueue
from agent.deploy.stages import Stage
from agent.errors import ServiceUnavailable
from tests.support.agent import eventually
from tests.support.deploy import Rig
from tests.support.git import GitDaemon, GitRepo


async def reach(run: DeployRun, status: Stage) -> None:
    async def check() -> bool:
        return run.status == status

    await eventually(check, timeout=30, message=f"run {run.id} to reach {status}")


async def test_newer_deploy_supersedes_the_queued_one(rig: Rig, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """While one deploy runs, a second waits; a third replaces the second, which never runs."""
    queue = DeployQueue(rig.pipeline, max_concurrent=2)
    rig.starter.block("web")
    first = await queue.submit(rig.spec(daemon.url("app")))
    await reach(first, Stage.STARTING)
    second = await queue.submit(rig.spec(daemon.url("app")))
    third_sha = app_repo.commit({"README.md": "third\n"})
    third = await queue.submit(rig.spec(daemon.url("app")))
    assert second.status == Stage.SUPERSEDED and second.superseded_by == third.id
    assert second.done.is_set() and rig.statuses(second) == ["queued", "superseded"]
    assert third.status == Stage.QUEUED and queue.waiting == [third]
    rig.starter.unblock("web")
    await queue.wait(first)
    await queue.wait(third)
    assert (first.status, third.status) == (Stage.SUCCEEDED, Stage.SUCCEEDED)
    assert third.commit == third_sha
    assert [r.run_id for r in rig.starter.requests] == [first.id, third.id]
    assert queue.get(second.id) is second
    await queue.close()


async def test_concurrency_is_bounded(rig: Rig, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """With max_concurrent=2, three services deploy two at a time; the third waits its turn."""
    queue = DeployQueue(rig.pipeline, max_concurrent=2)
    for service in ("a", "b", "c"):
        rig.starter.block(service)
    runs = {s: await queue.submit(rig.spec(daemon.url("app"), service=s)) for s in ("a", "b", "c")}
    await reach(runs["a"], Stage.STARTING)
    await reach(runs["b"], Stage.STARTING)
    assert runs["c"].status == Stage.QUEUED and len(queue.running) == 2
    rig.starter.unblock("a")
    await reach(runs["c"], Stage.STARTING)
    rig.starter.unblock("b")
    rig.starter.unblock("c")
    for run in runs.values():
        await queue.wait(run)
        assert run.status == Stage.SUCCEEDED, run.failure
    assert rig.starter.max_active == 2
    await queue.close()


async def test_one_service_never_deploys_twice_at_once(rig: Rig, daemon: GitDaemon,
                                                       app_repo: GitRepo) -> None:
    """Two deploys of one service run one after the other even with free slots."""
    queue = DeployQueue(rig.pipeline, max_concurrent=4)
    rig.starter.block("web")
    first = await queue.submit(rig.spec(daemon.url("app")))
    await reach(first, Stage.STARTING)
    second = await queue.submit(rig.spec(daemon.url("app")))
    assert second.status == Stage.QUEUED and len(queue.running) == 1
    rig.starter.unblock("web")
    await queue.wait(second)
    assert second.status == Stage.SUCCEEDED
    assert first.finished_at is not None and second.stages[1].started_at >= first.finished_at
    await queue.close()


async def test_close_fails_waiting_and_interrupts_running(rig: Rig, daemon: GitDaemon,
                                                          app_repo: GitRepo) -> None:
    """At shutdown the waiting deploy fails 'before it started', the running one fails 'interrupted'."""
    queue = DeployQueue(rig.pipeline, max_concurrent=1)
    rig.starter.block("web")
    running = await queue.submit(rig.spec(daemon.url("app")))
    await reach(running, Stage.STARTING)
    waiting = await queue.submit(rig.spec(daemon.url("app")))
    await queue.close()
    assert waiting.failure is not None and "before the deploy started" in waiting.failure.reason
    assert running.failure is not None
    assert (running.failure.stage, running.failure.code) == (Stage.STARTING, "interrupted")
    assert rig.statuses(running)[-1] == "failed"
    with pytest.raises(ServiceUnavailable):
        await queue.submit(rig.spec(daemon.url("app")))
