"""The verbs: one function each, the same for every front end.

The CLI (``labfleet.cli``), the MCP server (``labfleet.mcp_server``) and the
benchmarks call these, so a guard written here holds everywhere::

    run(target, options=..., resume=False, new=False)    # a research session, to its end (also `serve`)
    submit(target, description=..., patch=..., knobs=...) / submit_factors(target, factors)
    show(target, experiment)     wait(target, experiments, timeout)
    promote(target, experiment)  cancel(target, experiment)
    status(target)  results(target)  best(target)  holdout(target)  export(target)
    effects(target, wave)        read_file(target, path)
    simulate(target, fleet=..., hours=..., ...)          # a whole session on a virtual clock

Each takes the target folder, opens what it needs (the ledger, the target), does
one thing, closes, and returns JSON-ready data (or raises a ``LabfleetError`` with
one line saying why). The work itself is done by the layer that owns it: the
session (``labfleet.session``), the agent verbs' bookkeeping (``labfleet.agents``),
the read-side views (``labfleet.views``), the simulator (``labfleet.simulate``).
This module imports them only when called, so importing it is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labfleet.errors import LabfleetError

if TYPE_CHECKING:
    from labfleet.ledger import Ledger
    from labfleet.session import Event
    from labfleet.session.wiring import WiredSession
    from labfleet.simulate import Simulation
    from labfleet.target import Target

__all__ = [
    "best",
    "cancel",
    "effects",
    "export",
    "holdout",
    "promote",
    "read_file",
    "results",
    "run",
    "show",
    "simulate",
    "status",
    "submit",
    "submit_factors",
    "wait",
]


def state_dir(target: Path) -> Path:
    from labfleet.ledger import STATE_DIR

    return Path(target).resolve() / STATE_DIR


def has_ledger(target: Path) -> bool:
    from labfleet.ledger import LEDGER_FILE

    return (state_dir(target) / LEDGER_FILE).exists()


@contextmanager
def ledger_of(target: Path, must_exist: bool = True) -> Iterator[Ledger]:
    """The target's ledger, open for one verb."""
    from labfleet.ledger import Ledger

    if must_exist and not has_ledger(target):
        raise LabfleetError(f"no labfleet ledger in {Path(target).resolve()}: start a session with `labfleet run`")
    ledger = Ledger.for_target(state_dir(target))
    try:
        yield ledger
    finally:
        ledger.close()


def _target(target: Path, check_files: bool = False) -> Target:
    from labfleet.target import load_target

    return load_target(target, check_files=check_files)


# --------------------------------------------------------------------------- sessions


def run(
    target: Path, *, options: Mapping[str, Any] | None = None, researcher_options: Mapping[str, Any] | None = None,
    resume: bool = False, new: bool = False, on_event: Callable[[Event], None] = lambda event: None,
    on_start: Callable[[WiredSession], None] = lambda wired: None, on_warning: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start or resume a session and run it to its end; ``{"session", "stop_reason"}``.

    ``options``: settings by their flat names (``SessionConfig``'s), over the recorded
    ones on a resume; ``on_start`` hears the wired session before the loop runs.
    ``labfleet serve`` is this with ``researcher="external", serve=True``.
    Ctrl-C (``KeyboardInterrupt``) stops the loop, queues its running experiments
    again for a resume, and propagates.
    """
    from labfleet.session.wiring import open_session

    if resume and new:
        raise LabfleetError("--resume and --new exclude each other")
    loaded = _target(target, check_files=True)
    with open_session(loaded, options=options, researcher_options=researcher_options, resume=resume, new=new,
                      on_event=on_event, on_warning=on_warning) as wired:
        on_start(wired)
        reason = wired.run()
        return {"session": wired.session_id, "stop_reason": reason}


def simulate(
    target: Path | None = None, *, fleet: str = "H100:13,H200:3", hours: float = 8.0, researcher: str = "waves",
    budget: float | None = None, screen: Sequence[str] = (), validate: Sequence[str] = (),
    surrogate: str = "hand-made", noise: float = 0.002, crash_rate: float = 0.02, hang_rate: float = 0.005,
    setup_seconds: float = 180.0, seed: int = 0, until: float | None = None, patience: int | None = None,
    max_usd: float | None = None, save: Path | None = None, researcher_latency: str | None = None,
    from_ledger: Path | None = None,
) -> Simulation:
    """A whole session on a virtual clock, on a throw-away clone of ``target``.

    ``target`` None: the folder holding ``from_ledger``'s ledger if it is a target, else
    this folder if it has labfleet.toml, else the bundled tinygpt. ``surrogate``:
    hand-made (a seeded bowl with ``noise``, ``crash_rate``, ``hang_rate``,
    ``setup_seconds``) or measured; ``from_ledger``: fit it to a real ledger instead.
    """
    from labfleet.simulate import clone_target
    from labfleet.simulate import simulate as run_simulation
    from labfleet.target import CONFIG_FILE

    if surrogate not in ("hand-made", "measured"):
        raise LabfleetError(f"--surrogate {surrogate!r}: use hand-made or measured")
    if from_ledger is not None and surrogate != "hand-made":
        raise LabfleetError("--from-ledger and --surrogate measured are two different fits: give one")
    if from_ledger is not None and not from_ledger.exists():
        raise LabfleetError(f"--from-ledger: {from_ledger} does not exist")
    if target is None and from_ledger is not None:
        owner = from_ledger if from_ledger.is_dir() else from_ledger.resolve().parent.parent
        if (owner / CONFIG_FILE).is_file():
            target = owner
    if target is None and (Path.cwd() / CONFIG_FILE).is_file():
        target = Path.cwd()
    model_choice: Any = dict(noise_sd=noise, crash_rate=crash_rate, hang_rate=hang_rate, setup_seconds=setup_seconds)
    if surrogate == "measured":
        model_choice = "measured"
    limits: dict[str, Any] = {k: v for k, v in dict(until=until, patience=patience, max_usd=max_usd).items() if v is not None}
    try:
        with clone_target(target.resolve() if target else None, keep=save) as folder:
            return run_simulation(
                folder, fleet, researcher=researcher, hours=hours, seed=seed, budget_seconds=budget,
                screen=list(screen), validate=list(validate), surrogate=model_choice,
                from_ledger=from_ledger.resolve() if from_ledger else None,
                researcher_latency=researcher_latency, keep_files=save is not None, **limits,
            )
    except ValueError as exc:
        raise LabfleetError(str(exc)) from None


# --------------------------------------------------------------------------- reading


def status(target: Path, session: int | None = None) -> dict[str, Any]:
    """Where the session stands: running or not (daemon), counts, best, noise, cost, each worker's run."""
    from labfleet.views import status_view

    with ledger_of(target) as ledger:
        return status_view(ledger, state_dir(target), session)


def results(target: Path, session: int | None = None, last: int | None = 50) -> list[dict[str, Any]]:
    """Every experiment (the latest ``last``; None: all) with its latest run, metric, uncertainty, decision."""
    from labfleet.views import results_view

    with ledger_of(target) as ledger:
        return results_view(ledger, session, last)


def best(target: Path, session: int | None = None) -> dict[str, Any]:
    """The best version: its metric against the baseline, commit, branch, keeps, and its diff."""
    from labfleet.views import best_view

    with ledger_of(target) as ledger:
        return best_view(ledger, Path(target).resolve(), session)


def holdout(target: Path, session: int | None = None) -> list[str]:
    """The lineage checked against the holdout metric, in sentences (for people: never for a researcher)."""
    from labfleet import integrity
    from labfleet.errors import ConfigError
    from labfleet.views import _session

    with ledger_of(target) as ledger:
        loaded = _target(target)
        spec = loaded.config.holdout
        if spec is None:
            raise ConfigError("this target has no [holdout] in labfleet.toml")
        view = integrity.lineage_holdout(ledger, _session(ledger, session)["id"],
                                         spec.direction or loaded.spec.direction)
        return integrity.holdout_lines(view, loaded.spec.metric, spec.metric)


def export(target: Path, session: int | None = None) -> str:
    """autoresearch's results.tsv (commit, metric, memory_gb, status, description), as text."""
    from labfleet.views import results_tsv

    with ledger_of(target) as ledger:
        return results_tsv(ledger, _target(target).spec.metric, session)


def effects(target: Path, wave: str | None = None, last: int = 3, session: int | None = None) -> dict[str, Any]:
    """Main effects and interactions of the latest ``last`` waves (or one ``wave``), in numbers and words."""
    from labfleet.agents import wave_effects

    with ledger_of(target) as ledger:
        spec = _target(target).spec
        sid, sd, found = wave_effects(ledger, wave, last, session)
        return {"session": sid, "noise_sd": sd, "waves": {
            tag: {**eff.to_json(), "said": eff.describe(spec.metric, spec.direction)} for tag, eff in found.items()}}


def show(target: Path, experiment: int) -> dict[str, Any]:
    """One experiment: what it changed, every run (figures, log tail), the decision."""
    from labfleet import agents

    with ledger_of(target) as ledger:
        return agents.show(ledger, experiment)


def wait(target: Path, experiments: Sequence[int], timeout: float | None = None) -> list[dict[str, Any]]:
    """Block until every experiment is decided (or ``timeout`` seconds pass: an error naming the pending)."""
    from labfleet import agents

    with ledger_of(target) as ledger:
        return agents.wait(ledger, list(experiments), timeout)


def read_file(target: Path, path: str, experiment: int | None = None) -> str:
    """A target file (editable or frozen) at the best version, or at an experiment's commit."""
    from labfleet import agents

    with ledger_of(target, must_exist=False) as ledger:
        return agents.read_file(_target(target), ledger, path, experiment)


# --------------------------------------------------------------------------- acting


def submit(
    target: Path, *, description: str, hypothesis: str = "", patch: str = "", settings: Sequence[str] = (),
    knobs: Mapping[str, Any] | None = None, folder: Path | None = None, parent: int | None = None,
) -> dict[str, Any]:
    """Record one experiment (a patch, a folder's edits, knob values) and queue its run.

    ``settings``: ``KNOB=VALUE`` texts; ``knobs``: values; both checked against labfleet.toml.
    Returns ``{"experiment", "session", "parent", "status": queued | rejected, "reason"}``.
    """
    from labfleet import agents

    loaded = _target(target)
    values = agents.parse_settings(loaded, [*settings, *(f"{k}={v!r}" for k, v in (knobs or {}).items())])
    with ledger_of(target, must_exist=False) as ledger:
        return agents.submit(loaded, ledger, description=description, hypothesis=hypothesis, patch=patch,
                             knobs=values, folder=folder, parent=parent)


def submit_factors(
    target: Path, factors: Sequence[tuple[str, str]], *, description: str = "", hypothesis: str = "",
    runs: int | None = None, parent: int | None = None,
) -> dict[str, Any]:
    """Declare a wave of idea factors (name, patch against the best version) and queue its cells."""
    from labfleet import agents

    loaded = _target(target)
    with ledger_of(target, must_exist=False) as ledger:
        return agents.submit_factors(loaded, ledger, list(factors), description=description, hypothesis=hypothesis,
                                     runs=runs, parent=parent)


def promote(target: Path, experiment: int, reason: str = "promoted by hand") -> dict[str, Any]:
    """Queue validation runs for an experiment (new seeds, the validate tier); ``{"experiment", "queued_runs", "session_running"}``.

    Refused for an unknown experiment, the baseline, one already kept, one with no
    result (failed), and one whose runs are still queued or running. A finished
    session is reopened so that `labfleet run` (or `serve`) resumes it and decides.
    """
    from labfleet.ledger import LedgerError, lock_holder
    from labfleet.session import queue_validation

    with ledger_of(target) as ledger:
        loaded = _target(target)
        try:
            exp = ledger.experiment(experiment)
        except LedgerError:
            raise LabfleetError(f"no experiment {experiment} (see `labfleet results`)") from None
        if exp.parent_id is None or exp.decision in ("kept", "failed"):
            what = {"kept": "is already kept", "failed": "has no result to validate"}.get(exp.decision, "is the baseline")
            raise LabfleetError(f"e{experiment} {what}")
        if ledger.active_runs_of(experiment):
            raise LabfleetError(f"e{experiment} still has runs queued or running: wait for them first")
        queue_validation(ledger, loaded, experiment, reason)
        session = ledger.session(exp.session_id)
        if session is not None and session["status"] == "finished":
            ledger.set_session_status(exp.session_id, "stopped")  # `labfleet run` resumes it
        return {"experiment": experiment, "queued_runs": ledger.queued_runs_of(experiment), "session_running": lock_holder(state_dir(target)) is not None}


def cancel(target: Path, experiment: int) -> dict[str, Any]:
    """Cancel an experiment's queued runs now and ask the orchestrator to stop its running ones."""
    from labfleet import agents

    with ledger_of(target) as ledger:
        return agents.cancel(ledger, experiment)
