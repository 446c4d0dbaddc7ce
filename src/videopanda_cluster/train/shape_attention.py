"""The shape-attention loss (training only; a deliberate addition, not in the reference).

A finetune of the bundled small model from random weights learns to read colour all or nothing
(docs/training.md, "Eighteenth round"). In the runs that fail, the answering position's heads in
the Llama's last layer attend to the video's background cells, not to its shapes, so the colour
that the shape cells' states hold never reaches the answer; in the runs that learn, three of four
heads put over 90% of their attention on the shape cells. This loss asks for that directly: at
every position that predicts an answer token, the attention of Llama layer ``layer`` (1-based),
averaged over its heads, should fall on the cells of the shape the question asks about, the shape
its ``focus`` word names ("circle" in "What colour is the circle?", "red" in "What shape is the
red object?"). In an answer without a focus word (a caption, "first", count) each position looks
at the shape of the word it predicts: the colour or kind it names, or for a motion word
("moves", "left", "still") the shape of the phrase it is in, so writing "a red circle moves
left and a green ..." looks at the red circle and then at the green shape. Elsewhere, and for a
word that names what is not there, it asks for all shape cells:

    L_attend = Σ_answer positions −log(mean_heads Σ_asked cells attention + eps)

Which cells hold a shape is read off the scene teacher's targets (``scene_teacher.py``): a cell
whose colour channels (each shape's cover at weight 1) sum to at least :data:`SHAPE_COVER`, which
belongs to the words of its largest ``kind:`` and its largest ``colour:`` channel. Like the
teacher and the warm-up it uses the corpus's ground truth in training only. The attention
rows are recomputed from the layer's input hidden state (the same projections, RoPE and scaling
as the layer), so training keeps its fused attention; the loss has no parameters of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .data import FocusedAnswer
from .distill import FrameTarget
from .synth import MOTION_WORDS

SHAPE_COVER = 0.1  # share of a cell a shape must cover for the cell to count as the shape's
COLOUR_PREFIX = "colour:"  # the scene teacher's per-colour cover channels (weight 1)
KIND_PREFIX = "kind:"  # its per-kind cover channels (weighted)
EPS = 1e-6


def _group(channels: Sequence[str], prefix: str) -> list[int]:
    return [i for i, name in enumerate(channels) if name.startswith(prefix)]


def check_channels(channels: Sequence[str] | None) -> tuple[str, ...]:
    """The teacher's channel names, if they have the cover channels the loss reads."""
    if not channels or not _group(channels, COLOUR_PREFIX) or not _group(channels, KIND_PREFIX):
        raise ValueError(
            "the shape-attention loss needs the scene teacher (videopanda synth-teacher): its "
            f"'{COLOUR_PREFIX}*' and '{KIND_PREFIX}*' channels mark the shape cells; this teacher "
            f"has {list(channels) if channels else 'no channel names'}"
        )
    return tuple(channels)


@dataclass
class ShapeCells:
    """One batch row's shape cells: all of them, and those of each kind and colour word."""

    all: torch.Tensor  # (n,) sequence positions
    by_word: dict[str, torch.Tensor]

    def asked(self, word: str | None) -> torch.Tensor:
        """The cells of the shape ``word`` names, or all shape cells if it names none here."""
        found = self.by_word.get(word) if word is not None else None
        return found if found is not None and len(found) else self.all


def shape_cells(frames: Sequence[FrameTarget], channels: Sequence[str]) -> dict[int, ShapeCells]:
    """Per batch row, the shape cells of its counted frames (module docstring)."""
    colours, kinds = _group(channels, COLOUR_PREFIX), _group(channels, KIND_PREFIX)
    found: dict[int, list[torch.Tensor]] = {}
    owners: dict[int, dict[str, list[int]]] = {}
    for frame in frames:
        target = frame.target.float().cpu()
        covered = target[:, colours].sum(dim=1) >= SHAPE_COVER  # (h·w,)
        positions = frame.positions.cpu()[covered]
        found.setdefault(frame.row, []).append(positions)
        row = owners.setdefault(frame.row, {})
        for group in (kinds, colours):
            best = target[covered][:, group].argmax(dim=1).tolist()
            for position, index in zip(positions.tolist(), best, strict=True):
                word = channels[group[index]].split(":", 1)[1]
                row.setdefault(word, []).append(position)
    return {
        row: ShapeCells(torch.cat(parts), {w: torch.tensor(p) for w, p in owners[row].items()})
        for row, parts in found.items()
    }


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_rows(
    llm: Any, hidden: torch.Tensor, position_ids: torch.Tensor, layer: int, queries: torch.Tensor
) -> torch.Tensor:
    """Causal attention probabilities of Llama layer ``layer`` (1-based) for one sequence.

    ``hidden`` (L, d): that layer's input hidden state (``hidden_states[layer - 1]``);
    ``position_ids`` (L,); ``queries`` (Q,) positions → (heads, Q, L), zero after each query.
    """
    block = llm.model.layers[layer - 1]
    attn = block.self_attn
    x = block.input_layernorm(hidden)  # (L, d)
    head_dim = attn.head_dim
    q = attn.q_proj(x[queries]).view(len(queries), -1, head_dim)  # (Q, H, hd)
    k = attn.k_proj(x).view(x.shape[0], -1, head_dim)  # (L, Hkv, hd)
    cos, sin = llm.model.rotary_emb(x[None], position_ids[None])  # (1, L, hd) each
    cos, sin = cos[0, :, None].to(q.dtype), sin[0, :, None].to(q.dtype)
    q = q * cos[queries] + _rotate_half(q) * sin[queries]
    k = k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query heads
    scores = torch.einsum("qhd,lhd->hql", q, k).float() * attn.scaling  # (H, Q, L)
    future = torch.arange(x.shape[0], device=x.device)[None] > queries[:, None].to(x.device)
    return scores.masked_fill(future[None], float("-inf")).softmax(dim=-1)


def attended_mass(
    llm: Any,
    hidden: torch.Tensor,
    position_ids: torch.Tensor,
    layer: int,
    asked: Sequence[tuple[int, Any]],
    heads: Literal["mean", "max"] = "mean",
) -> torch.Tensor:
    """(Q,) the attention of each asked position of one sequence on its target positions (any
    index of a position row), averaged over layer ``layer``'s heads or the best head's
    (``heads="max"``). ``hidden``, ``position_ids``: as for :func:`attention_rows`."""
    queries = torch.tensor([p for p, _ in asked], device=hidden.device)
    probs = attention_rows(llm, hidden, position_ids, layer, queries)  # (H, Q, L)
    mask = torch.zeros(len(asked), probs.shape[-1], dtype=torch.bool)
    for n, (_, where) in enumerate(asked):
        mask[n, where] = True
    mass = (probs * mask.to(probs.device)).sum(dim=-1)  # (H, Q)
    return mass.amax(dim=0) if heads == "max" else mass.mean(dim=0)


def attention_nll(
    llm: Any,
    hidden_states: Sequence[torch.Tensor],
    position_ids: torch.Tensor,
    layer: int,
    targets: Mapping[int, Sequence[tuple[int, Any]]],
    heads: Literal["mean", "max"] = "mean",
) -> torch.Tensor:
    """Σ −log(attended mass + eps) over ``targets`` (per batch row, each asked position with its
    target positions; rows without any add nothing), the attention being layer ``layer``'s
    (1-based) as :func:`attended_mass` reads it from the Llama's L + 1 hidden states."""
    if layer > len(llm.model.layers):
        raise ValueError(f"layer {layer} of a {len(llm.model.layers)}-layer Llama")
    total = hidden_states[0].new_zeros((), dtype=torch.float32)
    for row, asked in targets.items():
        if asked:
            hidden = hidden_states[layer - 1][row]
            mass = attended_mass(llm, hidden, position_ids[row], layer, asked, heads)  # (Q,)
            total = total - torch.log(mass + EPS).sum()
    return total


def token_words(tokenizer: Any, words: Sequence[str]) -> dict[int, str]:
    """The ids of the tokenizer's tokens that are one of ``words`` on their own."""
    wanted = set(words)
    decoded = ((i, tokenizer.decode([i]).strip().lower()) for i in range(len(tokenizer)))
    return {i: word for i, word in decoded if word in wanted}


def predicted_words(
    answers: Sequence[FocusedAnswer], labels: torch.Tensor, vocab: Mapping[int, str]
) -> list[tuple[int, str | None]]:
    """``answers``: each answer's span with its focus word (``data.answer_focus``); ``labels``
    (L,); ``vocab``: token id → shape or motion word → each answer position with its word. A
    position of an answer without a focus word gets the shape word of the token it predicts, or
    for a motion word the last shape word before it in its answer (module docstring)."""
    found: list[tuple[int, str | None]] = []
    for span, focus in answers:
        current = None
        for position in span:
            word = focus
            if word is None:
                token = vocab.get(int(labels[position + 1]))
                if token is not None and token not in MOTION_WORDS:
                    current = token
                word = current if token is not None else None
            found.append((position, word))
    return found


class ShapeAttentionLoss:
    """The summed loss over the answer positions of a batch (module docstring)."""

    def __init__(self, layer: int, channels: Sequence[str] | None, tokenizer: Any = None) -> None:
        if layer < 1:
            raise ValueError(f"the attended layer is 1-based, got {layer}")
        self.layer, self.channels = layer, check_channels(channels)
        shapes = [
            c.split(":", 1)[1] for c in self.channels if c.startswith((COLOUR_PREFIX, KIND_PREFIX))
        ]
        self.vocab = token_words(tokenizer, [*shapes, *MOTION_WORDS]) if tokenizer else {}

    def targets(
        self, answers: Sequence[FocusedAnswer], labels: torch.Tensor
    ) -> list[tuple[int, str | None]]:
        """Each answer position with the word of the shape it should look at (None: all)."""
        return predicted_words(answers, labels, self.vocab)

    def loss_sum(
        self,
        llm: Any,
        hidden_states: Sequence[torch.Tensor],
        position_ids: torch.Tensor,
        answers: dict[int, list[tuple[int, str | None]]],
        frames: Sequence[FrameTarget],
    ) -> torch.Tensor:
        """``answers``: per batch row, each position that predicts an answer token with the
        focus word of its question (or None); rows without a shape cell add nothing."""
        cells = shape_cells(frames, self.channels)
        targets = {
            row: [(position, shapes.asked(word)) for position, word in asked]
            for row, asked in answers.items()
            if (shapes := cells.get(row)) is not None and len(shapes.all)
        }
        return attention_nll(llm, hidden_states, position_ids, self.layer, targets)
