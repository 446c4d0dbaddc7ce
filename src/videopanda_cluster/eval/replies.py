"""Reading a verdict out of a judge reply: our rule and the reference scripts' rule.

Each judge protocol names its rule (:data:`REPLY_RULES`). Both return ``(pred, score)``: ``pred``
is "yes", "no" or ``None`` (the ``qa`` dimension's yes/no; ``None`` for the other dimensions),
``score`` an int. A reply that holds no verdict raises :class:`ReplyError`, which the judge treats
as a failed attempt (retried, then recorded as ``failed``). Where the two rules differ
(docs/eval.md, "Reading replies"):

========================  ==============================  ======================================
reply                     ``builtin``                     ``reference``
========================  ==============================  ======================================
prose around the dict     the first dict literal counts   unusable (the whole reply is read with
                                                          ``ast.literal_eval``)
score ``'4'``             4                               4 (``int('4')``)
score ``'4.8'``           4                               ``qa``: 0, and neither yes nor no (the
                                                          reference's averaging catches the error
                                                          and counts the item); other dimensions:
                                                          unusable (the reference's averaging
                                                          stops there)
score 7 or -1             unusable (outside 0..5)         7 or -1
score ``True``            unusable                        1
``qa`` without a yes/no   unusable                        its score counts, neither yes nor no
========================  ==============================  ======================================
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any

from .prompts import QA_DIMENSION

_MAX_REPLY_SCAN = 4000  # characters of a reply searched for the verdict dict
_DICT = re.compile(r"\{[^{}]*\}")
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


class ReplyError(ValueError):
    """A judge reply that holds no valid verdict."""


def parse_reply(text: str, dimension: str) -> tuple[str | None, int]:
    """Our rule: ``(pred, score)`` from a reply such as ``{'pred': 'yes', 'score': 4}``.

    The first dict literal in the text counts (surrounding prose and code fences are ignored);
    it is read with :func:`ast.literal_eval`. ``score`` must be a number from 0 to 5 and is
    truncated with ``int()`` as the reference's averaging does (4.8 -> 4). For ``qa``, ``pred``
    is "yes" if it contains "yes", else "no" if it contains "no" (the reference's rule); other
    dimensions ignore it and give ``None``. Raises :class:`ReplyError`.
    """
    reply = _first_dict(text)
    if "score" not in reply:
        raise ReplyError("no 'score' key in the reply")
    score = _score(reply["score"])
    if dimension != QA_DIMENSION:
        return None, score
    if not isinstance(reply.get("pred"), str):
        raise ReplyError("no 'pred' string in the reply")
    pred = _yes_no(reply["pred"])
    if pred is None:
        raise ReplyError(f"'pred' is neither yes nor no: {reply['pred'][:40]!r}")
    return pred, score


def parse_reply_as_reference(text: str, dimension: str) -> tuple[str | None, int]:
    """The reference scripts' rule (spec §6.1-6.2): the whole reply through
    :func:`ast.literal_eval`, the score through ``int()``, yes/no by substring; see the module
    docstring for where it differs from :func:`parse_reply`. Raises :class:`ReplyError` where
    the reference saves no verdict (retrying the item) or its averaging stops."""
    try:
        reply = ast.literal_eval(text)
    except _LITERAL_ERRORS:
        raise ReplyError("the reply as a whole is not a Python literal") from None
    if not isinstance(reply, dict):
        raise ReplyError(f"the reply is a {type(reply).__name__}, not a dict")
    try:
        score = int(reply["score"])
    except (KeyError, TypeError, ValueError):
        if dimension != QA_DIMENSION:
            raise ReplyError(f"score {str(reply.get('score'))[:40]!r} is not an integer") from None
        return None, 0  # the QA averaging counts the item with nothing added to the sum
    if dimension != QA_DIMENSION:
        return None, score
    pred = reply.get("pred")
    return (_yes_no(pred) if isinstance(pred, str) else None), score


def _yes_no(pred: str) -> str | None:
    lowered = pred.lower()
    return "yes" if "yes" in lowered else "no" if "no" in lowered else None


def _first_dict(text: str) -> dict[Any, Any]:
    for match in _DICT.finditer(text[:_MAX_REPLY_SCAN]):
        try:
            value = ast.literal_eval(match.group())
        except _LITERAL_ERRORS:
            continue
        if isinstance(value, dict):
            return value
    raise ReplyError("no dict literal in the reply")


def _score(value: Any) -> int:
    if isinstance(value, bool):
        raise ReplyError(f"score is not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ReplyError(f"score is not a number: {str(value)[:40]!r}") from None
    if not 0 <= number <= 5:
        raise ReplyError(f"score {number:g} is outside 0..5")
    return int(number)


ReplyRule = Callable[[str, str], tuple[str | None, int]]
REPLY_RULES: dict[str, ReplyRule] = {  # a protocol's ``replies`` → how its replies are read
    "builtin": parse_reply,
    "reference": parse_reply_as_reference,
}
