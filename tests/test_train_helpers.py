"""Shared builders for the training tests: tokenizer, a tiny 4-frame model, clips and records."""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.model_helpers import randomize_
from videopanda_cluster import VideoPanda, VideoPandaConfig
from videopanda_cluster.model.prompt import load_tokenizer
from videopanda_cluster.model.tokenizer_builder import build_sentencepiece_tokenizer
from videopanda_cluster.train.data import VideoConversationDataset, load_records
from videopanda_cluster.video.samples import SampleSpec, write_video

SIZE = 224  # smallest input size the geometry supports
CLIPS = [("wide.mp4", 64, 48), ("square.mp4", 48, 48), ("tall.mp4", 40, 64)]
ANSWERS = ["a red circle moves right", "two shapes", "the square is blue", "it bounces"]


class Stop(Exception):
    """Raised from an ``on_step`` callback to kill a training run mid-stage."""


def tiny_model(tokenizer) -> VideoPanda:
    """The tiny test model made smaller: 4 frames per video (one STAB clip), width 32."""
    base = VideoPandaConfig.tiny(vocab_size=len(tokenizer))
    llm = dict(base.llm, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    config = dataclasses.replace(
        base, stab_width=32, stab_heads=4, gstra_heads=4, num_frames=4, image_size=SIZE, llm=llm
    )
    torch.manual_seed(0)
    model = VideoPanda(config)
    randomize_(model, seed=1, llm_std=0.05)
    model.tokenizer = tokenizer
    return model


def write_data(folder: Path, count: int = 4) -> Path:
    """``count`` records over three tiny clips; returns the JSON path (videos beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, (name, w, h) in enumerate(CLIPS):
        write_video(folder / name, SampleSpec(name, w, h, 12, Fraction(4), "libx264"), seed=n)
    rows = []
    for i in range(count):
        turns = [
            {"from": "human", "value": f"what happens in clip {i}?\n<video>"},
            {"from": "gpt", "value": ANSWERS[i % len(ANSWERS)]},
        ]
        if i % 2:
            turns += [
                {"from": "human", "value": "and then?"},
                {"from": "gpt", "value": ANSWERS[(i + 1) % len(ANSWERS)]},
            ]
        rows.append({"id": f"s{i}", "video": CLIPS[i % len(CLIPS)][0], "conversations": turns})
    path = folder / "train.json"
    path.write_text(json.dumps(rows))
    return path


def build(folder: Path, count: int = 4) -> tuple:
    """(tokenizer folder, tokenizer, dataset JSON path) under ``folder``."""
    tok_dir = folder / "tok"
    build_sentencepiece_tokenizer(tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    return tok_dir, tokenizer, write_data(folder / "data", count)


def dataset(data: Path, tokenizer) -> VideoConversationDataset:
    return VideoConversationDataset(
        load_records(data), data.parent, tokenizer, num_frames=4, size=SIZE, isolate=False
    )


def tiny_llama(kv_heads: int = 4) -> LlamaForCausalLM:
    """A seeded 2-layer, 4-head Llama of width 32 with eager attention (attention-loss tests)."""
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)
