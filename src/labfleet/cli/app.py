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

_SETTINGS: dict[str, Any] = {
    "name": "labfleet",
    "help": "Autonomous ML research in parallel over a fleet of accelerators.",
    "no_args_is_help": True,
    "add_completion": False,
    "pretty_exceptions_enable": False,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}
app = typer.Typer(**_SETTINGS)


def main() -> None:
    """Entry point: run the app and turn labfleet errors into one clean line."""
    import sys

    try:
        _narrowed(sys.argv[1:])()
    except LabfleetError as exc:
        raise SystemExit(_fail(str(exc)).exit_code) from None


def _state_dir(root: Path) -> Path:
    from labfleet.ledger import STATE_DIR

    return root / STATE_DIR


def _open_ledger(target: Path, must_exist: bool = True) -> tuple[Path, Any]:
    from labfleet.ledger import LEDGER_FILE, Ledger

    root = target.resolve()
    state_dir = _state_dir(root)
    if must_exist and not (state_dir / LEDGER_FILE).exists():
        raise LabfleetError(f"no labfleet ledger in {root}: start a session with `labfleet run`")
    return root, Ledger.for_target(state_dir)


def _name(command: Any) -> str:
    return command.name or command.callback.__name__.replace("_", "-")


def _narrowed(argv: list[str]) -> typer.Typer:
    """The app with only the command ``argv`` names: typer builds every registered command's
    options before it dispatches (23 commands: about half of `labfleet status`'s start-up),
    so one is built instead. --help, no command or an unknown one get the whole app."""
    name = next((a for a in argv if not a.startswith("-")), None)
    commands = [c for c in app.registered_commands if _name(c) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    narrow = typer.Typer(**_SETTINGS)
    narrow.registered_commands, narrow.registered_groups = commands, groups
    narrow.callback()(_commands)  # a group: an app of one command would run it without its name
    return narrow


def _commands() -> None:
    """Autonomous ML research in parallel over a fleet of accelerators."""


# the command modules register their commands on `app` when imported (in the order of --help)
from labfleet.cli import targets, sessions, reading, agents, planning  # noqa: E402, F401, I001


if __name__ == "__main__":
    main()
