"""Video-Panda prompt template, piecewise tokenisation and answer post-processing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IMAGE_TOKEN_INDEX = -200  # placeholder id replaced by one frame's visual tokens
IGNORE_INDEX = -100
IMAGE_MARKER = "<image>"
EOS_TEXT = "</s>"

# The reference model was trained with SYSTEM_PROMPT_TRAIN but its eval scripts use the
# "human" wording below; we default to the eval wording for output parity with the reference.
SYSTEM_PROMPT_EVAL = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
SYSTEM_PROMPT_TRAIN = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def build_prompt(question: str, num_frames: int = 8, system: str = SYSTEM_PROMPT_EVAL) -> str:
    """Single-turn prompt, separator style "TWO", with the assistant turn left open."""
    return f"{system} USER: " + IMAGE_MARKER * num_frames + f"\n{question} ASSISTANT:"


def tokenize_prompt(prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of ``prompt`` with one :data:`IMAGE_TOKEN_INDEX` per ``<image>`` marker.

    Each text chunk between markers is tokenised on its own (so each gets the tokenizer's
    leading-space and BOS handling); only the first chunk keeps its BOS.
    """
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    for n, chunk in enumerate(prompt.split(IMAGE_MARKER)):
        chunk_ids: list[int] = list(tokenizer(chunk).input_ids)
        if n > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            if bos is not None and chunk_ids[:1] == [bos]:
                chunk_ids = chunk_ids[1:]
        ids.extend(chunk_ids)
    return ids


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The slow SentencePiece tokenizer (legacy Llama behaviour, as the reference uses).

    Falls back to the fast tokenizer only when ``path`` has no slow one (no ``tokenizer.model``);
    its handling of spaces around the chunks may then differ from the reference.
    """
    from transformers import AutoTokenizer

    local = Path(path)
    if local.is_dir() and not (local / "tokenizer.model").is_file():
        log.warning("no tokenizer.model in %s; using the fast tokenizer", local)
        return AutoTokenizer.from_pretrained(str(path), use_fast=True)
    return AutoTokenizer.from_pretrained(str(path), use_fast=False)


def postprocess(text: str) -> str:
    """Strip whitespace and one trailing ``</s>``, exactly as the reference eval does."""
    text = text.strip()
    if text.endswith(EOS_TEXT):
        text = text[: -len(EOS_TEXT)]
    return text.strip()


def decode_new_tokens(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Decode generated ids (special tokens skipped) into the final answer text."""
    return postprocess(tokenizer.decode(ids, skip_special_tokens=True))
