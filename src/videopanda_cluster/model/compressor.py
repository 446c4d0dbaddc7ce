"""The distillation head (``VideoCompressor``, spec §7.3 step 3): LLM hidden states → teacher space.

Training only: inference never builds it, and checkpoint loading skips its keys
(``model.video_tower_compressor.*``). Parameter names equal those keys after that prefix:

    norm_layer.{j}.0.{weight,bias}   LayerNorm(d_llm)            j = 0..K-1, one per selected state
    norm_layer.{j}.1.weight          Linear(d_llm → d_teacher), no bias
    input_layer.{weight,bias}        Linear(d_llm → d_teacher)
    output_layer.{weight,bias}       Linear(d_teacher → d_teacher)

For a visual token with LLM hidden states H[0..L] (H[0] the input embeddings, H[k] the output of
layer k, H[L] the final RMSNorm output, as ``output_hidden_states`` gives them):

    u_j  = norm_layer[j](H[layer_idx[j]])                        (d_teacher,), j = 0..K-1
    attn = multi-head attention, query u_0, keys = values = u_1..u_{K-1},
           logits / sqrt(d_teacher) (the full width, not the head dim), softmax over the K-1 layers
    pred = input_layer(H[L]) + output_layer(attn)

with ``layer_idx = L - [0, s, 2s, ...]`` down to 0. The released model has L = 32, s = 4 (K = 9),
d_llm = 4096, d_teacher = 1024 and 8 heads of 128: 43,067,392 parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .config import VideoPandaConfig

REFERENCE_LAYERS = 32
REFERENCE_STRIDE = 4


def default_layer_stride(num_layers: int) -> int:
    """The reference's stride relative to depth: L // 8 (4 for 32 layers), at least 1."""
    return max(1, num_layers * REFERENCE_STRIDE // REFERENCE_LAYERS)


def select_layers(num_layers: int, stride: int | None = None) -> list[int]:
    """Hidden-state indices the compressor reads: ``L, L-s, L-2s, ...`` while ≥ 0.

    ``select_layers(32)`` is the reference's [32, 28, 24, 20, 16, 12, 8, 4, 0].
    """
    stride = default_layer_stride(num_layers) if stride is None else stride
    if num_layers < 1 or stride < 1:
        raise ValueError(f"need num_layers ≥ 1 and stride ≥ 1, got {num_layers} and {stride}")
    layers = list(range(num_layers, -1, -stride))
    if len(layers) < 2:
        raise ValueError(
            f"stride {stride} over {num_layers} layers selects only {layers}: the compressor "
            "needs a query state and at least one key state"
        )
    return layers


class VideoCompressor(nn.Module):
    """Predicts a teacher's patch features from the LLM hidden states of one visual token."""

    def __init__(
        self,
        llm_width: int,
        teacher_width: int,
        num_layers: int,
        layer_stride: int | None = None,
        num_heads: int = 8,
        eps: float = 1e-5,
    ) -> None:
        """``num_layers`` is L, the LLM's decoder layer count (it gives L + 1 hidden states)."""
        super().__init__()
        if teacher_width % num_heads:
            raise ValueError(f"teacher width {teacher_width} is not divisible by {num_heads} heads")
        self.llm_width = llm_width
        self.teacher_width = teacher_width
        self.num_heads = num_heads
        self.head_dim = teacher_width // num_heads
        self.layer_idx = select_layers(num_layers, layer_stride)
        self.norm_layer = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(llm_width, eps=eps), nn.Linear(llm_width, teacher_width, bias=False)
            )
            for _ in self.layer_idx
        )
        self.input_layer = nn.Linear(llm_width, teacher_width)
        self.output_layer = nn.Linear(teacher_width, teacher_width)

    @classmethod
    def for_model(cls, config: VideoPandaConfig, teacher_width: int, **kwargs) -> VideoCompressor:
        """A compressor for the LLM of ``config`` (its width and layer count)."""
        layers = int(config.llm["num_hidden_layers"])
        return cls(config.llm_width, teacher_width, layers, **kwargs)

    def select(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """The L + 1 hidden states, each (..., d_llm) → the selected ones (..., K, d_llm)."""
        expected = self.layer_idx[0] + 1
        if len(hidden_states) != expected:
            raise ValueError(f"expected {expected} hidden states, got {len(hidden_states)}")
        return torch.stack([hidden_states[i] for i in self.layer_idx], dim=-2)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(..., K, d_llm) with ``states[..., j, :] = H[layer_idx[j]]`` → (..., d_teacher)."""
        if states.shape[-2] != len(self.layer_idx):
            raise ValueError(
                f"expected {len(self.layer_idx)} selected states, got {states.shape[-2]}"
            )
        lead = states.shape[:-2]
        # u: (..., K, d_teacher), one norm + projection per selected state
        u = torch.stack([proj(states[..., j, :]) for j, proj in enumerate(self.norm_layer)], -2)
        heads = u.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)
        query, keys = heads[..., :1, :], heads[..., 1:, :]  # (..., n_heads, 1 | K-1, head_dim)
        logits = query @ keys.transpose(-1, -2) / math.sqrt(self.teacher_width)  # (..., n, 1, K-1)
        mixed = logits.softmax(dim=-1) @ keys  # values are the keys: (..., n_heads, 1, head_dim)
        attended = mixed.reshape(*lead, self.teacher_width)  # concat heads: (..., d_teacher)
        return self.input_layer(states[..., 0, :]) + self.output_layer(attended)
