"""What ``videopanda demo`` runs and how it scores it: clips of the bundled model's own world
(``train/synth.py``, a seed neither training nor the tests use) whose captions and answers are
known, and a few odd sample files (``video/samples.py``) with no ground truth, to show the job
holds up on rotations, VFR, a 1-frame file and other containers.

Layout written by :func:`write_demo` under ``DIR`` (the same files on every run):

- ``videos/<clip>.mp4``: the clips of the model's world;
- ``robustness/<file>`` and its ``manifest.json``: the odd sample files;
- ``demo.jsonl``: the jobs' manifest (``video_id``, ``uri`` relative to DIR, ``questions``),
  with each clip's ground truth alongside: ``caption`` per clip, ``answer`` and ``type`` per
  question (the job reader ignores these keys).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from .eval.caption_facts import CaptionScore, score_caption
from .eval.metrics import exact_match
from .train.synth import SynthOptions, encode_clip, make_video, video_path
from .video.samples import write_corpus

MANIFEST = "demo.jsonl"
ROBUSTNESS_FOLDER = "robustness"
NO_TRUTH = "no ground truth (robustness)"
WORLD_TITLE = "clips of its own world: answers against the ground truth"
ODD_TITLE = "odd sample files: does every row come back (ok or a clean error)?"


@dataclass(frozen=True)
class DemoCorpus:
    """The demo's definition: ``clips`` clips of the synthetic corpus seeded by ``seed`` (training
    uses 0, the small model's test corpora 7) at the generator's default options; the odd
    ``samples`` files, each asked the generic ``questions``; the jobs' token limits."""

    seed: int = 21
    clips: int = 12
    options: SynthOptions = field(default_factory=SynthOptions)
    samples: tuple[str, ...] = (
        "rotated_480x360_30f_25fps_rot270.mp4",
        "vfr_640x480_120f.mkv",
        "single_frame_640x480.mp4",
        "sd_340x256_40f_10fps.webm",
    )
    questions: tuple[str, ...] = ("What colour is the circle?", "Which way does the square move?")
    caption_tokens: int = 48  # the longest reference caption is about 25 tokens
    answer_tokens: int = 16  # "there is no red object" and EOS


@dataclass(frozen=True)
class DemoQuestion:
    """A question of the demo's manifest; ``answer`` is None where there is no ground truth."""

    question_id: str
    question: str
    answer: str | None = None
    type: str | None = None


@dataclass(frozen=True)
class DemoVideo:
    """A video of the demo's manifest; ``caption`` (the reference) is None for an odd file."""

    video_id: str
    uri: str  # relative to the demo directory
    questions: tuple[DemoQuestion, ...]
    caption: str | None = None

    @property
    def has_truth(self) -> bool:
        return self.caption is not None


def manifest_path(directory: Path) -> Path:
    return directory / MANIFEST


def write_demo(directory: Path, corpus: DemoCorpus | None = None) -> list[DemoVideo]:
    """Write the demo's videos and manifest (layout in the module docstring); the clips first."""
    corpus = corpus or DemoCorpus()
    videos = []
    for index in range(corpus.clips):
        clip = make_video(f"clip_{index:02d}", corpus.seed, index, corpus.options)
        encode_clip(directory, clip)
        questions = tuple(
            DemoQuestion(f"{clip.name}#{q['type']}", q["question"], q["answer"], q["type"])
            for q in clip.questions
        )
        videos.append(DemoVideo(clip.name, video_path(clip.name), questions, clip.caption))
    rows = write_corpus(directory / ROBUSTNESS_FOLDER, corpus.seed, names=corpus.samples)
    for row in rows:  # files this build cannot encode are left out
        video_id = Path(row["name"]).stem
        questions = tuple(
            DemoQuestion(f"{video_id}#{i}", text) for i, text in enumerate(corpus.questions)
        )
        videos.append(DemoVideo(video_id, f"{ROBUSTNESS_FOLDER}/{row['name']}", questions))
    lines = (json.dumps(_manifest_record(video)) for video in videos)
    manifest_path(directory).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return videos


def _manifest_record(video: DemoVideo) -> dict[str, Any]:
    record = asdict(video)
    record["questions"] = [
        {k: v for k, v in q.items() if v is not None} for q in record["questions"]
    ]
    if video.caption is None:
        del record["caption"]
    return record


# --- scoring -------------------------------------------------------------------------------------

Row = Mapping[str, Any]  # a result row (cluster.results.ResultRow fields)


@dataclass(frozen=True)
class DemoScore:
    """The demo's accuracy: exact-match QA and caption facts on the clips, and how many odd files
    got every row answered (the rest have error rows, or rows missing)."""

    clips: int
    qa_right: int
    qa_total: int
    captions: CaptionScore
    files: int
    answered: int

    def line(self) -> str:
        """The one line the demo ends with."""
        qa = f"{self.qa_right}/{self.qa_total} ({_percent(self.qa_right / self.qa_total)})"
        facts = (
            f"precision {_percent(self.captions.precision)} recall {_percent(self.captions.recall)}"
        )
        return (
            f"accuracy on {self.clips} clips of its world: QA {qa}, caption facts {facts}; "
            f"{self.files} robustness files: {self.answered} answered, "
            f"{self.files - self.answered} with error rows"
        )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


class _Answers:
    """The result rows of the caption and QA jobs, by video and question."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self.captions: dict[str, Row] = {}
        self.answers: dict[tuple[str, str], Row] = {}
        for row in rows:
            if row.get("kind") == "caption":
                self.captions[str(row["video_id"])] = row
            else:
                self.answers[(str(row["video_id"]), str(row["question_id"]))] = row

    def caption(self, video: DemoVideo) -> Row | None:
        return self.captions.get(video.video_id)

    def answer(self, video: DemoVideo, question: DemoQuestion) -> Row | None:
        return self.answers.get((video.video_id, question.question_id))

    def rows(self, video: DemoVideo) -> list[Row | None]:
        return [self.caption(video), *(self.answer(video, q) for q in video.questions)]


def _said(row: Row | None) -> str | None:
    """The model's text in ``row``; None for an error row or no row."""
    return str(row.get("answer") or "") if row is not None and row.get("status") == "ok" else None


def _shown(row: Row | None) -> str:
    if row is None:
        return "(no result row)"
    said = _said(row)
    return f"(error: {row.get('error')})" if said is None else said


def _right(row: Row | None, truth: str) -> bool:
    said = _said(row)
    return said is not None and exact_match(said, truth) == 1.0


def score_demo(videos: list[DemoVideo], rows: Iterable[Row]) -> DemoScore:
    """Score the jobs' result rows against the demo's ground truth. A question or caption without
    an ok row counts as wrong (an empty caption: it lowers fact recall only)."""
    found = _Answers(rows)
    world = [v for v in videos if v.has_truth]
    odd = [v for v in videos if not v.has_truth]
    asked = [(v, q) for v in world for q in v.questions]
    captions = sum(
        (score_caption(_said(found.caption(v)) or "", str(v.caption)) for v in world),
        CaptionScore(),
    )
    return DemoScore(
        clips=len(world),
        qa_right=sum(_right(found.answer(v, q), str(q.answer)) for v, q in asked),
        qa_total=len(asked),
        captions=captions,
        files=len(odd),
        answered=sum(all(_said(r) is not None for r in found.rows(v)) for v in odd),
    )


def demo_tables(videos: list[DemoVideo], rows: Iterable[Row]) -> list[Table]:
    """One table of the clips (each caption and answer next to the truth, marked) and one of the
    odd files (each answer, or the row's error)."""
    found = _Answers(rows)
    world = Table("video", "question", "answer", "truth", "", title=WORLD_TITLE)
    odd = Table("video", "question", "answer", "row", "truth", title=ODD_TITLE)
    for video in videos:
        if video.has_truth:
            row = found.caption(video)
            facts = score_caption(_said(row) or "", str(video.caption))
            mark = f"{facts.matched}/{facts.true} facts"
            _add(world, video.video_id, "(caption)", _shown(row), str(video.caption), mark)
            for question in video.questions:
                row = found.answer(video, question)
                mark = "✓" if _right(row, str(question.answer)) else "✗"
                cells = (question.question, _shown(row), str(question.answer), mark)
                _add(world, video.video_id, *cells)
        else:
            asked = ("(caption)", *(q.question for q in video.questions))
            for text, row in zip(asked, found.rows(video), strict=True):
                status = "ok" if _said(row) is not None else "error"
                _add(odd, video.video_id, text, _shown(row), status, NO_TRUTH)
    return [world, odd]


def _add(table: Table, *cells: str) -> None:
    """A row of plain text (a model's answer may look like rich markup)."""
    table.add_row(*(Text(cell) for cell in cells))
