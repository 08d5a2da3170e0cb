"""The scheduler's contract: a frozen snapshot in, decisions out.

Call order, driven only by the session loop (``session.py``):

    snap = loop.snapshot()                      # frozen: champion, noise samples, tiers, rules
    decide(snap, exp, runs)                     # -> Keep | Discard | Fail | Repeat | Validate | Wait
    rank_winners(snap, waiting, slots, ...)     # -> (validate these first, discard these, confirm these)
    plan_calibration(...) / plan_champion_calibration(...)   # -> runs to Queue
    place(queued, free, tiers)                  # -> Placement(run, worker) pairs
    stop_reason(limits, ...)                    # -> "" or why proposing stops

The functions never touch the ledger, git, workers or a researcher, and never
mutate what they are given; the loop applies each decision (writes the ledger
first, then acts), so every decision can be unit-tested on a constructed snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labfleet.analysis.noise import DEFAULT_Z, Group, Verdict
from labfleet.enums import Role
from labfleet.records import Experiment, Run
from labfleet.target import Tiers

VALIDATION_SEED_OFFSET = 1000  # validation seeds differ from every screening seed
# Queued runs are placed in this order: validation first (winners waiting to be kept),
# then the baseline's noise and calibration runs, then confirmations, then new screens.
ROLE_PRIORITY = {Role.VALIDATE: 0, Role.CALIBRATE: 1, Role.NOISE: 1, Role.CONFIRM: 2, Role.SCREEN: 3}


@dataclass(frozen=True)
class Snapshot:
    """What the scheduler may know: the ledger's state as the loop last read it."""

    direction: str  # "minimize" | "maximize"
    champion: Experiment | None
    champion_metric: float | None
    samples: Mapping[Group, Sequence[float]]  # done runs' metrics by (experiment, class, budget)
    unbiased: Mapping[Group, Sequence[float]]  # the subset not chosen for looking good
    classes: tuple[str, ...] = ()  # hardware classes of the fleet, in worker order
    tiers: Tiers | None = None
    keep: str = "noise"  # "noise" | "margin"
    z: float = DEFAULT_Z
    margin: float = 0.0
    confirm_repeats: int = 1
    winding_down: bool = False  # proposing has stopped: decide what is pending, start nothing new
    ended: bool = False  # --hours has passed: no run of any role starts any more (nothing is repeated)
    # with [tiers]: a waiting winner whose probability of beating the champion falls below this is
    # dropped before it costs a run (``rank_winners``); 0: only those the champion has passed.
    # 0.6 / 0.75 / 0.9 measured no better on bench/speedup.py's bowl (10 seeds), so off by default
    drop_below: float = 0.0

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"

    def better(self, a: float, b: float, margin: float = 0.0) -> bool:
        return a < b - margin if self.minimize else a > b + margin


# ----------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Wait:
    """Nothing to do yet (runs still active, the baseline not known)."""

    reason: str = ""


@dataclass(frozen=True)
class Keep:
    metric: float
    verdict: Verdict
    run: Run


@dataclass(frozen=True)
class Discard:
    metric: float
    verdict: Verdict
    run: Run
    reason: str = ""


@dataclass(frozen=True)
class Fail:
    """No run counted (crashed, timed out, rejected, lost for good)."""

    run: Run


@dataclass(frozen=True)
class Repeat:
    """One more seed before deciding: a confirmation on the same class, or another validation run."""

    seed: int
    role: str
    place_on: str | None
    verdict: Verdict
    run: Run
    extra: tuple[Queue, ...] = ()  # runs queued with it (a screen-class confirmation beside a validation seed)


@dataclass(frozen=True)
class Validate:
    """A screened winner: it waits for the validate class (``rank_winners`` orders the waiting)."""

    verdict: Verdict
    run: Run


@dataclass(frozen=True)
class Baseline:
    """The baseline is decided (``refine``: a later seed only refines its figure)."""

    metric: float
    run: Run
    refine: bool = False


@dataclass(frozen=True)
class Queue:
    """A run to add to the queue."""

    experiment_id: int
    seed: int
    role: str
    place_on: str | None = None


@dataclass(frozen=True)
class Placement:
    run_id: int
    worker_id: str


@dataclass(frozen=True)
class Limits:
    """The session's stopping rules and the figures they are checked against."""

    max_experiments: int | None = None
    hours: float | None = None
    until: float | None = None
    patience: int | None = None
    max_usd: float | None = None
    serve: bool = False
