"""`videopanda model-info`: parameter counts and multiply-adds of the released architecture."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import _cli
from videopanda_cluster.model.config import VideoPandaConfig


@pytest.mark.slow
def test_official_counts_and_macs():
    out = _cli("model-info", "--preset", "official", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    # spec §1.2, §1.4, §2.7
    assert info["stab"] == 25_490_084
    assert info["stab_active"] == 24_086_866
    assert info["projector"] == 20_979_712
    assert info["llm"] == 6_738_415_616
    assert info["visual_active"] == 45_066_578
    assert info["visual_macs"] == pytest.approx(105.4e9, rel=0.01)  # paper Table 3
    assert info["tokens_per_video"] == 2184


@pytest.mark.slow
def test_checkpoint_config_and_argument_errors(tmp_path):
    VideoPandaConfig.tiny().save(tmp_path)
    out = _cli("model-info", "--checkpoint", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    tiny = json.loads(out.stdout)
    assert 0 < tiny["stab_active"] < tiny["stab"] < 1_000_000
    assert _cli("model-info", "--json").returncode != 0  # neither option
    both = _cli("model-info", "--preset", "tiny", "--checkpoint", str(tmp_path))
    assert both.returncode != 0
    assert _cli("model-info", "--preset", "huge").returncode != 0
