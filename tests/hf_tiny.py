"""Tiny random ``transformers`` video-LLM folders in the hub layout, written on the fly: config
and safetensors weights (``save_pretrained``), a byte-level tokenizer with the model's special
tokens, a chat template, and the processor config files (the JSON a real folder has, written
by hand: the processors themselves need torchvision, which the main venv lacks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>")

# the real folders' templates: Video-LLaVA's (chat_template.json) and LLaVA-NeXT-Video's with a
# system line (chat_template.jinja); media first, then the text, then "ASSISTANT:"
_TURNS = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
VIDEO_LLAVA_TEMPLATE = _TURNS
LLAVA_NEXT_VIDEO_TEMPLATE = (
    "{{ 'A chat between a curious human and an artificial intelligence assistant. ' }}" + _TURNS
)


def write_tokenizer(folder: Path, chat_template: str | None = None) -> Any:
    """A byte-level BPE without merges (every text tokenises) plus :data:`SPECIALS`; BOS is
    prepended as Llama's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: len(SPECIALS) + i for i, ch in enumerate(sorted(alphabet))})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<image>", "<video>"],
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return tokenizer


def _clip(image_size: int) -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
        projection_dim=32,
    )


def _llama(vocab: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,  # large enough that answers depend on the input
    )


def _save(folder: Path, model: Any, files: dict[str, Any]) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=2)
        (folder / name).write_text(text)
    return folder


def write_video_llava(folder: Path, seed: int = 0) -> Path:
    """A Video-LLaVA folder: 28 px crop (2×2 patches + CLS = 5 tokens per frame), the
    template as chat_template.json, the video processor config with the class's resize."""
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(folder)
    config = VideoLlavaConfig(
        vision_config={"model_type": "clip_vision_model", **_clip(28)},
        text_config={"model_type": "llama", **_llama(len(tokenizer))},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-2,
        image_seq_length=5,
        video_seq_length=40,
    )
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(config).eval()
    crop = {"height": 28, "width": 28}
    return _save(
        folder,
        model,
        {
            "chat_template.json": {"chat_template": VIDEO_LLAVA_TEMPLATE},
            "processor_config.json": {
                "processor_class": "VideoLlavaProcessor",
                "patch_size": 14,
                "vision_feature_select_strategy": "default",
                "num_additional_image_tokens": 1,
            },
            "preprocessor_config.json": {
                "image_processor_type": "VideoLlavaImageProcessor",
                "size": {"shortest_edge": 32},
                "crop_size": crop,
                "resample": 3,
            },
            "video_preprocessor_config.json": {
                "video_processor_type": "VideoLlavaVideoProcessor",
                "size": {"shortest_edge": 32},
                "crop_size": crop,
            },
        },
    )


def write_llava_next_video(folder: Path, seed: int = 0) -> Path:
    """A LLaVA-NeXT-Video folder: 56 px crop (4×4 patches, pooled 2×2 = 4 tokens per frame),
    the template as chat_template.jinja, the video processor config with bilinear resizing
    and its own frame count (do_sample_frames, num_frames 4)."""
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(folder)
    config = LlavaNextVideoConfig(
        vision_config={"model_type": "clip_vision_model", **_clip(56)},
        text_config={"model_type": "llama", **_llama(len(tokenizer))},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_mode="average",
        spatial_pool_stride=2,
        image_grid_pinpoints=[[56, 56]],
        image_seq_length=16,
        video_seq_length=16,
    )
    torch.manual_seed(seed)
    model = LlavaNextVideoForConditionalGeneration(config).eval()
    return _save(
        folder,
        model,
        {
            "chat_template.jinja": LLAVA_NEXT_VIDEO_TEMPLATE,
            "processor_config.json": {
                "processor_class": "LlavaNextVideoProcessor",
                "patch_size": 14,
                "vision_feature_select_strategy": "default",
            },
            "preprocessor_config.json": {
                "image_processor_type": "LlavaNextImageProcessor",
                "size": {"shortest_edge": 56},
                "crop_size": {"height": 56, "width": 56},
                "image_grid_pinpoints": [[56, 56]],
            },
            "video_preprocessor_config.json": {
                "video_processor_type": "LlavaNextVideoVideoProcessor",
                "size": {"shortest_edge": 64},
                "crop_size": {"height": 56, "width": 56},
                "resample": 2,
                "do_sample_frames": True,
                "num_frames": 4,
            },
        },
    )
