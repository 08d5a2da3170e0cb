"""The ``labfleet`` command line: the app, its entry point, and what every command module shares.

Thin: parse, call one verb of ``labfleet.api`` (or one layer), print. The commands
live in one module per group (``targets``, ``sessions``, ``reading``, ``agents``,
``planning``); options shared by several in ``options``; printing in ``render``.
Heavy modules are imported inside commands so ``labfleet --help`` stays fast.
Every ``LabfleetError`` becomes one red line on stderr and exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from labfleet.cli.render import _fail
from labfleet.errors import LabfleetError

app = typer.Typer(
    name="labfleet",
    help="Autonomous ML research in parallel over a fleet of accelerators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def main() -> None:
    """Entry point: run the app and turn labfleet errors into one clean line."""
    try:
        app()
    except LabfleetError as exc:
        raise SystemExit(_fail(str(exc)).exit_code) from None


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


# the command modules register their commands on `app` when imported (in the order of --help)
from labfleet.cli import targets, sessions, reading, agents, planning  # noqa: E402, F401, I001


if __name__ == "__main__":
    main()
