"""The frame preprocessing of ``transformers``' video processors (``BaseVideoProcessor._preprocess``
of transformers 4.57: resize, center crop, fused rescale + normalise), in torch alone.

The real processors need ``torchvision``, which does not import beside the CPU build of torch
(docs/backends.md); these functions reproduce what its v2 functional ops compute on uint8 frames
and are tested against the real processors (tests/test_hf_processing.py). The settings come from
a folder's processor config with the class defaults of the processor it names
(:func:`load_video_processing`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

# PIL resampling codes as they appear in processor configs -> torch interpolate mode (transformers
# maps PIL NEAREST to torchvision's NEAREST_EXACT)
NEAREST, BILINEAR, BICUBIC = 0, 2, 3
INTERPOLATION = {NEAREST: "nearest-exact", BILINEAR: "bilinear", BICUBIC: "bicubic"}

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# processor config files in the order transformers' loader tries them (video, image, processor)
CONFIG_FILES = (
    "video_preprocessor_config.json",
    "preprocessor_config.json",
    "processor_config.json",
)

_CLIP_VIDEO = {
    "resample": BICUBIC,
    "image_mean": OPENAI_CLIP_MEAN,
    "image_std": OPENAI_CLIP_STD,
    "size": {"shortest_edge": 224},
    "default_to_square": False,
    "crop_size": {"height": 224, "width": 224},
    "do_resize": True,
    "do_center_crop": True,
    "do_rescale": True,
    "do_normalize": True,
    "do_convert_rgb": True,
    "do_sample_frames": False,
}
_QWEN2_VL_VIDEO = {
    "resample": BICUBIC,
    "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},  # pixel areas
    "image_mean": OPENAI_CLIP_MEAN,
    "image_std": OPENAI_CLIP_STD,
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
    "do_convert_rgb": True,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "min_frames": 4,
    "max_frames": 768,
    "do_sample_frames": False,
}
# video processor class -> its class attributes over BaseVideoProcessor's (transformers 4.57)
PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "VideoLlavaVideoProcessor": _CLIP_VIDEO,
    "LlavaNextVideoVideoProcessor": _CLIP_VIDEO,
    "Qwen2VLVideoProcessor": _QWEN2_VL_VIDEO,  # Qwen2-VL's and Qwen2.5-VL's
}


def _size_dict(size: Any, default_to_square: bool = True) -> dict[str, int] | None:
    """transformers' ``get_size_dict``: an int is a square or a shortest edge, a pair (h, w)."""
    if size is None or isinstance(size, dict):
        return size
    if isinstance(size, int):
        return {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    raise ValueError(f"cannot read size {size!r}")


@dataclass(frozen=True)
class VideoProcessing:
    """The settings ``BaseVideoProcessor`` preprocesses with (its attribute names)."""

    processor_class: str
    do_convert_rgb: bool | None = None
    do_resize: bool | None = None
    size: dict[str, int] | None = None
    resample: int | None = None
    do_center_crop: bool | None = None
    crop_size: dict[str, int] | None = None
    do_rescale: bool | None = None
    rescale_factor: float = 1 / 255
    do_normalize: bool | None = None
    image_mean: tuple[float, ...] | float | None = None
    image_std: tuple[float, ...] | float | None = None
    do_sample_frames: bool | None = None
    num_frames: int | None = None
    fps: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the config's other keys, as read

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], processor_class: str) -> Self:
        """Class defaults of ``processor_class`` overlaid with ``config`` (a null in the config
        unsets a default, as in the processor's ``__init__``)."""
        if processor_class not in PROCESSOR_DEFAULTS:
            raise ValueError(
                f"no preprocessing known for {processor_class}; known: "
                f"{', '.join(sorted(PROCESSOR_DEFAULTS))}"
            )
        values: dict[str, Any] = dict(PROCESSOR_DEFAULTS[processor_class])
        values.update(config)
        square = bool(values.pop("default_to_square", True))
        names = set(cls.__dataclass_fields__) - {"processor_class", "extra"}
        known = {k: v for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names}
        for key in ("image_mean", "image_std"):
            if isinstance(known.get(key), list):
                known[key] = tuple(known[key])
        known["size"] = _size_dict(known.get("size"), square)
        known["crop_size"] = _size_dict(known.get("crop_size"))
        return cls(processor_class=processor_class, extra=extra, **known)

    @classmethod
    def from_folder(cls, folder: str | Path, default_class: str) -> Self:
        """The folder's settings (:func:`read_processor_config`; ``default_class``: the processor
        its model type uses when the config names none)."""
        config, _ = read_processor_config(folder)
        return cls.from_dict(config, processor_class_of(config, default_class))

    def digest(self) -> str:
        """A short hash of the settings, for fingerprints."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One video's frames, (T, H, W, 3) uint8 as decoded, to the float (T, 3, h, w) pixel
        values the processor hands the model (``_preprocess``'s steps in its order)."""
        video = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
        if self.do_convert_rgb and video.shape[1] == 1:
            video = video.expand(-1, 3, -1, -1)
        if self.do_resize:
            if self.size is None or self.resample is None:
                raise ValueError(f"{self.processor_class}: do_resize without size/resample")
            shape = (int(video.shape[-2]), int(video.shape[-1]))
            video = resize(video, resize_shape(shape, self.size), self.resample)
        if self.do_center_crop:
            if self.crop_size is None:
                raise ValueError(f"{self.processor_class}: do_center_crop without crop_size")
            video = center_crop(video, (self.crop_size["height"], self.crop_size["width"]))
        return self.rescale_normalize(video)

    def rescale_normalize(self, video: torch.Tensor) -> torch.Tensor:
        """:func:`rescale_normalize` with these settings."""
        return rescale_normalize(
            video,
            bool(self.do_rescale),
            self.rescale_factor,
            bool(self.do_normalize),
            self.image_mean,
            self.image_std,
        )


def read_processor_config(folder: str | Path) -> tuple[dict[str, Any], str | None]:
    """The first processor config of :data:`CONFIG_FILES` in ``folder`` (a nested
    ``"video_processor"`` entry taken out, as transformers does) and the file's name."""
    for name in CONFIG_FILES:
        path = Path(folder) / name
        if path.is_file():
            config = json.loads(path.read_text())
            return dict(config.get("video_processor", config)), name
    return {}, None


def processor_class_of(config: Mapping[str, Any], default: str) -> str:
    """The video processor class a config names: ``video_processor_type``, else its
    ``image_processor_type`` with Image→Video if that is a video processor (as
    AutoVideoProcessor), else ``default`` (the one of the folder's model type)."""
    named = config.get("video_processor_type")
    if not named and config.get("image_processor_type"):
        named = str(config["image_processor_type"]).replace("ImageProcessor", "VideoProcessor")
    if named and named in PROCESSOR_DEFAULTS:
        return str(named)
    return default


def load_video_processing(folder: str | Path, default_class: str) -> VideoProcessing:
    """The folder's video preprocessing settings (``default_class``: the processor its model
    type uses when the config names none)."""
    return VideoProcessing.from_folder(folder, default_class)


def resize_shape(shape: tuple[int, int], size: Mapping[str, int]) -> tuple[int, int]:
    """The (height, width) ``BaseImageProcessorFast.resize`` resizes a (height, width) frame to."""
    height, width = shape
    short_edge, long_edge = size.get("shortest_edge"), size.get("longest_edge")
    if short_edge and long_edge:  # transformers' get_size_with_aspect_ratio
        edge, raw = short_edge, None
        low, high = float(min(height, width)), float(max(height, width))
        if high / low * edge > long_edge:
            raw = long_edge * low / high
            edge = round(raw)
        if (height <= width and height == edge) or (width <= height and width == edge):
            return height, width
        scale = raw if raw is not None else edge
        if width < height:
            return int(scale * height / width), edge
        return edge, int(scale * width / height)
    if short_edge:  # get_resize_output_image_size, default_to_square=False
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = short_edge, int(short_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if size.get("max_height") and size.get("max_width"):
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    if size.get("height") and size.get("width"):
        return size["height"], size["width"]
    raise ValueError(f"size must give height+width, max_height+max_width or shortest_edge: {size}")


def _native_uint8(mode: str, device: torch.device) -> bool:
    """Whether torchvision resizes uint8 in uint8 (torch's own kernels) rather than via float."""
    if mode == "nearest-exact":
        return True
    if device.type != "cpu":
        return False
    if mode == "bilinear":
        import platform

        capable = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        return capable or platform.machine() in ("aarch64", "arm64")
    return mode == "bicubic"


def resize(frames: torch.Tensor, shape: tuple[int, int], resample: int) -> torch.Tensor:
    """torchvision v2 ``F.resize`` of (..., C, H, W) frames to ``shape`` (antialiased for
    bilinear/bicubic): uint8 stays uint8 (computed in uint8 where torchvision does, else in
    float, clamped for bicubic and rounded); float stays float."""
    if resample not in INTERPOLATION:
        raise ValueError(f"resampling {resample} is not supported; known: {sorted(INTERPOLATION)}")
    mode = INTERPOLATION[resample]
    *lead, channels, height, width = frames.shape
    if (height, width) == tuple(shape):
        return frames
    smooth = mode in ("bilinear", "bicubic")
    dtype = frames.dtype
    batch = frames.reshape(-1, channels, height, width)
    cast = dtype not in (torch.float32, torch.float64) and not (
        dtype == torch.uint8 and _native_uint8(mode, frames.device)
    )
    if cast:
        batch = batch.to(torch.float32)
    out = torch.nn.functional.interpolate(
        batch,
        size=list(shape),
        mode=mode,
        align_corners=False if smooth else None,
        antialias=smooth,
    )
    if cast:
        if mode == "bicubic" and dtype == torch.uint8:
            out = out.clamp_(0, 255)
        if not dtype.is_floating_point:
            out = out.round_()
        out = out.to(dtype)
    return out.reshape(*lead, channels, *out.shape[-2:])


def center_crop(frames: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``BaseImageProcessorFast.center_crop``: zero-pad an edge shorter than the crop (the odd
    pixel on the right/bottom), then crop at ``int((size - crop) / 2)``."""
    crop_h, crop_w = shape
    height, width = frames.shape[-2:]
    if crop_w > width or crop_h > height:
        pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
        padding = (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2)
        frames = torch.nn.functional.pad(frames, padding, value=0)
        height, width = frames.shape[-2:]
        if (height, width) == (crop_h, crop_w):
            return frames
    top, left = int((height - crop_h) / 2.0), int((width - crop_w) / 2.0)
    return frames[..., top : top + crop_h, left : left + crop_w]


def rescale_normalize(
    frames: torch.Tensor,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: Sequence[float] | float | None,
    image_std: Sequence[float] | float | None,
) -> torch.Tensor:
    """``BaseImageProcessorFast.rescale_and_normalize``: with both, one normalisation of the
    float32 frames by mean and std scaled by ``1 / rescale_factor`` (float32, as transformers
    fuses them); ``frames`` (..., C, H, W)."""
    if do_normalize:
        if image_mean is None or image_std is None:
            raise ValueError("do_normalize needs image_mean and image_std")
        if do_rescale:
            mean = torch.tensor(image_mean, device=frames.device) * (1.0 / rescale_factor)
            std = torch.tensor(image_std, device=frames.device) * (1.0 / rescale_factor)
        else:
            mean = torch.as_tensor(image_mean, dtype=torch.float32, device=frames.device)
            std = torch.as_tensor(image_std, dtype=torch.float32, device=frames.device)
        if mean.ndim == 1:
            mean = mean.view(-1, 1, 1)
        if std.ndim == 1:
            std = std.view(-1, 1, 1)
        return frames.to(torch.float32).sub(mean).div_(std)
    if do_rescale:
        return frames * rescale_factor
    return frames
