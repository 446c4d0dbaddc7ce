"""Versioned prompts for the GPT-assisted judge (spec §6).

One prompt per judge dimension: ``qa`` (yes/no plus a 0-5 score, for the open-ended QA
benchmarks) and the five Video-ChatGPT dimensions ``correctness``, ``detail``, ``context``,
``temporal`` (score only) and ``consistency`` (two questions, two predictions, one answer). The
built-in wording is ours; it follows the spec's description of the reference prompts and asks for
the same reply format, a Python dict string. A JSON or YAML file can replace any of them (e.g.
with the reference's exact wording); see :func:`load_prompts`.

User templates name their inputs ``{question}``, ``{answer}``, ``{pred}`` and, for consistency,
``{question2}`` and ``{pred2}``. Only these exact placeholders are filled in; every other brace is
literal text, so dict examples need no escaping. Each prompt's :attr:`JudgePrompt.hash` is the
SHA-256 of its full text (system + user template) and is recorded with every verdict.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

BUILTIN_VERSION = "vpc-judge-1"
QA_DIMENSION = "qa"
SCORE_DIMENSIONS = ("correctness", "detail", "context", "temporal")
CONSISTENCY_DIMENSION = "consistency"
ALL_DIMENSIONS = (QA_DIMENSION, *SCORE_DIMENSIONS, CONSISTENCY_DIMENSION)

_FIELDS = ("question", "question2", "answer", "pred", "pred2")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(_FIELDS) + r")\}")
_REQUIRED = {
    QA_DIMENSION: {"question", "answer", "pred"},
    **{dim: {"question", "answer", "pred"} for dim in SCORE_DIMENSIONS},
    CONSISTENCY_DIMENSION: {"question", "question2", "answer", "pred", "pred2"},
}


@dataclass(frozen=True)
class JudgePrompt:
    """A system message and a user-message template for one dimension."""

    dimension: str
    version: str
    system: str
    user: str

    @property
    def hash(self) -> str:
        """SHA-256 (hex) of the full prompt text: system message and user template."""
        text = json.dumps({"system": self.system, "user": self.user}, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def render(self, **values: str) -> list[dict[str, str]]:
        """The chat messages for one item; ``values`` fill the template's placeholders."""
        user = _PLACEHOLDER.sub(lambda m: values.get(m.group(1)) or "", self.user)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class PromptSet:
    """The prompts of every dimension, plus where they came from.

    With ``reference_consistency_bug`` the consistency prompt shows the first question twice, as
    the reference script does (spec §6.2); its template, and so its hash, change accordingly.
    """

    prompts: Mapping[str, JudgePrompt]
    source: str = "builtin"
    reference_consistency_bug: bool = False
    _applied: Mapping[str, JudgePrompt] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        applied = dict(self.prompts)
        if self.reference_consistency_bug and CONSISTENCY_DIMENSION in applied:
            prompt = applied[CONSISTENCY_DIMENSION]
            applied[CONSISTENCY_DIMENSION] = replace(
                prompt, user=prompt.user.replace("{question2}", "{question}")
            )
        object.__setattr__(self, "_applied", applied)

    def __getitem__(self, dimension: str) -> JudgePrompt:
        try:
            return self._applied[dimension]
        except KeyError:
            raise KeyError(f"no judge prompt for dimension {dimension!r}") from None


_QA_SYSTEM = (
    "You check answers to questions about videos. You are given a question, the correct answer "
    "and a predicted answer. Decide whether the prediction means the same as the correct answer. "
    "Judge the meaning, not the wording: synonyms and paraphrases count as a match, while an "
    "answer that says something different does not."
)
_QA_USER = (
    "Judge the following question-answer pair.\n"
    "Question: {question}\n"
    "Correct answer: {answer}\n"
    "Predicted answer: {pred}\n"
    "Say 'yes' if the predicted answer matches the correct answer and 'no' if it does not, and "
    "give an integer score from 0 to 5, where 5 is the closest match. Reply with a Python "
    "dictionary string only, with the keys 'pred' (the string 'yes' or 'no') and 'score' (the "
    "integer), for example {'pred': 'yes', 'score': 4}. Write nothing else."
)

_SCORE_SYSTEM = (
    "You rate answers that a model gave to questions about videos. You are given a question, the "
    "correct answer and the model's predicted answer, and you rate one aspect of the prediction: "
    "{aspect}"
)
_SCORE_USER = (
    "Rate the following question-answer pair.\n"
    "Question: {question}\n"
    "Correct answer: {answer}\n"
    "Predicted answer: {pred}\n"
    "{criteria} Give an integer score from 0 to 5, where 5 is the best. Reply with a Python "
    "dictionary string only, with the key 'score', for example {'score': 3}. Write nothing else."
)
_SCORE_ASPECTS = {
    "correctness": (
        "its factual accuracy.",
        "Check that the prediction agrees with the correct answer and contains no wrong or "
        "invented information about the video.",
    ),
    "detail": (
        "how detailed and complete it is.",
        "Check that the prediction covers everything the correct answer covers and is specific "
        "rather than vague.",
    ),
    "context": (
        "how well it fits the context of the whole video.",
        "Check that the prediction is in line with the video's overall content, themes and mood "
        "as described by the correct answer, and contains nothing out of place.",
    ),
    "temporal": (
        "whether it gets the order of events right.",
        "Check that the prediction describes the events in the same order as the correct answer "
        "and does not mix up what happened before and after.",
    ),
}

_CONSISTENCY_SYSTEM = (
    "You check whether a model answers consistently. The same fact about a video was asked in "
    "two different wordings. You are given both questions, the correct answer and the model's "
    "two predicted answers. Rate how well the two predictions agree with each other and with "
    "the correct answer; contradictions between them, or with the correct answer, lower the "
    "score."
)
_CONSISTENCY_USER = (
    "Rate the consistency of the following answers.\n"
    "Question 1: {question}\n"
    "Question 2: {question2}\n"
    "Correct answer: {answer}\n"
    "Predicted answer 1: {pred}\n"
    "Predicted answer 2: {pred2}\n"
    "Give an integer score from 0 to 5, where 5 means both predictions agree with each other and "
    "with the correct answer. Reply with a Python dictionary string only, with the key 'score', "
    "for example {'score': 3}. Write nothing else."
)


def missing_fields(dimension: str, user: str) -> set[str]:
    """The placeholders ``dimension``'s user template must have and ``user`` lacks."""
    return _REQUIRED[dimension] - set(_PLACEHOLDER.findall(user))


def has_placeholder(text: str) -> bool:
    """Whether ``text`` holds a placeholder (so it cannot be literal text of a template)."""
    return _PLACEHOLDER.search(text) is not None


def builtin_prompts(*, reference_consistency_bug: bool = False) -> PromptSet:
    """Our own prompts for all six dimensions, version :data:`BUILTIN_VERSION`."""
    prompts = {QA_DIMENSION: JudgePrompt(QA_DIMENSION, BUILTIN_VERSION, _QA_SYSTEM, _QA_USER)}
    for dim, (aspect, criteria) in _SCORE_ASPECTS.items():
        system = _SCORE_SYSTEM.replace("{aspect}", aspect)
        user = _SCORE_USER.replace("{criteria}", criteria)
        prompts[dim] = JudgePrompt(dim, BUILTIN_VERSION, system, user)
    prompts[CONSISTENCY_DIMENSION] = JudgePrompt(
        CONSISTENCY_DIMENSION, BUILTIN_VERSION, _CONSISTENCY_SYSTEM, _CONSISTENCY_USER
    )
    return PromptSet(prompts, "builtin", reference_consistency_bug)


def load_prompts(path: str | Path, *, reference_consistency_bug: bool = False) -> PromptSet:
    """A prompt set from a JSON or YAML file; dimensions it leaves out keep the built-in prompt.

    Format::

        version: my-prompts-1          # default version of the prompts below
        prompts:
          qa: {system: "...", user: "... {question} ... {answer} ... {pred} ..."}
          consistency: {system: "...", user: "...", version: "other-version"}

    Raises ValueError for unknown dimensions, missing fields or missing placeholders.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'prompts' mapping")
    default_version = str(data.get("version") or f"file:{path.name}")
    prompts = dict(builtin_prompts().prompts)
    for dim, entry in data["prompts"].items():
        prompts[dim] = _prompt_from(dim, entry, default_version, path)
    return PromptSet(prompts, str(path), reference_consistency_bug)


def _prompt_from(dim: str, entry: Any, default_version: str, path: Path) -> JudgePrompt:
    if dim not in _REQUIRED:
        raise ValueError(f"{path}: unknown judge dimension {dim!r} (known: {ALL_DIMENSIONS})")
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(key), str) and entry[key].strip() for key in ("system", "user")
    ):
        raise ValueError(f"{path}: prompt {dim!r} needs non-empty 'system' and 'user' strings")
    missing = missing_fields(dim, entry["user"])
    if missing:
        shown = ", ".join("{" + name + "}" for name in sorted(missing))
        raise ValueError(f"{path}: the user template of {dim!r} lacks {shown}")
    version = str(entry.get("version") or default_version)
    return JudgePrompt(dim, version, entry["system"], entry["user"])
