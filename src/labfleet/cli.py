"""The ``labfleet`` command line. Thin: parse, call one layer, print.

Heavy modules are imported inside commands so ``labfleet --help`` stays fast.
Every ``LabfleetError`` becomes one red line on stderr and exit code 1.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

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
console = Console()
err_console = Console(stderr=True)

TargetOption = Annotated[
    Path, typer.Option("--target", "-C", help="Target folder (a git repo with labfleet.toml).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for agents and scripts.")]


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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
        console.print(f"wrote {from_autoresearch / 'labfleet.toml'} and committed it ({commit[:8]})")
        console.print(f"next: [bold]cd {from_autoresearch} && labfleet prepare && labfleet baseline[/]")
        return
    commit = scaffold.init_bundled(directory)
    console.print(f"created the tinygpt target in {directory} (git commit {commit[:8]})")
    console.print(f"next: [bold]cd {directory} && labfleet prepare && labfleet baseline[/]")


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
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads for the run.", min=1)] = 1,
    as_json: JsonOption = False,
) -> None:
    """Run the unmodified target (its HEAD commit) through the harness and show the result."""
    from labfleet import harness, scaffold, workspace
    from labfleet.target import load_target

    loaded = load_target(target)
    root = loaded.root
    if not workspace.is_repo(root):
        raise LabfleetError(f"{root} is not a git repo (labfleet runs committed versions)")
    dirty = [f for f in workspace.dirty_files(root) if not f.startswith(scaffold.STATE_DIR)]
    if dirty:
        err_console.print(f"[yellow]note:[/] uncommitted changes are not part of the baseline: {', '.join(dirty[:5])}")
    workspace.exclude_path(root, f"/{scaffold.STATE_DIR}/")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / scaffold.STATE_DIR / "runs" / f"baseline-{stamp}-s{seed}"
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
    if device != "auto":
        if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
            raise LabfleetError(f"--device {device!r}: use cpu, cuda, cuda:N or auto")
        return device
    try:
        import torch  # only to detect a GPU

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


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
