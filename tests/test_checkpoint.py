"""Loading released-layout checkpoints (spec §3): key mapping, aliases, conversion, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.checkpoint_fixtures import (
    BIG_TEACHER_KEY,
    Release,
    random_model,
    released_state,
    write_checkpoint,
)
from videopanda_cluster.model.checkpoint import (
    CheckpointError,
    WeightFile,
    checkpoint_name,
    convert,
    internal_name,
)
from videopanda_cluster.model.config import VideoPandaConfig
from videopanda_cluster.model.modeling import VideoPanda
from videopanda_cluster.model.prompt import load_tokenizer
from videopanda_cluster.model.tokenizer_builder import build_sentencepiece_tokenizer

RELEASED_CONFIG = {
    "_name_or_path": "lmsys/vicuna-7b-v1.5",
    "architectures": ["VideoPandaLlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "freeze_mm_mlp_adapter": False,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "image_aspect_ratio": "pad",
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "mm_hidden_size": 1024,
    "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_video_tower": "STAB",
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "model_type": "videopanda",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.31.0",
    "use_cache": True,
    "video_hidden_size": 1024,
    "vocab_size": 32000,
}

# Keys below ``model.video_tower.`` of the released checkpoint.
_QUERY_ATTENTION = ["q.0.weight", "q.0.bias", "q.1.weight", "kv.0.weight", "kv.0.bias"]
_QUERY_ATTENTION += ["kv.1.weight", "proj.weight", "proj.bias"]
_LMHRA = [f"pos_embed.0.{s}" for s in ("weight", "bias", "running_mean", "running_var")]
_LMHRA += ["pos_embed.0.num_batches_tracked"]
_LMHRA += [f"pos_embed.{i}.{s}" for i in (1, 2, 3) for s in ("weight", "bias")]
STAB_KEYS = {
    "patch_embedding.weight",
    "class_embedding",
    "split_embedding",
    "temporal_cls_token",
    "balance",
    "dpe.weight",
    "dpe.bias",
    "dec.attn.in_proj_weight",
    "dec.attn.in_proj_bias",
    "dec.attn.out_proj.weight",
    "dec.attn.out_proj.bias",
    *[f"dec.ln_{i}.{s}" for i in (1, 2, 3) for s in ("weight", "bias")],
    *[f"dec.mlp.{m}.{s}" for m in ("c_fc", "c_proj") for s in ("weight", "bias")],
    *[f"proj.{i}.{s}" for i in (0, 2) for s in ("weight", "bias")],
    *[f"lmhra{i}.{k}" for i in (1, 2) for k in _LMHRA],
    *[f"{m}.{k}" for m in ("local_attention", "global_attention") for k in _QUERY_ATTENTION],
}
LLAMA_LAYER_KEYS = [
    *[f"self_attn.{p}_proj.weight" for p in "qkvo"],
    *[f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")],
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(build_sentencepiece_tokenizer(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def config(tokenizer) -> VideoPandaConfig:
    return VideoPandaConfig.tiny(vocab_size=len(tokenizer))


@pytest.fixture(scope="module")
def original(config) -> VideoPanda:
    return random_model(config, seed=0)


@pytest.fixture(scope="module")
def release(original) -> Release:
    return released_state(original, big_teacher=True)


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory, config, tokenizer, release) -> Path:
    folder = tmp_path_factory.mktemp("release")
    return write_checkpoint(folder, config, release.state, tokenizer, shards=3)


@pytest.fixture(scope="module")
def loaded(release_dir) -> VideoPanda:
    return VideoPanda.from_pretrained(release_dir, device="cpu")


def assert_same_tensors(model: VideoPanda, reference: VideoPanda) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def model_state(release: Release, *, aliases: bool) -> dict[str, torch.Tensor]:
    keys = release.primary + (release.aliases if aliases else [])
    return {k: release.state[k] for k in keys}


def clip_input(seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(8, 4, 448, 448, generator=gen)
    pixels[:, 3] = 1.0  # validity mask: the whole frame
    return pixels


# -- 1. the released layout -------------------------------------------------------------------


def test_release_fixture_is_sharded_with_every_key_kind(release_dir, release):
    index = json.loads((release_dir / "pytorch_model.bin.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
    assert index["weight_map"].keys() == release.state.keys()
    keys = release.state.keys()
    for needle in (
        "model.vision_tower.",
        "model.mm_projector.",
        "model.video_tower_compressor.input_layer.",
        "model.video_teacher.video_tower.",
        "model.video_tower_compressor.teacher_layer.video_tower.",
        ".rotary_emb.inv_freq",
    ):
        assert any(needle in k for k in keys), needle


def test_released_layout_loads_strictly_with_identical_tensors(loaded, original):
    assert not loaded.training
    assert_same_tensors(loaded, original)
    bn = loaded.video_tower.lmhra1.pos_embed[0]
    assert bn.running_var.min() >= 0.5  # random stats, not the init's ones


def test_load_report_counts(loaded, release):
    report = loaded.load_report
    assert report.files == [f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
    assert report.loaded == len(release.primary)
    assert report.skipped == len(release.skipped)
    assert report.ignored == len(release.ignored) == 2
    assert report.from_alias == []
    assert report.unmatched == []


def test_tokenizer_is_loaded(loaded, tokenizer):
    text = "Is the red ball moving?"
    assert loaded.tokenizer(text).input_ids == tokenizer(text).input_ids


def test_encode_video_matches_original(loaded, original):
    pixels = clip_input()
    want = original.encode_video(pixels)
    got = loaded.encode_video(pixels)
    assert want.shape == (8 * (1 + 16 * 17), original.config.llm_width)
    assert torch.isfinite(want).all()
    assert torch.equal(got, want)


# -- 2. conversion to safetensors -------------------------------------------------------------


def test_cli_convert_writes_safetensors_shards(release_dir, original, release, tmp_path):
    dst = tmp_path / "converted"
    # 0.01 GiB is the smallest --shard-gb the CLI accepts; the 12 MiB teacher tensor of the
    # fixture (between model tensors) makes the output span several shards.
    cmd = [sys.executable, "-m", "videopanda_cluster.cli", "convert", str(release_dir), str(dst)]
    done = subprocess.run([*cmd, "--shard-gb", "0.01"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    assert sorted(p.name for p in dst.glob("*.safetensors")) == shards
    assert not list(dst.glob("*.bin"))
    assert index["weight_map"].keys() == release.state.keys()  # keys unchanged, none dropped
    assert index["weight_map"][BIG_TEACHER_KEY] not in (
        index["weight_map"]["model.embed_tokens.weight"],
        index["weight_map"]["lm_head.weight"],
    )
    assert (dst / "config.json").read_text() == (release_dir / "config.json").read_text()
    assert (dst / "tokenizer.model").is_file()

    model = VideoPanda.from_pretrained(dst, device="cpu")
    assert_same_tensors(model, original)
    assert model.load_report.files == shards
    assert model.load_report.unmatched == []
    assert model.tokenizer is not None


def test_convert_respects_shard_size(release, config, tmp_path):
    src = write_checkpoint(tmp_path / "src", config, model_state(release, aliases=True), shards=2)
    names = convert(src, tmp_path / "dst", max_shard_bytes=200_000)
    assert len(names) > 3
    from safetensors import safe_open

    seen = {}
    for name in names:
        with safe_open(str(tmp_path / "dst" / name), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        nbytes = [t.numel() * t.element_size() for t in tensors.values()]
        assert sum(nbytes) <= 200_000 or len(tensors) == 1, name
        seen.update(tensors)
    assert seen.keys() == {*release.primary, *release.aliases}
    for key, tensor in seen.items():
        assert torch.equal(tensor, release.state[key]), key


def test_save_pretrained_single_file_round_trip(original, tokenizer, tmp_path):
    original.tokenizer = tokenizer
    try:
        original.save_pretrained(tmp_path)
    finally:
        original.tokenizer = None
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
    model = VideoPanda.from_pretrained(tmp_path, device="cpu")
    assert_same_tensors(model, original)
    assert model.load_report.files == ["model.safetensors"]
    assert model.tokenizer is not None
    assert model.config == original.config


# -- 3. alias fallback ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_alias_keys_fill_absent_primary_keys(release, config, original, tmp_path, fmt):
    state = {
        k: v
        for k, v in model_state(release, aliases=True).items()
        if not k.startswith(("model.video_tower.", "model.video_projector."))
    }
    write_checkpoint(tmp_path, config, state, shards=2, fmt=fmt)
    model = VideoPanda.from_pretrained(tmp_path, device="cpu")
    assert_same_tensors(model, original)
    assert sorted(model.load_report.from_alias) == sorted(release.aliases)
    assert model.load_report.loaded == len(release.primary)


def test_alias_fallback_does_not_reread_shards(release, config, tmp_path, monkeypatch):
    state = {
        k: v
        for k, v in model_state(release, aliases=True).items()
        if not k.startswith("model.video_tower.")
    }
    write_checkpoint(tmp_path, config, state, shards=2, fmt="safetensors")
    reads: Counter[str] = Counter()
    real_read = WeightFile.read_into

    def counting_read(self, key, out):
        reads[key] += 1
        real_read(self, key, out)

    monkeypatch.setattr(WeightFile, "read_into", counting_read)
    VideoPanda.from_pretrained(tmp_path, device="cpu")
    # every tensor read once (the vision_tower aliases in the fallback pass, which reads no
    # other); the mm_projector aliases, whose primary keys are present, not at all
    shadowed = {k for k in state if k.startswith("model.mm_projector.")}
    assert shadowed and reads == {k: 1 for k in state if k not in shadowed}


@pytest.mark.parametrize("alias_first", [True, False])
def test_primary_key_wins_over_alias(release, config, original, tmp_path, alias_first):
    decoys = {k: torch.full_like(release.state[k], 5) for k in release.aliases}
    primary = {k: release.state[k] for k in release.primary}
    state = {**decoys, **primary} if alias_first else {**primary, **decoys}
    write_checkpoint(tmp_path, config, state, shards=2)
    model = VideoPanda.from_pretrained(tmp_path, device="cpu")
    assert_same_tensors(model, original)
    assert model.load_report.from_alias == []
    assert model.load_report.loaded == len(release.primary)


# -- 4. the trailing-dot rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("model.video_tower.dpe.weight", "video_tower.dpe.weight"),
        ("model.vision_tower.dpe.weight", "video_tower.dpe.weight"),
        ("model.video_projector.0.bias", "video_projector.0.bias"),
        ("model.mm_projector.2.weight", "video_projector.2.weight"),
        ("model.layers.0.mlp.up_proj.weight", "llm.model.layers.0.mlp.up_proj.weight"),
        ("lm_head.weight", "llm.lm_head.weight"),
        ("optimizer.state", None),
    ],
)
def test_internal_name(key, name):
    assert internal_name(key) == name
    if name is not None and not key.startswith(("model.vision_tower.", "model.mm_projector.")):
        assert checkpoint_name(name) == key


@pytest.mark.parametrize(
    "key",
    [
        "model.video_tower_compressor.input_layer.weight",
        "model.video_tower_compressor.output_layer.bias",
        "model.video_tower_compressor.norm_layer.0.0.weight",
        "model.video_tower_compressor.teacher_layer.video_tower.dpe.weight",
        "model.vision_tower_compressor.input_layer.weight",
        "model.video_projector_extra.weight",
    ],
)
def test_prefixes_match_with_trailing_dot(original, key):
    name = internal_name(key)
    assert name is None or not name.startswith(("video_tower.", "video_projector."))
    assert name not in original.state_dict()


def test_checkpoint_name_rejects_foreign_names():
    with pytest.raises(ValueError, match="not a model parameter"):
        checkpoint_name("teacher.dpe.weight")


# -- 5. errors --------------------------------------------------------------------------------


@pytest.fixture
def small_dir(release, config, tmp_path) -> Path:
    return write_checkpoint(
        tmp_path / "ckpt", config, model_state(release, aliases=False), shards=2
    )


def test_index_lists_a_missing_shard(small_dir):
    (small_dir / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model-00002-of-00002\.bin"):
        VideoPanda.from_pretrained(small_dir, device="cpu")


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_truncated_shard(release, config, tmp_path, fmt):
    write_checkpoint(tmp_path, config, model_state(release, aliases=False), shards=2, fmt=fmt)
    shard = tmp_path / f"{'pytorch_model' if fmt == 'bin' else 'model'}-00002-of-00002.{fmt}"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(shard.name)):
        VideoPanda.from_pretrained(tmp_path, device="cpu")


def test_wrong_shape_names_the_key(release, config, tmp_path):
    state = model_state(release, aliases=False)
    state["model.video_projector.2.weight"] = torch.zeros(3, 5)
    write_checkpoint(tmp_path, config, state, shards=2)
    with pytest.raises(CheckpointError, match=r"model\.video_projector\.2\.weight.*\(3, 5\)"):
        VideoPanda.from_pretrained(tmp_path, device="cpu")


def test_missing_weight_in_strict_mode_names_the_key(release, config, tmp_path):
    key = "model.video_tower.lmhra2.pos_embed.0.running_var"
    state = model_state(release, aliases=False)
    del state[key]
    write_checkpoint(tmp_path, config, state, shards=2)
    with pytest.raises(CheckpointError, match=r"1 weight\(s\) missing.*" + key.replace(".", r"\.")):
        VideoPanda.from_pretrained(tmp_path, device="cpu")
    model = VideoPanda.from_pretrained(tmp_path, device="cpu", strict=False)
    assert not model.video_tower.lmhra2.pos_embed[0].running_var.is_meta


def test_folder_without_weights(config, tmp_path):
    config.save(tmp_path)
    with pytest.raises(CheckpointError, match="no .* weights in " + re.escape(str(tmp_path))):
        VideoPanda.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        VideoPanda.from_pretrained(tmp_path / "absent", device="cpu")


def test_cli_convert_missing_folder(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    cmd = [sys.executable, "-m", "videopanda_cluster.cli", "convert", str(missing)]
    done = subprocess.run(
        [*cmd, str(tmp_path / "out")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "error" in done.stdout + done.stderr
    assert "no_such_checkpoint" in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()


# -- 6. the released config -------------------------------------------------------------------


def test_released_config_parses_to_official():
    config = VideoPandaConfig.from_json_dict(RELEASED_CONFIG)
    official = VideoPandaConfig.official()
    assert {**config.__dict__, "llm": None} == {**official.__dict__, "llm": None}
    assert config.llm == {**official.llm, "rope_scaling": None}
    assert (config.stab_width, config.gstra_heads, config.stab_heads) == (1024, 8, 8)
    assert config.projector_type == "mlp2x_gelu"
    assert config.llm["rope_theta"] == 10000.0
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"):
        assert config.llm[key] == RELEASED_CONFIG[key]
    assert config.llm["tie_word_embeddings"] is False
    assert "mm_video_tower" not in config.llm


def test_official_model_has_the_released_key_set():
    config = VideoPandaConfig.from_json_dict(RELEASED_CONFIG)
    with torch.device("meta"):
        model = VideoPanda(config)
    shapes = {checkpoint_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {"model.video_tower." + k for k in STAB_KEYS}
    expected |= {f"model.video_projector.{i}.{s}" for i in (0, 2) for s in ("weight", "bias")}
    expected |= {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    expected |= {f"model.layers.{n}.{k}" for n in range(32) for k in LLAMA_LAYER_KEYS}
    assert shapes.keys() == expected
    assert not [k for k in shapes if "rotary" in k]
    assert shapes["model.video_tower.lmhra2.pos_embed.0.running_mean"] == (1024,)
    assert shapes["model.video_tower.lmhra1.pos_embed.1.weight"] == (682, 1024, 1, 1, 1)
    assert shapes["model.video_tower.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert shapes["model.video_projector.0.weight"] == (4096, 1024)
    assert shapes["model.video_projector.2.weight"] == (4096, 4096)
    assert shapes["model.layers.31.mlp.down_proj.weight"] == (4096, 11008)
    assert shapes["lm_head.weight"] == (32000, 4096)
    assert all(internal_name(k) == n for k, n in zip(shapes, model.state_dict(), strict=True))


def test_config_json_is_rewritten_byte_for_byte_whatever_the_hash_seed(tmp_path):
    """Reading a config.json and saving it again gives the same bytes in every process: the
    file's hash is part of a checkpoint's identity (``checkpoint_fingerprint``), so an exported
    model must not change identity with Python's string-hash seed."""
    source = tmp_path / "source"
    VideoPandaConfig.small().save(source)
    script = (
        "import sys\n"
        "from videopanda_cluster.model.config import VideoPandaConfig\n"
        "VideoPandaConfig.from_pretrained(sys.argv[1]).save(sys.argv[2])\n"
    )
    written = []
    for seed in ("0", "1", "2"):
        out = tmp_path / f"seed-{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", script, source, out], check=True, env=env)
        written.append((out / "config.json").read_bytes())
    assert written == [(source / "config.json").read_bytes()] * 3
