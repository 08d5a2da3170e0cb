"""The LLM researcher's repairs (AIDE's debug step): a crash of its own proposal goes back to the model.

The failing patch and its log tail go to the model, which returns a fixed patch from
the same parent, at most ``max_repairs`` times per original experiment (a chain of
repairs counts against its first experiment; repairs already in the ledger count
too, so a restart does not reset the bound).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from labfleet.records import Experiment, RunStatus, SessionState
from labfleet.researchers.llm.prompts import file_blocks
from labfleet.researchers.llm.providers import TOOL_NAME

CRASHES = (RunStatus.CRASHED, RunStatus.NAN, RunStatus.TIMEOUT)


@dataclass
class _Repair:
    failed: Experiment
    origin: int  # the first experiment of the repair chain: the bound counts per origin
    status: str  # crashed, nan or timeout
    log_tail: str


def _experiments(state: SessionState) -> dict[int, Experiment]:
    found = {r.experiment.id: r.experiment for r in state.history}
    found.update({e.id: e for e in state.pending})
    for exp in (state.baseline, state.champion):
        if exp is not None:
            found.setdefault(exp.id, exp)
    return found


def _origin(by_id: Mapping[int, Experiment], exp: Experiment) -> int:
    """The first experiment of a repair chain (repair_of tags lead back to it)."""
    seen = set()
    while "repair_of" in exp.tags and exp.id not in seen:
        seen.add(exp.id)
        try:
            earlier = int(exp.tags["repair_of"])
        except ValueError:
            break
        if earlier not in by_id:
            return earlier
        exp = by_id[earlier]
    return exp.id


def repair_prompt(repair: _Repair, files: Mapping[str, str]) -> str:
    failed, log_tail = repair.failed, repair.log_tail
    what = {"timeout": "ran past its hard timeout", "nan": "diverged (a non-finite loss)"}.get(repair.status, "crashed")
    parts = ["# Repair a failed experiment",
             f"Experiment e{failed.id} {what} before it produced a result. Fix it so that it runs, keeping its "
             "idea. If the idea itself cannot work, make the smallest change that tests it safely.",
             f"Description: {failed.description}", f"Hypothesis: {failed.hypothesis or '(none given)'}",
             "", "## Its patch (against the files below)", "```diff", failed.patch.rstrip(), "```",
             "", "## The end of its log", "```", log_tail.rstrip() or "(no log)", "```",
             "", "# The files it started from"]
    parts += file_blocks(files)
    parts += ["", "# Your task",
              f"Call {TOOL_NAME} with exactly 1 proposal: the fixed change, as a patch or edits against the "
              f"files above (not against e{failed.id}'s version). Say in the hypothesis what was wrong."]
    return "\n".join(parts)
