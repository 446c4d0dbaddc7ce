"""Model configuration: STAB, projector and the Llama backbone in one dataclass.

Reads the released ``config.json`` (LLM fields plus ``mm_hidden_size``; the preprocessor values are
fixed constants, spec §2.1) and our own configs, which add a ``videopanda`` section.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from ..video.geometry import frame_tokens

# GSTRA head count the reference derives from the STAB width (any other width is an error there).
_GSTRA_HEADS = {1024: 8, 1152: 8, 1408: 11}

LLAMA_7B = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
_LLAMA_KEYS = set(LLAMA_7B) | {"rope_scaling", "attention_bias", "mlp_bias", "head_dim"}


ABLATIONS = ("no_gstra", "no_lste", "no_fsra", "no_split_tokens", "lsd_avgpool")

# The Llama's attention: "eager" (softmax in fp32, the reference's numerics, the default) or "sdpa".
AttentionImpl = Literal["eager", "sdpa"]
ATTENTION_IMPLS: tuple[AttentionImpl, ...] = get_args(AttentionImpl)


def check_attention(value: str) -> AttentionImpl:
    """``value`` if it names an :data:`AttentionImpl`, else ValueError."""
    if value not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be eager or sdpa, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass
class VideoPandaConfig:
    """Everything needed to build the model; defaults are the released Video-Panda-7B.

    The ablation switches (paper §4.4; all off = the full model) remove a STAB block from the
    forward pass and do not create its parameters: ``no_gstra`` (``temporal_cls_token``, ``dec``;
    the context token is the FSRA token, so ``proj`` and ``balance`` go too), ``no_lste``
    (``lmhra1``, ``dpe``, the dense skip, and the unused ``lmhra2``), ``no_fsra``
    (``class_embedding``, ``global_attention``, ``balance``; the context token is
    ``proj(GSTRA)``, or absent when there is no GSTRA token either), ``no_split_tokens``
    (``split_embedding``; 1 + h·w tokens per frame) and ``lsd_avgpool`` (``local_attention``;
    LSD becomes a 2×2 average pool, i.e. its residual without the attention branch).
    """

    stab_width: int = 1024  # C
    stab_heads: int = 8  # LSD and FSRA heads (their logit scale is 1/sqrt(C) regardless)
    gstra_heads: int = 8  # GSTRA heads (logit scale 1/sqrt(C / gstra_heads))
    patch_stride: int = 14
    conv_stride: int = 2  # LSD window
    image_size: int = 448
    chunk_size: int = 4  # frames per STAB clip (temporal modelling is per clip)
    num_frames: int = 8
    dw_reduction: float = 1.5  # LSTE bottleneck: int(C // 1.5)
    mlp_ratio: float = 4.0  # GSTRA MLP
    dropout: float = 0.5  # GSTRA MLP and context projection (training only)
    projector_type: str = "mlp2x_gelu"
    no_gstra: bool = False
    no_lste: bool = False
    no_fsra: bool = False
    no_split_tokens: bool = False
    lsd_avgpool: bool = False
    llm: dict[str, Any] = field(default_factory=lambda: dict(LLAMA_7B))

    def __post_init__(self) -> None:
        if self.num_frames % self.chunk_size:
            raise ValueError(
                f"num_frames ({self.num_frames}) must be a multiple of "
                f"chunk_size ({self.chunk_size})"
            )
        for name in ("stab_heads", "gstra_heads"):
            if self.stab_width % getattr(self, name):
                raise ValueError(f"stab_width {self.stab_width} is not divisible by {name}")
        cell = self.patch_stride * self.conv_stride
        if self.image_size <= 0 or self.image_size % cell:
            raise ValueError(
                f"image_size ({self.image_size}) must be a positive multiple of "
                f"patch_stride·conv_stride ({cell})"
            )

    @property
    def llm_width(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def ablations(self) -> list[str]:
        """Names of the ablation switches that are on ([] for the full model)."""
        return [name for name in ABLATIONS if getattr(self, name)]

    @property
    def context_tokens(self) -> int:
        """Context tokens per frame of a clip (T = chunk_size): 1, or 0 when neither FSRA nor a
        GSTRA clip token exists."""
        return int(not self.no_fsra or (not self.no_gstra and self.chunk_size > 1))

    def frame_tokens(self, grid: tuple[int, int]) -> int:
        """Tokens one frame with LSD grid (h, w) gives the LLM: 1 + h·(w+1) for the full model;
        the ablations drop the split column and/or the context token."""
        tokens = frame_tokens(grid, split_tokens=not self.no_split_tokens)
        return tokens - 1 + self.context_tokens

    @property
    def padded_frame_grid(self) -> tuple[int, int]:
        """(h, w) of an all-zero frame: STAB crops the top-left quarter of the patch grid (16×16
        patches at 448, spec §8 #7), so (8, 8) at 448, (4, 4) at 224, (2, 2) at 112."""
        side = self.image_size // self.patch_stride // 2 // self.conv_stride
        return side, side

    def check_input_size(self, height: int, width: int | None = None) -> None:
        """Raise ValueError unless frames are ``image_size`` square (e.g. the
        ``PreprocessOptions.size`` the model will be fed, or a pixel tensor's H, W)."""
        width = height if width is None else width
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"model built for {self.image_size}x{self.image_size} input got {width}x{height} "
                f"frames; preprocess with PreprocessOptions(size={self.image_size})"
            )

    @classmethod
    def official(cls) -> VideoPandaConfig:
        return cls()

    @classmethod
    def tiny(cls, vocab_size: int = 512) -> VideoPandaConfig:
        """A few-MB model with the official structure, for tests."""
        llm = dict(
            LLAMA_7B,
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=4096,
        )
        return cls(stab_width=64, stab_heads=8, gstra_heads=8, llm=llm)

    @classmethod
    def small(
        cls, vocab_size: int = 32000, image_size: int = 224, llm_layers: int = 4
    ) -> VideoPandaConfig:
        """The bundled small model: 8 frames at 224 px (or 112), STAB width 128 with 4 heads
        (head dim 32), a Llama of width 256 with ``llm_layers`` layers (4 by default). Pass the
        tokenizer's ``vocab_size``."""
        if llm_layers < 1:
            raise ValueError(f"llm_layers must be at least 1, got {llm_layers}")
        llm = dict(
            LLAMA_7B,
            vocab_size=vocab_size,
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=llm_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=2048,
        )
        return cls(stab_width=128, stab_heads=4, gstra_heads=4, image_size=image_size, llm=llm)

    @classmethod
    def preset(cls, name: str) -> VideoPandaConfig:
        presets = {"official": cls.official, "tiny": cls.tiny, "small": cls.small}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def to_llama_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(**self.llm)

    # -- config.json ---------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """HF-style config: LLM fields at top level, ours under ``videopanda``."""
        ours = {k: v for k, v in asdict(self).items() if k != "llm"}
        return {
            "model_type": "videopanda",
            "architectures": ["VideoPandaLlamaForCausalLM"],
            **self.llm,
            "mm_hidden_size": self.stab_width,
            "video_hidden_size": self.stab_width,
            "mm_projector_type": self.projector_type,
            "videopanda": ours,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> VideoPandaConfig:
        """Read our config.json or the released one (which has no ``videopanda`` section)."""
        llm = {k: v for k, v in data.items() if k in _LLAMA_KEYS}  # the file's order, not a set's
        llm.setdefault("rope_theta", 10000.0)  # transformers-4.31 default, no key in the release
        ours = dict(data.get("videopanda", {}))
        if not ours:
            width = int(data.get("video_hidden_size") or data.get("mm_hidden_size") or 1024)
            if width not in _GSTRA_HEADS:
                raise ValueError(f"released configs support STAB widths {sorted(_GSTRA_HEADS)}")
            ours = {
                "stab_width": width,
                "gstra_heads": _GSTRA_HEADS[width],
                "projector_type": data.get("mm_projector_type", "mlp2x_gelu"),
            }
        known = {f.name for f in fields(cls)}
        unknown = set(ours) - known
        if unknown:
            raise ValueError(f"unknown videopanda config fields: {sorted(unknown)}")
        return cls(**ours, llm=llm)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VideoPandaConfig:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in {folder}")
        return cls.from_json_dict(json.loads(path.read_text()))

    def save(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text(json.dumps(self.to_json_dict(), indent=2))
