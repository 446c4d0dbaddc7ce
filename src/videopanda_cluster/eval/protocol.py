"""Judge protocols: the prompts, model, sampling settings, consistency input and reply rule of a
judge run, and how far they are from the reference's (the paper's) protocol.

- ``builtin``: our wording (:mod:`.prompts`), the model the user names, temperature 0 and top-p 1
  sent, the real second question in the consistency prompt, our reply rule (:mod:`.replies`).
- ``reference``: read by :func:`import_reference` from the user's checkout of the reference
  repository. The judge prompts are parsed out of its evaluation scripts (never copied into this
  project, which ships only their SHA-256, :data:`REFERENCE_PROMPT_HASHES`), with the model and
  temperature the scripts pass (``gpt-3.5-turbo``, none: the API's default), Q1 shown twice in
  the consistency prompt (the script reads question 2 from ``Q1``, spec §6.2) and the scripts'
  reply rule. It is stored by name in the run's store (``judge-protocols/<name>.json``).

A run's ``judge.json`` records its protocol (:func:`protocol_record`); the report lists every
difference from the reference (:func:`differences_from_reference`) and calls the paper
comparison comparable only when there is none and the run covers the whole split.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..storage.base import Store
from .prompts import (
    ALL_DIMENSIONS,
    CONSISTENCY_DIMENSION,
    JudgePrompt,
    PromptSet,
    builtin_prompts,
    has_placeholder,
    missing_fields,
)
from .replies import REPLY_RULES

BUILTIN = "builtin"
REFERENCE = "reference"
PROTOCOLS_PREFIX = "judge-protocols"
REFERENCE_MODEL = "gpt-3.5-turbo"
BUILTIN_TEMPERATURE, BUILTIN_TOP_P = 0.0, 1.0  # what the built-in protocol sends
# Per dimension, where its judge script lives in a checkout: the Video-Panda repository's
# layout first, then Video-ChatGPT's, from which those scripts were copied (spec §6).
REFERENCE_SCRIPTS: dict[str, tuple[str, ...]] = {
    "qa": (
        "videopanda/eval/video/eval_video_qa.py",
        "quantitative_evaluation/evaluate_activitynet_qa.py",
    ),
    "correctness": (
        "videopanda/eval/video/eval_benchmark_1_correctness.py",
        "quantitative_evaluation/evaluate_benchmark_1_correctness.py",
    ),
    "detail": (
        "videopanda/eval/video/eval_benchmark_2_detailed_orientation.py",
        "quantitative_evaluation/evaluate_benchmark_2_detailed_orientation.py",
    ),
    "context": (
        "videopanda/eval/video/eval_benchmark_3_context.py",
        "quantitative_evaluation/evaluate_benchmark_3_context.py",
    ),
    "temporal": (
        "videopanda/eval/video/eval_benchmark_4_temporal.py",
        "quantitative_evaluation/evaluate_benchmark_4_temporal.py",
    ),
    "consistency": (
        "videopanda/eval/video/eval_benchmark_5_consistency.py",
        "quantitative_evaluation/evaluate_benchmark_5_consistency.py",
    ),
}
# SHA-256 (JudgePrompt.hash: system message and user template, placeholders in our names) of
# each reference prompt, as parsed from jh-yi/Video-Panda at 995a7371c8e3 (mbzuai-oryx/
# Video-ChatGPT's scripts give the same six; its consistency script reads Q2, docs/eval.md).
REFERENCE_PROMPT_HASHES: dict[str, str] = {
    "qa": "56f7446988b916295dc8132daa41487763a5d1e118c83d0ba1b9bc9c4e2737ad",
    "correctness": "ebb6cc610898225f91515eba25ba943a050a1fcbd5756bb15083991d22a5c993",
    "detail": "7aa760a7936816ea4902847f295d887121e7f5d09dd1869f4b849a4cdc1296f2",
    "context": "7e71ce52814e7bd09a0fd6ca116c3509f1be4ad5dc5f5c52ac78968dd0d99910",
    "temporal": "45417b34f9fcc9482ef313df036ec86c79ebff6be7c1455f11f97c5956d824d8",
    "consistency": "4e7cbcd2f06dbd3fac7bfeaf5efd7f6017138ca0f340a438ca939310fcc9018a",
}
# The scripts' f-string variables → our template fields.
_VARIABLES = {
    "question": "question",
    "question1": "question",
    "question2": "question2",
    "answer": "answer",
    "pred": "pred",
    "pred1": "pred",
    "pred2": "pred2",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_FORMAT = 1


class ProtocolError(ValueError):
    """A reference checkout that cannot be imported, or a stored protocol that cannot be used."""


@dataclass(frozen=True)
class JudgeProtocol:
    """What a judge protocol fixes: prompts and reply rule, and the settings it sends unless
    the user overrides them (``None``: not sent, the API's default applies)."""

    name: str
    prompts: PromptSet
    model: str | None = None  # None: the user must name one
    temperature: float | None = BUILTIN_TEMPERATURE
    top_p: float | None = BUILTIN_TOP_P
    replies: str = BUILTIN  # a key of replies.REPLY_RULES
    source: Mapping[str, Any] = field(default_factory=dict)  # where an import came from

    def __post_init__(self) -> None:
        if self.replies not in REPLY_RULES:
            raise ProtocolError(f"unknown reply rule {self.replies!r} (known: {list(REPLY_RULES)})")

    def template_hashes(self) -> dict[str, str]:
        """Per dimension, the hash of the prompt as written (before the consistency input is
        applied), the one :data:`REFERENCE_PROMPT_HASHES` holds."""
        return {dim: prompt.hash for dim, prompt in self.prompts.prompts.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "name": self.name,
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "replies": self.replies,
            "consistency_shows_q1_twice": self.prompts.reference_consistency_bug,
            "prompts": {
                dim: {"version": p.version, "system": p.system, "user": p.user, "sha256": p.hash}
                for dim, p in self.prompts.prompts.items()
            },
            "source": dict(self.source),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> JudgeProtocol:
        try:
            if data["format"] != _FORMAT:
                raise ProtocolError(f"{where}: unknown protocol format {data['format']!r}")
            prompts = {}
            for dim, p in data["prompts"].items():
                prompt = JudgePrompt(dim, p["version"], p["system"], p["user"])
                if prompt.hash != p["sha256"]:
                    raise ProtocolError(f"{where}: the {dim} prompt was edited after its import")
                prompts[dim] = prompt
            prompt_set = PromptSet(prompts, where, bool(data["consistency_shows_q1_twice"]))
            return cls(
                str(data["name"]), prompt_set, data["model"], data["temperature"],
                data["top_p"], str(data["replies"]), dict(data["source"]),
            )  # fmt: skip
        except (KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"{where}: not a judge protocol ({exc!r})") from None


def builtin_protocol(*, reference_consistency_bug: bool = False) -> JudgeProtocol:
    """Our prompts, temperature 0 and top-p 1; the model is the user's to name."""
    return JudgeProtocol(
        BUILTIN, builtin_prompts(reference_consistency_bug=reference_consistency_bug)
    )


def custom_protocol(prompts: PromptSet) -> JudgeProtocol:
    """A prompt file's prompts, otherwise as the built-in protocol."""
    return JudgeProtocol(f"file:{Path(prompts.source).name}", prompts)


# ------------------------------------------------------------------------------- import


@dataclass(frozen=True)
class _Script:
    prompt: JudgePrompt
    model: str
    temperature: float | None
    top_p: float | None
    question2_from: str | None  # the prediction key question 2 is read from (consistency)


def import_reference(
    repo: str | Path,
    *,
    name: str = REFERENCE,
    allow_modified: bool = False,
    expected: Mapping[str, str] | None = None,
) -> JudgeProtocol:
    """The judge protocol of a reference checkout's evaluation scripts.

    ``expected`` (default :data:`REFERENCE_PROMPT_HASHES`) holds each prompt's SHA-256; a
    checkout whose prompts differ is refused, naming them, unless ``allow_modified`` (the
    protocol then records which differ, and reports call it not comparable). Raises
    :class:`ProtocolError`."""
    repo = Path(repo)
    expected = REFERENCE_PROMPT_HASHES if expected is None else expected
    check_name(name)
    if not repo.is_dir():
        raise ProtocolError(f"{repo}: not a directory (give the reference repository's checkout)")
    files = {dim: _script_path(repo, dim) for dim in ALL_DIMENSIONS}
    scripts = {dim: _parse_script(repo / rel, dim) for dim, rel in files.items()}
    settings = {(s.model, s.temperature, s.top_p) for s in scripts.values()}
    if len(settings) > 1:
        raise ProtocolError(f"{repo}: the scripts ask for different judge settings: {settings}")
    (model, temperature, top_p), = settings  # fmt: skip
    question2 = scripts[CONSISTENCY_DIMENSION].question2_from
    if question2 not in ("Q1", "Q2"):
        raise ProtocolError(
            f"{repo / files[CONSISTENCY_DIMENSION]}: cannot tell where question 2 is read from "
            "(no `question2 = sample['Q1' or 'Q2']`)"
        )
    modified = [dim for dim in ALL_DIMENSIONS if scripts[dim].prompt.hash != expected.get(dim)]
    if modified and not allow_modified:
        listed = ", ".join(f"{dim} ({files[dim]})" for dim in modified)
        raise ProtocolError(
            f"{repo}: the judge prompts of {listed} differ from the reference's (SHA-256); "
            "pass --allow-modified to import them anyway"
        )
    source = {
        "repository": str(repo.resolve()),
        "commit": _git_head(repo),
        "files": files,
        "modified": modified,
    }
    prompts = PromptSet(
        {dim: s.prompt for dim, s in scripts.items()}, f"{REFERENCE}:{repo}", question2 == "Q1"
    )
    return JudgeProtocol(name, prompts, model, temperature, top_p, REFERENCE, source)


def _script_path(repo: Path, dimension: str) -> str:
    for rel in REFERENCE_SCRIPTS[dimension]:
        if (repo / rel).is_file():
            return rel
    tried = " or ".join(REFERENCE_SCRIPTS[dimension])
    raise ProtocolError(f"{repo}: no judge script for {dimension} ({tried})")


def _parse_script(path: Path, dimension: str) -> _Script:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{path}: not readable Python ({exc})") from None
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_chat_create(n.func)]
    if len(calls) != 1:
        raise ProtocolError(f"{path}: expected one chat-completion call, found {len(calls)}")
    keywords = {k.arg: k.value for k in calls[0].keywords if k.arg}
    if "messages" not in keywords or "model" not in keywords:
        raise ProtocolError(f"{path}: the chat-completion call passes no model or messages")
    system, user = _messages(keywords["messages"], path)
    if has_placeholder(system):
        raise ProtocolError(f"{path}: the system message holds a {{field}} placeholder's text")
    missing = missing_fields(dimension, user)
    if missing:
        raise ProtocolError(f"{path}: the user message lacks {sorted(missing)}")
    return _Script(
        JudgePrompt(dimension, REFERENCE, system, user),
        _literal(keywords["model"], str, path, "model"),
        _number(keywords.get("temperature"), path, "temperature"),
        _number(keywords.get("top_p"), path, "top_p"),
        _question2_source(tree),
    )


def _is_chat_create(func: ast.expr) -> bool:
    """``openai.ChatCompletion.create`` (openai 0.x) or ``client.chat.completions.create``."""
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "create"
        and isinstance(func.value, ast.Attribute)
        and func.value.attr in ("ChatCompletion", "completions")
    )


def _messages(node: ast.expr, path: Path) -> tuple[str, str]:
    """The system text and user template of a ``[{"role": ..., "content": ...}, ...]`` list."""
    if not isinstance(node, ast.List) or len(node.elts) != 2:
        raise ProtocolError(f"{path}: messages is not a list of a system and a user message")
    found = []
    for element, role in zip(node.elts, ("system", "user"), strict=True):
        if not isinstance(element, ast.Dict):
            raise ProtocolError(f"{path}: a message is not a dict literal")
        entries = {
            k.value: v for k, v in zip(element.keys, element.values, strict=True)
            if isinstance(k, ast.Constant)
        }  # fmt: skip
        if _literal(entries.get("role"), str, path, "role") != role or "content" not in entries:
            raise ProtocolError(f"{path}: expected the {role} message with its content")
        found.append(_template(entries["content"], path))
    return found[0], found[1]


def _template(node: ast.expr, path: Path) -> str:
    """A string literal or f-string as our template: its variables become ``{field}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        raise ProtocolError(f"{path}: a message content is not a string literal")
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            if has_placeholder(value.value):
                raise ProtocolError(f"{path}: literal text {value.value!r} reads as a placeholder")
            parts.append(value.value)
        elif (
            isinstance(value, ast.FormattedValue)
            and isinstance(value.value, ast.Name)
            and value.value.id in _VARIABLES
            and value.conversion == -1
            and value.format_spec is None
        ):
            parts.append("{" + _VARIABLES[value.value.id] + "}")
        else:
            raise ProtocolError(
                f"{path}: unsupported f-string field {ast.unparse(value)!r} "
                f"(known variables: {', '.join(_VARIABLES)})"
            )
    return "".join(parts)


def _literal(node: ast.expr | None, kind: type, path: Path, what: str) -> Any:
    if not isinstance(node, ast.Constant) or not isinstance(node.value, kind):
        raise ProtocolError(f"{path}: {what} is not a {kind.__name__} literal")
    return node.value


def _number(node: ast.expr | None, path: Path, what: str) -> float | None:
    if node is None:
        return None
    if not isinstance(node, ast.Constant) or not isinstance(node.value, (int, float)):
        raise ProtocolError(f"{path}: {what} is not a number literal")
    return float(node.value)


def _question2_source(tree: ast.Module) -> str | None:
    """The prediction key (``Q1`` or ``Q2``) of ``question2 = sample['...']``, if any."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "question2" for t in node.targets)
            and isinstance(node.value, ast.Subscript)
            and isinstance(node.value.slice, ast.Constant)
            and node.value.slice.value in ("Q1", "Q2")
        ):
            return str(node.value.slice.value)
    return None


def _git_head(repo: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


# ------------------------------------------------------------------------------- storage


def check_name(name: str) -> None:
    if name == BUILTIN or not _NAME.match(name):
        raise ProtocolError(
            f"protocol name {name!r}: use lowercase letters, digits, '.', '_' or '-' "
            f"(and not {BUILTIN!r})"
        )


def protocol_key(name: str) -> str:
    return f"{PROTOCOLS_PREFIX}/{name}.json"


def save_protocol(store: Store, protocol: JudgeProtocol) -> str:
    """Store ``protocol`` under its name; returns the key."""
    check_name(protocol.name)
    key = protocol_key(protocol.name)
    store.put(key, json.dumps(protocol.to_json(), indent=1, ensure_ascii=False).encode("utf-8"))
    return key


def load_protocol(store: Store, name: str) -> JudgeProtocol:
    """``builtin``, or a protocol stored by :func:`save_protocol`."""
    if name == BUILTIN:
        return builtin_protocol()
    check_name(name)
    key = protocol_key(name)
    if not store.exists(key):
        raise ProtocolError(
            f"no judge protocol {name!r} in the store ({key}); import it first with "
            "`videopanda eval protocol import PATH_TO_REFERENCE_REPO`"
        )
    try:
        data = json.loads(store.get(key))
    except ValueError as exc:
        raise ProtocolError(f"{key}: not JSON ({exc})") from None
    return JudgeProtocol.from_json(data, key)


# ------------------------------------------------------------------------------- comparison


def protocol_record(protocol: JudgeProtocol, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The ``protocol`` entry of ``judge.json``: the protocol and the settings sent
    (``settings``: ``judge_model``, ``temperature``, ``top_p``, ``max_tokens``)."""
    hashes = protocol.template_hashes()
    return {
        "name": protocol.name,
        "prompt_source": protocol.prompts.source,
        "template_hashes": hashes,
        "reference_prompts": {d: h == REFERENCE_PROMPT_HASHES.get(d) for d, h in hashes.items()},
        "consistency": "Q1 twice" if protocol.prompts.reference_consistency_bug else "Q1 and Q2",
        "replies": protocol.replies,
        "source": dict(protocol.source),
        **{k: settings[k] for k in ("judge_model", "temperature", "top_p", "max_tokens")},
    }


def differences_from_reference(
    record: Mapping[str, Any] | None, dimensions: Iterable[str]
) -> list[str]:
    """Each way the judging recorded in ``record`` differs from the reference protocol, for the
    judged ``dimensions`` (empty: the same protocol)."""
    if record is None:
        return ["the judge protocol is not recorded (judged by an earlier version)"]
    dimensions = list(dimensions)
    out = []
    other = [
        d for d in dimensions if record["template_hashes"].get(d) != REFERENCE_PROMPT_HASHES[d]
    ]
    if other:
        out.append(
            f"judge prompts of {', '.join(other)}: {record['name']} wording, not the reference's"
        )
    if record["judge_model"] != REFERENCE_MODEL:
        out.append(f"judge model {record['judge_model']} (reference: {REFERENCE_MODEL})")
    for setting in ("temperature", "top_p", "max_tokens"):
        if record[setting] is not None:
            out.append(f"{setting} {record[setting]:g} sent (reference: none, the API's default)")
    if CONSISTENCY_DIMENSION in dimensions and record["consistency"] != "Q1 twice":
        out.append("the consistency prompt shows Q1 and Q2 (reference: Q1 twice)")
    if record["replies"] != REFERENCE:
        out.append(f"replies read by the {record['replies']} rule (reference: the whole reply "
                   "as a Python literal)")  # fmt: skip
    return out
