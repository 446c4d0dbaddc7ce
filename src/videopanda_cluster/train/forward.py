"""The training forward pass as one module (so DDP can wrap it): video → tokens → summed CE."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..model.generation import splice
from ..model.modeling import VideoPanda
from ..model.prompt import IGNORE_INDEX
from .data import Overflow, Sample, expand_labels, fit_length, pad_batch


class TrainingModel(nn.Module):
    """Wraps :class:`VideoPanda` for training.

    STAB runs once per video (its clips together), so BatchNorm statistics cover one video as in
    the reference and do not depend on how samples are grouped into batches; each video's dropout
    is drawn after seeding with its sample seed, so it does not depend on the worker count either.
    """

    def __init__(self, model: VideoPanda) -> None:
        super().__init__()
        self.model = model

    def encode(self, pixels: torch.Tensor, seed: int) -> list[torch.Tensor]:
        """(F, 4, S, S) → F projected frame token tensors, with gradients."""
        torch.manual_seed(seed)
        chunk = self.model.config.chunk_size
        clips = pixels.reshape(-1, chunk, *pixels.shape[1:]).to(self.model.device)
        frames, _ = self.model.video_tower(clips)
        lengths = [t.shape[0] for t in frames]
        return list(self.model.video_projector(torch.cat(frames)).split(lengths))

    def forward(
        self,
        samples: Sequence[Sample],
        seeds: Sequence[int],
        max_length: int,
        overflow: Overflow,
    ) -> tuple[torch.Tensor, int, list[str | None]]:
        """Summed next-token CE over the supervised tokens, their count, and each sample's
        length outcome (None, ``"truncated"`` or ``"too_long"`` when skipped)."""
        embed = self.model.llm.get_input_embeddings()
        embeds, labels, outcomes = [], [], []
        for sample, seed in zip(samples, seeds, strict=True):
            frames = self.encode(sample.pixels, seed)
            sequence = splice(embed, sample.input_ids, frames)
            expanded = expand_labels(sample.labels, sample.input_ids, [f.shape[0] for f in frames])
            fitted = fit_length(sequence, expanded.to(sequence.device), max_length, overflow)
            outcomes.append("too_long" if fitted is None else fitted[2])
            if fitted is not None:
                embeds.append(fitted[0])
                labels.append(fitted[1])
        if not embeds:  # nothing to learn from; a zero loss that still reaches every parameter
            zero = sum(p.flatten()[0] * 0 for p in self.parameters() if p.requires_grad)
            return zero, 0, outcomes
        batch = pad_batch(embeds, labels, side="right")
        targets = batch.pop("labels")[:, 1:]
        logits = self.model.llm(**batch).logits[:, :-1]
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return loss, int((targets != IGNORE_INDEX).sum()), outcomes
