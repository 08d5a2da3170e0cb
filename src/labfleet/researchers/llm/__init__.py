"""The LLM researcher: a model reads the brief, the code and the history, and proposes patches.

One model call per wave: the prompt holds the target's research brief
(``program.md``), the editable files at the champion's commit, the history
(best results, recent failures with their log tails, the noise floor, the
experiments since the last keep) and how many experiments to propose. The model
answers through one forced tool, ``propose_experiments``, with a unified diff or
search/replace edits per proposal.

Every proposal is checked before it costs a run: it must apply to the files it
was written against, touch only editable files, compile, and not name the
metric. Failures go back to the model once, in the same conversation, with the
errors; what still fails is dropped. A crash of one of its own proposals earns a
repair (AIDE's debug step): the failing patch and the log tail go to the model,
which returns a fixed patch from the same parent, at most ``max_repairs`` times
per original experiment.

With ``ideas=k`` (k >= 2) the model is asked for k independent, named ideas in
one call and the system designs the wave: the ideas are factors of a 2^k design
(or a 2^(k-p) fraction sized to the fleet; ``researchers.ideas``), each cell the
ideas it switches on applied to the champion in order; cells are handed out as
workers free up, and the next prompt reports each idea's measured main effect and
interactions. Without it (``ideas=0``) one call returns n independent single
experiments, as many as there are free workers.

A proposal that repeats an earlier experiment or idea (the same normalized patch,
``ideas.signature``) fails its check like a patch that does not apply: it goes back
to the model once, naming the earlier experiment, and costs no run.

Providers: ``anthropic`` (Messages API) and ``openai`` (Chat Completions, any
OpenAI-compatible endpoint through ``base_url``). The SDKs are imported when a
client is made, retry 429/5xx/timeouts with their own backoff, and a call that
still fails is recorded and answered with no proposals: the session asks again
after its next result, so an outage pauses proposing and loses nothing.

Keys come only from the environment and live only inside the SDK client: no
message, prompt, record, proposal or exception text carries one.

The researcher reads the target only through the ``Sources`` view it is handed
(``researchers.view``): files at a commit, the brief, log tails. The package:
``providers`` (the SDK clients, prices, redaction), ``prompts`` (what the model
reads), ``checking`` (a proposal's canonical patch, through the one patch checker),
``repair`` (crashes sent back), and here the researcher that drives them.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from labfleet.errors import ConfigError, LLMError
from labfleet.records import Experiment, Proposal, Result, SessionState
from labfleet.researchers import ideas as ideas_mod
from labfleet.researchers.base import Researcher
from labfleet.researchers.llm import prompts
from labfleet.researchers.llm.checking import Checked, check_proposal
from labfleet.researchers.llm.prompts import SYSTEM, history_lines, idea_memory_lines
from labfleet.researchers.llm.providers import (
    CLIENTS,
    KEY_ENV,
    PRICES,
    TOOL_NAME,
    AnthropicClient,
    Client,
    OpenAIClient,
    Reply,
    _short,
    price_of,
    redact,
)
from labfleet.researchers.llm.repair import CRASHES, _experiments, _origin, _Repair, repair_prompt
from labfleet.researchers.view import Sources

__all__ = [
    "CLIENTS",
    "KEY_ENV",
    "PRICES",
    "SYSTEM",
    "TOOL_NAME",
    "AnthropicClient",
    "Checked",
    "Client",
    "LLMError",
    "LLMResearcher",
    "OpenAIClient",
    "Reply",
    "check_proposal",
    "history_lines",
    "idea_memory_lines",
    "price_of",
    "redact",
]

LOG_TAIL_LINES = 30  # of a crashed run's log, in its repair prompt


class LLMResearcher(Researcher):
    """A language model proposes code patches with reasons and repairs its crashes."""

    name = "llm"
    wants_sources = True
    wants_findings = True

    def __init__(self, seed: int = 0, sources: Sources | None = None, provider: str = "anthropic",
                 model: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 max_usd: float | None = None, max_repairs: int = 2, timeout: float = 120.0,
                 max_retries: int = 4, prices: Mapping[str, tuple[float, float]] | None = None,
                 ideas: int = 0) -> None:
        if provider not in KEY_ENV:
            raise ConfigError(f"researcher 'llm': unknown provider {provider!r} (use anthropic or openai)")
        if not model:
            raise ConfigError("researcher 'llm': give the model with --model NAME")
        if sources is None:
            raise ConfigError("researcher 'llm': needs the target (make it with make_researcher(..., target=...))")
        env = api_key_env or KEY_ENV[provider]
        key = os.environ.get(env, "").strip()
        if not key:
            hint = f"set {env}" + ("" if api_key_env else " (or --api-key-env NAME)")
            raise ConfigError(f"researcher 'llm': no API key: {hint}")
        if max_repairs < 0:
            raise ConfigError(f"researcher 'llm': max_repairs must be at least 0, got {max_repairs}")
        if ideas < 0 or ideas == 1 or ideas > 8:
            raise ConfigError(f"researcher 'llm': ideas must be 0 (single experiments) or 2..8, got {ideas}")
        self.ideas = ideas
        self.seed = seed
        self.sources = sources  # the target as it may read it: files at a commit, the brief, log tails
        self.provider = provider
        self.model = model
        self.max_usd = max_usd
        self.max_repairs = max_repairs
        self.prices = dict(PRICES if prices is None else prices)
        # the key goes into the SDK client and nowhere else; only its env name is kept, to redact
        self._key_env = env
        self.client: Client = CLIENTS[provider](model, key, base_url, timeout=timeout, max_retries=max_retries)
        self.calls: list[dict[str, Any]] = []
        self._drained = 0
        self._repairs: list[_Repair] = []
        self._repaired: dict[int, int] = {}  # origin experiment id -> repair attempts
        self._cells: list[Proposal] = []  # the current ideas wave's cells not handed out yet
        self._complete_wave = ""  # the latest ideas wave known to have every cell placed
        self._memory_session: int | None = None
        self._memory: ideas_mod.Memory | None = None

    # ----------------------------------------------------------------- usage

    @property
    def spent_usd(self) -> float:
        return sum(call["usd"] for call in self.calls)

    def drain_usage(self) -> list[dict[str, Any]]:
        """Call records not drained yet (the session writes them to the ledger)."""
        fresh = [dict(call) for call in self.calls[self._drained:]]
        self._drained = len(self.calls)
        return fresh

    def over_budget(self) -> bool:
        return self.max_usd is not None and self.spent_usd >= self.max_usd

    def _secrets(self) -> list[str]:
        return [os.environ.get(self._key_env, "")]

    def _call(self, purpose: str, prompt: str, followups: Sequence[tuple[Reply, str]] = ()) -> Reply | None:
        """One model call, recorded; None when it failed (the error is in the record) or the cap is reached."""
        if self.over_budget():
            return None
        secrets = self._secrets()
        record: dict[str, Any] = {
            "call": len(self.calls) + 1, "purpose": purpose, "provider": self.provider, "model": self.model,
            "input_tokens": 0, "output_tokens": 0, "usd": 0.0, "seconds": 0.0, "ok": False, "error": "",
        }
        started = time.monotonic()
        reply = None
        try:
            reply = self.client.complete(SYSTEM, redact(prompt, secrets),
                                         [(r, redact(f, secrets)) for r, f in followups])
        except Exception as exc:  # noqa: BLE001 - any provider failure pauses proposing, never the session
            record["error"] = _short(exc, secrets)
        record["seconds"] = round(time.monotonic() - started, 3)
        if reply is not None:
            price = price_of(self.model, self.prices)
            record.update(ok=True, input_tokens=reply.input_tokens, output_tokens=reply.output_tokens)
            if price is None:
                record["note"] = f"no price known for {self.model}: counted as $0"
            else:
                record["usd"] = (reply.input_tokens * price[0] + reply.output_tokens * price[1]) / 1e6
        self.calls.append(record)
        return reply

    # ----------------------------------------------------------------- the contract

    def observe(self, state: SessionState, result: Result) -> None:
        exp = result.experiment
        if result.run.status not in CRASHES or not ({"llm_call", "repair_of"} & set(exp.tags)):
            return
        origin = _origin(_experiments(state), exp)
        self._repairs.append(_Repair(exp, origin, str(result.run.status), self.sources.log_tail(result.run.log_path, LOG_TAIL_LINES)))

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        champion = state.champion or state.baseline
        if champion is None or n < 1 or self.over_budget():
            return []
        proposals: list[Proposal] = []
        repair = self._next_repair(state)
        if repair is not None:
            fixed = self._repair(state, repair)
            if fixed is not None:
                proposals.append(fixed)
        if self.ideas:
            proposals += self._idea_cells(state, champion, n - len(proposals))
        elif len(proposals) < n and not self.over_budget():
            proposals += self._wave(state, champion, n - len(proposals))
        return proposals[:n]

    def memory(self, state: SessionState) -> ideas_mod.Memory:
        """Every change tried in this session (rebuilt from the ledger after a restart)."""
        if self._memory is None or self._memory_session != state.session_id:
            self._memory = ideas_mod.Memory(state.knobs)
            self._memory_session = state.session_id
        self._memory.update(state)
        return self._memory

    # ----------------------------------------------------------------- ideas waves

    def _idea_cells(self, state: SessionState, champion: Experiment, n: int) -> list[Proposal]:
        """The current ideas wave's cells first; a new wave (one model call) when they are all out."""
        if not self._cells:
            self._cells = self._unplaced_cells(state)
        out, self._cells = self._cells[:n], self._cells[n:]
        if len(out) < n:
            out += self._best_guesses(state, n - len(out))
        if len(out) < n and not self.over_budget():
            take = n - len(out)
            wave = self._idea_wave(state, champion, take)
            out += wave[:take]
            self._cells = wave[take:]
        return out

    def _best_guesses(self, state: SessionState, n: int) -> list[Proposal]:
        """For each finished ideas wave of a fraction: the combination its significant terms predict best, if no cell ran it."""
        from labfleet.analysis.effects import idea_wave_effects

        out: list[Proposal] = []
        exps = [r.experiment for r in state.history] + list(state.pending)
        followed = {e.tags.get(ideas_mod.BEST_GUESS_TAG) for e in exps}
        waves: dict[str, list[Experiment]] = {}
        for e in exps:
            if "llm_ideas" in e.tags and ideas_mod.wave_number(e.tags.get("wave", "")) is not None:
                waves.setdefault(e.tags["wave"], []).append(e)
        sd = min(state.noise.values()) if state.noise else None
        by_id = _experiments(state)
        for tag, members in sorted(waves.items()):
            if len(out) >= n or tag in followed or any(e.decision == "pending" for e in members):
                continue
            first = members[0]
            if not first.tags.get("design", "").startswith("2^("):
                continue  # a full factorial ran every combination: the best guess is one of its cells
            try:
                guess = idea_wave_effects(list(state.history), tag, noise_sd=sd).best_guess(state.direction)
            except ValueError:
                continue
            ran = {frozenset(filter(None, e.tags.get("on", "").split(","))) for e in members}
            if not guess or frozenset(guess) in ran:
                continue
            centre = by_id.get(int(first.tags.get("centre", "0") or 0))
            wave_ideas = [i for i in ideas_mod.ideas_of(first) if i.name in guess]
            if centre is None or not centre.commit or not wave_ideas:
                continue
            try:
                combo = ideas_mod.compose(self.sources.files(centre.commit), wave_ideas, 2 ** len(wave_ideas))
            except ideas_mod.IdeaError:
                continue
            cell = combo.cells[-1]  # every idea on
            if cell.error or not cell.patch:
                continue
            out.append(Proposal(
                description=f"ideas wave {tag[1:]} best guess: {' + '.join(cell.on)}",
                hypothesis=f"the terms of wave {tag} beyond the noise, combined", patch=cell.patch,
                parent=centre.id, tags={ideas_mod.BEST_GUESS_TAG: tag},
            ))
        return out

    def _unplaced_cells(self, state: SessionState) -> list[Proposal]:
        """After a restart: the latest ideas wave's cells neither run nor queued, rebuilt from its tags."""
        from labfleet.researchers.waves import _runs

        exps = [r.experiment for r in state.history] + list(state.pending)
        ours = [e for e in exps if "llm_ideas" in e.tags and ideas_mod.wave_number(e.tags.get("wave", "")) is not None]
        if not ours:
            return []
        number = max(ideas_mod.wave_number(e.tags["wave"]) or 0 for e in ours)
        tag = f"{ideas_mod.WAVE_PREFIX}{number}"
        if tag == self._complete_wave:
            return []
        members = [e for e in ours if e.tags["wave"] == tag]
        placed = {e.tags.get("cell") for e in members}
        first = members[0]
        wave_ideas = ideas_mod.ideas_of(first)
        runs = _runs(first.tags.get("design", ""))
        try:
            centre = _experiments(state).get(int(first.tags["centre"]))
        except (KeyError, ValueError):
            centre = None
        cells: list[Proposal] = []
        if centre is not None and centre.commit and wave_ideas and runs:
            try:
                wave = ideas_mod.compose(self.sources.files(centre.commit), wave_ideas, runs)
                cells = ideas_mod.cell_proposals(wave, number, centre, state.metric,
                                                 {"llm_ideas": first.tags["llm_ideas"]})
            except ideas_mod.IdeaError:
                cells = []
        left = [c for c in cells if c.tags["cell"] not in placed]
        if not left:
            self._complete_wave = tag
        return left

    def _idea_wave(self, state: SessionState, champion: Experiment, n: int) -> list[Proposal]:
        """One model call for ``self.ideas`` ideas, designed into a wave around the champion: its cells."""
        files = self.sources.files(champion.commit)
        k = self.ideas
        prompt = self.ideas_prompt(state, champion, files, k)
        memory = self.memory(state)
        checked = self._ask(f"ideas wave of {k}", prompt, files, state.metric, k, memory=memory, named=True,
                            parent_code=champion.commit)
        if not checked:
            return []
        found: list[ideas_mod.Idea] = []
        for c, _ in checked:
            name = _idea_name(c.name or c.description, {i.name for i in found})
            found.append(ideas_mod.Idea(name, c.patch, c.description, c.hypothesis))
        exps = [r.experiment for r in state.history] + list(state.pending)
        numbers = [ideas_mod.wave_number(e.tags.get("wave", "")) for e in exps]
        number = max([x for x in numbers if x is not None], default=0) + 1
        runs = ideas_mod.runs_for(len(found), n + len(state.pending))
        try:
            wave = ideas_mod.compose(files, found, runs)
        except ideas_mod.IdeaError:
            return []
        return ideas_mod.cell_proposals(wave, number, champion, state.metric, {"llm_ideas": str(len(self.calls))})

    def ideas_prompt(self, state: SessionState, champion: Experiment, files: Mapping[str, str], k: int) -> str:
        return prompts.ideas_prompt(self.sources, state, champion, files, k)

    # ----------------------------------------------------------------- waves

    def _wave(self, state: SessionState, champion: Experiment, n: int) -> list[Proposal]:
        files = self.sources.files(champion.commit)
        prompt = self.wave_prompt(state, champion, files, n)
        checked = self._ask(f"wave of {n}", prompt, files, state.metric, n, memory=self.memory(state),
                            parent_code=champion.commit)
        return [Proposal(description=c.description, hypothesis=c.hypothesis, patch=c.patch, parent=champion.id,
                         tags={"llm_call": str(call)}) for c, call in checked]

    def _ask(self, purpose: str, prompt: str, files: Mapping[str, str], metric: str,
             limit: int, memory: ideas_mod.Memory | None = None, named: bool = False,
             parent_code: str = "") -> list[tuple[Checked, int]]:
        """Ask, check, send the failures back once; the proposals that pass, with their call number.

        With ``memory``, a proposal repeating a change tried before fails its check, naming the experiment.
        """
        reply = self._call(purpose, prompt)
        if reply is None:
            return []
        editable = list(self.sources.editable)
        secrets = self._secrets()
        accepted: list[tuple[Checked, int]] = []
        failed: list[tuple[int, dict[str, Any], str]] = []

        def check(raw: Mapping[str, Any]) -> Checked:
            checked = check_proposal(raw, files, editable, metric, secrets)
            if named and isinstance(raw.get("name"), str):
                checked = Checked(checked.description, checked.hypothesis, checked.patch, raw["name"].strip()[:40])
            if any(ideas_mod.signature(checked.patch) == ideas_mod.signature(other.patch) for other, _ in accepted):
                raise ValueError("it makes the same change as an earlier proposal of this wave")
            tried = memory.repeats_patch(checked.patch, parent_code) if memory is not None else None
            if tried is not None:
                raise ValueError(f"it repeats e{tried.experiment} ({tried.name!r}"
                                 + (f", wave {tried.wave}" if tried.wave else "")
                                 + "): the same change up to whitespace, comments, numbers' spelling and context")
            return checked

        for i, raw in enumerate(reply.proposals[:limit], 1):
            try:
                checked = check(raw)
                accepted.append((checked, len(self.calls)))
            except ValueError as exc:
                failed.append((i, raw, str(exc)))
        if not failed or self.over_budget():
            return accepted
        lines = [f"{len(failed)} of your proposals cannot be run:"]
        for i, raw, error in failed:
            lines.append(f"- proposal {i} ({str(raw.get('description', ''))[:120]!r}): {error}")
        lines.append(f"Call {TOOL_NAME} again with corrected versions of exactly these {len(failed)} proposal(s), "
                     "against the files as shown in the first message. The other proposals are accepted; "
                     "do not repeat them.")
        retry = self._call(f"fix {len(failed)} of {purpose}", prompt, [(reply, "\n".join(lines))])
        if retry is None:
            return accepted
        for raw in retry.proposals[: len(failed)]:
            try:
                checked = check(raw)
            except ValueError:
                continue  # sent back once already: dropped
            accepted.append((checked, len(self.calls)))
        return accepted

    def wave_prompt(self, state: SessionState, champion: Experiment, files: Mapping[str, str], n: int) -> str:
        return prompts.wave_prompt(self.sources, state, champion, files, n)

    # ----------------------------------------------------------------- repairs

    def _next_repair(self, state: SessionState) -> _Repair | None:
        """The oldest queued repair still within ``max_repairs`` for its origin."""
        # repairs already in the ledger count too: a restart forgets this object's memory
        by_id = _experiments(state)
        recorded = Counter(_origin(by_id, e) for e in by_id.values() if "repair_of" in e.tags)
        while self._repairs:
            repair = self._repairs.pop(0)
            done = max(self._repaired.get(repair.origin, 0), recorded[repair.origin])
            if done < self.max_repairs:
                self._repaired[repair.origin] = done + 1
                return repair
        return None

    def _repair(self, state: SessionState, repair: _Repair) -> Proposal | None:
        failed = repair.failed
        parent = _experiments(state).get(failed.parent_id) if failed.parent_id is not None else None
        parent_commit = parent.commit if parent is not None else self.sources.parent(failed.commit)
        if not parent_commit or failed.parent_id is None:
            return None
        files = self.sources.files(parent_commit)
        prompt = repair_prompt(repair, files)
        checked = self._ask(f"repair of e{failed.id}", prompt, files, state.metric, 1)
        if not checked:
            return None
        fix, call = checked[0]
        return Proposal(description=fix.description, hypothesis=fix.hypothesis, patch=fix.patch,
                        parent=failed.parent_id, tags={"repair_of": str(failed.id), "llm_call": str(call)})


def _idea_name(text: str, taken: set[str]) -> str:
    """A factor name from the model's name or description: UPPER_CASE, unique in the wave."""
    base = re.sub(r"[^A-Za-z0-9_]+", "_", text.strip()).strip("_").upper()[:32] or "IDEA"
    if not base[0].isalpha():
        base = f"I_{base}"[:32]
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name
