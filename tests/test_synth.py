"""The synthetic video-QA corpus: determinism, splits, answers checked against decoded pixels,
the eval layout read by our benchmark loader, the training JSON format and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from videopanda_cluster.cli import app
from videopanda_cluster.eval.benchmarks import load_benchmark
from videopanda_cluster.jobs.config import JobConfig
from videopanda_cluster.train.synth import (
    CAPTION_PROMPTS,
    SPLITS,
    SYNTH_COLOURS,
    VIDEO_TOKEN,
    Shape,
    SynthOptions,
    SynthVideo,
    caption,
    load_metadata,
    question_types,
    vocabularies,
    write_synth,
)
from videopanda_cluster.video.samples import COLOURS

OPTIONS = SynthOptions(frames=8, width=128, height=96)
VIDEOS = 16


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """Two corpora with seed 5 and one with seed 6."""
    roots = {}
    for label, seed in (("a", 5), ("b", 5), ("c", 6)):
        roots[label] = tmp_path_factory.mktemp(f"synth_{label}")
        write_synth(roots[label], seed, VIDEOS, OPTIONS)
    return roots


@pytest.fixture(scope="module")
def videos(corpora) -> list[tuple[SynthVideo, str]]:
    return load_metadata(corpora["a"])


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _nearest_colour(pixel: np.ndarray) -> str:
    names = vocabularies()["colour"]
    dist = [np.abs(pixel.astype(int) - COLOURS[n]).sum() for n in names]
    return names[int(np.argmin(dist))]


def _colour_centroid(frame: np.ndarray, colour: str) -> np.ndarray | None:
    """Mean (x, y) of the pixels close to ``colour``; None if there are (almost) none."""
    close = np.abs(frame.astype(int) - COLOURS[colour]).sum(axis=2) < 60
    ys, xs = np.nonzero(close)
    return None if len(xs) < 10 else np.array([xs.mean(), ys.mean()])


def _target(video: SynthVideo, question: str):
    """The shape a question names by kind or colour, or the only shape."""
    if len(video.shapes) == 1:
        return video.shapes[0]
    words = question.rstrip("?").split()
    (shape,) = [s for s in video.shapes if s.kind in words or s.colour in words]
    return shape


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_frames(corpora):
    a, b = _files(corpora["a"]), _files(corpora["b"])
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    for path in sorted(corpora["a"].glob("videos/*.mp4")):
        frames_a, frames_b = _decode(path), _decode(corpora["b"] / "videos" / path.name)
        assert len(frames_a) == OPTIONS.frames
        assert all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b, strict=True))


def test_different_seed_differs(corpora):
    meta_a = (corpora["a"] / "metadata.json").read_text()
    meta_c = (corpora["c"] / "metadata.json").read_text()
    assert meta_a != meta_c
    name = "videos/synth_00000.mp4"
    frames_a, frames_c = _decode(corpora["a"] / name), _decode(corpora["c"] / name)
    assert not np.array_equal(frames_a[0], frames_c[0])


# --- splits and counts ---------------------------------------------------------------------------


def test_splits_are_disjoint_and_cover_every_video(corpora, videos):
    by_split = {s: {v.name for v, split in videos if split == s} for s in SPLITS}
    assert sum(len(names) for names in by_split.values()) == VIDEOS
    assert set.union(*by_split.values()) == {v.name for v, _ in videos}
    assert all(by_split[s] for s in SPLITS)
    root = corpora["a"]
    for stage in ("prealign", "finetune"):
        records = json.loads((root / "train" / f"{stage}.json").read_text())
        assert {r["id"] for r in records} == by_split["train"]
    for split in ("val", "test"):
        questions = json.loads((root / f"eval/{split}/MSVD_Zero_Shot_QA/test_q.json").read_text())
        assert {q["video_name"] for q in questions} == by_split[split]
    summary = json.loads((root / "synth.json").read_text())
    assert summary["seed"] == 5
    assert summary["videos"] == {s: len(by_split[s]) for s in SPLITS}
    for split in SPLITS:
        expected: dict[str, int] = {}
        for video, s in videos:
            for qa in video.questions if s == split else ():
                expected[qa["type"]] = expected.get(qa["type"], 0) + 1
        assert summary["question_types"][split] == expected
    assert summary["vocabularies"] == vocabularies()


def test_vocabularies_are_closed_and_small():
    vocab = vocabularies()
    assert set(question_types()) == set(vocab)
    for kind in ("colour", "shape", "direction"):
        assert len(set(vocab[kind])) >= 4  # chance at most 25%


# --- answers -------------------------------------------------------------------------------------


def test_answers_agree_with_metadata(videos):
    vocab = vocabularies()
    for video, _ in videos:
        kinds = {qa["type"]: qa for qa in video.questions}
        assert set(kinds) <= set(question_types())
        assert {"colour", "shape", "direction", "count"} <= set(kinds)
        for qa in video.questions:
            assert qa["answer"] in vocab[qa["type"]], qa
        main = video.shapes[0]
        assert main.motion in vocab["direction"] and main.start != main.end
        assert all(s.motion == "still" and s.start == s.end for s in video.shapes[1:])
        assert kinds["colour"]["answer"] == _target(video, kinds["colour"]["question"]).colour
        assert kinds["shape"]["answer"] == _target(video, kinds["shape"]["question"]).kind
        assert kinds["direction"]["answer"] == main.motion
        assert kinds["count"]["answer"] == vocab["count"][len(video.shapes) - 1]
        if "first" in kinds:
            named = [s for s in video.shapes if s.kind in kinds["first"]["question"]]
            first = min(named, key=lambda s: s.appear)
            assert kinds["first"]["answer"] == first.kind
            assert len({s.appear for s in named}) == 2
        absent = kinds["absent"]  # names a kind or colour no shape of the clip has
        words = set(absent["question"].rstrip("?").split())
        assert not words & {w for s in video.shapes for w in (s.kind, s.colour)}
        named = words & set(vocab["colour"] + vocab["shape"])
        assert len(named) == 1 and absent["answer"].startswith("there is no ")
        assert absent["focus"] in named and absent["focus"] in absent["answer"]


def test_absent_questions_cover_kinds_and_colours(videos):
    questions = [qa["question"] for v, _ in videos for qa in v.questions if qa["type"] == "absent"]
    assert len(questions) == len(videos)
    assert any(q.startswith("What colour is the") for q in questions)
    assert any(q.startswith("What shape is the") for q in questions)


def test_colour_answers_match_decoded_pixels(corpora, videos):
    checked = 0
    for video, _ in videos:
        frames = _decode(corpora["a"] / "videos" / f"{video.name}.mp4")
        last = len(frames) - 1
        for shape in video.shapes:  # every shape shows its colour at its centre
            x, y = (round(c) for c in shape.centre(last, OPTIONS.frames))
            assert _nearest_colour(frames[last][y, x]) == shape.colour, (video.name, shape)
        for qa in video.questions:
            if qa["type"] == "colour":
                shape = _target(video, qa["question"])
                x, y = (round(c) for c in shape.centre(last, OPTIONS.frames))
                assert _nearest_colour(frames[last][y, x]) == qa["answer"]
                checked += 1
    assert checked == len(videos)


def test_direction_answers_match_decoded_motion(corpora, videos):
    steps = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for video, _ in videos:
        frames = _decode(corpora["a"] / "videos" / f"{video.name}.mp4")
        (answer,) = [qa["answer"] for qa in video.questions if qa["type"] == "direction"]
        colour = video.shapes[0].colour
        start, end = _colour_centroid(frames[0], colour), _colour_centroid(frames[-1], colour)
        shift = end - start
        axis = int(np.argmax(np.abs(shift)))
        measured = (np.sign(shift) * (np.arange(2) == axis)).astype(int)
        assert tuple(measured) == steps[answer], (video.name, shift)
        assert abs(shift[axis]) > 10


def test_late_shapes_are_absent_from_the_first_frame(corpora, videos):
    late = [(v, s) for v, _ in videos for s in v.shapes if s.appear > 0]
    assert late, "the fixture should contain a shape that appears partway"
    for video, shape in late:
        frames = _decode(corpora["a"] / "videos" / f"{video.name}.mp4")
        assert _colour_centroid(frames[0], shape.colour) is None
        assert _colour_centroid(frames[shape.appear], shape.colour) is not None


# --- file formats --------------------------------------------------------------------------------


def test_eval_layout_is_read_by_the_benchmark_loader(corpora, videos):
    test_videos = [v for v, split in videos if split == "test"]
    bench = load_benchmark("msvd-qa", corpora["a"] / "eval" / "test")
    assert bench.missing == []
    assert len(bench.items) == sum(len(v.questions) + 1 for v in test_videos)
    expected = {
        f"{v.name}_{qa['type']}": (qa["question"], qa["answer"], qa["type"])
        for v in test_videos
        for qa in v.questions
    }
    expected |= {  # one caption item per clip, with the caption jobs' default prompt
        f"{v.name}_caption": (
            JobConfig.model_fields["caption_prompt"].default,
            v.caption,
            "caption",
        )
        for v in test_videos
    }
    got = {i.id: (i.question, i.answer, i.question_type) for i in bench.items}
    assert got == expected
    assert all(Path(i.uri).is_file() for i in bench.items)


def test_training_json_has_the_reference_fields(corpora, videos):
    root = corpora["a"]
    by_name = {v.name: v for v, _ in videos}
    for stage in ("prealign", "finetune"):
        for record in json.loads((root / "train" / f"{stage}.json").read_text()):
            assert set(record) == {"id", "video", "conversations"}
            assert (root / record["video"]).is_file()
            turns = record["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert turns[0]["value"].startswith(f"{VIDEO_TOKEN}\n")
            assert all(VIDEO_TOKEN not in t["value"] for t in turns[1:])
            video = by_name[record["id"]]
            if stage == "prealign":
                assert len(turns) == 2 and turns[1]["value"] == video.caption


def _pairs(record: dict) -> set[tuple[str, str]]:
    turns = record["conversations"]
    return {
        (q["value"].removeprefix(f"{VIDEO_TOKEN}\n"), a["value"])
        for q, a in zip(turns[::2], turns[1::2], strict=True)
    }


def test_finetune_asks_every_binding_of_a_multi_shape_clip_without_giving_answers_away(
    corpora, videos
):
    by_name = {v.name: v for v, _ in videos}
    records = json.loads((corpora["a"] / "train" / "finetune.json").read_text())
    per_video: dict[str, list[set]] = {}
    for record in records:
        per_video.setdefault(record["id"], []).append(_pairs(record))
    assert any(len(by_name[n].shapes) > 1 for n in per_video)  # the corpus has such clips
    for name, conversations in per_video.items():
        video = by_name[name]
        assert conversations[0] == {(qa["question"], qa["answer"]) for qa in video.questions}
        ((prompt, text),) = conversations.pop()  # the last one captions the clip
        assert prompt in CAPTION_PROMPTS and text == video.caption
        if len(video.shapes) == 1:
            assert len(conversations) == 1
            continue
        if len([s for s in video.shapes if s.appear == 0]) == 2 and video.shapes[-1].appear:
            conversations.pop()  # the other early shape's "first" question (tested below)
        assert len(conversations) == 2 and len(conversations[1]) == 2
        facts = {f"What colour is the {s.kind}?": s.colour for s in video.shapes}
        facts |= {f"What shape is the {s.colour} object?": s.kind for s in video.shapes}
        asked = [q for c in conversations for q, _ in c if q in facts]
        for conversation in conversations:
            assert all(facts.get(q, a) == a for q, a in conversation)  # true of the scene
            answers = {a for q, a in conversation if q in facts}
            for shape in video.shapes:  # never a shape's colour and its kind in one conversation
                assert not {shape.colour, shape.kind} <= answers
        # The two conversations together ask colour and kind of both asked shapes.
        assert len(set(asked)) == 4


def test_finetune_asks_which_appears_first_of_both_early_shapes(corpora, videos):
    """A clip with two early shapes and a late one is asked "first" about each early shape (the
    moving one and the still one) against the late one, each answer true of the scene."""
    by_name = {v.name: v for v, _ in videos}
    records = json.loads((corpora["a"] / "train" / "finetune.json").read_text())
    asked: dict[str, set[tuple[str, str]]] = {}
    for record in records:
        for question, answer in _pairs(record):
            if question.startswith("Which shape appears first"):
                asked.setdefault(record["id"], set()).add((question, answer))
    checked = 0
    for name, pairs in asked.items():
        video = by_name[name]
        early = {s.kind for s in video.shapes if s.appear == 0}
        (late,) = (s.kind for s in video.shapes if s.appear > 0)
        for question, answer in pairs:
            assert answer in early and {answer, late} == set(_options(question))
        assert {a for _, a in pairs} == early
        checked += len(early) == 2
    assert checked  # the fixture has such clips


def _options(question: str) -> list[str]:
    """ "Which shape appears first, the circle or the square?" → ["circle", "square"]."""
    return question.removesuffix("?").split("first, the ")[1].split(" or the ")


def test_captions_name_each_shape_in_order_of_appearance(videos):
    for video, _ in videos:
        main = video.shapes[0]
        text = video.caption
        assert text.startswith(f"A {main.colour} {main.kind} moves {main.motion}")
        assert text.endswith(".") and text.count(".") == 1
        early = [s for s in video.shapes if s.appear == 0]
        early = early[:1] + sorted(early[1:], key=lambda s: SYNTH_COLOURS.index(s.colour))
        late = [s for s in video.shapes if s.appear > 0]
        for shape in early[1:]:
            assert f" and a {shape.colour} {shape.kind} stays still" in text
        for shape in late:
            assert f", then a {shape.colour} {shape.kind} appears and stays still" in text
        positions = [text.index(f"{s.colour} {s.kind}") for s in early + late]
        assert positions == sorted(positions)
    assert any(len(v.shapes) == 3 for v, _ in videos)  # the fixture has three-shape clips


def test_caption_of_a_three_shape_clip_reads_as_the_grammar_says():
    shapes = (
        Shape("circle", "red", 10, (20, 30), (60, 30), "right"),
        Shape("square", "green", 10, (90, 80), (90, 80), "still"),
        Shape("triangle", "blue", 10, (30, 80), (30, 80), "still", appear=5),
    )
    video = SynthVideo("x", OPTIONS, (0, 0, 0), shapes)
    assert caption(video) == (
        "A red circle moves right and a green square stays still, "
        "then a blue triangle appears and stays still."
    )


def test_shapes_that_appear_together_are_named_in_colour_order():
    """The order of two still shapes comes from the clip (their colours), not from the order the
    generator drew them in, which no model can see."""

    def still(kind, colour, x):
        return Shape(kind, colour, 10, (x, 80), (x, 80), "still")

    main = Shape("circle", "yellow", 10, (20, 30), (60, 30), "right")
    drawn = (main, still("square", "blue", 90), still("triangle", "red", 30))
    swapped = (main, drawn[2], drawn[1])
    want = ("A yellow circle moves right and a red triangle stays still and a blue square stays "
            "still.")  # fmt: skip
    assert caption(SynthVideo("x", OPTIONS, (0, 0, 0), drawn)) == want
    assert caption(SynthVideo("x", OPTIONS, (0, 0, 0), swapped)) == want


def test_a_size_range_draws_each_videos_size(tmp_path):
    options = SynthOptions(frames=4, size_range=(96, 640))
    sizes = [options.for_video(3, i) for i in range(60)]
    assert sizes == [options.for_video(3, i) for i in range(60)]  # deterministic
    dims = [(o.width, o.height) for o in sizes]
    assert all(o.size_range is None for o in sizes)
    assert all(96 <= max(d) <= 640 and min(d) >= 64 and d[0] % 2 == d[1] % 2 == 0 for d in dims)
    assert {"landscape", "portrait", "square"} == {
        "square" if w == h else "landscape" if w > h else "portrait" for w, h in dims
    }
    assert max(max(d) for d in dims) > 500 and min(max(d) for d in dims) < 200
    write_synth(tmp_path / "c", 3, 4, options)
    for video, _ in load_metadata(tmp_path / "c"):
        frames = _decode(tmp_path / "c" / "videos" / f"{video.name}.mp4")
        assert frames[0].shape == (video.options.height, video.options.width, 3)
        assert video.options == sizes[int(video.name.split("_")[1])]


# --- errors and CLI ------------------------------------------------------------------------------


def test_refuses_a_non_empty_directory_or_too_few_videos(corpora, tmp_path):
    with pytest.raises(FileExistsError):
        write_synth(corpora["a"], 5, VIDEOS, OPTIONS)
    with pytest.raises(ValueError, match="at least 3 videos"):
        write_synth(tmp_path / "few", 0, 2, OPTIONS)


def test_cli_writes_the_corpus_and_prints_counts(tmp_path):
    root = tmp_path / "cli"
    args = ["synth", str(root), "--seed", "2", "--videos", "5", "--frames", "6", "--size", "96x64"]
    args += ["--radius", "0.15,0.2", "--travel", "0.5,0.9"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((root / "synth.json").read_text())
    assert summary["options"] == {
        "frames": 6,
        "width": 96,
        "height": 64,
        "fps": 8,
        "radius": [0.15, 0.2],
        "travel": [0.5, 0.9],
        "size_range": None,
    }
    shapes = [s for v in json.loads((root / "metadata.json").read_text()) for s in v["shapes"]]
    assert all(int(64 * 0.15) <= s["radius"] <= int(64 * 0.2) for s in shapes)
    assert summary["videos"] == {"train": 3, "val": 1, "test": 1}
    assert "train" in result.output and "colour" in result.output
    assert _decode(root / "videos" / "synth_00004.mp4")[0].shape == (64, 96, 3)
    bad = CliRunner().invoke(app, ["synth", str(tmp_path / "bad"), "--size", "96"])
    assert bad.exit_code != 0
    ranged = tmp_path / "ranged"
    args = ["synth", str(ranged), "--videos", "3", "--frames", "4", "--size-range", "96,200"]
    result = CliRunner().invoke(app, [*args, "--fps", "24"])
    assert result.exit_code == 0, result.output
    summary = json.loads((ranged / "synth.json").read_text())
    assert summary["options"]["size_range"] == [96, 200] and summary["options"]["fps"] == 24


@pytest.mark.parametrize(
    ("field", "value"), [("radius", (0.2, 0.1)), ("radius", (0.01, 0.1)), ("travel", (0.5, 1.5))]
)
def test_bad_shape_ranges_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SynthOptions(**{field: value})


def test_cli_refuses_a_malformed_range(tmp_path):
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--radius", "0.1"])
    assert result.exit_code == 2 and "LO,HI" in result.output
    assert not (tmp_path / "x").exists()
