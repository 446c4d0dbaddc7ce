"""backends/processing.py against the real transformers video processors and torchvision's
resize (run in the side venv of tests/hf_reference.py): exactly equal outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.hf_reference import run_reference
from videopanda_cluster.backends.processing import (
    VideoProcessing,
    load_video_processing,
    resize,
)

# landscape, portrait, odd, smaller than the crop in one or both edges, exactly the crop, big
SHAPES = [(240, 320), (320, 180), (97, 131), (100, 150), (50, 60), (224, 224), (225, 223)]
CONFIGS = [
    ("VideoLlavaVideoProcessor", {}),
    ("LlavaNextVideoVideoProcessor", {"size": {"height": 112, "width": 96}, "resample": 2}),
    ("LlavaNextVideoVideoProcessor", {"size": 160, "default_to_square": False,
                                      "do_center_crop": False}),
    ("VideoLlavaVideoProcessor", {"resample": 0, "crop_size": {"height": 200, "width": 250}}),
    ("VideoLlavaVideoProcessor", {"size": {"shortest_edge": 100, "longest_edge": 150},
                                  "crop_size": 96}),
    ("VideoLlavaVideoProcessor", {"do_normalize": False}),
]  # fmt: skip
RESIZES = [(224, 300), (64, 80), (500, 700), (131, 97)]
MODES = (0, 2, 3)  # PIL nearest, bilinear, bicubic

SCRIPT = """
import torch
from transformers import VideoLlavaVideoProcessor, LlavaNextVideoVideoProcessor
from torchvision.transforms.v2 import functional as F
classes = {c.__name__: c for c in (VideoLlavaVideoProcessor, LlavaNextVideoVideoProcessor)}
for c, (name, cfg) in enumerate(ARGS["configs"]):
    proc = classes[name](**cfg)
    for k, v in ARRAYS.items():
        out = proc(videos=[v], return_tensors="pt", input_data_format="channels_last")
        OUT_ARRAYS[f"{c}_{k}"] = out["pixel_values_videos"][0].numpy()
modes = {0: F.InterpolationMode.NEAREST_EXACT, 2: F.InterpolationMode.BILINEAR,
         3: F.InterpolationMode.BICUBIC}
for k, v in ARRAYS.items():
    t = torch.from_numpy(v).permute(0, 3, 1, 2).contiguous()
    for m in ARGS["modes"]:
        for h, w in ARGS["sizes"]:
            OUT_ARRAYS[f"r{m}_{h}_{w}_{k}"] = F.resize(t, [h, w], interpolation=modes[m]).numpy()
"""


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    videos = {f"v{i}": rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate(SHAPES)}  # fmt: skip
    args = {"configs": CONFIGS, "sizes": RESIZES, "modes": MODES}
    out, _ = run_reference(SCRIPT, videos, args)
    return videos, out


@pytest.mark.slow  # the real processor in the side venv (tests/hf_reference.py)
def test_preprocessing_equals_the_real_processors(reference):
    videos, out = reference
    for c, (name, config) in enumerate(CONFIGS):
        ours = VideoProcessing.from_dict(config, name)
        for key, video in videos.items():
            got, want = ours(video).numpy(), out[f"{c}_{key}"]
            assert got.dtype == want.dtype and got.shape == want.shape, (c, key)
            assert np.array_equal(got, want), (c, key, np.abs(got - want).max())


@pytest.mark.slow  # the real processor in the side venv (tests/hf_reference.py)
def test_uint8_resize_equals_torchvision(reference):
    videos, out = reference
    for key, video in videos.items():
        frames = torch.from_numpy(video).permute(0, 3, 1, 2).contiguous()
        for mode in MODES:
            for shape in RESIZES:
                got = resize(frames, shape, mode)
                assert got.dtype == torch.uint8
                assert np.array_equal(got.numpy(), out[f"r{mode}_{shape[0]}_{shape[1]}_{key}"])


def test_settings_from_the_folder(tmp_path):
    """video_preprocessor_config.json first, else preprocessor_config.json (an image processor
    named there stands for its video processor); class defaults fill the rest."""
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "VideoLlavaImageProcessor", "crop_size": 200})
    )
    got = load_video_processing(tmp_path, "LlavaNextVideoVideoProcessor")
    assert got.processor_class == "VideoLlavaVideoProcessor"
    assert got.crop_size == {"height": 200, "width": 200}
    assert got.size == {"shortest_edge": 224} and got.resample == 3
    (tmp_path / "video_preprocessor_config.json").write_text(
        json.dumps({"size": 336, "num_frames": 16, "do_sample_frames": True})
    )
    got = load_video_processing(tmp_path, "LlavaNextVideoVideoProcessor")
    assert got.processor_class == "LlavaNextVideoVideoProcessor"
    assert got.size == {"shortest_edge": 336} and got.num_frames == 16
    config = {"do_center_crop": None, "image_processor_type": "LlavaNextImageProcessor"}
    got = VideoProcessing.from_dict(config, "LlavaNextVideoVideoProcessor")  # null unsets
    assert got.do_center_crop is None and got.crop_size == {"height": 224, "width": 224}
    with pytest.raises(ValueError, match="no preprocessing known"):
        VideoProcessing.from_dict({}, "NoSuchVideoProcessor")
