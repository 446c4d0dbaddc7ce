"""The demo's corpus (deterministic, read by the jobs, ground truth of the model's own world) and
its accuracy line computed from result rows."""

from __future__ import annotations

import json
import re

import av
import pytest
from rich.console import Console

from videopanda_cluster.demo import (
    NO_TRUTH,
    DemoCorpus,
    DemoQuestion,
    DemoVideo,
    demo_tables,
    manifest_path,
    score_demo,
    write_demo,
)
from videopanda_cluster.jobs.inputs import read_inputs
from videopanda_cluster.train.synth import QUESTION_TYPES, SynthOptions, make_video
from videopanda_cluster.video.samples import default_specs


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The default demo corpus written twice, to two folders."""
    roots = [tmp_path_factory.mktemp(f"demo{i}") for i in range(2)]
    return roots, [write_demo(root) for root in roots]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_two_writes_give_the_same_files(written):
    (a, b), (videos_a, videos_b) = written
    assert videos_a == videos_b
    files = _files(a)
    assert files == _files(b)
    assert len([name for name in files if name.startswith("videos/")]) == DemoCorpus().clips


def test_clips_carry_their_own_ground_truth(written):
    _, (videos, _) = written
    corpus = DemoCorpus()
    assert corpus.seed not in (0, 1, 7)  # training, the old held-out corpus, the test corpora
    world = [v for v in videos if v.has_truth]
    assert len(world) == corpus.clips
    for index, video in enumerate(world):
        clip = make_video(video.video_id, corpus.seed, index, SynthOptions())
        assert video.caption == clip.caption
        assert [(q.question, q.answer, q.type) for q in video.questions] == [
            (q["question"], q["answer"], q["type"]) for q in clip.questions
        ]
    # the seed's clips ask every question type and show one, two and three shapes
    assert {q.type for v in world for q in v.questions} == set(QUESTION_TYPES)
    counts = {q.answer for v in world for q in v.questions if q.type == "count"}
    assert counts == {"one", "two", "three"}


def test_odd_files_are_the_chosen_samples_with_generic_questions(written):
    (root, _), (videos, _) = written
    corpus = DemoCorpus()
    odd = [v for v in videos if not v.has_truth]
    encodable = []
    for spec in default_specs():
        if spec.filename in corpus.samples:
            try:
                av.codec.Codec(spec.codec, "w")
            except Exception:
                continue
            encodable.append(spec.filename)
    assert [v.uri.rsplit("/", 1)[1] for v in odd] == encodable
    assert len(odd) >= 3 and {u.rsplit(".", 1)[1] for u in encodable} >= {"mp4", "mkv"}
    for video in odd:
        assert (root / video.uri).stat().st_size > 0
        assert [q.question for q in video.questions] == list(corpus.questions)
        assert all(q.answer is None for q in video.questions)


def test_the_jobs_read_the_manifest(written):
    (root, _), (videos, _) = written
    items = read_inputs(str(manifest_path(root)))
    assert [(i.video_id, i.uri) for i in items] == [(v.video_id, str(root / v.uri)) for v in videos]
    for item, video in zip(items, videos, strict=True):
        assert [(q.question_id, q.text) for q in item.questions] == [
            (q.question_id, q.question) for q in video.questions
        ]
    first = json.loads(manifest_path(root).read_text().splitlines()[0])
    assert first["caption"] == videos[0].caption
    assert first["questions"][0]["answer"] == videos[0].questions[0].answer


def test_an_unknown_sample_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"no sample file named nope\.mp4"):
        write_demo(tmp_path, DemoCorpus(clips=1, samples=("nope.mp4",)))


# --- scoring -------------------------------------------------------------------------------------

CLIP = DemoVideo(
    "clip_00",
    "videos/clip_00.mp4",
    (
        DemoQuestion("clip_00#colour", "What colour is the square?", "red", "colour"),
        DemoQuestion("clip_00#direction", "Which way does the square move?", "left", "direction"),
        DemoQuestion("clip_00#count", "How many shapes are there?", "two", "count"),
        DemoQuestion(
            "clip_00#absent", "What colour is the circle?", "there is no circle", "absent"
        ),
    ),
    "A red square moves left and a blue circle stays still.",
)
OTHER = DemoVideo(
    "clip_01",
    "videos/clip_01.mp4",
    (DemoQuestion("clip_01#colour", "What colour is the shape?", "green", "colour"),),
    "A green diamond moves up.",
)
ODD = [
    DemoVideo(name, f"robustness/{name}.mp4", (DemoQuestion(f"{name}#0", "What colour?"),))
    for name in ("rotated", "single")
]


def _row(video, question_id, answer, kind="qa", error=None):
    status = "error" if error else "ok"
    return {
        "kind": kind,
        "video_id": video.video_id,
        "question_id": question_id,
        "answer": None if error else answer,
        "status": status,
        "error": error,
    }


def _caption(video, text, error=None):
    return _row(video, f"{video.video_id}#caption", text, "caption", error)


ROWS = [
    _caption(CLIP, "A red square moves right and a blue circle stays still."),  # 1 of 2 facts
    _row(CLIP, "clip_00#colour", "Red."),  # right after normalisation
    _row(CLIP, "clip_00#direction", "right"),  # wrong
    _row(CLIP, "clip_00#count", None, error="decode_error"),  # an error row is wrong
    # clip_00#absent: no row at all, wrong
    _caption(OTHER, "", error="timeout"),  # no caption: lowers recall only
    _row(OTHER, "clip_01#colour", "the green"),  # right: articles are dropped
    _caption(ODD[0], "A red circle."),
    _row(ODD[0], "rotated#0", "red"),
    _caption(ODD[1], "A blue square."),
    _row(ODD[1], "single#0", None, error="too_short"),
]


def test_score_counts_every_question_of_the_corpus():
    score = score_demo([CLIP, OTHER, *ODD], ROWS)
    assert (score.clips, score.qa_right, score.qa_total) == (2, 2, 5)
    assert (score.captions.predicted, score.captions.true, score.captions.matched) == (2, 3, 1)
    assert (score.files, score.answered) == (2, 1)
    assert score.line() == (
        "accuracy on 2 clips of its world: QA 2/5 (40.0%), caption facts precision 50.0% "
        "recall 33.3%; 2 robustness files: 1 answered, 1 with error rows"
    )


def test_score_without_rows_is_all_wrong_and_says_n_a():
    score = score_demo([CLIP, *ODD], [])
    assert (score.qa_right, score.qa_total, score.answered) == (0, 4, 0)
    assert "QA 0/4 (0.0%), caption facts precision n/a recall 0.0%" in score.line()


def test_tables_mark_answers_against_the_truth():
    rows = [*ROWS, _row(OTHER, "clip_01#colour", "[bold]green[/bold]")]  # replaces the right one
    console = Console(width=200, record=True)
    for table in demo_tables([CLIP, OTHER, *ODD], rows):
        console.print(table)
    text = console.export_text()
    lines = {line.split("│")[1].strip() + "|" + line.split("│")[2].strip(): line
             for line in text.splitlines() if line.count("│") >= 5}  # fmt: skip
    assert "✓" in lines["clip_00|What colour is the square?"]
    assert "✗" in lines["clip_00|Which way does the square move?"]
    assert "(error: decode_error)" in lines["clip_00|How many shapes are there?"]
    assert "(no result row)" in lines["clip_00|What colour is the circle?"]
    assert "1/2 facts" in lines["clip_00|(caption)"]
    assert re.search(r"\[bold\]green\[/bold\].*✗", lines["clip_01|What colour is the shape?"])
    assert NO_TRUTH in lines["rotated|What colour?"] and " ok " in lines["rotated|What colour?"]
    assert "(error: too_short)" in lines["single|What colour?"]
    assert " error " in lines["single|What colour?"]
    assert text.count("✓") == 1
