"""Video-Panda prompt template, piecewise tokenisation and answer post-processing."""

from __future__ import annotations

import logging
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


def _template(question: str, system: str) -> tuple[str, str]:
    """The single-turn template around the frames: (text before them, text after them)."""
    return f"{system} USER: ", f"\n{question} ASSISTANT:"


def build_prompt(question: str, num_frames: int = 8, system: str = SYSTEM_PROMPT_EVAL) -> str:
    """Single-turn prompt, separator style "TWO", with the assistant turn left open.

    This is the prompt's text as recorded in result rows; the model's ids come from
    :func:`prompt_ids`, which never reads markers or special tokens out of ``question``.
    """
    head, tail = _template(question, system)
    return head + IMAGE_MARKER * num_frames + tail


def prompt_ids(
    question: str,
    num_frames: int,
    tokenizer: PreTrainedTokenizerBase,
    system: str = SYSTEM_PROMPT_EVAL,
) -> list[int]:
    """Token ids of :func:`build_prompt` with exactly ``num_frames`` placeholders.

    The placeholders come from the template, not from the text: the template's two text pieces
    (the second holds ``question``) are tokenised as plain text, so ``<image>``, ``</s>``,
    ``<s>``, ``<unk>`` or any other special-token string typed in a question is ordinary text.
    For a question without such strings the ids equal ``tokenize_prompt(build_prompt(...))``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    head, tail = _template(question, system)
    return [
        *_piece_ids(head, tokenizer, first=True, plain=True),
        *[IMAGE_TOKEN_INDEX] * num_frames,
        *_piece_ids(tail, tokenizer, first=False, plain=True),
    ]


def tokenize_prompt(prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of template text ``prompt`` with one :data:`IMAGE_TOKEN_INDEX` per ``<image>``.

    Each text chunk between markers is tokenised on its own (so each gets the tokenizer's
    leading-space and BOS handling); only the first chunk keeps its BOS. Every ``<image>`` is a
    placeholder and special-token strings (``</s>``) are special tokens, so ``prompt`` must be
    trusted text (the training conversations); questions go through :func:`prompt_ids`.
    """
    ids: list[int] = []
    for n, chunk in enumerate(prompt.split(IMAGE_MARKER)):
        if n > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(_piece_ids(chunk, tokenizer, first=n == 0, plain=False))
    return ids


def _piece_ids(
    text: str, tokenizer: PreTrainedTokenizerBase, first: bool, plain: bool
) -> list[int]:
    """Ids of one text piece of a prompt: the BOS is kept only on the ``first`` piece. ``plain``:
    special-token strings in ``text`` are tokenised as the characters they are."""
    kwargs = {"split_special_tokens": True} if plain else {}
    ids: list[int] = list(tokenizer(text, **kwargs).input_ids)
    bos = tokenizer.bos_token_id
    if not first and bos is not None and ids[:1] == [bos]:
        ids = ids[1:]
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


def decode_new_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """Decode generated ids (special tokens skipped) into the final answer text."""
    return postprocess(tokenizer.decode(ids, skip_special_tokens=True))
