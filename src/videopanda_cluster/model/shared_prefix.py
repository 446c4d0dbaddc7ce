"""Generation with each video's prefix prefilled once (``GenerationOptions.share_prefix``).

A prompt is its video's prefix (system prompt + ``USER:`` + frame tokens) and its own suffix
(question + ``ASSISTANT:``). Per batch of prompts (sorted by length):

1. prefill: each prefix once, unpadded at batch 1 (sdpa's causal fast path);
2. stack: one (B, H, L_max + max_new_tokens, d) key and value buffer per layer, the prompts
   left-padded in it (zeros on the pads): a prompt's row gets a copy of its prefix's cache,
   then its suffix is prefilled after it, unpadded, written in place;
3. decode: all rows together, one token per step: attention mask 0 on the pads, each row at its
   true position (as ``llm.generate`` does for left-padded batches), tokens chosen as
   ``llm.generate`` chooses them, new keys and values written in place.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import cast

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    StopStringCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from .generation import GenerationOptions, Prompt


@torch.no_grad()
def generate_shared(
    llm,
    tokenizer,
    prefixes: Sequence[torch.Tensor],
    prompts: Sequence[Prompt],
    options: GenerationOptions,
) -> list[list[int]]:
    """:func:`~.generation.generate` with each prefix prefilled once (module docstring).

    Prompts are sorted by prefix length, then video, then suffix length, and cut into batches
    of ``batch_size``: similar lengths share a batch (few pads) and a video's prompts are
    consecutive, so one prefix cache at most is alive (it is dropped after its video's last
    prompt is prefilled). Greedy ids equal those of
    :func:`~.generation.generate_padded` (the same positions, masks and arithmetic up to float
    summation order). Sampling with a ``seed`` draws each prompt's tokens from its own generator,
    seeded by the seed and the prompt's content (:func:`_row_seeds`): a sampled answer is the
    same whatever prompts share its batch, but not the stream ``llm.generate`` would draw.
    """
    seeds = None
    if options.do_sample and options.seed is not None:
        seeds = _row_seeds(prefixes, prompts, options.seed)
    step = _Step(tokenizer, options)
    lengths = [prefixes[p.prefix].shape[0] + p.suffix.shape[0] for p in prompts]

    def key(i: int) -> tuple[int, int, int]:
        v = prompts[i].prefix
        return prefixes[v].shape[0], v, lengths[i]

    order = sorted(range(len(prompts)), key=key)
    left = Counter(p.prefix for p in prompts)  # prompts still to prefill, per prefix
    caches: dict[int, DynamicCache] = {}
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), options.batch_size):
        batch = order[start : start + options.batch_size]
        stack = _Stack([lengths[i] for i in batch], options.max_new_tokens)
        for row, i in enumerate(batch):
            v = prompts[i].prefix
            if v not in caches:
                caches[v] = DynamicCache(config=llm.config)
                _prefill(llm, prefixes[v], caches[v])
            stack.prefill(llm, row, caches[v], prompts[i].suffix)
            left[v] -= 1
            if not left[v]:
                del caches[v]
        rngs = None
        if seeds is not None:
            device = prefixes[0].device
            rngs = [torch.Generator(device=device).manual_seed(seeds[i]) for i in batch]
        decoded = _decode(llm, stack, step, options.max_new_tokens, rngs)
        for i, ids in zip(batch, decoded, strict=True):
            results[i] = ids
    return results


def _row_seeds(prefixes: Sequence[torch.Tensor], prompts: Sequence[Prompt], seed: int) -> list[int]:
    """A sampling seed per prompt from ``seed`` and the prompt's content (its video's prefix
    and its suffix embeddings)."""
    digests: dict[int, str] = {}
    seeds = []
    for prompt in prompts:
        if prompt.prefix not in digests:
            digests[prompt.prefix] = _digest(prefixes[prompt.prefix])
        key = f"{seed}|{digests[prompt.prefix]}|{_digest(prompt.suffix)}".encode()
        seeds.append(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
    return seeds


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def _tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (B, H, L, d) keys and values of each layer of a filled cache."""
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    if any(k is None or v is None for k, v in layers):
        raise ValueError("the cache has a layer without keys or values")
    return cast(list[tuple[torch.Tensor, torch.Tensor]], layers)


def _prefill(llm, embeds: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Run (L, D) ``embeds`` as one unpadded sequence after what ``cache`` holds (appended to
    it) → the last position's logits (V,) in fp32. On an empty cache the attention is plain
    causal (sdpa's ``is_causal`` path)."""
    start = cache.get_seq_length()
    positions = torch.arange(start, start + embeds.shape[0], device=embeds.device)
    mask = None  # causal
    if start:  # query i sees keys 0 … start + i: (1, 1, L, start + L)
        keys = torch.arange(start + embeds.shape[0], device=embeds.device)
        mask = _additive(keys[None, :] <= positions[:, None], embeds.dtype)[None, None]
    out = llm(
        inputs_embeds=embeds[None],
        attention_mask=mask,
        position_ids=positions[None],
        cache_position=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[0, -1].float()


class _Stack:
    """One batch's prompts prefilled into (B, H, L_max + room, d) key and value buffers per
    layer, left-padded (zeros on the pads), with their last logits (B, V). ``room``: the
    positions decoding appends in place."""

    def __init__(self, lengths: Sequence[int], room: int) -> None:
        self.lengths = list(lengths)
        self.width, self.room = max(self.lengths), room
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.logits: list[torch.Tensor] = []

    def prefill(self, llm, row: int, prefix: DynamicCache, suffix: torch.Tensor) -> None:
        """Copy the (1, H, P, d) ``prefix`` cache into ``row``, then prefill the (S, D)
        ``suffix`` after it, its keys and values written in place."""
        shared = _tensors(prefix)
        if not self.layers:
            _, heads, _, dim = shared[0][0].shape
            shape = (len(self.lengths), heads, self.width + self.room, dim)
            self.layers = [(k.new_zeros(shape), v.new_zeros(shape)) for k, v in shared]
        pad, length = self.width - self.lengths[row], shared[0][0].shape[2]
        for (keys, values), (k, v) in zip(self.layers, shared, strict=True):
            keys[row, :, pad : pad + length] = k[0]
            values[row, :, pad : pad + length] = v[0]
        views = [(k[row : row + 1, :, pad:], v[row : row + 1, :, pad:]) for k, v in self.layers]
        self.logits.append(_prefill(llm, suffix, _appending(llm, views, length)))


class _Step:
    """Choosing the next token as ``llm.generate`` does: fp32 logits → temperature, top-k, top-p
    warpers (sampling only) → argmax or a multinomial draw; a row ends at EOS or a stop string."""

    def __init__(self, tokenizer, options: GenerationOptions) -> None:
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

    def next(
        self,
        generated: torch.Tensor,
        logits: torch.Tensor,
        rngs: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """(B, t) ids so far, (B, V) fp32 logits → (B,) next ids; a sampled row draws from its
        generator in ``rngs`` when given (else from torch's global one)."""
        scores = self.warpers(cast(torch.LongTensor, generated), cast(torch.FloatTensor, logits))
        if not self.sample:
            return scores.argmax(dim=-1)
        probs = scores.softmax(dim=-1)
        if rngs is None:
            return torch.multinomial(probs, num_samples=1).squeeze(1)
        rows = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, rngs, strict=True)]
        return torch.cat(rows)

    def ended(self, generated: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the row's last id is EOS or its text ends with a stop string."""
        ended = generated[:, -1] == self.eos
        if self.stop is not None:
            ended |= self.stop(generated, logits)
        return ended


def _appending(
    llm, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], length: int
) -> DynamicCache:
    """A cache over per-layer (B, H, capacity, d) buffers whose first ``length`` positions are
    filled; new keys and values are written in place after them."""
    cache = DynamicCache(config=llm.config)
    cache.layers = [_Appending(keys, values, length) for keys, values in layers]
    return cache


class _Appending(DynamicLayer):
    """A cache layer over preallocated (B, H, capacity, d) buffers, the first ``length``
    positions filled: ``update`` writes the new positions in place and returns views of the
    filled part (``DynamicLayer`` copies the whole cache into a new tensor at every step)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self.lazy_initialization(keys)
        self.buffers, self.length = (keys, values), length
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states, value_states, cache_kwargs=None):
        end = self.length + key_states.shape[-2]
        keys, values = self.buffers
        keys[:, :, self.length : end] = key_states
        values[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A prepared attention mask as transformers' eager path builds it: 0 where ``allowed``,
    the dtype's minimum elsewhere. Passed 4-D, it skips transformers' per-call mask building."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def _decode(
    llm,
    stack: _Stack,
    step: _Step,
    max_new_tokens: int,
    rngs: Sequence[torch.Generator] | None = None,
) -> list[list[int]]:
    """Decode a prefilled batch step by step → new ids per row, each cut before its EOS
    (sampled rows draw from their ``rngs``)."""
    rows, width = len(stack.lengths), stack.width
    cache = _appending(llm, stack.layers, width)
    logits = torch.stack(stack.logits)  # (B, V)
    device = logits.device
    positions = torch.tensor(stack.lengths, device=device)  # (B,) true position of the next id
    real = torch.arange(width, device=device)[None, :] >= (width - positions)[:, None]
    mask = _additive(real, stack.layers[0][0].dtype)[:, None, None]  # (B, 1, 1, L_max + t)
    generated = torch.zeros(rows, 0, dtype=torch.long, device=device)  # (B, t)
    running = torch.ones(rows, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        ids = torch.where(running, step.next(generated, logits, rngs), step.eos)  # ended rows: EOS
        generated = torch.cat([generated, ids[:, None]], dim=1)
        running &= ~step.ended(generated, logits)
        if t + 1 == max_new_tokens or not running.any():
            break
        mask = torch.cat([mask, mask.new_zeros(rows, 1, 1, 1)], dim=-1)
        out = llm(
            input_ids=ids[:, None],
            attention_mask=mask,
            position_ids=positions[:, None],
            cache_position=torch.tensor([width + t], device=device),
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1].float()
        positions = positions + 1
    results = []
    for row in generated.tolist():
        results.append(row[: row.index(step.eos)] if step.eos in row else row)
    return results
