"""What a researcher may read of the target: a read-only view, handed to it.

A researcher never runs git or opens files (``base.py``). One that reads code (the
LLM researcher, hybrid: ``wants_sources``) is given a ``Sources`` by
``make_researcher``: the editable files at a commit, the research brief, a commit's
parent, and the tail of a run's log through the one bounded reader
(``logs.tail_lines``). Nothing here writes, and nothing reaches a frozen file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from labfleet import logs, workspace
from labfleet.errors import LabfleetError

if TYPE_CHECKING:
    from labfleet.target import Target

BRIEF_FILE = "program.md"  # the target's research brief, as autoresearch names it
LINE_WIDTH = 300  # a log line longer than this is cut: a tail is for reading, not for data


@dataclass(frozen=True)
class Sources:
    """The target as a researcher sees it: what it is, its editable files, its brief, run logs."""

    root: Path
    editable: tuple[str, ...]
    frozen: tuple[str, ...]
    metric: str
    direction: str  # "minimize" | "maximize"
    brief_file: str = BRIEF_FILE

    @classmethod
    def of(cls, target: Target) -> Sources:
        spec = target.spec
        return cls(Path(target.root), tuple(spec.editable), tuple(spec.frozen), spec.metric, spec.direction)

    def files(self, commit: str) -> dict[str, str]:
        """Every editable file's text at ``commit`` (``GitError`` for an unknown commit)."""
        return {path: workspace.show_file(self.root, commit, path) for path in self.editable}

    def brief(self, commit: str) -> str | None:
        """The research brief at ``commit``, else the one in the work tree; None when there is none."""
        try:
            return workspace.show_file(self.root, commit, self.brief_file).strip()
        except LabfleetError:
            path = self.root / self.brief_file
            if path.is_file():
                return logs.read_bounded(path).strip()
        return None

    def parent(self, commit: str) -> str:
        """``commit``'s first parent, or '' (no commit, or a root commit)."""
        try:
            return workspace.resolve(self.root, f"{commit}^") if commit else ""
        except LabfleetError:
            return ""

    def log_tail(self, log_path: str | None, lines: int) -> str:
        """The last ``lines`` lines of a run's log, each cut to ``LINE_WIDTH``; '' when there is none."""
        tail = logs.tail_lines(log_path, lines)
        return "\n".join(line[:LINE_WIDTH] for line in tail.splitlines())
