"""`labfleet mcp`: the external-agent verbs as MCP tools over stdio.

For Claude Code: ``claude mcp add labfleet -- labfleet mcp -C /path/to/target``.
Each tool calls one verb of ``labfleet.api`` (the same functions as the CLI's
verbs, with the same guards), and returns JSON-ready data;
a labfleet error becomes the tool's error text (one line), never a crash of the
server. ``wait_for`` blocks in a worker thread so the server keeps answering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from labfleet import api
from labfleet.errors import LabfleetError
from labfleet.target import load_target

T = TypeVar("T")

INSTRUCTIONS = (
    "labfleet runs ML experiments on a fleet of workers for you. Submit many experiments at once "
    "(a wave), each a patch to the editable files or knob values with a description and a hypothesis, "
    "or a wave of named ideas with submit_factorial (every combination runs; get_effects says what each did); "
    "wait for the ones you need, read results with their noise, and keep going. Call get_status first."
)


def build_server(target_dir: Path) -> Any:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    root = Path(target_dir).resolve()
    load_target(root, check_files=False)  # a clear error now for a folder that is no target
    server = MCPServer(name="labfleet", instructions=INSTRUCTIONS)

    def call(verb: Callable[[], T], must_exist: bool = True) -> T:
        if must_exist and not api.has_ledger(root):
            raise ToolError("no labfleet session yet: submit an experiment, or start `labfleet serve`")
        try:
            return verb()
        except LabfleetError as exc:  # the agent's mistake or the target's state: its text, one line
            raise ToolError(str(exc)) from None

    @server.tool()
    def submit_experiment(description: str, hypothesis: str = "", patch: str = "",
                          knobs: dict[str, Any] | None = None, parent: int | None = None) -> dict[str, Any]:
        """Queue one experiment: a unified diff against the best version and/or knob values (e.g. {"LEARNING_RATE": 0.003})."""
        return call(lambda: api.submit(root, description=description, hypothesis=hypothesis, patch=patch,
                                       knobs=knobs, parent=parent), must_exist=False)

    @server.tool()
    def submit_factorial(factors: dict[str, str], description: str = "", hypothesis: str = "",
                         runs: int | None = None, parent: int | None = None) -> dict[str, Any]:
        """Queue a wave of ideas: {"NAME": unified diff against the best version, ...} (2 to 8, applied in that order).

        Every combination runs as one cell of a 2^k design (or a 2^(k-p) fraction with `runs` cells); the
        all-off cell is the best version itself. Combinations that do not apply or compile are reported
        with what they cost the estimates; get_effects reads the wave's effects once its cells are done.
        """
        return call(lambda: api.submit_factors(root, list(factors.items()), description=description,
                                               hypothesis=hypothesis, runs=runs, parent=parent), must_exist=False)

    @server.tool()
    def get_effects(wave: str | None = None) -> dict[str, Any]:
        """Main effects and interactions with 95% CIs, in words, for the latest waves (or one wave, e.g. "i1")."""
        return call(lambda: api.effects(root, wave))

    @server.tool()
    def get_status() -> dict[str, Any]:
        """The session: running or not (daemon), counts, best, noise floor, cost, what each worker runs."""
        return call(lambda: api.status(root))

    @server.tool()
    def get_results(last: int = 30) -> list[dict[str, Any]]:
        """The latest experiments with their metric, uncertainty, decision and worker."""
        return call(lambda: api.results(root, None, last))

    @server.tool()
    def get_best() -> dict[str, Any]:
        """The best version: metric vs the baseline, commit, and its diff against the baseline."""
        return call(lambda: api.best(root))

    @server.tool()
    def show_experiment(experiment: int) -> dict[str, Any]:
        """One experiment: diff, decision, every run's figures, and the log tail (a crash's traceback)."""
        return call(lambda: api.show(root, experiment))

    @server.tool()
    async def wait_for(experiments: list[int], timeout_seconds: float = 600.0) -> list[dict[str, Any]]:
        """Block until the given experiments are decided (at most timeout_seconds)."""
        return await asyncio.to_thread(call, lambda: api.wait(root, experiments, timeout_seconds))

    @server.tool()
    def promote(experiment: int) -> dict[str, Any]:
        """Validate an experiment with more seeds (on the validate tier, if the target has one).

        Refused for the baseline, an experiment already kept or without a result, and one
        whose runs are still queued or running; a finished session is reopened.
        """
        return call(lambda: {**api.promote(root, experiment, "promoted by an agent"), "queued": True})

    @server.tool()
    def cancel(experiment: int) -> dict[str, Any]:
        """Cancel an experiment: queued runs at once, running ones through the orchestrator."""
        return call(lambda: api.cancel(root, experiment))

    @server.tool()
    def read_file(path: str, experiment: int | None = None) -> str:
        """A target file (train.py, program.md, ...) at the best version, or at an experiment's commit."""
        return call(lambda: api.read_file(root, path, experiment), must_exist=False)

    return server


def serve_stdio(target_dir: Path) -> None:
    build_server(target_dir).run("stdio")
