"""Writers of Video-Panda checkpoints in the released HF layout, with random weights, for tests.

The key names are spelled out here independently of ``checkpoint.py`` so the tests check its
mapping rather than reuse it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from videopanda_cluster.model.config import VideoPandaConfig
from videopanda_cluster.model.modeling import VideoPanda

COMPRESSOR = "model.video_tower_compressor."
TEACHER = "model.video_teacher.video_tower."
COMPRESSOR_TEACHER = "model.video_tower_compressor.teacher_layer.video_tower."
# One tensor of the size of a ViT-L teacher's attention input projection (12 MiB in fp32).
BIG_TEACHER_KEY = TEACHER + "transformer.resblocks.0.attn.in_proj_weight"


def random_model(config: VideoPandaConfig, seed: int = 0) -> VideoPanda:
    """A model in eval mode whose parameters and BatchNorm statistics are all random."""
    torch.manual_seed(seed)
    model = VideoPanda(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=gen))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=gen))
            elif name.endswith("num_batches_tracked"):
                buffer.fill_(1000)  # a trained BN's step count
    return model.eval()


def release_key(name: str) -> str:
    """Released checkpoint key of one of our state_dict names."""
    return name[len("llm.") :] if name.startswith("llm.") else "model." + name


@dataclass
class Release:
    """A state dict in the released layout, with its keys grouped by what a loader must do."""

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    primary: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # compressor and teacher
    ignored: list[str] = field(default_factory=list)  # rotary inv_freq

    def add(self, group: list[str], key: str, tensor: torch.Tensor) -> None:
        self.state[key] = tensor
        group.append(key)


def released_state(
    model: VideoPanda, seed: int = 1, extras: bool = True, big_teacher: bool = False
) -> Release:
    """The model's tensors under released keys, in the release's order: LLM body (with rotary
    buffers), video tower + ``vision_tower`` alias, projector + ``mm_projector`` alias, then, with
    ``extras``, training-only compressor and teacher tensors, and ``lm_head`` last.

    Teacher towers reuse the STAB key names and shapes with other values, so a loader that
    routed them into the video tower would load wrong numbers silently.
    """
    gen = torch.Generator().manual_seed(seed)
    ours = model.state_dict()
    release = Release()
    head_dim = model.config.llm_width // model.config.llm["num_attention_heads"]
    layers = model.config.llm["num_hidden_layers"]
    for name, tensor in ours.items():
        if name.startswith("llm.model."):
            release.add(release.primary, release_key(name), tensor)
    for n in range(layers):
        inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        release.add(release.ignored, f"model.layers.{n}.self_attn.rotary_emb.inv_freq", inv_freq)
    for part, alias in (("video_tower.", "vision_tower."), ("video_projector.", "mm_projector.")):
        names = [n for n in ours if n.startswith(part)]
        for name in names:
            release.add(release.primary, release_key(name), ours[name])
        for name in names:  # the same tensor objects, as in the release
            release.add(release.aliases, "model." + alias + name[len(part) :], ours[name])
    if extras:
        width, llm_width = model.config.stab_width, model.config.llm_width
        compressor = {
            "norm_layer.0.0.weight": (width,),
            "norm_layer.0.0.bias": (width,),
            "input_layer.weight": (llm_width, width),
            "input_layer.bias": (llm_width,),
            "output_layer.weight": (width, llm_width),
            "output_layer.bias": (width,),
        }
        for key, shape in compressor.items():
            release.add(release.skipped, COMPRESSOR + key, torch.randn(shape, generator=gen))
        tower = {
            n[len("video_tower.") :]: t for n, t in ours.items() if n.startswith("video_tower.")
        }
        for prefix in (COMPRESSOR_TEACHER, TEACHER):
            for key, tensor in tower.items():
                other = torch.randn(tensor.shape, generator=gen).to(tensor.dtype) + 7
                release.add(release.skipped, prefix + key, other)
        if big_teacher:
            release.add(release.skipped, BIG_TEACHER_KEY, torch.randn(3072, 1024, generator=gen))
    release.add(release.primary, "lm_head.weight", ours["llm.lm_head.weight"])
    return release


def write_weights(
    folder: Path, state: dict[str, torch.Tensor], shards: int = 3, fmt: str = "bin"
) -> list[Path]:
    """Split ``state`` (in order) over ``shards`` files, ``pytorch_model-0000k-of-0000n.bin`` via
    torch.save or ``model-0000k-of-0000n.safetensors``, plus the HF index."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    size = -(-len(keys) // shards)
    chunks = [keys[i * size : (i + 1) * size] for i in range(shards)]
    stem, index_name = (
        ("pytorch_model", "pytorch_model.bin.index.json")
        if fmt == "bin"
        else ("model", "model.safetensors.index.json")
    )
    paths, weight_map = [], {}
    for i, chunk in enumerate(chunks):
        path = folder / f"{stem}-{i + 1:05d}-of-{shards:05d}.{fmt}"
        if fmt == "bin":
            torch.save({k: state[k] for k in chunk}, path)
        else:  # safetensors refuses tensors sharing memory
            save_file({k: state[k].contiguous().clone() for k in chunk}, str(path))
        weight_map.update(dict.fromkeys(chunk, path.name))
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / index_name).write_text(json.dumps(index, indent=2))
    return paths


def write_checkpoint(
    folder: Path,
    config: VideoPandaConfig,
    state: dict[str, torch.Tensor],
    tokenizer=None,
    shards: int = 3,
    fmt: str = "bin",
) -> Path:
    """A whole checkpoint folder: config.json, weight shards + index, tokenizer files."""
    config.save(folder)
    write_weights(folder, state, shards, fmt)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
