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
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from labfleet import logs, workspace
from labfleet.errors import ConfigError, LLMError, LabfleetError, PatchError
from labfleet.records import Experiment, Proposal, Result, RunStatus, SessionState
from labfleet.researchers import ideas as ideas_mod
from labfleet.researchers.base import Researcher
from labfleet.target import unified_diff

if TYPE_CHECKING:
    from labfleet.target import Target

TOOL_NAME = "propose_experiments"
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}  # by provider
CRASHES = (RunStatus.CRASHED, RunStatus.NAN, RunStatus.TIMEOUT)
LOG_TAIL_LINES = 30
BRIEF_FILE = "program.md"

# List prices in dollars per million tokens (input, output), matched by the longest
# prefix of the model name (a router prefix such as "anthropic/" is ignored). Models
# not listed cost $0 in the figures, with a note in their call records.
PRICES: dict[str, tuple[float, float]] = {
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5": (1.25, 10.0),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4o": (2.5, 10.0),
    "o4-mini": (1.1, 4.4),
    "o3-mini": (1.1, 4.4),
    "o3": (2.0, 8.0),
}

# Anything shaped like an API key: never echoed into prompts, records or errors.
_KEY_SHAPED = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}|\bBearer\s+[A-Za-z0-9_\-.]{8,}")

_ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Ideas waves: a short UPPER_CASE name for the idea (e.g. RMSNORM)."},
        "description": {"type": "string", "description": "One line: what changes (e.g. 'LEARNING_RATE 1e-3 -> 3e-3')."},
        "hypothesis": {"type": "string", "description": "Why it should improve the metric, in one or two sentences."},
        "patch": {
            "type": "string",
            "description": "A unified diff against the current files (git format: --- a/FILE, +++ b/FILE, @@ hunks). "
                           "Give either patch or edits.",
        },
        "edits": {
            "type": "array",
            "description": "Search/replace edits, applied in order. Each search text must occur exactly once in the file.",
            "items": {
                "type": "object",
                "properties": {
                    "file": {"type": "string"},
                    "search": {"type": "string", "description": "Exact text of the current file, with indentation."},
                    "replace": {"type": "string"},
                },
                "required": ["file", "search", "replace"],
            },
        },
    },
    "required": ["description", "hypothesis"],
}
TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"proposals": {"type": "array", "items": _ITEM_SCHEMA}},
    "required": ["proposals"],
}
TOOL_DESCRIPTION = "Propose experiments: each is one change to the editable files, run for the fixed time budget."

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


# --------------------------------------------------------------------------- provider layer


@dataclass(frozen=True)
class Reply:
    """One model answer: the tool's proposals and the tokens it cost."""

    proposals: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    call_id: str = ""  # the tool call's id, to continue the conversation
    arguments: Mapping[str, Any] = field(default_factory=dict)  # the tool input as the model gave it


class Client(Protocol):
    """A provider: one forced ``propose_experiments`` call per ``complete``.

    ``followups`` continue the conversation: each earlier reply and the feedback
    sent back on it (as the tool's result), oldest first.
    """

    provider: str
    model: str

    def complete(self, system: str, prompt: str, followups: Sequence[tuple[Reply, str]] = ()) -> Reply: ...


def _proposals_from(arguments: Any) -> list[dict[str, Any]]:
    if not isinstance(arguments, Mapping) or not isinstance(arguments.get("proposals"), list):
        raise LLMError(f"the model's {TOOL_NAME} call has no proposals list")
    return [p if isinstance(p, dict) else {"invalid": repr(p)[:200]} for p in arguments["proposals"]]


class AnthropicClient:
    """Anthropic's Messages API with ``propose_experiments`` as the forced tool."""

    provider = "anthropic"

    def __init__(self, model: str, api_key: str, base_url: str | None = None, timeout: float = 120.0,
                 max_retries: int = 4, max_tokens: int = 8192) -> None:
        try:
            import anthropic
        except ImportError:  # pragma: no cover - a dependency of labfleet
            raise ConfigError("the LLM researcher needs the `anthropic` package (pip install anthropic)") from None
        self.model = model
        self.max_tokens = max_tokens
        self._sdk = anthropic.Anthropic(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)

    def complete(self, system: str, prompt: str, followups: Sequence[tuple[Reply, str]] = ()) -> Reply:
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        for reply, feedback in followups:
            messages.append({"role": "assistant", "content": [
                {"type": "tool_use", "id": reply.call_id, "name": TOOL_NAME, "input": dict(reply.arguments)}]})
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": reply.call_id, "content": feedback, "is_error": True}]})
        message = self._sdk.messages.create(
            model=self.model, max_tokens=self.max_tokens, system=system, messages=messages,  # type: ignore[arg-type]
            tools=[{"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": TOOL_SCHEMA}],
            tool_choice={"type": "tool", "name": TOOL_NAME},
        )
        usage = message.usage
        tokens = (int(getattr(usage, "input_tokens", 0) or 0), int(getattr(usage, "output_tokens", 0) or 0))
        for block in message.content:
            if getattr(block, "type", "") == "tool_use" and getattr(block, "name", "") == TOOL_NAME:
                arguments = dict(block.input)  # type: ignore[union-attr]
                return Reply(_proposals_from(arguments), *tokens, call_id=block.id, arguments=arguments)  # type: ignore[union-attr]
        raise LLMError(f"the model answered without calling {TOOL_NAME}")


class OpenAIClient:
    """OpenAI Chat Completions (or any compatible server) with the same forced function tool."""

    provider = "openai"

    def __init__(self, model: str, api_key: str, base_url: str | None = None, timeout: float = 120.0,
                 max_retries: int = 4) -> None:
        try:
            import openai
        except ImportError:  # pragma: no cover - a dependency of labfleet
            raise ConfigError("the LLM researcher needs the `openai` package (pip install openai)") from None
        self.model = model
        self._sdk = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)

    def complete(self, system: str, prompt: str, followups: Sequence[tuple[Reply, str]] = ()) -> Reply:
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        for reply, feedback in followups:
            messages.append({"role": "assistant", "content": None, "tool_calls": [{
                "id": reply.call_id, "type": "function",
                "function": {"name": TOOL_NAME, "arguments": json.dumps(dict(reply.arguments))}}]})
            messages.append({"role": "tool", "tool_call_id": reply.call_id, "content": feedback})
        completion = self._sdk.chat.completions.create(
            model=self.model, messages=messages,  # type: ignore[arg-type]
            tools=[{"type": "function", "function": {
                "name": TOOL_NAME, "description": TOOL_DESCRIPTION, "parameters": TOOL_SCHEMA}}],
            tool_choice={"type": "function", "function": {"name": TOOL_NAME}},
        )
        usage = completion.usage
        tokens = (int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0))
        if not completion.choices:
            raise LLMError("the model returned no choices")
        for call in completion.choices[0].message.tool_calls or []:
            function = getattr(call, "function", None)
            if function is None or function.name != TOOL_NAME:
                continue
            try:
                arguments = json.loads(function.arguments or "{}")
            except json.JSONDecodeError as exc:
                raise LLMError(f"the model's {TOOL_NAME} arguments are not JSON: {exc.msg}") from None
            return Reply(_proposals_from(arguments), *tokens, call_id=call.id, arguments=arguments)
        raise LLMError(f"the model answered without calling {TOOL_NAME}")


CLIENTS: dict[str, type[AnthropicClient] | type[OpenAIClient]] = {"anthropic": AnthropicClient, "openai": OpenAIClient}


def price_of(model: str, prices: Mapping[str, tuple[float, float]] = PRICES) -> tuple[float, float] | None:
    """($/M input, $/M output) by the longest matching prefix, or None for an unknown model."""
    name = model.lower().rsplit("/", 1)[-1]
    matches = [prefix for prefix in prices if name.startswith(prefix)]
    return prices[max(matches, key=len)] if matches else None


# --------------------------------------------------------------------------- checking proposals


@dataclass(frozen=True)
class Checked:
    """A proposal that passed every check: its canonical patch (git-apply clean)."""

    description: str
    hypothesis: str
    patch: str
    name: str = ""  # ideas waves: the idea's name as the model gave it


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every given secret and anything key-shaped replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEY_SHAPED.sub("[redacted]", text)


def _short(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """A one-line error for records: the type, an HTTP status if any, a trimmed message."""
    status = getattr(exc, "status_code", None)
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "") + (f": {text}" if text else "")
    return redact(text, secrets)[:300]


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


def _git_apply(root: Path, patch: str, *args: str) -> str:
    """``git apply`` in a scratch repo, lenient about hunk line counts (models miscount them)."""
    proc = subprocess.run(["git", "-C", str(root), "apply", *args, "--recount", "--whitespace=nowarn", "-"],
                          input=patch, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.removeprefix("error: ") for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ValueError("; ".join(lines[-2:]) or f"git apply exited {proc.returncode}")
    return proc.stdout


def _patch_paths(root: Path, patch: str) -> set[str]:
    try:
        out = _git_apply(root, patch, "--numstat", "-z")
    except ValueError as exc:
        raise ValueError(f"the patch cannot be read: {exc}") from None
    fields = [f for f in out.split("\0") if f]
    # "added<TAB>deleted<TAB>path", or for renames "added<TAB>deleted<TAB>" then both paths
    return {f.split("\t", 2)[2] if f.count("\t") >= 2 else f for f in fields} - {""}


def _apply_patch(files: Mapping[str, str], patch: str, editable: Sequence[str]) -> dict[str, str]:
    """Apply a unified diff in memory (a scratch repo holding the files): the new contents."""
    if not patch.endswith("\n"):
        patch += "\n"
    with tempfile.TemporaryDirectory(prefix="labfleet-llm-") as tmp:
        root = Path(tmp)
        subprocess.run(["git", "init", "-q", str(root)], check=True, capture_output=True)
        try:  # symlinks, gitlinks, binary, renames, deletions, labfleet.toml: the one patch checker's text rules
            workspace.check_patch_text(patch)
        except PatchError as exc:
            raise ValueError(str(exc)) from None
        touched = _patch_paths(root, patch)
        outside = sorted({p for p in touched if p not in editable})
        if outside:
            raise ValueError(f"the patch touches {', '.join(outside)}, which is not editable "
                             f"(editable: {', '.join(editable)})")
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        for args in (("--check",), ()):
            try:
                _git_apply(root, patch, *args)
            except ValueError as exc:
                raise ValueError(f"the patch does not apply to the current files: {exc}") from None
        new = {}
        for path in files:
            if not (root / path).is_file():
                raise ValueError(f"the patch deletes {path}")
            new[path] = (root / path).read_text()
        return new


def check_proposal(raw: Mapping[str, Any], files: Mapping[str, str], editable: Sequence[str], metric: str,
                   secrets: Sequence[str] = ()) -> Checked:
    """The proposal as a canonical patch against ``files``, or ``ValueError`` saying what is wrong."""
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ValueError("a description is required")
    hypothesis = raw.get("hypothesis") if isinstance(raw.get("hypothesis"), str) else ""
    patch, edits = raw.get("patch"), raw.get("edits")
    if edits:
        new = _apply_edits(files, edits, editable)
    elif isinstance(patch, str) and patch.strip():
        new = _apply_patch(files, patch, editable)
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


# --------------------------------------------------------------------------- the researcher


@dataclass
class _Repair:
    failed: Experiment
    origin: int  # the first experiment of the repair chain: the bound counts per origin
    status: str  # crashed, nan or timeout
    log_tail: str


class LLMResearcher(Researcher):
    """A language model proposes code patches with reasons and repairs its crashes."""

    name = "llm"
    wants_target = True
    wants_findings = True

    def __init__(self, seed: int = 0, target: Target | None = None, provider: str = "anthropic",
                 model: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 max_usd: float | None = None, max_repairs: int = 2, timeout: float = 120.0,
                 max_retries: int = 4, prices: Mapping[str, tuple[float, float]] | None = None,
                 ideas: int = 0) -> None:
        if provider not in KEY_ENV:
            raise ConfigError(f"researcher 'llm': unknown provider {provider!r} (use anthropic or openai)")
        if not model:
            raise ConfigError("researcher 'llm': give the model with --model NAME")
        if target is None:
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
        self.target = target
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
        self._repairs.append(_Repair(exp, origin, str(result.run.status), read_tail(result.run.log_path)))

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
                combo = ideas_mod.compose(self._files(centre.commit), wave_ideas, 2 ** len(wave_ideas))
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
                wave = ideas_mod.compose(self._files(centre.commit), wave_ideas, runs)
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
        files = self._files(champion.commit)
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

    def _prompt_head(self, state: SessionState, champion: Experiment, files: Mapping[str, str]) -> list[str]:
        """What every prompt starts with: the brief, the target, the champion's files, the history."""
        spec = self.target.spec
        parts = ["# Research brief", self._brief(champion.commit), "", "# The target",
                 f"Metric: {spec.metric} ({'lower' if spec.direction == 'minimize' else 'higher'} is better), "
                 f"measured after a fixed training budget of {champion.budget_seconds:g} s per run.",
                 f"Editable files: {', '.join(spec.editable)}. Frozen (never change): {', '.join(spec.frozen) or 'none'}.",
                 "", f"# The current best version (experiment e{champion.id}, {spec.metric} = {_fmt(champion.metric)})"]
        parts += _file_blocks(files)
        parts += ["", "# What has been tried", *history_lines(state)]
        return parts

    def ideas_prompt(self, state: SessionState, champion: Experiment, files: Mapping[str, str], k: int) -> str:
        parts = self._prompt_head(state, champion, files)
        parts += ["", "# Ideas tried and their measured effects (do not propose them again, under any name)",
                  *idea_memory_lines(state)]
        parts += ["", "# Your task",
                  f"Propose {k} ideas (k = {k}), each a named change against the files above. The system runs "
                  f"them as factors of a factorial design: every idea alone and in combination with the others, "
                  f"so it measures each idea's effect and which ideas help only together. Make the {k} ideas "
                  f"independent: each must apply and make sense on its own and together with the others (touch "
                  f"different lines). Call {TOOL_NAME} once with {k} proposals, each with a short UPPER_CASE name."]
        return "\n".join(parts)

    # ----------------------------------------------------------------- waves

    def _wave(self, state: SessionState, champion: Experiment, n: int) -> list[Proposal]:
        files = self._files(champion.commit)
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
        editable = list(self.target.spec.editable)
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
        parts = self._prompt_head(state, champion, files)
        parts += ["", "# Your task",
                  f"Propose {n} experiment{'s' * (n != 1)} (n = {n}), each one idea, as different from each other "
                  f"and from what was tried as makes sense, against the files above. Call {TOOL_NAME} once with "
                  f"{n} proposal{'s' * (n != 1)}."]
        return "\n".join(parts)

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
        parent_commit = parent.commit if parent is not None else _first_parent(self.target.root, failed.commit)
        if not parent_commit or failed.parent_id is None:
            return None
        files = self._files(parent_commit)
        prompt = self.repair_prompt(repair, files)
        checked = self._ask(f"repair of e{failed.id}", prompt, files, state.metric, 1)
        if not checked:
            return None
        fix, call = checked[0]
        return Proposal(description=fix.description, hypothesis=fix.hypothesis, patch=fix.patch,
                        parent=failed.parent_id, tags={"repair_of": str(failed.id), "llm_call": str(call)})

    def repair_prompt(self, repair: _Repair, files: Mapping[str, str]) -> str:
        failed, log_tail = repair.failed, repair.log_tail
        what = {"timeout": "ran past its hard timeout", "nan": "diverged (a non-finite loss)"}.get(repair.status, "crashed")
        parts = ["# Repair a failed experiment",
                 f"Experiment e{failed.id} {what} before it produced a result. Fix it so that it runs, keeping its "
                 "idea. If the idea itself cannot work, make the smallest change that tests it safely.",
                 f"Description: {failed.description}", f"Hypothesis: {failed.hypothesis or '(none given)'}",
                 "", "## Its patch (against the files below)", "```diff", failed.patch.rstrip(), "```",
                 "", "## The end of its log", "```", log_tail.rstrip() or "(no log)", "```",
                 "", "# The files it started from"]
        parts += _file_blocks(files)
        parts += ["", "# Your task",
                  f"Call {TOOL_NAME} with exactly 1 proposal: the fixed change, as a patch or edits against the "
                  f"files above (not against e{failed.id}'s version). Say in the hypothesis what was wrong."]
        return "\n".join(parts)

    # ----------------------------------------------------------------- reading the target

    def _files(self, commit: str) -> dict[str, str]:
        return {path: workspace.show_file(self.target.root, commit, path) for path in self.target.spec.editable}

    def _brief(self, commit: str) -> str:
        try:
            return workspace.show_file(self.target.root, commit, BRIEF_FILE).strip()
        except LabfleetError:
            path = self.target.root / BRIEF_FILE
            if path.is_file():
                return path.read_text().strip()
        return f"(no {BRIEF_FILE}) Improve {self.target.spec.metric} within the fixed time budget."


# --------------------------------------------------------------------------- prompt helpers


def read_tail(log_path: str | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a run's log, each cut to 300 characters; '' when there is none."""
    tail = logs.tail_lines(log_path, lines)
    return "\n".join(line[:300] for line in tail.splitlines())


def _fmt(metric: float | None) -> str:
    return "not measured" if metric is None else f"{metric:.4f}"


def _file_blocks(files: Mapping[str, str]) -> list[str]:
    out = []
    for path, text in files.items():
        fence = "```python" if path.endswith(".py") else "```"
        out += [f"## {path}", fence, text.rstrip("\n"), "```"]
    return out


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


def _first_parent(repo: Path, commit: str) -> str:
    try:
        return workspace.resolve(repo, f"{commit}^") if commit else ""
    except LabfleetError:
        return ""


def _idea_name(text: str, taken: set[str]) -> str:
    """A factor name from the model's name or description: UPPER_CASE, unique in the wave."""
    base = re.sub(r"[^A-Za-z0-9_]+", "_", text.strip()).strip("_").upper()[:32] or "IDEA"
    if not base[0].isalpha():
        base = f"I_{base}"[:32]
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


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


def history_lines(state: SessionState, best: int = 5, recent: int = 12, failures: int = 3) -> list[str]:
    """What the model should know about the session so far, in plain lines."""
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
            tail = read_tail(r.run.log_path, 15)
            if tail:
                lines += ["```", tail, "```"]
    if state.pending:
        lines += ["", "Queued or running now (do not propose these again):"]
        lines += [f"- e{e.id} {e.description}" for e in state.pending]
    return lines
