"""The GPT-assisted judge (``eval judge``, spec §6).

Reads ``eval/<run_id>/predictions/*.jsonl``, asks a chat model for one verdict per (item,
dimension) and writes ``verdicts.jsonl`` and ``judge.json`` (formats in :mod:`.layout`).

Calls go through the ``openai`` SDK with its own retries off; our loop retries rate limits
(honouring ``Retry-After``), 5xx, timeouts, connection errors and unusable replies (a body that is
not a completion, no choices, empty content, no verdict in the text). An item that still has no
verdict after ``max_attempts`` is recorded as ``failed``: never dropped, never scored. A refusal no
retry can fix (key or access refused, unknown model, ``insufficient_quota``) stops the run at once
with :class:`JudgeError`. Successful verdicts are cached in the store
(``judge-cache/<sha256>.json``), so a rerun over the same predictions makes no HTTP calls. The API
key is read from the environment variable named in the config and never written anywhere: every
message and reply text that is logged or stored has it masked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..jobs.failures import ExitCode
from ..storage.base import Store
from . import layout
from .prompts import QA_DIMENSION, JudgePrompt
from .protocol import (
    BUILTIN_TEMPERATURE,
    BUILTIN_TOP_P,
    JudgeProtocol,
    builtin_protocol,
    protocol_record,
)
from .replies import REPLY_RULES, ReplyError

if TYPE_CHECKING:
    import openai  # imported where used: it takes most of a second, and the CLI reads JudgeConfig

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
_FATAL_STATUSES = {  # no retry can fix these
    401: "API key rejected",
    403: "no access",
    404: "unknown model, deployment or path",
}
_FATAL_CODES = {"insufficient_quota": "out of credit (insufficient_quota)"}

# subset -> keys of (question, question2, answer, pred, pred2) in its prediction lines
_LINE_KEYS: dict[str, tuple[str, str | None, str, str, str | None]] = {
    "qa": ("question", None, "answer", "pred", None),
    "generic": ("Q", None, "A", "pred", None),
    "temporal": ("Q", None, "A", "pred", None),
    "consistency": ("Q1", "Q2", "A", "pred1", "pred2"),
}


class JudgeError(RuntimeError):
    """The judge cannot work at all: no API key, credentials refused, unknown model, no credit.

    ``str(exc)`` is one line; ``exit_code`` is the CLI's (docs/eval.md)."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code


class JudgeConfig(BaseModel):
    """Which judge model to call, where, and how hard to try."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)  # a pinned model id (or the Azure deployment name)
    base_url: str | None = None  # None = OpenAI's API
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1)  # name of the variable, not the key
    azure_endpoint: str | None = None  # set to use Azure OpenAI (with api_version)
    api_version: str | None = None
    # None: not sent (the API's default); the defaults are the built-in protocol's
    temperature: float | None = Field(BUILTIN_TEMPERATURE, ge=0, le=2)
    top_p: float | None = Field(BUILTIN_TOP_P, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)  # None = the endpoint's limit (not sent)
    concurrency: int = Field(4, ge=1, le=64)
    max_attempts: int = Field(5, ge=1)
    timeout: float = Field(60.0, gt=0)  # seconds per request
    backoff: float = Field(1.0, ge=0)  # first retry wait; doubles per attempt, with jitter
    max_wait: float = Field(60.0, ge=0)  # cap on one wait, Retry-After included

    @model_validator(mode="after")
    def _check_azure(self) -> JudgeConfig:
        if self.azure_endpoint and self.base_url:
            raise ValueError("base_url and azure_endpoint are mutually exclusive")
        if self.azure_endpoint and not self.api_version:
            raise ValueError("azure_endpoint needs api_version")
        return self

    def settings(self, prompt: JudgePrompt) -> JudgeSettings:
        """Everything besides the judged content that can change a verdict."""
        return JudgeSettings(
            self.model, self.temperature, self.top_p, self.max_tokens, prompt.version, prompt.hash
        )


def protocol_config(
    protocol: JudgeProtocol,
    model: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    **rest: Any,
) -> JudgeConfig:
    """The settings of a judge run under ``protocol``: the model, temperature and top-p given,
    else the protocol's (where the protocol has ``None`` nothing is sent); ``rest`` as
    :class:`JudgeConfig`. Raises ValueError if neither names a model."""
    model = model or protocol.model
    if not model:
        raise ValueError(f"name the judge model: the {protocol.name} protocol has none")
    return JudgeConfig(
        model=model,
        temperature=protocol.temperature if temperature is None else temperature,
        top_p=protocol.top_p if top_p is None else top_p,
        **rest,
    )


@dataclass(frozen=True)
class JudgeSettings:
    """The settings a verdict was made with: in its cache key and in its record."""

    judge_model: str
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    prompt_version: str
    prompt_hash: str


@dataclass(frozen=True)
class JudgeTask:
    """One (item, dimension) to judge."""

    id: str
    subset: str
    dimension: str
    question: str
    answer: str
    pred: str
    question2: str | None = None
    pred2: str | None = None

    def cache_key(self, settings: JudgeSettings) -> str:
        """``judge-cache/<sha256>.json`` over the judged content and every setting."""
        content: list[Any] = [self.dimension, self.question, self.answer, self.pred]
        content += [self.question2, self.pred2, asdict(settings)]
        digest = hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8"))
        return f"{layout.JUDGE_CACHE_PREFIX}/{digest.hexdigest()}.json"

    def template_values(self) -> dict[str, str]:
        values = {"question": self.question, "answer": self.answer, "pred": self.pred}
        return values | {"question2": self.question2 or "", "pred2": self.pred2 or ""}


@dataclass
class Verdict:
    """One line of ``verdicts.jsonl``."""

    id: str
    subset: str
    dimension: str
    status: str  # "ok" | "failed"
    pred: str | None
    score: int | None
    raw: str | None
    error: str | None
    attempts: int
    cached: bool
    judge_model: str  # as asked
    served_model: str | None  # as the server says it answered (``completion.model``)
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    prompt_version: str
    prompt_hash: str


def tasks_for_run(store: Store, run_id: str) -> list[JudgeTask]:
    """Every (item, dimension) of the run's prediction files, in file order, subsets as
    :data:`layout.DIMENSIONS` lists them."""
    tasks: list[JudgeTask] = []
    for subset, dimensions in layout.DIMENSIONS.items():
        key = layout.predictions_key(run_id, subset)
        if not store.exists(key):
            continue
        for number, row in enumerate(layout.json_lines(store.get(key), key), start=1):
            fields = _line_fields(row, subset, f"{key} line {number}")
            tasks.extend(JudgeTask(subset=subset, dimension=d, **fields) for d in dimensions)
    return tasks


def _line_fields(row: dict[str, Any], subset: str, where: str) -> dict[str, Any]:
    names = ("question", "question2", "answer", "pred", "pred2")
    fields: dict[str, Any] = {"id": _text(row, "id", where)}
    for name, line_key in zip(names, _LINE_KEYS[subset], strict=True):
        fields[name] = _text(row, line_key, where) if line_key else None
    return fields


def _text(row: dict[str, Any], key: str, where: str) -> str:
    if row.get(key) is None:
        raise ValueError(f"{where}: missing {key!r}")
    return str(row[key])


class _Judge:
    """Verdicts for tasks: the verdict cache first, then the model through our retry loop."""

    def __init__(self, store: Store, cfg: JudgeConfig, protocol: JudgeProtocol) -> None:
        self.store, self.cfg, self.prompts = store, cfg, protocol.prompts
        self.parse = REPLY_RULES[protocol.replies]
        self.http_calls = 0
        self._lock = threading.Lock()
        self._client: openai.OpenAI | None = None
        self._redact: Callable[[str], str] = lambda text: text
        self.fatal: JudgeError | None = None  # the refusal that stopped the run
        self._stopped = threading.Event()  # set with ``fatal``; ends every retry wait

    def verdict(self, task: JudgeTask) -> Verdict:
        if self.fatal is not None:
            raise self.fatal
        prompt = self.prompts[task.dimension]
        key = task.cache_key(self.cfg.settings(prompt))
        hit = self._cached(key)
        if hit is not None:
            return self._make(
                task, prompt, "ok", pred=hit.get("pred"), score=hit["score"], raw=hit.get("raw"),
                served_model=hit.get("served_model"), cached=True,
            )  # fmt: skip
        verdict = self._ask(task, prompt)
        if verdict.status == "ok":
            fields = ("dimension", "pred", "score", "raw", "served_model")
            entry = {f: getattr(verdict, f) for f in fields} | asdict(self.cfg.settings(prompt))
            self.store.put(key, json.dumps(entry, ensure_ascii=False).encode("utf-8"))
        return verdict

    def _cached(self, key: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self.store.get(key))
        except KeyError:
            return None
        except ValueError:
            log.warning("ignoring unreadable judge cache entry %s", key)
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("score"), int) else None

    def _make(
        self,
        task: JudgeTask,
        prompt: JudgePrompt,
        status: str,
        *,
        pred: str | None = None,
        score: int | None = None,
        raw: str | None = None,
        error: str | None = None,
        served_model: str | None = None,
        attempts: int = 0,
        cached: bool = False,
    ) -> Verdict:
        return Verdict(
            id=task.id,
            subset=task.subset,
            dimension=task.dimension,
            status=status,
            pred=pred,
            score=score,
            raw=raw,
            error=error,
            attempts=attempts,
            cached=cached,
            served_model=served_model,
            **asdict(self.cfg.settings(prompt)),
        )

    def _ask(self, task: JudgeTask, prompt: JudgePrompt) -> Verdict:
        import openai

        messages = prompt.render(**task.template_values())
        raw: str | None = None
        for attempt in range(1, self.cfg.max_attempts + 1):
            if self.fatal is not None:
                raise self.fatal
            try:
                content, served = self._complete(messages)
                raw = self._redact(content)
                pred, score = self.parse(raw, task.dimension)
                return self._make(
                    task, prompt, "ok", pred=pred, score=score, raw=raw, served_model=served,
                    attempts=attempt,
                )  # fmt: skip
            except (ReplyError, openai.APIError) as exc:
                error, pause = self._failure(exc, attempt)
            if pause is None or attempt == self.cfg.max_attempts:
                break
            log.info("judge %s/%s attempt %d: %s", task.id, task.dimension, attempt, error)
            self._stopped.wait(min(pause, self.cfg.max_wait))
        error = f"{error} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})"
        log.warning("judge %s/%s failed: %s", task.id, task.dimension, error)
        return self._make(task, prompt, "failed", raw=raw, error=error, attempts=attempt)

    def _failure(self, exc: Exception, attempt: int) -> tuple[str, float | None]:
        """Why an attempt failed and how long to wait before the next (None: do not retry).

        Raises :class:`JudgeError` when no request can succeed (key, access or model refused).
        """
        import openai

        if isinstance(exc, ReplyError):
            return self._redact(f"unusable reply: {exc}"), 0.0
        if isinstance(exc, openai.APITimeoutError):
            return f"timed out after {self.cfg.timeout:g} s", self._backoff(attempt)
        if isinstance(exc, openai.APIConnectionError):
            return self._redact(f"connection error: {exc.__cause__ or exc}"), self._backoff(attempt)
        error = self._redact(f"{exc}")
        if not isinstance(exc, openai.APIStatusError):
            return error, self._backoff(attempt)  # e.g. a response body that is not a completion
        code_name = _error_code(exc)
        reason = _FATAL_STATUSES.get(exc.status_code) or (
            _FATAL_CODES.get(code_name) if code_name else None
        )
        if reason:
            code = ExitCode.USAGE if exc.status_code == 404 else ExitCode.ACCESS_DENIED
            fatal = JudgeError(f"the judge endpoint refused the request: {reason} ({error})", code)
            with self._lock:
                self.fatal = self.fatal or fatal
            self._stopped.set()
            raise fatal from None
        if not _retryable(exc.status_code):
            return error, None
        return error, _retry_after(exc.response.headers) or self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return min(self.cfg.max_wait, self.cfg.backoff * 2 ** (attempt - 1)) * random.uniform(
            0.5, 1.0
        )

    def _complete(self, messages: list[dict[str, str]]) -> tuple[str, str | None]:
        """The reply's text and the model that served it."""
        client = self._get_client()
        with self._lock:
            self.http_calls += 1
        sent = {k: getattr(self.cfg, k) for k in ("temperature", "top_p", "max_tokens")}
        response = client.chat.completions.with_raw_response.create(
            model=self.cfg.model,
            messages=messages,  # type: ignore[arg-type]
            **{k: v for k, v in sent.items() if v is not None},  # None: not sent
        )
        return reply_content(response.text)

    def _get_client(self) -> openai.OpenAI:
        with self._lock:
            if self._client is None:
                key = os.environ.get(self.cfg.api_key_env, "").strip()
                if not key:
                    raise JudgeError(f"set the judge's API key in ${self.cfg.api_key_env}")
                self._redact = _redactor(key)
                self._client = make_client(self.cfg, key)
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def reply_content(body: str) -> tuple[str, str | None]:
    """The message text of a chat-completion body and its ``model``; :class:`ReplyError` if the
    body is not a completion (not JSON, no ``choices``, wrong shape) or the text is empty."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ReplyError(f"not JSON: {body[:60]!r}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ReplyError("not a completion: no choices")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise ReplyError("not a completion: no message content")
    if not content.strip():
        raise ReplyError("empty message content")
    model = data.get("model")
    return content, model if isinstance(model, str) else None


def _error_code(exc: openai.APIError) -> str | None:
    return exc.code or exc.type


def make_client(cfg: JudgeConfig, api_key: str) -> openai.OpenAI:
    """An SDK client for ``cfg`` with the SDK's own retries off (our loop retries)."""
    import openai

    common: dict[str, Any] = {"api_key": api_key, "max_retries": 0, "timeout": cfg.timeout}
    if cfg.azure_endpoint:
        return openai.AzureOpenAI(
            azure_endpoint=cfg.azure_endpoint, api_version=cfg.api_version, **common
        )
    return openai.OpenAI(base_url=cfg.base_url or OPENAI_BASE_URL, **common)


def _redactor(secret: str) -> Callable[[str], str]:
    return lambda text: text.replace(secret, "***")


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After``), if any."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    return None


def judge_run(
    store: Store, run_id: str, cfg: JudgeConfig, protocol: JudgeProtocol | None = None
) -> dict[str, Any]:
    """Judge every prediction of the run; write ``verdicts.jsonl`` and ``judge.json``.

    Returns the ``judge.json`` content. Raises :class:`JudgeError` if the endpoint refuses the
    key or model (verdicts obtained so far stay cached) and ValueError if the run has no
    predictions.
    """
    protocol = builtin_protocol() if protocol is None else protocol
    tasks = tasks_for_run(store, run_id)
    if not tasks:
        raise ValueError(f"no predictions under {layout.run_key(run_id, 'predictions/')}")
    judge = _Judge(store, cfg, protocol)
    try:
        verdicts = _judge_all(judge, tasks, cfg.concurrency)
    finally:
        judge.close()
    lines = "".join(json.dumps(asdict(v), ensure_ascii=False) + "\n" for v in verdicts)
    store.put(layout.run_key(run_id, "verdicts.jsonl"), lines.encode("utf-8"))
    summary = summarize(verdicts, cfg, protocol, judge.http_calls)
    store.put(layout.run_key(run_id, "judge.json"), json.dumps(summary, indent=2).encode("utf-8"))
    failed = sum(v.status == "failed" for v in verdicts)
    cached = sum(v.cached for v in verdicts)
    log.info(
        "judged %s: %d verdicts (%d failed, %d cached), %d HTTP calls",
        *(run_id, len(verdicts), failed, cached, judge.http_calls),
    )
    return summary


def _judge_all(judge: _Judge, tasks: list[JudgeTask], concurrency: int) -> list[Verdict]:
    """Verdicts in task order, at most ``concurrency`` tasks at a time; the first error (a
    refusal first of all) stops the rest and is raised."""
    with ThreadPoolExecutor(concurrency, thread_name_prefix="judge") as pool:
        futures = [pool.submit(judge.verdict, task) for task in tasks]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [future for future in done if future.exception() is not None]
        if errors:
            for future in pending:
                future.cancel()
            if judge.fatal is not None:
                raise judge.fatal
            errors[0].result()  # raises
    return [future.result() for future in futures]


def summarize(
    verdicts: list[Verdict], cfg: JudgeConfig, protocol: JudgeProtocol, http_calls: int
) -> dict[str, Any]:
    """The ``judge.json`` content: per dimension, ``judged`` counts successful verdicts and
    ``failed`` the others; accuracy (``qa`` only) and mean score use successful ones only."""
    dimensions: dict[str, dict[str, Any]] = {}
    for dim in dict.fromkeys(v.dimension for v in verdicts):
        ok = [v for v in verdicts if v.dimension == dim and v.status == "ok"]
        yes = sum(v.pred == "yes" for v in ok)
        no = sum(v.pred == "no" for v in ok)
        dimensions[dim] = {
            "judged": len(ok),
            "failed": sum(v.dimension == dim and v.status == "failed" for v in verdicts),
            "yes": yes,
            "no": no,
            "accuracy": yes / (yes + no) if dim == QA_DIMENSION and yes + no else None,
            "mean_score": sum(v.score or 0 for v in ok) / len(ok) if ok else None,
        }
    prompts = protocol.prompts
    settings = {
        "judge_model": cfg.model,
        **cfg.model_dump(include={"temperature", "top_p", "max_tokens"}),
    }
    return {
        "dimensions": dimensions,
        "protocol": protocol_record(protocol, settings),
        "judge_model": cfg.model,
        "prompt_hashes": {dim: prompts[dim].hash for dim in dimensions},
        "prompt_versions": {dim: prompts[dim].version for dim in dimensions},
        "prompt_source": prompts.source,
        "reference_consistency_bug": prompts.reference_consistency_bug,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_tokens": cfg.max_tokens,
        "served_models": sorted({v.served_model for v in verdicts if v.served_model}),
        "http_calls": http_calls,
    }
