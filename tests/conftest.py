"""Shared fixtures: the generated sample corpus and a set of hostile files built from it."""

from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from videopanda_cluster.video.samples import write_corpus

# Ray on loopback only (it otherwise advertises the machine's external address); set before
# any test imports ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for a module's jobs: 4 CPUs, loopback, no dashboard (test_pipeline.py has its
    own, which also points the workers at Azurite)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    write_corpus(directory, seed=7)
    return directory


@pytest.fixture(scope="session")
def manifest(corpus) -> dict[str, dict]:
    rows = json.loads((corpus / "manifest.json").read_text())
    for row in rows:
        row["fps"] = Fraction(row["fps"])
    return {row["name"]: row for row in rows}


def _patch(data: bytes, old: bytes, new: bytes) -> bytes:
    at = data.index(old)
    return data[:at] + new + data[at + len(old) :]


@pytest.fixture(scope="session")
def bad_files(corpus, tmp_path_factory) -> dict[str, Path]:
    """One file per bad-input kind, keyed by the reason code it must produce."""
    d = tmp_path_factory.mktemp("bad")
    mp4 = (corpus / "square_500x500_300f_30fps.mp4").read_bytes()
    mkv = (corpus / "vga_640x480_150f_30fps.mkv").read_bytes()
    files: dict[str, Path] = {}

    def put(reason: str, name: str, data: bytes) -> None:
        (d / name).write_bytes(data)
        files[reason] = d / name

    files["not_found"] = d / "missing.mp4"
    put("empty_file", "empty.mp4", b"")
    put("truncated", "truncated.mp4", mp4[: len(mp4) // 2])
    put("not_a_video", "notes.mp4", b"this is a text file, not a video\n" * 50)
    # Uncompressed video takes its frame size from Matroska's PixelWidth (0xB0) / PixelHeight
    # (0xBA) elements: rewrite 320 x 256 as 20000 x 12000 (240 Mpx per frame).
    raw = d / "raw.mkv"
    with av.open(str(raw), "w") as c:
        s = c.add_stream("rawvideo", rate=25)
        s.width, s.height, s.pix_fmt = 320, 256, "yuv420p"
        c.mux(s.encode(av.VideoFrame.from_ndarray(np.zeros((256, 320, 3), np.uint8), "rgb24")))
        c.mux(s.encode(None))
    huge = _patch(raw.read_bytes(), b"\xb0\x82\x01\x40", b"\xb0\x82\x4e\x20")
    put("bad_dimensions", "absurd_size.mkv", _patch(huge, b"\xba\x82\x01\x00", b"\xba\x82\x2e\xe0"))
    # A codec id this FFmpeg build has no decoder for.
    put(
        "unsupported_codec",
        "unknown_codec.mkv",
        _patch(mkv, b"V_MPEG4/ISO/ASP", b"V_MPEG4/ISO/XYZ"),
    )
    audio = d / "audio_only.m4a"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    files["no_video_stream"] = audio
    fifo = d / "stalled.mp4"  # a named pipe nobody writes to: reading it would block forever
    os.mkfifo(fifo)
    files["not_a_file"] = fifo
    return files


@pytest.fixture(scope="session")
def inputs_dir(corpus, tmp_path_factory) -> Path:
    """The sample corpus without its 2-minute file (14 videos) plus 2 corrupt files."""
    d = tmp_path_factory.mktemp("inputs")
    for video in sorted(corpus.iterdir()):
        if video.suffix in {".mp4", ".mkv", ".webm"} and not video.name.startswith("long_"):
            shutil.copy(video, d / video.name)
    data = (corpus / "square_500x500_300f_30fps.mp4").read_bytes()
    (d / "corrupt_truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "corrupt_text.mkv").write_text("not a video\n" * 20)
    return d
