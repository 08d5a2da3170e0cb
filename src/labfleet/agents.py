"""The bookkeeping behind the external agent's verbs: submit, show, wait, cancel, read a file.

Claude Code, Codex or any MCP client drives labfleet through ``labfleet.api``, by
the CLI (``labfleet submit`` ...) or the MCP server (``labfleet mcp``); the verbs
there open the ledger and call these functions. Everything goes through the ledger: ``submit`` records the
experiment and queues its run whether or not a daemon (``labfleet serve``) is
running; the daemon, or the next ``labfleet run``, places it.
"""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labfleet import frozen, logs, workspace
from labfleet.errors import AgentError, LabfleetError
from labfleet.ledger import Ledger, LedgerError
from labfleet.records import Decision, Experiment, Proposal
from labfleet.session import SessionConfig, materialize, start_session
from labfleet.target import Target, unified_diff

EXTERNAL = "external"  # the researcher name of sessions an outside agent drives
LOG_TAIL_LINES = 40


def session_for_submit(target: Target, ledger: Ledger) -> int:
    """The latest session (reopened if it had finished), or a new one driven from outside."""
    latest = ledger.session()
    if latest is None:
        return start_session(target, ledger, SessionConfig(researcher=EXTERNAL))
    if latest["status"] == "finished":
        ledger.set_session_status(latest["id"], "stopped")  # `labfleet serve` / `run` resumes it
    return int(latest["id"])


def champion(ledger: Ledger, session_id: int) -> Experiment:
    """The best version so far: the latest kept experiment, else the baseline."""
    kept = ledger.latest_kept(session_id)
    if kept is not None:
        return kept
    base = ledger.baseline(session_id)
    if base is None:
        raise AgentError(f"session {session_id} has no baseline")
    return base


def parse_settings(target: Target, settings: list[str]) -> dict[str, Any]:
    """``["LEARNING_RATE=3e-3", "N_LAYER=4"]`` -> knob values, checked against labfleet.toml."""
    values: dict[str, Any] = {}
    for item in settings:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise AgentError(f"--set {item!r}: use KNOB=VALUE")
        knob = target.knobs.get(name)
        if knob is None:
            raise AgentError(f"--set {name}: no such knob (knobs: {', '.join(target.knobs) or 'none'})")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        if knob.choices is None and isinstance(value, int) and not knob.integer:
            value = float(value)
        if not knob.contains(value):
            raise AgentError(f"--set {name}={text}: outside the knob's range or choices")
        values[name] = value
    return values


def folder_patch(target: Target, ledger: Ledger, session_id: int, folder: Path) -> str:
    """A unified diff from the best version's editable files to those in ``folder``."""
    base = champion(ledger, session_id)
    parts = []
    for rel in target.spec.editable:
        path = Path(folder) / rel
        if not path.is_file():
            continue
        old = workspace.show_file(target.root, base.commit, rel)
        new = path.read_text()
        if old != new:
            parts.append(unified_diff(rel, old, new))
    if not parts:
        raise AgentError(f"the editable files in {folder} are the same as the best version's")
    return "".join(parts)


def submit(
    target: Target, ledger: Ledger, *, description: str, hypothesis: str = "", patch: str = "",
    knobs: Mapping[str, Any] | None = None, folder: Path | None = None, parent: int | None = None,
) -> dict[str, Any]:
    """Record one experiment (a patch, a folder's edits, knob values) and queue its run."""
    if not (patch or knobs or folder):
        raise AgentError("nothing to submit: give a patch file, a folder, or --set KNOB=VALUE")
    session_id = session_for_submit(target, ledger)
    frozen.check(target, json.loads(ledger.session(session_id)["frozen_hashes"]), session_id)
    if folder is not None:
        patch = folder_patch(target, ledger, session_id, folder)
    base = ledger.experiment(parent) if parent is not None else champion(ledger, session_id)
    _refuse_repeat(target, ledger, session_id, base, patch, knobs)
    config = SessionConfig.from_json(json.loads(ledger.session(session_id)["config"]))
    proposal = Proposal(description=description or "submitted", hypothesis=hypothesis, patch=patch,
                        knobs=dict(knobs or {}), tags={"source": EXTERNAL})
    exp_id, error = materialize(target, ledger, session_id, proposal, base, config)
    return {"experiment": exp_id, "session": session_id, "parent": base.id,
            "status": "rejected" if error else "queued", "reason": error}


def _refuse_repeat(target: Target, ledger: Ledger, session_id: int, base: Experiment, patch: str,
                   knobs: Mapping[str, Any] | None) -> None:
    """AgentError naming the earlier experiment when a submission repeats a tried change or setting."""
    from labfleet.researchers import ideas as ideas_mod

    history, pending = ledger.history(session_id)
    memory = ideas_mod.Memory(target.knobs)
    by_id = {r.experiment.id: r.experiment for r in history} | {e.id: e for e in pending}
    for exp in by_id.values():
        memory.add_experiment(exp, by_id.get(exp.parent_id) if exp.parent_id is not None else None)
    why = memory.why_repeat(Proposal(description="", patch=patch, knobs=dict(knobs or {})), base)
    if why:
        raise AgentError(f"not queued: {why}")


def submit_factors(
    target: Target, ledger: Ledger, factors: list[tuple[str, str]], *, description: str = "", hypothesis: str = "",
    runs: int | None = None, parent: int | None = None,
) -> dict[str, Any]:
    """Declare a wave of idea factors (name, patch against the best version) and queue its cells.

    labfleet composes the cells of a 2^k design (a regular 2^(k-p) fraction with
    ``runs`` cells; the all-off cell is the best version itself, already measured),
    applies each cell's patches in the order given, and queues every cell that
    applies and compiles; the others are recorded in every cell's tags and stated by
    ``labfleet effects``. An idea that repeats one tried before (same normalized
    patch) is refused before anything is recorded, naming the earlier experiment.
    """
    from labfleet.researchers import ideas as ideas_mod

    if len(factors) < 2:
        raise AgentError("a wave of ideas needs at least two --factor NAME PATCH")
    if len(factors) > 8:
        raise AgentError(f"{len(factors)} factors: at most 8 ideas per wave")
    try:
        ideas_mod.check_names([name for name, _ in factors])
    except ideas_mod.IdeaError as exc:
        raise AgentError(str(exc)) from None
    session_id = session_for_submit(target, ledger)
    base = ledger.experiment(parent) if parent is not None else champion(ledger, session_id)
    history, pending = ledger.history(session_id)
    memory = ideas_mod.Memory(target.knobs)
    by_id = {r.experiment.id: r.experiment for r in history} | {e.id: e for e in pending}
    for exp in by_id.values():
        memory.add_experiment(exp, by_id.get(exp.parent_id) if exp.parent_id is not None else None)
    for name, patch in factors:
        tried = memory.repeats_patch(patch, base.commit)
        if tried is not None:
            raise AgentError(f"idea {name} repeats e{tried.experiment} ({tried.name!r}"
                             + (f", wave {tried.wave}" if tried.wave else "") + "): the same change up to "
                             "whitespace, comments, numbers' spelling and context")
    files = {rel: workspace.show_file(target.root, base.commit, rel) for rel in target.spec.editable}
    k = len(factors)
    size = runs if runs is not None else 2**k
    if size < 2 or size & (size - 1):
        raise AgentError(f"--runs {size}: use a power of two (at most {2**k})")
    try:
        wave = ideas_mod.compose(files, [ideas_mod.Idea(n, p, n, hypothesis) for n, p in factors], size)
    except ideas_mod.IdeaError as exc:
        raise AgentError(str(exc)) from None
    numbers = [ideas_mod.wave_number(e.tags.get("wave", "")) for e in by_id.values()]
    number = max([x for x in numbers if x is not None], default=0) + 1
    config = SessionConfig.from_json(json.loads(ledger.session(session_id)["config"]))
    cells = []
    for proposal in ideas_mod.cell_proposals(wave, number, base, target.spec.metric, {"source": EXTERNAL}):
        if description:
            proposal = Proposal(description=f"{description}: {proposal.description}", hypothesis=proposal.hypothesis,
                                patch=proposal.patch, parent=proposal.parent, tags=proposal.tags)
        exp_id, error = materialize(target, ledger, session_id, proposal, base, config)
        cells.append({"experiment": exp_id, "cell": int(proposal.tags["cell"]), "on": proposal.tags["on"].split(","),
                      "status": "rejected" if error else "queued", "reason": error})
    return {
        "session": session_id, "wave": f"{ideas_mod.WAVE_PREFIX}{number}", "parent": base.id, "design": wave.design,
        "ideas": list(wave.names), "cells": cells,
        "centre": {"experiment": base.id, "cell": 0, "on": []},
        "conflicts": [{"on": list(c.on), "clash": list(c.clash), "reason": c.error} for c in wave.conflicts],
        "aliasing": ideas_mod.describe_aliasing(wave.names, wave.generators, json.loads(wave.conflicts_json())),
    }


def wave_effects(
    ledger: Ledger, wave: str | None = None, last: int = 3, session: int | None = None,
) -> tuple[int, float | None, dict[str, Any]]:
    """(session, noise sd used, wave tag -> Effects) for the latest ``last`` waves, or one ``wave``.

    Knob waves and idea waves alike; the noise sd is the class most of the waves ran on.
    """
    from collections import Counter

    from labfleet.analysis.effects import session_effects
    from labfleet.views import _session, noise_view

    sid = _session(ledger, session)["id"]
    history, _ = ledger.history(sid)
    noise = noise_view(ledger, sid)
    classes = Counter(r.run.hardware for r in history
                      if r.ok and ("wave" in r.experiment.tags or r.experiment.parent_id is None))
    sd = noise.get(classes.most_common(1)[0][0] or "") if classes else None
    found = session_effects(history, noise_sd=sd)
    if wave is not None:
        if wave not in found:
            raise AgentError(f"no effects for wave {wave} (waves with results: {', '.join(found) or 'none'})")
        return sid, sd, {wave: found[wave]}
    return sid, sd, dict(list(found.items())[-last:])


def _tail(path: str | None, lines: int = LOG_TAIL_LINES) -> str:
    return logs.tail_lines(path, lines)


def show(ledger: Ledger, exp_id: int) -> dict[str, Any]:
    """One experiment: what it changed, every run (figures, log tail), the decision."""
    try:
        exp = ledger.experiment(exp_id)
    except LedgerError:
        raise AgentError(f"no experiment {exp_id} (see `labfleet results`)") from None
    runs = ledger.runs_of(exp_id)
    return {
        "experiment": exp.id, "session": exp.session_id, "parent": exp.parent_id, "commit": exp.commit,
        "description": exp.description, "hypothesis": exp.hypothesis, "decision": str(exp.decision),
        "metric": exp.metric, "knobs": dict(exp.knobs), "tags": dict(exp.tags), "diff": exp.patch,
        "runs": [
            {"run": r.id, "status": str(r.status), "role": r.role, "seed": r.seed, "worker": r.worker,
             "hardware": r.hardware, "metric": r.metric, "figures": dict(r.figures), "reason": r.reason,
             "started_at": r.started_at, "ended_at": r.ended_at, "log_path": r.log_path}
            for r in runs
        ],
        "log_tail": _tail(runs[-1].log_path if runs else None),
    }


def wait(ledger: Ledger, exp_ids: list[int], timeout: float | None = None, poll: float = 0.5) -> list[dict[str, Any]]:
    """Block until every experiment is decided (or ``timeout`` seconds pass: AgentError)."""
    for exp_id in exp_ids:
        show(ledger, exp_id)  # a clear error for an unknown id before waiting
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        exps = [ledger.experiment(e) for e in exp_ids]
        if all(e.decision != Decision.PENDING for e in exps):
            return [{"experiment": e.id, "decision": str(e.decision), "metric": e.metric,
                     "description": e.description} for e in exps]
        if deadline is not None and time.monotonic() >= deadline:
            left = [f"e{e.id}" for e in exps if e.decision == Decision.PENDING]
            raise AgentError(f"timed out after {timeout:g} s; still pending: {', '.join(left)}")
        time.sleep(poll)


def cancel(ledger: Ledger, exp_id: int) -> dict[str, Any]:
    """Cancel an experiment's queued runs now and ask the orchestrator to stop its running ones."""
    exp = ledger.experiment(exp_id) if _exists(ledger, exp_id) else None
    if exp is None:
        raise AgentError(f"no experiment {exp_id} (see `labfleet results`)")
    if exp.decision != Decision.PENDING:
        raise AgentError(f"e{exp_id} is already decided ({exp.decision})")
    queued, running = ledger.cancel_runs(exp_id)
    if not running:
        ledger.decide(exp_id, Decision.FAILED, None)
    return {"experiment": exp_id, "cancelled_queued": queued, "stopping_running": running}


def _exists(ledger: Ledger, exp_id: int) -> bool:
    return ledger.has_experiment(exp_id)


def read_file(target: Target, ledger: Ledger, path: str, exp_id: int | None = None) -> str:
    """A target file (editable or frozen) at the best version, or at an experiment's commit."""
    if path not in (*target.spec.editable, *target.spec.frozen, "program.md", "labfleet.toml"):
        raise AgentError(f"{path!r} is not one of the target's files ({', '.join(target.spec.editable)}, ...)")
    latest = ledger.session()
    if exp_id is not None:
        commit = ledger.experiment(exp_id).commit
    elif latest is not None:
        commit = champion(ledger, latest["id"]).commit
    else:
        commit = workspace.resolve(target.root)
    try:
        return workspace.show_file(target.root, commit, path)
    except LabfleetError:
        raise AgentError(f"{path} does not exist at {commit[:10]}") from None
