"""VideoPanda: STAB + projector + Llama, with the library API users call.

pixels (N, 8, 4, 448, 448) -> 2 clips of 4 frames per video -> STAB -> projector
-> per video: frame-major tokens, each frame [CTX, rows with split tokens]
-> spliced at the 8 placeholder ids of the prompt -> LlamaForCausalLM.generate
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from .config import AttentionImpl, VideoPandaConfig, check_attention
from .generation import (
    GenerationOptions,
    Prompt,
    Prompts,
    PromptTooLong,
    check_context,
    context_limit,
    cut_stop,
    generate,
    splice,
    split_point,
)
from .projector import build_projector
from .prompt import SYSTEM_PROMPT_EVAL, decode_new_tokens, prompt_ids
from .stab import STAB

if TYPE_CHECKING:  # transformers is imported only with the LLM
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

    from .checkpoint import LoadReport


class VideoPanda(nn.Module):
    """The whole model. ``video_tower`` is the STAB module; ``llm`` a transformers Llama."""

    load_report: LoadReport  # set by load_pretrained only

    def __init__(self, config: VideoPandaConfig, with_llm: bool = True) -> None:
        """``with_llm=False``: the visual path only (``llm`` is None, transformers not imported),
        for workers that only encode video."""
        super().__init__()
        self.config = config
        self.video_tower = STAB(config)
        self.video_projector = build_projector(
            config.projector_type, config.stab_width, config.llm_width
        )
        self.llm: LlamaForCausalLM | None = None
        if with_llm:
            from transformers import LlamaForCausalLM

            llama = config.to_llama_config()
            llama._attn_implementation = (
                "eager"  # softmax in fp32, as the reference (transformers 4.31)
            )
            self.llm = LlamaForCausalLM(llama)
        self.tokenizer: PreTrainedTokenizerBase | None = None  # set by from_pretrained

    def set_attention(self, implementation: AttentionImpl) -> None:
        """The Llama's attention: "eager" (the reference's numerics, the default) or "sdpa"."""
        implementation = check_attention(implementation)
        if self.llm is not None:  # an encode-only model has no Llama to set
            self.llm.set_attn_implementation(implementation)

    # aliases of the reference (same objects, not registered twice)
    @property
    def vision_tower(self) -> STAB:
        return self.video_tower

    @property
    def mm_projector(self) -> nn.Module:
        return self.video_projector

    @property
    def device(self) -> torch.device:
        return self.video_tower.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.video_tower.dtype

    # -- vision ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_frames(self, pixels: torch.Tensor) -> tuple[list[list[torch.Tensor]], list]:
        """(N, F, 4, H, W) → per video, per frame projected tokens (1 + h(w+1), D), and grids.

        All clips of all videos go through one STAB call.
        """
        n, f = pixels.shape[:2]
        chunk = self.config.chunk_size
        if f % chunk:
            raise ValueError(f"{f} frames per video is not a multiple of chunk_size {chunk}")
        clips = pixels.reshape(n * f // chunk, chunk, *pixels.shape[2:]).to(self.device)
        frames, grids = self.video_tower(clips)
        lengths = [t.shape[0] for t in frames]
        projected = self.video_projector(torch.cat(frames)).split(lengths)
        per_video = [list(projected[v * f : (v + 1) * f]) for v in range(n)]
        return per_video, [grids[v * f : (v + 1) * f] for v in range(n)]

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Projected visual tokens, frame-major with CTX first (spec §1.3).

        (8, 4, H, W) → one (L, D) tensor; (N, 8, 4, H, W) → a list of N such tensors.
        """
        single = pixels.dim() == 4
        per_video, _ = self.encode_frames(pixels[None] if single else pixels)
        tokens = [torch.cat(frames) for frames in per_video]
        return tokens[0] if single else tokens

    # -- language --------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(
        self,
        videos: torch.Tensor | Sequence[torch.Tensor],
        questions: Sequence[str] | Sequence[Sequence[str]],
        system: str = SYSTEM_PROMPT_EVAL,
        **generation,
    ) -> list[str] | list[list[str]]:
        """Answer questions about videos; each video is encoded once for all its questions.

        ``videos``: (N, 8, 4, H, W) or N tensors (8, 4, H, W). ``questions``: one string per
        video (returns N strings) or a list of strings per video (returns N lists).
        ``generation``: fields of :class:`GenerationOptions` (greedy by default). Questions are
        plain text (see :func:`prompt_ids`); one too long for the model's context raises
        :class:`~videopanda_cluster.model.generation.PromptTooLong`.
        """
        options = GenerationOptions(**generation)
        stacked = videos if isinstance(videos, torch.Tensor) else torch.stack(list(videos))
        if len(questions) != stacked.shape[0]:
            raise ValueError(f"{stacked.shape[0]} videos but {len(questions)} question entries")
        nested = [[q] if isinstance(q, str) else list(q) for q in questions]
        self._language()
        per_video, _ = self.encode_frames(stacked)
        grouped: list[list[str]] = []
        for answers in self.answer_frames(per_video, nested, options, system):
            grouped.append([])
            for answer in answers:
                if isinstance(answer, PromptTooLong):
                    raise answer
                grouped[-1].append(answer)
        if all(isinstance(q, str) for q in questions):
            return [g[0] for g in grouped]
        return grouped

    @torch.no_grad()
    def answer_frames(
        self,
        frames: Sequence[Sequence[torch.Tensor]],
        questions: Sequence[Sequence[str]],
        options: GenerationOptions,
        system: str = SYSTEM_PROMPT_EVAL,
    ) -> list[list[str | PromptTooLong]]:
        """The one answer path (prompt → splice → generate → decode), of :meth:`answer` and the
        pipeline's generate stage: per video, its projected frame tokens and its questions →
        one answer per question. A prompt too long for the model's context gets its
        :class:`PromptTooLong` in place of the answer; the others are answered. With
        ``options.share_prefix`` a video's prefix is prefilled once for all its questions."""
        llm, tokenizer = self._language()
        batch = self.build_prompts(frames, questions, options.max_new_tokens, system)
        outputs = generate(llm, tokenizer, batch.prefixes, batch.prompts, options)
        return [
            [
                place
                if isinstance(place, PromptTooLong)
                else cut_stop(decode_new_tokens(tokenizer, outputs[place]), options.stop)
                for place in places
            ]
            for places in batch.places
        ]

    def build_prompts(
        self,
        frames: Sequence[Sequence[torch.Tensor]],
        questions: Sequence[Sequence[str]],
        max_new_tokens: int,
        system: str = SYSTEM_PROMPT_EVAL,
    ) -> Prompts:
        """The prompts of :meth:`answer_frames`: per video its prefix (system prompt + frames,
        spliced once), per question that fits the context its suffix."""
        llm, tokenizer = self._language()
        embed = cast(nn.Embedding, llm.get_input_embeddings())
        limit = context_limit(llm)
        batch = Prompts()
        for video_frames, qs in zip(frames, questions, strict=True):
            batch.places.append([])
            prefix_ids: list[int] | None = None
            for q in qs:
                ids = prompt_ids(q, len(video_frames), tokenizer, system)
                try:
                    check_context(ids, video_frames, max_new_tokens, limit)
                except PromptTooLong as exc:
                    batch.places[-1].append(exc)
                    continue
                k = split_point(ids)
                if prefix_ids is None:
                    prefix_ids = ids[:k]
                    batch.prefixes.append(splice(embed, prefix_ids, video_frames))
                elif ids[:k] != prefix_ids:  # prompt_ids tokenises the question on its own
                    raise AssertionError("the questions of a video have different prefixes")
                batch.places[-1].append(len(batch.prompts))
                batch.prompts.append(Prompt(len(batch.prefixes) - 1, splice(embed, ids[k:], [])))
        return batch

    def _language(self) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
        """The Llama and the tokenizer, which answering needs."""
        if self.llm is None:
            raise RuntimeError("no language model: the model was loaded with with_llm=False")
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer: load the model with VideoPanda.from_pretrained")
        return self.llm, self.tokenizer

    # -- checkpoints -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        strict: bool = True,
        with_llm: bool = True,
    ) -> VideoPanda:
        """Load an HF-layout folder (released Video-Panda-7B or ours); see ``checkpoint.py``.
        ``with_llm=False`` loads only the visual path (STAB + projector)."""
        from .checkpoint import load_pretrained

        return load_pretrained(path, device=device, dtype=dtype, strict=strict, with_llm=with_llm)

    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 2 * 2**30) -> None:
        """Write config.json, safetensors shards (checkpoint key names) and the tokenizer."""
        from .checkpoint import save_pretrained

        save_pretrained(self, path, max_shard_bytes)
