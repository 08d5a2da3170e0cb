"""The LLM researcher's providers: one forced tool call per model request, priced and redacted.

``anthropic`` (Messages API) and ``openai`` (Chat Completions, any OpenAI-compatible
endpoint through ``base_url``). The SDKs are imported when a client is made and retry
429/5xx/timeouts with their own backoff. Keys live only inside the SDK client:
``redact`` takes them (and anything key-shaped) out of every text that leaves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from labfleet.errors import ConfigError, LLMError

TOOL_NAME = "propose_experiments"
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}  # by provider
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
