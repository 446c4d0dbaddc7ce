"""Splice visual tokens into prompts and generate with a KV cache (spec §1.3, §5.3).

Two paths, chosen by :attr:`GenerationOptions.share_prefix` in :func:`generate`:

- shared (default, :func:`generate_shared`): a prompt is its video's *prefix* (system prompt +
  ``USER:`` + the frames' tokens, the same for every question of the video) and its own *suffix*
  (question + ``ASSISTANT:``). Each prefix is prefilled once (batch 1, no padding), each suffix on
  top of a view of it; the prompts of a batch (sorted by length, so pads stay few) are then
  decoded together from their caches, stacked with left padding.
- padded (:func:`generate_padded`): every prompt's whole embedding, left-padded per batch, through
  ``llm.generate`` (prefill of each question repeats its video's prefix).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .prompt import IMAGE_TOKEN_INDEX

if TYPE_CHECKING:  # transformers is imported only with the LLM
    from transformers import DynamicCache


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
    if options.share_prefix:
        return generate_shared(llm, tokenizer, prefixes, prompts, options)
    embeds = [torch.cat([prefixes[p.prefix], p.suffix]) for p in prompts]
    return generate_padded(llm, tokenizer, embeds, options)


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
        kwargs = dict(
            inputs_embeds=inputs,
            attention_mask=mask,
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
        out = llm.generate(**kwargs)
        for row in out.tolist():
            if eos in row:
                row = row[: row.index(eos)]
            results.append(row)
    return results


@torch.no_grad()
def generate_shared(
    llm,
    tokenizer,
    prefixes: Sequence[torch.Tensor],
    prompts: Sequence[Prompt],
    options: GenerationOptions,
) -> list[list[int]]:
    """:func:`generate` with each prefix prefilled once (see the module docstring).

    Prompts are sorted by length (stable) and cut into batches of ``batch_size``; a prefix's
    cache lives until its last prompt is prefilled. Greedy ids equal :func:`generate_padded`'s
    (the same positions, masks and arithmetic up to float summation order); sampling with a
    ``seed`` is reproducible but draws its own random stream (other batches, other order).
    """
    if options.seed is not None:
        torch.manual_seed(options.seed)
    step = _Step(tokenizer, options)
    lengths = [prefixes[p.prefix].shape[0] + p.suffix.shape[0] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], prompts[i].prefix))
    left = Counter(p.prefix for p in prompts)  # prompts still to prefill, per prefix
    caches: dict[int, DynamicCache] = {}
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), options.batch_size):
        batch = order[start : start + options.batch_size]
        stack = _Stack([lengths[i] for i in batch])
        for row, i in enumerate(batch):
            v = prompts[i].prefix
            if v not in caches:
                caches[v], _ = _prefill(llm, prefixes[v], None)
            cache, logits = _prefill(llm, prompts[i].suffix, caches[v])
            stack.put(row, cache, logits)
            left[v] -= 1
            if not left[v]:
                del caches[v]
        for i, ids in zip(batch, _decode(llm, stack, step, options.max_new_tokens), strict=True):
            results[i] = ids
    return results


def _cache_of(
    llm, layers: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None
) -> DynamicCache:
    """A ``DynamicCache`` (empty, or over these per-layer (B, H, L, d) keys and values, not
    copied: its ``update`` concatenates into new tensors (transformers 4.57), so they are never
    written)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=llm.config)
    for layer, (keys, values) in zip(cache.layers, layers or [], strict=layers is not None):
        layer.lazy_initialization(keys)
        layer.keys, layer.values = keys, values
    return cache


def _prefill(
    llm, embeds: torch.Tensor, past: DynamicCache | None
) -> tuple[DynamicCache, torch.Tensor]:
    """Run (L, D) ``embeds`` as one unpadded sequence after ``past`` (its keys and values are
    read, not changed) → the cache of past + embeds, and the last position's logits (V,) in fp32.
    Without ``past`` the attention is plain causal (sdpa's ``is_causal`` path)."""
    cache = _cache_of(llm, None if past is None else [(la.keys, la.values) for la in past.layers])
    start = cache.get_seq_length()
    positions = torch.arange(start, start + embeds.shape[0], device=embeds.device)
    out = llm(
        inputs_embeds=embeds[None],
        position_ids=positions[None],
        cache_position=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.past_key_values, out.logits[0, -1].float()


class _Stack:
    """The caches of one batch's prompts, left-padded into (B, H, L_max, d) per layer (zeros on
    the pads) as they are prefilled, with their last logits (B, V)."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.lengths = list(lengths)
        self.width = max(self.lengths)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.logits: list[torch.Tensor] = []

    def put(self, row: int, cache: DynamicCache, logits: torch.Tensor) -> None:
        if not self.layers:
            for layer in cache.layers:  # (1, H, L, d) → (B, H, L_max, d)
                shape = (len(self.lengths), layer.keys.shape[1], self.width, layer.keys.shape[3])
                self.layers.append((layer.keys.new_zeros(shape), layer.values.new_zeros(shape)))
        pad = self.width - self.lengths[row]
        for (keys, values), layer in zip(self.layers, cache.layers, strict=True):
            keys[row, :, pad:] = layer.keys[0]
            values[row, :, pad:] = layer.values[0]
        self.logits.append(logits)


class _Step:
    """Choosing the next token as ``llm.generate`` does: fp32 logits → temperature, top-k, top-p
    warpers (sampling only) → argmax or a multinomial draw; a row ends at EOS or a stop string."""

    def __init__(self, tokenizer, options: GenerationOptions) -> None:
        from transformers import (
            LogitsProcessorList,
            StopStringCriteria,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.sample = options.do_sample
        self.warpers = LogitsProcessorList()
        if options.do_sample and options.temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(options.temperature))
        if options.do_sample and options.top_k != 0:
            self.warpers.append(TopKLogitsWarper(options.top_k))
        if options.do_sample and options.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(options.top_p))
        self.stop = StopStringCriteria(tokenizer, list(options.stop)) if options.stop else None
        self.eos = tokenizer.eos_token_id

    def next(self, generated: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(B, t) ids so far, (B, V) fp32 logits → (B,) next ids."""
        scores = self.warpers(generated, logits)
        if self.sample:
            return torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)
        return scores.argmax(dim=-1)

    def ended(self, generated: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the row's last id is EOS or its text ends with a stop string."""
        ended = generated[:, -1] == self.eos
        if self.stop is not None:
            ended |= self.stop(generated, logits)
        return ended


def _decode(llm, stack: _Stack, step: _Step, max_new_tokens: int) -> list[list[int]]:
    """Decode a prefilled batch step by step → new ids per row, each cut before its EOS."""
    rows, width = len(stack.lengths), stack.width
    cache = _cache_of(llm, stack.layers)
    logits = torch.stack(stack.logits)  # (B, V)
    device = logits.device
    mask = torch.zeros(rows, width, dtype=torch.long, device=device)  # (B, L_max + t)
    for row, length in enumerate(stack.lengths):
        mask[row, width - length :] = 1
    positions = torch.tensor(stack.lengths, device=device)  # (B,) true position of the next id
    generated = torch.zeros(rows, 0, dtype=torch.long, device=device)  # (B, t)
    running = torch.ones(rows, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        ids = torch.where(running, step.next(generated, logits), step.eos)  # ended rows: EOS
        generated = torch.cat([generated, ids[:, None]], dim=1)
        running &= ~step.ended(generated, logits)
        if t + 1 == max_new_tokens or not running.any():
            break
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        out = llm(
            input_ids=ids[:, None],
            attention_mask=mask,
            position_ids=positions[:, None],
            cache_position=torch.tensor([width + t], device=device),
            past_key_values=cache,
            use_cache=True,
        )
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        positions = positions + 1
    results = []
    for row in generated.tolist():
        results.append(row[: row.index(step.eos)] if step.eos in row else row)
    return results


def cut_stop(text: str, stops: Sequence[str]) -> str:
    """Drop the stop string generation ended on (EOS is already removed)."""
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)].strip()
    return text
