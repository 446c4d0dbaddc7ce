"""Caption fact scoring: a caption of the synthetic corpus parsed back into (colour, kind, motion)
facts and compared with the facts of the reference caption.

The corpus writes one sentence per clip (``train/synth.py``), e.g. "A red circle moves left and a
green triangle stays still, then a blue square appears and stays still." :func:`parse_caption`
reads that grammar and tolerates a model's noise: every mention of a kind is a fact; its colour is
the nearest colour word before it in its clause (after the previous kind), its motion the first
motion word after it before the next kind. A missing colour or motion is ``None``, and such a fact
never matches. :func:`score_captions` compares predicted with true facts as multisets and
micro-averages precision (matched ÷ predicted facts) and recall (matched ÷ true facts).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..train.synth import VOCABULARIES, SynthVideo

COLOURS = VOCABULARIES["colour"]
KINDS = VOCABULARIES["shape"]
STILL = "still"  # the motion of a shape that does not move (synth's Shape.motion)
MOTIONS = (*VOCABULARIES["direction"], STILL)
_TOKENS = re.compile(r"[a-z]+|[,.;:!?]")  # words, and the marks that end a clause
_CLAUSE_END = frozenset(",.;:!?")


@dataclass(frozen=True)
class Fact:
    """One shape of a caption: its colour, kind and motion (``None`` where the caption says none).

    A shape that appears late and stays still has motion ``"still"``.
    """

    colour: str | None
    kind: str
    motion: str | None

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("colour", self.colour, COLOURS),
            ("kind", self.kind, KINDS),
            ("motion", self.motion, MOTIONS),
        ):
            if value not in allowed and not (value is None and name != "kind"):
                raise ValueError(f"unknown {name} {value!r} (choose from {', '.join(allowed)})")

    @property
    def complete(self) -> bool:
        """Whether colour and motion are known; only a complete fact can match."""
        return self.colour is not None and self.motion is not None


def parse_caption(text: str) -> list[Fact]:
    """The facts of ``text``, one per mention of a kind, in order (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a string, got {type(text).__name__}")
    tokens = _TOKENS.findall(text.lower())
    kinds = [i for i, token in enumerate(tokens) if token in KINDS]
    facts = []
    for n, at in enumerate(kinds):
        start = kinds[n - 1] + 1 if n else 0
        stop = kinds[n + 1] if n + 1 < len(kinds) else len(tokens)
        colour = None
        for token in reversed(tokens[start:at]):
            if token in _CLAUSE_END:
                break
            if token in COLOURS:
                colour = token
                break
        motion = next((t for t in tokens[at + 1 : stop] if t in MOTIONS), None)
        facts.append(Fact(colour, tokens[at], motion))
    return facts


def caption_facts_for(video: SynthVideo) -> list[Fact]:
    """The true facts of a synthetic clip: its reference caption, read by :func:`parse_caption`."""
    return parse_caption(video.caption)


@dataclass(frozen=True)
class CaptionScore:
    """Fact counts over some (prediction, reference) caption pairs; they add up."""

    captions: int = 0
    predicted: int = 0  # facts in the predictions
    true: int = 0  # facts in the references
    matched: int = 0  # predicted facts matched to a true fact, each true fact at most once

    def __add__(self, other: CaptionScore) -> CaptionScore:
        return CaptionScore(
            self.captions + other.captions,
            self.predicted + other.predicted,
            self.true + other.true,
            self.matched + other.matched,
        )

    @property
    def precision(self) -> float | None:
        """Matched ÷ predicted facts; ``None`` without predicted facts."""
        return self.matched / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        """Matched ÷ true facts; ``None`` without true facts."""
        return self.matched / self.true if self.true else None


def score_caption(prediction: str, reference: str) -> CaptionScore:
    """The fact counts of one predicted caption against its reference."""
    predicted, true = parse_caption(prediction), parse_caption(reference)
    matched = Counter(f for f in predicted if f.complete) & Counter(f for f in true if f.complete)
    return CaptionScore(1, len(predicted), len(true), sum(matched.values()))


def score_captions(pairs: Iterable[tuple[str, str]]) -> CaptionScore:
    """Micro-averaged fact counts of (prediction, reference) pairs: a prediction without facts
    adds only to the true facts, so it lowers recall and leaves precision alone."""
    return sum((score_caption(p, r) for p, r in pairs), CaptionScore())
