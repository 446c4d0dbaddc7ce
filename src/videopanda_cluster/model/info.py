"""Parameter counts per block and multiply-adds of the visual path (``videopanda model-info``)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import VideoPandaConfig


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_info(config: VideoPandaConfig) -> dict:
    """Counts for ``config`` without allocating weights (meta device).

    ``stab_active`` excludes the unused ``lmhra2``. ``visual_macs`` are the multiply-adds of
    STAB + projector for one 8-frame square video at the input size (matmuls and convolutions);
    ``tokens_per_video`` is its visual token count (ablation switches included).
    """
    from .modeling import VideoPanda

    with torch.device("meta"):
        model = VideoPanda(config)
    assert model.llm is not None  # with_llm defaults to True
    stab = _count(model.video_tower)
    unused = model.video_tower.lmhra2  # None under no_lste
    info = {
        "stab": stab,
        "stab_active": stab - (_count(unused) if unused is not None else 0),
        "projector": _count(model.video_projector),
        "llm": _count(model.llm),
    }
    info["visual_active"] = info["stab_active"] + info["projector"]
    info["total"] = stab + info["projector"] + info["llm"]
    info["visual_macs"] = visual_macs(config)
    grid = config.image_size // config.patch_stride // config.conv_stride
    info["tokens_per_video"] = config.num_frames * config.frame_tokens((grid, grid))  # square
    info["image_size"] = config.image_size
    return info


def visual_macs(config: VideoPandaConfig) -> int:
    """Multiply-adds of STAB + projector on one square video, counted on a real CPU forward
    (the crop step reads mask values, so the meta device cannot be used)."""
    from .projector import build_projector
    from .stab import STAB

    stab = STAB(config).eval().requires_grad_(False)
    projector = build_projector(config.projector_type, config.stab_width, config.llm_width)
    projector.requires_grad_(False)
    size = config.image_size
    pixels = torch.zeros(1, config.num_frames, 4, size, size)
    pixels[:, :, 3] = 1.0
    clips = pixels.reshape(-1, config.chunk_size, 4, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        frames, _ = stab(clips)
        projector(torch.cat(frames))
    return counter.get_total_flops() // 2
