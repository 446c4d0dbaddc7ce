"""Every container FFmpeg demuxes samples the same frames as a full sequential decode of the file.

Seeking is verified (the decoder must land at or before the wanted frame, and on its exact
timestamp); where it is not trustworthy, as in MPEG-TS and MPEG-PS, which land on the keyframe
after the one asked for, decoding restarts from the true beginning of a freshly opened source.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from videopanda_cluster.video.extract import PreprocessOptions, extract
from videopanda_cluster.video.letterbox import letterbox
from videopanda_cluster.video.probe import DecodeLimits, open_container, video_stream
from videopanda_cluster.video.samples import SampleSpec, _Scene, encode_video, read_code

IN_PROCESS = PreprocessOptions(isolate=False)
FRAMES, GOP = 100, 12  # 8 samples 14 frames apart, keyframes every 12: every sample seeks

# (file extension, encoder): each container with the codecs it usually carries
MATRIX = [
    ("mp4", "libx264"),
    ("mp4", "mpeg4"),
    ("mp4", "libx265"),
    ("mov", "libx264"),
    ("mov", "mjpeg"),
    ("mkv", "libx264"),
    ("mkv", "libvpx-vp9"),
    ("webm", "libvpx"),
    ("webm", "libvpx-vp9"),
    ("avi", "mpeg4"),
    ("avi", "mjpeg"),
    ("ts", "libx264"),
    ("ts", "mpeg2video"),
    ("ts", "libx265"),
    ("m2ts", "libx264"),
    ("mpg", "mpeg1video"),
    ("mpg", "mpeg2video"),
    ("flv", "flv"),
    ("flv", "libx264"),
    ("ogv", "libtheora"),
    ("ogv", "libvpx"),
    ("3gp", "h263"),
    ("3gp", "libx264"),
]


def _writable(ext: str, codec: str) -> str | None:
    """Why this FFmpeg cannot write the pair, or None."""
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        return f"no {codec} encoder in this FFmpeg build"
    fmt = {"mkv": "matroska", "ts": "mpegts", "m2ts": "mpegts", "mpg": "mpeg", "ogv": "ogg"}
    try:
        av.format.ContainerFormat(fmt.get(ext, ext), "w")
    except Exception:
        return f"no {ext} muxer in this FFmpeg build"
    return None


def _full_decode(source) -> tuple[list[np.ndarray], list[float]]:
    """Every frame in output order and its time in seconds from the first one."""
    with open_container(source) as container:
        stream = video_stream(container, DecodeLimits())
        frames = list(container.decode(stream))
    t0 = frames[0].pts * frames[0].time_base
    return [f.to_ndarray(format="rgb24") for f in frames], [
        float(f.pts * f.time_base - t0) for f in frames
    ]


def _assert_samples_equal_full_decode(source, result) -> None:
    full, times = _full_decode(source)
    p = result.provenance
    assert p.num_frames == len(full)
    idx = p.sampled_indices
    assert len(idx) == 8 and len(set(idx)) == 8
    np.testing.assert_array_equal(result.frames, letterbox([full[i] for i in idx], result.geometry))
    assert p.sampled_pts == pytest.approx([times[i] for i in idx], abs=1e-6)


@pytest.mark.parametrize(("ext", "codec"), MATRIX, ids=[f"{e}-{c}" for e, c in MATRIX])
def test_sampled_frames_equal_full_sequential_decode(tmp_path, ext, codec):
    if reason := _writable(ext, codec):
        pytest.skip(reason)
    path = tmp_path / f"clip.{ext}"
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    spec = SampleSpec(path.name, 176, 144, FRAMES, Fraction(25), codec, gop=GOP, pix_fmt=pix_fmt)
    encode_video(path, spec, _Scene(176, 144, seed=3).render)
    full, _ = _full_decode(path)
    # the full decode is the truth: every frame carries its own index as a barcode
    assert [read_code(f) for f in full] == list(range(FRAMES))
    result = extract(path, IN_PROCESS)
    _assert_samples_equal_full_decode(path, result)
    # the same through a file object (blobs), which is rewound rather than reopened by path
    by_stream = extract(io.BytesIO(path.read_bytes()), IN_PROCESS)
    assert by_stream.provenance == result.provenance
    np.testing.assert_array_equal(by_stream.frames, result.frames)


@pytest.mark.parametrize("name", ["hd_1280x720_90f_30fps.mp4", "square_500x500_300f_30fps.mp4"])
def test_h264_mp4_remuxed_to_mpegts(corpus, tmp_path, name):
    """Stream copy of a real H.264 MP4 into MPEG-TS (no re-encoding)."""
    ts = tmp_path / "remux.ts"
    with av.open(str(corpus / name)) as src, av.open(str(ts), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            dst.mux(packet)
    result = extract(ts, IN_PROCESS)
    assert result.provenance.container == "mpegts"
    original = extract(corpus / name, IN_PROCESS).provenance
    assert result.provenance.sampled_indices == original.sampled_indices
    _assert_samples_equal_full_decode(ts, result)
