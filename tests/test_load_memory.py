"""Loading a checkpoint holds one copy of the model (issue 20): the loader's host-memory bound.

An official-shaped checkpoint (7B widths, STAB at 1024, vocabulary 32000) with two LLM layers is
written once, shard by shard, in fp16 and in bf16, and loaded in a fresh interpreter whose resident
set is sampled every 2 ms (bench/peak_rss.py). The figure compared is the growth over the
process's own RSS after its imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from videopanda_cluster.model.checkpoint import LOAD_PEAK_RATIO, checkpoint_name
from videopanda_cluster.model.config import LLAMA_7B, VideoPandaConfig
from videopanda_cluster.model.modeling import VideoPanda

BENCH = Path(__file__).resolve().parents[1] / "bench"
SHARD_BYTES = 512 * 2**20  # three shards of the fp16 model (1.3 GB), the released layout scaled


def _official_two_layers() -> VideoPandaConfig:
    return VideoPandaConfig(llm=dict(LLAMA_7B, num_hidden_layers=2))


def _write_checkpoint(folder: Path, dtype: torch.dtype) -> None:
    """Every weight of the model under its checkpoint key, tensor i filled with (i % 97 + 1)/128
    (exact in fp16 and bf16), written one shard at a time: no full model is ever allocated."""
    config = _official_two_layers()
    config.save(folder)
    with torch.device("meta"):
        shapes = VideoPanda(config).state_dict()
    groups: list[list[str]] = [[]]
    size = 0
    for name, meta in shapes.items():
        nbytes = meta.numel() * meta.element_size() // 2  # stored in 2 bytes
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    order = {name: i for i, name in enumerate(shapes)}
    weight_map = {}
    for n, names in enumerate(groups, 1):
        file = f"model-{n:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for name in names:
            meta = shapes[name]
            kind = dtype if meta.is_floating_point() else meta.dtype
            value = (order[name] % 97 + 1) / 128
            shard[checkpoint_name(name)] = torch.full(meta.shape, value, dtype=kind)
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        del shard
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.fixture(scope="session")
def official_checkpoints(tmp_path_factory) -> dict[torch.dtype, Path]:
    folders = {}
    for dtype in (torch.float16, torch.bfloat16):
        folders[dtype] = tmp_path_factory.mktemp(f"official-2l-{str(dtype)[6:]}")
        _write_checkpoint(folders[dtype], dtype)
    return folders


_LOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[3])
    from peak_rss import RssSampler
    from videopanda_cluster.model.config import VideoPandaConfig
    from videopanda_cluster.model.modeling import VideoPanda

    with torch.device("meta"):  # imports everything building the model needs, before the base
        VideoPanda(VideoPandaConfig.tiny())
    folder, dtype = sys.argv[1], getattr(torch, sys.argv[2])
    sampler = RssSampler()
    base = sampler.peak
    sampler.start()
    model = VideoPanda.from_pretrained(folder, device="cpu", dtype=dtype)
    peak = sampler.finish()
    state = model.state_dict()
    dtypes = sorted({str(t.dtype) for t in state.values() if t.is_floating_point()})
    embed = state["llm.model.embed_tokens.weight"]
    print(json.dumps({
        "growth": peak - base,
        "model_bytes": sum(t.numel() * t.element_size() for t in state.values()),
        "dtypes": dtypes,
        "embed": [embed.min().item(), embed.max().item()],
    }))
    """
)


def _load(folder: Path, dtype: torch.dtype) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(folder), str(dtype)[6:], str(BENCH)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stored", "loaded"),
    [
        (torch.float16, torch.bfloat16),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
    ids=["fp16-to-bf16", "fp16-to-fp32", "bf16-as-is"],
)
def test_loading_peaks_at_one_model(official_checkpoints, stored, loaded):
    folder = official_checkpoints[stored]
    assert len(list(folder.glob("*.safetensors"))) == 3
    result = _load(folder, loaded)
    assert result["dtypes"] == [str(loaded)]
    element = torch.tensor([], dtype=loaded).element_size()
    assert result["model_bytes"] > 700_000_000 * element  # 713 M parameters
    assert 0 < result["embed"][0] == result["embed"][1] < 1  # a filled tensor, not zeros
    ratio = result["growth"] / result["model_bytes"]
    assert ratio <= LOAD_PEAK_RATIO, (
        f"loading {result['model_bytes'] / 2**30:.2f} GiB ({stored} -> {loaded}) grew RSS by "
        f"{result['growth'] / 2**30:.2f} GiB ({ratio:.2f}x)"
    )


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("loaded", [torch.bfloat16, torch.float32, torch.float16])
def test_loaded_weights_equal_the_stored_ones_cast(tmp_path, stored, loaded):
    """Every weight equals safetensors' own reading of the shard, cast with ``Tensor.to``."""
    torch.manual_seed(0)
    VideoPanda(VideoPandaConfig.tiny()).to(stored).save_pretrained(tmp_path, max_shard_bytes=2**17)
    stored_tensors = {}
    for shard in tmp_path.glob("*.safetensors"):
        stored_tensors.update(load_file(shard))
    model = VideoPanda.from_pretrained(tmp_path, device="cpu", dtype=loaded)
    state = model.state_dict()
    assert model.load_report.loaded == len(stored_tensors) and len(model.load_report.files) > 1
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        want = stored_tensors[checkpoint_name(name)]
        want = want.to(loaded) if want.is_floating_point() else want
        assert tensor.dtype == want.dtype and torch.equal(tensor, want), name
