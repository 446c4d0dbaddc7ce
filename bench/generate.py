"""Generation: tokens/s at batch 1 and 8, and the shared video prefix at 1–10 questions per video.

    python bench/generate.py [--models tiny,small] [--attention eager,sdpa] [--threads 1]
                             [--repeats 3]

Everything measured is in ``SPEC`` below. Per model (the tiny random checkpoint at 448 px, the
bundled videopanda-small at 112 px) and attention, fp32 on CPU, greedy:

1. Batches: one question for each of ``throughput_videos`` videos of mixed aspect ratios (so
   their prompts differ in length), tokens/s of ``generate`` at each batch size with and without
   the shared prefix, and the ratio of the largest batch to batch 1, for answers of each of
   ``answer_lengths`` tokens (prefill is per prompt at any batch size, so batching pays off
   with the share of decoding in the call).
2. Shared prefix: ``qa_videos`` videos with 1, 2, 5 and 10 questions each; the prefill FLOPs the
   shared prefix saves (``FlopCounterMode`` over ``generate`` with ``max_new_tokens=1``, the
   unshared side at batch 1 so padding is not counted as saved) and the measured speed-up of
   the whole generation at ``qa_batch`` (unshared = today's padded batches).

A figure is the median of ``repeats`` timed calls after one untimed call; tokens/s counts the
generated tokens over the whole ``generate`` call (prefill included). Each ratio checks that its
two sides ran the same model, attention, data and options (but the compared one) and produced
the same token ids. ``load`` is ``os.getloadavg()``'s 1-minute figure when the figure was taken.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from videopanda_cluster import VideoPanda, bundled
from videopanda_cluster.cluster.driver import TINY_MODEL_DIR
from videopanda_cluster.model.config import check_attention
from videopanda_cluster.model.generation import GenerationOptions, Prompts, generate
from videopanda_cluster.model.tiny import ensure_tiny_checkpoint
from videopanda_cluster.video.geometry import compute_geometry


@dataclass(frozen=True)
class Spec:
    models: tuple[str, ...] = ("tiny", "small")
    attentions: tuple[str, ...] = ("eager", "sdpa")
    # source sizes cycled over the videos: different aspect ratios, different token counts
    sources: tuple[tuple[int, int], ...] = ((640, 480), (500, 500), (720, 1280), (1280, 720))
    max_new_tokens: int = 32  # a short QA answer; the tiny model never ends on its own
    # section 1's answer lengths: a QA answer, and a detailed caption (decoding dominates)
    answer_lengths: tuple[int, ...] = (32, 256)
    throughput_videos: int = 8
    batches: tuple[int, ...] = (1, 8)
    qa_videos: int = 4
    questions_per_video: tuple[int, ...] = (1, 2, 5, 10)
    qa_batch: int = 8
    repeats: int = 3
    threads: int = 1


SPEC = Spec()
QUESTIONS = (
    "what colour is the circle?",
    "how many shapes are there?",
    "what?",
    "which way does the red square move across the frame?",
    "is the triangle bigger than the square?",
    "describe the video.",
    "what shape appears first, and what colour is it?",
    "does anything move to the left?",
    "count the blue shapes.",
    "what is in the middle of the last frame, and is it moving?",
)


@dataclass(frozen=True)
class Run:
    """One timed setting: what ran, and what it gave."""

    model: str
    attention: str
    data: str  # fingerprint of the frame tokens and questions
    options: GenerationOptions
    seconds: float
    ids: tuple[tuple[int, ...], ...]
    load: float

    @property
    def tokens(self) -> int:
        return sum(len(i) for i in self.ids)


def ratio(top: Run, bottom: Run, field: str, top_value: float, bottom_value: float) -> float:
    """``top_value / bottom_value``, after checking that the two runs differ only in ``field``
    of their options and generated the same ids."""
    same = {field: getattr(top.options, field)}
    assert (top.model, top.attention, top.data) == (bottom.model, bottom.attention, bottom.data)
    assert replace(bottom.options, **same) == top.options, (top.options, bottom.options)
    assert top.ids == bottom.ids and top.tokens == bottom.tokens
    return top_value / bottom_value


def load_model(name: str) -> VideoPanda:
    folder = ensure_tiny_checkpoint(TINY_MODEL_DIR) if name == "tiny" else bundled.small_model()
    return VideoPanda.from_pretrained(folder, device="cpu", dtype=torch.float32)


def videos(model: VideoPanda, count: int) -> list[list[torch.Tensor]]:
    """Projected frame tokens of ``count`` random videos, source sizes cycling over SPEC."""
    size = model.config.image_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(count, 8, 4, size, size, generator=gen)
    pixels[:, :, 3] = 0
    for n in range(count):
        x0, y0, x1, y1 = compute_geometry(*SPEC.sources[n % len(SPEC.sources)], size).valid_box
        pixels[n, :, 3, y0:y1, x0:x1] = 1
    return model.encode_frames(pixels)[0]


def fingerprint(frames: list[list[torch.Tensor]], questions: list[list[str]]) -> str:
    digest = hashlib.sha256(json.dumps(questions).encode())
    for video in frames:
        for f in video:
            digest.update(f.numpy().tobytes())
    return digest.hexdigest()[:12]


def timed(name: str, model: VideoPanda, frames, questions, options: GenerationOptions) -> Run:
    batch: Prompts = model.build_prompts(frames, questions, options.max_new_tokens)

    def call() -> list[list[int]]:
        return generate(model.llm, model.tokenizer, batch.prefixes, batch.prompts, options)

    ids = call()  # warm-up
    times = []
    for _ in range(SPEC.repeats):
        start = time.perf_counter()
        again = call()
        times.append(time.perf_counter() - start)
        assert again == ids
    attention = model.llm.config._attn_implementation
    data = fingerprint(frames, questions)
    seconds = statistics.median(times)
    ran = tuple(tuple(i) for i in ids)
    return Run(name, attention, data, options, seconds, ran, os.getloadavg()[0])


def prefill_flops(model: VideoPanda, frames, questions, options: GenerationOptions) -> int:
    batch = model.build_prompts(frames, questions, 1)
    with FlopCounterMode(display=False) as counter:
        generate(model.llm, model.tokenizer, batch.prefixes, batch.prompts, options)
    return counter.get_total_flops()


def bench(name: str, model: VideoPanda, attention: str) -> dict:
    model.set_attention(check_attention(attention))
    out: dict = {"model": name, "attention": attention}
    greedy = GenerationOptions(max_new_tokens=SPEC.max_new_tokens)

    frames = videos(model, SPEC.throughput_videos)
    questions = [[QUESTIONS[n % len(QUESTIONS)]] for n in range(len(frames))]
    out["video_tokens"] = sorted({sum(f.shape[0] for f in video) for video in frames})
    largest, smallest = max(SPEC.batches), min(SPEC.batches)
    for length in SPEC.answer_lengths:
        for shared in (True, False):
            settings = replace(greedy, max_new_tokens=length, share_prefix=shared)
            runs = {
                b: timed(name, model, frames, questions, replace(settings, batch_size=b))
                for b in SPEC.batches
            }
            key = f"{'shared' if shared else 'unshared'}_n{length}"
            for b, run in runs.items():
                out[f"{key}_b{b}_tokens_per_s"] = round(run.tokens / run.seconds, 1)
                out[f"{key}_b{b}_load"] = round(run.load, 2)
            top, bottom = runs[largest], runs[smallest]
            out[f"{key}_b{largest}_over_b{smallest}"] = round(
                ratio(top, bottom, "batch_size", bottom.seconds, top.seconds), 2
            )

    frames = videos(model, SPEC.qa_videos)
    for q in SPEC.questions_per_video:
        questions = [
            [QUESTIONS[(v + n) % len(QUESTIONS)] for n in range(q)] for v in range(len(frames))
        ]
        one = replace(greedy, max_new_tokens=1, batch_size=1)
        flops_shared = prefill_flops(model, frames, questions, one)
        flops_unshared = prefill_flops(model, frames, questions, replace(one, share_prefix=False))
        options = replace(greedy, batch_size=SPEC.qa_batch)
        shared = timed(name, model, frames, questions, options)
        unshared = timed(name, model, frames, questions, replace(options, share_prefix=False))
        out[f"q{q}_prefill_flops_saved"] = round(1 - flops_shared / flops_unshared, 3)
        out[f"q{q}_speedup"] = round(
            ratio(shared, unshared, "share_prefix", unshared.seconds, shared.seconds), 2
        )
        out[f"q{q}_shared_tokens_per_s"] = round(shared.tokens / shared.seconds, 1)
        out[f"q{q}_load"] = [round(unshared.load, 2), round(shared.load, 2)]
    return out


def main() -> None:
    global SPEC
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SPEC.models))
    parser.add_argument("--attention", default=",".join(SPEC.attentions))
    parser.add_argument("--threads", type=int, default=SPEC.threads)
    parser.add_argument("--repeats", type=int, default=SPEC.repeats)
    args = parser.parse_args()
    SPEC = replace(
        SPEC,
        models=tuple(args.models.split(",")),
        attentions=tuple(args.attention.split(",")),
        threads=args.threads,
        repeats=args.repeats,
    )
    torch.set_num_threads(SPEC.threads)
    print(f"{SPEC}, torch threads {torch.get_num_threads()}, fp32 CPU, greedy")
    results = []
    with torch.inference_mode():
        for name in SPEC.models:
            model = load_model(name)
            for attention in SPEC.attentions:
                result = bench(name, model, attention)
                results.append(result)
                report(result)
    print(json.dumps(results))


def report(r: dict) -> None:
    largest, smallest = max(SPEC.batches), min(SPEC.batches)
    print(f"\n{r['model']}, {r['attention']}: video tokens per video {r['video_tokens']}")
    print(
        "path, new tokens | "
        + " | ".join(f"b{b} tokens/s (load)" for b in SPEC.batches)
        + f" | b{largest}÷b{smallest}"
    )
    keys = [f"{p}_n{n}" for n in SPEC.answer_lengths for p in ("shared", "unshared")]
    for key in keys:
        cells = [f"{r[f'{key}_b{b}_tokens_per_s']} ({r[f'{key}_b{b}_load']})" for b in SPEC.batches]
        print(f"{key} | " + " | ".join(cells) + f" | {r[f'{key}_b{largest}_over_b{smallest}']}")
    print(
        f"questions/video | prefill FLOPs saved | speed-up shared÷unshared at b{SPEC.qa_batch} "
        "| shared tokens/s | load (unshared, shared)"
    )
    for q in SPEC.questions_per_video:
        print(
            f"{q} | {r[f'q{q}_prefill_flops_saved']:.1%} | {r[f'q{q}_speedup']} | "
            f"{r[f'q{q}_shared_tokens_per_s']} | {r[f'q{q}_load']}"
        )


if __name__ == "__main__":
    main()
