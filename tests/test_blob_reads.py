"""One read per blob: a blob input's bytes are downloaded once for its hash and its decode,
counted by the Azure store's own reader counters (``BlobReader.bytes_fetched`` / ``requests``)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import subprocess

import av
import numpy as np
import pytest
import torch

from tests.azurite import azurite as azurite_fixture  # noqa: F401
from videopanda_cluster.cluster.features import CacheIdentity, FeatureCache, identity_dict
from videopanda_cluster.cluster.stages import DecodeWorker
from videopanda_cluster.storage.open import open_store
from videopanda_cluster.video.extract import PreprocessOptions, extract

MAX_READ_RATIO = 1.15  # bytes fetched ÷ blob size, for every input size


def _noise_video(path, width: int, height: int, frames: int) -> None:
    """Lossless (FFV1) random noise: the file is about width × height × 1.5 bytes a frame."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())


def _upload(connection_string: str, container: str, path) -> str:
    store = open_store(f"az://{container}", connection_string=connection_string)
    store.put(path.name, path.read_bytes())
    return f"az://{container}/{path.name}"


@pytest.fixture(scope="module")
def noise_videos(tmp_path_factory):
    """About 0.5 MB and about 30 MB."""
    d = tmp_path_factory.mktemp("noise")
    _noise_video(d / "small.mkv", 160, 120, 18)
    _noise_video(d / "large.mkv", 640, 480, 70)
    return {"small": d / "small.mkv", "large": d / "large.mkv"}


@pytest.mark.parametrize("name", ["small", "large"])
def test_a_blob_is_downloaded_once_for_hash_and_decode(azurite, noise_videos, monkeypatch, name):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    path = noise_videos[name]
    size = path.stat().st_size
    assert (400_000 < size < 700_000) if name == "small" else size > 25_000_000, size
    uri = _upload(azurite.connection_string, "blob-reads", path)
    meta, payload = DecodeWorker(PreprocessOptions()).decode(name, uri)
    assert meta["ok"], meta
    assert meta["content_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["bytes_fetched"] / size <= MAX_READ_RATIO, (meta["bytes_fetched"], size)
    assert meta["bytes_fetched"] == size  # in fact exactly once
    assert meta["fetch_requests"] <= size // (8 << 20) + 1  # in large ranged reads
    expected = extract(path, PreprocessOptions(isolate=False))
    np.testing.assert_array_equal(payload["frames"], expected.frames)
    assert payload["provenance"] == expected.provenance.to_dict()


def test_a_feature_cache_hit_reads_the_blob_once_to_hash_it(azurite, noise_videos, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    path = noise_videos["small"]
    uri = _upload(azurite.connection_string, "blob-reads-cached", path)
    identity = CacheIdentity("az://blob-reads-cache", preprocess="p", stab="s")
    content_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    FeatureCache(identity).put(content_hash, [torch.zeros(2, 3)], {"num_frames": 18})
    meta, payload = DecodeWorker(PreprocessOptions()).decode("v", uri, identity_dict(identity))
    assert meta["ok"] and meta["decode_skipped"] and payload is None, meta
    assert meta["bytes_fetched"] == path.stat().st_size


@contextlib.contextmanager
def _small_disk(directory, size: str):
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_full_spill_disk_is_a_fault_of_the_environment(
    azurite, noise_videos, tmp_path, monkeypatch
):
    """The spill file lives in $TMPDIR; no room there stops the decode, it is not a row."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    path = noise_videos["small"]  # 0.5 MB into 256 KiB
    uri = _upload(azurite.connection_string, "blob-reads-full", path)
    with _small_disk(tmp_path / "spill", "256k") as spill:
        monkeypatch.setenv("TMPDIR", str(spill))
        worker = DecodeWorker(PreprocessOptions())  # its child inherits TMPDIR
        with pytest.raises(OSError) as info:
            worker.decode("v", uri)
        assert info.value.errno == errno.ENOSPC, info.value
        # the spill file was unlinked from the start: nothing is left on the disk
        assert not list(spill.iterdir())
