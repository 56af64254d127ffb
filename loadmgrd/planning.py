"""What a run will do: its steps, events and skips, decided before anything starts. Pure.

``plan_fresh`` is a new run from a job's steps (or a one-off job file); ``plan_resume`` is a
``start --resume`` of a Stopped/Failed run: it carries the previous run's completed steps and
their captured output, and skips the wait events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadmgrd.errors import InvalidInput, NotRunning
from loadmgrd.jobfile import StepDef
from loadmgrd.states import EventAction, StepFunction, StepStatus
from loadmgrd.stepranges import StepRange

AUTO_CREATE_DESCRIPTION = "Create Events"
SKIP_WAIT = "wait"
SKIP_CREATE = "create"
SKIP_ALL = "all"


@dataclass(frozen=True)
class PlannedStep:
    step: StepDef
    status: str = StepStatus.PENDING.value
    output: str | None = None
    message: str | None = None


@dataclass
class Plan:
    steps: list[PlannedStep]
    events: list[dict[str, Any]]
    start_step: int
    end_step: int
    carried_outputs: dict[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.status == StepStatus.PENDING.value]


def plan_events(events: Sequence[Mapping[str, Any]], skips: Sequence[str], *, skip_waits: bool) -> list[dict[str, Any]]:
    """The job's enabled events frozen for a run, each ``Pending`` or ``Skipped``."""
    names = {e["event_name"] for e in events}
    for skip in skips:
        if skip not in (SKIP_WAIT, SKIP_CREATE, SKIP_ALL) and skip not in names:
            raise InvalidInput(f"--skip {skip!r}: the job has no enabled event of that name (or use wait, create, all)")
    planned = []
    for event in events:
        action = event["action_type"]
        skipped = (
            SKIP_ALL in skips
            or event["event_name"] in skips
            or (action == EventAction.WAIT and (SKIP_WAIT in skips or skip_waits))
            or (action == EventAction.CREATE and SKIP_CREATE in skips)
        )
        planned.append({**event, "status": "Skipped" if skipped else "Pending"})
    return planned


def _with_auto_create(steps: list[PlannedStep], events: Sequence[Mapping[str, Any]]) -> list[PlannedStep]:
    """Add the automatic ``call_create_event`` last step when there are create events and none calls them."""
    creates = [e for e in events if e["action_type"] == EventAction.CREATE and e["status"] == "Pending"]
    if not creates or not steps or any(s.step.job_step_function == StepFunction.CALL_CREATE_EVENT for s in steps):
        return steps
    last = max(s.step.job_step for s in steps)
    auto = StepDef(
        job_step=last + 10,
        job_step_function=StepFunction.CALL_CREATE_EVENT.value,
        job_step_description=AUTO_CREATE_DESCRIPTION,
        job_step_ignore_error=True,
    )
    return [*steps, PlannedStep(auto)]


def _check_size(count: int, limit: int) -> None:
    if count > limit:
        raise InvalidInput(f"the run would have {count} steps, more than [jobs] queue_size_limit = {limit}")


def plan_fresh(
    steps: Sequence[StepDef],
    events: Sequence[Mapping[str, Any]],
    step_range: StepRange,
    skips: Sequence[str],
    queue_size_limit: int,
) -> Plan:
    chosen = [PlannedStep(s) for s in sorted(steps, key=lambda s: s.job_step) if s.job_step in step_range]
    if not chosen:
        raise InvalidInput(f"no step of the job is in the range {step_range}")
    frozen_events = plan_events(events, skips, skip_waits=False)
    chosen = _with_auto_create(chosen, frozen_events)
    _check_size(len(chosen), queue_size_limit)
    return Plan(chosen, frozen_events, chosen[0].step.job_step, chosen[-1].step.job_step)


def plan_resume(
    previous: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    step_range: StepRange | None,
    skips: Sequence[str],
    queue_size_limit: int,
) -> Plan:
    """Resume a Stopped/Failed run: from the first step not completed (or ``step_range``), up to
    the previous end step, re-running only what did not complete; wait events are skipped."""
    old_steps: list[Mapping[str, Any]] = previous["steps"]
    complete = {s["job_step"] for s in old_steps if StepStatus(s["status"]).is_complete}
    carried = {f"step_{s['job_step']}": s["output"] for s in old_steps if s["job_step"] in complete and s["output"]}
    carried = {**previous.get("variables", {}).get("step_outputs", {}), **carried}
    end = previous["end_step"] if step_range is None or step_range.end is None else step_range.end
    if step_range is not None and step_range.start is not None:
        start = step_range.start
        explicit = True
    else:
        incomplete = [s["job_step"] for s in old_steps if s["job_step"] not in complete]
        if not incomplete:
            raise NotRunning(f"nothing to resume: every step of run {previous['run_id']} completed")
        start = min(incomplete)
        explicit = False
    chosen: list[PlannedStep] = []
    for row in sorted(old_steps, key=lambda s: s["job_step"]):
        if not start <= row["job_step"] <= end:
            continue
        step = StepDef.from_mapping(row)
        if row["job_step"] in complete and not explicit:
            chosen.append(PlannedStep(step, row["status"], row["output"], f"completed in run {previous['run_id']}"))
        else:
            chosen.append(PlannedStep(step))
    plan_steps = [s for s in chosen if s.status == StepStatus.PENDING.value]
    if not plan_steps:
        raise NotRunning(
            f"no steps left to resume between steps {start} and {end} of run {previous['run_id']}; nothing started"
        )
    _check_size(len(chosen), queue_size_limit)
    frozen_events = plan_events(events, skips, skip_waits=True)
    return Plan(chosen, frozen_events, start, end, carried_outputs=carried)
