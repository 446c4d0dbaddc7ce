"""The default model: the bundled small model when the package has it, else a tiny random one."""

from __future__ import annotations

import pytest

from videopanda_cluster import bundled
from videopanda_cluster.cluster import driver


def test_bundled_model_is_the_default_when_present(tmp_path, monkeypatch):
    folder = tmp_path / "videopanda-small"
    folder.mkdir()
    monkeypatch.setattr(bundled, "SMALL_MODEL_DIR", folder)
    with pytest.raises(FileNotFoundError, match=r"train-small-model\.sh"):
        bundled.small_model()
    monkeypatch.setattr(driver, "TINY_MODEL_DIR", tmp_path / "tiny")
    path, model_id = driver.default_checkpoint()
    assert path == tmp_path / "tiny" and "tiny-random" in model_id
    assert (path / "model.safetensors").is_file()
    (folder / "model.safetensors").write_bytes(b"weights")
    assert driver.default_checkpoint() == (folder, bundled.SMALL_MODEL_ID)
