"""Pure logic of supervision: the transition table, the restart policy, session membership."""

from __future__ import annotations

import random

import pytest

from agent.supervisor.policy import RestartPolicy
from agent.supervisor.procfs import ProcStat, session_members
from agent.supervisor.runtime import ExitStatus, Handle
from agent.supervisor.states import (
    ACTIVE_STATES,
    SETTLED_STATES,
    TRANSITIONS,
    IllegalTransition,
    ServiceState,
    check_transition,
)

S = ServiceState


def test_every_state_has_a_row_and_stopped_is_reachable_from_everywhere_but_itself() -> None:
    """Each state lists its successors, and every state can reach stopped."""
    assert set(TRANSITIONS) == set(ServiceState)
    for state in ServiceState:
        seen, todo = {state}, [state]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert S.STOPPED in seen or state is S.STOPPED


def test_illegal_transitions_raise() -> None:
    """A transition outside the table is refused."""
    check_transition(S.STOPPED, S.STARTING)
    check_transition(S.RUNNING, S.UNHEALTHY)
    with pytest.raises(IllegalTransition):
        check_transition(S.STOPPED, S.RUNNING)
    with pytest.raises(IllegalTransition):
        check_transition(S.CRASHED, S.BACKOFF)


def test_groups_are_consistent() -> None:
    """Active states are never settled except the running ones; stopping is never settled."""
    assert S.STOPPING in ACTIVE_STATES and S.STOPPING not in SETTLED_STATES
    assert S.STARTING not in SETTLED_STATES
    assert {S.STOPPED, S.CRASHED, S.FAILED, S.BACKOFF} <= SETTLED_STATES


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    """Without jitter, delays double from initial_delay and stop at max_delay."""
    policy = RestartPolicy(initial_delay=0.5, multiplier=2, max_delay=5, jitter=0)
    assert [policy.delay(a) for a in range(6)] == [0.5, 1, 2, 4, 5, 5]
    assert policy.delay(10_000) == 5


def test_jitter_stays_within_its_fraction_and_under_the_cap() -> None:
    """Jittered delays spread around the exponential value, never past max_delay."""
    policy = RestartPolicy(initial_delay=1, multiplier=2, max_delay=8, jitter=0.25)
    rng = random.Random(7)
    for attempt in range(6):
        base = min(8, 2 ** attempt)
        values = {policy.delay(attempt, rng) for _ in range(50)}
        assert all(base * 0.75 <= v <= min(8, base * 1.25) for v in values)
        assert len(values) > 1


def test_max_restarts_then_give_up_and_stable_runs_reset_the_streak() -> None:
    """Consecutive failures count up to max_restarts; a long enough run starts over."""
    policy = RestartPolicy(max_restarts=3, initial_delay=1, jitter=0, reset_after=30)
    failed = ExitStatus(code=1)
    attempt, delays = 0, []
    for _ in range(3):
        decision = policy.decide(failed, attempt=attempt, uptime=0.1)
        assert decision.restart
        attempt = decision.attempt
        delays.append(decision.delay)
    assert delays == [1, 2, 4]
    final = policy.decide(failed, attempt=attempt, uptime=0.1)
    assert not final.restart and final.gave_up
    after_stable_run = policy.decide(failed, attempt=attempt, uptime=31)
    assert after_stable_run.restart and after_stable_run.attempt == 1


def test_unlimited_restarts_with_zero() -> None:
    """max_restarts = 0 never gives up."""
    policy = RestartPolicy(max_restarts=0, jitter=0)
    assert policy.decide(ExitStatus(code=1), attempt=10_000, uptime=0).restart


@pytest.mark.parametrize(("mode", "status", "restart"), [
    ("always", ExitStatus(code=0), True),
    ("always", ExitStatus(signal=9), True),
    ("on-failure", ExitStatus(code=0), False),
    ("on-failure", ExitStatus(code=2), True),
    ("on-failure", ExitStatus(signal=15), True),
    ("never", ExitStatus(code=2), False),
])
def test_modes(mode: str, status: ExitStatus, restart: bool) -> None:
    """always restarts every end, on-failure only unsuccessful ones, never none."""
    policy = RestartPolicy(mode=mode)  # type: ignore[arg-type]
    assert policy.decide(status, attempt=0, uptime=0).restart is restart


def test_policy_rejects_nonsense() -> None:
    """Negative counts and inverted delays are refused."""
    with pytest.raises(ValueError):
        RestartPolicy(max_restarts=-1)
    with pytest.raises(ValueError):
        RestartPolicy(initial_delay=10, max_delay=1)


def test_exit_status_decoding() -> None:
    """Shell statuses above 128 are deaths by signal; wait statuses decode both ways."""
    assert ExitStatus.from_shell(3) == ExitStatus(code=3)
    assert ExitStatus.from_shell(137) == ExitStatus(signal=9)
    assert ExitStatus.from_wait(9) == ExitStatus(signal=9)            # killed by SIGKILL
    assert ExitStatus.from_wait(3 << 8) == ExitStatus(code=3)
    assert ExitStatus.from_wait(143 << 8) == ExitStatus(signal=15)    # the wrapper's exit 143
    assert ExitStatus().describe() == "unknown"
    assert ExitStatus(signal=9).describe() == "signal SIGKILL"


def test_handle_round_trips_as_json() -> None:
    """A handle is persisted as JSON and read back equal."""
    handle = Handle("process", {"pid": 42, "start_ticks": 1000, "boot_id": "b", "status_file": "/x"})
    again = Handle.from_json(handle.to_json())
    assert again == handle and again.pid == 42


def _proc(pid: int, session: int, start: int, state: str = "S") -> ProcStat:
    return ProcStat(pid=pid, state=state, ppid=1, pgrp=session, session=session, utime=0,
                    stime=0, start_ticks=start, rss_pages=1)


def test_session_members_exclude_a_process_that_reused_the_leader_pid() -> None:
    """When the leader's pid now belongs to a newer process, that process and its session are
    not ours; members started before it still are."""
    procs = [
        _proc(100, 100, 500),           # a new process that reused pid 100 (a session leader)
        _proc(101, 100, 50),            # our leftover child (start after our leader at 10)
        _proc(102, 100, 600),           # a child of the new process
        _proc(103, 100, 60, state="Z"), # a zombie: not alive
        _proc(104, 7, 60),              # another session
    ]
    members = session_members(100, 10, processes=procs)
    assert [p.pid for p in members] == [101]
    assert [p.pid for p in session_members(100, 500, processes=procs)] == [100, 102]


def test_health_verdicts() -> None:
    """A pass makes a start running and an unhealthy service recovered; threshold failures make
    a running one unhealthy; a start past start_timeout without a pass times out."""
    from agent.supervisor.health import HealthCheck, HealthState, ProbeResult, judge

    check = HealthCheck(threshold=2, start_timeout=10)
    starting = HealthState(status="unknown")
    starting.record(ProbeResult(False, "refused"), 0, starting=True)
    assert starting.status == "unknown" and judge("starting", starting, check, elapsed=1) is None
    assert judge("starting", starting, check, elapsed=11) == "start_timeout"
    starting.record(ProbeResult(True), 0, starting=True)
    assert judge("starting", starting, check, elapsed=11) == "running"

    running = HealthState(status="passing")
    running.record(ProbeResult(False, "HTTP 500"), 0)
    assert judge("running", running, check, elapsed=100) is None
    running.record(ProbeResult(False, "HTTP 500"), 0)
    assert running.status == "failing" and judge("running", running, check, elapsed=100) == "unhealthy"
    running.record(ProbeResult(True), 0)
    assert judge("unhealthy", running, check, elapsed=100) == "recovered"
