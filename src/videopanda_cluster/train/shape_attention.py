"""The shape-attention loss (training only; a deliberate addition, not in the reference).

A finetune of the bundled small model from random weights learns to read colour all or nothing
(docs/training.md, "Eighteenth round"). In the runs that fail, the answering position's heads in
the Llama's last layer attend to the video's background cells, not to its shapes, so the colour
that the shape cells' states hold never reaches the answer; in the runs that learn, three of four
heads put over 90% of their attention on the shape cells. This loss asks for that directly: at
every position that predicts an answer token, the attention of Llama layer ``layer`` (1-based),
averaged over its heads, should fall on the video's shape cells:

    L_attend = Σ_answer positions −log(mean_heads Σ_shape cells attention + eps)

Which cells hold a shape is read off the scene teacher's targets (``scene_teacher.py``): a cell
whose colour channels (each shape's cover at weight 1) sum to at least :data:`SHAPE_COVER`. Like
the teacher and the warm-up it uses the corpus's ground truth in training only. The attention
rows are recomputed from the layer's input hidden state (the same projections, RoPE and scaling
as the layer), so training keeps its fused attention; the loss has no parameters of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .distill import FrameTarget

SHAPE_COVER = 0.1  # share of a cell a shape must cover for the cell to count as the shape's
COLOUR_PREFIX = "colour:"  # the scene teacher's per-colour cover channels (weight 1)
EPS = 1e-6


def shape_channels(channels: Sequence[str] | None) -> list[int]:
    """The indices of the teacher's colour cover channels; ValueError if it has none."""
    found = [i for i, name in enumerate(channels or ()) if name.startswith(COLOUR_PREFIX)]
    if not found:
        raise ValueError(
            "the shape-attention loss needs the scene teacher (videopanda synth-teacher): its "
            f"'{COLOUR_PREFIX}*' channels mark the shape cells; this teacher has "
            f"{list(channels) if channels else 'no channel names'}"
        )
    return found


def shape_positions(frames: Sequence[FrameTarget], channels: Sequence[int]) -> dict[int, Any]:
    """Per batch row, the sequence positions of its counted frames' shape cells."""
    out: dict[int, list[torch.Tensor]] = {}
    for frame in frames:
        cover = frame.target[:, list(channels)].sum(dim=1)  # (h·w,)
        out.setdefault(frame.row, []).append(frame.positions[(cover >= SHAPE_COVER).cpu()])
    return {row: torch.cat(parts) for row, parts in out.items()}


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


class ShapeAttentionLoss:
    """The summed loss over the answer positions of a batch (module docstring)."""

    def __init__(self, layer: int, channels: Sequence[int]) -> None:
        if layer < 1:
            raise ValueError(f"the attended layer is 1-based, got {layer}")
        self.layer, self.channels = layer, list(channels)

    def loss_sum(
        self,
        llm: Any,
        hidden_states: Sequence[torch.Tensor],
        position_ids: torch.Tensor,
        answers: dict[int, list[int]],
        frames: Sequence[FrameTarget],
    ) -> torch.Tensor:
        """``answers``: per batch row, the positions that predict an answer token; rows
        without a shape cell add nothing."""
        if self.layer > len(llm.model.layers):
            raise ValueError(f"layer {self.layer} of a {len(llm.model.layers)}-layer Llama")
        cells = shape_positions(frames, self.channels)
        total = hidden_states[0].new_zeros((), dtype=torch.float32)
        for row, positions in answers.items():
            shape = cells.get(row)
            if not positions or shape is None or not len(shape):
                continue
            queries = torch.tensor(positions, device=hidden_states[0].device)
            probs = attention_rows(
                llm, hidden_states[self.layer - 1][row], position_ids[row], self.layer, queries
            )
            mass = probs[:, :, shape.to(probs.device)].sum(dim=-1).mean(dim=0)  # (Q,)
            total = total - torch.log(mass + EPS).sum()
        return total
