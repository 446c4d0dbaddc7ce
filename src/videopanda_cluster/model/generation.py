"""Splice visual tokens into prompts and generate with a KV cache (spec §1.3, §5.3).

Two paths, chosen by :attr:`GenerationOptions.share_prefix` in :func:`generate`:

- shared (default, :mod:`.shared_prefix`): a prompt is its video's *prefix* (system prompt +
  ``USER:`` + the frames' tokens, the same for every question of the video) and its own *suffix*
  (question + ``ASSISTANT:``). Each prefix is prefilled once (batch 1, no padding), each suffix on
  top of a view of it; the prompts of a batch (sorted by length, so pads stay few) are then
  decoded together from their caches, stacked with left padding.
- padded (:func:`generate_padded`): every prompt's whole embedding, left-padded per batch, through
  ``llm.generate`` (prefill of each question repeats its video's prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .prompt import IMAGE_TOKEN_INDEX


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings. The defaults are the reference eval's: greedy, up to 1024 new tokens,
    stop at EOS."""

    max_new_tokens: int = 1024
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)  # extra stop strings besides EOS
    seed: int | None = None  # for sampling
    batch_size: int = 8  # (video, question) pairs decoded together
    share_prefix: bool = True  # prefill a video's prefix once for all its questions

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")


class PromptTooLong(ValueError):
    """A prompt that leaves no room for ``max_new_tokens`` within the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, limit: int) -> None:
        need = prompt_tokens + max_new_tokens
        super().__init__(
            f"the prompt takes {prompt_tokens} tokens (template, question and video); with "
            f"max_new_tokens={max_new_tokens} it needs {need} positions, more than the model's "
            f"context of {limit} (max_position_embeddings): shorten the question by at least "
            f"{need - limit} tokens (or lower max_new_tokens)"
        )
        self.prompt_tokens, self.max_new_tokens, self.limit = prompt_tokens, max_new_tokens, limit


def context_limit(llm) -> int:
    """The positions the language model was built for (its ``max_position_embeddings``)."""
    return int(llm.config.max_position_embeddings)


def check_context(
    ids: Sequence[int], frames: Sequence[torch.Tensor], max_new_tokens: int, limit: int
) -> None:
    """Raise :class:`PromptTooLong` unless the prompt fits: its text tokens plus every frame's
    visual tokens plus ``max_new_tokens`` must be at most ``limit`` positions, so that no answer
    token is generated at a position the model never saw."""
    length = len(ids) - list(ids).count(IMAGE_TOKEN_INDEX) + sum(f.shape[0] for f in frames)
    if length + max_new_tokens > limit:
        raise PromptTooLong(length, max_new_tokens, limit)


def splice(
    embed: torch.nn.Embedding, ids: Sequence[int], frames: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Replace the i-th placeholder id by frame i's tokens; embed the text pieces. → (L, D)."""
    ids_t = torch.tensor(ids, device=embed.weight.device)
    slots = (ids_t == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    if len(slots) != len(frames):
        raise ValueError(f"prompt has {len(slots)} placeholders for {len(frames)} frames")
    pieces, start = [], 0
    for slot, frame in zip(slots, frames, strict=True):
        pieces += [embed(ids_t[start:slot]), frame.to(embed.weight.dtype)]
        start = slot + 1
    pieces.append(embed(ids_t[start:]))
    return torch.cat(pieces)


@dataclass(frozen=True)
class Prompt:
    """One prompt to generate from: its video's prefix (an index into the call's prefixes) and
    the embeddings of its own suffix, question + ``ASSISTANT:``."""

    prefix: int
    suffix: torch.Tensor  # (S, D), S ≥ 1


@dataclass
class Prompts:
    """The prompts of one answer call: a prefix per video that has a prompt, one
    :class:`Prompt` per question that fits, and per video per question the index of its
    prompt or its :class:`PromptTooLong`."""

    prefixes: list[torch.Tensor] = field(default_factory=list)  # (P_v, D)
    prompts: list[Prompt] = field(default_factory=list)
    places: list[list[int | PromptTooLong]] = field(default_factory=list)


def split_point(ids: Sequence[int]) -> int:
    """Where a prompt's ids split into the prefix its video's questions share and its own suffix:
    the index of the first id after the last placeholder. :func:`~.prompt.prompt_ids` tokenises
    the text after the frames on its own, so ``ids[:k]`` never depends on the question."""
    ids = list(ids)
    if IMAGE_TOKEN_INDEX not in ids:
        raise ValueError("the prompt has no image placeholder")
    k = len(ids) - ids[::-1].index(IMAGE_TOKEN_INDEX)
    if k == len(ids):
        raise ValueError("the prompt ends with an image placeholder: no question after it")
    return k


def left_pad(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (L_i, D) sequences into (B, L, D) padded on the left, plus the (B, L) mask."""
    length = max(s.shape[0] for s in sequences)
    first = sequences[0]
    batch = first.new_zeros(len(sequences), length, first.shape[1])
    mask = torch.zeros(len(sequences), length, dtype=torch.long, device=first.device)
    for i, s in enumerate(sequences):
        batch[i, length - s.shape[0] :] = s
        mask[i, length - s.shape[0] :] = 1
    return batch, mask


@torch.no_grad()
def generate(
    llm,
    tokenizer,
    prefixes: Sequence[torch.Tensor],
    prompts: Sequence[Prompt],
    options: GenerationOptions,
) -> list[list[int]]:
    """New token ids (EOS cut) per prompt. ``prefixes``: (P_v, D) embeddings per video (system
    prompt + frames); each prompt names its prefix. ``options.share_prefix`` picks the path."""
    if not prompts:
        return []
    if options.share_prefix:
        from .shared_prefix import generate_shared

        return generate_shared(llm, tokenizer, prefixes, prompts, options)
    embeds = [torch.cat([prefixes[p.prefix], p.suffix]) for p in prompts]
    return generate_padded(llm, tokenizer, embeds, options)


def generate_kwargs(options: GenerationOptions, tokenizer, eos: int, pad: int) -> dict[str, Any]:
    """The decoding arguments of ``generate`` for ``options`` (besides the inputs)."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=options.max_new_tokens,
        do_sample=options.do_sample,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,
    )
    if options.do_sample:
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k)
    else:  # plain greedy: no temperature/top-p/top-k processors at all
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if options.stop:
        kwargs.update(stop_strings=list(options.stop), tokenizer=tokenizer)
    return kwargs


@torch.no_grad()
def generate_padded(
    llm, tokenizer, embeds: Sequence[torch.Tensor], options: GenerationOptions
) -> list[list[int]]:
    """New token ids for each whole prompt embedding (L_i, D): batches of ``batch_size`` in the
    given order, left-padded, through ``llm.generate``."""
    results: list[list[int]] = []
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    if options.seed is not None:
        torch.manual_seed(options.seed)
    for start in range(0, len(embeds), options.batch_size):
        inputs, mask = left_pad(embeds[start : start + options.batch_size])
        kwargs = generate_kwargs(options, tokenizer, eos, pad)
        out = llm.generate(inputs_embeds=inputs, attention_mask=mask, **kwargs)
        for row in out.tolist():
            if eos in row:
                row = row[: row.index(eos)]
            results.append(row)
    return results


def cut_stop(text: str, stops: Sequence[str]) -> str:
    """Drop the stop string generation ended on (EOS is already removed)."""
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)].strip()
    return text
