"""Train a tiny real SentencePiece tokenizer, saved as a slow Llama tokenizer, for offline tests."""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
from transformers import LlamaTokenizer

WORD_BOUNDARY = "▁"  # SentencePiece's whitespace marker (U+2581)

_COLOURS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple")
_SHAPES = ("circle", "square", "triangle", "ball", "box", "star")
_MOTIONS = ("moves left", "moves right", "spins", "bounces", "falls", "stays still")
_QUESTIONS = (
    "What colour is the {s} in the video?",
    "Where does the {c} {s} go?",
    "How many {s}s can you see?",
    "Is the {c} {s} moving?",
    "Describe what happens to the {s}.",
)


def default_corpus() -> Iterator[str]:
    """Yield a fixed set of short English sentences about colours, shapes, motion and videos."""
    for n, (c, s, m) in enumerate(itertools.product(_COLOURS, _SHAPES, _MOTIONS)):
        yield f"In the video, the {c} {s} {m}."
        if n % 3 == 0:
            yield f"Frame {n % 10}: a {c} {s} {m}, then it stops."
    for template, c, s in itertools.product(_QUESTIONS, _COLOURS, _SHAPES):
        yield template.format(c=c, s=s)
    yield "A chat between a curious human and an artificial intelligence assistant."
    yield "The assistant gives helpful, detailed, and polite answers to the human's questions."
    yield "USER: ASSISTANT: Yes. No. It's a clip of 8 frames."


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """Non-empty single lines from ``texts`` (SentencePiece trains on one sentence per line)."""
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                yield line


def build_sentencepiece_tokenizer(
    out_dir: Path, texts: Iterable[str] = (), vocab_size: int = 400
) -> Path:
    """Train a Llama-style BPE model on ``texts`` (or :func:`default_corpus`) into ``out_dir``.

    Writes ``tokenizer.model`` plus the slow :class:`LlamaTokenizer` config (``legacy=True``) so
    ``AutoTokenizer.from_pretrained(out_dir, use_fast=False)`` loads it. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = list(_lines(texts)) or list(default_corpus())
    model = io.BytesIO()
    with open(os.devnull, "w") as quiet:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            logstream=quiet,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            byte_fallback=True,
            split_digits=True,
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            num_threads=1,
            shuffle_input_sentence=False,
        )
    vocab_file = out_dir / "tokenizer.model"
    vocab_file.write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_file=str(vocab_file))
    if processor.piece_to_id(WORD_BOUNDARY) == processor.unk_id():
        raise ValueError("trained model lacks a lone '▁' piece; give texts that contain spaces")
    LlamaTokenizer(vocab_file=str(vocab_file), legacy=True).save_pretrained(out_dir)
    return out_dir
