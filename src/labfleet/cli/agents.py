"""The external agent's verbs: submit, show, wait, cancel, promote, and the MCP server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from labfleet.cli.app import app
from labfleet.cli.options import JsonOption, TargetOption
from labfleet.cli.render import _say, console
from labfleet.errors import LabfleetError


@app.command()
def submit(
    patches: Annotated[list[Path] | None, typer.Argument(metavar="[PATCH]...", help="A unified diff against the best version, or a folder whose editable files differ from it; with --factor, one patch per factor.")] = None,
    target: TargetOption = Path("."),
    set_: Annotated[list[str] | None, typer.Option("--set", help="KNOB=VALUE (repeat for several knobs).")] = None,
    factor: Annotated[list[str] | None, typer.Option("--factor", help="--factor NAME PATCH (repeat): a wave of ideas, every combination run as a 2^k design.")] = None,
    runs: Annotated[int | None, typer.Option(help="With --factor: cells of the wave, a power of two (default 2^k; fewer: a 2^(k-p) fraction).", min=2)] = None,
    description: Annotated[str, typer.Option("--description", "-m", help="What the experiment changes.")] = "",
    hypothesis: Annotated[str, typer.Option(help="Why it should help.")] = "",
    parent: Annotated[int | None, typer.Option(help="Experiment to start from (default: the best so far).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Queue an experiment for the session: a patch file, a folder, or knob values.

    Works whether or not `labfleet serve` is running: the experiment waits in the
    ledger's queue. Prints its id; `labfleet wait ID` blocks until it is decided.
    `--factor NAME PATCH` (repeated) declares a wave of ideas instead: every
    combination of the patches (applied in the order given) is queued as one cell
    of a factorial design, and `labfleet effects` reports each idea's effect.
    """
    from labfleet import api

    paths = list(patches or [])
    if factor:
        if len(paths) != len(factor) or set_:
            raise LabfleetError("use --factor NAME PATCH for every idea (one patch file after each name), without --set")
        texts = []
        for path in paths:
            if not path.is_file():
                raise LabfleetError(f"{path}: no such patch file")
            texts.append(path.read_text())
        wave = api.submit_factors(target, list(zip(factor, texts, strict=True)), description=description,
                                  hypothesis=hypothesis, runs=runs, parent=parent)
        if as_json:
            print(json.dumps(wave))
            return
        queued = [c for c in wave["cells"] if c["status"] == "queued"]
        _say(f"wave {wave['wave']} ({wave['design']} over {', '.join(wave['ideas'])}): {len(queued)} cells queued, "
             f"the all-off cell is e{wave['parent']} (session {wave['session']})")
        for cell in wave["cells"]:
            _say(f"  e{cell['experiment']} cell {cell['cell']}: {' + '.join(cell['on'])}"
                 + (f"  rejected: {cell['reason']}" if cell["status"] == "rejected" else ""))
        for line in wave["aliasing"]:
            _say(f"  {line}")
        return
    if runs is not None:
        raise LabfleetError("--runs goes with --factor")
    if len(paths) > 1:
        raise LabfleetError("one patch or folder per experiment (several: give each a --factor NAME)")
    patch = paths[0] if paths else None
    folder = text = None
    if patch is not None:
        if patch.is_dir():
            folder = patch
        elif patch.is_file():
            text = patch.read_text()
        else:
            raise LabfleetError(f"{patch}: no such patch file or folder")
    out = api.submit(target, description=description or (patch.name if patch else ", ".join(set_ or [])),
                     hypothesis=hypothesis, patch=text or "", settings=set_ or [], folder=folder, parent=parent)
    if as_json:
        print(json.dumps(out))
    elif out["status"] == "rejected":
        raise LabfleetError(f"e{out['experiment']} rejected: {out['reason']}")
    else:
        _say(f"e{out['experiment']} queued (session {out['session']}, from e{out['parent']})")
    if out["status"] == "rejected":
        raise typer.Exit(1)


@app.command()
def show(
    experiment: Annotated[int, typer.Argument(help="Experiment id.")],
    target: TargetOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """One experiment: its diff, decision, every run's figures, and the latest log tail."""
    from labfleet import api

    view = api.show(target, experiment)
    if as_json:
        print(json.dumps(view, indent=2))
        return
    metric = f"{view['metric']:.6f}" if view["metric"] is not None else "-"
    _say(f"e{view['experiment']} {view['decision']} {metric}  {view['description']}")
    if view["hypothesis"]:
        _say(f"hypothesis: {view['hypothesis']}")
    _say(f"parent e{view['parent']}, commit {view['commit'][:10] or '-'}")
    for r in view["runs"]:
        m = f"{r['metric']:.6f}" if r["metric"] is not None else "-"
        _say(f"  run {r['run']} {r['role']} {r['status']} {m} on {r['worker'] or '-'} ({r['hardware'] or '-'})"
             + (f": {r['reason']}" if r["reason"] else ""))
    if view["diff"]:
        _say(view["diff"].rstrip())
    if view["log_tail"]:
        _say("--- log tail\n" + view["log_tail"])


@app.command()
def wait(
    experiments: Annotated[list[int], typer.Argument(help="Experiment ids.")],
    target: TargetOption = Path("."),
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit 1).", min=0)] = None,
    as_json: JsonOption = False,
) -> None:
    """Block until every given experiment is decided; print their decisions."""
    from labfleet import api

    done = api.wait(target, experiments, timeout)
    if as_json:
        print(json.dumps(done))
        return
    for d in done:
        metric = f"{d['metric']:.6f}" if d["metric"] is not None else "-"
        _say(f"e{d['experiment']} {d['decision']} {metric}  {d['description']}")


@app.command()
def cancel(
    experiment: Annotated[int, typer.Argument(help="Experiment id.")],
    target: TargetOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Cancel an experiment: its queued runs at once, its running ones through the orchestrator."""
    from labfleet import api

    out = api.cancel(target, experiment)
    if as_json:
        print(json.dumps(out))
        return
    _say(f"e{experiment}: {out['cancelled_queued']} queued run(s) cancelled"
         + (f", {out['stopping_running']} running run(s) being stopped" if out["stopping_running"] else ""))


@app.command()
def promote(
    experiment: Annotated[int, typer.Argument(help="Experiment id (as in `labfleet results`).")],
    target: TargetOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Validate an experiment by hand: queue repeat runs on the validate tier (the tiers table in labfleet.toml).

    A running session places them before any screening and keeps the experiment if
    its validation runs beat the best beyond the noise; otherwise `labfleet run`
    picks them up when it resumes.
    """
    from labfleet import api

    out = api.promote(target, experiment)
    running, runs = out["session_running"], out["queued_runs"]
    if as_json:
        print(json.dumps(out))
        return
    where = "the running session places them first" if running else "`labfleet run` runs them when it resumes"
    console.print(f"e{experiment}: {runs} validation run(s) queued; {where}")


@app.command()
def mcp(target: TargetOption = Path(".")) -> None:
    """An MCP server over stdio with the agent verbs as tools (for Claude Code, Codex, any MCP client).

    Tools: submit_experiment, get_status, get_results, get_best, show_experiment,
    wait_for, promote, cancel, read_file. Claude Code:
    `claude mcp add labfleet -- labfleet mcp -C /path/to/target`.
    """
    from labfleet.mcp_server import serve_stdio

    serve_stdio(target)


@app.command()
def skill() -> None:
    """Print SKILL.md: how a coding agent (Claude Code, Codex) researches with labfleet."""
    from labfleet.scaffold import bundled_path

    sys.stdout.write((bundled_path("tinygpt") / "SKILL.md").read_text())
