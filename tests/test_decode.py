"""Probe and seek-based decoding on real encoded files (mp4, mkv, webm; CFR and VFR)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from videopanda_cluster.video.decode import decode_all
from videopanda_cluster.video.extract import PreprocessOptions, extract
from videopanda_cluster.video.probe import DecodeLimits, open_container, video_stream
from videopanda_cluster.video.samples import default_specs, read_code
from videopanda_cluster.video.sampling import sample_positions

NAMES = [spec.name for spec in default_specs()]
IN_PROCESS = PreprocessOptions(isolate=False)


def _full_decode(path, upright: bool | None = None) -> list[np.ndarray]:
    """All frames; by default turned upright only for MP4 (the reference decoder's rule)."""
    with open_container(path) as container:
        if upright is None:
            upright = "mp4" in container.format.name.split(",")
        return decode_all(container, video_stream(container, DecodeLimits()), upright)


@pytest.mark.parametrize("name", NAMES)
def test_probe_matches_what_was_encoded(corpus, manifest, name):
    row = manifest[name]
    p = extract(corpus / name, IN_PROCESS).provenance
    assert p.num_frames == row["frames"]
    # the reference decoder turns MP4 frames by their rotation tag, Matroska frames not
    turned = row["rotation"] in (90, 270) and name.endswith(".mp4")
    size = [row["width"], row["height"]]
    assert p.source_size == (size[::-1] if turned else size)
    assert p.rotation == row["rotation"]
    assert p.rotated == (row["rotation"] != 0 and name.endswith(".mp4"))
    if not row["vfr"]:
        assert p.fps == pytest.approx(float(row["fps"]), rel=1e-6)
        # timestamps are stored at millisecond precision in Matroska
        assert p.duration == pytest.approx(row["frames"] / float(row["fps"]), abs=1e-3)
    assert p.sampled_indices == sample_positions(row["frames"], p.fps)


@pytest.mark.parametrize("name", NAMES)
def test_sampled_frames_equal_full_sequential_decode(corpus, name):
    result = extract(corpus / name, IN_PROCESS)
    full = _full_decode(corpus / name)
    assert len(full) == result.provenance.num_frames
    # every frame carries its own index as a barcode; the full decode is in order
    as_stored = _full_decode(corpus / name, upright=False)
    assert [read_code(f) for f in as_stored] == list(range(len(full)))
    from videopanda_cluster.video.decode import read_frames
    from videopanda_cluster.video.probe import Deadline, index_frames, open_video

    limits = DecodeLimits()
    with open_video(corpus / name, limits) as (container, stream):
        info = index_frames(container, stream, limits, Deadline(None))
        idx = result.provenance.sampled_indices
        restart = lambda: open_video(corpus / name, limits)  # noqa: E731
        frames = read_frames(container, stream, info, idx, Deadline(None), restart, limits).frames
    for i, frame in zip(idx, frames, strict=True):
        np.testing.assert_array_equal(frame, full[i])


def test_vfr_timestamps_are_the_real_ones(corpus, manifest):
    name = "vfr_640x480_120f.mkv"
    p = extract(corpus / name, IN_PROCESS).provenance
    tick = 1 / float(manifest[name]["fps"])
    # frames alternate gaps of 1 and 2 ticks: frame i sits at tick (3*i)//2 (+1 for odd i... )
    expected = [((3 * i) // 2) * tick for i in p.sampled_indices]
    assert p.sampled_pts == pytest.approx(expected, abs=2e-3)


def test_file_object_decodes_identically_to_path(corpus):
    path = corpus / "vfr_340x256_90f.mp4"
    by_path = extract(path, IN_PROCESS)
    by_stream = extract(io.BytesIO(path.read_bytes()), IN_PROCESS)
    with open(path, "rb") as fh:
        by_handle = extract(fh, IN_PROCESS)
    for other in (by_stream, by_handle):
        assert other.provenance == by_path.provenance
        np.testing.assert_array_equal(other.frames, by_path.frames)


def test_isolated_worker_gives_the_same_result(corpus):
    from videopanda_cluster.video.extract import extract_video

    path = corpus / "sd_340x256_40f_10fps.webm"
    a = extract_video(path, PreprocessOptions())
    b = extract(path, IN_PROCESS)
    assert a.provenance == b.provenance
    np.testing.assert_array_equal(a.frames, b.frames)


@pytest.mark.parametrize("name", NAMES)
def test_matches_the_reference_decoder(corpus, name):
    """The reference eval reads frames with decord: same frame count, fps and pixels."""
    decord = pytest.importorskip("decord")
    reader = decord.VideoReader(str(corpus / name), num_threads=1)
    p = extract(corpus / name, IN_PROCESS).provenance
    assert p.num_frames == len(reader)
    assert p.fps == pytest.approx(reader.get_avg_fps())
    assert p.sampled_indices == sample_positions(len(reader), reader.get_avg_fps())
    ours = _full_decode(corpus / name)
    theirs = reader.get_batch(p.sampled_indices).asnumpy()
    for i, frame in zip(p.sampled_indices, theirs, strict=True):
        np.testing.assert_array_equal(ours[i], frame)


def test_token_grids_of_real_files_follow_the_spec_table(corpus, manifest):
    from tests.test_geometry import SPEC_TABLE

    table = {size: (box, grid) for size, box, grid, _ in SPEC_TABLE}
    seen = set()
    for name in manifest:
        p = extract(corpus / name, IN_PROCESS).provenance
        size = tuple(p.source_size)
        if size in table:
            box, grid = table[size]
            assert (tuple(p.valid_box), tuple(p.token_grid)) == (box, grid), name
            seen.add(size)
    # every size the ingestion issue lists is present in the corpus
    assert seen >= {
        (500, 500),
        (640, 480),
        (340, 256),
        (176, 144),
        (1280, 720),
        (240, 320),
        (720, 1280),
    }
