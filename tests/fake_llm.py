"""A local HTTP server that speaks the Anthropic Messages and OpenAI Chat Completions APIs.

LLM APIs cannot be reached from tests, so they are faked at the network edge: the
real SDK clients talk to this server through ``base_url``. A test scripts it with
a queue of replies (proposal lists, or error statuses) or a ``responder`` function
for whatever the queue does not cover, and reads back every request it received.

    with FakeLLM() as fake:
        fake.push(Reply(proposals=[...]), Reply(status=429), Reply(status=500))
        ...  # anthropic: base_url=fake.url; openai: base_url=fake.openai_url
        fake.requests[0].prompt   # everything the model was told, as one string
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOOL = "propose_experiments"


@dataclass
class Reply:
    """One scripted answer: a tool call with ``proposals``, or an error ``status``."""

    proposals: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    input_tokens: int = 1000
    output_tokens: int = 200
    # error replies: retry-after 0 (the SDKs then back off), retry-after-ms 1 (they wait 1 ms)
    headers: dict[str, str] = field(default_factory=lambda: {"retry-after": "0", "retry-after-ms": "1"})
    no_tool: bool = False  # answer with text only, no tool call


@dataclass
class Request:
    """A request as the server received it."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]
    raw: str

    @property
    def api(self) -> str:
        return "anthropic" if self.path.endswith("/messages") else "openai"

    @property
    def auth(self) -> str:
        """The key the client sent (``x-api-key``, or ``authorization: Bearer``, as SDK versions differ)."""
        return self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ")

    @property
    def prompt(self) -> str:
        """Every piece of text sent to the model (system, messages, tool results), joined."""
        texts: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                for item in value:
                    walk(item)
            elif isinstance(value, dict):
                for key, item in value.items():
                    if key in ("content", "text", "system"):
                        walk(item)
                    elif key == "messages":
                        walk(item)

        walk({"system": self.body.get("system", ""), "messages": self.body.get("messages", [])})
        return "\n".join(texts)

    @property
    def turns(self) -> int:
        return len(self.body.get("messages", []))


class FakeLLM:
    """The server, on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self, responder: Callable[[Request], Reply] | None = None) -> None:
        self.queue: collections.deque[Reply] = collections.deque()
        self.responder = responder
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length).decode()
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    body = {}
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body, raw)
                status, headers, payload = fake._answer(request)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Anthropic's base_url (the SDK adds /v1/messages)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """OpenAI's base_url (the SDK adds /chat/completions)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.queue.extend(replies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- answering

    def _answer(self, request: Request) -> tuple[int, dict[str, str], dict[str, Any]]:
        if not (request.path.endswith("/v1/messages") or request.path.endswith("/chat/completions")):
            return 404, {}, {"error": {"type": "not_found", "message": f"no route {request.path}"}}
        with self._lock:
            self.requests.append(request)
            reply = self.queue.popleft() if self.queue else None
        if reply is None:
            reply = self.responder(request) if self.responder else Reply(status=500)
        if reply.status != 200:
            kind = "rate_limit_error" if reply.status == 429 else "api_error"
            return reply.status, reply.headers, {"type": "error", "error": {"type": kind, "message": "scripted failure"}}
        model = request.body.get("model", "fake-model")
        arguments = {"proposals": reply.proposals}
        n = len(self.requests)
        if request.api == "anthropic":
            content: list[dict[str, Any]] = [{"type": "text", "text": "Here are my proposals."}]
            if not reply.no_tool:
                content.append({"type": "tool_use", "id": f"toolu_{n}", "name": TOOL, "input": arguments})
            return 200, {}, {
                "id": f"msg_{n}", "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": "end_turn" if reply.no_tool else "tool_use", "stop_sequence": None,
                "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
            }
        message: dict[str, Any] = {"role": "assistant", "content": "Here are my proposals." if reply.no_tool else None}
        if not reply.no_tool:
            message["tool_calls"] = [{"id": f"call_{n}", "type": "function",
                                      "function": {"name": TOOL, "arguments": json.dumps(arguments)}}]
        return 200, {}, {
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop" if reply.no_tool else "tool_calls"}],
            "usage": {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                      "total_tokens": reply.input_tokens + reply.output_tokens},
        }
