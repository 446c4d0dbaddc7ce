"""Per-video cost of each backend's visual path at its official size, and the visual tokens it
hands to its LLM, on the same 8-frame video.

    python bench/backends.py [--repeats 3] [--threads T] [--source 448x448] [--quick]

Everything measured is in ``SPEC`` below (``QUICK``: tiny sizes, a smoke test). Random weights,
fp32 on CPU, no LLM is built. The visual paths, each at its official size (``OFFICIAL`` says
where every number comes from):

- ``video_panda``: STAB + the mlp2x_gelu projector (the released Video-Panda-7B config), on the
  frames letterboxed to 448 as our decoder does (2 clips of 4 frames, mask channel);
- ``video_llava``: ``VideoLlavaModel.get_video_features`` (its video tower, CLIP ViT-L/14 at 224,
  layer -2, and the projector to 4096) on a module holding only those parts, on the frames resized
  to 224 on the short side and centre-cropped by ``VideoLlavaVideoProcessor``'s preprocessing
  (the backends' own, ``backends/processing.py``);
- ``qwen2_vl``: ``Qwen2VisionTransformerPretrainedModel`` (Qwen2-VL-7B's vision tower with its
  merger to 3584), on the frames resized to ``smart_resize`` of their size with the video
  processor's min/max pixels and cut into its patches by the ``qwen2_vl`` backend's
  preprocessing (``backends/qwen2_vl_processing.py``, equal to ``Qwen2VLVideoProcessor``).

The video is a synthetic scene (``video.samples``) encoded to H.264 and decoded back, 8 frames at
``--source`` size; the bench asserts every model was given those frames (shape and sha256).
Preprocessing is not timed: a figure is the median of ``--repeats`` calls of the visual path
after one untimed call, printed with the 1-minute load average when it was taken. The ratios are
each model's time and tokens over Video-Panda's, from the same run. (The paper reports the vision
part 3x faster than Video-LLaVA's; its hardware and precision are not stated.)
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loadavg import load
from videopanda_cluster.backends.processing import VideoProcessing
from videopanda_cluster.backends.qwen2_vl_processing import QwenVideoProcessing
from videopanda_cluster.model.config import VideoPandaConfig
from videopanda_cluster.model.projector import build_projector
from videopanda_cluster.model.stab import STAB
from videopanda_cluster.video.decode import decode_all
from videopanda_cluster.video.geometry import compute_geometry
from videopanda_cluster.video.letterbox import letterbox
from videopanda_cluster.video.normalize import to_model_input
from videopanda_cluster.video.probe import DecodeLimits, open_video
from videopanda_cluster.video.samples import SampleSpec, write_video

# -- the official sizes ------------------------------------------------------------------------
# VideoLlavaConfig arguments of LanguageBind/Video-LLaVA-7B-hf: transformers 4.57's
# VideoLlavaConfig defaults are these (CLIPVisionConfig ViT-L/14 at 224, feature layer -2, GELU
# projector with bias; Llama-2-7B width 4096, which only sizes the projector here).
VIDEO_LLAVA_7B: dict[str, Any] = {
    "vision_config": {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 768,
    },
    "text_config": {"model_type": "llama", "hidden_size": 4096},
    "vision_feature_layer": -2,
    "projector_hidden_act": "gelu",
}
# Qwen2VLVisionConfig arguments of Qwen/Qwen2-VL-7B-Instruct (transformers 4.57's defaults).
QWEN2_VL_7B: dict[str, Any] = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 3584,  # the merger's output: the LLM's width
    "hidden_act": "quick_gelu",
    "mlp_ratio": 4,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
# Qwen2VLVideoProcessor's (min_pixels, max_pixels) per frame in transformers 4.57: 128·28² and
# 768·28² (a folder's video_preprocessor_config.json may set others).
QWEN2_VL_PIXELS = (128 * 28 * 28, 768 * 28 * 28)
OFFICIAL = {
    "video_panda": "VideoPandaConfig.official() (jh-yi/Video-Panda-7B; spec §1-§3)",
    "video_llava": "VideoLlavaConfig defaults = LanguageBind/Video-LLaVA-7B-hf, 8 frames",
    "qwen2_vl": "Qwen2VLVisionConfig defaults = Qwen/Qwen2-VL-7B-Instruct; "
    "Qwen2VLVideoProcessor min/max pixels",
}
LABELS = {
    "video_panda": "Video-Panda STAB + projector",
    "video_llava": "Video-LLaVA video tower + projector",
    "qwen2_vl": "Qwen2-VL vision tower + merger",
}


@dataclass(frozen=True)
class Spec:
    source: tuple[int, int] = (448, 448)  # (width, height) of the video's frames
    frames: int = 8
    video_panda: VideoPandaConfig = field(default_factory=VideoPandaConfig.official)
    video_llava: dict[str, Any] = field(default_factory=lambda: VIDEO_LLAVA_7B)
    qwen2_vl: dict[str, Any] = field(default_factory=lambda: QWEN2_VL_7B)
    qwen2_vl_pixels: tuple[int, int] = QWEN2_VL_PIXELS
    repeats: int = 3


SPEC = Spec()
QUICK = Spec(
    source=(112, 112),
    video_panda=replace(VideoPandaConfig.tiny(), image_size=112),
    video_llava={
        "vision_config": {
            **VIDEO_LLAVA_7B["vision_config"],
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 56,
        },
        "text_config": {"model_type": "llama", "hidden_size": 64},
    },
    qwen2_vl={**QWEN2_VL_7B, "depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4},
    qwen2_vl_pixels=(56 * 56, 112 * 112),
    repeats=1,
)


# -- the video ---------------------------------------------------------------------------------
def fingerprint(frames: np.ndarray) -> dict[str, Any]:
    """What identifies the frames a model was given: their shape and the sha256 of their bytes."""
    return {"shape": list(frames.shape), "sha256": hashlib.sha256(frames.tobytes()).hexdigest()}


def video_frames(width: int, height: int, count: int) -> np.ndarray:
    """(count, H, W, 3) uint8: a synthetic scene of ``count`` frames, encoded and decoded back."""
    spec = SampleSpec(f"bench_{width}x{height}_{count}f.mp4", width, height, count, Fraction(8),
                      "libx264")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / spec.name
        write_video(path, spec, seed=0)
        with open_video(str(path), DecodeLimits()) as (container, stream):
            frames = decode_all(container, stream, upright=True)
    if len(frames) != count:
        raise RuntimeError(f"decoded {len(frames)} frames of {count}")
    return np.stack(frames)


# -- the visual paths --------------------------------------------------------------------------
@dataclass
class Visual:
    """One model's visual path, ready to run on one video."""

    run: Callable[[], torch.Tensor]  # → (visual tokens, LLM width)
    module: nn.Module
    frames: dict[str, Any]  # fingerprint() of the frames its input was made from
    input_shape: list[int]
    attention: str  # the attention implementation it runs


def video_panda(spec: Spec, frames: np.ndarray) -> Visual:
    config = spec.video_panda
    stab = STAB(config).eval()
    projector = build_projector(config.projector_type, config.stab_width, config.llm_width).eval()
    height, width = frames.shape[1:3]
    geom = compute_geometry(width, height, config.image_size)
    pixels = to_model_input(letterbox(list(frames), geom), geom, config.num_frames)
    clips = pixels.reshape(-1, config.chunk_size, *pixels.shape[1:])

    def run() -> torch.Tensor:
        tokens, _ = stab(clips)
        return projector(torch.cat(tokens))

    modules = nn.ModuleList([stab, projector])
    return Visual(run, modules, fingerprint(frames), list(pixels.shape), "stab (matmul, softmax)")


class VideoLlavaVisual(nn.Module):
    """``VideoLlavaModel``'s video path alone: its video tower and projector, no LLM and no image
    tower; ``forward`` is transformers' own ``get_video_features``."""

    def __init__(self, config: Any) -> None:
        from transformers import AutoModel
        from transformers.models.video_llava.modeling_video_llava import (
            VideoLlavaMultiModalProjector,
        )

        super().__init__()
        self.config = config
        self.video_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = VideoLlavaMultiModalProjector(config)

    def forward(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        from transformers import VideoLlavaModel

        features, _ = VideoLlavaModel.get_video_features(self, pixel_values_videos)
        return features.flatten(0, 1)  # (frames · tokens per frame, width)


def video_llava(spec: Spec, frames: np.ndarray) -> Visual:
    from transformers import VideoLlavaConfig

    config = VideoLlavaConfig(**spec.video_llava)
    model = VideoLlavaVisual(config).eval()
    side = config.vision_config.image_size
    processing = VideoProcessing.from_dict(  # the processor's class defaults at this tower's side
        {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}},
        "VideoLlavaVideoProcessor",
    )
    videos = processing(frames)[None]
    attention = model.video_tower.config._attn_implementation
    return Visual(lambda: model(videos), model, fingerprint(frames), list(videos.shape), attention)


def qwen2_vl(spec: Spec, frames: np.ndarray) -> Visual:
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VisionTransformerPretrainedModel,
    )

    config = Qwen2VLVisionConfig(**spec.qwen2_vl)
    model = Qwen2VisionTransformerPretrainedModel(config).eval()
    processing = QwenVideoProcessing.from_dict(
        {
            "min_pixels": spec.qwen2_vl_pixels[0],
            "max_pixels": spec.qwen2_vl_pixels[1],
            "patch_size": config.patch_size,
            "temporal_patch_size": config.temporal_patch_size,
            "merge_size": config.spatial_merge_size,
        }
    )
    patches, grid = processing.patches(frames)
    _, h, w = grid
    shape = [len(frames), 3, h * config.patch_size, w * config.patch_size]
    grid_thw = torch.tensor([grid])
    return Visual(lambda: model(patches, grid_thw=grid_thw), model, fingerprint(frames), shape,
                  model.config._attn_implementation)  # fmt: skip


MODELS: dict[str, Callable[[Spec, np.ndarray], Visual]] = {
    "video_panda": video_panda,
    "video_llava": video_llava,
    "qwen2_vl": qwen2_vl,
}
BASELINE = "video_panda"  # the ratios' denominator


# -- measuring ---------------------------------------------------------------------------------
def measure(name: str, spec: Spec, frames: np.ndarray) -> dict[str, Any]:
    visual = MODELS[name](spec, frames)
    visual.module.requires_grad_(False)
    with torch.inference_mode():
        tokens = visual.run()  # warm-up
        times = []
        for _ in range(spec.repeats):
            start = time.perf_counter()
            visual.run()
            times.append(time.perf_counter() - start)
    return {
        "model": name,
        "label": LABELS[name],
        "official": OFFICIAL[name],
        "frames": visual.frames,
        "input_shape": visual.input_shape,
        "attention": visual.attention,
        "params": sum(p.numel() for p in visual.module.parameters()),
        "visual_tokens": tokens.shape[0],
        "llm_width": tokens.shape[1],
        "ms_per_video": round(1000 * statistics.median(times), 1),
        "load": load(),
    }


def bench(spec: Spec, models: list[str], sizes: str) -> dict[str, Any]:
    torch.manual_seed(0)
    frames = video_frames(*spec.source, spec.frames)
    source = fingerprint(frames)
    rows = []
    for name in models:
        rows.append(measure(name, spec, frames))
        gc.collect()  # one model's weights at a time
        if rows[-1]["frames"] != source:
            raise AssertionError(f"{name} was given other frames: {rows[-1]['frames']}, {source}")
    base = next((r for r in rows if r["model"] == BASELINE), None)
    ratios = {
        f"{r['model']}/{BASELINE}": {
            "time": round(r["ms_per_video"] / base["ms_per_video"], 2),
            "tokens": round(r["visual_tokens"] / base["visual_tokens"], 2),
        }
        for r in rows
        if base is not None and r is not base
    }
    return {
        "sizes": sizes,
        "threads": torch.get_num_threads(),
        "repeats": spec.repeats,
        "video": {"source": list(spec.source), **source},
        "models": rows,
        "ratios": ratios,
    }


def report(result: dict[str, Any]) -> None:
    video = result["video"]
    print(f"video: {video['shape']} uint8, sha256 {video['sha256'][:16]}; every model got it")
    print(f"{result['sizes']} sizes, threads {result['threads']}, median of {result['repeats']}, "
          "fp32 CPU, random weights")  # fmt: skip
    print("visual path | input | attention | params (M) | visual tokens | LLM width | ms/video | "
          "load (1-min)")  # fmt: skip
    for row in result["models"]:
        shape = "x".join(map(str, row["input_shape"]))
        print(f"{row['label']} | {shape} | {row['attention']} | {row['params'] / 1e6:.1f} | "
              f"{row['visual_tokens']} | {row['llm_width']} | {row['ms_per_video']} | "
              f"{row['load']}")  # fmt: skip
    for key, ratio in result["ratios"].items():
        print(f"{key}: time {ratio['time']}x, visual tokens {ratio['tokens']}x")
    for row in result["models"]:
        print(f"{row['model']}: {row['official']}")
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--repeats", type=int, help=f"timed calls (default {SPEC.repeats})")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--source", help="WxH of the video's frames (default: the spec's)")
    parser.add_argument("--models", default=",".join(MODELS), help=", ".join(MODELS))
    args = parser.parse_args()
    spec = QUICK if args.quick else SPEC
    if args.repeats is not None:
        spec = replace(spec, repeats=args.repeats)
    if args.source:
        width, height = (int(x) for x in args.source.lower().split("x"))
        spec = replace(spec, source=(width, height))
    models = args.models.split(",")
    if unknown := set(models) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)} (choose from {', '.join(MODELS)})")
    if spec.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    report(bench(spec, models, "quick (tiny)" if args.quick else "official"))


if __name__ == "__main__":
    main()
