"""Bad input: a typed error with a stable reason code, within the timeout, never a crash or hang."""

from __future__ import annotations

import io
import os
import time

import pytest

from videopanda_cluster.video.errors import Reason, VideoDecodeError
from videopanda_cluster.video.extract import PreprocessOptions, extract
from videopanda_cluster.video.isolation import IsolatedRunner
from videopanda_cluster.video.load import load_video

TIMEOUT = 5.0
KINDS = [
    "not_found",
    "empty_file",
    "truncated",
    "not_a_video",
    "bad_dimensions",
    "unsupported_codec",
    "no_video_stream",
    "not_a_file",
]


@pytest.fixture(scope="module")
def runner():
    with IsolatedRunner(timeout=TIMEOUT) as r:
        yield r


@pytest.mark.parametrize("reason", KINDS)
def test_each_bad_kind_gives_its_reason_within_the_timeout(bad_files, runner, reason):
    start = time.monotonic()
    with pytest.raises(VideoDecodeError) as info:
        load_video(bad_files[reason], PreprocessOptions(timeout=TIMEOUT), runner=runner)
    elapsed = time.monotonic() - start
    assert info.value.reason == Reason(reason)
    assert info.value.message
    assert elapsed < TIMEOUT + 3.0


def test_worker_recovers_after_a_timeout(corpus, runner):
    start = time.monotonic()
    with pytest.raises(VideoDecodeError) as info:
        runner.call(time.sleep, 60, timeout=1.0)  # stuck where no deadline check can run
    assert info.value.reason == Reason.TIMEOUT and time.monotonic() - start < 10
    ok = load_video(corpus / "qcif_176x144_5f_10fps.mp4", PreprocessOptions(), runner=runner)
    assert ok.provenance.num_frames == 5


def test_crashed_worker_is_reported_and_replaced(corpus, runner):
    with pytest.raises(VideoDecodeError) as info:
        runner.call(os._exit, 3)
    assert info.value.reason == Reason.CRASHED
    ok = load_video(corpus / "qcif_176x144_5f_10fps.mp4", PreprocessOptions(), runner=runner)
    assert ok.pixels.shape == (8, 4, 448, 448)


@pytest.mark.parametrize("reason", ["truncated", "not_a_video", "unsupported_codec", "empty_file"])
def test_file_objects_get_the_same_reasons(bad_files, reason):
    data = bad_files[reason].read_bytes()
    with pytest.raises(VideoDecodeError) as info:
        extract(io.BytesIO(data), PreprocessOptions(isolate=False))
    assert info.value.reason == Reason(reason)


def test_cooperative_deadline_stops_long_in_process_decodes(corpus):
    path = corpus / "long_176x144_2min_25fps.mp4"
    with pytest.raises(VideoDecodeError) as info:
        extract(path, PreprocessOptions(isolate=False, timeout=1e-4))
    assert info.value.reason == Reason.TIMEOUT


def test_truncated_matroska_is_detected(corpus, tmp_path):
    data = (corpus / "vfr_640x480_120f.mkv").read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError) as info:
        extract(cut, PreprocessOptions(isolate=False))
    assert info.value.reason == Reason.TRUNCATED


def test_errors_survive_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(VideoDecodeError(Reason.TRUNCATED, "cut")))
    assert err.reason == Reason.TRUNCATED and err.message == "cut"
    assert err.to_dict() == {"error": "truncated", "message": "cut"}


def test_header_claiming_more_frames_than_present_is_truncated(tmp_path):
    """An MP4 with its index up front (faststart) cut short: the header lies about the length."""
    import av

    from videopanda_cluster.video.samples import _Scene

    path = tmp_path / "faststart.mp4"
    scene = _Scene(320, 240, seed=1)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for i in range(100):
            c.mux(s.encode(av.VideoFrame.from_ndarray(scene.render(i), format="rgb24")))
        c.mux(s.encode(None))
    data = path.read_bytes()
    assert extract(path, PreprocessOptions(isolate=False)).provenance.num_frames == 100
    with pytest.raises(VideoDecodeError) as info:
        extract(io.BytesIO(data[: int(len(data) * 0.8)]), PreprocessOptions(isolate=False))
    assert info.value.reason == Reason.TRUNCATED and "of 100 frames" in info.value.message


def test_single_frame_video_is_input_not_a_crash(corpus):
    """The reference divides by zero on N == 1; we give one real frame and seven padded ones."""
    x = load_video(corpus / "single_frame_640x480.mp4", PreprocessOptions(isolate=False))
    assert x.provenance.sampled_indices == [0] and x.provenance.padded_frames == 7
    assert x.pixels[0].abs().sum() > 0 and x.pixels[1:].count_nonzero() == 0


@pytest.mark.parametrize("kind", ["directory", "device", "symlink_loop", "fifo"])
def test_things_that_are_not_files(tmp_path, bad_files, runner, kind):
    """Not a regular file: its own reason, distinct from a missing path, and no blocking read."""
    target = {
        "directory": tmp_path,
        "device": "/dev/zero",
        "symlink_loop": tmp_path / "loop.mp4",
        "fifo": bad_files["not_a_file"],
    }[kind]
    if kind == "symlink_loop":
        os.symlink(tmp_path / "loop.mp4", target)
    for call in (
        lambda: extract(target, PreprocessOptions(isolate=False)),
        lambda: load_video(target, PreprocessOptions(timeout=TIMEOUT), runner=runner),
    ):
        with pytest.raises(VideoDecodeError) as info:
            call()
        assert info.value.reason == Reason.NOT_A_FILE, info.value


def _mp4(path, faststart: bool) -> bytes:
    import av

    from videopanda_cluster.video.samples import _Scene

    scene = _Scene(320, 240, seed=2)
    with av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for i in range(50):
            c.mux(s.encode(av.VideoFrame.from_ndarray(scene.render(i), format="rgb24")))
        c.mux(s.encode(None))
    return path.read_bytes()


@pytest.mark.parametrize("faststart", [False, True], ids=["moov_last", "moov_first"])
def test_mp4_cut_inside_its_moov_is_truncated(tmp_path, faststart):
    """Wherever the index box is cut, the file is truncated (not 'no video stream' or others)."""
    data = _mp4(tmp_path / "clip.mp4", faststart)
    at = data.index(b"moov") - 4
    size = int.from_bytes(data[at : at + 4], "big")
    for fraction in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9):
        cut = data[: at + int(size * fraction)]
        with pytest.raises(VideoDecodeError) as info:
            extract(io.BytesIO(cut), PreprocessOptions(isolate=False))
        assert info.value.reason == Reason.TRUNCATED, (fraction, info.value)


def test_header_beyond_the_decoder_reports_its_real_size(bad_files, tmp_path):
    """FFmpeg refuses 20000x20000 and reports 0x0; the message gives the declared size."""
    data = bad_files["bad_dimensions"].read_bytes()  # 20000 x 12000 in Matroska's PixelHeight
    path = tmp_path / "square_20000.mkv"
    path.write_bytes(data.replace(b"\xba\x82\x2e\xe0", b"\xba\x82\x4e\x20", 1))
    with pytest.raises(VideoDecodeError) as info:
        extract(path, PreprocessOptions(isolate=False))
    assert info.value.reason == Reason.BAD_DIMENSIONS
    assert "20000x20000" in info.value.message and "0x0" not in info.value.message
