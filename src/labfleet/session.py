"""The session loop: keeps every worker busy, records everything, keeps or discards.

The only place where stages meet (see DESIGN.md): the researcher proposes, this
loop materializes proposals as commits and queues them in the ledger, places
queued runs on free workers, collects results, decides, and tells the researcher.
One event per tick, as in Ray Tune's controller:

    recover()                      # once: adopt runs a killed orchestrator left behind;
                                   # queue the baseline's noise and calibration runs
    while not finished:
        stop runs `labfleet cancel` asked for
        collect finished runs      # ledger first, then decide, then researcher.observe
        place queued runs          # validation, then calibration, confirmation, screening
        propose for free workers   # and one ahead, so a freed worker never waits for git
        wait if idle               # executor.wait: a sleep, or the simulator's clock jump

Deciding (``decide``): a result is compared with the champion on its hardware
class and budget, against the measured noise (``analysis/noise``): beyond it, kept;
within it, repeated once (or, with [tiers], validated on the validate class);
otherwise discarded. A new champion gets one fresh-seed run per class.

Every state change is written to the ledger before it is acted on, so a killed
orchestrator resumes from the ledger: runs marked running are adopted from their
run directory (collected if finished meanwhile, retried if lost).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labfleet import frozen, workspace
from labfleet.analysis import cost
from labfleet.analysis.noise import (
    DEFAULT_Z,
    UNBIASED_ROLES,
    Group,
    Verdict,
    judge,
    noise_floors,
    samples_from_runs,
)
from labfleet.errors import LabfleetError, PatchError
from labfleet.executors.base import Executor, Finished, Job, Worker
from labfleet.harness import RunRequest
from labfleet.ledger import Ledger, run_record
from labfleet.records import Decision, Experiment, Proposal, Result, Run, RunStatus, SessionState
from labfleet.researchers.base import Researcher
from labfleet.target import Target, Tiers, knob_patch

BRANCH_PREFIX = "labfleet/s"
TICK_SECONDS = 0.02
# Queued runs are placed in this order: validation first (winners waiting to be kept),
# then the baseline's noise and calibration runs, then confirmations, then new screens.
ROLE_PRIORITY = {"validate": 0, "calibrate": 1, "noise": 1, "confirm": 2, "screen": 3}
VALIDATION_SEED_OFFSET = 1000  # validation seeds differ from every screening seed


class SessionError(LabfleetError):
    pass


@dataclass(frozen=True)
class SessionConfig:
    """A session's settings, recorded in the ledger so a resume uses the same ones."""

    researcher: str = "greedy"
    workers: int = 1
    threads: int = 1
    device: str = "cpu"
    budget_seconds: float | None = None  # None: the target's
    seed: int = 0
    margin: float = 0.0  # a keep must beat the champion by more than this (metric units)
    # "noise": a keep must beat the champion by z standard errors of the measured noise
    # (or win a confirmation repeat); "margin": by the fixed margin alone.
    keep: str = "noise"
    z: float = DEFAULT_Z
    noise_repeats: int = 2  # extra seeds of the baseline per hardware class, to measure the noise
    confirm_repeats: int = 1  # extra seeds for a result better than the champion but within noise
    max_attempts: int = 3  # runs per experiment lost to infrastructure before giving up
    # Experiments proposed and materialized ahead of a free worker: dispatch is then a
    # ledger write and a process start, not a researcher call and a git commit.
    lookahead: int = 1
    max_experiments: int | None = None  # not counting the baseline
    hours: float | None = None
    until: float | None = None  # stop proposing once the champion reaches this metric
    # options of the researcher (the LLM's provider, model, base URL, key variable's name: never a key)
    researcher_options: dict[str, Any] = field(default_factory=dict)
    patience: int | None = None  # stop proposing after this many decided experiments without a keep
    max_usd: float | None = None  # stop proposing once the fleet's cost reaches this
    serve: bool = False  # a daemon: keep running while idle, placing what agents submit
    executor: str = "local"  # local | ray | skypilot
    ray_address: str | None = None
    fleet: str | None = None  # fleet.toml for the SkyPilot executor
    labfleet_spec: str = "labfleet"  # what SkyPilot clusters pip-install
    price: float = 0.0  # dollars per worker-hour (local workers; other executors know their own)
    hardware: str | None = None  # hardware class of local workers (None: cpu, or gpu with cuda)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


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


def queue_validation(ledger: Ledger, target: Target, exp_id: int, reason: str) -> Experiment:
    """Queue validation runs (new seeds, validate-tier workers, placed before any screening).

    The session's loop and ``labfleet promote`` both come here; the experiment is
    decided again, on its validation runs, once they are all final.
    """
    exp = ledger.experiment(exp_id)
    repeats = (target.config.tiers or Tiers()).validate_.repeats
    ledger.reopen(exp_id)
    for k in range(repeats):
        ledger.queue_run(exp.session_id, exp_id, seed=exp.seed + VALIDATION_SEED_OFFSET + k, role="validate")
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
    # runtime state, rebuilt from the ledger on start
    busy: dict[str, int] = field(default_factory=dict)  # worker id -> run id
    champion: _Champion = field(default_factory=_Champion)
    # The researcher had nothing to propose: ask again only after a new result (a new
    # champion may open new ideas); with nothing left running, the session ends.
    researcher_idle: bool = False
    # A model provider failed (429s, 5xx, an outage): proposing pauses and is retried at
    # ``retry_at`` with a doubling backoff; the session neither ends nor loses anything.
    retry_at: float | None = None
    outage_backoff: float = 0.0
    outage_waits: tuple[float, float] = (15.0, 600.0)  # first and longest pause, seconds
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
        # metrics of done runs that differ only by seed: the noise floor and the
        # champion's per-class figures come from here (rebuilt from the ledger in recover)
        self.samples: dict[Group, list[float]] = {}
        self.unbiased: dict[Group, list[float]] = {}  # the subset not chosen for looking good

    # ----------------------------------------------------------------- the loop

    def run(self) -> str:
        """Run until a limit is reached and nothing is left running; returns why it stopped."""
        self.ledger.set_session_status(self.session_id, "running")
        self.recover()
        try:
            while True:
                progressed = self.step()
                if self.finished():
                    break
                if not progressed:
                    self.executor.wait(self.tick)
        except BaseException:
            self.interrupt()
            raise
        self.executor.close()  # nothing runs any more: release the fleet (SkyPilot tears its clusters down)
        self.ledger.set_session_status(self.session_id, "finished")
        self.ledger.event(self.session_id, "session_finished", reason=self.stop_reason)
        self.on_event(Event("finished", self.stop_reason))
        return self.stop_reason

    def step(self) -> bool:
        """One tick: collect finished runs, place queued ones, propose for idle workers."""
        progressed = False
        for run_id in self.ledger.cancel_requests(self.session_id):
            if run_id in self.busy.values():
                self.executor.cancel(run_id)
        for finished in self.executor.poll():
            self.collect(finished)
            progressed = True
        progressed |= self.place_queued()
        wanted = sum(1 for w in self.free_workers() if self._role_allows("screen", w.hardware)) + self.config.lookahead
        wanted -= len(self.ledger.run_rows(self.session_id, ["queued"]))
        if self.retry_at is not None and self.clock() >= self.retry_at:
            self.researcher_idle, self.retry_at = False, None  # the provider pause is over: ask again
        if wanted > 0 and not self.researcher_idle and self.retry_at is None and self.may_propose():
            progressed |= self.propose(wanted)
            progressed |= self.place_queued()
        return progressed

    def finished(self) -> bool:
        if self.may_propose():
            return False
        active = self.ledger.run_rows(self.session_id, ["queued", "running"])
        return not active

    def may_propose(self) -> bool:
        cfg = self.config
        if self.stop_reason:
            return False
        reason = ""
        if (self.researcher_idle and not cfg.serve and self.retry_at is None
                and not self.ledger.run_rows(self.session_id, ["queued", "running"])):
            reason = "the researcher has nothing more to propose"
        elif cfg.max_experiments is not None and self.proposed_count() >= cfg.max_experiments:
            reason = f"reached --max-experiments {cfg.max_experiments}"
        elif cfg.hours is not None and self.clock() - self.session["created_at"] >= cfg.hours * 3600:
            reason = f"reached --hours {cfg.hours:g}"
        elif cfg.until is not None and self.champion.metric is not None and not self._better(cfg.until, self.champion.metric):
            reason = f"reached --until {cfg.until:g}"
        elif cfg.patience is not None and self.ledger.decided_since_keep(self.session_id) >= cfg.patience:
            reason = f"no keep in the last {cfg.patience} experiments (--patience {cfg.patience}): diminishing returns"
        elif cfg.max_usd is not None and cost.fleet_usd(self.ledger, self.session_id, self.clock()) >= cfg.max_usd:
            reason = f"reached --max-usd {cfg.max_usd:g}"
        if reason:
            self.stop_reason = reason
            self.ledger.event(self.session_id, "stop_proposing", reason=reason)
            self.on_event(Event("stopping", f"{reason}; waiting for running experiments"))
            return False
        return True

    def proposed_count(self) -> int:
        """Experiments proposed so far, the baseline not counted."""
        return self.ledger.proposed_count(self.session_id)

    def interrupt(self) -> None:
        """Ctrl-C or an error: stop local runs and queue them again for a resume."""
        running = self.executor.running()
        self.executor.close()
        for run_id in running:
            self.ledger.finish_run(run_id, RunStatus.LOST, reason="orchestrator interrupted", retry=True)
        self.ledger.set_session_status(self.session_id, "stopped")
        self.ledger.event(self.session_id, "session_stopped", requeued=len(running))

    # ----------------------------------------------------------------- recovery

    def recover(self) -> None:
        """Rebuild runtime state from the ledger; adopt runs an earlier orchestrator started."""
        for exp in self.ledger.experiments(self.session_id):
            if exp.decision == Decision.BASELINE or exp.decision == Decision.KEPT:
                self.champion = _Champion(exp, exp.metric)
        runs = self.ledger.runs(self.session_id)
        self.samples = samples_from_runs(runs)
        self.unbiased = samples_from_runs(runs, UNBIASED_ROLES)
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
            self.busy[worker] = row["id"]
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
        classes = list(dict.fromkeys(w.hardware for w in self.workers.values()))
        screen = [c for c in classes if self._role_allows("screen", c)] or classes
        classes = sorted(classes, key=lambda c: c not in screen)  # the first run screens
        runs = [r for r in self.ledger.runs_of(base.id) if r.status not in (RunStatus.LOST, RunStatus.CANCELLED)]
        first = runs[0] if runs else None
        if first is not None and first.status == RunStatus.QUEUED and first.place_on is None:
            self.ledger.pin_run(first.id, classes[0])
            runs[0] = first = self.ledger.runs_of(base.id)[0]
        want = 1 + (self.config.noise_repeats if self.config.keep == "noise" else 0)
        seeds = len(runs)
        for hw in classes:
            have = sum(1 for r in runs if (r.place_on or r.hardware) == hw)
            for k in range(have, want):
                role = "validate" if self.tiers is not None and hw not in screen else ("noise" if k else "calibrate")
                self.ledger.queue_run(self.session_id, base.id, seed=base.seed + seeds, role=role, place_on=hw)
                seeds += 1

    # ----------------------------------------------------------------- collecting

    def collect(self, finished: Finished) -> None:
        run_row = self.ledger.run_row(finished.run_id)
        self.researcher_idle = False
        self.busy = {w: r for w, r in self.busy.items() if r != finished.run_id}
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
        row = self.ledger.run_row(finished.run_id)
        if row is not None:
            run = run_record(row)
            base = self.baseline()
            for key, values in samples_from_runs([run]).items():
                self.samples.setdefault(key, []).extend(values)
                if run.role in UNBIASED_ROLES or (base is not None and key[0] == base.id):
                    self.unbiased.setdefault(key, []).extend(values)
        self.decide(exp_id)

    def decide(self, exp_id: int) -> None:
        """Decide an experiment once all its runs are final: keep, discard, repeat, or validate.

        Compared with the champion on the same hardware class and budget; with the
        noise measured, a keep must beat it by ``z`` standard errors, and a result
        better but within the noise earns a confirmation repeat (or, with tiers, a
        validation on the validate class) instead.
        """
        exp = self.ledger.experiment(exp_id)
        runs = self.ledger.runs_of(exp_id)
        if exp.parent_id is None:
            self._decide_baseline(exp, runs)
            return
        if exp.decision != Decision.PENDING or any(not r.status.final for r in runs) or not runs:
            return
        if self.champion.metric is None:
            return  # decided once the baseline is known
        done = [r for r in runs if r.status == RunStatus.DONE and r.metric is not None]
        if not done:
            run = runs[-1]
            self.ledger.decide(exp_id, Decision.FAILED, None)
            self.on_event(Event("failed", f"e{exp_id} {run.status}: {run.reason}  [{exp.description}]", exp, run))
            self.tell(Result(self.ledger.experiment(exp_id), run))
            return
        validated = [r for r in done if r.role == "validate"]
        hardware, budget, metrics = _compared(validated or done)
        verdict = self.judge(metrics, hardware, budget)
        if not validated and verdict.outcome != "worse":
            if self.tiers is not None:
                self.await_validation(exp, verdict)
                return
            if verdict.outcome == "unsure" and len(metrics) <= self.config.confirm_repeats:
                self.ledger.queue_run(self.session_id, exp_id, seed=exp.seed + len(runs), role="confirm",
                                      place_on=hardware)
                self.ledger.event(self.session_id, "confirming", experiment=exp_id, gain=verdict.improvement,
                                  threshold=verdict.threshold)
                self.on_event(Event("confirming", f"e{exp_id} {self._fmt(_avg(metrics))} within noise"
                                    f" ({verdict.improvement:+.4f} < {verdict.threshold:.4f}): repeating"
                                    f"  [{exp.description}]", exp, done[-1]))
                return
        if validated and verdict.outcome == "unsure" and len(metrics) < self._validate_runs() + self.config.confirm_repeats:
            # better on the fast class but within its noise: one more seed there, then decide
            self.ledger.queue_run(self.session_id, exp_id, seed=exp.seed + VALIDATION_SEED_OFFSET + len(metrics),
                                  role="validate", place_on=hardware)
            self.ledger.event(self.session_id, "confirming", experiment=exp_id, gain=verdict.improvement,
                              threshold=verdict.threshold)
            return
        if verdict.outcome == "better":
            self.keep(exp, _avg(metrics), verdict, done[-1])
        else:
            self.ledger.decide(exp_id, Decision.DISCARDED, _avg(metrics))
            self.on_event(Event("discarded", f"e{exp_id} {self._fmt(_avg(metrics))} discarded"
                                f" ({-verdict.improvement if self._minimize else verdict.improvement:+.4f})"
                                f"  [{exp.description}]", exp, done[-1]))
        self.tell(Result(self.ledger.experiment(exp_id), done[-1]))
        if self.tiers is not None:
            self.promote_waiting()

    def _decide_baseline(self, exp: Experiment, runs: list[Run]) -> None:
        """The baseline counts from its first done run; its other runs measure noise and hardware."""
        done = [r for r in runs if r.status == RunStatus.DONE and r.metric is not None]
        if exp.decision != Decision.PENDING:
            # a later seed on the first run's class: the baseline's figure becomes their mean
            first = done[0]
            same = [r.metric for r in done if (r.hardware, r.budget_seconds) == (first.hardware, first.budget_seconds)]
            self.ledger.set_metric(exp.id, _avg(same))  # type: ignore[arg-type]
            if self.champion.experiment is not None and self.champion.experiment.id == exp.id:
                self.champion = _Champion(self.ledger.experiment(exp.id), _avg(same))  # type: ignore[arg-type]
            return
        if not done:
            if runs and all(r.status.final and r.status != RunStatus.LOST for r in runs):
                run = runs[0]
                raise SessionError(
                    f"the baseline run {run.status}: {run.reason or 'see ' + str(run.log_path)} "
                    "(fix the target, commit, and start again with `labfleet run --new`)"
                )
            return
        run = done[0]
        self.ledger.decide(exp.id, Decision.BASELINE, run.metric)
        exp = self.ledger.experiment(exp.id)
        self.champion = _Champion(exp, run.metric)
        self.on_event(Event("baseline", f"baseline {self._fmt(run.metric)}", exp, run))
        self.tell(Result(exp, run))
        for other in self.ledger.experiments(self.session_id):  # results that waited for it
            if other.decision == Decision.PENDING and other.id != exp.id:
                self.decide(other.id)

    def judge(self, metrics: list[float], hardware: str, budget: float) -> Verdict:
        sd = None
        if self.config.keep == "noise":
            floor = noise_floors(self.samples).get(hardware)
            sd = floor.sd if floor is not None else None
        return judge(metrics, self.champion_metrics(hardware, budget), sd, self.target.spec.direction,
                     z=self.config.z, margin=self.config.margin)

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
        self.ledger.event(self.session_id, "kept", experiment=exp.id, metric=metric, previous=previous,
                          gain=verdict.improvement, threshold=verdict.threshold, se=verdict.se)
        self.on_event(Event("kept", f"e{exp.id} {self._fmt(metric)} KEPT"
                            f" ({-verdict.improvement if self._minimize else verdict.improvement:+.4f})"
                            f"  [{exp.description}]", exp, run))

    def calibrate_champion(self, exp: Experiment) -> None:
        """One fresh-seed run of a new champion on every class it has no unbiased run on.

        Its own screening run won a selection, so later candidates would be measured
        against its luck; the calibration run is what they are compared with, and it
        measures the class offsets on the current code.
        """
        classes = dict.fromkeys(w.hardware for w in self.workers.values())
        for k, hw in enumerate(classes):
            role = "calibrate" if self._role_allows("screen", hw) else "validate"
            budget = self.run_budget(exp, role)
            if self.unbiased.get((exp.id, hw, budget)):
                continue
            self.ledger.queue_run(self.session_id, exp.id, seed=exp.seed + VALIDATION_SEED_OFFSET // 2 + k,
                                  role=role, place_on=hw)

    # ----------------------------------------------------------------- tiers

    def await_validation(self, exp: Experiment, verdict: Verdict) -> None:
        """A screened winner: validate it now if a validation slot is free, else it waits."""
        self.ledger.event(self.session_id, "screen_winner", experiment=exp.id, gain=verdict.improvement)
        self.promote_waiting()

    def promote(self, exp_id: int, reason: str = "screened winner") -> None:
        exp = queue_validation(self.ledger, self.target, exp_id, reason)
        self.on_event(Event("promoted", f"e{exp_id} promoted to validation ({reason})  [{exp.description}]", exp))

    def promote_waiting(self) -> None:
        """Promote the best waiting screened winners while validation slots are free."""
        assert self.tiers is not None
        if self.stop_reason:  # the session is winding down: what waits stays pending (`labfleet promote`)
            return
        waiting = self.ledger.awaiting_validation(self.session_id)
        slots = self.tiers.validate_.promote - self.ledger.validations_in_flight(self.session_id)
        if not waiting or slots <= 0:
            return
        ranked = []
        for exp_id in waiting:
            done = [r for r in self.ledger.runs_of(exp_id) if r.status == RunStatus.DONE and r.metric is not None]
            if not done:
                continue
            hardware, budget, metrics = _compared(done)
            verdict = self.judge(metrics, hardware, budget)
            if verdict.outcome == "worse":  # the champion moved past it meanwhile
                self.ledger.decide(exp_id, Decision.DISCARDED, _avg(metrics))
                exp = self.ledger.experiment(exp_id)
                self.on_event(Event("discarded", f"e{exp_id} {self._fmt(_avg(metrics))} discarded"
                                    f" (no longer beats the best)  [{exp.description}]", exp, done[-1]))
                self.tell(Result(exp, done[-1]))
                continue
            ranked.append((-verdict.improvement, exp_id))
        for _, exp_id in sorted(ranked)[:slots]:
            self.promote(exp_id)

    def _validate_runs(self) -> int:
        return (self.tiers or Tiers()).validate_.repeats

    def _role_allows(self, role: str, hardware: str) -> bool:
        """Whether a run of ``role`` may run on ``hardware`` under the [tiers] classes."""
        if self.tiers is None:
            return True
        classes = self.tiers.validate_.classes if role == "validate" else self.tiers.screen.classes
        return not classes or hardware in classes

    def run_budget(self, exp: Experiment, role: str) -> float:
        """The tier's budget when [tiers] sets one, else the experiment's."""
        if self.tiers is not None:
            tier = self.tiers.validate_ if role == "validate" else self.tiers.screen
            if tier.budget_seconds is not None:
                return tier.budget_seconds
        return exp.budget_seconds

    def tell(self, result: Result) -> None:
        """researcher.observe, building the snapshot only for researchers that override it."""
        if type(self.researcher).observe is not Researcher.observe:
            self.researcher.observe(self.state(), result)

    def champion_metrics(self, hardware: str, budget: float) -> list[float]:
        """The champion's metrics on ``hardware`` at ``budget``, normalized if it never ran there.

        An H200 runs more steps than an H100 in the same budget, so numbers are compared
        within a class; a class the champion has no run on gets its runs from another
        class shifted by the offset measured on experiments that ran on both.
        """
        champion = self.champion.experiment
        assert champion is not None and self.champion.metric is not None
        key = (champion.id, hardware, budget)
        own = self.unbiased.get(key) or self.samples.get(key)
        if own:
            return own
        for (exp_id, other, b), values in self.unbiased.items():
            if exp_id == champion.id and b == budget:
                offset = self.hardware_offset(hardware, other, budget)
                if offset is not None:
                    return [v + offset for v in values]
        return [self.champion.metric]

    def hardware_offset(self, hardware: str, other: str, budget: float) -> float | None:
        """Mean metric on ``hardware`` minus on ``other`` over experiments run on both (unbiased runs)."""
        by_exp: dict[int, dict[str, list[float]]] = {}
        for (exp_id, hw, b), values in self.unbiased.items():
            if b == budget and hw in (hardware, other):
                by_exp.setdefault(exp_id, {})[hw] = values
        diffs = [_avg(v[hardware]) - _avg(v[other]) for v in by_exp.values() if len(v) == 2]
        return _avg(diffs) if diffs else None

    @property
    def _minimize(self) -> bool:
        return self.target.spec.direction == "minimize"

    def _better(self, a: float, b: float, margin: float = 0.0) -> bool:
        if self.target.spec.direction == "minimize":
            return a < b - margin
        return a > b + margin

    def _fmt(self, metric: float | None) -> str:
        return f"{self.target.spec.metric} {metric:.6f}" if metric is not None else "-"

    # ----------------------------------------------------------------- placing

    def free_workers(self) -> list[Worker]:
        alive = {w.id for w in self.executor.available()}
        return [w for w in self.workers.values() if w.id not in self.busy and w.id in alive]

    def eligible(self, row: Any, worker: Worker) -> bool:
        if row["place_on"]:
            return bool(worker.hardware == row["place_on"])
        return self._role_allows(row["role"], worker.hardware)

    def place_queued(self) -> bool:
        placed = False
        free = self.free_workers()
        if not free:
            return False
        queued = self.ledger.run_rows(self.session_id, ["queued"])
        for row in sorted(queued, key=lambda r: (ROLE_PRIORITY.get(r["role"], 9), r["id"])):
            worker = next((w for w in free if self.eligible(row, w)), None)
            if worker is None:
                continue
            free.remove(worker)
            self.place(row, worker)
            placed = True
            if not free:
                break
        return placed

    def _job(self, row: Any, worker: Worker, exp: Experiment | None = None) -> Job:
        exp = exp or self.ledger.experiment(row["experiment_id"])
        run_dir = Path(row["run_dir"]) if row["run_dir"] else self.run_dir(exp.id, row["id"])
        request = RunRequest(
            target_dir=self.target.root, run_dir=run_dir, commit=exp.commit,
            seed=exp.seed if row["seed"] is None else row["seed"], budget_seconds=self.run_budget(exp, row["role"]),
            device=worker.device, threads=worker.threads, frozen_hashes=self.frozen_hashes,
            holdout=row["role"] in ("calibrate", "validate"),  # integrity: [holdout] only on kept/validated versions
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
            log_path=str(run_dir / "run.log"), budget_seconds=job.request.budget_seconds,
        )
        self.busy[worker.id] = row["id"]
        try:
            handle = self.executor.start(job)
        except LabfleetError:
            self.busy.pop(worker.id, None)
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
        history, pending = self.ledger.history(self.session_id)
        baseline = self.baseline()
        return SessionState(
            session_id=self.session_id, metric=self.target.spec.metric, direction=self.target.spec.direction,
            knobs=self.target.knobs, baseline=baseline, champion=self.champion.experiment or baseline,
            history=tuple(history), pending=tuple(pending), free_workers=len(self.free_workers()),
            seed=self.config.seed, noise={hw: f.sd for hw, f in noise_floors(self.samples).items()},
            since_keep=self.ledger.decided_since_keep(self.session_id),
            findings=tuple(self.findings(history)) if self.researcher.wants_findings else (),
        )

    def findings(self, history: list[Result]) -> list[str]:
        """The analysis in sentences: the phase, hardware differences, the latest waves' effects."""
        from labfleet.analysis.effects import session_effects
        from labfleet.analysis.hardware import hardware_report
        from labfleet.analysis.phases import points_from_ledger, progress

        spec = self.target.spec
        groups = {name: knob.group for name, knob in self.target.knobs.items() if knob.group}
        lines = progress(points_from_ledger(self.ledger, self.session_id, groups), spec.direction, spec.metric).findings
        lines += hardware_report(self.ledger.runs(self.session_id), metric=spec.metric).findings
        floors = noise_floors(self.samples)
        sd = min((f.sd for f in floors.values()), default=None)
        for tag, effects in list(session_effects(history, noise_sd=sd).items())[-2:]:
            lines += [f"wave {tag}: {line}" for line in effects.describe(spec.metric, spec.direction)]
        return lines

    def propose(self, n: int) -> bool:
        if self.config.max_experiments is not None:
            n = min(n, self.config.max_experiments - self.proposed_count())
        if n <= 0:
            return False
        proposals = self.researcher.propose(self.state(), n)[:n]
        self.record_usage()
        if not proposals:
            self.researcher_idle = True
            return False
        for proposal in proposals:
            self.materialize(proposal)
        return True

    def record_usage(self) -> None:
        """Model calls a researcher made (tokens, dollars, errors: never a key) go to the ledger."""
        drain = getattr(self.researcher, "drain_usage", None)
        calls = drain() if drain is not None else []
        for call in calls:
            self.ledger.event(self.session_id, "llm_call", **call)
        if calls and not calls[-1].get("ok", True):
            first, longest = self.outage_waits
            self.outage_backoff = min(max(2 * self.outage_backoff, first), longest)
            self.retry_at = self.clock() + self.outage_backoff
            self.on_event(Event("llm_error", f"model call failed: {calls[-1].get('error', '')}; "
                                f"proposing paused for {self.outage_backoff:.0f} s"))
        elif calls:
            self.outage_backoff, self.retry_at = 0.0, None

    def materialize(self, proposal: Proposal) -> int:
        """Record a proposal as an experiment: a commit under refs/labfleet/, and a queued run."""
        champion = self.champion.experiment or self.baseline()
        parent = self.ledger.experiment(proposal.parent) if proposal.parent is not None else champion
        assert parent is not None
        exp_id, error = materialize(self.target, self.ledger, self.session_id, proposal, parent, self.config)
        if error:
            self.on_event(Event("rejected", f"e{exp_id} rejected: {error}  [{proposal.description}]"))
        return exp_id


def materialize(
    target: Target, ledger: Ledger, session_id: int, proposal: Proposal, parent: Experiment, config: SessionConfig,
) -> tuple[int, str]:
    """A proposal as an experiment: its commit (parent + patch + knob values), and a queued run.

    Returns the experiment id and "" , or the reason it was rejected (recorded as a
    failed experiment with a rejected run: a bad proposal costs no worker time).
    The session loop and ``labfleet submit`` both come here.
    """
    repo = target.root
    seed = proposal.seed if proposal.seed is not None else config.seed
    budget = proposal.budget_seconds or config.budget_seconds or target.spec.budget_seconds
    common = dict(parent_id=parent.id, description=proposal.description, hypothesis=proposal.hypothesis,
                  tags=proposal.tags, seed=seed, budget_seconds=budget)
    try:
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


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None



def _avg(values: list[float]) -> float:
    return sum(values) / len(values)


def _compared(runs: list[Run]) -> tuple[str, float, list[float]]:
    """The hardware class and budget most of ``runs`` ran on, and their metrics there."""
    groups: dict[tuple[str, float], list[float]] = {}
    for run in runs:
        assert run.metric is not None
        groups.setdefault((run.hardware or "", run.budget_seconds or 0.0), []).append(run.metric)
    (hardware, budget), metrics = max(groups.items(), key=lambda kv: len(kv[1]))
    return hardware, budget, metrics
