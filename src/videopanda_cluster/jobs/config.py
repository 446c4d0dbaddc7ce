"""Job configuration: a YAML or TOML file merged with command-line values, validated by pydantic.

The configuration hash covers :data:`RESULT_FIELDS`: every field except the
:data:`OPERATIONAL_FIELDS`, which only change where and how fast a job runs (``address``, the
``*_workers`` counts, ``max_in_flight``, ``encode_batch_wait_s``, ``num_gpus_*``, ``device``,
``lease_seconds``), how it reacts to faults (``store_retry_window``, ``stop_grace``), name it
(``output``, ``job_id``), say how a rerun treats changed inputs (``update``) or add a second
copy of the results (``results_jsonl``: the rows are the same; hashing it would also rename
every existing job).
So a job resumes with other workers or GPUs, while a change of kind, inputs, checkpoint,
prompts, questions, generation, preprocessing, batch sizes, shard size or feature
cache use makes a new job.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from ..model.config import AttentionImpl
from .inputs import question_problem
from .layout import check_job_id
from .lease import LEASE_SECONDS

NonEmpty = Annotated[str, Field(min_length=1)]
Positive = Annotated[int, Field(ge=1)]


def _question_text(value: str) -> str:
    problem = question_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# A question or caption prompt: not empty, not only whitespace, no NUL (inputs.question_problem).
QuestionText = Annotated[str, Field(min_length=1), AfterValidator(_question_text)]


class ConfigError(ValueError):
    """An invalid configuration; ``errors`` holds (field, problem) pairs, all in the message."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class JobConfig(BaseModel):
    """Every setting of a caption, qa or features job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["caption", "qa", "features"]
    inputs: NonEmpty  # directory, glob, manifest or az:// prefix
    output: NonEmpty = "out"  # store url
    job_id: str | None = None  # default: default_job_id(cfg)
    checkpoint: str | None = None  # model folder; None = the bundled model, else tiny random
    backend: str | None = None  # a key of backends.BACKENDS; None: the folder's model_type
    num_frames: Positive | None = None  # frames per video; None: the model's (others if it allows)
    caption_prompt: QuestionText = "Describe this video in detail."
    questions: list[QuestionText] = Field(default_factory=list)  # qa: for videos without questions
    # generation
    max_new_tokens: Positive = 64
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # 0 = off
    seed: int = 0  # sampling; also the reference flip's coins (one per video)
    # "eager" (fp32 softmax) is the reference's numerics (spec §1.2); "sdpa" is
    # torch's fused attention: same math, faster, rounding may differ in the last bits.
    attention: AttentionImpl = "eager"
    # preprocessing
    flip: Literal["off", "reference"] = "off"
    decode_timeout: float = Field(60.0, gt=0)  # seconds per video
    # stages
    decode_workers: Positive = 2
    encode_workers: Positive = 1
    generate_workers: Positive = 1
    encode_batch: Positive = 4  # videos per STAB call
    # s the first decoded video of a shard waits for others to fill its encode batch; a video
    # goes to encoding as soon as it is decoded and its batch is full or this time has passed
    encode_batch_wait_s: float = Field(0.5, ge=0)
    generate_batch: Positive = 8  # prompts per generate call
    num_gpus_encode: float = Field(0.0, ge=0)
    num_gpus_generate: float = Field(0.0, ge=0)
    shard_size: Positive = 16  # videos per shard
    max_in_flight: Positive = 8  # shards in the pipeline at once
    address: str | None = None  # Ray address
    use_feature_cache: bool = True
    # outputs: Parquet always; JSON lines too (jobs/<id>/results/jsonl/) if set. Not hashed: the
    # rows are the same either way (shards committed before a change keep their files).
    results_jsonl: bool = False
    device: str | None = None  # torch device of the model actors
    # faults
    store_retry_window: float = Field(120.0, ge=0)  # s a shard retries an unreachable store
    stop_grace: float = Field(30.0, ge=0)  # s in-flight shards get after the first Ctrl-C/SIGTERM
    # reruns
    update: bool = False  # plan videos added to the inputs in new shards (else: refused)
    lease_seconds: float = Field(LEASE_SECONDS, gt=0)  # a driver silent this long loses the job

    @field_validator("job_id")
    @classmethod
    def _valid_job_id(cls, value: str | None) -> str | None:
        return None if value is None else check_job_id(value)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        from ..backends import BACKENDS

        if value is not None and value not in BACKENDS:
            raise ValueError(f"no backend {value!r}; supported: {', '.join(sorted(BACKENDS))}")
        return value


OPERATIONAL_FIELDS = frozenset(
    {"address", "decode_workers", "encode_workers", "generate_workers", "max_in_flight",
     "num_gpus_encode", "num_gpus_generate", "device", "output", "job_id", "update",
     "lease_seconds", "store_retry_window", "stop_grace", "results_jsonl",
     "encode_batch_wait_s"}
)  # fmt: skip
# Everything else, new fields included, is hashed.
RESULT_FIELDS = frozenset(JobConfig.model_fields) - OPERATIONAL_FIELDS
# Result fields added after jobs existed: hashed only when set, so the jobs planned before them
# keep their hashes and ids (None is what every earlier job did)
HASHED_WHEN_SET = frozenset({"backend", "num_frames"})


def load_config(path: str | Path) -> dict[str, Any]:
    """The settings of a ``.yaml``/``.yml`` or ``.toml`` file (``-`` in keys read as ``_``).

    Raises OSError if the file cannot be read, ConfigError if it is not a valid mapping.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(f"{path}: unsupported config file type (use .yaml, .yml or .toml)")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: invalid {suffix[1:].upper()}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{path}: setting names must be strings, got {key!r}")
        name = key.replace("-", "_")
        if name in values:
            raise ConfigError(f"{path}: setting `{name}` given twice")
        values[name] = value
    return values


def build_config(file_values: dict[str, Any], cli_values: dict[str, Any]) -> JobConfig:
    """Validate the file's settings overridden by every CLI value that is not None."""
    merged = dict(file_values)
    merged.update({k: v for k, v in cli_values.items() if v is not None})
    try:
        return JobConfig.model_validate(merged)
    except ValidationError as exc:
        errors = [(_field_name(e["loc"]), _problem(e)) for e in exc.errors()]
        lines = "; ".join(f"field `{name}`: {problem}" for name, problem in errors)
        raise ConfigError(f"invalid job configuration: {lines}", errors) from None


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "(config)"


def _problem(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(error["loc"][0]), JobConfig.model_fields, n=1)
        message = "unknown setting" + (f" (did you mean `{close[0]}`?)" if close else "")
    return message


def hashed_settings(cfg: JobConfig, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The :data:`RESULT_FIELDS` of ``cfg`` that its hash covers (JSON values), but ``exclude``;
    a field of :data:`HASHED_WHEN_SET` only when it is set."""
    values = cfg.model_dump(mode="json", exclude=set(OPERATIONAL_FIELDS | exclude))
    return {k: v for k, v in values.items() if not (k in HASHED_WHEN_SET and v is None)}


def config_hash(cfg: JobConfig) -> str:
    """sha256 (hex) of the canonical JSON of the :data:`RESULT_FIELDS` of ``cfg`` (see
    :func:`hashed_settings`)."""
    fields = hashed_settings(cfg)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def default_job_id(cfg: JobConfig) -> str:
    """``<kind>-<first 12 hex digits of the config hash>``: the same settings, the same job."""
    return f"{cfg.kind}-{config_hash(cfg)[:12]}"
