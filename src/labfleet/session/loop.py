"""The session loop: keeps every worker busy, records everything, applies the scheduler's decisions.

The only place where stages meet (see DESIGN.md): the researcher proposes (off the
loop, through a ``scheduler.proposing.Proposer``), this loop materializes proposals
as commits and queues them in the ledger, places queued runs on free workers,
collects results, and applies what the scheduler (``labfleet.scheduler``: pure
functions over a frozen ``Snapshot``) decides. One event per tick, as in Ray Tune's
controller:

    recover()                      # once: adopt runs a killed orchestrator left behind;
                                   # queue the baseline's noise and calibration runs
    while not finished:
        check the limits           # --hours before collecting: what ends at the end is decided as such
        stop runs `labfleet cancel` asked for
        collect finished runs      # ledger first, then scheduler.decide, then apply
        past --hours: drop the queue  # no run of any role starts after the end (starts_left caps the queue)
        place queued runs          # scheduler.place: validation, calibration, confirmation, screening
        first call in flight: fill free workers with the baseline's seeds (scheduler.plan_noise_fill)
        take researcher answers    # proposals materialized; usage recorded; failures back off
        ask the researcher         # when the pipeline runs low: one call for many workers
        wait if idle               # executor.wait: a sleep, or the simulator's clock jump
    decide what is left            # nothing stays pending when a session ends

The researcher never blocks the loop: its call runs on a thread (or, on the
simulator's clock, takes virtual time), results that finish meanwhile are collected
and decided, and a pipeline of proposals sized from the measured call latency and
run time keeps freed workers fed.

Every state change is written to the ledger before it is acted on, so a killed
orchestrator resumes from the ledger: runs marked running are adopted from their
run directory (collected if finished meanwhile, retried if lost). A researcher
call in flight is not recorded until it answers: after a kill it is simply asked again.
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labfleet import frozen, workspace
from labfleet.analysis import cost
from labfleet.analysis.noise import UNBIASED_ROLES, Group, Verdict, noise_floors, samples_from_runs
from labfleet.enums import Role, SessionStatus
from labfleet.errors import LabfleetError, PatchError, SessionError
from labfleet.executors.base import Executor, Finished, Job, Worker
from labfleet.harness import RunRequest
from labfleet.ledger import Ledger
from labfleet.records import Decision, Experiment, Proposal, Result, Run, RunStatus, SessionState
from labfleet.researchers.base import Researcher
from labfleet.sandbox import UNBOXED_PREFIX
from labfleet.scheduler import (
    Baseline,
    Discard,
    Fail,
    Keep,
    Queue,
    Repeat,
    Snapshot,
    Validate,
    Wait,
    becomes_lead,
    champion_metrics,
    class_noise,
    compared,
    decide,
    decide_baseline,
    hardware_offset,
    judge_on,
    last_end,
    lead_snapshot,
    may_start,
    place,
    plan_beside_validation,
    plan_calibration,
    plan_champion_calibration,
    plan_noise_fill,
    rank_winners,
    role_allows,
    starts_left,
    still_leads,
    stop_reason,
)
from labfleet.scheduler.base import ROLE_PRIORITY, VALIDATION_SEED_OFFSET  # noqa: F401 - re-exported
from labfleet.scheduler.deciding import CONFIRM_SEED_OFFSET
from labfleet.scheduler.proposing import (
    DEFAULT_WAITS,
    Proposer,
    RunRate,
    ThreadProposer,
    VirtualProposer,
    pipeline_depth,
    runs_due,
)
from labfleet.session.config import SessionConfig
from labfleet.session.mirror import SessionMirror
from labfleet.target import DEFAULT_TIERS, Target, Tiers, format_value, knob_patch, render_knobs

BRANCH_PREFIX = "labfleet/s"
TICK_SECONDS = 0.02


@dataclass(frozen=True)
class Event:
    """What the loop tells its caller (the CLI prints these as progress)."""

    kind: str  # started, finished, kept, rejected, lost, stopped, ...
    message: str
    experiment: Experiment | None = None
    run: Run | None = None


def start_session(target: Target, ledger: Ledger, config: SessionConfig) -> int:
    """Record a new session: the lineage branch at HEAD and the baseline experiment, queued."""
    repo = target.root
    dirty = target.uncommitted()
    if dirty:
        raise SessionError(f"the target has uncommitted changes ({', '.join(dirty[:3])}): commit or stash them first")
    frozen.check(target)  # pins the frozen files on first use; refuses changed ones
    head = workspace.resolve(repo)
    hashes = workspace.commit_file_hashes(repo, head, target.spec.frozen)
    session_id = ledger.create_session(
        target.spec.name, config.researcher, config.to_json(), BRANCH_PREFIX, head, hashes
    )
    session = ledger.session(session_id)
    assert session is not None
    workspace.update_ref(repo, f"refs/heads/{session['branch']}", head)
    knobs = target.read_knobs({f: workspace.show_file(repo, head, f) for f in _knob_files(target)})
    exp_id, _ = ledger.add_experiment(
        session_id, parent_id=None, commit=head, patch="", description="baseline", hypothesis="",
        knobs=knobs, tags={"role": "baseline"}, seed=config.seed,
        budget_seconds=config.budget_seconds or target.spec.budget_seconds, decision=Decision.PENDING,
    )
    ledger.event(session_id, "session_started", base=head, researcher=config.researcher)
    return session_id


def queue_validation(ledger: Ledger, target: Target, exp_id: int, reason: str, runs: int | None = None) -> Experiment:
    """Queue validation runs (new seeds, validate-tier workers, placed before any screening).

    The session's loop and ``labfleet promote`` both come here; the experiment is
    decided again, on its validation runs, once they are all final. ``runs``: how many
    to queue now (default [tiers.validate] repeats); the session queues one under the
    noise-aware rule and adds seeds only while the result is within the noise
    (``scheduler.decide``), so the scarce validate class decides clear winners in one run.
    """
    exp = ledger.experiment(exp_id)
    repeats = (target.config.tiers or DEFAULT_TIERS).validate_.repeats if runs is None else runs
    ledger.reopen(exp_id)
    for k in range(repeats):
        ledger.queue_run(exp.session_id, exp_id, seed=exp.seed + VALIDATION_SEED_OFFSET + k, role=Role.VALIDATE)
    ledger.event(exp.session_id, "promoted", experiment=exp_id, reason=reason)
    return exp


def _knob_files(target: Target) -> set[str]:
    return {k.file for k in target.knobs.values()}


@dataclass
class _Champion:
    experiment: Experiment | None = None
    metric: float | None = None


@dataclass
class SessionLoop:
    target: Target
    ledger: Ledger
    executor: Executor
    researcher: Researcher
    session_id: int
    config: SessionConfig
    state_dir: Path
    on_event: Callable[[Event], None] = lambda event: None
    clock: Callable[[], float] = time.time
    tick: float = TICK_SECONDS  # the longest idle wait (the simulator's virtual clock jumps instead)
    # The researcher off the loop (None: a thread per call on a real clock, virtual
    # latency 0 on the simulator's clock). Its failures back proposing off: the first
    # and longest pause, seconds; the session neither ends nor loses anything.
    proposer: Proposer | None = None
    outage_waits: tuple[float, float] = DEFAULT_WAITS
    # With an executor that never reads versions (the simulator), knob-only experiments are
    # hashed in-process (``workspace.LazyCommits``) and written when something reads them;
    # at the end the unread ones are written too (True) or left (False: a throw-away clone).
    write_unread: bool = True
    # runtime state, rebuilt from the ledger on start
    busy: dict[str, int] = field(default_factory=dict)  # worker id -> run id
    champion: _Champion = field(default_factory=_Champion)
    # with [tiers]: the provisional lead, a screened winner still under validation (never kept
    # until validated; the researcher proposes around it and screens are judged against it)
    lead: _Champion = field(default_factory=_Champion)
    # The researcher had nothing to propose: ask again only after a new result (a new
    # champion may open new ideas); with nothing left running, the session ends.
    researcher_idle: bool = False
    stop_reason: str = ""

    def __post_init__(self) -> None:
        session = self.ledger.session(self.session_id)
        if session is None:
            raise SessionError(f"no session {self.session_id} in the ledger")
        self.session = session
        self.branch: str = session["branch"]
        self.frozen_hashes: dict[str, str] = json.loads(session["frozen_hashes"])
        self.workers: dict[str, Worker] = {w.id: w for w in self.executor.workers()}
        self.ledger.set_workers(self.session_id, self.workers.values())
        self.tiers: Tiers | None = self.target.config.tiers
        # indexes kept beside ``busy`` so that no event costs a pass over the fleet
        self._worker_list = list(self.workers.values())
        self._index = {w.id: i for i, w in enumerate(self._worker_list)}
        self._free = list(range(len(self._worker_list)))  # indexes of workers not busy, in fleet order
        self._run_worker: dict[int, str] = {}  # run id -> worker id (``busy`` reversed)
        self._all_available = type(self.executor).available is Executor.available  # no slot ever goes away
        self._classes = tuple(dict.fromkeys(w.hardware for w in self._worker_list))
        self._screeners = {w.id for w in self._worker_list if self._role_allows("screen", w.hardware)
                           or (self._backfill and self._role_allows("validate", w.hardware))}
        self._group_order: dict[Group, int] = {}  # noise groups in the order samples first had them
        self._repeated: set[Group] = set()  # groups with at least two samples (the only ones noise reads)
        self._proposed = (0, 0)  # (experiments counted, the highest id counted)
        self._baseline_id: int | None = None
        # the researcher's history, pending, screened and patience, kept from this loop's writes
        self.mirror = SessionMirror(self.ledger, self.session_id)
        self._cancels_at: tuple[int, int] | None = None  # (data_version, own cancels) cancel flags were read at
        # metrics of done runs that differ only by seed: the noise floor and the
        # champion's per-class figures come from here (rebuilt from the ledger in recover)
        self.samples: dict[Group, list[float]] = {}
        self.unbiased: dict[Group, list[float]] = {}  # the subset not chosen for looking good
        self._noise: dict[str, float] | None = None  # class -> sd, cached until the next result
        if self.proposer is None:
            if hasattr(self.clock, "advance_to"):  # the simulator's virtual clock: deterministic
                self.proposer = VirtualProposer(self.researcher, self.clock, self.outage_waits,
                                                calls=self.config.researcher_calls)
            else:
                self.proposer = ThreadProposer(self.researcher, self.clock, self.outage_waits,
                                               calls=self.config.researcher_calls,
                                               timeout=self.config.researcher_timeout)
        self._asked = 0  # proposals asked for by calls still in flight
        self._proposals: list[Proposal] = []  # answered, not yet materialized (a commit each)
        self._rate = RunRate()  # the mean run time the pipeline is sized from
        # --hours: when the session ends; no run of any role starts after it
        self._end: float | None = (self.session["created_at"] + self.config.hours * 3600
                                   if self.config.hours is not None else None)
        self._last_end: float | None = None  # when the last run should end (scheduler.last_end), chosen near --hours
        self._unboxed_said = False
        self.lazy: workspace.LazyCommits | None = None
        # Runs that never leave this process (the simulator) need no commit per ledger write:
        # a step's writes are one transaction (a kill loses at most that step of a simulation).
        self._batch_steps = not getattr(self.executor, "reads_commits", True)
        if not getattr(self.executor, "reads_commits", True):
            self.lazy = workspace.LazyCommits(self.target.root, lambda path, text, values: render_knobs(text, values, path))

    # ----------------------------------------------------------------- the loop

    def run(self) -> str:
        """Run until a limit is reached and nothing is left running; returns why it stopped."""
        self.ledger.set_session_status(self.session_id, SessionStatus.RUNNING)
        self.recover()
        assert self.proposer is not None
        try:
            while True:
                if self._batch_steps:
                    with self.ledger.batch():  # the simulator: one ledger commit per step
                        progressed = self.step()
                else:
                    progressed = self.step()
                if self.finished():
                    break
                if not progressed:
                    now = self.clock()
                    due = self.next_due(now)
                    self.executor.wait(self.tick if due is None else max(0.0, min(self.tick, due - now)))
            self.decide_leftovers()
        except BaseException:
            self.interrupt()
            raise
        finally:
            self.proposer.close()
            if self.lazy is not None:
                self.lazy.close(write_all=self.write_unread)
        self.executor.close()  # nothing runs any more: release the fleet (SkyPilot tears its clusters down)
        self.ledger.set_session_status(self.session_id, SessionStatus.FINISHED)
        self.ledger.event(self.session_id, "session_finished", reason=self.stop_reason)
        self.on_event(Event("finished", self.stop_reason))
        return self.stop_reason

    def next_due(self, now: float) -> float | None:
        """The next time the loop has something to do besides a run's end (the executor wakes for those):
        a researcher's answer or retry, a running run falling due (the pipeline counts it from then),
        the session's end."""
        assert self.proposer is not None
        times = [t for t in (self.proposer.next_event(now), self._end) if t is not None and t > now]
        if self.proposer.latency > 0 and self.proposer.can_ask(now) and not self.stop_reason \
                and not self.researcher_idle:  # the pipeline counts running runs due only with a latency
            run_seconds = self.run_seconds()
            times += [r["started_at"] + run_seconds for r in self.ledger.run_rows(self.session_id, ["running"])
                      if r["started_at"] is not None and r["started_at"] + run_seconds > now]
        return min(times) if times else None

    def past_end(self, now: float | None = None) -> bool:
        """--hours has passed: nothing more starts (queued runs are dropped, pending winners decided)."""
        return self._end is not None and (self.clock() if now is None else now) >= self._end

    def run_seconds(self) -> float:
        return self._rate.seconds or (self.config.budget_seconds or self.target.spec.budget_seconds)

    def step(self) -> bool:
        """One tick: collect finished runs, place queued ones, take answers, ask the researcher."""
        progressed = False
        if not self.stop_reason:
            self.may_propose()  # --hours first: results collected at the end are decided as the end's
        cancels_at = (self.ledger.data_version(), self.ledger.cancels)
        if cancels_at != self._cancels_at:  # flags come from `labfleet cancel` (another connection) or this one
            self._cancels_at = cancels_at
            for run_id in self.ledger.cancel_requests(self.session_id):
                if run_id in self._run_worker:
                    self.executor.cancel(run_id)
        for finished in self.executor.poll():
            self.collect(finished)
            progressed = True
        if self.past_end():
            progressed |= self.drop_queued()
        progressed |= self.place_queued()
        progressed |= self.fill_with_noise()
        progressed |= self.take_answers()
        if self.ask():
            progressed = True
            self.take_answers()  # zero latency (the simulator without --researcher-latency): at once
        progressed |= self.materialize_next()
        progressed |= self.place_queued()
        return progressed

    def drop_queued(self) -> bool:
        """--hours has passed: queued runs never start; their experiments are decided on what they have."""
        queued = self.ledger.run_rows(self.session_id, ["queued"])
        reason = f"not started: the session reached --hours {self.config.hours:g}"
        for row in queued:
            self.ledger.finish_run(row["id"], RunStatus.CANCELLED, reason=reason)
        if queued:
            self.ledger.event(self.session_id, "queue_dropped", count=len(queued), reason=reason)
        for exp_id in dict.fromkeys(row["experiment_id"] for row in queued):
            self.decide(exp_id)
        return bool(queued)

    def fill_with_noise(self) -> bool:
        """While the researcher's first call is in flight, free workers run more seeds of the baseline."""
        assert self.proposer is not None
        if self.proposer.calls or not self.proposer.in_flight or self.stop_reason or self.past_end():
            return False
        free = self.free_workers()
        if not free or self.proposed_count():  # a resumed session asks again: not its first call
            return False
        base = self.baseline()
        if base is None:
            return False
        self.apply_queue(plan_noise_fill(base, self.ledger.runs_of(base.id), [w.hardware for w in free], self.tiers))
        return self.place_queued()

    def materialize_next(self) -> bool:
        """Record answered proposals as experiments while a worker can take one (a git commit each).

        Real clocks: one per tick while workers are busy, so a run that finishes meanwhile is
        collected and its worker fed from the queue without waiting for a whole batch of commits.
        """
        done = False
        while self._proposals and not self.stop_reason:
            self.materialize(self._proposals.pop(0))
            done = True
            if self.tick != math.inf and not self.free_workers():
                break
        return done

    def wanted(self, queued: int) -> int:
        """Proposals to ask for now: free screening workers plus the pipeline, less what is queued or asked."""
        assert self.proposer is not None
        free = sum(1 for w in self.free_workers() if w.id in self._screeners)
        run_seconds = self.run_seconds()
        latency = self.proposer.latency
        depth = pipeline_depth(self.config.lookahead, latency, len(self._screeners), run_seconds)
        end, now = self._end, self.clock()
        started: list[float] = []
        if latency > 0 or end is not None:
            ids = self._screeners
            started = [r["started_at"] for r in self.ledger.run_rows(self.session_id, ["running"])
                       if r["worker"] in ids and r["started_at"] is not None]
        if latency > 0:  # bursts: the runs that end before the answer after next, from their start times
            due = runs_due(started, now, run_seconds, latency, until=end)
            near_end = end is not None and end - now < 2 * latency
            depth = self.config.lookahead + due if near_end else max(depth, self.config.lookahead + due)
        want = free + depth
        room = starts_left(now, end, run_seconds, started, free, self.last_end(now))
        if room is not None:  # near --hours: nothing queued that could not start before the end
            want = min(want, room)
        return want - queued - self._asked - len(self._proposals)

    def ask(self) -> bool:
        """Start a researcher call when the pipeline runs low (never one per freed worker)."""
        assert self.proposer is not None
        if self.researcher_idle or not self.proposer.can_ask(self.clock()):
            return False
        queued = self.ledger.count_runs(self.session_id, ["queued"])
        n = self.wanted(queued)
        if self.config.max_experiments is not None:
            n = min(n, self.config.max_experiments - self.proposed_count() - self._asked - len(self._proposals))
        if n <= 0 or not self.may_propose():
            return False
        self._asked += n
        self.proposer.ask(self.state(), n, self.clock())
        return True

    def take_answers(self) -> bool:
        """Finished researcher calls: usage to the ledger, proposals materialized (queued)."""
        assert self.proposer is not None
        answers, notes = self.proposer.answers(self.clock())
        for note in notes:
            self.ledger.event(self.session_id, "researcher_timeout", note=note)
            self.on_event(Event("researcher_error", note))
        progressed = False
        for answer in answers:
            if not answer.late:
                self._asked = max(0, self._asked - answer.asked)
            for call in answer.usage:
                self.ledger.event(self.session_id, "llm_call", **call)
            self.ledger.event(self.session_id, "researcher_call", asked=answer.asked, got=len(answer.proposals),
                              seconds=round(answer.seconds, 3), error=answer.error, late=answer.late)
            if answer.failed:
                what = answer.error or f"model call failed: {answer.usage[-1].get('error', '')}"
                kind = "llm_error" if not answer.error else "researcher_error"
                self.on_event(Event(kind, f"{what}; proposing paused for {self.proposer.backoff:.0f} s"))
            proposals = list(answer.proposals)
            if self.stop_reason:
                if proposals:
                    self.ledger.event(self.session_id, "proposals_dropped", count=len(proposals),
                                      reason=self.stop_reason)
                continue
            if self.config.max_experiments is not None:
                room = self.config.max_experiments - self.proposed_count() - len(self._proposals)
                proposals = proposals[: max(0, room)]
            if not proposals and not answer.failed and not answer.late:
                self.researcher_idle = True
            self._proposals += proposals
            progressed |= bool(proposals)
        return progressed

    def finished(self) -> bool:
        if self.may_propose() or (self._proposals and not self.stop_reason):
            return False
        return self.ledger.count_runs(self.session_id, ["queued", "running"]) == 0

    def may_propose(self) -> bool:
        cfg = self.config
        if self.stop_reason:
            return False
        assert self.proposer is not None
        pending_call = self.proposer.in_flight > 0 or self.proposer.backing_off(self.clock())
        limits = cfg.limits
        reason = stop_reason(
            limits, direction=self.target.spec.direction, proposed=self.proposed_count(),
            elapsed_seconds=self.clock() - self.session["created_at"], champion_metric=self.champion.metric,
            decided_since_keep=self.mirror.since_keep() if cfg.patience is not None else 0,
            fleet_usd=cost.fleet_usd(self.ledger.worker_costs(self.session_id, self.clock())) if cfg.max_usd is not None else 0.0,
            researcher_done=self.researcher_idle and not pending_call,
            active_runs=self.ledger.count_runs(self.session_id, ["queued", "running"]) if self.researcher_idle else 1,
        )
        if reason:
            self.stop_reason = reason
            self.ledger.event(self.session_id, "stop_proposing", reason=reason)
            self.on_event(Event("stopping", f"{reason}; waiting for running experiments"))
            if self.tiers is not None:
                self.promote_waiting()  # winding down: every waiting winner still gets decided
            return False
        return True

    def proposed_count(self) -> int:
        """Experiments proposed so far, the baseline not counted (counted on from the last call)."""
        counted, last = self._proposed
        more, last = self.ledger.proposed_since(self.session_id, last)
        self._proposed = (counted + more, last)
        return counted + more

    def interrupt(self) -> None:
        """Ctrl-C or an error: stop local runs and queue them again for a resume."""
        running = self.executor.running()
        self.executor.close()
        for run_id in running:
            self.ledger.finish_run(run_id, RunStatus.LOST, reason="orchestrator interrupted", retry=True)
        self.ledger.set_session_status(self.session_id, SessionStatus.STOPPED)
        self.ledger.event(self.session_id, "session_stopped", requeued=len(running))

    def decide_leftovers(self) -> None:
        """Nothing runs any more: an experiment still pending (a winner no validate worker
        could take, e.g. the fleet lost that class) is discarded, saying why, never left pending."""
        for exp in self.ledger.experiments(self.session_id):
            if exp.decision != Decision.PENDING or exp.parent_id is None:
                continue
            done = [r for r in self.ledger.runs_of(exp.id) if r.status == RunStatus.DONE and r.metric is not None]
            metric = _avg([r.metric for r in done]) if done else None  # type: ignore[misc]
            self.ledger.decide(exp.id, Decision.DISCARDED if done else Decision.FAILED, metric)
            reason = "the session ended before it could be validated"
            self.ledger.event(self.session_id, "undecided_at_end", experiment=exp.id, reason=reason)
            self.on_event(Event("discarded", f"e{exp.id} discarded: {reason}  [{exp.description}]", exp))

    # ----------------------------------------------------------------- snapshots

    def snapshot(self) -> Snapshot:
        """The scheduler's frozen view of the session (decisions are pure functions of it)."""
        cfg = self.config
        return Snapshot(
            direction=self.target.spec.direction, champion=self.champion.experiment,
            champion_metric=self.champion.metric, samples=self.samples, unbiased=self.unbiased,
            classes=self._classes, tiers=self.tiers,
            keep=cfg.keep, z=cfg.z, margin=cfg.margin, confirm_repeats=cfg.confirm_repeats,
            winding_down=bool(self.stop_reason), ended=self.past_end(),
        )

    def noise(self) -> dict[str, float]:
        if self._noise is None:  # only repeated groups carry noise: those, in the order samples has them
            repeated = sorted(self._repeated, key=self._group_order.__getitem__)
            self._noise = class_noise(noise_floors({k: self.samples[k] for k in repeated}))
        return self._noise

    def _track_groups(self) -> None:
        """Index the noise groups of ``samples`` (after ``recover`` rebuilt it)."""
        self._group_order = {key: i for i, key in enumerate(self.samples)}
        self._repeated = {key for key, values in self.samples.items() if len(values) >= 2}

    # ----------------------------------------------------------------- recovery

    def recover(self) -> None:
        """Rebuild runtime state from the ledger; adopt runs an earlier orchestrator started."""
        for exp in self.ledger.experiments(self.session_id):
            if exp.decision == Decision.BASELINE or exp.decision == Decision.KEPT:
                self.champion = _Champion(exp, exp.metric)
        runs = self.ledger.runs(self.session_id)
        self.samples = samples_from_runs(runs)
        self.unbiased = samples_from_runs(runs, UNBIASED_ROLES)
        self._noise = None
        self._track_groups()
        base = self.baseline()
        for key, values in self.samples.items():  # nothing chose the baseline's seeds
            if base is not None and key[0] == base.id:
                self.unbiased[key] = values
        self.plan_calibration()
        for row in self.ledger.run_rows(self.session_id, ["running"]):
            worker = row["worker"]
            if worker not in self.workers or worker in self.busy:
                # the fleet changed since: the run cannot be followed on a known slot
                job = self._job(row, self.workers[next(iter(self.workers))])
                self.executor.adopt(job, row["handle"] or "")
                continue
            self._occupy(worker, row["id"])
            self.executor.adopt(self._job(row, self.workers[worker]), row["handle"] or "")
            self.ledger.event(self.session_id, "run_adopted", run=row["id"], worker=worker)
        # experiments whose runs were recorded but whose decision was not
        for exp in self.ledger.experiments(self.session_id):
            if exp.decision == Decision.PENDING:
                self.decide(exp.id)

    def plan_calibration(self) -> None:
        """Queue the baseline on every hardware class, with extra seeds to measure the noise.

        Idempotent (it counts the runs already there), so a resume adds nothing twice.
        """
        base = self.baseline()
        if base is None:
            return
        want = 1 + (self.config.noise_repeats if self.config.keep == "noise" else 0)
        pin, queue = plan_calibration(base, self.ledger.runs_of(base.id), [w.hardware for w in self.workers.values()],
                                      self.tiers, want)
        if pin is not None:
            self.ledger.pin_run(*pin)
        self.apply_queue(queue)

    def apply_queue(self, queue: list[Queue]) -> None:
        for q in queue:
            self.ledger.queue_run(self.session_id, q.experiment_id, seed=q.seed, role=q.role, place_on=q.place_on)

    # ----------------------------------------------------------------- collecting

    def collect(self, finished: Finished) -> None:
        run_row = self.ledger.run_row(finished.run_id)
        self.researcher_idle = False
        self._release(finished.run_id)
        if run_row is None or run_row["status"] != "running":
            return  # already final (e.g. recorded before a restart): never count twice
        exp_id = run_row["experiment_id"]
        result = finished.result
        if result is None and run_row["cancel"]:
            self.ledger.finish_run(finished.run_id, RunStatus.CANCELLED, reason="cancelled")
            self.on_event(Event("cancelled", f"e{exp_id} cancelled on {finished.worker_id}"))
            self.decide(exp_id)
            return
        if result is None:
            self._count_end(run_row, self.clock())
            retry = run_row["attempt"] < self.config.max_attempts
            self.ledger.finish_run(finished.run_id, RunStatus.LOST, reason=finished.reason, retry=retry)
            self.ledger.event(self.session_id, "run_lost", run=finished.run_id, reason=finished.reason, retry=retry)
            self.on_event(Event("lost", f"e{exp_id} lost on {finished.worker_id}: {finished.reason}"
                                + ("; retrying" if retry else "; giving up")))
            if not retry:
                self.decide(exp_id)
            return
        self.ledger.finish_run(
            finished.run_id, RunStatus.from_outcome(result.outcome), metric=_finite(result.metric),
            figures=result.figures, reason=result.reason, ended_at=result.ended_at,
        )
        unboxed = next((f for f in result.flags if f.startswith(UNBOXED_PREFIX)), None)
        if unboxed and not self._unboxed_said:  # said once per session, loudly, in status and the report
            self._unboxed_said = True
            if not self.ledger.events_of(self.session_id, "runs_unboxed"):
                self.ledger.event(self.session_id, "runs_unboxed", run=finished.run_id, warning=unboxed)
                self.on_event(Event("warning", f"WARNING: {unboxed}"))
        row = self.ledger.run_row(finished.run_id)
        if row is not None:
            run = row.record()
            self._count_end(run_row, run.ended_at)
            if self._baseline_id is None:  # the baseline never changes: its id is read once
                base = self.baseline()
                self._baseline_id = base.id if base is not None else None
            for key, values in samples_from_runs([run]).items():
                self._group_order.setdefault(key, len(self._group_order))
                self.samples.setdefault(key, []).extend(values)
                if len(self.samples[key]) >= 2:  # only repeated groups carry noise: a new single one changes nothing
                    self._repeated.add(key)
                    self._noise = None
                if run.role in UNBIASED_ROLES or key[0] == self._baseline_id:
                    self.unbiased.setdefault(key, []).extend(values)
        self.decide(exp_id)

    def _count_end(self, run_row: Any, ended_at: float | None) -> None:
        """Every run end sizes the pipeline (any role, crashes and losses too: each frees a worker)."""
        if run_row["started_at"] is not None and ended_at is not None and run_row["worker"]:
            self._rate.add(run_row["worker"], ended_at - run_row["started_at"])

    def decide(self, exp_id: int) -> None:
        """Ask the scheduler about an experiment whose runs are final, and apply its decision."""
        exp = self.ledger.experiment(exp_id)
        runs = self.ledger.runs_of(exp_id)
        if exp.parent_id is None:
            self._decide_baseline(exp, runs)
            return
        confirmed = snap = self.snapshot()
        if not any(r.role == Role.VALIDATE and r.status == RunStatus.DONE for r in runs):
            snap = lead_snapshot(snap, self.lead.experiment, self.lead.metric)  # screens: against the lead
        decision = decide(snap, exp, runs, self.noise())
        if isinstance(decision, Keep) and snap is not confirmed:
            # a confirmation keeps only if it beats the confirmed champion too, not only the provisional lead
            again = decide(confirmed, exp, runs, self.noise())
            decision = again if isinstance(again, Keep) else Validate(decision.verdict, decision.run)
        if isinstance(decision, Wait):
            return
        if isinstance(decision, Fail):
            run = decision.run
            self.ledger.decide(exp_id, Decision.FAILED, None)
            self.on_event(Event("failed", f"e{exp_id} {run.status}: {run.reason}  [{exp.description}]", exp, run))
            self.tell(Result(self.ledger.experiment(exp_id), run))
            return
        if isinstance(decision, Validate):
            lead = self.lead.experiment
            beats = lead is not None and still_leads(self.snapshot(), runs, self.noise())
            if self.config.provisional and becomes_lead(snap, decision, beats):
                self.take_lead(exp)
            self.await_validation(exp, decision.verdict)
            return
        if isinstance(decision, Repeat):
            verdict = decision.verdict
            self.ledger.queue_run(self.session_id, exp_id, seed=decision.seed, role=decision.role,
                                  place_on=decision.place_on)
            self.apply_queue(list(decision.extra))
            self.ledger.event(self.session_id, "confirming", experiment=exp_id, gain=verdict.improvement,
                              threshold=verdict.threshold)
            if decision.role == Role.CONFIRM:
                metric = decision.run.metric
                self.on_event(Event("confirming", f"e{exp_id} {self._fmt(metric)} within noise"
                                    f" ({verdict.improvement:+.4f} < {verdict.threshold:.4f}): repeating"
                                    f"  [{exp.description}]", exp, decision.run))
            return
        if isinstance(decision, Keep):
            self.keep(exp, decision.metric, decision.verdict, decision.run)
        elif isinstance(decision, Discard):
            self.discard(exp, decision)
        self.tell(Result(self.ledger.experiment(exp_id), decision.run))  # type: ignore[attr-defined]
        if self.tiers is not None:
            self.promote_waiting()

    def discard(self, exp: Experiment, decision: Discard) -> None:
        self.ledger.decide(exp.id, Decision.DISCARDED, decision.metric)
        if self.lead.experiment is not None and self.lead.experiment.id == exp.id:
            self.lead = _Champion()  # validation did not confirm it: back to the confirmed champion
            self.ledger.event(self.session_id, "lead_reverted", experiment=exp.id,
                              champion=self.champion.experiment.id if self.champion.experiment else None)
            self.on_event(Event("reverted", f"e{exp.id} not confirmed: the lead goes back to the champion", exp))
        gain = decision.verdict.improvement
        why = decision.reason or f"{-gain if self._minimize else gain:+.4f}"
        self.on_event(Event("discarded", f"e{exp.id} {self._fmt(decision.metric)} discarded ({why})"
                            f"  [{exp.description}]", exp, decision.run))

    def _decide_baseline(self, exp: Experiment, runs: list[Run]) -> None:
        """The baseline counts from its first done run; its other runs measure noise and hardware."""
        decision = decide_baseline(exp, runs)
        if isinstance(decision, Wait):
            return
        if isinstance(decision, Fail):
            run = decision.run
            raise SessionError(
                f"the baseline run {run.status}: {run.reason or 'see ' + str(run.log_path)} "
                "(fix the target, commit, and start again with `labfleet run --new`)"
            )
        assert isinstance(decision, Baseline)
        if decision.refine:
            # a later seed on the first run's class: the baseline's figure becomes their mean
            self.ledger.set_metric(exp.id, decision.metric)
            if self.champion.experiment is not None and self.champion.experiment.id == exp.id:
                self.champion = _Champion(self.ledger.experiment(exp.id), decision.metric)
            return
        run = decision.run
        self.ledger.decide(exp.id, Decision.BASELINE, run.metric)
        exp = self.ledger.experiment(exp.id)
        self.champion = _Champion(exp, run.metric)
        self.on_event(Event("baseline", f"baseline {self._fmt(run.metric)}", exp, run))
        self.tell(Result(exp, run))
        for other in self.ledger.experiments(self.session_id):  # results that waited for it
            if other.decision == Decision.PENDING and other.id != exp.id:
                self.decide(other.id)

    def judge(self, metrics: list[float], hardware: str, budget: float) -> Verdict:
        return judge_on(self.snapshot(), metrics, hardware, budget, self.noise())

    def keep(self, exp: Experiment, metric: float, verdict: Verdict, run: Run) -> None:
        previous = self.champion.metric
        self.ledger.decide(exp.id, Decision.KEPT, metric)
        exp = self.ledger.experiment(exp.id)
        workspace.advance_branch(
            self.target.root, self.branch, exp.commit,
            f"keep e{exp.id}: {exp.description} ({self.target.spec.metric} {metric:.6f})",
        )
        self.champion = _Champion(exp, metric)
        self.calibrate_champion(exp)
        lead = self.lead.experiment
        if lead is not None and (lead.id == exp.id
                                 or not still_leads(self.snapshot(), self.ledger.runs_of(lead.id), self.noise())):
            self.lead = _Champion()  # confirmed, or the new champion has passed it
        self.ledger.event(self.session_id, "kept", experiment=exp.id, metric=metric, previous=previous,
                          gain=verdict.improvement, threshold=verdict.threshold, se=verdict.se)
        self.on_event(Event("kept", f"e{exp.id} {self._fmt(metric)} KEPT"
                            f" ({-verdict.improvement if self._minimize else verdict.improvement:+.4f})"
                            f"  [{exp.description}]", exp, run))

    def calibrate_champion(self, exp: Experiment) -> None:
        """One fresh-seed run of a new champion on every class it has no unbiased run on."""
        budgets: dict[str, float] = {role: self.run_budget(exp, role) for role in (Role.CALIBRATE, Role.VALIDATE)}
        # a class where its calibration as the lead is still queued or running gets no second one
        active = {r.place_on for r in self.ledger.runs_of(exp.id) if r.role == Role.CALIBRATE and not r.status.final}
        classes = [w.hardware for w in self.workers.values() if w.hardware not in active]
        self.apply_queue(plan_champion_calibration(exp, classes, self.tiers, self.unbiased, budgets))

    # ----------------------------------------------------------------- tiers

    def await_validation(self, exp: Experiment, verdict: Verdict) -> None:
        """A screened winner: validate it now if a validation slot is free, else it waits."""
        self.ledger.event(self.session_id, "screen_winner", experiment=exp.id, gain=verdict.improvement)
        self.promote_waiting()

    def take_lead(self, exp: Experiment) -> None:
        """A screened winner beyond the screen noise leads now (proposals around it, screens judged
        against it); it is validated first, and only validation keeps it."""
        runs = [r for r in self.ledger.runs_of(exp.id) if r.status == RunStatus.DONE and r.metric is not None]
        _, _, metrics = compared(runs)
        self.lead = _Champion(exp, _avg(metrics))
        self.ledger.event(self.session_id, "lead", experiment=exp.id, metric=self.lead.metric)
        self.on_event(Event("lead", f"e{exp.id} {self._fmt(self.lead.metric)} leads until validated"
                            f"  [{exp.description}]", exp))
        self.promote(exp.id, "provisional lead")
        budgets: dict[str, float] = {role: self.run_budget(exp, role) for role in (Role.CALIBRATE, Role.VALIDATE)}
        screen = [w.hardware for w in self.workers.values() if self._role_allows(Role.SCREEN, w.hardware)]
        self.apply_queue(plan_champion_calibration(exp, screen, self.tiers, self.unbiased, budgets))

    def promote(self, exp_id: int, reason: str = "screened winner") -> None:
        exp = queue_validation(self.ledger, self.target, exp_id, reason, runs=1 if self.config.keep == "noise" else None)
        if self.config.keep == "noise":
            self.apply_queue(plan_beside_validation(exp, self.ledger.runs_of(exp_id), self.tiers))
        self.on_event(Event("promoted", f"e{exp_id} promoted to validation ({reason})  [{exp.description}]", exp))

    def validation_slots(self) -> int:
        """Winners under validation at once: [tiers.validate] promote, or enough to fill the validate class."""
        assert self.tiers is not None
        fast = sum(1 for w in self.workers.values() if self._role_allows(Role.VALIDATE, w.hardware))
        per_winner = 1 if self.config.keep == "noise" else self.tiers.validate_.repeats  # see promote
        return max(self.tiers.validate_.promote, math.ceil(fast / per_winner))

    def promote_waiting(self) -> None:
        """Rank the waiting screened winners; promote the best, drop the passed, confirm the rest cheaply."""
        assert self.tiers is not None
        waiting = self.ledger.awaiting_validation(self.session_id)
        if not waiting:
            return
        slots = self.validation_slots() - self.ledger.validations_in_flight(self.session_id)
        snap = self.snapshot()
        pairs = [(self.ledger.experiment(i), self.ledger.runs_of(i)) for i in waiting]
        promote, discards, confirms = rank_winners(snap, pairs, slots, self.noise(), confirm=self.config.backfill)
        for exp_id, discard in discards:
            exp = self.ledger.experiment(exp_id)
            self.ledger.event(self.session_id, "winner_dropped", experiment=exp_id, reason=discard.reason)
            self.discard(exp, discard)
            self.tell(Result(self.ledger.experiment(exp_id), discard.run))
        for exp_id in promote:
            self.promote(exp_id)
        for q in confirms:
            self.ledger.queue_run(self.session_id, q.experiment_id, seed=q.seed, role=q.role, place_on=q.place_on)
            self.ledger.event(self.session_id, "confirming", experiment=q.experiment_id, reason="waiting for validation")

    @property
    def _backfill(self) -> bool:
        return self.tiers is not None and self.config.backfill

    def _role_allows(self, role: str, hardware: str) -> bool:
        """Whether a run of ``role`` may run on ``hardware`` under the [tiers] classes."""
        return role_allows(self.tiers, role, hardware)

    def run_budget(self, exp: Experiment, role: str) -> float:
        """The tier's budget when [tiers] sets one, else the experiment's."""
        if self.tiers is not None:
            tier = self.tiers.validate_ if role == Role.VALIDATE else self.tiers.screen
            if tier.budget_seconds is not None:
                return tier.budget_seconds
        return exp.budget_seconds

    def tell(self, result: Result) -> None:
        """researcher.observe (through the proposer), building the snapshot only for researchers that use it."""
        assert self.proposer is not None
        if self.proposer.wants_observe:
            self.proposer.tell(self.state(), result)

    def champion_metrics(self, hardware: str, budget: float) -> list[float]:
        """The champion's metrics on ``hardware`` at ``budget`` (see ``scheduler.champion_metrics``)."""
        return champion_metrics(self.snapshot(), hardware, budget)

    def hardware_offset(self, hardware: str, other: str, budget: float) -> float | None:
        """Mean metric on ``hardware`` minus on ``other`` over experiments run on both (unbiased runs)."""
        return hardware_offset(self.unbiased, hardware, other, budget)

    @property
    def _minimize(self) -> bool:
        return self.target.spec.direction == "minimize"

    def _fmt(self, metric: float | None) -> str:
        return f"{self.target.spec.metric} {metric:.6f}" if metric is not None else "-"

    # ----------------------------------------------------------------- placing

    def free_workers(self) -> list[Worker]:
        if self._all_available:
            return [self._worker_list[i] for i in self._free]
        alive = {w.id for w in self.executor.available()}
        return [w for w in (self._worker_list[i] for i in self._free) if w.id in alive]

    def _occupy(self, worker_id: str, run_id: int) -> None:
        self.busy[worker_id] = run_id
        self._run_worker[run_id] = worker_id
        index = self._index[worker_id]
        at = bisect.bisect_left(self._free, index)
        if at < len(self._free) and self._free[at] == index:
            del self._free[at]

    def _release(self, run_id: int) -> None:
        worker_id = self._run_worker.pop(run_id, None)
        if worker_id is not None and self.busy.get(worker_id) == run_id:
            del self.busy[worker_id]
            bisect.insort(self._free, self._index[worker_id])

    def last_end(self, now: float) -> float | None:
        """Within a run of --hours: when the session's last run should end (chosen once, from the
        workers' expected free times); a run that would end after it is not started."""
        if self._end is None or self._last_end is not None or now < self._end - self.run_seconds():
            return self._last_end
        run_seconds = self.run_seconds()
        frees = [max(now, r["started_at"] + run_seconds) for r in self.ledger.run_rows(self.session_id, ["running"])
                 if r["started_at"] is not None]
        frees += [now] * (len(self.workers) - len(frees))
        self._last_end = last_end(frees, self._end, run_seconds)
        self.ledger.event(self.session_id, "last_end", at=round(self._last_end - self.session["created_at"], 1))
        return self._last_end

    def place_queued(self) -> bool:
        free = self.free_workers()
        if not free or self.past_end():
            return False
        now = self.clock()
        last = self.last_end(now)
        if last is not None:
            if not may_start(now, self.run_seconds(), last, len(self.workers)):
                return False  # it would end past the session's last run: the fleet would wait for it
            self._last_end = max(last, now + self.run_seconds())
        queued = self.ledger.run_rows(self.session_id, ["queued"])
        if not queued:
            return False
        by_id = {r["id"]: r for r in queued}
        lead = self.lead.experiment
        placements = place(queued, free, self.tiers, backfill=self._backfill, first=(lead.id,) if lead else ())
        for placement in placements:
            self.place(by_id[placement.run_id], self.workers[placement.worker_id])
        return bool(placements)

    def _job(self, row: Any, worker: Worker, exp: Experiment | None = None) -> Job:
        """The one place a run's Job (and its harness RunRequest) is built."""
        exp = exp or self.ledger.experiment(row["experiment_id"])
        run_dir = Path(row["run_dir"]) if row["run_dir"] else self.run_dir(exp.id, row["id"])
        request = RunRequest(
            target_dir=self.target.root, run_dir=run_dir, commit=exp.commit,
            seed=exp.seed if row["seed"] is None else row["seed"], budget_seconds=self.run_budget(exp, row["role"]),
            device=worker.device, threads=worker.threads, frozen_hashes=self.frozen_hashes,
            holdout=row["role"] in (Role.CALIBRATE, Role.VALIDATE),  # integrity: [holdout] only on kept/validated versions
        )
        return Job(run_id=row["id"], worker_id=worker.id, request=request, knobs=exp.knobs)

    def run_dir(self, exp_id: int, run_id: int) -> Path:
        return self.state_dir / "runs" / f"s{self.session_id}" / f"e{exp_id}-r{run_id}"

    def place(self, row: Any, worker: Worker) -> None:
        exp = self.ledger.experiment(row["experiment_id"])
        job = self._job(row, worker, exp)
        run_dir = job.request.run_dir
        # recorded before the start: a crash right after leaves a row that resume can follow
        self.ledger.mark_running(
            row["id"], worker=worker.id, hardware=worker.hardware, run_dir=str(run_dir),
            log_path=str(run_dir / "run.log"), budget_seconds=job.request.budget_seconds, experiment_id=exp.id,
        )
        self._occupy(worker.id, row["id"])
        try:
            handle = self.executor.start(job)
        except LabfleetError:
            self._release(row["id"])
            self.ledger.requeue(row["id"])
            raise
        self.ledger.set_handle(row["id"], handle)
        self.on_event(Event("started", f"e{exp.id} started on {worker.id}  [{exp.description}]", exp))

    # ----------------------------------------------------------------- proposing

    def baseline(self) -> Experiment | None:
        return self.ledger.baseline(self.session_id)

    def latest_run(self, exp_id: int) -> Run | None:
        return self.ledger.latest_run(exp_id)

    def state(self) -> SessionState:
        """A frozen snapshot of the ledger for the researcher."""
        history, pending = self.mirror.history(), self.mirror.pending()
        baseline = self.baseline()
        return SessionState(
            session_id=self.session_id, metric=self.target.spec.metric, direction=self.target.spec.direction,
            knobs=self.target.knobs, baseline=baseline,
            champion=self.lead.experiment or self.champion.experiment or baseline,
            history=history, pending=pending, free_workers=len(self.free_workers()),
            seed=self.config.seed, noise=dict(self.noise()),
            since_keep=self.mirror.since_keep(),
            findings=tuple(self.findings(list(history))) if self.researcher.wants_findings else (),
            screened=self.mirror.screened(),
        )

    def history(self) -> tuple[list[Result], list[Experiment]]:
        """``Ledger.history`` as the mirror keeps it (see ``session.mirror``)."""
        return list(self.mirror.history()), list(self.mirror.pending())

    def findings(self, history: list[Result]) -> list[str]:
        """The analysis in sentences: the phase, hardware differences, the latest waves' effects."""
        from labfleet.analysis.effects import session_effects
        from labfleet.analysis.hardware import hardware_report
        from labfleet.analysis.phases import points, progress

        spec = self.target.spec
        groups = {name: knob.group for name, knob in self.target.knobs.items() if knob.group}
        decided = points(self.ledger.experiments(self.session_id), self.ledger.decided_at(self.session_id), groups)
        lines = progress(decided, spec.direction, spec.metric).findings
        lines += hardware_report(self.ledger.runs(self.session_id), metric=spec.metric).findings
        floors = noise_floors(self.samples)
        sd = min((f.sd for f in floors.values()), default=None)
        for tag, effects in list(session_effects(history, noise_sd=sd).items())[-2:]:
            lines += [f"wave {tag}: {line}" for line in effects.describe(spec.metric, spec.direction)]
        return lines

    def materialize(self, proposal: Proposal) -> int:
        """Record a proposal as an experiment: a commit under refs/labfleet/, and a queued run."""
        champion = self.lead.experiment or self.champion.experiment or self.baseline()
        parent = self.ledger.experiment(proposal.parent) if proposal.parent is not None else champion
        assert parent is not None
        exp_id, error = materialize(self.target, self.ledger, self.session_id, proposal, parent, self.config,
                                    lazy=self.lazy)
        if error:
            self.on_event(Event("rejected", f"e{exp_id} rejected: {error}  [{proposal.description}]"))
        elif self.tiers is not None and proposal.tags.get("tier") == Role.VALIDATE and self.config.keep == "noise":
            # validated at once: a screen-class confirmation runs beside its validation seed (pooled)
            screen = [c for c in self._classes if self._role_allows(Role.SCREEN, c)
                      and not self._role_allows(Role.VALIDATE, c)]
            if screen:
                exp = self.ledger.experiment(exp_id)
                self.apply_queue([Queue(exp_id, exp.seed + CONFIRM_SEED_OFFSET, Role.CONFIRM, screen[0])])
        return exp_id


def materialize(
    target: Target, ledger: Ledger, session_id: int, proposal: Proposal, parent: Experiment, config: SessionConfig,
    lazy: workspace.LazyCommits | None = None,
) -> tuple[int, str]:
    """A proposal as an experiment: its commit (parent + patch + knob values), and a queued run.

    Returns the experiment id and "" , or the reason it was rejected (recorded as a
    failed experiment with a rejected run: a bad proposal costs no worker time).
    The session loop and ``labfleet submit`` both come here. With ``lazy`` (an executor
    that never reads versions), a knob-only proposal's commit is made in-process.
    """
    repo = target.root
    seed = proposal.seed if proposal.seed is not None else config.seed
    budget = proposal.budget_seconds or config.budget_seconds or target.spec.budget_seconds
    common: dict[str, Any] = dict(parent_id=parent.id, description=proposal.description,
                                  hypothesis=proposal.hypothesis, tags=proposal.tags, seed=seed, budget_seconds=budget)
    if target.config.tiers is not None and proposal.tags.get("tier") == Role.VALIDATE:
        # a proposal confident enough to skip screening (a wave's best guess): validated at once
        common.update(role=Role.VALIDATE, seed_run=seed + VALIDATION_SEED_OFFSET)
    files = _knob_files(target)
    try:
        if lazy is not None and not proposal.patch and not any("/" in f for f in files):
            commit, full_patch, knobs = _knob_commit(target, lazy, proposal, parent)
            exp_id, _ = ledger.add_experiment(session_id, commit=commit, patch=full_patch, knobs=knobs,
                                              **common)  # type: ignore[arg-type]
            lazy.name(commit, f"refs/labfleet/s{session_id}/e{exp_id}")
            return exp_id, ""
        commit = parent.commit
        if proposal.patch:
            commit = workspace.commit_patch(repo, commit, proposal.patch, proposal.description, target.spec.editable)
        sources = {f: workspace.show_file(repo, commit, f) for f in _knob_files(target)}
        current = target.read_knobs(sources)
        changed = {k: v for k, v in proposal.knobs.items() if current.get(k) != v}
        if changed:
            patch = knob_patch(target, changed, sources)
            commit = workspace.commit_patch(repo, commit, patch, proposal.description, target.spec.editable)
        if commit == parent.commit:
            raise PatchError("the proposal changes nothing")
        full_patch = workspace.diff(repo, parent.commit, commit)
        knobs = target.read_knobs({f: workspace.show_file(repo, commit, f) for f in _knob_files(target)})
    except LabfleetError as exc:
        exp_id, _ = ledger.add_experiment(
            session_id, commit="", patch=proposal.patch, knobs=dict(proposal.knobs),
            decision=Decision.FAILED, queue=False, **common,  # type: ignore[arg-type]
        )
        ledger.add_final_run(session_id, exp_id, RunStatus.REJECTED, str(exc))
        return exp_id, str(exc)
    exp_id, _ = ledger.add_experiment(session_id, commit=commit, patch=full_patch, knobs=knobs, **common)  # type: ignore[arg-type]
    workspace.update_ref(repo, f"refs/labfleet/s{session_id}/e{exp_id}", commit)
    return exp_id, ""


def _knob_commit(
    target: Target, lazy: workspace.LazyCommits, proposal: Proposal, parent: Experiment,
) -> tuple[str, str, dict[str, Any]]:
    """A knob-only proposal's (commit, patch, knob values) with no git process: what the
    git path records, the patch in ``knob_patch``'s spelling (no ``index`` line)."""
    sources = {f: lazy.text(parent.commit, f) for f in _knob_files(target)}
    # the parent's recorded knobs are what reading its files gives (read again if the knobs changed)
    current = dict(parent.knobs) if set(parent.knobs) == set(target.knobs) else target.read_knobs(sources)
    changed = {k: v for k, v in proposal.knobs.items() if current.get(k) != v}
    if not changed:
        raise PatchError("the proposal changes nothing")
    patch = knob_patch(target, changed, sources)  # unknown knobs, values out of range: ConfigError
    outside = sorted({target.knobs[k].file for k in changed} - set(target.spec.editable))
    if outside:
        raise PatchError(f"the patch touches {', '.join(outside)}, which is not editable")
    by_file: dict[str, dict[str, Any]] = {}
    for name, value in changed.items():
        by_file.setdefault(target.knobs[name].file, {})[name] = value
    commit = lazy.commit(parent.commit, by_file, proposal.description)
    # what reading the new file gives back: the value as rendered (format_value rounds floats)
    knobs = {**current, **{name: _as_rendered(value) for name, value in changed.items()}}
    return commit, patch, knobs


def _as_rendered(value: Any) -> Any:
    """``ast.literal_eval(format_value(value))`` without compiling: a float comes back rounded."""
    if isinstance(value, bool | str | int):
        return value
    return float(format_value(value))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None



def _avg(values: list[float]) -> float:
    return sum(values) / len(values)
