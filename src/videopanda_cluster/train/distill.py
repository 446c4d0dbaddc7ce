"""Optional feature distillation (spec §7.3): LLM hidden states of visual tokens → a teacher's.

    L_distill = Σ_frames (1 − mean_tokens cos(pred, target)) / counted frames
    loss      = CE + distill_weight · L_distill        (the reference: weight 1)

**Teachers.** A :class:`Teacher` maps a batch of :class:`~.data.Sample` to one
:class:`TeacherFeatures` per video: the teacher's tokens of every frame on its square patch grid
(padding included, CLS dropped) and which frames count (fully padded frames do not).

- :class:`ModuleTeacher` wraps any frozen module ``(F, 3, T, T) → (F, g·g, d_teacher)``. Its input
  is the student's preprocessed frames (normalised RGB) resized to T. This deviates from the
  reference, which letterboxes the decoded frames again at 224 and gives the teacher its own
  random flip (spec §8 #14, a bug): here teacher and student always see the same, equally flipped
  pixels. To use LanguageBind's video tower (spec §7.3 step 1), wrap it in a module that groups
  the frames into clips of 4, takes ``hidden_states[-2]`` and drops CLS.
- :class:`StoredTeacher` reads precomputed features from a :class:`~..storage.Store`:

      {prefix}/teacher.json                          {"dim": d, "tokens": g·g, ...}
      {prefix}/videos/{safe_key_component(id)}.safetensors
          "tokens": (F, g·g, d) any float dtype     "valid": (F,) uint8

  keyed by the sample (record) id; :func:`precompute_teacher_features` writes them. They are
  computed once without flip, so train with the dataset's ``flip=False`` to keep pairs aligned.
- :class:`PatchEmbedTeacher` (via :func:`random_teacher`) is a seeded random patch embedding for
  tests and smoke runs.

**Alignment** (spec §7.3 steps 2 and 4). The student's features of frame k are the hidden states
of its visual tokens in the spliced sequence, CTX dropped and the split column dropped: h·w
tokens, row-major. The teacher grid must be g_s·r cells per side, where g_s = S / 28 is the
student's cell grid and r ≥ 1 an integer (the reference: g = 16 at 224 for S = 448, r = 1); for
r > 1 the teacher tokens are average-pooled r×r (the reference's ``patch_ratio``). Then the cells
whose square of the input mask (28 px: one STAB token) holds any valid pixel are kept, row-major;
their count must equal h·w, else :class:`ValueError`.

**Frames counted**: those the teacher marks valid whose tokens all lie inside the (possibly
truncated) sequence; a frame cut by truncation is left out, like a fully padded one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..model.compressor import VideoCompressor
from ..model.config import VideoPandaConfig
from ..model.prompt import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..model.stab import _crop_box
from ..storage import Store, safe_key_component
from .data import Overflow, Sample, SampleError, expand_labels

if TYPE_CHECKING:
    from .data import VideoConversationDataset

log = logging.getLogger(__name__)

TEACHER_INFO = "teacher.json"


# -- teachers --------------------------------------------------------------------------------
@dataclass
class TeacherFeatures:
    """One video's teacher targets."""

    tokens: torch.Tensor  # (F, g·g, d_teacher): every frame's tokens on the square patch grid
    valid: torch.Tensor  # (F,) bool: the frame counts (False for fully padded frames)

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3 or self.valid.shape != self.tokens.shape[:1]:
            raise ValueError(
                f"teacher features must be (F, N, d) with (F,) validity, got "
                f"{tuple(self.tokens.shape)} and {tuple(self.valid.shape)}"
            )


@runtime_checkable
class Teacher(Protocol):
    """Gives per video, per frame target features for a batch of samples."""

    dim: int  # d_teacher

    def __call__(self, samples: Sequence[Sample]) -> list[TeacherFeatures]: ...


def frame_validity(pixels: torch.Tensor) -> torch.Tensor:
    """(F, 4, S, S) → (F,) bool: the frame's mask channel has a valid pixel."""
    return pixels[:, 3].flatten(1).gt(0).any(dim=1)


def teacher_frames(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """The student's (F, 4, S, S) frames → the teacher's (F, 3, size, size): the normalised RGB,
    resized (bilinear, antialiased) when ``size`` differs from S."""
    rgb = pixels[:, :3].float()
    if rgb.shape[-1] == size and rgb.shape[-2] == size:
        return rgb
    return F.interpolate(
        rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


class ModuleTeacher:
    """A frozen module ``(F, 3, T, T) → (F, N, dim)`` (N = g·g tokens, row-major, no CLS) run on
    the student's frames resized to ``image_size`` = T. All frames of a batch go through one call,
    video after video, so a temporal teacher may group consecutive frames into clips."""

    def __init__(
        self,
        module: nn.Module,
        image_size: int,
        dim: int,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.module = module.eval().requires_grad_(False)
        self.image_size = image_size
        self.dim = dim
        first = next(module.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = dtype or (first.dtype if first is not None else torch.float32)

    @torch.no_grad()
    def __call__(self, samples: Sequence[Sample]) -> list[TeacherFeatures]:
        if not samples:
            return []
        pixels = torch.cat([s.pixels for s in samples]).to(self.device)  # (ΣF, 4, S, S)
        frames = teacher_frames(pixels, self.image_size).to(self.dtype)
        self.module.eval()
        tokens = self.module(frames)
        if tokens.dim() != 3 or tokens.shape[0] != frames.shape[0] or tokens.shape[2] != self.dim:
            raise ValueError(
                f"teacher module gave {tuple(tokens.shape)} for {frames.shape[0]} frames; "
                f"expected (frames, tokens, {self.dim})"
            )
        valid = frame_validity(pixels)
        counts = [s.pixels.shape[0] for s in samples]
        return [
            TeacherFeatures(t, v)
            for t, v in zip(tokens.split(counts), valid.split(counts), strict=True)
        ]


class PatchEmbedTeacher(nn.Module):
    """A seeded random teacher: patch-embedding conv, GELU and a linear layer,
    (F, 3, T, T) → (F, (T/patch)², dim)."""

    def __init__(self, dim: int = 32, patch: int = 14, seed: int = 0) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.mix = nn.Linear(dim, dim)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else dim
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.patch(frames).flatten(2).transpose(1, 2)  # (F, g·g, dim)
        return self.mix(F.gelu(x))


def random_teacher(
    dim: int = 32, image_size: int = 224, patch: int = 14, seed: int = 0
) -> ModuleTeacher:
    """A :class:`ModuleTeacher` around a :class:`PatchEmbedTeacher` (tests, smoke runs); with
    ``image_size = S / 2`` and ``patch = 14`` its grid is the student's (the reference's
    geometry)."""
    return ModuleTeacher(PatchEmbedTeacher(dim, patch, seed), image_size, dim)


def teacher_key(prefix: str, video_id: str) -> str:
    return f"{prefix.rstrip('/')}/videos/{safe_key_component(video_id)}.safetensors"


def write_teacher_features(
    store: Store, prefix: str, video_id: str, features: TeacherFeatures
) -> str:
    """Store one video's features (dtype kept); returns the key."""
    from safetensors.torch import save

    key = teacher_key(prefix, video_id)
    tensors = {
        "tokens": features.tokens.detach().cpu().contiguous(),
        "valid": features.valid.detach().cpu().to(torch.uint8).contiguous(),
    }
    store.put(key, save(tensors, metadata={"video_id": video_id}))
    return key


def write_teacher_info(store: Store, prefix: str, dim: int, **info) -> None:
    store.put(f"{prefix.rstrip('/')}/{TEACHER_INFO}", json.dumps({"dim": dim, **info}).encode())


class StoredTeacher:
    """Precomputed teacher features in a store (layout in the module docstring)."""

    def __init__(self, store: Store, prefix: str, dim: int | None = None) -> None:
        self.store, self.prefix = store, prefix.rstrip("/")
        self.channels: tuple[str, ...] | None = None  # the channel names teacher.json gives
        if dim is None:
            key = f"{self.prefix}/{TEACHER_INFO}"
            try:
                info = json.loads(store.get(key))
                dim = int(info["dim"])
            except KeyError:
                raise KeyError(f"no {key} in {store!r}: pass dim or write it") from None
            if "channels" in info:
                self.channels = tuple(info["channels"])
        self.dim = dim

    def __call__(self, samples: Sequence[Sample]) -> list[TeacherFeatures]:
        from safetensors.torch import load

        out = []
        for sample in samples:
            key = teacher_key(self.prefix, sample.id)
            try:
                tensors = load(self.store.get(key))
            except KeyError:
                raise KeyError(f"no teacher features for video {sample.id!r} ({key})") from None
            features = TeacherFeatures(tensors["tokens"].float(), tensors["valid"].bool())
            frames, dim = features.tokens.shape[0], features.tokens.shape[2]
            if frames != sample.pixels.shape[0] or dim != self.dim:
                raise ValueError(
                    f"{key}: {frames} frames of width {dim}, expected "
                    f"{sample.pixels.shape[0]} of width {self.dim}"
                )
            out.append(features)
        return out


def precompute_teacher_features(
    teacher: Teacher, dataset: VideoConversationDataset, store: Store, prefix: str
) -> list[str]:
    """Run ``teacher`` on every record (no flip) and store the features for
    :class:`StoredTeacher`; returns the ids left out because their sample failed to load."""
    from ..video.errors import VideoDecodeError

    failed = []
    for index in range(len(dataset)):
        try:
            sample = dataset.load(index)
        except (SampleError, VideoDecodeError) as exc:
            log.warning("teacher features for record %d skipped: %s", index, exc)
            failed.append(dataset.records[index].id)
            continue
        (features,) = teacher([sample])
        write_teacher_features(store, prefix, sample.id, features)
    write_teacher_info(store, prefix, teacher.dim, videos=len(dataset) - len(failed))
    return failed


# -- geometry: which hidden states and which teacher tokens ------------------------------------
def frame_grid(mask: torch.Tensor, config: VideoPandaConfig) -> tuple[int, int]:
    """(h, w) STAB gives a frame with input mask (S, S) (its crop rule, without running it)."""
    patches = F.avg_pool2d(mask[None, None].float(), config.patch_stride)[0, 0]
    h1, w1, h2, w2 = _crop_box(patches, config.image_size // config.patch_stride // 2)
    return (h2 - h1) // config.conv_stride, (w2 - w1) // config.conv_stride


def frame_starts(input_ids: Sequence[int], lengths: Sequence[int]) -> list[int]:
    """Where each frame's tokens start in the spliced sequence (placeholder i → ``lengths[i]``
    tokens)."""
    starts: list[int] = []
    shift = 0
    for position, token in enumerate(input_ids):
        if token == IMAGE_TOKEN_INDEX:
            if len(starts) == len(lengths):
                raise ValueError(f"more placeholders than the {len(lengths)} frames")
            starts.append(position + shift)
            shift += lengths[len(starts) - 1] - 1
    if len(starts) != len(lengths):
        raise ValueError(f"{len(starts)} placeholders for {len(lengths)} frames")
    return starts


def counted_frames(
    starts: Sequence[int], lengths: Sequence[int], valid: torch.Tensor, length: int
) -> list[int]:
    """Frames that enter L_distill: valid, and whole inside the first ``length`` tokens."""
    if len(valid) != len(starts):
        raise ValueError(f"teacher gives {len(valid)} frames, the sample has {len(starts)}")
    flags = valid.tolist()
    return [
        k
        for k, (s, n) in enumerate(zip(starts, lengths, strict=True))
        if flags[k] and s + n <= length
    ]


def student_positions(
    start: int, grid: tuple[int, int], length: int, config: VideoPandaConfig
) -> torch.Tensor:
    """(h·w,) sequence positions of a frame's spatial tokens: CTX and split tokens dropped."""
    h, w = grid
    context, split = config.context_tokens, int(not config.no_split_tokens)
    if context + h * (w + split) != length:
        raise ValueError(
            f"frame of {length} tokens does not have the layout {context} + {h}·({w}+{split})"
        )
    cells = torch.arange(h)[:, None] * (w + split) + torch.arange(w)[None, :]
    return start + context + cells.flatten()


def align_targets(
    tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], config: VideoPandaConfig
) -> torch.Tensor:
    """A frame's teacher tokens (g·g, d) → the (h·w, d) targets of its student tokens.

    The teacher grid is pooled to the student's cell grid (S / 28 per side); the cells of the
    input mask (S, S) with any valid pixel are kept, row-major.
    """
    count, dim = tokens.shape
    side = math.isqrt(count)
    cells = config.image_size // (config.patch_stride * config.conv_stride)
    if side * side != count or side % cells:
        raise ValueError(
            f"teacher gives {count} tokens per frame; expected a square grid whose side is a "
            f"multiple of the student's {cells} cells (drop CLS tokens, check the teacher's "
            "input size and patch size)"
        )
    square = tokens.T.reshape(1, dim, side, side)
    if side != cells:
        square = F.avg_pool2d(square, side // cells)
    keep = F.avg_pool2d(mask[None, None].float(), config.image_size // cells)[0, 0] > 0
    selected = square[0].flatten(1)[:, keep.flatten().to(tokens.device)].T  # (valid cells, d)
    h, w = grid
    if selected.shape[0] != h * w:
        raise ValueError(
            f"{selected.shape[0]} teacher tokens lie in the frame's valid region but the student "
            f"has {h}×{w} = {h * w}"
        )
    return selected


# -- the loss --------------------------------------------------------------------------------
@dataclass
class FrameTarget:
    """One counted frame: where its student tokens are in the batch, and their targets."""

    row: int  # batch row of the padded LLM input
    positions: torch.Tensor  # (h·w,) sequence positions
    target: torch.Tensor  # (h·w, d_teacher)


@dataclass
class DistillStats:
    """A forward pass's distillation term."""

    loss_sum: torch.Tensor  # Σ frame losses (0-dim, differentiable)
    frame_losses: torch.Tensor  # (counted frames,), detached

    @property
    def frames(self) -> int:
        return int(self.frame_losses.numel())

    @classmethod
    def empty(cls, device: torch.device | None = None) -> DistillStats:
        zero = torch.zeros((), device=device)
        return cls(zero, zero.new_zeros(0))


def frame_targets(
    row: int,
    sample: Sample,
    lengths: Sequence[int],
    grids: Sequence[tuple[int, int]],
    length: int,
    features: TeacherFeatures,
    config: VideoPandaConfig,
) -> list[FrameTarget]:
    """The counted frames of one sample placed at batch ``row`` with ``length`` tokens."""
    starts = frame_starts(sample.input_ids, lengths)
    out = []
    for k in counted_frames(starts, lengths, features.valid, length):
        positions = student_positions(starts[k], grids[k], lengths[k], config)
        target = align_targets(features.tokens[k], sample.pixels[k, 3], grids[k], config)
        out.append(FrameTarget(row, positions, target))
    return out


def frame_losses(
    pred: torch.Tensor, target: torch.Tensor, frame_index: torch.Tensor, frames: int
) -> torch.Tensor:
    """Per frame 1 − mean over its tokens of cos(pred, target) (eps 1e-8), in float32.

    ``pred``, ``target``: (N, d); ``frame_index``: (N,) frame of each token → (frames,).
    """
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-8)  # (N,)
    sums = cos.new_zeros(frames).index_add(0, frame_index, cos)
    counts = torch.bincount(frame_index, minlength=frames).to(cos.dtype)
    return 1 - sums / counts


def distill_sum(
    hidden_states: Sequence[torch.Tensor],
    compressor: VideoCompressor,
    frames: Sequence[FrameTarget],
) -> DistillStats:
    """Σ frame losses over ``frames``, from the LLM's L + 1 hidden states, each (B, T, d_llm)."""
    device = hidden_states[0].device
    if not frames:
        return DistillStats.empty(device)
    rows = torch.cat([torch.full_like(f.positions, f.row) for f in frames]).to(device)
    cols = torch.cat([f.positions for f in frames]).to(device)
    index = torch.cat([torch.full_like(f.positions, k) for k, f in enumerate(frames)]).to(device)
    states = torch.stack([hidden_states[i][rows, cols] for i in compressor.layer_idx], dim=1)
    pred = compressor(states.to(compressor.input_layer.weight.dtype))  # (N, d_teacher)
    target = torch.cat([f.target for f in frames]).to(device)
    losses = frame_losses(pred, target, index, len(frames))
    return DistillStats(losses.sum(), losses.detach())


def plan_counts(
    samples: Sequence[Sample],
    targets: Sequence[TeacherFeatures],
    config: VideoPandaConfig,
    max_length: int,
    overflow: Overflow,
) -> tuple[int, int]:
    """(supervised tokens, counted frames) that a forward pass over ``samples`` will have,
    computed from the data alone (grids from the masks by STAB's crop rule)."""
    tokens = frames = 0
    for sample, features in zip(samples, targets, strict=True):
        grids = [frame_grid(frame[3], config) for frame in sample.pixels]
        lengths = [config.frame_tokens(g) for g in grids]
        labels = expand_labels(sample.labels, sample.input_ids, lengths)
        if labels.shape[0] > max_length:
            if overflow == "skip":
                continue
            labels = labels[:max_length]
        tokens += int((labels[1:] != IGNORE_INDEX).sum())
        starts = frame_starts(sample.input_ids, lengths)
        frames += len(counted_frames(starts, lengths, features.valid, labels.shape[0]))
    return tokens, frames


def teacher_targets(teacher: Teacher, samples: Sequence[Sample]) -> list[TeacherFeatures]:
    """``teacher(samples)``, checked: one entry per sample with the teacher's width."""
    targets = teacher(samples)
    if len(targets) != len(samples):
        raise ValueError(f"teacher gave {len(targets)} results for {len(samples)} samples")
    for sample, features in zip(samples, targets, strict=True):
        if features.tokens.shape[2] != teacher.dim:
            raise ValueError(
                f"sample {sample.id!r}: teacher features of width {features.tokens.shape[2]}, "
                f"teacher.dim is {teacher.dim}"
            )
    return targets
