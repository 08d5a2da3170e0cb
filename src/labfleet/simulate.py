"""Plan a fleet before paying for it: a whole session on a virtual clock.

The real session loop, ledger, researchers and git run unchanged on a throw-away
clone of the target; only training is replaced by the simulated executor's
surrogate, and time by its virtual clock. ``labfleet simulate`` and the benchmarks
both come here, so what they print is what a real session would have recorded.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labfleet import scaffold, workspace
from labfleet.analysis.phases import points, progress
from labfleet.errors import ConfigError
from labfleet.executors.simulated import RunSurrogate, SimulatedExecutor, Surrogate, VirtualClock, parse_fleet
from labfleet.ledger import Ledger
from labfleet.researchers.base import Researcher
from labfleet.scheduler.proposing import TokenModel, VirtualProposer, parse_latency
from labfleet.session import SessionConfig
from labfleet.session.wiring import open_session
from labfleet.target import CONFIG_FILE, Target, load_target


@dataclass(frozen=True)
class Simulation:
    """What a simulated session did, in the figures a user plans with."""

    folder: Path  # the clone holding the ledger (gone unless kept)
    session_id: int
    fleet: str
    workers: int
    researcher: str
    hours: float  # virtual hours from the first run's start to the last run's end
    experiments: int
    decisions: Mapping[str, int]
    runs: int
    utilization: float  # busy worker-time / (workers x hours)
    baseline: float
    best: float
    # the champion over time: (virtual hours since the start, its metric, its knobs)
    champions: list[tuple[float, float, dict[str, Any]]] = field(default_factory=list)
    cost_usd: float = 0.0
    cost_by_class: Mapping[str, float] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    stop_reason: str = ""
    model: RunSurrogate | None = None  # the objective it ran against (benchmarks read its noise-free values)
    researcher_latency: tuple[float, float] = (0.0, 0.0)  # virtual seconds per propose call: mean, sd
    llm_calls: int = 0  # propose calls that made a (simulated or real) model call
    llm_usd: float = 0.0  # their dollars (the token model's, or the researcher's own records)
    llm_tokens: tuple[int, int] = (0, 0)  # input, output

    def time_to(self, metric: float, minimize: bool = True) -> float | None:
        """Virtual hours until the champion first reached ``metric`` (None: never)."""
        for hours, value, _ in self.champions:
            if (value <= metric) if minimize else (value >= metric):
                return hours
        return None

    @property
    def experiments_per_hour(self) -> float:
        return self.experiments / self.hours if self.hours > 0 else 0.0

    @property
    def calls_per_experiment(self) -> float:
        return self.llm_calls / self.experiments if self.experiments else 0.0


def _fleet_tiers(text: str, screen: list[str], validate: list[str], repeats: int, promote: int) -> str:
    """labfleet.toml with a [tiers] table for the simulated clone."""
    lines = [text.rstrip(), "", "[tiers.screen]", f"classes = {screen!r}".replace("'", '"'),
             "[tiers.validate]", f"classes = {validate!r}".replace("'", '"'), f"repeats = {repeats}",
             f"promote = {promote}", ""]
    return "\n".join(lines)


@contextmanager
def clone_target(source: Path | None, keep: Path | None = None) -> Iterator[Path]:
    """A throw-away git clone of ``source``'s HEAD (the bundled tinygpt when None)."""
    tmp = Path(tempfile.mkdtemp(prefix="labfleet-sim-"))
    folder = tmp / "target"
    try:
        if source is None:
            scaffold.init_bundled(folder)
        else:
            load_target(source, check_files=False)  # a clear error for a folder that is no target
            if not workspace.is_repo(source):
                raise ConfigError(f"{source} is not a git repository: commit the target first")
            subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(source), str(folder)],
                           check=True, capture_output=True)
            workspace.exclude_path(folder, "/.labfleet/")
        yield folder
        if keep is not None:
            if keep.exists():
                raise ConfigError(f"{keep} already exists: choose a new folder for --save")
            shutil.copytree(folder, keep, symlinks=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_surrogate(
    target: Target, seed: int, budget: float, choice: Mapping[str, Any] | str | RunSurrogate | None = None,
    from_ledger: Path | None = None,
) -> RunSurrogate:
    """The objective a simulation runs against: the one place a surrogate is made.

    ``choice``: overrides for the hand-made bowl (a mapping or None), ``"measured"``
    (fitted to the shipped table of real runs), or a model object; ``from_ledger``
    fits one to a real ledger instead.
    """
    if from_ledger is not None:
        from labfleet import planning

        return planning.from_ledger(from_ledger, target, seed=seed)
    if choice == "measured":
        from labfleet import planning

        bowl = Surrogate()
        return planning.measured(target, seed=seed, budget_seconds=budget,
                                 timing={"setup_seconds": bowl.setup_seconds, "overhead_seconds": bowl.overhead_seconds})
    if isinstance(choice, str):
        raise ConfigError(f"unknown surrogate {choice!r}: use hand-made or measured")
    if choice is None or isinstance(choice, Mapping):
        return Surrogate.for_target(target.knobs, seed=seed, start=target.read_knobs(),
                                    reference_budget_seconds=budget, direction=target.spec.direction,
                                    metric_name=target.spec.metric, **(choice or {}))
    return choice


def simulate(
    folder: Path, fleet: str, *, researcher: str = "waves", hours: float | None = 8.0, seed: int = 0,
    budget_seconds: float | None = None, screen: list[str] | None = None, validate: list[str] | None = None,
    validate_repeats: int = 2, promote: int = 2, surrogate: Mapping[str, Any] | str | RunSurrogate | None = None,
    researcher_options: Mapping[str, Any] | None = None, researcher_latency: str | float | None = None,
    tokens: TokenModel | None = None, from_ledger: Path | None = None, keep_files: bool = True, **config: Any,
) -> Simulation:
    """Run a session on ``folder`` (a clone: it gets commits and a ledger) on a virtual clock.

    ``surrogate``: overrides for the hand-made bowl (a mapping), ``"measured"`` (fitted
    to the shipped table of real tinygpt runs; the bowl's setup and overhead), or a
    model object. ``from_ledger``: fit the model to the runs in that ledger (or target
    folder) instead. Which one ran is recorded as a ``surrogate`` event in the ledger.
    ``researcher_latency``: virtual seconds per propose call (``90``, or ``"60:30"`` for a
    seeded normal of mean 60 and sd 30); ``tokens``: each call's tokens and dollars
    (default: a long-prompt call at Sonnet prices whenever a latency is given).
    ``keep_files``: by the end, every experiment's commit is in the clone and every run has
    its run.log and result.json. False, for a clone that is thrown away: only the commits
    something read (kept versions, a researcher's reads) are written, and no run files.
    """
    latency = parse_latency(researcher_latency)
    if screen or validate:
        path = folder / CONFIG_FILE
        path.write_text(_fleet_tiers(path.read_text(), screen or [], validate or [], validate_repeats, promote))
        workspace.git(folder, "commit", "--quiet", "-am", "simulate: tiers")
    target = load_target(folder, check_files=False)
    try:
        workers = parse_fleet(fleet)
    except ValueError as exc:
        raise ConfigError(f"--fleet: {exc}") from None
    budget = budget_seconds or target.spec.budget_seconds
    model = make_surrogate(target, seed, budget, surrogate, from_ledger)
    clock = VirtualClock()
    cfg = SessionConfig(researcher=researcher, workers=len(workers), budget_seconds=budget_seconds, seed=seed,
                        hours=hours, **config)
    if tokens is None and latency[0] > 0:
        tokens = TokenModel()

    def proposer(chosen: Researcher, settings: SessionConfig) -> VirtualProposer:
        return VirtualProposer(chosen, clock, latency=latency[0], sd=latency[1], seed=seed, tokens=tokens,
                               calls=settings.researcher_calls)

    executor = SimulatedExecutor(workers, model, clock=clock, speeds=getattr(model, "speeds", None),
                                 run_files=keep_files)
    with open_session(target, cfg, new=True, researcher_options=researcher_options, executor=executor,
                      proposer=proposer, clock=clock, write_unread=keep_files) as wired:
        wired.ledger.event(wired.session_id, "surrogate", source=model.source)
        reason = wired.run()
        return replace(summarize(target, wired.ledger, wired.session_id, fleet, len(workers), reason), model=model,
                       researcher_latency=latency)


def summarize(target: Target, ledger: Ledger, sid: int, fleet: str, workers: int, reason: str = "") -> Simulation:
    start, end, started = ledger.run_span(sid)
    span = max(end - start, 1e-9)
    costs = ledger.worker_costs(sid, end)
    busy = sum(c.busy_seconds for c in costs)
    by_class: dict[str, float] = {}
    for c in costs:
        by_class[c.hardware] = by_class.get(c.hardware, 0.0) + c.usd
    decided_at = ledger.decided_at(sid)
    champions = [((decided_at.get(e.id, start) - start) / 3600, e.metric, dict(e.knobs)) for e in ledger.lineage(sid)]
    groups = {name: knob.group for name, knob in target.knobs.items() if knob.group}
    prog = progress(points(ledger.experiments(sid), decided_at, groups), target.spec.direction, target.spec.metric)
    decisions = ledger.decision_counts(sid)
    session = ledger.session(sid)
    llm = ledger.llm_usage(sid)
    return Simulation(
        folder=target.root, session_id=sid, fleet=fleet, workers=workers, researcher=session["researcher"],
        hours=span / 3600, experiments=ledger.proposed_count(sid), decisions=decisions, runs=started,
        utilization=busy / (workers * span), baseline=champions[0][1] if champions else math.nan,
        best=champions[-1][1] if champions else math.nan, champions=champions,
        cost_usd=sum(by_class.values()), cost_by_class=by_class, findings=prog.findings, stop_reason=reason,
        llm_calls=llm.calls, llm_usd=float(llm.usd), llm_tokens=(int(llm.input_tokens), int(llm.output_tokens)),
    )
