"""Training conversations (spec §7.2): records → token ids, LLaVA-v1 labels and frames; padding.

A record is ``{"id", "video", "conversations": [{"from": "human"|"gpt", "value"}, ...]}`` with one
``<video>`` (or ``<image>``) marker in the first human turn. It is rendered with the training
template (conv_vicuna_v1: ``SYSTEM USER: … ASSISTANT: answer</s>USER: …``), the marker becoming
one ``<image>`` per frame, and tokenised piecewise by :func:`tokenize_prompt`. Labels follow the
reference's length arithmetic, so only answer tokens and their ``</s>`` are supervised.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..model.prompt import (
    EOS_TEXT,
    IGNORE_INDEX,
    IMAGE_MARKER,
    IMAGE_TOKEN_INDEX,
    SYSTEM_PROMPT_EVAL,
    SYSTEM_PROMPT_TRAIN,
    tokenize_prompt,
)
from ..video.normalize import to_model_input

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

VIDEO_MARKERS = ("<video>", IMAGE_MARKER)
ROLES = {"human": "USER", "gpt": "ASSISTANT"}
ANSWER_SEP = " ASSISTANT: "  # sep + assistant role + ": ", where each answer starts
Overflow = Literal["truncate", "skip"]
DEFAULT_CACHE_BYTES = 4 << 30  # decoded frames kept per cache (uint8): 4 GiB


class SampleError(ValueError):
    """A record that cannot become a training sample; the message names the record."""


@dataclass(frozen=True)
class Record:
    """One conversation about one video (``video`` is relative to the dataset's video root)."""

    id: str
    video: str
    turns: tuple[tuple[str, str], ...]  # (role, text), role "human" or "gpt"
    # Per gpt turn, the optional "focus" of the human turn before it: the word the question is
    # about (e.g. "circle" in "What colour is the circle?"), for the question-focus loss.
    focus: tuple[str | None, ...] = ()


@dataclass
class Sample:
    """A loaded record: unexpanded ids (one placeholder per frame), aligned labels, pixels."""

    id: str
    input_ids: list[int]
    labels: list[int]
    pixels: torch.Tensor  # (F, 4, S, S)
    focus: tuple[str | None, ...] = ()  # Record.focus


@dataclass
class SampleStats:
    """Samples that were changed or left out, by reason, with their ids (nothing is dropped
    silently). Reasons: ``truncated``, ``too_long`` (skipped), ``bad_text`` (no valid labels),
    ``video_error``."""

    ids: dict[str, list[str]] = field(default_factory=dict)

    def record(self, reason: str, sample_id: str) -> None:
        self.ids.setdefault(reason, []).append(sample_id)

    @property
    def counts(self) -> dict[str, int]:
        return {reason: len(ids) for reason, ids in sorted(self.ids.items())}


def parse_records(rows: Sequence[dict]) -> list[Record]:
    """Validate the reference JSON rows; raises :class:`SampleError` naming the bad row."""
    records = []
    for n, row in enumerate(rows):
        name = f"record {row.get('id', n)!r}" if isinstance(row, dict) else f"record {n}"
        try:
            ident, video = str(row["id"]), str(row["video"])
            turns = tuple((t["from"], t["value"]) for t in row["conversations"])
            asked = [t.get("focus") for t in row["conversations"]]
        except (KeyError, TypeError, AttributeError) as exc:
            raise SampleError(f"{name}: missing field {exc}") from None
        if not turns or any(role not in ROLES or not isinstance(v, str) for role, v in turns):
            raise SampleError(f"{name}: turns must be non-empty human/gpt strings")
        if any(f is not None and not isinstance(f, str) for f in asked):
            raise SampleError(f"{name}: a turn's focus must be a string")
        focus = tuple(asked[n - 1] if n else None for n, (r, _) in enumerate(turns) if r == "gpt")
        focus = focus if any(focus) else ()
        records.append(Record(ident, video, turns, focus))
    return records


def load_records(path: str | Path) -> list[Record]:
    """Records of a reference conversation JSON file (a list of rows)."""
    return parse_records(json.loads(Path(path).read_text()))


# The system prompts conversations can be rendered with. The reference trains with "train" and
# evaluates with "eval" (spec §5.1); a model trained from scratch here may be trained with
# "eval", so that training and inference prompts match.
SYSTEM_PROMPTS = {"train": SYSTEM_PROMPT_TRAIN, "eval": SYSTEM_PROMPT_EVAL}


def system_prompt(name: str) -> str:
    """The system prompt called ``name`` in :data:`SYSTEM_PROMPTS`."""
    if name not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown system prompt {name!r}; choose from {', '.join(SYSTEM_PROMPTS)}")
    return SYSTEM_PROMPTS[name]


def render(record: Record, num_frames: int, system: str = SYSTEM_PROMPT_TRAIN) -> str:
    """The conv_vicuna_v1 text of ``record`` with ``num_frames`` ``<image>`` markers."""
    text = f"{system} "
    for n, (role, value) in enumerate(record.turns):
        markers = sum(value.count(m) for m in VIDEO_MARKERS)
        expected = 1 if n == 0 else 0
        if markers != expected or (n == 0 and role != "human"):
            raise SampleError(
                f"record {record.id!r}: the first turn must be human with one video marker, "
                f"found {markers} marker(s) in turn {n} ({role})"
            )
        if n == 0:
            marker = next(m for m in VIDEO_MARKERS if m in value)
            if value.endswith(marker):  # moved to the front, as the reference does
                value = marker + "\n" + value[: -len(marker)].strip()
            value = value.replace(marker, IMAGE_MARKER * num_frames)
        text += f"{ROLES[role]}: {value}" + (" " if role == "human" else EOS_TEXT)
    return text


def supervise(text: str, ids: list[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """LLaVA-v1 labels of ``ids`` (the tokenised ``text``): BOS and each round's instruction up to
    ``ASSISTANT: `` are ignored, answers and their ``</s>`` kept, anything after the last round
    ignored. Round lengths come from tokenising each round alone, as the reference does; if they
    do not add up to ``len(ids)`` the sample is rejected (:class:`SampleError`)."""
    labels = list(ids)
    labels[0] = IGNORE_INDEX
    cursor = 1
    for chunk in text.split(EOS_TEXT):
        parts = chunk.split(ANSWER_SEP)
        if not chunk or len(parts) != 2:
            break
        round_len = len(tokenize_prompt(chunk, tokenizer))  # its BOS stands in for the </s>
        instruction_len = len(tokenize_prompt(parts[0] + ANSWER_SEP, tokenizer)) - 2
        labels[cursor : cursor + instruction_len] = [IGNORE_INDEX] * instruction_len
        cursor += round_len
    if cursor != len(ids):
        raise SampleError(f"label/token length mismatch ({cursor} vs {len(ids)})")
    pairs = zip(ids, labels, strict=True)
    return [IGNORE_INDEX if i == IMAGE_TOKEN_INDEX else lab for i, lab in pairs]


def encode_record(
    record: Record,
    tokenizer: PreTrainedTokenizerBase,
    num_frames: int,
    system: str = SYSTEM_PROMPT_TRAIN,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a record, unexpanded: one placeholder id per frame."""
    text = render(record, num_frames, system)
    ids = tokenize_prompt(text, tokenizer)
    try:
        return ids, supervise(text, ids, tokenizer)
    except SampleError as exc:
        raise SampleError(f"record {record.id!r}: {exc}") from None


def decode_video(path: str | Path, num_frames: int, size: int, isolate: bool = True):
    """Decode, sample and letterbox like inference → ``(frames uint8 (T, S, S, 3), geometry)``."""
    from ..video.extract import PreprocessOptions, extract_video

    options = PreprocessOptions(num_frames=num_frames, size=size, isolate=isolate)
    extracted = extract_video(Path(path), options)
    return extracted.frames, extracted.geometry


class FrameCache:
    """Decoded clips (uint8 frames and geometry, exactly what :func:`decode_video` gives) kept
    in memory up to ``max_bytes``; one cache shared by the warm-up and the stages of a run in
    one process decodes each video once. Failures are not cached: a retry decodes again."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._clips: dict[tuple[str, int, int, bool], tuple[Any, Any]] = {}

    def decode(self, path: str | Path, num_frames: int, size: int, isolate: bool = True):
        """``decode_video``'s result, from memory when this cache has it."""
        key = (str(Path(path).resolve()), num_frames, size, isolate)
        if key in self._clips:
            return self._clips[key]
        decoded = decode_video(path, num_frames, size, isolate)
        if self.bytes + decoded[0].nbytes <= self.max_bytes:
            self._clips[key] = decoded
            self.bytes += decoded[0].nbytes
        return decoded


def load_video(
    path: str | Path, num_frames: int, size: int, flip: bool = False, isolate: bool = True
) -> torch.Tensor:
    """Decode, sample and letterbox like inference, → (num_frames, 4, size, size) float32."""
    frames, geometry = decode_video(path, num_frames, size, isolate)
    return to_model_input(frames, geometry, num_frames, flip=flip)


class VideoConversationDataset:
    """Records plus their videos; :meth:`load` gives a :class:`Sample`.

    ``flip`` turns on the reference's training-time horizontal flip (p = 0.5, all frames, mask
    unflipped), with the coin drawn from the ``seed`` given to :meth:`load`. Decoded frames (uint8,
    before flip and normalisation) are kept in ``frames`` (a new :class:`FrameCache` of
    ``cache_bytes`` when None), so later epochs skip the decoder; what is cached is exactly what
    a fresh decode gives, so results do not change. A record's token ids and labels are likewise
    computed once.
    """

    def __init__(
        self,
        records: Sequence[Record],
        video_root: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        num_frames: int = 8,
        size: int = 448,
        system: str = SYSTEM_PROMPT_TRAIN,
        flip: bool = True,
        isolate: bool = True,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        frames: FrameCache | None = None,
    ) -> None:
        self.records = list(records)
        self.video_root = Path(video_root)
        self.tokenizer = tokenizer
        self.num_frames, self.size, self.system = num_frames, size, system
        self.flip, self.isolate = flip, isolate
        self.frames = frames if frames is not None else FrameCache(cache_bytes)
        self._encoded: dict[int, tuple[list[int], list[int]]] = {}  # by record index

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int, seed: int | None = None) -> Sample:
        """Raises :class:`SampleError` (text) or ``VideoDecodeError`` (video)."""
        record = self.records[index]
        if index not in self._encoded:  # a SampleError is raised again on every load
            encoded = encode_record(record, self.tokenizer, self.num_frames, self.system)
            self._encoded[index] = encoded
        ids, labels = (list(part) for part in self._encoded[index])
        flip = self.flip and seed is not None and random.Random(seed).random() < 0.5
        frames, geometry = self.frames.decode(
            self.video_root / record.video, self.num_frames, self.size, self.isolate
        )
        pixels = to_model_input(frames, geometry, self.num_frames, flip=flip)
        return Sample(record.id, ids, labels, pixels, record.focus)


def expand_labels(
    labels: Sequence[int], ids: Sequence[int], lengths: Sequence[int]
) -> torch.Tensor:
    """Labels aligned with the spliced sequence: placeholder i becomes ``lengths[i]`` ignores."""
    out: list[int] = []
    frames = iter(lengths)
    for token, label in zip(ids, labels, strict=True):
        if token == IMAGE_TOKEN_INDEX:
            out += [IGNORE_INDEX] * next(frames)
        else:
            out.append(label)
    return torch.tensor(out, dtype=torch.long)


def fit_length(
    embeds: torch.Tensor, labels: torch.Tensor, max_length: int, overflow: Overflow
) -> tuple[torch.Tensor, torch.Tensor, str | None] | None:
    """Apply the length policy to a spliced sequence: ``(embeds, labels, outcome)``, where
    outcome is None or ``"truncated"``; None when ``overflow="skip"`` and it is too long."""
    if embeds.shape[0] <= max_length:
        return embeds, labels, None
    if overflow == "skip":
        return None
    return embeds[:max_length], labels[:max_length], "truncated"


def pad_batch(
    embeds: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    side: Literal["right", "left"] = "right",
) -> dict[str, torch.Tensor]:
    """Stack (L_i, D) embeddings and (L_i,) labels: ``inputs_embeds`` (B, L, D), ``labels``
    (pads ignored), ``attention_mask`` and ``position_ids`` (counting real tokens only)."""
    length = max(e.shape[0] for e in embeds)
    first = embeds[0]
    inputs = first.new_zeros(len(embeds), length, first.shape[1])
    out_labels = torch.full((len(embeds), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(embeds), length, dtype=torch.long)
    for i, (e, lab) in enumerate(zip(embeds, labels, strict=True)):
        span = slice(0, e.shape[0]) if side == "right" else slice(length - e.shape[0], length)
        inputs[i, span], out_labels[i, span], mask[i, span] = e, lab, 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    device = first.device
    return {
        "inputs_embeds": inputs,
        "labels": out_labels.to(device),
        "attention_mask": mask.to(device),
        "position_ids": positions.to(device),
    }


def answer_spans(labels: torch.Tensor) -> list[range]:
    """(L,) labels → per answer, the positions whose logits predict its tokens."""
    supervised = (labels != IGNORE_INDEX).tolist()
    spans, start = [], None
    for p in range(1, len(supervised) + 1):
        inside = p < len(supervised) and supervised[p]
        if inside and start is None:
            start = p - 1  # position p - 1 predicts the answer's first token, at p
        elif not inside and start is not None:
            spans.append(range(start, p - 1))
            start = None
    return spans


FocusedAnswer = tuple[range, str | None]  # the positions that predict an answer; its focus word


def answer_focus(labels: torch.Tensor, focus: Sequence[str | None]) -> list[FocusedAnswer]:
    """(L,) labels and the answers' focus words → each answer's span (:func:`answer_spans`)
    with its focus word (None for an answer without one, or whose word was cut off)."""
    spans = answer_spans(labels)
    words = list(focus[: len(spans)]) + [None] * (len(spans) - len(focus))
    return list(zip(spans, words, strict=True))
