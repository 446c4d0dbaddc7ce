"""HF-layout checkpoints: shard discovery, key mapping (spec §3), loading without a second copy.

Checkpoint keys → our module names:
    model.video_tower.*       → video_tower.*       (alias model.vision_tower.*: fallback only)
    model.video_projector.*   → video_projector.*   (alias model.mm_projector.*: fallback only)
    model.* / lm_head.*       → llm.model.* / llm.lm_head.*
    model.video_tower_compressor.*, model.video_teacher.*, model.image_teacher.*,
    model.vision_tower_compressor.*  → skipped (training only)
    *.rotary_emb.inv_freq     → ignored (recomputed)
Prefixes are matched with their trailing dot: ``model.video_tower_compressor.`` is not part of
``model.video_tower``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from torch import nn

from .config import VideoPandaConfig

if TYPE_CHECKING:
    from .modeling import VideoPanda

SKIPPED_PREFIXES = (
    "model.video_tower_compressor.",
    "model.video_teacher.",
    "model.image_teacher.",
    "model.vision_tower_compressor.",
)
PRIMARY = {"model.video_tower.": "video_tower.", "model.video_projector.": "video_projector."}
ALIASES = {
    "model.vision_tower.": "model.video_tower.",
    "model.mm_projector.": "model.video_projector.",
}
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
AUX_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "README.md",
)

# Stated bound: loading grows host memory by at most this multiple of the loaded model's bytes
# (safetensors shards, any dtype conversion; tests/test_load_memory.py).
LOAD_PEAK_RATIO = 1.25


class CheckpointError(Exception):
    """A checkpoint folder that cannot be loaded; the message names the file and key."""


@dataclass
class LoadReport:
    files: list[str] = field(default_factory=list)
    loaded: int = 0
    skipped: int = 0  # compressor / teacher tensors
    ignored: int = 0  # recomputed buffers
    from_alias: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def internal_name(key: str) -> str | None:
    """Our parameter name for checkpoint ``key`` (aliases resolve to the primary); None if the
    key belongs to no part of the model."""
    for alias, primary in ALIASES.items():
        if key.startswith(alias):
            key = primary + key[len(alias) :]
    for prefix, ours in PRIMARY.items():
        if key.startswith(prefix):
            return ours + key[len(prefix) :]
    if key.startswith(("model.", "lm_head.")):
        return "llm." + key
    return None


def checkpoint_name(name: str) -> str:
    """Inverse of :func:`internal_name` for primary keys."""
    for prefix, ours in PRIMARY.items():
        if name.startswith(ours):
            return prefix + name[len(ours) :]
    if name.startswith("llm."):
        return name[len("llm.") :]
    raise ValueError(f"not a model parameter name: {name}")


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The weight files of an HF-layout folder, from its index when there is one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{index}: not a valid index ({exc})") from None
            files = [folder / name for name in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} lists missing shard file(s): {', '.join(missing)}")
            return files
    for name in SINGLE_FILES:
        if (folder / name).is_file():
            return [folder / name]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"no .safetensors or pytorch_model*.bin weights in {folder}")
    return files


# safetensors header dtypes
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class WeightFile:
    """One weight file: keys, shapes and dtypes up front, each tensor read when asked for.

    A safetensors tensor is read through its own short-lived ``safe_open`` (the safetensors
    library memory-maps the file; the mapping and the pages it touched leave the process when the
    last view of it dies). So at most one stored tensor is mapped at a time, beside the model being
    filled: a cast model never sits beside a second copy of the shard. ``.bin`` files are opened
    with ``torch.load(mmap=True)``; their mapping lives until :meth:`close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}  # safetensors
        self._state: dict[str, torch.Tensor] = {}  # .bin
        self._safetensors = path.suffix == ".safetensors"
        try:
            if self._safetensors:
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 (not a mapping)
                        sliced = f.get_slice(key)
                        dtype = _SAFETENSORS_DTYPES.get(sliced.get_dtype())
                        if dtype is None:
                            raise CheckpointError(
                                f"{key} in {path.name}: unsupported dtype {sliced.get_dtype()}"
                            )
                        self._meta[key] = (tuple(sliced.get_shape()), dtype)
            else:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                if not isinstance(state, dict):
                    kind = type(state).__name__
                    raise CheckpointError(f"{path}: expected a state dict, got {kind}")
                self._state = state
        except Exception as exc:
            self.close()
            if isinstance(exc, CheckpointError):
                raise
            # truncated or corrupt files surface as various library errors
            raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None

    def keys(self) -> list[str]:
        return list(self._meta if self._safetensors else self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][0] if self._safetensors else tuple(self._state[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._meta[key][1] if self._safetensors else self._state[key].dtype

    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Fill ``out`` (the stored shape, any dtype and device) with tensor ``key``."""
        if not self._safetensors:
            out.copy_(self._state[key])
            return
        try:
            with safe_open(str(self.path), framework="pt") as f:
                out.copy_(f.get_tensor(key))
        except Exception as exc:  # a file truncated or changed since it was opened
            raise CheckpointError(
                f"cannot read {key} from {self.path}: {type(exc).__name__}: {exc}"
            ) from None

    def read(self, key: str) -> torch.Tensor:
        """Tensor ``key`` as stored, in its own memory (an mmap view for ``.bin``)."""
        if not self._safetensors:
            return self._state[key]
        out = torch.empty(self.shape(key), dtype=self.dtype(key))
        self.read_into(key, out)
        return out

    def close(self) -> None:
        self._state = {}

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_tensors(
    path: Path, only: Container[str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) pairs of one weight file (the keys in ``only`` when given), read lazily;
    tensors not asked for are never read."""
    with WeightFile(path) as weights:
        for key in weights.keys():  # noqa: SIM118 (not a mapping)
            if only is None or key in only:
                yield key, weights.read(key)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pretrained(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    with_llm: bool = True,
):
    """Build the model on the meta device and fill it tensor by tensor from the shards.

    Each tensor is read into its own memory in the target dtype and device (see
    :class:`WeightFile`), so host memory grows by the model plus one stored tensor
    (:data:`LOAD_PEAK_RATIO` is the tested bound for safetensors; a ``.bin`` shard's mapping
    stays resident until its tensors are copied).
    fp32 on CPU and fp16 on GPU by default (the reference's inference dtype). ``with_llm=False``
    builds and loads only STAB and the projector (no LLM, no tokenizer), for workers that only
    encode video.
    """
    from .modeling import VideoPanda
    from .prompt import load_tokenizer

    folder = Path(path)
    files = checkpoint_files(folder)
    config = VideoPandaConfig.from_pretrained(folder)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.float16)
    with torch.device("meta"):
        model = VideoPanda(config, with_llm=with_llm)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    report = LoadReport(files=[f.name for f in files])
    done: set[str] = set()
    aliased: dict[str, tuple[Path, str]] = {}

    def put(name: str, key: str, weights: WeightFile) -> None:
        shape = weights.shape(key)
        if shape != tuple(expected[name]):
            raise CheckpointError(
                f"{key} in {weights.path.name}: shape {shape}, expected {tuple(expected[name])}"
            )
        stored = weights.dtype(key)
        out = torch.empty(shape, device=device, dtype=dtype if stored.is_floating_point else stored)
        weights.read_into(key, out)
        _assign(model, name, out)
        done.add(name)

    for file in files:
        with WeightFile(file) as weights:
            for key in weights.keys():  # noqa: SIM118 (not a mapping)
                if key.endswith(".rotary_emb.inv_freq"):
                    report.ignored += 1
                elif key.startswith(SKIPPED_PREFIXES):
                    report.skipped += 1
                elif (name := internal_name(key)) is None:
                    report.unmatched.append(key)
                elif name not in expected:
                    if with_llm or not name.startswith("llm."):
                        report.unmatched.append(key)
                elif key.startswith(tuple(ALIASES)):
                    aliased.setdefault(name, (file, key))
                else:
                    put(name, key, weights)
                    report.loaded += 1
    fallback: dict[Path, dict[str, str]] = {}  # aliases only fill what the primary keys lacked
    for name, (file, key) in aliased.items():
        if name not in done:
            fallback.setdefault(file, {})[key] = name
    for file, names in fallback.items():  # one pass per file, reading only the alias tensors
        with WeightFile(file) as weights:
            for key, name in names.items():
                put(name, key, weights)
                report.from_alias.append(key)
                report.loaded += 1
    missing = sorted(set(expected) - done)
    if missing and strict:
        shown = ", ".join(checkpoint_name(n) for n in missing[:10])
        raise CheckpointError(f"{len(missing)} weight(s) missing from {folder}: {shown}")
    _finish(model, device, dtype, with_llm)
    model.load_report = report
    has_tokenizer = (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file()
    if with_llm and has_tokenizer:
        model.tokenizer = load_tokenizer(folder)
    return model


def _finish(model: VideoPanda, device: torch.device, dtype: torch.dtype, with_llm: bool) -> None:
    """Recompute non-persistent buffers (rotary frequencies) and re-tie shared weights."""
    llm = model.llm
    if with_llm:
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        assert llm is not None  # VideoPanda(with_llm=True) builds the Llama
        llm.model.rotary_emb = LlamaRotaryEmbedding(config=llm.config, device=device)
        if llm.config.tie_word_embeddings:
            llm.tie_weights()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            # a weight left unloaded (non-strict load): initialise it for real
            _assign(model, name, torch.zeros(tensor.shape, device=device, dtype=dtype))
    model.eval()


def save_pretrained(model, path: str | Path, max_shard_bytes: int = 2 * 2**30) -> None:
    """Config, safetensors shards (+ index when sharded) under checkpoint key names, tokenizer."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder)
    state = ((checkpoint_name(k), v) for k, v in model.state_dict().items())
    _write_shards(state, folder, max_shard_bytes)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder)


def _write_shards(
    tensors: Iterator[tuple[str, torch.Tensor]], folder: Path, max_shard_bytes: int
) -> list[str]:
    """Write tensors into model-XXXXX.safetensors shards of at most ``max_shard_bytes``."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.detach().to("cpu").contiguous().clone()
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    if len(shards) > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return names


def convert(src: str | Path, dst: str | Path, max_shard_bytes: int = 2 * 2**30) -> list[str]:
    """Re-save every tensor of a checkpoint folder (any format) as safetensors shards, keys
    unchanged; copies config and tokenizer files."""
    src, dst = Path(src), Path(dst)
    files = checkpoint_files(src)
    dst.mkdir(parents=True, exist_ok=True)

    def every_tensor() -> Iterator[tuple[str, torch.Tensor]]:
        for file in files:
            yield from iter_tensors(file)

    names = _write_shards(every_tensor(), dst, max_shard_bytes)
    for aux in AUX_FILES:
        if (src / aux).is_file():
            shutil.copy2(src / aux, dst / aux)
    return names
