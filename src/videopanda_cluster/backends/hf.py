"""Video-LLMs that ``transformers`` implements, as backends: the shared part (one subclass per
model family: its model class, its video processor's defaults, and the shape of its
``get_video_features``).

What runs is the model's own code: ``encode`` is its ``get_video_features`` on frames that
:mod:`.processing` preprocesses as its video processor would; ``answer`` is its ``generate`` on
the prompt its processor and chat template would build, with the cached features handed to its
forward where ``get_video_features``' result goes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..model.generation import GenerationOptions, PromptTooLong, cut_stop, generate_kwargs
from ..video.sampling import FrameSpec
from .base import DecodedVideo, VideoBackend
from .processing import VideoProcessing

if TYPE_CHECKING:
    from ..model.config import AttentionImpl

VIDEO_TOKEN = "<video>"  # the processors' default placeholder


def read_chat_template(folder: str | Path) -> str | None:
    """The folder's chat template as its processor loads it: ``chat_template.jinja``, else
    ``chat_template.json``; None leaves the tokenizer's own (``tokenizer_config.json``)."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return str(json.loads((folder / "chat_template.json").read_text())["chat_template"])
    return None


class TransformersVideoBackend(VideoBackend):
    """A ``transformers`` video-LLM loaded from a local folder (no hub access)."""

    model_class: ClassVar[str]  # the transformers class that runs the folder
    processor_class: ClassVar[str]  # its video processor, when the folder's config names none
    processing_type: ClassVar[type[VideoProcessing]] = VideoProcessing  # what preprocesses
    placeholder: ClassVar[str] = VIDEO_TOKEN  # the video token, unless the tokenizer names one
    default_frames: ClassVar[int] = 8  # frames per video unless the processor config samples

    def __init__(
        self, folder: str | Path, model: Any, tokenizer: Any, template: str | None
    ) -> None:
        self.folder = Path(folder)
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.processing = self.processing_type.from_folder(folder, self.processor_class)
        self.spec = self.frame_spec(folder)
        self.video_token = getattr(tokenizer, "video_token", None) or self.placeholder
        self.video_token_id = int(tokenizer.convert_tokens_to_ids(self.video_token))

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: str | None = None,
        with_llm: bool = True,
        attention: AttentionImpl | None = None,
    ) -> TransformersVideoBackend:
        """The model (float32 on the CPU, the config's dtype elsewhere) and tokenizer from
        ``folder``; without the LLM, its language model and head are dropped after loading."""
        import transformers

        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model_cls = getattr(transformers, cls.model_class)
        kwargs: dict[str, Any] = {"local_files_only": True}
        kwargs["dtype"] = torch.float32 if target.type == "cpu" else "auto"
        if attention is not None:
            kwargs["attn_implementation"] = attention
        model = model_cls.from_pretrained(folder, **kwargs).to(target).eval()
        if not with_llm:
            model.model.language_model = None
            model.lm_head = None
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(folder, model, tokenizer, read_chat_template(folder))

    @classmethod
    def frame_spec(cls, folder: str | Path, num_frames: int | None = None) -> FrameSpec:
        """Uniform sampling (``BaseVideoProcessor.sample_frames``) of the processor config's
        ``num_frames`` (or ``fps``) when it has ``do_sample_frames``, else of the model's usual
        count; frames as decoded (the backend resizes them)."""
        processing = cls.processing_type.from_folder(folder, cls.processor_class)
        if num_frames is not None:
            return FrameSpec(num_frames=num_frames, rule="uniform", size=None)
        if processing.do_sample_frames and processing.num_frames:
            return FrameSpec(num_frames=processing.num_frames, rule="uniform", size=None)
        if processing.do_sample_frames and processing.fps:
            return FrameSpec(num_frames=None, fps=processing.fps, rule="uniform", size=None)
        return FrameSpec(num_frames=cls.default_frames, rule="uniform", size=None)

    def fingerprint(self) -> str:
        import transformers

        settings = json.dumps([self.processing.digest(), self.template], sort_keys=True)
        digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
        return f"{self.kind}/transformers-{transformers.__version__}/{digest}"

    @property
    def num_frames(self) -> int:
        return self.spec.num_frames or self.default_frames

    @property
    def image_size(self) -> int:
        """The side of the frames the model sees (its crop, else its resize target)."""
        size = self.processing.crop_size or self.processing.size or {}
        return int(size.get("height") or size.get("shortest_edge") or 0)

    def feature_identity(self) -> str:
        """The backend, its preprocessing, and the weights of everything but the LLM."""
        from ..cluster.fingerprint import module_hash

        visual = [
            module_hash(module)
            for name, module in sorted(self.model.model.named_children())
            if name != "language_model" and module is not None
        ]
        return (
            f"{self.kind}:{self.processing.digest()}:"
            + hashlib.sha256(":".join(visual).encode()).hexdigest()
        )

    # --- the model family's shape of get_video_features ----------------------------------
    def video_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) pixel values → (B, T, tokens, D) features through the model's own
        ``get_video_features``."""
        raise NotImplementedError

    def as_model_features(self, videos: Sequence[torch.Tensor]) -> Any:
        """Per row of a batch, its video's (T, tokens, D) features → what the model's
        ``get_video_features`` returns for those rows."""
        raise NotImplementedError

    def model_inputs(self, videos: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the model's ``generate`` takes for these rows' videos (each stacked as cached)
        besides the ids and pixel values (Qwen2-VL: ``video_grid_thw``); none by default."""
        return {}

    # --- encode ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, videos: Sequence[DecodedVideo]) -> list[list[torch.Tensor]]:
        """Per video, one (tokens, D) tensor per frame; videos of one pixel shape go through
        the vision tower together."""
        pixels = [self.processing(v.as_decoded()) for v in videos]
        out: list[list[torch.Tensor]] = [[] for _ in videos]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pixels):
            groups.setdefault(tuple(p.shape), []).append(i)
        device, dtype = self.model.device, self.model.dtype
        for members in groups.values():
            stacked = torch.stack([pixels[i] for i in members]).to(device, dtype)
            features = self.video_features(stacked).to("cpu")
            for i, video in zip(members, features, strict=True):
                out[i] = list(video.unbind(0))
        return out

    # --- prompts -------------------------------------------------------------------------
    @staticmethod
    def feature_tokens(video: Sequence[torch.Tensor]) -> int:
        """How many placeholder tokens a video's cached features fill: one per feature vector
        (the last dimension is the width)."""
        return sum(f.shape[:-1].numel() for f in video)

    def prompt_text(self, question: str, features: Sequence[torch.Tensor] = ()) -> str:
        """The chat template's rendering of a user turn with one video and the question, with
        the generation prompt (``processor.apply_chat_template``)."""
        messages = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
        ]
        return str(
            self.tokenizer.apply_chat_template(
                messages, chat_template=self.template, tokenize=False, add_generation_prompt=True
            )
        )

    def prompt_ids(self, question: str, tokens: int) -> list[int]:
        """The token ids the processor gives for the prompt: the placeholder repeated once per
        feature token (the processor's count, which the model's forward checks), tokenised
        with the tokenizer's special tokens."""
        text = self.prompt_text(question).replace(self.video_token, self.video_token * tokens)
        return list(self.tokenizer(text)["input_ids"])

    # --- answer --------------------------------------------------------------------------
    @contextmanager
    def _features_supplied(self, rows: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """For the duration of a ``generate`` call, the model's ``get_video_features`` returns
        the rows' cached features instead of running the vision tower: the forward then
        splices them exactly as it splices its own (placeholder mask, dtype, checks). The
        yielded stand-in pixel values only make the forward take its video branch (in the
        prefill step; later steps carry no video, as in plain ``generate``)."""
        inner = self.model.model
        supplied = self.as_model_features(rows)
        inner.get_video_features = lambda *args, **kwargs: supplied
        try:
            yield torch.zeros(len(rows), 0)
        finally:
            del inner.get_video_features  # the class's method again

    @torch.no_grad()
    def answer(
        self,
        features: Sequence[Sequence[torch.Tensor]],
        questions: Sequence[Sequence[str]],
        options: GenerationOptions,
    ) -> list[list[str | PromptTooLong]]:
        """Per video, one answer per question: (video, question) pairs in order, in batches of
        ``options.batch_size``, left-padded, through the model's ``generate``."""
        model, tokenizer = self.model, self.tokenizer
        limit = int(model.config.text_config.max_position_embeddings)
        places: list[list[int | PromptTooLong]] = []
        pairs: list[tuple[list[int], torch.Tensor]] = []
        for video, qs in zip(features, questions, strict=True):
            stacked = torch.stack(list(video))
            tokens = self.feature_tokens(video)
            places.append([])
            for q in qs:
                ids = self.prompt_ids(q, tokens)
                if len(ids) + options.max_new_tokens > limit:
                    places[-1].append(PromptTooLong(len(ids), options.max_new_tokens, limit))
                    continue
                places[-1].append(len(pairs))
                pairs.append((ids, stacked))
        eos = tokenizer.eos_token_id
        pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        kwargs = generate_kwargs(options, tokenizer, eos, pad)
        if options.seed is not None:
            torch.manual_seed(options.seed)
        texts: list[str] = []
        for start in range(0, len(pairs), options.batch_size):
            batch = pairs[start : start + options.batch_size]
            length = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), length), dtype=torch.long)
            for row, (ids, _) in enumerate(batch):
                input_ids[row, length - len(ids) :] = torch.tensor(ids)
                mask[row, length - len(ids) :] = 1
            rows = [f.to(model.device, model.dtype) for _, f in batch]
            extra = {k: v.to(model.device) for k, v in self.model_inputs(rows).items()}
            with self._features_supplied(rows) as stand_in:
                out = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=mask.to(model.device),
                    pixel_values_videos=stand_in,
                    **extra,
                    **kwargs,
                )
            for row in out[:, length:].tolist():
                if eos in row:
                    row = row[: row.index(eos)]
                text = tokenizer.decode(row, skip_special_tokens=True).strip()
                texts.append(cut_stop(text, options.stop))
        return [
            [p if isinstance(p, PromptTooLong) else texts[p] for p in video] for video in places
        ]
