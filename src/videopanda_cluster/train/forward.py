"""The training forward pass as one module (so DDP can wrap it): video → tokens → summed CE,
plus the optional distillation term (spec §7.3, ``distill.py``), the optional question-focus
term (below), the optional shape-attention term (``shape_attention.py``) and the optional
question-copy term (``question_copy.py``), each summed and added to the summed CE.

Question focus (training only; a deliberate addition, not in the reference): a Llama trained from
random weights does not learn to carry the word a question is about ("circle" in "What colour is the
circle?") to the position that answers, so it cannot look up that shape's colour among several
(docs/training.md, "Fifth round"; a pretrained Vicuna brings this skill along). For every answer
whose question has a ``focus`` word, a linear head on the hidden state after ``focus_layer`` layers
at each position that predicts a token of the answer is trained to name that word (at every one, not
only the first: an answer that repeats the word, "there is no circle", needs it where it writes it,
docs/training.md "Seventh round"); its summed cross-entropy, times ``focus_weight``, is added to the
summed CE, so it is normalised by the supervised tokens of the global batch like the CE. The head is
never exported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..model.compressor import VideoCompressor
from ..model.generation import splice
from ..model.modeling import VideoPanda
from ..model.prompt import IGNORE_INDEX
from .data import Overflow, Sample, answer_focus, expand_labels, fit_length, pad_batch
from .distill import DistillStats, FrameTarget, TeacherFeatures, distill_sum, frame_targets
from .question_copy import QuestionCopyLoss, spliced_ids
from .shape_attention import ShapeAttentionLoss


class TrainingModel(nn.Module):
    """Wraps :class:`VideoPanda` for training.

    STAB runs once per video (its clips together), so BatchNorm statistics cover one video as in
    the reference and do not depend on how samples are grouped into batches; each video's dropout
    is drawn after seeding with its sample seed, so it does not depend on the worker count either.

    ``compressor`` (training only, never part of :class:`VideoPanda`) enables distillation: the
    forward pass then adds ``distill_scale`` × Σ frame losses when given the teacher's
    ``targets``, and leaves that term's :class:`DistillStats` in ``distill_stats``.
    """

    def __init__(
        self,
        model: VideoPanda,
        compressor: VideoCompressor | None = None,
        focus: FocusHead | None = None,
        attend: ShapeAttentionLoss | None = None,
        question_copy: QuestionCopyLoss | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.video_tower_compressor = compressor
        self.focus_head = focus
        self.attend = attend
        self.question_copy = question_copy
        self.distill_stats: DistillStats | None = None
        # the last pass's unweighted sums of its token terms: "ce", and "focus" / "attend" /
        # "copy" when on
        self.term_sums: dict[str, float] = {}

    def encode(self, pixels: torch.Tensor, seed: int) -> list[torch.Tensor]:
        """(F, 4, S, S) → F projected frame token tensors, with gradients."""
        return self.encode_frames(pixels, seed)[0]

    def encode_frames(
        self, pixels: torch.Tensor, seed: int
    ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """(F, 4, S, S) → F projected frame token tensors (with gradients) and their (h, w)."""
        torch.manual_seed(seed)
        chunk = self.model.config.chunk_size
        clips = pixels.reshape(-1, chunk, *pixels.shape[1:]).to(self.model.device)
        frames, grids = self.model.video_tower(clips)
        lengths = [t.shape[0] for t in frames]
        return list(self.model.video_projector(torch.cat(frames)).split(lengths)), grids

    def forward(
        self,
        samples: Sequence[Sample],
        seeds: Sequence[int],
        max_length: int,
        overflow: Overflow,
        targets: Sequence[TeacherFeatures] | None = None,
        distill_scale: float = 0.0,
        focus_weight: float = 0.0,
        attend_weight: float = 0.0,
        copy_weight: float = 0.0,
    ) -> tuple[torch.Tensor, int, list[str | None]]:
        """Summed next-token CE over the supervised tokens (plus ``distill_scale`` × the summed
        distillation frame losses when distilling), the supervised token count, and each
        sample's length outcome (None, ``"truncated"`` or ``"too_long"`` when skipped).

        Distillation needs the compressor, ``targets`` (one per sample) and a nonzero
        ``distill_scale``; otherwise the pass is plain CE. The shape-attention term
        (``attend_weight`` × its sum) needs ``targets`` and the loss object too; the
        question-copy term (``copy_weight`` × its sum) needs its loss object.
        """
        compressor = self.video_tower_compressor if distill_scale != 0 else None
        attend = self.attend if attend_weight != 0 and targets is not None else None
        teacher = targets if compressor is not None or attend is not None else None
        distill = compressor is not None and teacher is not None
        if teacher is not None and len(teacher) != len(samples):
            raise ValueError(f"{len(teacher)} teacher targets for {len(samples)} samples")
        self.distill_stats = None
        self.term_sums = {}
        llm = self.model.llm
        if llm is None:
            raise ValueError("training needs a model with its Llama")
        embed = cast(nn.Embedding, llm.get_input_embeddings())
        embeds: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        outcomes: list[str | None] = []
        frames_of: list[FrameTarget] = []
        head = self.focus_head if focus_weight != 0 else None
        asked: list[tuple[int, int, int]] = []  # (row, position, class) of each focus answer
        answered: dict[int, list[tuple[int, str | None]]] = {}  # row → (position, focus word)
        copier = self.question_copy if copy_weight != 0 else None
        copied: dict[int, list[tuple[int, list[int]]]] = {}  # row → (position, word positions)
        for n, (sample, seed) in enumerate(zip(samples, seeds, strict=True)):
            frames, grids = self.encode_frames(sample.pixels, seed)
            lengths = [f.shape[0] for f in frames]
            sequence = splice(embed, sample.input_ids, frames)
            expanded = expand_labels(sample.labels, sample.input_ids, lengths)
            fitted = fit_length(sequence, expanded.to(sequence.device), max_length, overflow)
            outcomes.append("too_long" if fitted is None else fitted[2])
            if fitted is not None:
                if teacher is not None:
                    frames_of += frame_targets(
                        len(embeds),
                        sample,
                        lengths,
                        grids,
                        fitted[0].shape[0],
                        teacher[n],
                        self.model.config,
                    )
                if head is not None:
                    asked += head.targets(len(embeds), fitted[1], sample.focus)
                if attend is not None or copier is not None:
                    answers = answer_focus(fitted[1], sample.focus)
                    if attend is not None:
                        answered[len(embeds)] = attend.targets(answers, fitted[1])
                    if copier is not None:
                        ids = spliced_ids(sample.input_ids, lengths, fitted[0].shape[0])
                        copied[len(embeds)] = copier.targets(ids, answers)
                embeds.append(fitted[0])
                labels.append(fitted[1])
        if not embeds:  # nothing to learn from; a zero loss that still reaches every parameter
            zero = torch.zeros((), device=self.model.device)
            for p in self.parameters():
                if p.requires_grad:
                    zero = zero + p.flatten()[0] * 0
            if distill:
                self.distill_stats = DistillStats.empty(self.model.device)
            return zero, 0, outcomes
        batch = pad_batch(embeds, labels, side="right")
        labels_out = batch.pop("labels")[:, 1:]
        hidden = distill or bool(asked) or attend is not None or copier is not None
        # Pads on the right come after every real token, so the causal mask alone keeps them
        # from every real token: without the padding mask sdpa takes its causal kernel, which
        # skips the masked blocks. Real tokens' outputs are unchanged; pads' are ignored.
        batch.pop("attention_mask")
        out = llm(**batch, output_hidden_states=hidden)
        loss = F.cross_entropy(
            out.logits[:, :-1].float().flatten(0, 1),
            labels_out.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        self.term_sums["ce"] = float(loss.detach())
        if attend is not None:
            terms = attend.loss_sum(
                llm, out.hidden_states, batch["position_ids"], answered, frames_of
            )
            self.term_sums["attend"] = float(terms.detach())
            loss = loss + attend_weight * terms
        if copier is not None:
            copying = copier.loss_sum(llm, out.hidden_states, batch["position_ids"], copied)
            self.term_sums["copy"] = float(copying.detach())
            loss = loss + copy_weight * copying
        if compressor is not None and teacher is not None:
            stats = distill_sum(out.hidden_states, compressor, frames_of)
            self.distill_stats = stats
            loss = loss + distill_scale * stats.loss_sum
        if head is not None and asked:
            focused = head.loss_sum(out.hidden_states, asked)
            self.term_sums["focus"] = float(focused.detach())
            loss = loss + focus_weight * focused
        return loss, int((labels_out != IGNORE_INDEX).sum()), outcomes


class FocusHead(nn.Module):
    """The question-focus head: the Llama hidden state after ``layer`` layers at a position that
    predicts an answer token → which of ``words`` the question is about."""

    def __init__(self, width: int, words: Sequence[str], layer: int = 1) -> None:
        super().__init__()
        if not words:
            raise ValueError("the question-focus loss needs focus words in the data")
        self.words, self.layer = tuple(words), layer
        self.index = {w: i for i, w in enumerate(self.words)}
        self.linear = nn.Linear(width, len(self.words))

    def targets(
        self, row: int, labels: torch.Tensor, focus: Sequence[str | None]
    ) -> list[tuple[int, int, int]]:
        """(row, position, class) of the answers of one fitted sample that have a focus word
        (answers cut off by truncation have none)."""
        return [
            (row, pos, self.index[word])
            for span, word in answer_focus(labels, focus)
            if word is not None
            for pos in span
        ]

    def loss_sum(
        self, hidden_states: Sequence[torch.Tensor], asked: Sequence[tuple[int, int, int]]
    ) -> torch.Tensor:
        """Summed cross-entropy over ``asked``, from the Llama's L + 1 hidden states."""
        rows, cols, classes = (torch.tensor(x) for x in zip(*asked, strict=True))
        states = hidden_states[self.layer][rows, cols]  # (N, d_llm)
        logits = self.linear(states.to(self.linear.weight.dtype)).float()
        return F.cross_entropy(logits, classes.to(logits.device), reduction="sum")
