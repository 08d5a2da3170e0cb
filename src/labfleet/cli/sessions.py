"""Research sessions: `labfleet run` and `labfleet serve` (through ``api.run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from labfleet.cli.app import app
from labfleet.cli.options import TargetOption, _settings
from labfleet.cli.render import _print_best, _print_event, console, err_console
from labfleet.errors import LabfleetError


@app.command()
def run(
    ctx: typer.Context,
    target: TargetOption = Path("."),
    workers: Annotated[int | None, typer.Option(help="Parallel worker slots on this machine. (default 1)", min=1)] = None,
    researcher: Annotated[str | None, typer.Option(help="greedy, waves, random, grid, optuna (TPE), cmaes, llm or hybrid (ideas from the model, knobs re-tuned by Optuna after each structural keep). (default greedy)")] = None,
    max_experiments: Annotated[int | None, typer.Option(help="Stop proposing after this many experiments (baseline not counted).", min=1)] = None,
    hours: Annotated[float | None, typer.Option(help="Stop proposing after this many hours.", min=0)] = None,
    until: Annotated[float | None, typer.Option(help="Stop once the best metric reaches this value.")] = None,
    budget: Annotated[float | None, typer.Option(help="Training budget per run in seconds (default: the target's).", min=0.1)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for runs and for the researcher. (default 0)")] = None,
    margin: Annotated[float | None, typer.Option(help="A keep must beat the best by more than this. (default 0)", min=0)] = None,
    keep: Annotated[str | None, typer.Option(help="noise: a keep must beat the best beyond the measured noise (or win a repeat); margin: by --margin alone. (default noise)")] = None,
    noise_repeats: Annotated[int | None, typer.Option(help="Extra seeds of the baseline per hardware class, to measure the noise. (default 2)", min=0)] = None,
    patience: Annotated[int | None, typer.Option(help="Stop proposing after this many experiments without a keep.", min=1)] = None,
    max_usd: Annotated[float | None, typer.Option("--max-usd", help="Stop proposing once the fleet has cost this many dollars.", min=0)] = None,
    price: Annotated[float | None, typer.Option(help="Dollars per hour of one worker, for cost figures. (default 0)", min=0)] = None,
    hardware: Annotated[str | None, typer.Option(help="Hardware class name of this machine's workers. (default cpu, or gpu with --device cuda)")] = None,
    provider: Annotated[str | None, typer.Option(help="LLM researcher: anthropic, or openai (any OpenAI-compatible endpoint).")] = None,
    model: Annotated[str | None, typer.Option(help="LLM researcher: the model name.")] = None,
    base_url: Annotated[str | None, typer.Option(help="LLM researcher: the API's base URL (vLLM, Ollama, OpenRouter, a proxy).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="LLM researcher: the environment variable holding the API key. (default ANTHROPIC_API_KEY or OPENAI_API_KEY)")] = None,
    max_llm_usd: Annotated[float | None, typer.Option("--max-llm-usd", help="LLM researcher: no new model calls once they have cost this much.", min=0)] = None,
    ideas: Annotated[int | None, typer.Option(help="LLM and hybrid researchers: ideas per model call, run as a factorial wave (0: single experiments). (default 0 for llm, 3 for hybrid)", min=0)] = None,
    sampler: Annotated[str | None, typer.Option(help="Hybrid researcher: the Optuna sampler that re-tunes the knobs, tpe or cmaes. (default tpe)")] = None,
    tune_experiments: Annotated[int | None, typer.Option(help="Hybrid researcher: experiments of knob re-tuning after each structural keep. (default 8)", min=1)] = None,
    ideas_from: Annotated[str | None, typer.Option(help="Hybrid researcher: where the structural ideas come from: llm (--provider/--model), or external (an agent submits them with `labfleet submit --factor` or MCP; the session serves the queue like `labfleet serve`). (default llm)")] = None,
    executor: Annotated[str | None, typer.Option(help="local (processes on this machine), ray, or skypilot. (default local)")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address for --executor ray: auto or HOST:PORT. (default auto)")] = None,
    fleet: Annotated[str | None, typer.Option(help="fleet.toml for --executor skypilot (pools of clusters).")] = None,
    labfleet_spec: Annotated[str | None, typer.Option(help="What clusters pip-install for --executor skypilot: a version pin or a git URL. (default labfleet)")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per worker. (default 1)", min=1)] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda (one GPU per worker: cuda:0, cuda:1, ...), or mps (Apple silicon, one worker). (default cpu)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the latest session (error if there is none to continue).")] = False,
    new: Annotated[bool, typer.Option("--new", help="Start a new session even if the latest one is unfinished.")] = False,
) -> None:
    """Run a research session: propose, run on every worker, keep or discard, until a limit.

    Re-running the command (or --resume) continues the latest unfinished session,
    including one whose orchestrator was killed: finished runs are collected, lost
    ones retried. Options given on a resume override the recorded ones.
    """
    if keep is not None and keep not in ("noise", "margin"):
        raise LabfleetError(f"--keep {keep!r}: use noise or margin")
    if ideas_from is not None and ideas_from not in ("llm", "external"):
        raise LabfleetError(f"--ideas-from {ideas_from!r}: use llm or external")
    options, researcher_options = _settings(ctx.params)
    _run_session(target, {**options, "serve": False}, researcher_options, resume=resume, new=new)


@app.command()
def serve(
    ctx: typer.Context,
    target: TargetOption = Path("."),
    workers: Annotated[int | None, typer.Option(help="Parallel worker slots on this machine. (default 1)", min=1)] = None,
    budget: Annotated[float | None, typer.Option(help="Training budget per run in seconds (default: the target's).", min=0.1)] = None,
    hours: Annotated[float | None, typer.Option(help="Stop after this many hours (default: until Ctrl-C).", min=0)] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per worker. (default 1)", min=1)] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda (one GPU per worker), or mps (Apple silicon, one worker). (default cpu)")] = None,
    hardware: Annotated[str | None, typer.Option(help="Hardware class name of this machine's workers.")] = None,
    price: Annotated[float | None, typer.Option(help="Dollars per hour of one worker, for cost figures.", min=0)] = None,
    max_usd: Annotated[float | None, typer.Option("--max-usd", help="Stop once the fleet has cost this much.", min=0)] = None,
) -> None:
    """The scheduler as a daemon: runs what agents submit (`labfleet submit`, `labfleet mcp`) until Ctrl-C.

    It continues the latest unfinished session (or starts one), proposes nothing
    itself, keeps every worker busy with the queue, and decides each experiment as
    `labfleet run` does. `labfleet status` says whether a daemon is running.
    """
    options, _ = _settings(ctx.params)
    _run_session(target, {**options, "researcher": "external", "serve": True}, {}, resume=False, new=False)


def _run_session(target: Path, options: dict[str, Any], researcher_options: dict[str, Any], *, resume: bool,
                 new: bool) -> None:
    """Start or resume the session and run it to its end (``run`` and ``serve``)."""
    from labfleet import api

    def started(wired: Any) -> None:
        config = wired.config
        serving = "; serving the queue until Ctrl-C" if config.serve else ""
        if wired.resumed:
            console.print(f"resuming session {wired.session_id} ({config.researcher}, {config.workers} workers){serving}")
        else:
            console.print(f"session {wired.session_id}: {config.researcher} on {len(wired.executor.workers())} worker(s), "
                          f"budget {config.budget_seconds or wired.target.spec.budget_seconds:g} s per run{serving}")

    def warn(text: str) -> None:
        err_console.print(f"[bold red]WARNING[/]: {text}; see `labfleet doctor`")

    try:
        out = api.run(target, options=options, researcher_options=researcher_options, resume=resume, new=new,
                      on_event=_print_event, on_start=started, on_warning=warn)
    except KeyboardInterrupt:
        err_console.print("interrupted: running experiments were stopped and queued again; "
                          "`labfleet run --resume` continues")
        raise typer.Exit(130) from None
    console.print(f"session {out['session']} finished: {out['stop_reason']}")
    from labfleet.target import load_target

    _print_best(api.best(target, out["session"]), load_target(target, check_files=False).spec.metric)
