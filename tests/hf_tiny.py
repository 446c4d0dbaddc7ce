"""Tiny random ``transformers`` video-LLM folders in the hub layout, written on the fly: config
and safetensors weights (``save_pretrained``), a byte-level tokenizer with the model's special
tokens, a chat template, and the processor config files (the JSON a real folder has, written
by hand: the processors themselves need torchvision, which the main venv lacks). Video-LLaVA,
LLaVA-NeXT-Video, Qwen2-VL and Qwen2.5-VL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")  # fmt: skip

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


def write_tokenizer(
    folder: Path,
    specials: tuple[str, ...] = SPECIALS,
    chat_template: str | None = None,
    tokenizer_class: str = "PreTrainedTokenizerFast",
    **tokens: Any,
) -> Any:
    """A byte-level BPE without merges (every text tokenises) plus ``specials``, as
    ``tokenizer_class`` with the special ``tokens`` (``bos_token`` etc.); with a ``bos_token``,
    BOS is prepended as Llama's tokenizer does."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({ch: len(specials) + i for i, ch in enumerate(sorted(alphabet))})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=tokens.get("unk_token")))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    bos = tokens.get("bos_token")
    if bos is not None:
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    named = {t for t in tokens.values() if t is not None}
    tokenizer = getattr(transformers, tokenizer_class)(
        tokenizer_object=core,
        additional_special_tokens=[t for t in specials if t not in named],
        **tokens,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_llama_tokenizer(folder: Path) -> Any:
    """The LLaVA folders' tokenizer: :data:`SPECIALS`, Llama's BOS, EOS and padding."""
    return write_tokenizer(
        folder, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


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
    tokenizer = write_llama_tokenizer(folder)
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
    tokenizer = write_llama_tokenizer(folder)
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


# Qwen2-VL-Instruct's template, as far as videos and text go
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_PIXELS = {"min_pixels": 28 * 28 * 2, "max_pixels": 28 * 28 * 6}  # 2 to 6 merged patches
QWEN_PROCESSOR = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}


def write_qwen_folder(
    folder: Path,
    model_type: str,
    video_processor: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A tiny random ``model_type`` ("qwen2_vl" or "qwen2_5_vl") folder: the template in the
    tokenizer's files (the processor falls back to it), both processor configs;
    ``video_processor`` overrides the video processor's (default: tiny pixel bounds, no frame
    sampling)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(
        folder,
        QWEN_SPECIALS,
        QWEN_TEMPLATE,
        "Qwen2TokenizerFast",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in QWEN_SPECIALS}
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    text = _llama(len(tokenizer)) | {
        "intermediate_size": 128,
        "max_position_embeddings": 2048,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "eos_token_id": eos,
        "pad_token_id": pad,
        "bos_token_id": pad,
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
        eos_token_id=eos,
        pad_token_id=pad,
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()
    for p in model.parameters():  # wider than the init's 0.02 so that answers vary by input
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.2)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    settings = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, **QWEN_PIXELS,
                "processor_class": QWEN_PROCESSOR[model_type]}  # fmt: skip
    return _save(
        folder,
        model,
        {
            "preprocessor_config.json": {
                "image_processor_type": "Qwen2VLImageProcessor",
                **settings,
            },
            "video_preprocessor_config.json": {
                "video_processor_type": "Qwen2VLVideoProcessor",
                **settings,
                **(video_processor or {}),
            },
        },
    )
