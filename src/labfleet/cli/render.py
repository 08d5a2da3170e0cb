"""How the command line prints: lazy rich consoles, one-line errors, spinners, results, events, the best."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from labfleet.harness import RunResult


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


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {_escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


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


def _print_best(view: dict[str, Any], metric: str) -> None:
    from rich.syntax import Syntax

    if view["experiment"] is None or not view["keeps"]:
        console.print(f"best: the baseline, {metric} {view['baseline_metric']:.6f} (no change beat it)")
        return
    console.print(f"best: e{view['experiment']} {metric} [bold green]{view['metric']:.6f}[/] vs baseline "
                  f"{view['baseline_metric']:.6f} ({view['improvement']:+.6f}), {view['keeps']} keep(s)")
    console.print(f"commit {view['commit'][:10]} on branch {view['branch']} (git show {view['commit'][:10]})")
    if view["diff"]:
        console.print(Syntax(view["diff"], "diff", theme="ansi_dark", background_color="default", word_wrap=True))
