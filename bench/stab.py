"""STAB + projector vs a CLIP ViT-L/14 encoder (the Video-ChatGPT/Video-LLaVA baseline), videos/s.

    python bench/stab.py [--repeats 3] [--threads T]

Vision parts only (no LLM), random weights, fp32 on CPU, so the absolute figures say nothing about
the paper's setting, whose hardware and precision are not stated; the paper reports STAB 3–4×
faster. Each figure is printed with the 1-minute load average when it was taken. A video is 8
frames: for STAB 2 clips of 4 frames at 448² (mask channel all ones) plus the
mlp2x_gelu projector to 4096; for CLIP 8 images at 224². Each (model, batch) is warmed up with one
call, then ``--repeats`` calls are timed and the median is kept. Multiply-adds per video are
``FlopCounterMode`` total FLOPs // 2 on one video.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from videopanda_cluster.model.config import VideoPandaConfig
from videopanda_cluster.model.projector import build_projector
from videopanda_cluster.model.stab import STAB

FRAMES = 8
BATCHES = (1, 4)


def _stab_runner() -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[int], torch.Tensor]]:
    config = VideoPandaConfig.official()
    stab = STAB(config).eval().requires_grad_(False)
    projector = build_projector(config.projector_type, config.stab_width, config.llm_width)
    projector.eval().requires_grad_(False)
    size, chunk = config.image_size, config.chunk_size

    def run(pixels: torch.Tensor) -> torch.Tensor:
        frames, _ = stab(pixels.reshape(-1, chunk, 4, size, size))
        return projector(torch.cat(frames))

    def inputs(batch: int) -> torch.Tensor:
        pixels = torch.randn(batch, FRAMES, 4, size, size)
        pixels[:, :, 3] = 1.0
        return pixels

    return run, inputs


def _clip_runner() -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[int], torch.Tensor]]:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
    )
    model: nn.Module = CLIPVisionModel(config).eval().requires_grad_(False)

    def run(pixels: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixels).last_hidden_state

    def inputs(batch: int) -> torch.Tensor:
        return torch.randn(batch * FRAMES, 3, 224, 224)

    return run, inputs


def _macs(run: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor) -> int:
    """Multiply-adds of one call (parameters frozen: the counter's module tracker needs it)."""
    with FlopCounterMode(display=False) as counter:
        run(pixels)
    return counter.get_total_flops() // 2


def _seconds(run: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, n: int) -> float:
    run(pixels)  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        run(pixels)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    result: dict = {"threads": torch.get_num_threads(), "repeats": args.repeats}
    with torch.inference_mode():
        for name, build in (("stab", _stab_runner), ("clip", _clip_runner)):
            run, inputs = build()
            result[f"{name}_gmacs_per_video"] = round(_macs(run, inputs(1)) / 1e9, 2)
            for batch in BATCHES:
                seconds = _seconds(run, inputs(batch), args.repeats)
                result[f"{name}_b{batch}_videos_per_s"] = round(batch / seconds, 3)
                result[f"{name}_b{batch}_ms_per_video"] = round(1000 * seconds / batch, 1)
                result[f"{name}_b{batch}_load"] = round(os.getloadavg()[0], 2)
    for batch in BATCHES:
        ratio = result[f"stab_b{batch}_videos_per_s"] / result[f"clip_b{batch}_videos_per_s"]
        result[f"speedup_b{batch}"] = round(ratio, 2)
    result["macs_ratio"] = round(result["clip_gmacs_per_video"] / result["stab_gmacs_per_video"], 2)

    print(f"threads {result['threads']}, median of {args.repeats}, fp32 CPU, random weights")
    print("model | GMACs/video | batch | videos/s | ms/video | load (1-min average)")
    for name, label in (("stab", "STAB+projector"), ("clip", "CLIP ViT-L/14@224 x8")):
        for batch in BATCHES:
            print(
                f"{label} | {result[f'{name}_gmacs_per_video']} | {batch} | "
                f"{result[f'{name}_b{batch}_videos_per_s']} | "
                f"{result[f'{name}_b{batch}_ms_per_video']} | {result[f'{name}_b{batch}_load']}"
            )
    for batch in BATCHES:
        print(f"STAB/CLIP videos/s at batch {batch}: {result[f'speedup_b{batch}']}x")
    print(f"CLIP/STAB multiply-adds: {result['macs_ratio']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
