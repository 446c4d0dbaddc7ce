"""Decode memory is bounded: frames beyond DecodeLimits.exact_pixels go through FFmpeg's scaler
to a reduced size before RGB conversion; frame sizes beyond the budget are refused."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from videopanda_cluster.video.extract import PreprocessOptions, extract, extract_video
from videopanda_cluster.video.isolation import IsolatedRunner
from videopanda_cluster.video.probe import DecodeLimits

SIDE, FRAMES = 8000, 4  # 64 Mpx per frame: 192 MB as RGB


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """Four flat-colour 8000x8000 frames: about 3 MB on disk."""
    path = tmp_path_factory.mktemp("huge") / "huge_8000x8000.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = SIDE, SIDE, "yuv420p"
        for i in range(FRAMES):
            frame = av.VideoFrame(SIDE, SIDE, "yuv420p")
            for plane, value in zip(frame.planes, (60 + 40 * i, 100, 160), strict=True):
                np.frombuffer(plane, np.uint8)[:] = value
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory since its exec (VmHWM; ru_maxrss would include the
    forked test process's own memory)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("needs /proc")
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_many_megapixel_video_extracts_with_bounded_memory(huge):
    with IsolatedRunner() as runner:
        result = extract_video(huge, PreprocessOptions(), runner)
        peak_mb = _peak_rss_mb(runner.pid)
    p = result.provenance
    assert p.source_size == [SIDE, SIDE]  # the real size, not the reduced one
    assert p.sampled_indices == list(range(FRAMES)) and result.frames.shape == (4, 448, 448, 3)
    # all-frames-at-full-size took 1.6 GB for these four frames (3 GB for ten)
    assert peak_mb < 800, f"decode child peaked at {peak_mb:.0f} MB"
    # flat colours: the reduced decode gives the same picture as the full-size one
    with av.open(str(huge)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    full = np.asarray(Image.fromarray(first).resize((448, 448), Image.Resampling.BICUBIC))
    assert np.abs(result.frames[0].astype(int) - full.astype(int)).max() <= 2


def test_sizes_up_to_the_exact_threshold_are_not_scaled():
    limits = DecodeLimits()
    assert limits.frame_size(4096, 2160) == (4096, 2160)
    assert limits.frame_size(3840, 2160) == (3840, 2160)
    w, h = limits.frame_size(SIDE, SIDE)
    assert w == h and w * h <= limits.exact_pixels


def test_frames_beyond_the_pixel_budget_are_refused(huge):
    small_budget = DecodeLimits(max_pixels=SIDE * SIDE - 1)
    with pytest.raises(Exception) as info:
        extract(huge, PreprocessOptions(isolate=False, limits=small_budget))
    assert getattr(info.value, "reason", None) == "bad_dimensions"
