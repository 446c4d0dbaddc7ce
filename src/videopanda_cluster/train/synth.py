"""A deterministic synthetic video-QA corpus: coloured shapes, one moving, with known answers.

Each clip shows one to three shapes (distinct kinds, distinct colours) on a plain background. The
first ("main") shape moves in a straight line left, right, up or down over the clip; the others
stay still, and one of them may appear partway through. Every answer comes from a small closed
vocabulary (:data:`VOCABULARIES`): one word, or for a question about a shape or colour that is
not in the clip, the fixed answer "there is no square" / "there is no red object" (type
``absent``), so exact match scores it. The caption (:func:`caption`) names every shape's colour,
kind and motion in order of appearance; ``eval.caption_facts`` parses it back into facts.

Frame sizes are fixed (``width`` x ``height``) or drawn per video (``size_range``: the longer
side in a range, landscape, portrait or square), so one corpus can cover the range of sizes a
model must hold up on.

Layout written by :func:`write_synth` under ``DIR``:

- ``videos/<name>.mp4``: every clip (H.264, encoded by :func:`encode_clip`);
- ``metadata.json``: per video, its split, geometry, shapes, caption and questions;
- ``train/prealign.json``, ``train/finetune.json``: training records in the reference format
  (spec §7.2), caption conversations, and for finetune multi-turn QA conversations of the train
  split (with a second QA conversation per clip with several shapes, :func:`swapped_questions`)
  plus a caption conversation per clip. Their ``video`` paths are **relative to DIR**
  (``videos/<name>.mp4``);
- ``eval/{val,test}/MSVD_Zero_Shot_QA/``: ``test_q.json``, ``test_a.json`` (aligned by index,
  ``type`` in test_a; every clip's questions and one caption item of type ``caption`` whose
  answer is the reference caption) and ``videos/`` (copies), the reference MSVD-QA layout
  (spec §6.1);
- ``synth.json``: seed, options, counts per split and per question type, vocabularies.

The same seed and options give the same files byte for byte. Video ``i`` depends only on the seed,
the options and ``i``, so a larger corpus extends a smaller one (the split assignment differs).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..video.samples import BACKGROUNDS, COLOURS, SHAPES, SampleSpec, draw_shape, encode_video

QUESTION_TYPES = ("colour", "shape", "direction", "count", "first", "absent")
CAPTION_TYPE = "caption"  # the eval splits' caption items (scored by eval.caption_facts)
SYNTH_COLOURS = ("red", "green", "blue", "yellow")
DIRECTIONS = ("left", "right", "up", "down")
# the words a caption's phrase (:func:`_phrase`) uses for a shape's motion
MOTION_WORDS = (*DIRECTIONS, "moves", "stays", "still", "appears")
COUNTS = ("one", "two", "three")


def absent_kind(kind: str) -> str:
    """The answer to a colour question about a kind the clip does not show."""
    return f"there is no {kind}"


def absent_colour(colour: str) -> str:
    """The answer to a shape question about a colour the clip does not show."""
    return f"there is no {colour} object"


VOCABULARIES: dict[str, tuple[str, ...]] = {
    "colour": SYNTH_COLOURS,
    "shape": SHAPES,
    "direction": DIRECTIONS,
    "count": COUNTS,
    "first": SHAPES,
    "absent": tuple(absent_kind(k) for k in SHAPES)
    + tuple(absent_colour(c) for c in SYNTH_COLOURS),
}
SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
EVAL_FOLDER = "MSVD_Zero_Shot_QA"  # the msvd-qa layout of eval.benchmarks
CAPTION_PROMPTS = (  # the first is the caption jobs' default prompt and the eval splits'
    "Describe this video in detail.",
    "Describe the video briefly.",
    "What happens in this video?",
    "Give a short caption for this video.",
    "Summarize the video in one sentence.",
)
VIDEO_TOKEN = "<video>"
_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_MARGIN = 3  # pixels kept free between a shape and the frame edge or another shape
_PLACEMENT_TRIES = 50
_SCENE, _QUESTIONS, _SPLIT, _TRAIN, _SIZE = 0, 1, 2, 3, 4  # independent random streams
_ASPECT = (1.25, 2.4)  # longer ÷ shorter side of a drawn landscape or portrait frame
_MIN_SIDE = 64


def question_types() -> tuple[str, ...]:
    """The question type labels, as written in ``test_a.json``'s ``type`` and ``metadata.json``."""
    return QUESTION_TYPES


def vocabularies() -> dict[str, list[str]]:
    """Per question type, every answer it can have."""
    return {kind: list(words) for kind, words in VOCABULARIES.items()}


@dataclass(frozen=True)
class SynthOptions:
    """Clip geometry and length; shape radii as fractions of the shorter frame side; the moving
    shape's travel as a fraction of the span free along its direction. With ``size_range``
    (LO, HI), each video's frame size is drawn instead of ``width`` x ``height``: the longer
    side in [LO, HI], a third each landscape, portrait and square, the aspect of the first two
    in [1.25, 2.4] (the shorter side at least 64); the video's own options record its size."""

    frames: int = 16
    width: int = 160
    height: int = 120
    fps: int = 8
    radius: tuple[float, float] = (0.09, 0.13)
    travel: tuple[float, float] = (0.35, 0.6)
    size_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.frames < 4:
            raise ValueError(f"need at least 4 frames per video, got {self.frames}")
        if self.fps < 1:
            raise ValueError(f"fps must be at least 1, got {self.fps}")
        if min(self.width, self.height) < _MIN_SIDE or self.width % 2 or self.height % 2:
            raise ValueError(f"frame size must be even and at least 64x64, got {self.size}")
        if self.size_range is not None:
            shortest, longest = (int(v) for v in self.size_range)
            if not 96 <= shortest <= longest <= 4096:
                raise ValueError(f"size range must be within [96, 4096], got {self.size_range}")
            object.__setattr__(self, "size_range", (shortest, longest))
        object.__setattr__(self, "radius", tuple(float(v) for v in self.radius))
        object.__setattr__(self, "travel", tuple(float(v) for v in self.travel))
        lo, hi = self.radius
        if not 0.02 <= lo <= hi <= 0.25:
            raise ValueError(f"radius must be a range within [0.02, 0.25], got {self.radius}")
        lo, hi = self.travel
        if not 0.1 <= lo <= hi <= 1.0:
            raise ValueError(f"travel must be a range within [0.1, 1.0], got {self.travel}")

    @property
    def size(self) -> str:
        if self.size_range is not None:
            return f"{self.size_range[0]}-{self.size_range[1]}"
        return f"{self.width}x{self.height}"

    def for_video(self, seed: int, index: int) -> SynthOptions:
        """Video ``index``'s own options: its drawn frame size when ``size_range`` is set."""
        if self.size_range is None:
            return self
        rng = _rng(seed, _SIZE, index)
        shape = str(rng.choice(("landscape", "portrait", "square")))
        longer = int(rng.integers(self.size_range[0], self.size_range[1] + 1))
        aspect = 1.0 if shape == "square" else float(rng.uniform(*_ASPECT))
        longer, shorter = (max(_MIN_SIDE, 2 * round(v / 2)) for v in (longer, longer / aspect))
        width, height = (shorter, longer) if shape == "portrait" else (longer, shorter)
        return replace(self, width=width, height=height, size_range=None)


@dataclass(frozen=True)
class Shape:
    """One shape; it moves linearly from ``start`` to ``end`` (equal if still) over the clip."""

    kind: str
    colour: str
    radius: int
    start: tuple[int, int]
    end: tuple[int, int]
    motion: str  # one of DIRECTIONS, or "still"
    appear: int = 0  # first frame that shows it

    def centre(self, index: int, frames: int) -> tuple[float, float]:
        """Centre (x, y) in frame ``index`` of a ``frames``-long clip."""
        t = index / (frames - 1)
        (x0, y0), (x1, y1) = self.start, self.end
        return (x0 + t * (x1 - x0), y0 + t * (y1 - y0))

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class SynthVideo:
    """A clip's ground truth: enough to render every frame and to answer every question."""

    name: str
    options: SynthOptions
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]  # shapes[0] is the moving one
    questions: tuple[dict[str, str], ...] = field(default=())  # {"type", "question", "answer"}
    caption: str = ""

    def render(self, index: int) -> np.ndarray:
        """Frame ``index`` as an HxWx3 RGB uint8 array."""
        frame = np.empty((self.options.height, self.options.width, 3), dtype=np.uint8)
        frame[:] = self.background
        for shape in self.shapes:
            if index >= shape.appear:
                centre = shape.centre(index, self.options.frames)
                draw_shape(frame, shape.kind, COLOURS[shape.colour], centre, shape.radius)
        return frame

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthVideo:
        shapes = tuple(
            Shape(**{**s, "start": tuple(s["start"]), "end": tuple(s["end"])})
            for s in data["shapes"]
        )
        return cls(
            name=data["name"],
            options=SynthOptions(**data["options"]),
            background=tuple(data["background"]),
            shapes=shapes,
            questions=tuple(data["questions"]),
            caption=data["caption"],
        )


# --- scenes --------------------------------------------------------------------------------------


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


def _radius(rng: np.random.Generator, options: SynthOptions) -> int:
    return int(min(options.width, options.height) * rng.uniform(*options.radius))


def _moving_shape(rng: np.random.Generator, kind: str, colour: str, opts: SynthOptions) -> Shape:
    """A shape crossing part of the free span (``opts.travel``) along a random direction."""
    direction = str(rng.choice(DIRECTIONS))
    r = _radius(rng, opts)
    (sx, sy), lo = _STEPS[direction], r + _MARGIN
    along, across = (opts.width, opts.height) if sx else (opts.height, opts.width)
    travel = int((along - 2 * lo) * rng.uniform(*opts.travel))
    a0 = int(rng.integers(lo, along - lo - travel + 1))
    c = int(rng.integers(lo, across - lo + 1))
    a_start, a_end = (a0, a0 + travel) if sx + sy > 0 else (a0 + travel, a0)
    start, end = ((a_start, c), (a_end, c)) if sx else ((c, a_start), (c, a_end))
    return Shape(kind, colour, r, start, end, direction)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from point ``p`` to the segment ``a``-``b``."""
    ab = b - a
    t = 0.0 if not ab.any() else float(np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0, 1))
    return float(np.linalg.norm(p - (a + t * ab)))


def _still_shape(
    rng: np.random.Generator, kind: str, colour: str, opts: SynthOptions, placed: list[Shape]
) -> Shape | None:
    """A still shape clear of every placed shape's path, or None if none fits."""
    r = _radius(rng, opts)
    lo = r + _MARGIN
    for _ in range(_PLACEMENT_TRIES):
        pos = (
            int(rng.integers(lo, opts.width - lo + 1)),
            int(rng.integers(lo, opts.height - lo + 1)),
        )
        p = np.array(pos, dtype=float)
        if all(
            _segment_distance(p, np.array(s.start, float), np.array(s.end, float))
            > r + s.radius + _MARGIN
            for s in placed
        ):
            return Shape(kind, colour, r, pos, pos, "still")
    return None


def make_video(name: str, seed: int, index: int, options: SynthOptions) -> SynthVideo:
    """Video ``index`` of the corpus seeded by ``seed``, with its caption and questions."""
    options = options.for_video(seed, index)
    rng = _rng(seed, _SCENE, index)
    count = int(rng.integers(1, 4))
    kinds = [str(k) for k in rng.choice(SHAPES, size=count, replace=False)]
    colours = [str(c) for c in rng.choice(SYNTH_COLOURS, size=count, replace=False)]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    shapes = [_moving_shape(rng, kinds[0], colours[0], options)]
    for kind, colour in zip(kinds[1:], colours[1:], strict=True):
        shape = _still_shape(rng, kind, colour, options, shapes)
        if shape is not None:
            shapes.append(shape)
    if len(shapes) > 1 and rng.random() < 0.5:
        appear = int(rng.integers(options.frames // 4, options.frames // 2 + 1))
        shapes[-1] = replace(shapes[-1], appear=appear)
    video = SynthVideo(name, options, background, tuple(shapes))
    questions = make_questions(video, _rng(seed, _QUESTIONS, index))
    return replace(video, questions=questions, caption=caption(video))


# --- text ----------------------------------------------------------------------------------------


def _phrase(shape: Shape) -> str:
    """ "a red circle moves left" / "a green square stays still" / "... appears and stays still"."""
    if shape.appear > 0:
        return f"a {shape.name} appears and stays still"
    return f"a {shape.name} " + (
        "stays still" if shape.motion == "still" else f"moves {shape.motion}"
    )


def _caption_order(shape: Shape) -> tuple[int, bool, int]:
    """Where ``shape`` comes in its caption: by the frame it appears in, the moving shape before
    still ones, and shapes that appear together in :data:`SYNTH_COLOURS` order. The tie-break is
    one the clip shows: the order the generator drew the shapes in is not, and a caption that
    follows it asks a model to guess (docs/training.md, "Twenty-first round")."""
    return shape.appear, shape.motion == "still", SYNTH_COLOURS.index(shape.colour)


def caption(video: SynthVideo) -> str:
    """One sentence naming every shape's colour, kind and motion in order of appearance
    (:func:`_caption_order`), e.g. "A red circle moves left and a green triangle stays still,
    then a blue square appears and stays still." (the grammar ``eval.caption_facts`` parses)."""
    shapes = sorted(video.shapes, key=_caption_order)
    early = [_phrase(s) for s in shapes if s.appear == 0]
    late = [_phrase(s) for s in shapes if s.appear > 0]
    text = ", then ".join([" and ".join(early), *late])
    return text[0].upper() + text[1:] + "."


QA = tuple[str, str, str, str | None]  # type, question, answer, focus (the word asked about)


def _colour_question(shape: Shape, alone: bool = False) -> QA:
    """Asks the colour of ``shape``, named by its kind (its focus)."""
    if alone:
        return ("colour", "What colour is the shape?", shape.colour, None)
    return ("colour", f"What colour is the {shape.kind}?", shape.colour, shape.kind)


def _shape_question(shape: Shape, alone: bool = False) -> QA:
    """Asks the kind of ``shape``, named by its colour (its focus)."""
    if alone:
        return ("shape", "What shape is the object?", shape.kind, None)
    return ("shape", f"What shape is the {shape.colour} object?", shape.kind, shape.colour)


def _first_question(a: str, b: str, answer: str) -> QA:
    """Asks which of the kinds ``a`` and ``b`` appears first, in that order."""
    return ("first", f"Which shape appears first, the {a} or the {b}?", answer, None)


def _absent_question(video: SynthVideo, rng: np.random.Generator) -> QA:
    """Asks the colour of a kind the clip lacks, or the kind of a colour it lacks (a coin
    decides); the answer is the fixed "there is no ..." phrase."""
    kinds = [k for k in SHAPES if k not in {s.kind for s in video.shapes}]
    colours = [c for c in SYNTH_COLOURS if c not in {s.colour for s in video.shapes}]
    if rng.random() < 0.5:
        kind = kinds[int(rng.integers(len(kinds)))]
        return ("absent", f"What colour is the {kind}?", absent_kind(kind), kind)
    colour = colours[int(rng.integers(len(colours)))]
    return ("absent", f"What shape is the {colour} object?", absent_colour(colour), colour)


def _as_dicts(qa: list[QA]) -> tuple[dict[str, str], ...]:
    """Question records; ``focus`` only where the question names a shape by one attribute."""
    rows = ({"type": t, "question": q, "answer": a, "focus": f} for t, q, a, f in qa)
    return tuple({k: v for k, v in row.items() if v is not None} for row in rows)


def make_questions(video: SynthVideo, rng: np.random.Generator) -> tuple[dict[str, str], ...]:
    """One question per applicable type (``first`` needs a late shape), in QUESTION_TYPES order;
    the ``absent`` question names a kind or colour the clip lacks (at most three of four shown).

    No question gives away another's answer, so a multi-turn conversation can't be answered from
    its own text: shapes are named by kind only, the shape question asks about a different shape
    than the colour question, and a lone shape is just "the shape" / "the object".
    """
    shapes, main = video.shapes, video.shapes[0]
    picks = rng.permutation(len(shapes))
    target, other = shapes[picks[0]], shapes[picks[-1]]
    alone = len(shapes) == 1
    qa: list[QA] = [
        _colour_question(target, alone),
        _shape_question(other, alone),
        (
            "direction",
            f"Which way does the {'shape' if alone else main.kind} move?",
            main.motion,
            None if alone else main.kind,
        ),
        ("count", "How many shapes are there in the video?", COUNTS[len(shapes) - 1], None),
    ]
    late = [s for s in shapes if s.appear > 0]
    if late:
        early = [s for s in shapes if s.appear == 0]
        pair = [early[int(rng.integers(len(early)))], late[0]]
        a, b = (pair[i].kind for i in rng.permutation(2))
        qa.append(_first_question(a, b, pair[0].kind))
    qa.append(_absent_question(video, rng))
    return _as_dicts(qa)


# --- splits and files ----------------------------------------------------------------------------


def assign_splits(names: list[str], seed: int) -> dict[str, list[str]]:
    """About 80/10/10 train/val/test by video (val and test get at least one video each)."""
    if len(names) < 3:
        raise ValueError(f"need at least 3 videos for train/val/test splits, got {len(names)}")
    order = [names[i] for i in _rng(seed, _SPLIT).permutation(len(names))]
    held = max(1, round(0.1 * len(names)))
    return {
        "test": sorted(order[:held]),
        "val": sorted(order[held : 2 * held]),
        "train": sorted(order[2 * held :]),
    }


def video_path(name: str) -> str:
    """A video's path relative to the corpus directory."""
    return f"videos/{name}.mp4"


def _conversation(
    video: SynthVideo, turns: list[tuple[str, str]], focus: list[str | None] | None = None
) -> dict[str, Any]:
    """A reference training record (spec §7.2); the first human turn carries the video marker.
    A human turn gets a ``focus`` key (the word its question is about, for the question-focus
    loss of ``forward.py``) where ``focus`` gives one; the reference format has no such key."""
    conversations = []
    for i, (question, answer) in enumerate(turns):
        value = f"{VIDEO_TOKEN}\n{question}" if i == 0 else question
        human = {"from": "human", "value": value}
        word = focus[i] if focus else None
        if word is not None:
            human["focus"] = word
        conversations += [human, {"from": "gpt", "value": answer}]
    return {"id": video.name, "video": video_path(video.name), "conversations": conversations}


def swapped_questions(video: SynthVideo) -> tuple[dict[str, str], ...]:
    """The colour and shape questions with their roles swapped (none for a lone shape): the
    colour of the shape the shape question asked about, and the kind of the shape the colour
    question asked about. With the clip's own pair they ask every binding of the two shapes,
    and neither pair gives the other's answers away within one conversation."""
    if len(video.shapes) == 1:
        return ()
    asked = {q["type"]: q["answer"] for q in video.questions}
    target = next(s for s in video.shapes if s.colour == asked["colour"])
    other = next(s for s in video.shapes if s.kind == asked["shape"])
    return _as_dicts([_colour_question(other), _shape_question(target)])


def other_first_question(video: SynthVideo) -> tuple[dict[str, str], ...]:
    """For a clip with two early shapes and a late one, the ``first`` question about the early
    shape its own ``first`` question did not name, with the answer in the other slot (none for
    other clips). Trained as its own conversation: with both, the question's two options must be
    read, since the moving shape (always early) is the answer only when it is named."""
    early = [s for s in video.shapes if s.appear == 0]
    asked = next((q for q in video.questions if q["type"] == "first"), None)
    if asked is None or len(early) != 2:
        return ()
    other = next(s for s in early if s.kind != asked["answer"])
    late = next(s for s in video.shapes if s.appear > 0)
    _, answer_first, _, _ = _first_question(asked["answer"], late.kind, asked["answer"])
    answer_slot_first = asked["question"] == answer_first
    a, b = (late.kind, other.kind) if answer_slot_first else (other.kind, late.kind)
    return _as_dicts([_first_question(a, b, other.kind)])


def training_records(videos: list[SynthVideo], seed: int) -> dict[str, list[dict[str, Any]]]:
    """``prealign`` (caption) and ``finetune`` records: per clip its questions as one multi-turn
    conversation, and for a clip with several shapes a second one, the swapped colour and shape
    questions (:func:`swapped_questions`), and for a clip with two early shapes the other one's
    ``first`` question (:func:`other_first_question`), turns shuffled; then a caption
    conversation with another prompt, so the QA stage keeps the model captioning."""
    prealign, finetune = [], []
    for index, video in enumerate(videos):
        rng = _rng(seed, _TRAIN, index)
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        prealign.append(_conversation(video, [(prompt, video.caption)]))
        for questions in (video.questions, swapped_questions(video), other_first_question(video)):
            if questions:
                qa = [questions[i] for i in rng.permutation(len(questions))]
                turns = [(q["question"], q["answer"]) for q in qa]
                finetune.append(_conversation(video, turns, [q.get("focus") for q in qa]))
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        finetune.append(_conversation(video, [(prompt, video.caption)]))
    return {"prealign": prealign, "finetune": finetune}


def eval_lists(videos: list[SynthVideo]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``test_q.json`` and ``test_a.json`` contents, aligned by index: every question, then one
    caption item per clip (the caption jobs' prompt; its answer is the reference caption)."""
    questions, answers = [], []
    for video in videos:
        caption_item = {
            "type": CAPTION_TYPE,
            "question": CAPTION_PROMPTS[0],
            "answer": video.caption,
        }
        for qa in (*video.questions, caption_item):
            qid = f"{video.name}_{qa['type']}"
            questions.append(
                {"video_name": video.name, "question": qa["question"], "question_id": qid}
            )
            answers.append({"answer": qa["answer"], "type": qa["type"], "question_id": qid})
    return questions, answers


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def encode_clip(directory: Path, video: SynthVideo) -> None:
    """Encode ``video`` to ``directory / video_path(video.name)`` (H.264, byte for byte
    repeatable)."""
    opts = video.options
    spec = SampleSpec(
        video.name, opts.width, opts.height, opts.frames, Fraction(opts.fps), "libx264"
    )
    path = directory / video_path(video.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_video(path, spec, video.render)


def _write_eval(directory: Path, split: str, videos: list[SynthVideo]) -> None:
    folder = directory / "eval" / split / EVAL_FOLDER
    questions, answers = eval_lists(videos)
    _write_json(folder / "test_q.json", questions)
    _write_json(folder / "test_a.json", answers)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    for video in videos:  # copies, so the folder can be moved or uploaded on its own
        shutil.copyfile(directory / video_path(video.name), folder / "videos" / f"{video.name}.mp4")


def _summary(
    seed: int, options: SynthOptions, splits: dict[str, list[str]], by_name: dict[str, SynthVideo]
) -> dict[str, Any]:
    types = {
        split: dict(Counter(q["type"] for n in splits[split] for q in by_name[n].questions))
        for split in SPLITS
    }
    return {
        "seed": seed,
        "options": asdict(options),
        "video_paths": "relative to this directory",
        "videos": {split: len(splits[split]) for split in SPLITS},
        "questions": {split: sum(counts.values()) for split, counts in types.items()},
        "question_types": types,
        "vocabularies": vocabularies(),
    }


def write_synth(
    directory: str | Path, seed: int, videos: int, options: SynthOptions | None = None
) -> dict[str, Any]:
    """Write the corpus (layout in the module docstring) to an empty or new ``directory``.

    Returns the ``synth.json`` summary.
    """
    root = Path(directory)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: directory is not empty")
    options = options or SynthOptions()
    clips = [make_video(f"synth_{i:05d}", seed, i, options) for i in range(videos)]
    splits = assign_splits([v.name for v in clips], seed)
    split_of = {name: split for split, names in splits.items() for name in names}
    for video in clips:
        encode_clip(root, video)
    _write_json(root / "metadata.json", [{**v.to_dict(), "split": split_of[v.name]} for v in clips])
    by_name = {v.name: v for v in clips}
    records = training_records([by_name[n] for n in splits["train"]], seed)
    for stage, rows in records.items():
        _write_json(root / "train" / f"{stage}.json", rows)
    for split in EVAL_SPLITS:
        _write_eval(root, split, [by_name[n] for n in splits[split]])
    summary = _summary(seed, options, splits, by_name)
    _write_json(root / "synth.json", summary)
    return summary


def load_metadata(directory: str | Path) -> list[tuple[SynthVideo, str]]:
    """Every video of a written corpus with its split, from ``metadata.json``."""
    rows = json.loads((Path(directory) / "metadata.json").read_text(encoding="utf-8"))
    return [
        (SynthVideo.from_dict({k: v for k, v in r.items() if k != "split"}), r["split"])
        for r in rows
    ]
