"""Qwen2-VL's video preprocessing (backends/qwen2_vl_processing.py) equals the real
``Qwen2VLVideoProcessor`` (run in the side venv, tests/hf_reference.py): sampled frames,
``pixel_values_videos`` and ``video_grid_thw``, for folders of both layouts and varied sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

from tests.hf_reference import run_reference
from videopanda_cluster.backends.qwen2_vl_processing import QwenVideoProcessing, smart_resize

SMALL = {"min_pixels": 28 * 28 * 2, "max_pixels": 28 * 28 * 6}
# (processor config, file it is in, frames in the video, height, width, video fps)
VIDEO, IMAGE = "video_preprocessor_config.json", "preprocessor_config.json"
CASES = [
    ({}, VIDEO, 6, 60, 80, 25.0),  # class defaults: upsized
    ({**SMALL, "image_processor_type": "Qwen2VLImageProcessor"}, IMAGE, 5, 90, 70, 25.0),
    ({"size": {"shortest_edge": 3136, "longest_edge": 6272}, "do_sample_frames": True,
      "num_frames": 6}, VIDEO, 30, 64, 48, 30.0),
    ({**SMALL, "do_sample_frames": True, "fps": 2.0, "min_frames": 4, "max_frames": 10,
      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, VIDEO, 47, 37, 101, 10.0),
    ({**SMALL, "do_sample_frames": True, "fps": 2.0}, VIDEO, 12, 120, 200, 30.0),
    ({**SMALL, "resample": 2, "do_normalize": False}, VIDEO, 3, 200, 120, 25.0),
]  # fmt: skip

REFERENCE = """
from pathlib import Path
from transformers import AutoVideoProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.video_utils import VideoMetadata
defaults = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
OUT = []
for i, (folder, fps) in enumerate(ARGS):
    Qwen2VLVideoProcessor.size = dict(defaults)  # __init__ edits the class's dict in place
    proc = AutoVideoProcessor.from_pretrained(folder)
    assert type(proc).__name__ == "Qwen2VLVideoProcessor", type(proc)
    video = ARRAYS[f"v{i}"]
    meta = VideoMetadata(total_num_frames=len(video), fps=fps)
    out = proc(videos=[video], video_metadata=[meta], return_metadata=True, return_tensors="pt")
    OUT_ARRAYS[f"p{i}"] = out["pixel_values_videos"].numpy()
    OUT_ARRAYS[f"g{i}"] = out["video_grid_thw"].numpy()
    indices = out["video_metadata"][0].frames_indices
    OUT.append(None if indices is None else [int(k) for k in indices])
"""


def test_smart_resize_equals_transformers():
    for h in (1, 13, 28, 29, 55, 56, 57, 100, 333, 720, 1080, 4000):
        for w in (1, 27, 28, 84, 99, 640, 1280, 1920):
            if max(h, w) / min(h, w) > 200:
                continue
            for lo, hi in ((3136, 12845056), (100352, 602112), (1568, 4704)):
                assert smart_resize(h, w, 28, lo, hi) == hf_smart_resize(h, w, 28, lo, hi)


@pytest.mark.slow  # the real processor in the side venv (tests/hf_reference.py)
def test_preprocessing_equals_the_real_video_processor(tmp_path):
    rng = np.random.default_rng(7)
    arrays, args, ours = {}, [], []
    for i, (config, name, frames, height, width, fps) in enumerate(CASES):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        (folder / name).write_text(json.dumps(config))
        (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
        video = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
        arrays[f"v{i}"] = video
        args.append((str(folder), fps))
        processing = QwenVideoProcessing.from_folder(folder)
        positions = (
            processing.frame_spec().positions(frames, fps) if processing.do_sample_frames else None
        )
        ours.append(
            (positions, *processing.patches(video if positions is None else video[positions]))
        )
    out, indices = run_reference(REFERENCE, arrays, args)
    for i, (positions, pixels, grid) in enumerate(ours):
        assert positions == indices[i], CASES[i]
        assert grid == tuple(out[f"g{i}"][0]), CASES[i]
        np.testing.assert_allclose(
            pixels.numpy(), out[f"p{i}"], rtol=0, atol=1e-6, err_msg=str(CASES[i])
        )


@pytest.mark.parametrize(
    ("config", "num_frames", "expected"),
    [
        ({}, None, dict(num_frames=8, rule="uniform")),
        ({}, 5, dict(num_frames=5, rule="uniform")),
        ({"do_sample_frames": True, "num_frames": 16}, None, dict(num_frames=16, rule="qwen2_vl")),
        (
            {"do_sample_frames": True, "fps": 1.0},
            None,
            dict(num_frames=None, fps=1.0, min_frames=4),
        ),
        ({"do_sample_frames": True, "fps": 1.0}, 12, dict(num_frames=12, fps=None)),
    ],
)
def test_frame_spec_follows_the_config(config, num_frames, expected):
    spec = QwenVideoProcessing.from_dict(config).frame_spec(num_frames)
    assert spec.size is None
    for key, value in expected.items():
        assert getattr(spec, key) == value


def test_frame_spec_refusals():
    sampling = QwenVideoProcessing.from_dict({"do_sample_frames": True, "num_frames": 8, "fps": 2})
    with pytest.raises(ValueError, match="both num_frames and fps"):
        sampling.frame_spec()
    with pytest.raises(ValueError, match="rounds to no frame"):
        QwenVideoProcessing.from_dict({"do_sample_frames": True}).frame_spec(1)
    with pytest.raises(ValueError, match="shortest_edge and longest_edge"):
        QwenVideoProcessing.from_dict({"size": {"height": 28, "width": 28}})
