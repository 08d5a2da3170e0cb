"""The LLM researcher's prompts: what the model reads, built from records and the ``Sources`` view.

Every prompt starts with the same head (the research brief, the target, the
champion's editable files, the history in plain lines: best results, recent
experiments, failures with their log tails, the noise floor, the streak since the
last keep, what the analysis found) and ends with one task: a wave of n single
experiments, k named ideas for a factorial wave, or the repair of a crash.
"""

from __future__ import annotations

from collections.abc import Mapping

from labfleet.records import Experiment, SessionState
from labfleet.researchers import ideas as ideas_mod
from labfleet.researchers.llm.providers import TOOL_NAME
from labfleet.researchers.view import Sources

FAILURE_TAIL_LINES = 15  # of each recent failure's log, in every prompt

SYSTEM = """\
You are an ML researcher running experiments on a fleet of workers. Each experiment is one \
change to the editable files of a training script; it trains for a fixed time budget and is \
judged by one metric against the current best version. You only think about research: the \
system runs, measures, compares against the measured noise and keeps the winners.

Rules:
- One idea per experiment, so every result says what caused it. Keep changes small.
- Explain each hypothesis: why should this change help under this fixed budget?
- Change only the editable files. Never print, compute or mention the metric's name in them: \
the frozen evaluation reports it, and a patch that names it is flagged as cheating.
- Prefer search/replace edits: each search text must be copied exactly from the current file \
(indentation included) and occur exactly once.
- Do not repeat an experiment that was already tried; differences smaller than the noise \
floor are not real.
- Always answer by calling the propose_experiments tool."""


def _fmt(metric: float | None) -> str:
    return "not measured" if metric is None else f"{metric:.4f}"


def file_blocks(files: Mapping[str, str]) -> list[str]:
    out = []
    for path, text in files.items():
        fence = "```python" if path.endswith(".py") else "```"
        out += [f"## {path}", fence, text.rstrip("\n"), "```"]
    return out


def idea_memory_lines(state: SessionState) -> list[str]:
    """Every idea of every ideas wave, with its measured main effect (in words) when the wave has results."""
    from labfleet.analysis.effects import idea_wave_effects

    exps = [r.experiment for r in state.history] + list(state.pending)
    waves: dict[str, Experiment] = {}
    for e in exps:
        tag = e.tags.get("wave", "")
        if ideas_mod.wave_number(tag) is not None and ideas_mod.IDEAS_TAG in e.tags:
            waves.setdefault(tag, e)
    if not waves:
        return ["None yet."]
    sd = min(state.noise.values()) if state.noise else None
    lines = []
    for tag, first in sorted(waves.items(), key=lambda kv: ideas_mod.wave_number(kv[0]) or 0):
        try:
            effects = idea_wave_effects(list(state.history), tag, noise_sd=sd)
            said = effects.describe(state.metric, state.direction)
        except ValueError:
            said = ["no results yet"]
        names = ", ".join(f"{i.name} ({i.description})" for i in ideas_mod.ideas_of(first))
        lines.append(f"- wave {tag} around e{first.tags.get('centre', '?')} ({first.tags.get('design', '')}): {names}")
        lines += [f"  - {line}" for line in said]
    return lines


def history_lines(state: SessionState, sources: Sources | None = None, best: int = 5, recent: int = 12,
                  failures: int = 3) -> list[str]:
    """What the model should know about the session so far, in plain lines (log tails through ``sources``)."""
    lines = []
    if state.noise:
        floors = ", ".join(f"{hw}: {sd:.4f}" for hw, sd in sorted(state.noise.items()))
        lines.append(f"Noise floor (standard deviation of one run's {state.metric}, by hardware class): {floors}. "
                     "A difference within ~2 of these is not a result.")
    else:
        lines.append("Noise floor: not measured yet.")
    lines.append(f"Experiments decided since the last keep: {state.since_keep}"
                 + (" (returns are diminishing: try a different kind of change)" if state.since_keep >= 10 else ""))
    if state.findings:
        lines += ["", "What the analysis found (phases, hardware, effects of the latest waves):"]
        lines += [f"- {line}" for line in state.findings]
    done = [r for r in state.history if r.ok]
    ranked = sorted(done, key=lambda r: r.run.metric or 0.0, reverse=state.direction == "maximize")[:best]
    if ranked:
        lines += ["", f"Best results ({state.metric}):"]
        lines += [f"- e{r.experiment.id} {_fmt(r.run.metric)} [{r.experiment.decision}] {r.experiment.description}"
                  for r in ranked]
    if state.history:
        lines += ["", f"Recent experiments (newest last, {min(recent, len(state.history))} of {len(state.history)}):"]
        for r in state.history[-recent:]:
            outcome = _fmt(r.run.metric) if r.ok else str(r.run.status)
            why = f" -- {r.experiment.hypothesis}" if r.experiment.hypothesis else ""
            lines.append(f"- e{r.experiment.id} {outcome} [{r.experiment.decision}] {r.experiment.description}{why}")
    broken = [r for r in state.history if not r.ok][-failures:]
    if broken:
        lines += ["", "Recent failures:"]
        for r in broken:
            lines.append(f"- e{r.experiment.id} {r.run.status}: {r.experiment.description}"
                         + (f" ({r.run.reason})" if r.run.reason else ""))
            tail = sources.log_tail(r.run.log_path, FAILURE_TAIL_LINES) if sources is not None else ""
            if tail:
                lines += ["```", tail, "```"]
    if state.pending:
        lines += ["", "Queued or running now (do not propose these again):"]
        lines += [f"- e{e.id} {e.description}" for e in state.pending]
    return lines


def prompt_head(sources: Sources, state: SessionState, champion: Experiment, files: Mapping[str, str]) -> list[str]:
    """What every prompt starts with: the brief, the target, the champion's files, the history."""
    brief = sources.brief(champion.commit)
    if brief is None:
        brief = f"(no {sources.brief_file}) Improve {sources.metric} within the fixed time budget."
    parts = ["# Research brief", brief, "", "# The target",
             f"Metric: {sources.metric} ({'lower' if sources.direction == 'minimize' else 'higher'} is better), "
             f"measured after a fixed training budget of {champion.budget_seconds:g} s per run.",
             f"Editable files: {', '.join(sources.editable)}. Frozen (never change): {', '.join(sources.frozen) or 'none'}.",
             "", f"# The current best version (experiment e{champion.id}, {sources.metric} = {_fmt(champion.metric)})"]
    parts += file_blocks(files)
    parts += ["", "# What has been tried", *history_lines(state, sources)]
    return parts


def ideas_prompt(sources: Sources, state: SessionState, champion: Experiment, files: Mapping[str, str], k: int) -> str:
    parts = prompt_head(sources, state, champion, files)
    parts += ["", "# Ideas tried and their measured effects (do not propose them again, under any name)",
              *idea_memory_lines(state)]
    parts += ["", "# Your task",
              f"Propose {k} ideas (k = {k}), each a named change against the files above. The system runs "
              f"them as factors of a factorial design: every idea alone and in combination with the others, "
              f"so it measures each idea's effect and which ideas help only together. Make the {k} ideas "
              f"independent: each must apply and make sense on its own and together with the others (touch "
              f"different lines). Call {TOOL_NAME} once with {k} proposals, each with a short UPPER_CASE name."]
    return "\n".join(parts)


def wave_prompt(sources: Sources, state: SessionState, champion: Experiment, files: Mapping[str, str], n: int) -> str:
    parts = prompt_head(sources, state, champion, files)
    parts += ["", "# Your task",
              f"Propose {n} experiment{'s' * (n != 1)} (n = {n}), each one idea, as different from each other "
              f"and from what was tried as makes sense, against the files above. Call {TOOL_NAME} once with "
              f"{n} proposal{'s' * (n != 1)}."]
    return "\n".join(parts)
