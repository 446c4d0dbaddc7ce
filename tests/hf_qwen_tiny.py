"""Tiny random Qwen2-VL and Qwen2.5-VL checkpoint folders in the Hugging Face layout, written on
the fly: config.json + model.safetensors, a byte-level BPE tokenizer with Qwen's special tokens,
the chat template (chat_template.jinja, as the tokenizer saves it), and the processor configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
# Qwen2-VL-Instruct's template, as far as videos and text go
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "what is happening in the video? a person walks a dog along the river in the morning.",
    "describe the scene: two cats play with a red ball on the kitchen floor.",
    "how many people are there? three children run across a green field, laughing.",
] * 20
TINY_PIXELS = {"min_pixels": 28 * 28 * 2, "max_pixels": 28 * 28 * 6}
ARCHITECTURE = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}  # fmt: skip
PROCESSOR = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}


def write_tokenizer(folder: Path) -> dict[str, int]:
    """A small byte-level BPE trained on :data:`CORPUS` with Qwen's special tokens; their ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return {t: int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL} | {"vocab": len(tokenizer)}


def write_qwen_folder(
    folder: Path,
    model_type: str,
    video_processor: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A tiny random ``model_type`` ("qwen2_vl" or "qwen2_5_vl") folder; ``video_processor``
    overrides the video processor config (default: tiny pixel bounds, no frame sampling)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder)
    text = {
        "vocab_size": ids["vocab"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    vision: dict[str, Any] = dict(
        depth=2, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2
    )
    if model_type == "qwen2_vl":
        vision |= dict(embed_dim=32, hidden_size=64, mlp_ratio=2)
    else:
        vision |= dict(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=56,
                       fullatt_block_indexes=[1], tokens_per_second=2)  # fmt: skip
    config = AutoConfig.for_model(
        model_type,
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        architectures=[ARCHITECTURE[model_type]],
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    for p in model.parameters():  # wider than the init's 0.02 so that answers vary by input
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.2)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    settings: dict[str, Any] = {
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        **TINY_PIXELS,
    }
    settings["processor_class"] = PROCESSOR[model_type]
    image = {"image_processor_type": "Qwen2VLImageProcessor", **settings}
    video = {"video_processor_type": "Qwen2VLVideoProcessor", **settings, **(video_processor or {})}
    (folder / "preprocessor_config.json").write_text(json.dumps(image))
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video))
    return folder
