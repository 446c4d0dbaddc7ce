"""Prompt template, piecewise tokenisation and post-processing against a real tiny SentencePiece."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from videopanda_cluster.model.prompt import (
    IMAGE_MARKER,
    IMAGE_TOKEN_INDEX,
    SYSTEM_PROMPT_EVAL,
    SYSTEM_PROMPT_TRAIN,
    build_prompt,
    decode_new_tokens,
    load_tokenizer,
    postprocess,
    prompt_ids,
    tokenize_prompt,
)
from videopanda_cluster.model.tokenizer_builder import build_sentencepiece_tokenizer

QUESTIONS = [
    "What is happening in the video?",
    "What colour is the ball?",
    "How many people are there?",
    "Is the red square moving left or right?",
    "Describe the video in detail.",
    " What is the man doing?",
    "  two leading spaces",
    "trailing space ",
    "",
    "?",
    "Why?!... (really) [yes] {no} 'quoted' \"double\"",
    "Qu'est-ce que c'est ? 日本",
    "Ça bouge à gauche — ou à droite ?",
    "Что происходит на видео?",
    "emoji 🐼 panda",
    "Numbers: 12345, 3.14, -7%",
    "Tabs\tand\tmore",
    "line one\nline two",
    "ASSISTANT: USER: inside the question",
    "a" * 300,
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_sentencepiece_tokenizer(tmp_path_factory.mktemp("tokenizer"), [])


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def sp(tokenizer_dir) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))


def test_prompt_is_exact_template() -> None:
    text = build_prompt("What is it?")
    expected_system = (
        "A chat between a curious human and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the human's questions."
    )
    assert expected_system == SYSTEM_PROMPT_EVAL
    assert text == expected_system + " USER: " + "<image>" * 8 + "\nWhat is it? ASSISTANT:"
    assert text.count(IMAGE_MARKER) == 8
    assert text.endswith(" ASSISTANT:")
    assert build_prompt("q", num_frames=2, system=SYSTEM_PROMPT_TRAIN) == (
        SYSTEM_PROMPT_TRAIN + " USER: <image><image>\nq ASSISTANT:"
    )
    assert "curious user" in SYSTEM_PROMPT_TRAIN and "user's questions" in SYSTEM_PROMPT_TRAIN


def test_tokenizer_loads_as_slow_legacy_llama(tokenizer) -> None:
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert tokenizer.legacy is True
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


@pytest.mark.parametrize("question", QUESTIONS)
def test_tokenize_prompt_matches_sentencepiece(question: str, tokenizer, sp) -> None:
    text = build_prompt(question)
    first, last = text.split(IMAGE_MARKER)[0], text.split(IMAGE_MARKER)[-1]
    ids = tokenize_prompt(text, tokenizer)
    bos = tokenizer.bos_token_id
    assert ids == [bos, *sp.encode(first), *[IMAGE_TOKEN_INDEX] * 8, *sp.encode(last)]
    assert ids.count(bos) == 1 and ids[0] == bos
    start = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[start : start + 8] == [IMAGE_TOKEN_INDEX] * 8
    assert ids.count(IMAGE_TOKEN_INDEX) == 8
    # Legacy SentencePiece adds a dummy-prefix space to the chunk "\n...": a lone "▁", then the
    # newline byte (29871, 13 with the real Llama vocabulary).
    assert ids[start + 8 : start + 10] == [sp.piece_to_id("▁"), sp.piece_to_id("<0x0A>")]


def test_template_text_parses_eos_text_but_a_question_does_not(tokenizer) -> None:
    """tokenize_prompt reads "</s>" in (trusted) template text as the EOS token, as the training
    conversations need; prompt_ids reads the same string in a question as plain text."""
    ids = tokenize_prompt(build_prompt("stop </s> here"), tokenizer)
    assert ids.count(tokenizer.eos_token_id) == 1
    assert ids.index(tokenizer.eos_token_id) > ids.index(IMAGE_TOKEN_INDEX)
    assert tokenizer.eos_token_id not in prompt_ids("stop </s> here", 8, tokenizer)


def test_tokenize_prompt_without_markers_and_adjacent_markers(tokenizer, sp) -> None:
    assert tokenize_prompt("plain text", tokenizer) == [1, *sp.encode("plain text")]
    ids = tokenize_prompt("<image>x", tokenizer)
    assert ids == [1, IMAGE_TOKEN_INDEX, *sp.encode("x")]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  yes </s>", "yes"),
        ("a</s>", "a"),
        ("yes", "yes"),
        ("\n Yes, it is Red. \n", "Yes, it is Red."),
        ("a </s> b", "a </s> b"),
        ("a</s></s>", "a</s>"),
        ("</s>", ""),
        ("", ""),
    ],
)
def test_postprocess(raw: str, clean: str) -> None:
    assert postprocess(raw) == clean


def test_decode_new_tokens_skips_special_tokens(tokenizer, sp) -> None:
    ids = [tokenizer.bos_token_id, *sp.encode("The red ball bounces."), tokenizer.eos_token_id]
    assert decode_new_tokens(tokenizer, ids) == "The red ball bounces."
    assert "</s>" in tokenizer.decode(ids)


def test_load_tokenizer_falls_back_to_fast_without_slow_files(tmp_path, monkeypatch) -> None:
    import transformers

    calls: list[bool] = []

    def fake_from_pretrained(path: str, use_fast: bool) -> str:
        calls.append(use_fast)
        return "tok"

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    assert load_tokenizer(tmp_path) == "tok"
    (tmp_path / "tokenizer.model").write_bytes(b"")
    load_tokenizer(tmp_path)
    assert calls == [True, False]
