"""A ready GPU check: the released 7B shapes with random weights in bf16 on one GPU, ≤ 8 minutes.

    python bench/gpu_check.py [--device cuda:0] [--out gpu_check.json]
    python bench/gpu_check.py --small [--out small.json]     # CPU, tiny shapes, < 60 s

Needs only torch, the pinned transformers (whose own dependencies bring tokenizers, safetensors
and numpy) and ``src/`` on PYTHONPATH: no Ray, PyAV or sentencepiece. It feeds random pixels
(N, 8, 4, S, S) and tokenizes with a word-level tokenizer built in memory (:func:`word_tokenizer`)
whose EOS the model cannot emit, so every answer is exactly ``max_new_tokens`` tokens long.
It prints, each figure with the load average it ran under (and ``--out`` writes as JSON):

- STAB + projector videos/s at batch 1/8/32 (square videos, mask channel all ones);
- generation tokens/s at batch 1/8/32 (prompts per call: 1 video × 1 question, then videos of
  4 questions each; every other video is 16:9, so prompts of one batch differ in length), eager
  and sdpa, with and without the shared prefix (system prompt + video prefilled once per video);
- peak GPU memory (``torch.cuda.max_memory_allocated``; peak RSS on CPU);
- the greedy check on a small random model (:meth:`VideoPandaConfig.small`; tiny with
  ``--small``): fp32 on CPU against fp32 on the device with TF32 off must give the same greedy
  tokens and prefill logits within ``LOGITS_RTOL`` × max |logit|; against bf16 on the device the
  agreement is printed, not asserted.

Exits 1 when a check fails: greedy tokens or logits, an answer of the wrong length, or Ray, PyAV
or sentencepiece imported. A cell that runs out of GPU memory is reported as such, not a failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import torch
import transformers
from torch import nn
from transformers import PreTrainedTokenizerFast

from videopanda_cluster.model.config import ATTENTION_IMPLS, VideoPandaConfig
from videopanda_cluster.model.generation import GenerationOptions, splice
from videopanda_cluster.model.modeling import VideoPanda
from videopanda_cluster.model.prompt import SYSTEM_PROMPT_EVAL, prompt_ids

# Greedy check: max |logit(fp32 device) − logit(fp32 CPU)| ≤ LOGITS_RTOL × max |logit(fp32 CPU)|.
LOGITS_RTOL = 1e-3
FORBIDDEN_MODULES = ("ray", "av", "sentencepiece")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
QUESTIONS = (
    "What happens in the video?",
    "Describe the colours and the shapes you can see in every frame of this clip.",
    "Which object moves?",
    "How many objects are there at the start and how many at the end, and do any of them leave?",
)
# The field another change adds to GenerationOptions; until then the shared prefix is not measured.
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """What one run measures; :data:`FULL` on a GPU, :data:`SMALL` on CPU."""

    model: VideoPandaConfig  # the benchmarked model (random weights, ``dtype``)
    check_model: VideoPandaConfig  # the greedy check's model
    stab_batches: tuple[int, ...]  # videos per STAB call
    generate_batches: tuple[int, ...]  # prompts per generate call
    questions_per_video: int  # a batch of B > 1 prompts is B / q videos of q questions
    max_new_tokens: int
    repeats: int  # timed STAB calls per batch (median kept), after one warm-up call
    check_new_tokens: int
    dtype: torch.dtype = torch.bfloat16

    def __post_init__(self) -> None:
        q = self.questions_per_video
        for b in self.generate_batches:
            if b > 1 and b % q:
                raise ValueError(f"generate batch {b} is not a multiple of {q} questions")


FULL = Plan(
    model=VideoPandaConfig.official(),
    check_model=VideoPandaConfig.small(),
    stab_batches=(1, 8, 32),
    generate_batches=(1, 8, 32),
    questions_per_video=4,
    max_new_tokens=32,
    repeats=3,
    check_new_tokens=16,
)
SMALL = Plan(
    model=replace(VideoPandaConfig.tiny(), image_size=112),
    check_model=replace(VideoPandaConfig.tiny(), image_size=112),
    stab_batches=(1, 2, 4),
    generate_batches=(1, 2, 4),
    questions_per_video=2,
    max_new_tokens=8,
    repeats=1,
    check_new_tokens=8,
)


# -- helpers -----------------------------------------------------------------------------------
def load() -> list[float]:
    """The 1, 5 and 15-minute load averages, printed next to every figure."""
    return [round(x, 2) for x in os.getloadavg()]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated since the last :func:`reset_peak`; on CPU the process's peak
    RSS (never reset)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def unless_out_of_memory(run: Callable[[], T], device: torch.device) -> T | None:
    """``run()``, or None when the GPU runs out of memory (its cache then emptied)."""
    try:
        return run()
    except torch.OutOfMemoryError:
        if device.type != "cuda":
            raise
        torch.cuda.empty_cache()
        return None


def forbidden_imports() -> list[str]:
    """The modules of :data:`FORBIDDEN_MODULES` this process has imported."""
    return [name for name in FORBIDDEN_MODULES if name in sys.modules]


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over exactly ``vocab_size`` ids, built in memory from
    ``tokenizers`` (a dependency of transformers; no sentencepiece, no download).

    The words of the prompt template and of :data:`QUESTIONS` get their own ids, the rest are
    ``t<id>``; id 0 is ``<unk>``. It adds no BOS. Its only special token is EOS at id
    ``vocab_size``, outside the model's output layer: the model never emits it, every generated
    id decodes to one word, and an answer's token count is its word count.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    split = pre_tokenizers.Whitespace()
    text = " ".join((SYSTEM_PROMPT_EVAL, "USER: ASSISTANT:", *QUESTIONS))
    words = ["<unk>", *sorted({w for w, _ in split.pre_tokenize_str(text)})]
    words += [f"t{i}" for i in range(len(words), vocab_size)]
    if len(words) != vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the prompt's words")
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = split
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>")


def build(
    config: VideoPandaConfig, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> VideoPanda:
    """A random-weight model created directly on ``device`` in ``dtype`` (no fp32 CPU copy)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = VideoPanda(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    model.tokenizer = word_tokenizer(int(config.llm["vocab_size"]))
    return model


def random_pixels(
    videos: int, config: VideoPandaConfig, device: torch.device, mixed: bool, seed: int = 0
) -> torch.Tensor:
    """(videos, F, 4, S, S) random pixels; the mask channel (3) is all ones, except that with
    ``mixed`` every other video is 16:9 (mask zero below 9/16 of the height, whole cells)."""
    size, cell = config.image_size, config.patch_stride * config.conv_stride
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(videos, config.num_frames, 4, size, size, generator=generator)
    pixels[:, :, 3] = 1.0
    if mixed:
        pixels[1::2, :, 3, max(cell, size * 9 // 16 // cell * cell) :] = 0.0
    return pixels.to(device)


def options(batch: int, share: bool, max_new_tokens: int) -> GenerationOptions:
    """Greedy options, with or without the shared video prefix."""
    return GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch, share_prefix=share)


# -- sections ----------------------------------------------------------------------------------
def header(device: torch.device, plan: Plan) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    info = {
        "device": str(device),
        "device_name": name or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(plan.dtype).removeprefix("torch."),
        "loadavg": load(),
    }
    for key, value in info.items():
        print(f"{key:>24}: {value}")
    return info


def stab_section(model: VideoPanda, plan: Plan, device: torch.device) -> list[dict[str, Any]]:
    """Videos/s of ``encode_frames`` (STAB + projector), median of ``plan.repeats`` calls."""
    rows = []
    for batch in plan.stab_batches:
        pixels = random_pixels(batch, plan.model, device, mixed=False)

        def timed(pixels: torch.Tensor = pixels) -> float:
            sync(device)
            start = time.perf_counter()
            model.encode_frames(pixels)
            sync(device)
            return time.perf_counter() - start

        reset_peak(device)

        def run() -> list[float]:
            timed()  # warm-up
            return [timed() for _ in range(plan.repeats)]

        seconds = unless_out_of_memory(run, device)
        row: dict[str, Any] = {"batch": batch, "loadavg": load()}
        if seconds is None:
            row["error"] = "out of memory"
            print(f"STAB batch {batch:>3}: out of memory")
        else:
            median = statistics.median(seconds)
            row |= {"seconds": median, "videos_per_s": batch / median}
            print(
                f"STAB batch {batch:>3}: {batch / median:8.2f} videos/s  "
                f"({median:.3f} s/call, load {row['loadavg']})"
            )
        row["peak_bytes"] = peak_bytes(device)
        del pixels
        rows.append(row)
    return rows


def generation_section(
    model: VideoPanda, plan: Plan, device: torch.device, failures: list[str]
) -> list[dict[str, Any]]:
    """Tokens/s of ``answer_frames`` (prefill + decode; frames encoded beforehand) for every
    batch, attention and prefix setting; each answer must be ``max_new_tokens`` tokens long."""
    q = plan.questions_per_video
    videos = max(math.ceil(b / q) for b in plan.generate_batches)
    pixels = random_pixels(videos, plan.model, device, mixed=True)
    frames, _ = model.encode_frames(pixels)
    del pixels
    shares = (False, True)
    rows = []
    for attention in ATTENTION_IMPLS:
        model.set_attention(attention)
        warm = options(1, False, 2)
        model.answer_frames(frames[:1], [list(QUESTIONS[:1])], warm)
        for batch in plan.generate_batches:
            n, per_video = (1, 1) if batch == 1 else (batch // q, q)
            questions = [list(QUESTIONS[:per_video]) for _ in range(n)]
            for share in shares:
                opts = options(batch, share, plan.max_new_tokens)
                row = _generation_cell(model, frames[:n], questions, opts, device, failures)
                row |= {"attention": attention, "batch": batch, "shared_prefix": share}
                label = f"{attention:>5} batch {batch:>3} shared prefix {'on ' if share else 'off'}"
                if "error" in row:
                    print(f"generate {label}: {row['error']}")
                else:
                    print(
                        f"generate {label}: {row['tokens_per_s']:8.1f} tokens/s  "
                        f"({row['tokens']} tokens in {row['seconds']:.2f} s, "
                        f"peak {gib(row['peak_bytes'])}, load {row['loadavg']})"
                    )
                rows.append(row)
    return rows


def _generation_cell(
    model: VideoPanda,
    frames: Sequence[Sequence[torch.Tensor]],
    questions: list[list[str]],
    opts: GenerationOptions,
    device: torch.device,
    failures: list[str],
) -> dict[str, Any]:
    prompts = sum(len(qs) for qs in questions)
    reset_peak(device)

    def run() -> tuple[float, list[list[Any]]]:
        sync(device)
        start = time.perf_counter()
        answers = model.answer_frames(frames, questions, opts)
        sync(device)
        return time.perf_counter() - start, answers

    result = unless_out_of_memory(run, device)
    row: dict[str, Any] = {"prompts": prompts, "loadavg": load(), "peak_bytes": peak_bytes(device)}
    if result is None:
        return row | {"error": "out of memory"}
    seconds, answers = result
    lengths = [len(str(a).split()) for group in answers for a in group]
    tokens = sum(lengths)
    if lengths != [opts.max_new_tokens] * prompts:
        failures.append(f"answers of {sorted(set(lengths))} tokens, not {opts.max_new_tokens}")
    return row | {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def _prefill_logits(
    model: VideoPanda, pixels: torch.Tensor, questions: list[list[str]]
) -> list[torch.Tensor]:
    """Logits at every position of each video's first prompt (as fp32 on CPU)."""
    llm, tokenizer = model.llm, model.tokenizer
    assert llm is not None and tokenizer is not None
    embed = llm.get_input_embeddings()
    assert isinstance(embed, nn.Embedding)
    per_video, _ = model.encode_frames(pixels.to(model.device))
    out = []
    for frames, qs in zip(per_video, questions, strict=True):
        ids = prompt_ids(qs[0], len(frames), tokenizer)
        logits = llm(inputs_embeds=splice(embed, ids, frames)[None]).logits[0]
        out.append(logits.float().cpu())
    return out


def _answers(
    model: VideoPanda, pixels: torch.Tensor, questions: list[list[str]], opts: GenerationOptions
) -> list[list[str]]:
    per_video, _ = model.encode_frames(pixels.to(model.device))
    return [[str(a) for a in group] for group in model.answer_frames(per_video, questions, opts)]


def _common_prefix(a: list[str], b: list[str]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))


def greedy_section(plan: Plan, device: torch.device, failures: list[str]) -> dict[str, Any]:
    """The small model in fp32 on CPU, in fp32 on ``device`` (TF32 off) and in ``plan.dtype`` on
    ``device``, eager attention: greedy tokens and prefill logits compared with fp32 CPU."""
    reference = build(plan.check_model, torch.device("cpu"), torch.float32)
    pixels = random_pixels(2, plan.check_model, torch.device("cpu"), mixed=True, seed=1)
    questions = [list(QUESTIONS[:2]), list(QUESTIONS[2:4])]
    opts = GenerationOptions(max_new_tokens=plan.check_new_tokens)
    want = _answers(reference, pixels, questions, opts)
    want_logits = _prefill_logits(reference, pixels, questions)
    scale = max(float(x.abs().max()) for x in want_logits)
    result: dict[str, Any] = {"logits_rtol": LOGITS_RTOL, "new_tokens": plan.check_new_tokens}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for dtype in (torch.float32, plan.dtype):
        model = build(plan.check_model, device, dtype)  # fp32 rotary frequencies, as loaded
        model.load_state_dict(reference.state_dict())
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            got = _answers(model, pixels, questions, opts)
            got_logits = _prefill_logits(model, pixels, questions)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        diff = max(float((g - w).abs().max()) for g, w in zip(got_logits, want_logits, strict=True))
        pairs = [
            (g.split(), w.split())
            for gs, ws in zip(got, want, strict=True)
            for g, w in zip(gs, ws, strict=True)
        ]
        name = str(dtype).removeprefix("torch.")
        prefix = sum(_common_prefix(g, w) for g, w in pairs) / len(pairs)
        entry = {
            "identical_answers": sum(g == w for g, w in pairs) / len(pairs),
            "common_prefix": prefix / plan.check_new_tokens,
            "logits_max_abs_diff": diff,
            "logits_max_abs": scale,
            "loadavg": load(),
        }
        result[name] = entry
        verdict = "not checked"
        if dtype == torch.float32:
            ok = entry["identical_answers"] == 1.0 and diff <= LOGITS_RTOL * scale
            verdict = f"tolerance {LOGITS_RTOL:g} × {scale:.2f}: {'ok' if ok else 'FAILED'}"
            if not ok:
                failures.append(f"fp32 on {device} differs from fp32 CPU")
        print(
            f"greedy {name:>8} on {device} vs fp32 CPU: {entry['identical_answers']:.0%} answers "
            f"identical, common prefix {entry['common_prefix']:.0%}, max |Δlogit| {diff:.2e} "
            f"({verdict}; load {entry['loadavg']})"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes, runs on CPU")
    parser.add_argument("--device", help="default: cuda, or cpu with --small")
    parser.add_argument("--out", help="write the figures as JSON to this file")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="bfloat16",
        help="of the benchmarked model (float16: the loader's default on GPU)",
    )
    args = parser.parse_args(argv)
    plan = replace(SMALL if args.small else FULL, dtype=DTYPES[args.dtype])
    began = time.perf_counter()
    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"no CUDA device for {device} (torch {torch.__version__}); --small runs on CPU"
        )
    if device.type != "cuda" and not args.small:
        parser.error("the 7B check needs a CUDA device; --small runs on CPU")
    failures: list[str] = []
    report: dict[str, Any] = {"header": header(device, plan)}
    report["plan"] = {k: v for k, v in asdict(plan).items() if k not in ("model", "check_model")}
    report["plan"]["dtype"] = report["header"]["dtype"]

    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    model = build(plan.model, device, plan.dtype)
    sync(device)
    seconds = time.perf_counter() - start
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    report["build"] = {"seconds": seconds, "weights_bytes": weights, "loadavg": load()}
    print(f"built random model in {seconds:.1f} s: {gib(weights)} of weights")

    report["stab"] = stab_section(model, plan, device)
    report["generation"] = generation_section(model, plan, device, failures)
    peak = max(row["peak_bytes"] for row in report["stab"] + report["generation"])
    kind = "max_memory_allocated" if device.type == "cuda" else "peak_rss"
    report["memory"] = {"kind": kind, "peak_bytes": peak, "loadavg": load()}
    print(f"peak memory ({kind}): {gib(peak)}")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    report["greedy"] = greedy_section(plan, device, failures)
    loaded = forbidden_imports()
    report["imports"] = {"checked": list(FORBIDDEN_MODULES), "loaded": loaded}
    if loaded:
        failures.append(f"imported {', '.join(loaded)}")
    report["failures"] = failures
    report["total_seconds"] = time.perf_counter() - began
    print(
        "imports: none of " + ", ".join(FORBIDDEN_MODULES) if not loaded else f"imported {loaded}"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    print(f"total {report['total_seconds']:.0f} s")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
