"""The ``labfleet`` command line. Thin: parse, call one layer, print.

Heavy modules are imported inside commands so ``labfleet --help`` stays fast.
Every ``LabfleetError`` becomes one red line on stderr and exit code 1.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from labfleet.errors import LabfleetError

if TYPE_CHECKING:
    from labfleet.harness import RunResult

app = typer.Typer(
    name="labfleet",
    help="Autonomous ML research in parallel over a fleet of accelerators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _LazyConsole:
    """A rich Console made on first use: `--json` paths never import rich.console."""

    def __init__(self, **options: Any) -> None:
        self._options, self._console = options, None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


console: Any = _LazyConsole()
err_console: Any = _LazyConsole(stderr=True)

TargetOption = Annotated[
    Path, typer.Option("--target", "-C", help="Target folder (a git repo with labfleet.toml).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for agents and scripts.")]
SessionOption = Annotated[int | None, typer.Option(help="Session id (default: the latest).")]


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {_escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def main() -> None:
    """Entry point: run the app and turn labfleet errors into one clean line."""
    try:
        app()
    except LabfleetError as exc:
        raise SystemExit(_fail(str(exc)).exit_code) from None


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create.")] = Path("tinygpt"),
    from_autoresearch: Annotated[
        Path | None,
        typer.Option(
            "--from-autoresearch",
            metavar="DIR",
            help="Write a labfleet.toml that runs Karpathy's autoresearch folder DIR unchanged.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing labfleet.toml.")] = False,
) -> None:
    """Create a target: the bundled tinygpt as a new git repo, or wrap an autoresearch folder."""
    from labfleet import scaffold

    if from_autoresearch is not None:
        commit = scaffold.init_from_autoresearch(from_autoresearch, force=force)
        _pin(from_autoresearch)
        console.print(f"wrote {from_autoresearch / 'labfleet.toml'} and committed it ({commit[:8]})")
        console.print(f"next: [bold]cd {from_autoresearch} && labfleet prepare && labfleet baseline[/]")
        return
    commit = scaffold.init_bundled(directory)
    _pin(directory)
    console.print(f"created the tinygpt target in {directory} (git commit {commit[:8]})")
    console.print(f"next: [bold]cd {directory} && labfleet prepare && labfleet baseline[/], "
                  "then [bold]labfleet run --workers 2[/]")


def _pin(folder: Path) -> None:
    """Pin a new target's frozen files (``labfleet target accept-frozen`` changes the pin)."""
    from labfleet import frozen
    from labfleet.target import load_target

    frozen.record(load_target(folder, check_files=False), by="init")


@app.command()
def prepare(target: TargetOption = Path(".")) -> None:
    """Run the target's setup once on this host (data, tokenizer); later runs reuse it."""
    from labfleet import harness
    from labfleet.target import load_target

    load_target(target)
    with _spinner("running setup"):
        cache_dir, seconds, cached = harness.prepare(target.resolve())
    if cached:
        console.print(f"setup already done: {cache_dir}")
    else:
        console.print(f"setup done in {seconds:.1f} s: {cache_dir}")


@app.command()
def baseline(
    target: TargetOption = Path("."),
    seed: Annotated[int, typer.Option(help="Random seed (LABFLEET_SEED).")] = 0,
    budget: Annotated[
        float | None, typer.Option(help="Training budget in seconds (default: the target's).", min=0.1)
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps, or auto.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads for the run.", min=1)] = 1,
    as_json: JsonOption = False,
) -> None:
    """Run the unmodified target (its HEAD commit) through the harness and show the result."""
    from labfleet import harness
    from labfleet.target import load_target

    loaded = load_target(target)
    root = loaded.root
    dirty = loaded.uncommitted()
    if dirty:
        err_console.print(f"[yellow]note:[/] uncommitted changes are not part of the baseline: {', '.join(dirty[:5])}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = loaded.state_dir / "runs" / f"baseline-{stamp}-s{seed}"
    request = harness.RunRequest(
        target_dir=root,
        run_dir=run_dir,
        seed=seed,
        budget_seconds=budget,
        device=_resolve_device(device),
        threads=threads,
    )
    label = f"baseline: budget {budget or loaded.spec.budget_seconds:g} s, seed {seed}, log {run_dir / harness.LOG_FILE}"
    with _spinner(label, quiet=as_json):
        result = harness.run_experiment(request)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_result(result)
    if result.outcome != harness.Outcome.OK:
        raise typer.Exit(1)


def _resolve_device(device: str) -> str:
    from labfleet import devices

    if device == "auto":
        return devices.detect()
    if not devices.is_device(device):
        raise LabfleetError(f"--device {device!r}: use cpu, cuda, cuda:N, mps or auto")
    return device


@contextlib.contextmanager
def _spinner(label: str, quiet: bool = False) -> Iterator[None]:
    """A spinner with elapsed time while blocking work runs; one plain line when not a terminal."""
    if quiet:
        yield
        return
    if not err_console.is_terminal:
        err_console.print(f"{label} ...", highlight=False, soft_wrap=True)
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        progress.add_task(label, total=None)
        yield


def _print_result(result: RunResult) -> None:
    from rich.table import Table

    style = "green" if result.outcome == "ok" else "red"
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("outcome", f"[{style}]{result.outcome}[/]" + (f"  {result.reason}" if result.reason else ""))
    if result.metric is not None:
        table.add_row(result.metric_name, f"[bold]{result.metric:.6f}[/]")
    for key, value in result.figures.items():
        if key != result.metric_name:
            table.add_row(key, f"{value:g}" if isinstance(value, float) else str(value))
    table.add_row("commit", result.commit[:12])
    table.add_row("seed / budget", f"{result.seed} / {result.budget_seconds:g} s on {result.device}, {result.threads} thread(s)")
    table.add_row("wall", f"{result.run_seconds:.1f} s run" + (f", {result.setup_seconds:.1f} s setup" if result.setup_seconds else ""))
    for flag in result.flags:
        table.add_row("flag", f"[yellow]{flag}[/]")
    table.add_row("log", result.log_path)
    console.print(table)
    if result.outcome != "ok" and result.log_tail:
        console.print("[dim]" + "\n".join(result.log_tail.splitlines()[-10:]) + "[/]", highlight=False)


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------- sessions


def _state_dir(root: Path) -> Path:
    from labfleet.target import STATE_DIR

    return root / STATE_DIR


def _open_ledger(target: Path, must_exist: bool = True) -> tuple[Path, Any]:
    from labfleet.ledger import LEDGER_FILE, Ledger

    root = target.resolve()
    state_dir = _state_dir(root)
    if must_exist and not (state_dir / LEDGER_FILE).exists():
        raise LabfleetError(f"no labfleet ledger in {root}: start a session with `labfleet run`")
    return root, Ledger.for_target(state_dir)


@app.command()
def run(
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
    if resume and new:
        raise LabfleetError("--resume and --new exclude each other")
    if keep is not None and keep not in ("noise", "margin"):
        raise LabfleetError(f"--keep {keep!r}: use noise or margin")
    given = {k: v for k, v in dict(
        researcher=researcher, workers=workers, max_experiments=max_experiments, hours=hours, until=until,
        budget_seconds=budget, seed=seed, margin=margin, threads=threads, device=device, keep=keep,
        noise_repeats=noise_repeats, patience=patience, max_usd=max_usd, price=price, hardware=hardware,
        executor=executor, ray_address=ray_address, fleet=str(Path(fleet).resolve()) if fleet else None,
        labfleet_spec=labfleet_spec,
    ).items() if v is not None}
    llm = {k: v for k, v in dict(provider=provider, model=model, base_url=base_url, api_key_env=api_key_env,
                                 max_usd=max_llm_usd, ideas=ideas, sampler=sampler,
                                 tune_experiments=tune_experiments, source=ideas_from).items() if v is not None}
    if ideas_from is not None and ideas_from not in ("llm", "external"):
        raise LabfleetError(f"--ideas-from {ideas_from!r}: use llm or external")
    _run_session(target, {**given, "serve": False}, llm, resume=resume, new=new)


@app.command()
def serve(
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
    given = {k: v for k, v in dict(
        workers=workers, budget_seconds=budget, hours=hours, threads=threads, device=device, hardware=hardware,
        price=price, max_usd=max_usd,
    ).items() if v is not None}
    _run_session(target, {**given, "researcher": "external", "serve": True}, {}, resume=False, new=False)


def _run_session(target: Path, given: dict[str, Any], llm: dict[str, Any], *, resume: bool, new: bool) -> None:
    """Start or resume the session and run it to its end (``run`` and ``serve``)."""
    from dataclasses import replace

    from labfleet.ledger import SessionLock
    from labfleet.researchers import make_researcher
    from labfleet.session import SessionConfig, SessionLoop, start_session
    from labfleet.target import load_target

    loaded = load_target(target)
    root = loaded.root
    state_dir = _state_dir(root)
    lock = SessionLock(state_dir)
    lock.acquire()
    _, ledger = _open_ledger(root, must_exist=False)
    try:
        latest = ledger.session()
        resuming = not new and latest is not None and latest["status"] != "finished"
        if resuming:
            config = SessionConfig.from_json(json.loads(latest["config"]))
            config = replace(config, **given, researcher_options={**config.researcher_options, **llm})
        elif resume:
            raise LabfleetError("no unfinished session to resume (start one with `labfleet run`)")
        else:
            config = SessionConfig(**given, researcher_options=llm)
        if "source" in config.researcher_options and config.researcher != "hybrid":
            raise LabfleetError("--ideas-from applies to --researcher hybrid only")
        if config.researcher_options.get("source") == "external":  # the hybrid's ideas come from an agent
            config = replace(config, serve=True)
        if config.device not in ("cpu", "cuda", "mps"):
            raise LabfleetError(f"--device {config.device!r}: use cpu, cuda or mps")
        from labfleet import frozen, sandbox

        # changed frozen files refuse before anything runs (a new session checks in start_session)
        if resuming:
            frozen.check(loaded, json.loads(latest["frozen_hashes"]), latest["id"])
        if not sandbox.support().boxed:
            err_console.print(f"[bold red]WARNING[/]: {sandbox.support().warning}; see `labfleet doctor`")
        # an unknown researcher or option, a missing API key, an unreachable cluster:
        # all fail before anything is recorded
        researcher = make_researcher(config.researcher, seed=config.seed, target=loaded, **config.researcher_options)
        executor = _make_executor(config, root)
        serving = "; serving the queue until Ctrl-C" if config.serve else ""
        if resuming:
            session_id = latest["id"]
            ledger.db.execute("UPDATE sessions SET config = ? WHERE id = ?", (json.dumps(config.to_json()), session_id))
            console.print(f"resuming session {session_id} ({config.researcher}, {config.workers} workers){serving}")
        else:
            session_id = start_session(loaded, ledger, config)
            console.print(f"session {session_id}: {config.researcher} on {len(executor.workers())} worker(s), "
                          f"budget {config.budget_seconds or loaded.spec.budget_seconds:g} s per run{serving}")
        loop = SessionLoop(
            target=loaded, ledger=ledger, executor=executor, researcher=researcher,
            session_id=session_id, config=config, state_dir=state_dir, on_event=_print_event,
        )
        try:
            reason = loop.run()
        except KeyboardInterrupt:
            err_console.print("interrupted: running experiments were stopped and queued again; "
                              "`labfleet run --resume` continues")
            raise typer.Exit(130) from None
        console.print(f"session {session_id} finished: {reason}")
        _print_best(root, ledger, session_id, loaded.spec.metric)
    finally:
        ledger.close()
        lock.release()


def _make_executor(config: Any, root: Path) -> Any:
    """The fleet the session runs on: local processes (default), a Ray cluster, or SkyPilot clusters."""
    if config.executor == "ray":
        from labfleet.executors.ray import RayExecutor

        return RayExecutor(config.ray_address or "auto", threads=config.threads, price_per_hour=config.price)
    if config.executor == "skypilot":
        from labfleet.executors.skypilot import SkyPilotExecutor
        from labfleet.fleet import load_fleet

        if not config.fleet:
            raise LabfleetError("--executor skypilot needs --fleet fleet.toml (see `labfleet fleet check --help`)")
        return SkyPilotExecutor(load_fleet(root / config.fleet), labfleet_spec=config.labfleet_spec)
    if config.executor != "local":
        raise LabfleetError(f"--executor {config.executor!r}: use local, ray or skypilot")
    from labfleet.executors.local import LocalExecutor

    from labfleet.devices import local_devices

    devices = local_devices(config.device, config.workers)
    return LocalExecutor(config.workers, threads=config.threads, devices=devices,
                         hardware=config.hardware, price_per_hour=config.price)


def _print_event(event: Any) -> None:
    stamp = time.strftime("%H:%M:%S")
    if event.kind == "finished":
        return  # the caller prints the closing line
    style = {"kept": "bold green", "baseline": "bold", "failed": "red", "rejected": "red",
             "lost": "yellow", "started": "dim", "stopping": "cyan", "promoted": "cyan", "confirming": "cyan"}.get(event.kind, "")
    text = f"{stamp} {event.message}"
    console.print(f"[{style}]{_escape(text)}[/]" if style else _escape(text), highlight=False, soft_wrap=True)


def _say(text: str, **options: Any) -> None:
    """One line of plain output: no markup, no wrapping (it goes to logs and pipes)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@app.command()
def status(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Where the session stands: running or not, counts, best so far, what each worker runs."""
    from labfleet.views import status_view

    root, ledger = _open_ledger(target)
    view = status_view(ledger, _state_dir(root), session)
    if as_json:
        print(json.dumps(view, indent=2))
        return
    state = view["state"] + (f" (orchestrator pid {view['orchestrator_pid']})" if view["orchestrator_pid"] else "")
    console.print(f"session {view['session']} [bold]{state}[/]  {view['researcher']}, "
                  f"{view['config'].get('workers', 1)} worker(s), {view['elapsed_seconds'] / 60:.1f} min")
    d, r = view["decisions"], view["runs"]
    console.print(f"experiments {view['experiments']}: kept {d.get('kept', 0)}, discarded {d.get('discarded', 0)}, "
                  f"failed {d.get('failed', 0)}, pending {d.get('pending', 0)}  |  runs running {r.get('running', 0)}, "
                  f"queued {r.get('queued', 0)}, lost {r.get('lost', 0)}")
    if view["best"]:
        b = view["best"]
        delta = b["metric"] - view["baseline_metric"] if view["baseline_metric"] is not None else 0.0
        console.print(f"best: e{b['id']} {b['metric']:.6f} ({delta:+.6f} vs baseline) {b['commit_sha'][:10]}  {b['description']}")
    if view["noise"]:
        console.print("noise floor (sd of one run): " + ", ".join(f"{hw} {sd:.4f}" for hw, sd in view["noise"].items()))
    if view["cost_usd"]:
        console.print(f"fleet cost so far: ${view['cost_usd']:.2f}")
    if view["llm"]["calls"]:
        m = view["llm"]
        console.print(f"model calls {m['calls']} ({m['failed']} failed): {m['input_tokens']:,} in / "
                      f"{m['output_tokens']:,} out tokens, ${m['usd']:.2f}")
    for w in view["running"]:
        console.print(f"  {w['worker']}: e{w['experiment']} for {w['seconds']:.0f} s  {w['description']}")
    if view["box"]["warning"]:
        err_console.print(f"[bold red]WARNING[/]: {_escape(view['box']['warning'])}; see `labfleet doctor`")


@app.command()
def results(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    last: Annotated[int, typer.Option(help="Show the most recent N experiments.", min=1)] = 50,
    all_: Annotated[bool, typer.Option("--all", help="Show every experiment.")] = False,
    as_json: JsonOption = False,
    tsv: Annotated[bool, typer.Option("--tsv", help="autoresearch's results.tsv format (every experiment).")] = False,
) -> None:
    """Every experiment with its latest run: status, metric, decision, commit."""
    from labfleet.target import load_target
    from labfleet.views import results_tsv, results_view

    root, ledger = _open_ledger(target)
    if tsv:
        sys.stdout.write(results_tsv(ledger, load_target(root, check_files=False).spec.metric, session))
        return
    rows = results_view(ledger, session, None if all_ else last)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    for col in ("exp", "commit", "status", "metric", "decision", "worker", "description"):
        table.add_column(col, justify="right" if col in ("exp", "metric") else "left")
    styles = {"kept": "green", "baseline": "bold", "failed": "red"}
    for r in rows:
        metric = f"{r['metric']:.6f}" if r["metric"] is not None else "-"
        if r["uncertainty"] is not None and r["metric"] is not None:
            metric += f" ±{r['uncertainty']:.4f}"
        desc = r["description"] + (f"  ({r['reason']})" if r["reason"] and r["status"] != "done" else "")
        table.add_row(str(r["experiment"]), r["commit"] or "-", r["status"] or "-", metric,
                      Text(r["decision"], style=styles.get(r["decision"], "")), r["worker"] or "-", Text(desc))
    console.print(table)


@app.command()
def best(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    as_json: JsonOption = False,
    holdout: Annotated[bool, typer.Option("--holdout", help="Also show validation against the holdout metric for the lineage (for people: never give it to a researcher).")] = False,
) -> None:
    """The best version found: its metric against the baseline, its commit, and its diff."""
    from labfleet.target import load_target

    root, ledger = _open_ledger(target)
    if holdout:
        _print_holdout(root, ledger, session)
        return
    if as_json:
        from labfleet.views import best_view

        print(json.dumps(best_view(ledger, root, session), indent=2))
        return
    _print_best(root, ledger, session, load_target(root, check_files=False).spec.metric)


def _print_holdout(root: Path, ledger: Any, session: int | None) -> None:
    from labfleet import integrity
    from labfleet.errors import ConfigError
    from labfleet.target import load_target
    from labfleet.views import _session

    loaded = load_target(root, check_files=False)
    spec = loaded.config.holdout
    if spec is None:
        raise ConfigError("this target has no [holdout] in labfleet.toml")
    view = integrity.lineage_holdout(ledger, _session(ledger, session)["id"], spec.direction or loaded.spec.direction)
    for line in integrity.holdout_lines(view, loaded.spec.metric, spec.metric):
        _say(line)


def _print_best(root: Path, ledger: Any, session: int | None, metric: str) -> None:
    from rich.syntax import Syntax

    from labfleet.views import best_view

    view = best_view(ledger, root, session)
    if view["experiment"] is None or not view["keeps"]:
        console.print(f"best: the baseline, {metric} {view['baseline_metric']:.6f} (no change beat it)")
        return
    console.print(f"best: e{view['experiment']} {metric} [bold green]{view['metric']:.6f}[/] vs baseline "
                  f"{view['baseline_metric']:.6f} ({view['improvement']:+.6f}), {view['keeps']} keep(s)")
    console.print(f"commit {view['commit'][:10]} on branch {view['branch']} (git show {view['commit'][:10]})")
    if view["diff"]:
        console.print(Syntax(view["diff"], "diff", theme="ansi_dark", background_color="default", word_wrap=True))


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
    from labfleet.ledger import LedgerError, lock_holder
    from labfleet.session import queue_validation
    from labfleet.target import load_target

    root, ledger = _open_ledger(target)
    loaded = load_target(root, check_files=False)
    try:
        exp = ledger.experiment(experiment)
    except LedgerError:
        raise LabfleetError(f"no experiment {experiment} (see `labfleet results`)") from None
    if exp.parent_id is None or exp.decision in ("kept", "failed"):
        what = {"kept": "is already kept", "failed": "has no result to validate"}.get(exp.decision, "is the baseline")
        raise LabfleetError(f"e{experiment} {what}")
    if ledger.db.execute("SELECT 1 FROM runs WHERE experiment_id = ? AND status IN ('queued', 'running')",
                         (experiment,)).fetchone():
        raise LabfleetError(f"e{experiment} still has runs queued or running: wait for them first")
    queue_validation(ledger, loaded, experiment, "promoted by hand")
    session = ledger.session(exp.session_id)
    if session is not None and session["status"] == "finished":
        ledger.set_session_status(exp.session_id, "stopped")  # `labfleet run` resumes it
    running = lock_holder(_state_dir(root)) is not None
    runs = ledger.db.execute("SELECT COUNT(*) AS n FROM runs WHERE experiment_id = ? AND status = 'queued'",
                             (experiment,)).fetchone()["n"]
    if as_json:
        print(json.dumps({"experiment": experiment, "queued_runs": runs, "session_running": running}))
        return
    where = "the running session places them first" if running else "`labfleet run` runs them when it resumes"
    console.print(f"e{experiment}: {runs} validation run(s) queued; {where}")


def _target_and_ledger(target: Path) -> tuple[Any, Any]:
    from labfleet.target import load_target

    loaded = load_target(target, check_files=False)
    _, ledger = _open_ledger(loaded.root, must_exist=False)
    return loaded, ledger


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
    from labfleet import agents

    loaded, ledger = _target_and_ledger(target)
    paths = list(patches or [])
    if factor:
        if len(paths) != len(factor) or set_:
            raise LabfleetError("use --factor NAME PATCH for every idea (one patch file after each name), without --set")
        texts = []
        for path in paths:
            if not path.is_file():
                raise LabfleetError(f"{path}: no such patch file")
            texts.append(path.read_text())
        wave = agents.submit_factors(loaded, ledger, list(zip(factor, texts, strict=True)), description=description,
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
    knobs = agents.parse_settings(loaded, set_ or [])
    folder = text = None
    if patch is not None:
        if patch.is_dir():
            folder = patch
        elif patch.is_file():
            text = patch.read_text()
        else:
            raise LabfleetError(f"{patch}: no such patch file or folder")
    out = agents.submit(loaded, ledger, description=description or (patch.name if patch else ", ".join(set_ or [])),
                        hypothesis=hypothesis, patch=text or "", knobs=knobs, folder=folder, parent=parent)
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
    from labfleet import agents

    _, ledger = _open_ledger(target)
    view = agents.show(ledger, experiment)
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
    from labfleet import agents

    _, ledger = _open_ledger(target)
    done = agents.wait(ledger, experiments, timeout)
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
    from labfleet import agents

    _, ledger = _open_ledger(target)
    out = agents.cancel(ledger, experiment)
    if as_json:
        print(json.dumps(out))
        return
    _say(f"e{experiment}: {out['cancelled_queued']} queued run(s) cancelled"
         + (f", {out['stopping_running']} running run(s) being stopped" if out["stopping_running"] else ""))


@app.command()
def mcp(target: TargetOption = Path(".")) -> None:
    """An MCP server over stdio with the agent verbs as tools (for Claude Code, Codex, any MCP client).

    Tools: submit_experiment, get_status, get_results, get_best, show_experiment,
    wait_for, promote, cancel, read_file. Claude Code:
    `claude mcp add labfleet -- labfleet mcp -C /path/to/target`.
    """
    from labfleet.mcp_server import serve_stdio

    serve_stdio(target)


fleet_app = typer.Typer(help="SkyPilot fleets: check a fleet.toml before launching it.", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")


@fleet_app.command("check")
def fleet_check(
    path: Annotated[Path, typer.Argument(help="The fleet file.")] = Path("fleet.toml"),
    as_json: JsonOption = False,
) -> None:
    """Validate a fleet.toml and print what it would launch and what it costs per hour."""
    from labfleet.fleet import load_fleet

    fleet = load_fleet(path)
    if as_json:
        print(json.dumps({"workers": len(fleet.workers()), "usd_per_hour": fleet.cost_per_hour(),
                          "plan": fleet.describe()}, indent=2))
        return
    for line in fleet.describe():
        _say(line)


@app.command()
def dashboard(
    target: TargetOption = Path("."),
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8765,
    token: Annotated[str | None, typer.Option(help="Require this token on every request (default: $LABFLEET_DASHBOARD_TOKEN).")] = None,
) -> None:
    """A live web page over the ledger: headline, progress, worker timeline, experiments, analysis.

    Read-only; updates within a couple of seconds of the ledger changing (the
    session runs in another process). Open http://127.0.0.1:8765/ (with
    ?token=... when a token is set).
    """
    from labfleet.dashboard.app import serve as serve_dashboard

    serve_dashboard(target, host=host, port=port, token=token)


@app.command()
def skill() -> None:
    """Print SKILL.md: how a coding agent (Claude Code, Codex) researches with labfleet."""
    from labfleet.scaffold import bundled_path

    sys.stdout.write((bundled_path("tinygpt") / "SKILL.md").read_text())


@app.command()
def effects(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    wave: Annotated[str | None, typer.Option(help="One wave (its number); default: the latest --last waves.")] = None,
    last: Annotated[int, typer.Option(help="How many of the latest waves to show.", min=1)] = 3,
    as_json: JsonOption = False,
) -> None:
    """Main effects and interactions, with confidence intervals, from factorial waves: knob waves and idea waves."""
    from labfleet.agents import wave_effects
    from labfleet.target import load_target

    root, ledger = _open_ledger(target)
    spec = load_target(root, check_files=False).spec
    sid, sd, found = wave_effects(ledger, wave, last, session)
    if as_json:
        print(json.dumps({"session": sid, "noise_sd": sd, "waves": {k: v.to_json() for k, v in found.items()}}, indent=2))
        return
    if not found:
        _say("no waves with results yet (`labfleet run --researcher waves`, or a wave of ideas: `labfleet submit --factor NAME PATCH ...`)")
        return
    for tag, eff in found.items():
        factors = ", ".join(eff.levels) or "-"
        what = "the ideas " if tag.startswith("i") else ""
        _say(f"wave {tag}: {eff.n} results over {what}{factors}" + (f", noise sd {sd:.4g}" if sd else ""))
        for line in eff.describe(spec.metric, spec.direction):
            _say(f"  {line}")


@app.command()
def report(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder to write (default .labfleet/report/s<session>).")] = None,
) -> None:
    """Draw the session: progress, worker timeline, hardware, effects and cost as PNGs and one HTML page."""
    from labfleet.analysis.report import build_report
    from labfleet.target import load_target
    from labfleet.views import _session

    root, ledger = _open_ledger(target)
    loaded = load_target(root, check_files=False)
    sid = _session(ledger, session)["id"]
    out = output or _state_dir(root) / "report" / f"s{sid}"
    groups = {name: knob.group for name, knob in loaded.knobs.items() if knob.group}
    holdout_findings: list[str] = []
    if loaded.config.holdout is not None:
        from labfleet import integrity

        spec = loaded.config.holdout
        view = integrity.lineage_holdout(ledger, sid, spec.direction or loaded.spec.direction)
        holdout_findings = integrity.holdout_lines(view, loaded.spec.metric, spec.metric)
    page = build_report(ledger, sid, out, metric=loaded.spec.metric, direction=loaded.spec.direction,
                        groups=groups, title=f"{loaded.spec.name}, session {sid}", holdout=holdout_findings)
    pictures = sorted(p.name for p in out.glob("*.png"))
    _say(f"wrote {page} ({', '.join(pictures)})")


@app.command()
def simulate(
    target: Annotated[Path | None, typer.Option("--target", "-C", help="Target folder (default: this folder if it has labfleet.toml, else the bundled tinygpt).")] = None,
    fleet: Annotated[str, typer.Option(help="Workers as CLASS:COUNT or CLASS:COUNT@PRICE_PER_HOUR, comma-separated, e.g. H100:13,H200:3.")] = "H100:13,H200:3",
    hours: Annotated[float, typer.Option(help="Virtual hours to simulate.", min=0.01)] = 8.0,
    researcher: Annotated[str, typer.Option(help="waves, greedy, random, grid or optuna.")] = "waves",
    budget: Annotated[float | None, typer.Option(help="Training budget per run in seconds (default: the target's).", min=1)] = None,
    screen: Annotated[str | None, typer.Option(help="Hardware classes that screen, e.g. H100 (sets the tiers).")] = None,
    validate: Annotated[str | None, typer.Option(help="Hardware classes that validate winners, e.g. H200 (sets the tiers).")] = None,
    noise: Annotated[float, typer.Option(help="Seed-to-seed sd of the metric in the surrogate.", min=0)] = 0.002,
    crash_rate: Annotated[float, typer.Option(help="Share of runs that crash.", min=0, max=1)] = 0.02,
    hang_rate: Annotated[float, typer.Option(help="Share of runs that hang until the hard timeout.", min=0, max=1)] = 0.005,
    setup_seconds: Annotated[float, typer.Option(help="Setup once per worker (data, compile cache).", min=0)] = 180.0,
    seed: Annotated[int, typer.Option(help="Seed of the surrogate, the runs and the researcher.")] = 0,
    until: Annotated[float | None, typer.Option(help="Stop once the best metric reaches this value.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after this many experiments without a keep.", min=1)] = None,
    max_usd: Annotated[float | None, typer.Option("--max-usd", help="Stop once the fleet has cost this much.", min=0)] = None,
    save: Annotated[Path | None, typer.Option(help="Keep the simulated target and its ledger here (for `labfleet report -C DIR`).")] = None,
    researcher_latency: Annotated[str | None, typer.Option("--researcher-latency", help="Virtual seconds per researcher call: SECONDS or MEAN:SD (e.g. 90 or 60:30); each call is also priced as a long-prompt model call.")] = None,
    surrogate: Annotated[str, typer.Option(help="hand-made (a seeded bowl) or measured (fitted to real tinygpt runs on CPU shipped with labfleet; needs the plan extra).")] = "hand-made",
    from_ledger: Annotated[Path | None, typer.Option("--from-ledger", metavar="PATH", help="Fit the surrogate to the runs in this ledger (a ledger.sqlite or a target folder; needs the plan extra).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Plan a fleet before paying for it: a whole session on a virtual clock, in seconds.

    The real scheduler, ledger and researcher run on a throw-away clone of the target;
    training is replaced by a surrogate objective of the knobs (a smooth bowl with
    interactions, seed noise, per-class speed: an H200 runs 9% more steps than an
    H100; crashes, hangs, setup). Prints experiments, utilization, time to reach the
    best, and cost. With --from-ledger or --surrogate measured the objective is
    fitted to real runs instead (see the README's planning section): it prints how
    well the fit predicts runs it did not see, and says when the plan went outside
    the measured region.
    """
    from labfleet.simulate import clone_target
    from labfleet.simulate import simulate as run_simulation

    if surrogate not in ("hand-made", "measured"):
        raise LabfleetError(f"--surrogate {surrogate!r}: use hand-made or measured")
    if from_ledger is not None and surrogate != "hand-made":
        raise LabfleetError("--from-ledger and --surrogate measured are two different fits: give one")
    if from_ledger is not None and not from_ledger.exists():
        raise LabfleetError(f"--from-ledger: {from_ledger} does not exist")
    if target is None and from_ledger is not None:
        owner = from_ledger if from_ledger.is_dir() else from_ledger.resolve().parent.parent
        if (owner / "labfleet.toml").is_file():
            target = owner
    if target is None and (Path.cwd() / "labfleet.toml").is_file():
        target = Path.cwd()
    model_choice: Any = dict(noise_sd=noise, crash_rate=crash_rate, hang_rate=hang_rate, setup_seconds=setup_seconds)
    if surrogate == "measured":
        model_choice = "measured"
    limits = {k: v for k, v in dict(until=until, patience=patience, max_usd=max_usd).items() if v is not None}
    classes = [c.strip() for c in (screen or "").split(",") if c.strip()], [c.strip() for c in (validate or "").split(",") if c.strip()]
    try:
        with clone_target(target.resolve() if target else None, keep=save) as folder:
            sim = run_simulation(
                folder, fleet, researcher=researcher, hours=hours, seed=seed, budget_seconds=budget,
                screen=classes[0], validate=classes[1], surrogate=model_choice,
                from_ledger=from_ledger.resolve() if from_ledger else None,
                researcher_latency=researcher_latency, **limits,
            )
    except ValueError as exc:
        raise LabfleetError(str(exc)) from None
    gain = sim.baseline - sim.best
    reach = {f"{f:.0%}": sim.time_to(sim.baseline - f * gain) for f in (0.5, 0.9, 1.0)} if gain > 0 else {}
    fitted_lines = sim.model.describe() if sim.model is not None and hasattr(sim.model, "describe") else []
    model_warnings = sim.model.warnings() if sim.model is not None and hasattr(sim.model, "warnings") else []
    holdout = getattr(sim.model, "holdout", None)
    if as_json:
        print(json.dumps({
            "fleet": sim.fleet, "workers": sim.workers, "researcher": sim.researcher, "hours": sim.hours,
            "experiments": sim.experiments, "experiments_per_hour": sim.experiments_per_hour, "runs": sim.runs,
            "decisions": sim.decisions, "utilization": sim.utilization, "baseline": sim.baseline, "best": sim.best,
            "hours_to_share_of_gain": reach, "cost_usd": sim.cost_usd, "cost_by_class": sim.cost_by_class,
            "findings": sim.findings, "stop_reason": sim.stop_reason, "saved": str(save) if save else None,
            "researcher_latency": list(sim.researcher_latency), "llm_calls": sim.llm_calls, "llm_usd": sim.llm_usd,
            "calls_per_experiment": sim.calls_per_experiment,
            "surrogate": sim.model.source if sim.model is not None else None,
            "holdout": None if holdout is None else {k: getattr(holdout, k) for k in ("runs", "configs", "mae", "rmse", "noise_sd", "r2")},
            "warnings": model_warnings,
        }, indent=2))
        return
    for line in fitted_lines or [f"surrogate: {sim.model.source}" if sim.model is not None else ""]:
        _say(line)
    d = sim.decisions
    _say(f"simulated {sim.hours:.1f} h on {sim.workers} workers ({sim.fleet}), {sim.researcher} researcher, seed {seed}"
         f"; stopped: {sim.stop_reason}")
    _say(f"experiments {sim.experiments} ({sim.experiments_per_hour:.0f}/h): kept {d.get('kept', 0)}, "
                  f"discarded {d.get('discarded', 0)}, failed {d.get('failed', 0)}; runs {sim.runs}")
    _say(f"utilization {sim.utilization:.1%} of worker time running experiments")
    _say(f"best {sim.best:.4f} from baseline {sim.baseline:.4f} ({-gain / sim.baseline:+.2%})")
    if reach:
        _say("time to reach: " + ", ".join(
            f"{k} of the gain {v:.1f} h" if v is not None else f"{k} never" for k, v in reach.items()))
    _say(f"cost ${sim.cost_usd:,.0f} (" + ", ".join(f"{hw} ${usd:,.0f}" for hw, usd in sim.cost_by_class.items()) + ")")
    if sim.llm_calls:
        mean, sd = sim.researcher_latency
        _say(f"researcher: {sim.llm_calls} model calls ({sim.calls_per_experiment:.2f} per experiment) at "
             f"{mean:g}{f'±{sd:g}' if sd else ''} s each, LLM ${sim.llm_usd:,.2f}")
    for line in sim.findings:
        _say(f"  {line}")
    for line in model_warnings:
        _say(f"warning: {line}")
    if save:
        _say(f"saved to {save}: `labfleet report -C {save}` draws it")


@app.command()
def export(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write; - for stdout.")] = Path("results.tsv"),
    tsv: Annotated[bool, typer.Option("--tsv", help="autoresearch's results.tsv columns (the only format).")] = True,
) -> None:
    """Write autoresearch's results.tsv (commit, metric, memory_gb, status, description)."""
    from labfleet.target import load_target
    from labfleet.views import results_tsv

    root, ledger = _open_ledger(target)
    text = results_tsv(ledger, load_target(root, check_files=False).spec.metric, session)
    if str(output) == "-":
        sys.stdout.write(text)
        return
    output.write_text(text)
    console.print(f"wrote {output} ({text.count(chr(10)) - 1} experiments)")


@app.command()
def doctor(
    target: TargetOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Which protections are active on this machine (the run box, limits, git), and the frozen pin."""
    from labfleet import frozen, sandbox
    from labfleet.target import CONFIG_FILE, load_target

    rows = [{"protection": name, "active": active, "how": how} for name, active, how in sandbox.protections()]
    pin: dict[str, Any] | None = None
    if (target / CONFIG_FILE).is_file():
        loaded = load_target(target, check_files=False)
        current = frozen.pinned(loaded)
        pin = {"target": str(loaded.root), "pinned": current is not None,
               "commit": current["commit"] if current else None,
               "files": sorted(current["hashes"]) if current else list(loaded.spec.frozen)}
    support = sandbox.support()
    if as_json:
        print(json.dumps({"boxed": support.boxed, "detail": support.detail, "protections": rows, "frozen": pin}, indent=2))
        return
    for row in rows:
        mark = "[green]on [/]" if row["active"] else "[bold red]OFF[/]"
        console.print(f"  {mark} {row['protection']}: {_escape(row['how'])}", highlight=False)
    if pin is not None:
        if pin["pinned"]:
            console.print(f"  [green]on [/] frozen files pinned at {pin['commit'][:10]}: {', '.join(pin['files'])}")
        else:
            console.print("  [yellow]not yet[/] frozen files pinned: the first session pins them")
    if not support.boxed:
        err_console.print(f"[bold red]WARNING[/]: {_escape(support.warning)}")


target_app = typer.Typer(help="The target's pinned state.", no_args_is_help=True)
app.add_typer(target_app, name="target")


@target_app.command("accept-frozen")
def accept_frozen(target: TargetOption = Path(".")) -> None:
    """Pin the frozen files as they are at HEAD: after you changed prepare.py (or any frozen file) on purpose."""
    from labfleet import frozen
    from labfleet.target import load_target

    loaded = load_target(target, check_files=False)
    dirty = [p for p in loaded.uncommitted() if p in loaded.spec.frozen]
    if dirty:
        raise LabfleetError(f"frozen file {dirty[0]} has uncommitted changes: commit it first (the pin is of HEAD)")
    from labfleet.ledger import LEDGER_FILE

    ledger = None
    if (_state_dir(loaded.root) / LEDGER_FILE).exists():
        _, ledger = _open_ledger(loaded.root)
    try:
        changed, pin = frozen.accept(loaded, ledger)
    finally:
        if ledger is not None:
            ledger.close()
    what = ", ".join(changed) if changed else "nothing changed"
    console.print(f"frozen files pinned at {pin['commit'][:10]} ({what}); logged in {frozen.pin_path(loaded)}")
