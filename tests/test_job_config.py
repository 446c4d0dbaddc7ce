"""Job configuration: files, CLI precedence, errors naming fields, the configuration hash."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from pydantic import ValidationError

from videopanda_cluster.jobs.config import (
    OPERATIONAL_FIELDS,
    RESULT_FIELDS,
    ConfigError,
    JobConfig,
    build_config,
    config_hash,
    default_job_id,
    load_config,
)

BASE = {"kind": "caption", "inputs": "videos/"}

YAML = """\
kind: qa
inputs: manifests/bench.jsonl
output: az://results/runs
questions:
  - What happens?
  - Who is there?
max-new-tokens: 32
encode_batch: 2
do_sample: true
temperature: 0.7
top_p: 0.9
num_gpus_generate: 0.5
"""

TOML = """\
kind = "qa"
inputs = "manifests/bench.jsonl"
output = "az://results/runs"
questions = ["What happens?", "Who is there?"]
max-new-tokens = 32
encode_batch = 2
do_sample = true
temperature = 0.7
top_p = 0.9
num_gpus_generate = 0.5
"""


def test_defaults():
    cfg = build_config({}, BASE)
    assert cfg.output == "out" and cfg.job_id is None and cfg.checkpoint is None
    assert cfg.caption_prompt == "Describe this video in detail." and cfg.questions == []
    assert (cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.seed) == (64, False, 1.0, 0)
    assert (cfg.top_p, cfg.top_k, cfg.flip, cfg.decode_timeout) == (1.0, 0, "off", 60.0)
    assert (cfg.decode_workers, cfg.encode_workers, cfg.generate_workers) == (2, 1, 1)
    assert (cfg.encode_batch, cfg.generate_batch, cfg.shard_size, cfg.max_in_flight) == (
        4,
        8,
        16,
        8,
    )
    assert (cfg.num_gpus_encode, cfg.num_gpus_generate) == (0, 0)
    assert cfg.address is None and cfg.device is None and cfg.use_feature_cache is True
    with pytest.raises(ValidationError):
        cfg.seed = 3  # frozen


@pytest.mark.parametrize(
    ("name", "text"), [("job.yaml", YAML), ("job.yml", YAML), ("job.toml", TOML)]
)
def test_yaml_and_toml_files_give_the_same_config(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    values = load_config(tmp_path / name)
    assert values["max_new_tokens"] == 32  # "-" in keys reads as "_"
    cfg = build_config(values, {"kind": None, "inputs": None})
    assert cfg.kind == "qa" and cfg.inputs == "manifests/bench.jsonl"
    assert cfg.questions == ["What happens?", "Who is there?"]
    assert (cfg.max_new_tokens, cfg.encode_batch, cfg.temperature, cfg.top_p) == (32, 2, 0.7, 0.9)
    assert cfg.do_sample is True and cfg.num_gpus_generate == 0.5
    assert cfg.output == "az://results/runs"


def test_cli_values_override_the_file_unless_none(tmp_path):
    (tmp_path / "job.yaml").write_text(YAML)
    cli = {
        "kind": "caption",  # the command always sets the kind
        "inputs": "other/",
        "max_new_tokens": 8,
        "questions": None,  # not given: the file's questions stay
        "encode_batch": None,
        "seed": 0,  # falsy but given: overrides
        "use_feature_cache": False,
    }
    cfg = build_config(load_config(tmp_path / "job.yaml"), cli)
    assert (cfg.kind, cfg.inputs, cfg.max_new_tokens) == ("caption", "other/", 8)
    assert cfg.questions == ["What happens?", "Who is there?"]
    assert cfg.encode_batch == 2 and cfg.seed == 0 and cfg.use_feature_cache is False


def test_errors_name_every_invalid_field():
    with pytest.raises(ConfigError) as info:
        build_config({"encode_batch": 0, "temperature": 0}, {**BASE, "shard_size": -1})
    message = str(info.value)
    assert "field `encode_batch`: Input should be greater than or equal to 1" in message
    assert "field `temperature`: Input should be greater than 0" in message
    assert "field `shard_size`: Input should be greater than or equal to 1" in message
    assert [name for name, _ in info.value.errors] == ["temperature", "encode_batch", "shard_size"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"kind": "caption"}, "field `inputs`: Field required"),
        ({**BASE, "kind": "summarise"}, "field `kind`: Input should be 'caption', 'qa' or"),
        ({**BASE, "encode_bach": 2}, "field `encode_bach`: unknown setting (did you mean `encode_"),
        ({**BASE, "zzz": 1}, "field `zzz`: unknown setting"),
        ({**BASE, "questions": ["ok", ""]}, "field `questions[1]`: String should have at least 1"),
        ({**BASE, "questions": "one string"}, "field `questions`: Input should be a valid list"),
        ({**BASE, "top_p": 1.5}, "field `top_p`: Input should be less than or equal to 1"),
        ({**BASE, "top_k": -1}, "field `top_k`: Input should be greater than or equal to 0"),
        ({**BASE, "flip": "random"}, "field `flip`: Input should be 'off' or 'reference'"),
        ({**BASE, "decode_timeout": 0}, "field `decode_timeout`: Input should be greater than 0"),
        ({**BASE, "num_gpus_encode": -0.5}, "field `num_gpus_encode`: Input should be greater"),
        ({**BASE, "max_new_tokens": "many"}, "field `max_new_tokens`: Input should be a valid int"),
        ({**BASE, "inputs": ""}, "field `inputs`: String should have at least 1 character"),
        ({**BASE, "job_id": "../escape"}, "field `job_id`: invalid job id '../escape'"),
        ({**BASE, "job_id": "a/b"}, "field `job_id`: invalid job id 'a/b'"),
        ({**BASE, "job_id": "."}, "field `job_id`: invalid job id '.'"),
    ],
)
def test_each_error_names_its_field(values, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_config({}, values)


def test_load_config_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad.toml").write_text("kind = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings, got list"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "twice.yaml").write_text("max-new-tokens: 1\nmax_new_tokens: 2\n")
    with pytest.raises(ConfigError, match="`max_new_tokens` given twice"):
        load_config(tmp_path / "twice.yaml")
    (tmp_path / "job.json").write_text("{}")
    with pytest.raises(ConfigError, match="unsupported config file type"):
        load_config(tmp_path / "job.json")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert load_config(tmp_path / "empty.yaml") == {}


def test_hashed_and_operational_fields_partition_the_model():
    hashed = {
        "kind", "inputs", "checkpoint", "caption_prompt", "questions", "max_new_tokens",
        "do_sample", "temperature", "top_p", "top_k", "seed", "flip", "decode_timeout",
        "encode_batch", "generate_batch", "shard_size", "use_feature_cache", "attention",
        "backend", "num_frames",
    }  # fmt: skip
    assert hashed == RESULT_FIELDS
    assert set(JobConfig.model_fields) == RESULT_FIELDS | OPERATIONAL_FIELDS
    assert not RESULT_FIELDS & OPERATIONAL_FIELDS


PINNED_HASH = "88471b91f82af0b08abdadbc315e58ecb3dd0f6cbe696ab33a2f8696ee9b882d"


def test_config_hash_is_stable():
    cfg = build_config({}, BASE)
    # Pinned: a change here re-keys every existing job (default job ids, ledger conflicts).
    assert config_hash(cfg) == PINNED_HASH
    assert default_job_id(cfg) == f"caption-{PINNED_HASH[:12]}"
    same = build_config({"inputs": "videos/", "temperature": 1}, {"kind": "caption", "seed": None})
    assert config_hash(same) == config_hash(cfg)  # source and int/float spelling do not matter
    canonical = {
        "attention": "eager",
        "caption_prompt": "Describe this video in detail.", "checkpoint": None,
        "decode_timeout": 60.0, "do_sample": False, "encode_batch": 4, "flip": "off",
        "generate_batch": 8, "inputs": "videos/", "kind": "caption", "max_new_tokens": 64,
        "questions": [], "seed": 0, "shard_size": 16, "temperature": 1.0, "top_k": 0,
        "top_p": 1.0, "use_feature_cache": True,
    }  # fmt: skip
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == PINNED_HASH


@pytest.mark.parametrize(
    "change",
    [
        {"address": "ray://head:10001"},
        {"decode_workers": 9},
        {"encode_workers": 3},
        {"generate_workers": 3},
        {"max_in_flight": 1},
        {"num_gpus_encode": 1},
        {"num_gpus_generate": 0.25},
        {"device": "cuda:1"},
        {"output": "az://elsewhere"},
        {"job_id": "named"},
        {"results_jsonl": True},  # a second copy of the same rows
        {"encode_batch_wait_s": 3.0},  # when a batch leaves, not what it computes
    ],
)
def test_operational_settings_do_not_change_the_hash(change):
    assert config_hash(build_config({}, {**BASE, **change})) == config_hash(build_config({}, BASE))


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "qa"},
        {"inputs": "videos2/"},
        {"checkpoint": "/models/videopanda"},
        {"caption_prompt": "Describe briefly."},
        {"questions": ["Why?"]},
        {"max_new_tokens": 65},
        {"do_sample": True},
        {"temperature": 0.5},
        {"top_p": 0.5},
        {"top_k": 5},
        {"seed": 1},
        {"flip": "reference"},
        {"decode_timeout": 30},
        {"encode_batch": 2},
        {"generate_batch": 1},
        {"shard_size": 4},
        {"use_feature_cache": False},
        {"backend": "videopanda"},  # hashed once set (unset: the hash of jobs before backends)
        {"num_frames": 8},
    ],
)
def test_result_settings_change_the_hash_and_job_id(change):
    base = build_config({}, BASE)
    changed = build_config({}, {**BASE, **change})
    assert config_hash(changed) != config_hash(base)
    assert default_job_id(changed) != default_job_id(base)


def test_an_unknown_backend_is_a_config_error_naming_the_supported_ones():
    with pytest.raises(ConfigError, match=r"field `backend`: no backend 'qwen9'; supported: "):
        build_config({}, {**BASE, "backend": "qwen9"})
    with pytest.raises(ConfigError, match=r"field `num_frames`"):
        build_config({}, {**BASE, "num_frames": 0})
