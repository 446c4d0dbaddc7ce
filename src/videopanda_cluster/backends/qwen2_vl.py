"""Qwen2-VL and Qwen2.5-VL (``transformers``' ``Qwen2VLForConditionalGeneration`` and
``Qwen2_5_VLForConditionalGeneration``) as backends.

Features are the model's own ``get_video_features`` output, one tensor per temporal patch (two
frames) shaped ``(grid_h / merge, grid_w / merge, hidden)``, so that ``video_grid_thw`` is
derivable from the cached features. Answers come from the model's own ``generate`` with the
prompt the processor + chat template build (``<|video_pad|>`` repeated once per visual token),
left-padded per batch, the cached features standing in for ``pixel_values_videos``: the model's
forward scatters them into the embeddings and its ``get_rope_index`` computes the mRoPE positions
from the ids and the grid as for a processor's inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .base import DecodedVideo, VideoBackend
from .qwen2_vl_processing import QwenVideoProcessing

if TYPE_CHECKING:
    from ..model.generation import GenerationOptions, PromptTooLong
    from ..video.sampling import FrameSpec

VIDEO_TOKEN = "<|video_pad|>"
# the chat templates' files in a folder, the processor's first (as ProcessorMixin reads them)
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def read_chat_template(folder: str | Path, tokenizer: Any) -> str:
    """The folder's chat template: the processor's file, else the tokenizer's."""
    for name in TEMPLATE_FILES:
        path = Path(folder) / name
        if path.is_file():
            text = path.read_text()
            return text if name.endswith(".jinja") else str(json.loads(text)["chat_template"])
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.chat_template)
    raise FileNotFoundError(f"{folder}: no chat template (chat_template.jinja/.json, tokenizer)")


def video_message(question: str) -> list[dict[str, Any]]:
    """One user turn of a video and the question, as the processor's chat template takes it."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]


class Qwen2VLBackend(VideoBackend):
    kind: ClassVar[str] = "qwen2_vl"
    model_class: ClassVar[str] = "Qwen2VLForConditionalGeneration"

    def __init__(
        self, model: Any, tokenizer: Any, processing: QwenVideoProcessing, template: str
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processing = processing
        self.template = template
        self.merge = int(model.config.vision_config.spatial_merge_size)
        if processing.merge_size != self.merge or (
            processing.temporal_patch_size != model.config.vision_config.temporal_patch_size
        ):
            raise ValueError(
                "the video processor's merge/temporal patch sizes differ from the model's"
            )

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: str | None = None,
        with_llm: bool = True,
        attention: str | None = None,
    ) -> Qwen2VLBackend:
        """The model from the local ``folder`` (its dtype as saved; no hub access)."""
        import transformers

        model_class = getattr(transformers, cls.model_class)
        kwargs: dict[str, Any] = {"dtype": "auto", "local_files_only": True}
        if attention is not None:
            kwargs["attn_implementation"] = attention
        model = model_class.from_pretrained(folder, **kwargs).eval()
        if device is not None:
            model = model.to(device)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        processing = QwenVideoProcessing.from_folder(folder)
        return cls(model, tokenizer, processing, read_chat_template(folder, tokenizer))

    @classmethod
    def frame_spec(cls, folder: str | Path, num_frames: int | None = None) -> FrameSpec:
        return QwenVideoProcessing.from_folder(folder).frame_spec(num_frames)

    def fingerprint(self) -> str:
        """Package and transformers versions, and a digest of the preprocessing settings and
        the chat template."""
        import transformers

        from .. import __version__

        settings = json.dumps([repr(self.processing), self.template], sort_keys=True)
        digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
        return f"{self.kind}/{__version__}/transformers-{transformers.__version__}/{digest}"

    @property
    def num_frames(self) -> int:
        """Frames per video when the count is fixed; with fps sampling, the fewest it takes."""
        spec = self.processing.frame_spec()
        return spec.num_frames if spec.num_frames is not None else spec.min_frames

    @property
    def image_size(self) -> int:
        """0: the decoder hands frames over as decoded; the backend resizes them itself."""
        return 0

    def feature_identity(self) -> str:
        from ..cluster.fingerprint import module_hash

        return (
            f"{self.kind}:{module_hash(self.model.model.visual)}:{hash_settings(self.processing)}"
        )

    @torch.no_grad()
    def encode(self, videos: Sequence[DecodedVideo]) -> list[list[torch.Tensor]]:
        """Per video, ``get_video_features`` split per temporal patch, (h', w', hidden) each."""
        if not videos:
            return []
        model = self.model
        pixels, grids = [], []
        for video in videos:
            frames = video.frames[:, :, ::-1] if video.flipped else video.frames
            values, grid = self.processing(np.ascontiguousarray(frames))
            pixels.append(values)
            grids.append(grid)
        grid_thw = torch.tensor(grids, device=model.device)
        embeds = model.model.get_video_features(torch.cat(pixels).to(model.device), grid_thw)
        out = []
        for tokens, (t, h, w) in zip(embeds, grids, strict=True):
            shaped = tokens.reshape(t, h // self.merge, w // self.merge, -1).to("cpu")
            out.append(list(shaped.unbind(0)))
        return out

    def grid(self, features: Sequence[torch.Tensor]) -> tuple[int, int, int]:
        """``video_grid_thw`` of a video's cached features."""
        h, w = features[0].shape[:2]
        return len(features), h * self.merge, w * self.merge

    def prompt_text(self, question: str, features: Sequence[torch.Tensor]) -> str:
        """The chat template's prompt, one ``<|video_pad|>`` for the video."""
        return str(
            self.tokenizer.apply_chat_template(
                video_message(question),
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=True,
            )
        )

    def input_ids(self, question: str, features: Sequence[torch.Tensor]) -> list[int]:
        """The prompt's token ids as the processor makes them: ``<|video_pad|>`` repeated once
        per visual token (grid.prod() / merge**2)."""
        t, h, w = self.grid(features)
        count = t * h * w // self.merge**2
        text = self.prompt_text(question, features).replace(VIDEO_TOKEN, VIDEO_TOKEN * count, 1)
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def video_inputs(self, videos: Sequence[Sequence[torch.Tensor]]) -> dict[str, Any]:
        """What the model's forward takes beside the ids for these videos (one per prompt):
        the features where ``pixel_values_videos`` go, and ``video_grid_thw``."""
        flat = [torch.stack(list(v)).flatten(0, 2) for v in videos]
        grids = torch.tensor([self.grid(v) for v in videos])
        return {"pixel_values_videos": torch.cat(flat), "video_grid_thw": grids}

    @contextmanager
    def cached_features(self) -> Iterator[None]:
        """The model's ``get_video_features`` hands back its ``pixel_values_videos`` (the cached
        features) split per video, for the span of a ``generate``."""
        inner = self.model.model
        merge = self.merge

        def split(features: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return torch.split(features, (grid_thw.prod(-1) // merge**2).tolist())

        inner.get_video_features = split
        try:
            yield
        finally:
            del inner.get_video_features

    @torch.no_grad()
    def answer(
        self,
        features: Sequence[Sequence[torch.Tensor]],
        questions: Sequence[Sequence[str]],
        options: GenerationOptions,
    ) -> list[list[str | PromptTooLong]]:
        """Per video, one answer per question: the (video, question) pairs in order, batches of
        ``options.batch_size`` left-padded through the model's ``generate``."""
        from ..model.generation import PromptTooLong, cut_stop

        limit = int(self.model.config.text_config.max_position_embeddings)
        results: list[list[str | PromptTooLong]] = [[] for _ in questions]
        pairs: list[tuple[int, int, list[int]]] = []
        for v, (video, asked) in enumerate(zip(features, questions, strict=True)):
            for q in asked:
                ids = self.input_ids(q, video)
                if len(ids) + options.max_new_tokens > limit:
                    results[v].append(PromptTooLong(len(ids), options.max_new_tokens, limit))
                else:
                    results[v].append("")
                    pairs.append((v, len(results[v]) - 1, ids))
        if options.seed is not None:
            torch.manual_seed(options.seed)
        for start in range(0, len(pairs), options.batch_size):
            batch = pairs[start : start + options.batch_size]
            texts = self.generate([ids for _, _, ids in batch], [features[v] for v, _, _ in batch],
                                  options)  # fmt: skip
            for (v, k, _), text in zip(batch, texts, strict=True):
                results[v][k] = cut_stop(text, options.stop).strip()
        return results

    def extra_inputs(self, videos: Sequence[Sequence[torch.Tensor]]) -> dict[str, Any]:
        """Model inputs beside the ids and videos (Qwen2.5-VL: ``second_per_grid_ts``)."""
        return {}

    def generate(
        self,
        ids: Sequence[Sequence[int]],
        videos: Sequence[Sequence[torch.Tensor]],
        options: GenerationOptions,
    ) -> list[str]:
        """The model's ``generate`` on left-padded prompts, one video each; new text per row."""
        model, tokenizer = self.model, self.tokenizer
        width = max(len(row) for row in ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in ids])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])
        inputs = {**self.video_inputs(videos), **self.extra_inputs(videos)}
        kwargs: dict[str, Any] = dict(
            max_new_tokens=options.max_new_tokens,
            do_sample=options.do_sample,
            num_beams=1,
            pad_token_id=pad,
        )
        if options.do_sample:
            kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if options.stop:
            kwargs.update(stop_strings=list(options.stop), tokenizer=tokenizer)
        device = model.device
        with self.cached_features():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                **{k: v.to(device) for k, v in inputs.items()},
                **kwargs,
            )
        new = out[:, width:].tolist()
        return [tokenizer.decode(row, skip_special_tokens=True) for row in new]


class Qwen2_5_VLBackend(Qwen2VLBackend):
    """Qwen2.5-VL: as Qwen2-VL, with ``second_per_grid_ts`` for its time-aligned mRoPE as the
    processor sets it when called without ``fps``: temporal_patch_size / 2.0 seconds."""

    kind: ClassVar[str] = "qwen2_5_vl"
    model_class: ClassVar[str] = "Qwen2_5_VLForConditionalGeneration"
    PROCESSOR_FPS: ClassVar[float] = 2.0  # Qwen2_5_VLProcessor.__call__'s default fps

    def extra_inputs(self, videos: Sequence[Sequence[torch.Tensor]]) -> dict[str, Any]:
        seconds = self.processing.temporal_patch_size / self.PROCESSOR_FPS
        return {"second_per_grid_ts": torch.tensor([seconds] * len(videos))}


def hash_settings(processing: QwenVideoProcessing) -> str:
    """A short digest of the preprocessing settings."""
    return hashlib.sha256(repr(processing).encode()).hexdigest()[:12]
