"""Options shared by several commands, and how `run` / `serve` options become session settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

TargetOption = Annotated[
    Path, typer.Option("--target", "-C", help="Target folder (a git repo with labfleet.toml).")
]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for agents and scripts.")]

SessionOption = Annotated[int | None, typer.Option(help="Session id (default: the latest).")]

# `run` / `serve` options that are no session setting, and those named differently in SessionConfig
_NOT_SETTINGS = {"target", "resume", "new"}

_RENAMED = {"budget": "budget_seconds"}

# options that go to the researcher (SessionConfig.researcher_options), by the name the researcher takes
_RESEARCHER_OPTIONS = {"provider": "provider", "model": "model", "base_url": "base_url", "api_key_env": "api_key_env",
                       "max_llm_usd": "max_usd", "ideas": "ideas", "sampler": "sampler",
                       "tune_experiments": "tune_experiments", "ideas_from": "source"}


def _settings(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options given on the command line (not None) as session settings and researcher options."""
    options: dict[str, Any] = {}
    researcher_options: dict[str, Any] = {}
    for name, value in params.items():
        if value is None or name in _NOT_SETTINGS:
            continue
        if name in _RESEARCHER_OPTIONS:
            researcher_options[_RESEARCHER_OPTIONS[name]] = value
        else:
            options[_RENAMED.get(name, name)] = str(Path(value).resolve()) if name == "fleet" else value
    return options, researcher_options
