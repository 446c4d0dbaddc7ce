"""The shared-prefix generation path against today's padded one (tiny and bundled models)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.model_helpers import masked_clip, randomize_
from videopanda_cluster import VideoPanda, VideoPandaConfig, bundled
from videopanda_cluster.model.generation import (
    GenerationOptions,
    Prompt,
    PromptTooLong,
    generate,
    split_point,
)
from videopanda_cluster.model.prompt import load_tokenizer, prompt_ids
from videopanda_cluster.model.tokenizer_builder import build_sentencepiece_tokenizer
from videopanda_cluster.train.data import load_video
from videopanda_cluster.train.synth import SynthOptions, encode_clip, make_video, video_path
from videopanda_cluster.video.geometry import compute_geometry

# 1, 2, 5 and 2 questions of different lengths for four videos of different aspect ratios
QUESTIONS = [
    ["what colour is the circle?"],
    ["how many shapes are there?", "what?", "Describe this video in detail."],
    [
        "which way does the red square move across the frame?",
        "colour?",
        "what shape is it?",
        "count them, please",
        "is it moving left or right, or does it stay where it is?",
    ],
    ["what?", "how many shapes?"],
]
SIZES = [(640, 480), (500, 500), (720, 1280), (1280, 720)]


def _videos(image_size: int) -> torch.Tensor:
    """(4, 8, 4, S, S): one video per source size in SIZES, so their token counts differ."""
    boxes = [compute_geometry(*s, size=image_size).valid_box for s in SIZES]
    clips = [
        masked_clip(b, frames=8, size=image_size, seed=n, dtype=torch.float32)
        for n, b in enumerate(boxes)
    ]
    return torch.cat(clips)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> VideoPanda:
    folder = tmp_path_factory.mktemp("tok")
    build_sentencepiece_tokenizer(folder)
    tokenizer = load_tokenizer(folder)
    torch.manual_seed(0)
    m = VideoPanda(VideoPandaConfig.tiny(vocab_size=len(tokenizer)))
    randomize_(m, seed=1, llm_std=0.3)  # large enough that answers depend on the input
    m.tokenizer = tokenizer
    return m.eval()


@pytest.fixture(scope="module")
def small() -> VideoPanda:
    return VideoPanda.from_pretrained(bundled.small_model(), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def frames(tiny, small) -> dict[str, list[list[torch.Tensor]]]:
    """Projected frame tokens per model, per video."""
    return {
        name: m.encode_frames(_videos(m.config.image_size))[0]
        for name, m in (("tiny", tiny), ("small", small))
    }


def _model(name: str, tiny: VideoPanda, small: VideoPanda) -> VideoPanda:
    return {"tiny": tiny, "small": small}[name]


def _prompts(model: VideoPanda, per_video, questions) -> tuple[list[torch.Tensor], list[Prompt]]:
    """What answer_frames hands to generate: a prefix per video, a suffix per question."""
    batch = model.build_prompts(per_video, questions, max_new_tokens=32)
    assert [len(p) for p in batch.places] == [len(qs) for qs in questions]
    return batch.prefixes, batch.prompts


def _ids(model, prefixes, prompts, **options) -> list[list[int]]:
    return generate(model.llm, model.tokenizer, prefixes, prompts, GenerationOptions(**options))


@pytest.fixture(params=["eager", "sdpa"])
def attention(request, tiny, small):
    for m in (tiny, small):
        m.set_attention(request.param)
    yield request.param
    for m in (tiny, small):
        m.set_attention("eager")


def test_the_prefix_is_the_same_for_every_question_of_a_video(tiny):
    questions = sorted({q for qs in QUESTIONS for q in qs})
    ids = [prompt_ids(q, 8, tiny.tokenizer) for q in questions]
    k = split_point(ids[0])
    assert all(split_point(i) == k and i[:k] == ids[0][:k] for i in ids)
    assert len({tuple(i[k:]) for i in ids}) == len(questions)  # the suffix holds the question
    with pytest.raises(ValueError, match="placeholder"):
        split_point([1, 2, 3])


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_shared_prefix_greedy_ids_equal_todays_padded_path(name, attention, tiny, small, frames):
    model = _model(name, tiny, small)
    prefixes, prompts = _prompts(model, frames[name], QUESTIONS)
    lengths = [prefixes[p.prefix].shape[0] + p.suffix.shape[0] for p in prompts]
    assert len(set(lengths)) >= 8  # the batches mix prompt lengths
    assert len({p.shape[0] for p in prefixes}) >= 3  # and video token counts
    today = _ids(model, prefixes, prompts, max_new_tokens=12, share_prefix=False, batch_size=8)
    shared = _ids(model, prefixes, prompts, max_new_tokens=12, batch_size=8)
    assert shared == today
    assert len({tuple(i) for i in today}) > 3  # the answers depend on the video and question


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_a_batch_of_mixed_lengths_equals_the_same_prompts_one_by_one(
    name, attention, tiny, small, frames
):
    model = _model(name, tiny, small)
    prefixes, prompts = _prompts(model, frames[name], QUESTIONS)
    batched = _ids(model, prefixes, prompts, max_new_tokens=12, batch_size=8)
    alone = [_ids(model, prefixes, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == alone
    # and through the library API, text for text
    options = GenerationOptions(max_new_tokens=12, batch_size=8)
    by_one = GenerationOptions(max_new_tokens=12, batch_size=1, share_prefix=False)
    assert model.answer_frames(frames[name], QUESTIONS, options) == model.answer_frames(
        frames[name], QUESTIONS, by_one
    )


@pytest.mark.slow
def test_max_new_tokens_is_the_budget(tiny, frames):
    prefixes, prompts = _prompts(tiny, frames["tiny"], QUESTIONS)
    for budget in (1, 5):
        shared = _ids(tiny, prefixes, prompts, max_new_tokens=budget)
        assert shared == _ids(tiny, prefixes, prompts, max_new_tokens=budget, share_prefix=False)
        assert [len(i) for i in shared] == [budget] * len(prompts)  # the tiny model: no EOS


@pytest.mark.slow
def test_rows_end_at_eos_while_the_others_of_their_batch_go_on(tiny, frames):
    """Make a token the tiny model emits mid-answer the EOS: rows that emit it stop there (it is
    cut), the other rows of the same batch run to max_new_tokens, as on today's path."""
    prefixes, prompts = _prompts(tiny, frames["tiny"], QUESTIONS)
    free = _ids(tiny, prefixes, prompts, max_new_tokens=12)
    eos = free[2][4]
    model = copy.copy(tiny)
    model.tokenizer = copy.deepcopy(tiny.tokenizer)
    model.tokenizer.eos_token = tiny.tokenizer.convert_ids_to_tokens(eos)
    assert model.tokenizer.eos_token_id == eos
    shared = _ids(model, prefixes, prompts, max_new_tokens=12)
    assert shared == _ids(model, prefixes, prompts, max_new_tokens=12, share_prefix=False)
    for ids, full in zip(shared, free, strict=True):
        assert ids == (full[: full.index(eos)] if eos in full else full)
    assert any(len(i) < 12 for i in shared) and any(len(i) == 12 for i in shared)


@pytest.fixture(scope="module")
def world(small, tmp_path_factory) -> list[list[torch.Tensor]]:
    """Projected frame tokens of four encoded clips of the bundled model's own world (synth
    defaults), decoded like inference: on noise it answers a caption prompt with one word."""
    folder = tmp_path_factory.mktemp("world")
    videos = [make_video(f"w{i}", 5, i, SynthOptions()) for i in range(4)]
    size = small.config.image_size
    for video in videos:
        encode_clip(folder, video)
    pixels = [load_video(folder / video_path(v.name), 8, size, isolate=False) for v in videos]
    return small.encode_frames(torch.stack(pixels))[0]


def test_the_bundled_model_ends_answers_at_eos(small, world):
    # one-word answers end within the budget, captions (about 25 tokens) run to it
    questions = [["what colour is the circle?", "Describe this video in detail."]] * 4
    prefixes, prompts = _prompts(small, world, questions)
    shared = _ids(small, prefixes, prompts, max_new_tokens=8)
    assert shared == _ids(small, prefixes, prompts, max_new_tokens=8, share_prefix=False)
    assert any(len(i) < 8 for i in shared)  # a trained model ends some answers itself
    assert any(len(i) == 8 for i in shared)  # and others go on in the same batch
    assert all(small.tokenizer.eos_token_id not in i for i in shared)


@pytest.mark.slow
def test_stop_strings_cut_as_on_todays_path(tiny, frames):
    free = tiny.answer_frames(frames["tiny"], QUESTIONS, GenerationOptions(max_new_tokens=12))
    words = free[2][0].split()
    stop = words[len(words) // 2]  # a word in the middle of one answer
    options = {"max_new_tokens": 12, "stop": (stop,)}
    shared = tiny.answer_frames(frames["tiny"], QUESTIONS, GenerationOptions(**options))
    today = tiny.answer_frames(
        frames["tiny"], QUESTIONS, GenerationOptions(**options, share_prefix=False)
    )
    assert shared == today
    assert shared[2][0] != free[2][0] and free[2][0].startswith(shared[2][0])
    assert all(stop not in a for answers in shared for a in answers)


def test_a_question_too_long_is_reported_in_its_place(tiny, frames):
    questions = [list(qs) for qs in QUESTIONS]
    questions[2].insert(1, "word " * 5000)
    options = GenerationOptions(max_new_tokens=6)
    answers = tiny.answer_frames(frames["tiny"], questions, options)
    assert isinstance(answers[2].pop(1), PromptTooLong)
    assert answers == tiny.answer_frames(frames["tiny"], QUESTIONS, options)
    only = tiny.answer_frames(frames["tiny"][:1], [["word " * 5000]], options)
    assert isinstance(only[0][0], PromptTooLong)  # a video without any prompt that fits


def test_sampling_with_a_seed_is_reproducible(tiny, frames):
    prefixes, prompts = _prompts(tiny, frames["tiny"], QUESTIONS)
    options = {"max_new_tokens": 8, "do_sample": True, "temperature": 0.9, "top_k": 50}
    first = _ids(tiny, prefixes, prompts, seed=3, top_p=0.95, **options)
    assert first == _ids(tiny, prefixes, prompts, seed=3, top_p=0.95, **options)
    assert first != _ids(tiny, prefixes, prompts, seed=4, top_p=0.95, **options)
    greedy = _ids(tiny, prefixes, prompts, max_new_tokens=8)
    assert first != greedy and all(len(i) == 8 for i in first)


def test_a_seeded_sampled_answer_does_not_depend_on_its_batch(tiny, frames):
    """A job's batches depend on decode timing (streaming): a prompt's sampled answer must not."""
    options = GenerationOptions(
        max_new_tokens=8, do_sample=True, temperature=0.9, top_k=50, seed=3, batch_size=8
    )
    together = tiny.answer_frames(frames["tiny"], QUESTIONS, options)
    for v in range(len(QUESTIONS)):
        alone = tiny.answer_frames(frames["tiny"][v : v + 1], QUESTIONS[v : v + 1], options)
        assert alone[0] == together[v]
    one_by_one = GenerationOptions(**{**options.__dict__, "batch_size": 1})
    assert tiny.answer_frames(frames["tiny"], QUESTIONS, one_by_one) == together
