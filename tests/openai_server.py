"""A real, local OpenAI-compatible chat-completions server for judge tests.

A test module gets the fixture ``openai_server`` (a started :class:`FakeOpenAI`) with::

    from tests.openai_server import openai_server as openai_server_fixture  # noqa: F401

(the alias keeps ruff from flagging test parameters named ``openai_server``; the fixture keeps
its name). It serves ``POST /v1/chat/completions`` and Azure's
``POST /openai/deployments/<name>/chat/completions?api-version=...`` on 127.0.0.1, and answers
401 unless the request carries :data:`FAKE_KEY` (``Authorization: Bearer`` on the OpenAI path,
``api-key`` on the Azure path).

Verdict rule (reads the labelled lines of the built-in judge prompts): with ``a`` the "Correct
answer" and ``p`` a "Predicted answer", both stripped and lower-cased,
``match(a, p)`` is 5 if ``a == p``, 3 if one contains the other, else 1.

* QA prompts (the user message mentions the key ``'pred'``): ``{'pred': 'yes', 'score': s}``
  with ``s = match(a, p)``, "yes" if ``s >= 3`` else "no".
* Consistency prompts ("Predicted answer 1/2"): ``{'score': min(match(a, p1), match(a, p2))}``.
* Other score prompts: ``{'score': match(a, p)}``.
* No labelled lines found: the reply ``I cannot judge this.`` (no dict).

Faults: :meth:`FakeOpenAI.script` queues faults for the next requests, whatever they are;
:meth:`FakeOpenAI.when` gives them to requests whose user message contains a text (checked first).
Besides the helpers for status errors and bad reply texts, :func:`raw_body` sends a 200 whose body
is not a well-formed completion, :func:`out_of_quota` OpenAI's ``insufficient_quota`` 429 and
:func:`model_not_found` a 404; :meth:`FakeOpenAI.clear` drops pending faults, and ``served_model``
sets the completion's ``model``. Counters: ``counts["total"]`` and one per outcome (``ok``,
``429``, ``500``, ``503``, ``reply`` for scripted reply text, ``slow``, ``401``, ...).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

FAKE_KEY = "sk-fake-judge-key-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or before) answering normally."""

    kind: str  # "status" | "reply" | "slow" | "body"
    status: int = 200
    text: str = ""  # reply content, error message ("{auth}" = the credential) or raw body
    retry_after: str | None = None
    delay: float = 0.0
    code: str | None = None  # the error's ``code`` (and ``type``), e.g. "insufficient_quota"
    content_type: str = "application/json"  # of a raw "body"


def rate_limited(retry_after: float | None = None) -> Fault:
    """429, with a ``Retry-After`` header (seconds) if given."""
    shown = None if retry_after is None else f"{retry_after:g}"
    return Fault("status", 429, "Rate limit reached, slow down.", retry_after=shown)


def out_of_quota() -> Fault:
    """OpenAI's 429 for an account without credit: retrying cannot help."""
    message = "You exceeded your current quota, please check your plan and billing details."
    return Fault("status", 429, message, code="insufficient_quota")


def model_not_found(model: str) -> Fault:
    return Fault("status", 404, f"The model `{model}` does not exist.", code="model_not_found")


def raw_body(body: str, content_type: str = "application/json") -> Fault:
    """A 200 whose body is ``body`` as is (not a completion, or a malformed one)."""
    return Fault("body", text=body, content_type=content_type)


def server_error(status: int = 500) -> Fault:
    return Fault("status", status, "The server had an error while processing your request.")


def error_echoing_credentials(status: int = 400) -> Fault:
    """An error whose message repeats the credential the request carried (a leaky server)."""
    return Fault("status", status, "Bad request from client {auth}")


def bad_reply(text: str) -> Fault:
    """A normal completion whose content is ``text`` instead of the rule's verdict."""
    return Fault("reply", text=text)


def slow(seconds: float) -> Fault:
    """Answer normally, but only after ``seconds``."""
    return Fault("slow", delay=seconds)


def match(answer: str, pred: str) -> int:
    """The rule's score for one prediction (see the module docstring)."""
    a, p = answer.strip().lower(), pred.strip().lower()
    if a == p:
        return 5
    return 3 if a in p or p in a else 1


def _labelled(text: str, label: str) -> str | None:
    found = re.search(rf"^{re.escape(label)}: (.*)$", text, re.MULTILINE)
    return found.group(1) if found else None


def rule_reply(user: str) -> str:
    """The reply the verdict rule gives to a user message."""
    answer = _labelled(user, "Correct answer")
    pred, pred1, pred2 = (_labelled(user, f"Predicted answer{n}") for n in ("", " 1", " 2"))
    if answer is not None and pred1 is not None and pred2 is not None:
        return str({"score": min(match(answer, pred1), match(answer, pred2))})
    if answer is None or pred is None:
        return "I cannot judge this."
    score = match(answer, pred)
    if "'pred'" in user:
        return str({"pred": "yes" if score >= 3 else "no", "score": score})
    return str({"score": score})


@dataclass
class Seen:
    """One request as the server saw it."""

    path: str
    model: str
    messages: list[dict[str, str]]
    temperature: Any
    outcome: str
    top_p: Any = None
    max_tokens: Any = None
    body: dict[str, Any] = field(default_factory=dict)  # the request body as sent
    at: float = field(default_factory=time.monotonic)

    @property
    def user(self) -> str:
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")


class FakeOpenAI:
    """The server; see the module docstring. ``delay`` slows every request (to overlap them)."""

    def __init__(self, key: str = FAKE_KEY) -> None:
        self.key = key
        self.delay = 0.0
        self.served_model: str | None = None  # the completion's ``model`` (default: as asked)
        self.counts: Counter[str] = Counter()
        self.requests: list[Seen] = []
        self.in_flight = self.max_in_flight = 0
        self._queue: deque[Fault] = deque()
        self._rules: list[tuple[str, deque[Fault], bool]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def endpoint(self) -> str:
        """The Azure OpenAI resource endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def script(self, *faults: Fault) -> None:
        """The next requests get these faults, in order (after any matching :meth:`when`)."""
        with self._lock:
            self._queue.extend(faults)

    def when(self, text: str, *faults: Fault, forever: bool = False) -> None:
        """Requests whose user message contains ``text`` get ``faults`` in order; with
        ``forever`` the last one repeats for good."""
        with self._lock:
            self._rules.append((text, deque(faults), forever))

    def clear(self) -> None:
        """Drop every pending fault (scripted and :meth:`when`)."""
        with self._lock:
            self._queue.clear()
            self._rules.clear()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being served (a slow one outlives its client's timeout)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.in_flight

    def _next_fault(self, user: str) -> Fault | None:
        with self._lock:
            for text, faults, forever in self._rules:
                if text in user and faults:
                    return faults[0] if forever and len(faults) == 1 else faults.popleft()
            return self._queue.popleft() if self._queue else None

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _record(self, seen: Seen) -> None:
        """Count a request once its outcome is known, before its reply is sent: a client that
        has its reply must find it counted."""
        with self._lock:
            self.counts["total"] += 1
            self.counts[seen.outcome] += 1
            self.requests.append(seen)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)


def _handler_for(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        fake = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.fake._enter()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        url = urlsplit(self.path)
        azure = _AZURE_PATH.match(url.path)
        model = azure.group(1) if azure else body.get("model", "")
        seen = Seen(url.path, model, body.get("messages", []), body.get("temperature"), "")
        seen.top_p, seen.max_tokens, seen.body = body.get("top_p"), body.get("max_tokens"), body
        self._seen: Seen | None = seen
        try:
            self._serve(seen, url.query, azure is not None)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)
        finally:
            if self._seen is not None:  # no reply was sent
                self.fake._record(seen)
            self.fake._leave()

    def _serve(self, seen: Seen, query: str, azure: bool) -> None:
        known = "api-version" in parse_qs(query) if azure else seen.path == "/v1/chat/completions"
        if not known:
            return self._error(seen, 404, "Unknown path.")
        credential = self.headers.get("api-key") if azure else self.headers.get("Authorization")
        expected = self.fake.key if azure else f"Bearer {self.fake.key}"
        if credential != expected:
            return self._error(seen, 401, "Incorrect API key provided.")
        self.fake._sleep(self.fake.delay)
        fault = self.fake._next_fault(seen.user)
        if fault is None:
            return self._reply(seen, "ok", rule_reply(seen.user))
        if fault.kind == "status":
            return self._error(seen, fault.status, fault.text.replace("{auth}", credential), fault)
        if fault.kind == "slow":
            seen.outcome = "slow"
            self.fake._sleep(fault.delay)
            return self._reply(seen, "slow", rule_reply(seen.user))
        if fault.kind == "body":
            seen.outcome = "body"
            return self._send_bytes(200, fault.text.encode("utf-8"), fault.content_type)
        return self._reply(seen, "reply", fault.text)

    def _reply(self, seen: Seen, outcome: str, content: str) -> None:
        seen.outcome = outcome
        self._send(200, _completion(self.fake.served_model or seen.model, content))

    def _error(self, seen: Seen, status: int, message: str, fault: Fault | None = None) -> None:
        seen.outcome = str(status)
        headers = {"Retry-After": fault.retry_after} if fault and fault.retry_after else {}
        code = fault.code if fault else None
        error = {"message": message, "type": code or "fake_error", "param": None, "code": code}
        self._send(status, {"error": error}, headers)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None):
        self._send_bytes(status, json.dumps(payload).encode("utf-8"), "application/json", headers)

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        if self._seen is not None:
            self.fake._record(self._seen)
            self._seen = None
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


@pytest.fixture(name="openai_server")
def openai_server() -> Iterator[FakeOpenAI]:
    """A started :class:`FakeOpenAI`, stopped after the test."""
    server = FakeOpenAI().start()
    try:
        yield server
    finally:
        server.stop()
