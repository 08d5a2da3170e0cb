"""Checking a model's proposals before they cost a run: the canonical patch, or why not.

A proposal must apply to the files it was written against (edits or a unified diff,
through ``workspace.apply_to_texts`` and so the one patch checker), touch only editable
files, compile, not name the metric, and carry nothing key-shaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labfleet import workspace
from labfleet.errors import PatchError
from labfleet.researchers.llm.providers import redact
from labfleet.target import unified_diff


@dataclass(frozen=True)
class Checked:
    """A proposal that passed every check: its canonical patch (git-apply clean)."""

    description: str
    hypothesis: str
    patch: str
    name: str = ""  # ideas waves: the idea's name as the model gave it


def _apply_edits(files: Mapping[str, str], edits: Any, editable: Sequence[str]) -> dict[str, str]:
    if not isinstance(edits, list) or not edits:
        raise ValueError("edits must be a non-empty list of {file, search, replace}")
    new = dict(files)
    for i, edit in enumerate(edits, 1):
        if not isinstance(edit, dict) or not all(isinstance(edit.get(k), str) for k in ("file", "search", "replace")):
            raise ValueError(f"edit {i} needs string fields file, search and replace")
        path = edit["file"].removeprefix("./")
        if path not in editable:
            raise ValueError(f"edit {i} changes {path}, which is not editable (editable: {', '.join(editable)})")
        count = new[path].count(edit["search"]) if edit["search"] else 0
        if count != 1:
            where = "was not found" if count == 0 else f"occurs {count} times (add context to make it unique)"
            raise ValueError(f"edit {i}: the search text {where} in {path}; it must be copied exactly, indentation included")
        new[path] = new[path].replace(edit["search"], edit["replace"], 1)
    return new


def check_proposal(raw: Mapping[str, Any], files: Mapping[str, str], editable: Sequence[str], metric: str,
                   secrets: Sequence[str] = ()) -> Checked:
    """The proposal as a canonical patch against ``files``, or ``ValueError`` saying what is wrong."""
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ValueError("a description is required")
    given = raw.get("hypothesis")
    hypothesis = given if isinstance(given, str) else ""
    patch, edits = raw.get("patch"), raw.get("edits")
    if edits:
        new = _apply_edits(files, edits, editable)
    elif isinstance(patch, str) and patch.strip():
        try:
            new = workspace.apply_to_texts(files, patch, editable)
        except PatchError as exc:
            raise ValueError(str(exc)) from None
    else:
        raise ValueError("give a patch (unified diff) or edits (search/replace)")
    canonical = "".join(unified_diff(path, files[path], new[path]) for path in sorted(files))
    if not canonical:
        raise ValueError("the change leaves every file as it was")
    for path in sorted(files):
        if path.endswith(".py") and new[path] != files[path]:
            try:
                compile(new[path], path, "exec")
            except SyntaxError as exc:
                raise ValueError(f"{path} does not compile after the change: {exc.msg} (line {exc.lineno})") from None
    if workspace.added_lines_mention(canonical, metric):
        raise ValueError(f"the change adds a line naming {metric}: only the frozen evaluation reports the metric")
    if any(redact(text, secrets) != text for text in (description, hypothesis, canonical)):
        raise ValueError("the proposal contains a key-shaped string")
    return Checked(description.strip().splitlines()[0][:200], hypothesis.strip(), canonical)
