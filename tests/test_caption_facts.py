"""Caption fact parsing and scoring (``eval/caption_facts.py``), numbers worked out by hand."""

from __future__ import annotations

from collections import Counter

import pytest

from videopanda_cluster.eval.caption_facts import (
    CaptionScore,
    Fact,
    caption_facts_for,
    parse_caption,
    score_caption,
    score_captions,
)
from videopanda_cluster.train.synth import SynthOptions, make_video

TWO = "A red circle moves left and a green triangle stays still."
LATE = "A blue square moves up, then a yellow diamond appears and stays still."
THREE = (
    "A red circle moves left and a green triangle stays still, "
    "then a blue square appears and stays still."
)


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("A red circle moves left.", [("red", "circle", "left")]),
        (TWO, [("red", "circle", "left"), ("green", "triangle", "still")]),
        (LATE, [("blue", "square", "up"), ("yellow", "diamond", "still")]),
        (
            THREE,
            [
                ("red", "circle", "left"),
                ("green", "triangle", "still"),
                ("blue", "square", "still"),
            ],
        ),
    ],
)
def test_grammar_examples(text, facts):
    assert parse_caption(text) == [Fact(*f) for f in facts]


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        # case, punctuation, articles and extra words
        ("a RED Circle MOVES LEFT", [("red", "circle", "left")]),
        (
            "I see the red circle, which slowly moves to the left; the green triangle is still!",
            [("red", "circle", "left"), ("green", "triangle", "still")],
        ),
        # wrong colour: parsed as said
        ("A blue circle moves left.", [("blue", "circle", "left")]),
        # the nearest colour before the kind wins
        ("A red and blue circle moves up.", [("blue", "circle", "up")]),
        # missing motion, missing colour
        ("A red circle.", [("red", "circle", None)]),
        ("A circle moves down.", [(None, "circle", "down")]),
        # a colour belongs to the kind after it, never to a later kind
        (
            "A red circle moves left and a triangle stays still.",
            [("red", "circle", "left"), (None, "triangle", "still")],
        ),
        # nor across a clause mark
        ("Red. A circle moves right.", [(None, "circle", "right")]),
        # a motion word after the next kind belongs to that kind
        (
            "A red circle and a green square moves right.",
            [("red", "circle", None), ("green", "square", "right")],
        ),
        # the first motion word after the kind counts
        ("A green square moves up and down.", [("green", "square", "up")]),
        # duplicated shape
        (
            "A red circle moves left and a red circle moves left.",
            [("red", "circle", "left"), ("red", "circle", "left")],
        ),
        # words that merely contain a vocabulary word do not count
        ("A reddish circles update.", []),
        ("", []),
        ("two", []),
        ("circle", [(None, "circle", None)]),
        ("left", []),
    ],
)
def test_noisy_captions(text, facts):
    assert parse_caption(text) == [Fact(*f) for f in facts]


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="a caption must be a string, got NoneType"):
        parse_caption(None)
    with pytest.raises(ValueError, match="unknown colour 'purple' \\(choose from red, green"):
        Fact("purple", "circle", "left")
    with pytest.raises(ValueError, match="unknown kind None"):
        Fact("red", None, "left")
    with pytest.raises(ValueError, match="unknown motion 'sideways'"):
        Fact("red", "circle", "sideways")


def test_one_pair_by_hand():
    # predicted: red circle left, red circle left (duplicate); true: red circle left, green
    # triangle still. The true red circle is matched once: 1 of 2 predicted, 1 of 2 true.
    score = score_caption("A red circle moves left and a red circle moves left.", TWO)
    assert score == CaptionScore(captions=1, predicted=2, true=2, matched=1)
    assert (score.precision, score.recall) == (0.5, 0.5)


def test_incomplete_facts_never_match():
    # "A circle moves left": colour missing; "a red circle": motion missing. Neither matches
    # the true red circle moving left, even though no other fact competes for it.
    score = score_caption("A circle moves left and a red circle.", "A red circle moves left.")
    assert score == CaptionScore(captions=1, predicted=2, true=1, matched=0)
    assert (score.precision, score.recall) == (0.0, 0.0)
    # a reference fact without motion cannot be matched either
    assert score_caption("A red circle.", "A red circle.").matched == 0


def test_micro_averages_by_hand():
    pairs = [
        # 2 predicted (red circle left ✓, green triangle still ✓), 2 true: matched 2
        (TWO, TWO),
        # 2 predicted (blue square down ✗, yellow diamond still ✓), 2 true: matched 1
        ("A blue square moves down and a yellow diamond stays still.", LATE),
        # no facts: 0 predicted, 3 true (counts against recall only)
        ("two", THREE),
        # 1 predicted (green circle left ✗: wrong colour), 1 true: matched 0
        ("A green circle moves left.", "A red circle moves left."),
    ]
    score = score_captions(pairs)
    assert score == CaptionScore(captions=4, predicted=5, true=8, matched=3)
    assert score.precision == pytest.approx(3 / 5)
    assert score.recall == pytest.approx(3 / 8)
    # micro, not macro: the per-caption mean of recall would be (1 + 1/2 + 0 + 0) / 4 = 3/8 too,
    # but of precision (1 + 1/2 + 0) / 3 = 1/2, not 3/5
    assert score_captions([]) == CaptionScore()
    assert (CaptionScore().precision, CaptionScore().recall) == (None, None)
    only_empty = score_captions([("", TWO)])
    assert (only_empty.precision, only_empty.recall) == (None, 0.0)


def test_reference_caption_gives_every_shape():
    """Parsing a clip's reference caption gives back its shapes, moving one first and a late
    one last."""
    for index in range(40):
        video = make_video(f"v{index}", seed=3, index=index, options=SynthOptions())
        expected = [Fact(s.colour, s.kind, s.motion) for s in video.shapes]
        facts = caption_facts_for(video)
        assert Counter(facts) == Counter(expected), video.caption
        assert facts[0] == expected[0], video.caption
        if video.shapes[-1].appear:
            assert facts[-1] == expected[-1], video.caption
