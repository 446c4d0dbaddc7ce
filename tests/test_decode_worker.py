"""DecodeWorker: hashing and decoding of every input, local or blob, in the killable child under
one deadline; faults of the environment raise, faults of the video are rows."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.azurite import AzuriteServer
from tests.azurite import azurite as azurite_fixture  # noqa: F401
from videopanda_cluster.cluster.stages import DecodeWorker
from videopanda_cluster.storage.base import StoreUnavailable
from videopanda_cluster.storage.open import open_store
from videopanda_cluster.video.extract import PreprocessOptions, extract

VIDEO = "sd_340x256_40f_10fps.webm"


def _upload(connection_string: str, container: str, path) -> str:
    store = open_store(f"az://{container}", connection_string=connection_string)
    store.put(path.name, path.read_bytes())
    return f"az://{container}/{path.name}"


def test_sparse_multi_gigabyte_file_times_out_while_hashing(tmp_path):
    """Hashing is under the decode deadline too: 64 GB of holes cannot be read in 1 s."""
    sparse = tmp_path / "huge.mp4"
    with open(sparse, "wb") as fh:
        fh.truncate(64 << 30)
    worker = DecodeWorker(PreprocessOptions(timeout=1.0))
    start = time.monotonic()
    meta, payload = worker.decode("v", str(sparse))
    assert meta["ok"] is False and meta["error"] == "timeout", meta
    assert payload is None
    assert time.monotonic() - start < 15  # the child starts (a few s), then one second


def test_local_and_blob_inputs_decode_alike_in_the_child(azurite, corpus, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    uri = _upload(azurite.connection_string, "decode-worker", corpus / VIDEO)
    worker = DecodeWorker(PreprocessOptions())
    blob, blob_payload = worker.decode("b", uri)
    assert worker.runner.pid is not None  # the child was started for the blob
    local, local_payload = worker.decode("a", str(corpus / VIDEO))
    assert local["ok"] and blob["ok"], (local, blob)
    assert blob["content_hash"] == local["content_hash"]
    assert blob["provenance"] == local["provenance"]
    np.testing.assert_array_equal(blob_payload["frames"], local_payload["frames"])
    expected = extract(corpus / VIDEO, PreprocessOptions(isolate=False))
    np.testing.assert_array_equal(blob_payload["frames"], expected.frames)
    missing, _ = worker.decode("c", uri + ".gone")
    assert missing["ok"] is False and missing["error"] == "not_found", missing


@pytest.mark.slow
def test_stalled_blob_read_is_stopped_by_the_watchdog(tmp_path, corpus, monkeypatch):
    """A read that blocks inside the store client can only be stopped by killing the child."""
    with AzuriteServer(tmp_path / "azurite") as server:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string)
        uri = _upload(server.connection_string, "stalled", corpus / VIDEO)
        worker = DecodeWorker(PreprocessOptions(timeout=2.0))
        assert worker.decode("warm", uri)[0]["ok"]  # the child is up and has its store
        first = worker.runner.pid
        os.kill(server._proc.pid, signal.SIGSTOP)  # the server accepts but never answers
        resume = threading.Timer(4.0, os.kill, (server._proc.pid, signal.SIGCONT))
        resume.start()
        try:
            start = time.monotonic()
            meta, _ = worker.decode("v", uri)
            elapsed = time.monotonic() - start
        finally:
            resume.cancel()
            os.kill(server._proc.pid, signal.SIGCONT)
        assert meta["ok"] is False and meta["error"] == "timeout", meta
        assert elapsed < 15  # 2 s, then the store check waits for the server to answer again
        again, _ = worker.decode("w", uri)  # the worker survived; its child was replaced
        assert again["ok"] and worker.runner.pid not in (None, first)


@pytest.mark.slow
def test_store_outage_raises_instead_of_giving_a_row(tmp_path, corpus, monkeypatch):
    """A fault of the environment is not data: the video must stay uncommitted."""
    with AzuriteServer(tmp_path / "azurite") as server:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string)
        uri = _upload(server.connection_string, "outage", corpus / VIDEO)
        worker = DecodeWorker(PreprocessOptions())
    # the server is stopped: every request is refused, and retries do not help
    with pytest.raises(StoreUnavailable) as info:
        worker.decode("v", uri)
    assert "AccountKey" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_local_file_raises_instead_of_giving_a_row(tmp_path, corpus):
    locked = tmp_path / VIDEO
    locked.write_bytes((corpus / VIDEO).read_bytes())
    locked.chmod(0)
    with pytest.raises(PermissionError):
        DecodeWorker(PreprocessOptions()).decode("v", str(locked))


@pytest.mark.parametrize("isolate", [True, False], ids=["child", "in_process"])
def test_rows_for_faults_of_the_input_are_the_same_in_and_out_of_the_child(
    tmp_path, corpus, bad_files, isolate
):
    worker = DecodeWorker(PreprocessOptions(isolate=isolate))
    ok, payload = worker.decode("ok", str(corpus / VIDEO))
    assert ok["ok"] and payload["frames"].shape == (8, 448, 448, 3)
    cases = {
        "not_found": str(tmp_path / "missing.mp4"),
        "not_a_file": str(tmp_path),
        "truncated": str(bad_files["truncated"]),
        "not_a_video": (tmp_path / "x.mp4").as_uri(),
    }
    (tmp_path / "x.mp4").write_text("not a video\n" * 20)
    for reason, uri in cases.items():
        meta, payload = worker.decode(reason, uri)
        assert meta["ok"] is False and meta["error"] == reason, meta
        assert payload is None
    # a file that could be hashed keeps its hash on the error row
    assert worker.decode("t", cases["truncated"])[0]["content_hash"]
