"""The deploy stage table and the pipeline's transition bookkeeping (fake clock, no I/O)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from agent.deploy.pipeline import DeployRun, DeploySpec, Pipeline
from agent.deploy.releases import ReleaseStore
from agent.deploy.remote import validate_remote
from agent.deploy.stages import TERMINAL_STAGES, TRANSITIONS, InvalidTransition, Stage, check_transition
from agent.testing import FakeClock, FakeStarter


def test_happy_path_is_allowed_and_terminal_states_are_final() -> None:
    """queued->cloning->building->starting->succeeded is allowed; nothing leaves a terminal state."""
    path = [Stage.QUEUED, Stage.CLONING, Stage.BUILDING, Stage.STARTING, Stage.SUCCEEDED]
    for current, new in itertools.pairwise(path):
        check_transition(current, new)
    for stage in TERMINAL_STAGES:
        assert TRANSITIONS[stage] == frozenset()


@pytest.mark.parametrize(("current", "new"), [
    (Stage.QUEUED, Stage.BUILDING), (Stage.CLONING, Stage.STARTING), (Stage.BUILDING, Stage.SUPERSEDED),
    (Stage.STARTING, Stage.SUPERSEDED), (Stage.SUCCEEDED, Stage.FAILED), (Stage.FAILED, Stage.QUEUED),
])
def test_skips_and_reversals_are_refused(current: Stage, new: Stage) -> None:
    """Skipping a stage, superseding a running deploy or leaving a terminal state is refused."""
    with pytest.raises(InvalidTransition):
        check_transition(current, new)


def test_every_stage_can_fail_except_terminal_ones() -> None:
    """Each non-terminal stage has a transition to failed."""
    for stage in Stage:
        assert (Stage.FAILED in TRANSITIONS[stage]) == (stage not in TERMINAL_STAGES)


async def test_transitions_are_stamped_and_failures_carry_the_stage(tmp_path: Path) -> None:
    """Each stage gets a start time, the previous one an end time; a failure records its stage."""
    clock = FakeClock()
    pipeline = Pipeline(fetcher=None, toolchains=None, builder=None,  # type: ignore[arg-type]
                        releases=ReleaseStore(tmp_path, clock=clock), starter=FakeStarter(), clock=clock)
    spec = DeploySpec(service="web", runtime="static", version="",
                      remote=validate_remote("https://example.com/app", ("https",)), branch="main",
                      log_path=tmp_path / "log")
    run: DeployRun = pipeline.new_run(spec)
    clock.advance(2)
    await pipeline.transition(run, Stage.CLONING)
    clock.advance(3)
    await pipeline.fail(run, "Branch 'x' does not exist", code="unknown_branch")
    assert [(str(r.stage), r.started_at, r.finished_at) for r in run.stages] == [
        ("queued", clock.time() - 5, clock.time() - 3),
        ("cloning", clock.time() - 3, clock.time()),
        ("failed", clock.time(), clock.time()),
    ]
    assert run.failure is not None and run.failure.stage == Stage.CLONING
    assert run.done.is_set() and run.finished_at == clock.time()
    with pytest.raises(InvalidTransition):
        await pipeline.transition(run, Stage.BUILDING)
