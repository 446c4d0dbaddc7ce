"""The bundled small model's training step at larger inputs, as a ratio to 224 px, on this CPU.

    python bench/train_step.py [--sizes 336 420] [--repeats 4] [--threads 2]

What a larger input would cost the recipe (docs/training.md, "Twenty-fourth run"): one step is
16 square clips of 8 frames through STAB and the projector, their projected cell tokens plus 60
text positions through the 2-layer Llama, forward and backward of a mean over the logits (not
the recipe's extra losses, data loading or optimiser). Random weights and inputs, fp32. Each size
is warmed up with one step, then ``--repeats`` steps are timed and the median is kept; each
figure is printed with the 1-minute load average when it was taken. Both sides of a ratio are
the same model, batch and text length, differing only in the input size (asserted).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from loadavg import load
from videopanda_cluster.model.config import VideoPandaConfig
from videopanda_cluster.model.modeling import VideoPanda

BASE = 224
CLIPS, FRAMES, TEXT = 16, 8, 60
LLM_LAYERS, VOCAB = 2, 600  # the bundled model's depth; a vocabulary of its order


def step_seconds(config: VideoPandaConfig, repeats: int) -> tuple[float, int]:
    """Median seconds of a training step and the visual tokens per video."""
    torch.manual_seed(0)
    model = VideoPanda(config).train().requires_grad_(True)
    size, width = config.image_size, config.llm_width
    pixels = torch.randn(CLIPS, FRAMES, 4, size, size)
    pixels[:, :, 3] = 1.0
    text = torch.randn(CLIPS, TEXT, width)
    times, tokens = [], 0
    for _ in range(repeats + 1):
        began = time.perf_counter()
        frames, _ = model.video_tower(pixels.reshape(-1, config.chunk_size, 4, size, size))
        visual = model.video_projector(torch.cat(frames)).reshape(CLIPS, -1, width)
        logits = model.llm(inputs_embeds=torch.cat([visual, text], 1)).logits
        logits.float().mean().backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
        tokens = visual.shape[1]
    return statistics.median(times[1:]), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[336, 420])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = VideoPandaConfig.small(VOCAB, BASE, LLM_LAYERS)
    seconds, tokens = step_seconds(base, args.repeats)
    print(f"{BASE} px: {seconds:.2f} s/step, {tokens} visual tokens/video (load {load()})")
    for size in args.sizes:
        config = VideoPandaConfig.small(VOCAB, size, LLM_LAYERS)
        assert replace(config, image_size=BASE) == base, "only the input size may differ"
        other, tokens = step_seconds(config, args.repeats)
        print(
            f"{size} px: {other:.2f} s/step, {tokens} visual tokens/video, "
            f"{other / seconds:.2f}x of {BASE} px (load {load()})"
        )


if __name__ == "__main__":
    main()
