"""The simulated executor: the real session loop on a virtual clock, against a surrogate objective.

Used to plan a fleet before paying for it (``labfleet simulate``) and by benchmarks:
the real ``SessionLoop``, ``Ledger`` and researchers run unchanged; only training is
replaced by a model of it, and time by a ``VirtualClock`` that ``wait`` moves straight
to the next finish, so an 8-hour, 16-GPU session takes seconds.

    clock = VirtualClock()
    workers = parse_fleet("H100:13,H200:3")
    surrogate = Surrogate.for_target(target.knobs, seed=0, start=target.read_knobs())
    executor = SimulatedExecutor(workers, surrogate, clock=clock)
    ledger = Ledger(path, clock=clock)
    SessionLoop(..., executor=executor, clock=clock, tick=math.inf).run()

Pieces:
- ``VirtualClock``: the time every timestamp comes from (callable, like ``time.time``).
- ``Surrogate``: a smooth, seeded objective of the knobs (a quadratic bowl with a few
  interactions), a speed term per hardware class, noise, crashes, hangs, setup and
  per-run overhead. It is the default *model* of a run.
- ``SimOutcome``: what a model says one run does (outcome, metric, figures, duration, log).
  Any ``Callable[[Job, Worker], SimOutcome]`` can replace the surrogate (the conformance
  tests model the conformance target's ``train.py`` that way).
- ``SimulatedWorld``: the clock and every run in flight, shared by executors, so a new
  executor can ``adopt`` a run an earlier (killed) one started, as after a restart.
- ``parse_fleet``: ``"H100:13,H200:3"`` -> workers with prices from a default table.

The executor plays the harness's part: it enforces the target's hard timeout, writes
``run.log`` and ``result.json`` into the run directory when a run ends, and reports
each run once through ``poll``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from labfleet.errors import ConfigError
from labfleet.executors.base import Executor, ExecutorError, Finished, Job, Worker
from labfleet.harness import LOG_FILE, LOG_TAIL_LINES, RESULT_FILE, Outcome, RunResult, read_result
from labfleet.target import CONFIG_FILE, Knob, KnobValue, TargetSpec, parse_config

DEFAULT_EPOCH = 1_800_000_000.0  # 2027-01-15: virtual timestamps that look like real ones
DEFAULT_BUDGET_SECONDS = 300.0  # when the target's labfleet.toml cannot be read

# Relative training speed per hardware class (steps in the same budget; H100 = 1).
DEFAULT_SPEEDS: dict[str, float] = {"H100": 1.0, "H200": 1.09, "A100": 0.6, "L4": 0.25, "cpu": 0.05}
# On-demand dollars per hour per worker.
DEFAULT_PRICES: dict[str, float] = {"H100": 2.49, "H200": 3.59, "A100": 1.29, "L4": 0.7, "cpu": 0.0}
FLEET_SYNTAX = "CLASS:COUNT[@PRICE_PER_HOUR],... (e.g. H100:13,H200:3 or H100:13@2.10)"


# --------------------------------------------------------------------------- the clock


class VirtualClock:
    """Simulated wall time in epoch seconds; never goes backwards.

    Callable, so it can stand in for ``time.time`` wherever a ``clock`` is taken
    (``Ledger(path, clock=clock)``, ``SessionLoop(..., clock=clock)``).
    """

    def __init__(self, start: float = DEFAULT_EPOCH) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance_to(self, t: float) -> None:
        """Move to ``t``; a time already past is ignored (the clock is monotonic)."""
        if math.isnan(t) or math.isinf(t):
            raise ValueError(f"cannot advance a virtual clock to {t}")
        self._now = max(self._now, float(t))

    def advance(self, seconds: float) -> None:
        self.advance_to(self._now + seconds)

    def __repr__(self) -> str:
        return f"VirtualClock({self._now:.3f})"


# --------------------------------------------------------------------------- the fleet


def _hardware_class(name: str, known: Mapping[str, float]) -> str:
    """The canonical spelling of a hardware class ("h100" -> "H100"); ValueError if unknown."""
    by_lower = {k.lower(): k for k in known}
    canonical = by_lower.get(name.strip().lower())
    if canonical is None:
        raise ValueError(
            f"unknown hardware class {name.strip()!r} in fleet: use {FLEET_SYNTAX} "
            f"with CLASS one of {', '.join(known)}"
        )
    return canonical


def parse_fleet(
    spec: str | Mapping[str, int | tuple[int, float]], speeds: Mapping[str, float] | None = None
) -> list[Worker]:
    """Workers from ``"H100:13,H200:3"`` (or ``{"H100": 13, "H200": (3, 3.20)}``).

    Ids are ``CLASS-i``; the price comes from ``@PRICE`` or ``DEFAULT_PRICES``. Classes
    are those of ``DEFAULT_SPEEDS`` plus any named in ``speeds``. Every mistake is a
    one-line ``ValueError`` that shows the syntax.
    """
    known = {**DEFAULT_SPEEDS, **(speeds or {})}
    entries: list[tuple[str, int, float | None]] = []
    if isinstance(spec, str):
        for part in (p.strip() for p in spec.split(",")):
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*:\s*(\d+)\s*(?:@\s*([0-9]*\.?[0-9]+))?", part)
            if match is None:
                raise ValueError(f"bad fleet entry {part!r}: use {FLEET_SYNTAX}")
            name, count, price = match.groups()
            entries.append((name, int(count), float(price) if price is not None else None))
    else:
        for name, value in spec.items():
            try:
                count, price = (value, None) if isinstance(value, int) else value
                entries.append((name, int(count), None if price is None else float(price)))
            except (TypeError, ValueError):
                raise ValueError(f"bad fleet entry {name}: {value!r}: give a count or (count, price)") from None
    if not entries:
        raise ValueError(f"empty fleet: use {FLEET_SYNTAX}")
    workers: list[Worker] = []
    seen: set[str] = set()
    for name, count, price in entries:
        hardware = _hardware_class(name, known)
        if hardware in seen:
            raise ValueError(f"hardware class {hardware} is listed twice in fleet: use {FLEET_SYNTAX}")
        if count < 1:
            raise ValueError(f"fleet entry {name}:{count} needs at least one worker: use {FLEET_SYNTAX}")
        seen.add(hardware)
        workers += [
            Worker(
                id=f"{hardware}-{i}", hardware=hardware, device="cpu" if hardware == "cpu" else "cuda",
                price_per_hour=DEFAULT_PRICES.get(hardware, 0.0) if price is None else price,
            )
            for i in range(count)
        ]
    return workers


# --------------------------------------------------------------------------- the surrogate


def _rng(*parts: Any) -> np.random.Generator:
    """A generator seeded by any tuple of values (stable across processes, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def knob_unit(knob: Knob, value: KnobValue | None) -> float | None:
    """A knob value on [0, 1] over its range (log-scaled for log knobs; choices by index).

    None for a value the knob cannot place (missing, not a number, not a choice).
    Values outside a range map outside [0, 1]: the bowl keeps rising there.
    """
    if value is None:
        return None
    if knob.choices is not None:
        matches = [i for i, c in enumerate(knob.choices) if c == value and type(c) is type(value)]
        matches = matches or [i for i, c in enumerate(knob.choices) if c == value or str(c) == str(value)]
        if not matches:
            return None
        return matches[0] / (len(knob.choices) - 1) if len(knob.choices) > 1 else 0.5
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    assert knob.low is not None and knob.high is not None
    if knob.log:
        if value <= 0:
            return None
        return (math.log(value) - math.log(knob.low)) / (math.log(knob.high) - math.log(knob.low))
    return (float(value) - knob.low) / (knob.high - knob.low)


def knob_value(knob: Knob, unit: float) -> KnobValue:
    """The inverse of ``knob_unit``: the knob value nearest to ``unit`` (for reports)."""
    if knob.choices is not None:
        n = len(knob.choices)
        return knob.choices[min(n - 1, max(0, round(unit * (n - 1))))]
    assert knob.low is not None and knob.high is not None
    if knob.log:
        value = math.exp(math.log(knob.low) + unit * (math.log(knob.high) - math.log(knob.low)))
    else:
        value = knob.low + unit * (knob.high - knob.low)
    value = min(knob.high, max(knob.low, value))
    return round(value) if knob.integer else value


Pair = tuple[str, str]


class RunSurrogate(Protocol):
    """What the simulated executor asks of a model of training (``Surrogate``, or one
    fitted to real runs: ``labfleet.planning.FittedSurrogate``)."""

    source: str  # one line: where the model comes from (reports say it)
    setup_seconds: float
    overhead_seconds: float
    metric_name: str

    def expected(self, knobs: Mapping[str, KnobValue], hardware_speed: float = 1.0,
                 budget_seconds: float | None = None) -> float: ...

    def evaluate(self, knobs: Mapping[str, KnobValue], hardware_speed: float, seed: int, run_id: int,
                 budget_seconds: float, hardware: str | None = None
                 ) -> tuple[Outcome, float | None, dict[str, float | str], float, str]: ...


@dataclass(frozen=True)
class Surrogate:
    """A smooth, seeded stand-in for training: the metric as a function of the knobs.

        metric = base + sum_i w_i d_i^2 + sum_pairs w_ij d_i d_j - speed_gain * ln(s) + noise
        d_i = u_i - opt_i,  u_i = the knob's value on [0, 1] (see ``knob_unit``)

    (signs flipped for ``direction = "maximize"``). Optima, weights and interactions
    not given are drawn from ``seed``: weights are scaled so the ``start`` config (the
    target's current values; the centre of each range if not given) sits about
    ``default_gap`` above the optimum, as autoresearch went 1.003 -> 0.974. Noise is
    seeded by (seed, the run's seed, run id): the same run is reproducible, a repeat
    with another seed is not identical. ``s`` is the worker class's speed (H200 = 1.09:
    9% more steps in the same budget), which also sets the figures ``steps``,
    ``tokens_per_second`` and ``elapsed_seconds`` the hardware analysis reads.
    """

    knobs: Mapping[str, Knob] = field(default_factory=dict)
    seed: int = 0
    base: float = 0.97  # the metric at the optimum on the reference class (speed 1)
    default_gap: float = 0.03  # how much worse the start config is than the optimum
    start: Mapping[str, KnobValue] | None = None  # the starting values; None: centre of each range
    optimum: Mapping[str, float] | None = None  # per knob, on [0, 1]; missing ones are drawn
    weights: Mapping[str, float] | None = None  # per knob, metric units; missing ones are drawn
    interactions: Mapping[Pair, float] | None = None  # None: a few drawn pairs; {}: none
    interaction_scale: float = 0.6  # strength of drawn interactions relative to sqrt(w_i w_j)
    noise_sd: float = 0.002  # seed-to-seed standard deviation of the metric
    speed_gain: float = 0.02  # metric gained per e-fold of steps
    # The budget the bowl was sized for: a run with another budget gets
    # speed_gain * ln(budget / reference) too (screening on short budgets). None: no effect.
    reference_budget_seconds: float | None = None
    steps_per_budget_unit: float = 3.18  # steps per second of budget at speed 1 (autoresearch: 953 in 300 s)
    tokens_per_step: int = 524_288
    peak_vram_mb: float = 45_060.0
    crash_rate: float = 0.02  # chance a run crashes partway (an OOM, a shape error)
    hang_rate: float = 0.005  # chance a run hangs until the hard timeout
    setup_seconds: float = 180.0  # once per worker: data, tokenizer, compile cache
    overhead_seconds: float = 20.0  # per run: process start, compile, final evaluation
    direction: str = "minimize"
    metric_name: str = "val_bpb"
    # resolved in __post_init__: the given values plus the drawn ones
    resolved_optimum: Mapping[str, float] = field(init=False, repr=False, compare=False)
    resolved_weights: Mapping[str, float] = field(init=False, repr=False, compare=False)
    resolved_interactions: Mapping[Pair, float] = field(init=False, repr=False, compare=False)
    source = "hand-made: a seeded quadratic bowl with interactions (no measured runs)"

    @classmethod
    def for_target(cls, knobs: Mapping[str, Knob], seed: int = 0, **overrides: Any) -> Surrogate:
        """A surrogate over a target's knob definitions (``target.knobs``)."""
        return cls(knobs=dict(knobs), seed=seed, **overrides)

    def __post_init__(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be minimize or maximize, not {self.direction!r}")
        if self.noise_sd < 0 or self.speed_gain < 0 or self.setup_seconds < 0 or self.overhead_seconds < 0:
            raise ValueError("noise_sd, speed_gain, setup_seconds and overhead_seconds must be >= 0")
        if not (0 <= self.crash_rate and 0 <= self.hang_rate and self.crash_rate + self.hang_rate <= 1):
            raise ValueError("crash_rate and hang_rate must be >= 0 and sum to at most 1")
        for label, given in (("optimum", self.optimum), ("weights", self.weights), ("start", self.start)):
            unknown = sorted(set(given or {}) - set(self.knobs))
            if unknown:
                raise ValueError(f"{label} names unknown knob {unknown[0]!r} (knobs: {', '.join(self.knobs) or 'none'})")
        names = sorted(self.knobs)
        start_u = {name: self._start_unit(name) for name in names}
        optimum = dict(self.optimum or {})
        raw: dict[str, float] = {}
        for name in names:
            rng = _rng(self.seed, "knob", name)
            knob = self.knobs[name]
            if knob.choices is not None and len(knob.choices) > 1:
                drawn_opt = float(rng.integers(len(knob.choices))) / (len(knob.choices) - 1)
            else:
                drawn_opt = float(rng.uniform(0.1, 0.9))
            optimum.setdefault(name, drawn_opt)
            raw[name] = float(rng.lognormal(0.0, 0.6))  # a few knobs matter more than others
        given_w = dict(self.weights or {})
        drawn = [n for n in names if n not in given_w]
        # Scale the drawn weights so the start's main effects add up to default_gap.
        given_gap = sum(given_w[n] * (start_u[n] - optimum[n]) ** 2 for n in given_w)
        drawn_gap = sum(raw[n] * (start_u[n] - optimum[n]) ** 2 for n in drawn)
        scale = max(0.0, self.default_gap - given_gap) / drawn_gap if drawn_gap > 1e-12 else self.default_gap
        weights = {**{n: raw[n] * scale for n in drawn}, **given_w}
        if self.interactions is None:
            interactions = self._draw_interactions(names, weights)
        else:
            interactions = {}
            for (a, b), w in self.interactions.items():
                if a not in self.knobs or b not in self.knobs or a == b:
                    raise ValueError(f"interaction ({a!r}, {b!r}) must name two different knobs")
                interactions[(a, b) if a < b else (b, a)] = float(w)
        object.__setattr__(self, "resolved_optimum", optimum)
        object.__setattr__(self, "resolved_weights", weights)
        object.__setattr__(self, "resolved_interactions", interactions)

    def _start_unit(self, name: str) -> float:
        value = (self.start or {}).get(name)
        unit = knob_unit(self.knobs[name], value)
        if value is not None and unit is None:
            raise ValueError(f"start value {value!r} of knob {name} is not in its range or choices")
        return 0.5 if unit is None else unit

    def _draw_interactions(self, names: list[str], weights: Mapping[str, float]) -> dict[Pair, float]:
        """About one interacting pair per two knobs, kept small enough that the bowl stays a bowl."""
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        if not pairs or self.interaction_scale == 0:
            return {}
        rng = _rng(self.seed, "interactions")
        count = max(1, len(names) // 2)
        chosen = sorted(rng.choice(len(pairs), size=count, replace=False).tolist())
        coupling = {pairs[i]: float(rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.0)) * self.interaction_scale for i in chosen}
        # In units of sqrt(w_i w_j), the form is 1 on the diagonal and c/2 off it;
        # shrink the couplings until its smallest eigenvalue is comfortably positive.
        index = {n: i for i, n in enumerate(names)}
        matrix = np.eye(len(names))
        for (a, b), c in coupling.items():
            matrix[index[a], index[b]] = matrix[index[b], index[a]] = c / 2
        smallest = float(np.linalg.eigvalsh(matrix).min())
        shrink = 1.0 if smallest >= 0.25 else 0.75 / (1.0 - smallest)
        return {p: c * shrink * math.sqrt(weights[p[0]] * weights[p[1]]) for p, c in coupling.items()}

    # ----------------------------------------------------------------- the objective

    def deviations(self, knobs: Mapping[str, KnobValue]) -> dict[str, float]:
        """u_i - opt_i per knob; knobs not given (or not placeable) take their start value."""
        out = {}
        for name, knob in self.knobs.items():
            unit = knob_unit(knob, knobs.get(name))
            out[name] = (self._start_unit(name) if unit is None else unit) - self.resolved_optimum[name]
        return out

    def expected(self, knobs: Mapping[str, KnobValue], hardware_speed: float = 1.0, budget_seconds: float | None = None) -> float:
        """The noise-free metric: what many seeds of this config average to."""
        d = self.deviations(knobs)
        penalty = sum(w * d[n] ** 2 for n, w in self.resolved_weights.items())
        penalty += sum(w * d[a] * d[b] for (a, b), w in self.resolved_interactions.items())
        penalty -= self.speed_gain * math.log(self._step_factor(hardware_speed, budget_seconds))
        return self.base + penalty if self.direction == "minimize" else self.base - penalty

    def best_knobs(self) -> dict[str, KnobValue]:
        """The knob values nearest the drawn optimum (for judging how close a session got)."""
        return {name: knob_value(knob, self.resolved_optimum[name]) for name, knob in self.knobs.items()}

    def _step_factor(self, hardware_speed: float, budget_seconds: float | None) -> float:
        if hardware_speed <= 0:
            raise ValueError(f"hardware speed must be > 0, not {hardware_speed}")
        factor = hardware_speed
        if self.reference_budget_seconds and budget_seconds:
            factor *= budget_seconds / self.reference_budget_seconds
        return factor

    def evaluate(
        self, knobs: Mapping[str, KnobValue], hardware_speed: float, seed: int, run_id: int, budget_seconds: float,
        hardware: str | None = None,
    ) -> tuple[Outcome, float | None, dict[str, float | str], float, str]:
        """One run: (outcome, metric, figures, duration seconds, log text).

        The duration covers overhead and training, not setup; a hang's is infinite
        (whoever runs it stops it at the hard timeout). ``hardware`` (the class name)
        is unused here: the bowl's classes differ by speed alone.
        """
        rng = _rng(self.seed, "run", seed, run_id)
        noise, fate, fraction = float(rng.normal(0.0, 1.0)), float(rng.random()), float(rng.random())
        header = f"simulated run {run_id}: seed {seed}, speed {hardware_speed:g}x, budget {budget_seconds:g} s"
        steps_per_second = hardware_speed * self.steps_per_budget_unit
        if fate < self.crash_rate:
            at = fraction * (self.overhead_seconds + budget_seconds)
            step = int(max(0.0, at - self.overhead_seconds) * steps_per_second)
            log = (f"{header}\nstep {step:05d}\nTraceback (most recent call last):\n  File \"train.py\", line 1, in <module>\n"
                   "torch.OutOfMemoryError: CUDA out of memory (simulated crash)")
            return Outcome.CRASHED, None, {}, at, log
        if fate < self.crash_rate + self.hang_rate:
            return Outcome.TIMEOUT, None, {}, math.inf, f"{header}\nstep 00000\n(simulated hang: no progress)"
        metric = self.expected(knobs, hardware_speed, budget_seconds) + self.noise_sd * noise
        steps = round(steps_per_second * budget_seconds)
        figures: dict[str, float | str] = {
            "steps": steps,
            "tokens_per_second": round(steps_per_second * self.tokens_per_step, 1),
            "elapsed_seconds": float(budget_seconds),
            "peak_vram_mb": self.peak_vram_mb,
        }
        block = "\n".join(f"{key + ':':<18}{value}" for key, value in {self.metric_name: f"{metric:.6f}", **figures}.items())
        return Outcome.OK, metric, figures, self.overhead_seconds + budget_seconds, f"{header}\n---\n{block}"


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class SimOutcome:
    """What a model says one run does; ``duration`` excludes setup (``math.inf``: a hang)."""

    outcome: Outcome
    metric: float | None = None
    figures: Mapping[str, float | str] = field(default_factory=dict)
    duration: float = 0.0
    log: str = ""
    reason: str = ""  # empty: the usual one for the outcome


RunModel = Callable[[Job, Worker], SimOutcome]

_EXIT_CODES = {Outcome.OK: 0, Outcome.NO_METRIC: 0, Outcome.SUSPECT: 0, Outcome.CRASHED: 1, Outcome.NAN: 1}


@dataclass
class _SimRun:
    handle: str
    job: Job
    result: RunResult  # complete from the start: the model is deterministic
    log: str
    finish_at: float
    cancelled: bool = False
    written: bool = False  # run.log and result.json are in the run directory


class SimulatedWorld:
    """The clock and every run started in it: what outlives one executor object.

    A run's files appear in its run directory when the clock passes its end, whether
    or not any executor is following it, as a real harness writes ``result.json``
    while the orchestrator is dead.
    """

    def __init__(self, clock: VirtualClock | None = None, run_files: bool = True) -> None:
        self.clock = clock or VirtualClock()
        # False: no run.log / result.json (a throw-away simulation; adopting after a restart
        # then finds no result, so only a world that writes them survives one)
        self.run_files = run_files
        self.runs: dict[str, _SimRun] = {}  # handle -> run
        self.set_up: set[str] = set()  # worker ids that paid their setup
        self._occupant: dict[str, str] = {}  # worker id -> handle of its latest run
        self._unwritten: list[tuple[float, int, str]] = []  # heap of (finish, order, handle)
        self._started = 0
        self.cancels = 0  # how many runs were cancelled: executors rescan only when it moves

    def add(self, job: Job, result: RunResult, log: str) -> str:
        self._started += 1
        handle = f"sim-{self._started}"
        run = _SimRun(handle, job, result, log, result.ended_at)
        self.runs[handle] = run
        self._occupant[job.worker_id] = handle
        heapq.heappush(self._unwritten, (run.finish_at, self._started, handle))
        return handle

    def occupied(self, worker_id: str) -> bool:
        """Whether a run (maybe started by an executor since gone) still holds the worker."""
        handle = self._occupant.get(worker_id)
        run = self.runs.get(handle) if handle else None
        return run is not None and not run.cancelled and run.finish_at > self.clock.now()

    def cancel(self, handle: str) -> None:
        run = self.runs.get(handle)
        if run is not None and run.finish_at > self.clock.now():
            run.cancelled = True
            self.cancels += 1

    def settle(self) -> None:
        """Write the files of every run that has ended by now."""
        now = self.clock.now()
        while self._unwritten and self._unwritten[0][0] <= now:
            _, _, handle = heapq.heappop(self._unwritten)
            run = self.runs[handle]
            if not run.cancelled and not run.written and self.run_files:
                _write_run_files(run)
                run.written = True


def _write_run_files(run: _SimRun) -> None:
    run_dir = run.job.request.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOG_FILE).write_text(run.log + "\n")
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(run.result.to_json(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, run_dir / RESULT_FILE)


# --------------------------------------------------------------------------- the executor


class SimulatedExecutor(Executor):
    """Runs jobs on a virtual clock: ``start`` schedules, ``wait`` jumps, ``poll`` reports.

    ``model`` decides what each run does (default: the surrogate, reading ``job.knobs``).
    The executor adds what the harness and the worker add: setup the first time a
    worker runs a job, the hard timeout (``timeout_seconds - budget_seconds + budget``
    from the target's ``labfleet.toml``), and the run's files.
    """

    name = "simulated"
    reads_commits = False  # the model reads job.knobs; git calls in this process write what they name

    def __init__(
        self,
        workers: Sequence[Worker] | str,
        surrogate: RunSurrogate | None = None,
        clock: VirtualClock | None = None,
        speeds: Mapping[str, float] | None = None,
        world: SimulatedWorld | None = None,
        *,
        model: RunModel | None = None,
        run_files: bool = True,
    ) -> None:
        self.speeds = {**DEFAULT_SPEEDS, **(speeds or {})}
        self._workers = parse_fleet(workers, self.speeds) if isinstance(workers, str) else list(workers)
        if not self._workers:
            raise ExecutorError("a simulated fleet needs at least one worker")
        ids = [w.id for w in self._workers]
        if len(set(ids)) != len(ids):
            raise ExecutorError(f"duplicate worker ids in the simulated fleet: {ids}")
        missing = sorted({w.hardware for w in self._workers} - set(self.speeds))
        if missing:
            raise ExecutorError(f"no speed for hardware class {missing[0]!r}: pass speeds={{{missing[0]!r}: ...}}")
        if world is not None and clock is not None and world.clock is not clock:
            raise ExecutorError("the world has its own clock: pass the world's clock or none")
        self.world = world or SimulatedWorld(clock, run_files=run_files)
        self.clock = self.world.clock
        self.surrogate: RunSurrogate = surrogate or Surrogate()
        self.model: RunModel = model or self.surrogate_model
        self._by_id = {w.id: w for w in self._workers}
        self._following: dict[int, tuple[str, Job]] = {}  # run id -> (handle, job)
        self._busy: set[str] = set()  # worker ids of the runs followed
        self._due: list[tuple[float, int]] = []  # heap of (finish, run id); entries no longer followed are skipped
        self._cancels_seen = 0
        self._reports: list[Finished] = []  # lost, cancelled or collected on adopt; waiting for poll
        self._specs: dict[Path, TargetSpec | None] = {}

    # ----------------------------------------------------------------- the model

    def speed(self, hardware: str) -> float:
        return self.speeds[hardware]

    def _spec(self, target_dir: Path) -> TargetSpec | None:
        """The target's [target] table (cached; it is frozen for a session)."""
        if target_dir not in self._specs:
            try:
                self._specs[target_dir] = parse_config((target_dir / CONFIG_FILE).read_text()).target
            except (OSError, ConfigError):
                self._specs[target_dir] = None
        return self._specs[target_dir]

    def limits(self, job: Job) -> tuple[float, float]:
        """(budget, hard timeout) in seconds, as the harness computes them."""
        spec = self._spec(job.request.target_dir)
        if spec is None:
            budget = job.request.budget_seconds or DEFAULT_BUDGET_SECONDS
            return budget, 2 * budget + self.surrogate.overhead_seconds
        budget = job.request.budget_seconds or spec.budget_seconds
        return budget, spec.timeout_seconds - spec.budget_seconds + budget

    def surrogate_model(self, job: Job, worker: Worker) -> SimOutcome:
        """The default model: the surrogate at the job's knobs on the worker's class."""
        budget, _ = self.limits(job)
        outcome, metric, figures, duration, log = self.surrogate.evaluate(
            job.knobs, self.speed(worker.hardware), job.request.seed, job.run_id, budget, hardware=worker.hardware
        )
        return SimOutcome(outcome, metric, figures, duration, log)

    # ----------------------------------------------------------------- the contract

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def start(self, job: Job) -> str:
        worker = self._by_id.get(job.worker_id)
        if worker is None:
            raise ExecutorError(f"unknown worker {job.worker_id!r}")
        if job.worker_id in self._busy or self.world.occupied(job.worker_id):
            raise ExecutorError(f"worker {job.worker_id} is busy")
        sim = self.model(job, worker)
        budget, timeout = self.limits(job)
        outcome, metric, figures, run_seconds, log, reason = (
            sim.outcome, sim.metric, dict(sim.figures), sim.duration, sim.log, sim.reason
        )
        if run_seconds > timeout:
            outcome, metric, run_seconds, reason = Outcome.TIMEOUT, None, timeout, ""
        if not reason:
            reason = {
                Outcome.CRASHED: "exited with code 1",
                Outcome.TIMEOUT: f"killed after {timeout:g} s (hard timeout)",
                Outcome.NAN: "the run reported FAIL (loss not finite or exploding)",
            }.get(outcome, "")
        setup = 0.0 if worker.id in self.world.set_up else self.surrogate.setup_seconds
        self.world.set_up.add(worker.id)
        spec = self._spec(job.request.target_dir)
        now = self.clock.now()
        run_dir = job.request.run_dir
        if self.world.run_files:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / LOG_FILE).write_text(f"[simulated] started on {worker.id} ({worker.hardware})\n")
        result = RunResult(
            outcome=outcome, reason=reason, metric_name=spec.metric if spec else self.surrogate.metric_name,
            metric=metric, figures=figures, commit=job.request.commit, seed=job.request.seed,
            budget_seconds=budget, device=job.request.device, threads=job.request.threads,
            exit_code=_EXIT_CODES.get(outcome), started_at=now, ended_at=now + setup + run_seconds,
            run_seconds=run_seconds, setup_seconds=setup, setup_cached=setup == 0.0,
            log_path=str(run_dir / LOG_FILE), log_tail="\n".join(log.splitlines()[-LOG_TAIL_LINES:]),
            frozen_hashes=dict(job.request.frozen_hashes or {}),
        )
        handle = self.world.add(job, result, log)
        self._follow(job.run_id, handle, job)
        return handle

    def _follow(self, run_id: int, handle: str, job: Job) -> None:
        self._following[run_id] = (handle, job)
        self._busy.add(job.worker_id)
        heapq.heappush(self._due, (self.world.runs[handle].finish_at, run_id))

    def _unfollow(self, run_id: int) -> tuple[str, Job] | None:
        following = self._following.pop(run_id, None)
        if following is not None:
            self._busy.discard(following[1].worker_id)
            if not self.world.run_files:  # nothing can adopt it later: let it go
                self.world.runs.pop(following[0], None)
        return following

    def adopt(self, job: Job, handle: str) -> None:
        self.world.settle()
        run = self.world.runs.get(handle)
        if run is not None and run.job.run_id == job.run_id:
            if run.cancelled:
                self._reports.append(Finished(job.run_id, job.worker_id, None, "cancelled"))
            else:
                self._follow(job.run_id, handle, job)
            return
        result = read_result(job.request.run_dir)
        if result is not None:
            self._reports.append(Finished(job.run_id, job.worker_id, result))
        else:
            why = f"no simulated run {handle!r} in this world and no result in its run directory"
            self._reports.append(Finished(job.run_id, job.worker_id, None, why))

    def poll(self) -> list[Finished]:
        self.world.settle()
        done, self._reports = self._reports, []
        now = self.clock.now()
        ended: list[tuple[float, int, Finished]] = []
        if self.world.cancels != self._cancels_seen:  # cancelled through another executor over the same world
            self._cancels_seen = self.world.cancels
            for run_id, (handle, job) in list(self._following.items()):
                run = self.world.runs[handle]
                if run.cancelled:
                    ended.append((run.finish_at, run_id, Finished(run_id, job.worker_id, None, "cancelled")))
                    self._unfollow(run_id)
        while self._due and self._due[0][0] <= now:
            finish, run_id = heapq.heappop(self._due)
            following = self._following.get(run_id)
            if following is None or self.world.runs[following[0]].finish_at != finish:
                continue  # reported already (cancelled), or a stale entry
            handle, job = following
            run = self.world.runs[handle]
            ended.append((finish, run_id, Finished(run_id, job.worker_id, replace(run.result))))
            self._unfollow(run_id)
        return done + [f for _, _, f in sorted(ended, key=lambda e: e[:2])]

    def cancel(self, run_id: int) -> None:
        following = self._following.get(run_id)
        if following is None:
            return
        handle, job = following
        in_step = self._cancels_seen == self.world.cancels
        self.world.cancel(handle)
        if in_step:  # our own cancel is reported below: no rescan for it
            self._cancels_seen = self.world.cancels
        self._unfollow(run_id)
        self._reports.append(Finished(run_id, job.worker_id, None, "cancelled"))

    def running(self) -> list[int]:
        return sorted(self._following)

    def wait(self, seconds: float) -> None:
        """Advance the clock to the next finish, or by ``seconds`` if that comes first.

        With nothing running it advances by ``seconds`` only when that is finite, so
        ``wait(math.inf)`` (the simulate CLI's tick) never jumps to infinity.
        """
        if self._reports:
            return
        now = self.clock.now()
        while self._due and self._due[0][1] not in self._following:
            heapq.heappop(self._due)  # entries of runs reported already
        until = now + seconds
        if self._due:
            until = min(until, self._due[0][0])
        if math.isfinite(until):
            self.clock.advance_to(until)

    def close(self) -> None:
        for run_id in list(self._following):
            self.cancel(run_id)
        self._reports.clear()
