"""The Qwen2-VL and Qwen2.5-VL backends on tiny random folders: their prompts' ids equal the real
processor's (run in the side venv, tests/hf_reference.py) and their greedy answers through
``encode`` + ``answer`` equal the model's own ``generate`` on the processor's outputs for the
same frames: several questions per video, batches of several prompts, two frame sizes, frame
sampling by the folder's config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.hf_reference import run_reference
from tests.hf_tiny import write_qwen_folder
from videopanda_cluster.backends import DecodedVideo, backend_kind, load_backend
from videopanda_cluster.backends.qwen2_vl_processing import QwenVideoProcessing
from videopanda_cluster.model.generation import GenerationOptions, PromptTooLong

QUESTIONS = [
    ["what is happening in the video?", "how many people are there?", "describe the scene."],
    ["what is happening in the video?", "describe the scene: two cats play."],
]
# (frames, height, width, fps) per video: two frame sizes, one an odd frame count
VIDEOS = [(12, 56, 84, 10.0), (10, 70, 50, 5.0)]
FOLDERS = {  # model_type -> video processor config over the tiny defaults
    "qwen2_vl": {},
    "qwen2_5_vl": {"do_sample_frames": True, "num_frames": 4},
}
BATCH = 3
NEW_TOKENS = 6

REFERENCE = """
import torch
from transformers import AutoProcessor
from transformers.video_utils import VideoMetadata
OUT = {}
for name, folder, batches, metas in ARGS:
    processor = AutoProcessor.from_pretrained(folder)
    OUT[name] = type(processor).__name__
    for b, batch in enumerate(batches):
        texts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}],
            tokenize=False, add_generation_prompt=True) for _, q in batch]
        videos = [ARRAYS[f"{name}/v{v}"] for v, _ in batch]
        meta = [VideoMetadata(total_num_frames=len(ARRAYS[f"{name}/v{v}"]), fps=metas[v])
                for v, _ in batch]
        out = processor(text=texts, videos=videos, video_metadata=meta, padding=True,
                        padding_side="left", return_tensors="pt")
        for key, value in out.items():
            OUT_ARRAYS[f"{name}/{b}/{key}"] = torch.as_tensor(value).numpy()
"""


def _batches(questions):
    pairs = [(v, q) for v, asked in enumerate(questions) for q in asked]
    return [pairs[i : i + BATCH] for i in range(0, len(pairs), BATCH)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    rng = np.random.default_rng(3)
    videos = [rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8) for t, h, w, _ in VIDEOS]
    folders = {
        kind: write_qwen_folder(root / kind, kind, config, seed=k)
        for k, (kind, config) in enumerate(FOLDERS.items())
    }
    arrays, decoded = {}, {}
    for kind, folder in folders.items():  # what the processor is given and what our decoder takes
        processing = QwenVideoProcessing.from_folder(folder)
        spec = processing.frame_spec()
        picked = [
            v[spec.positions(len(v), fps)] for v, (*_, fps) in zip(videos, VIDEOS, strict=True)
        ]
        decoded[kind] = [DecodedVideo(p, None) for p in picked]
        given = videos if processing.do_sample_frames else picked
        arrays |= {f"{kind}/v{i}": v for i, v in enumerate(given)}
    args = [
        (kind, str(folder), _batches(QUESTIONS), [fps for *_, fps in VIDEOS])
        for kind, folder in folders.items()
    ]
    out, classes = run_reference(REFERENCE, arrays, args)
    return folders, decoded, out, classes


@pytest.mark.parametrize("kind", list(FOLDERS))
@pytest.mark.slow  # the real processor in the side venv (tests/hf_reference.py)
def test_answers_equal_the_models_own_generate(reference, kind):
    from transformers import AutoModelForImageTextToText

    folders, decoded, out, classes = reference
    assert (
        classes[kind] == {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[kind]
    )
    folder = folders[kind]
    assert backend_kind(folder) == kind
    backend = load_backend(folder)
    assert type(backend).frame_spec(folder) == QwenVideoProcessing.from_folder(folder).frame_spec()
    features = backend.encode(decoded[kind])
    options = GenerationOptions(max_new_tokens=NEW_TOKENS, batch_size=BATCH)
    answers = backend.answer(features, QUESTIONS, options)

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    tokenizer = backend.tokenizer
    expected: list[str] = []
    for b, batch in enumerate(_batches(QUESTIONS)):
        inputs = {
            key.rsplit("/", 1)[1]: torch.from_numpy(value)
            for key, value in out.items()
            if key.startswith(f"{kind}/{b}/")
        }
        for row, mask, (v, q) in zip(
            inputs["input_ids"], inputs["attention_mask"], batch, strict=True
        ):
            ids = backend.prompt_ids(q, backend.feature_tokens(features[v]))
            assert ids == row[mask.bool()].tolist()
        assert inputs["video_grid_thw"].tolist() == [
            list(backend.grid(features[v])) for v, _ in batch
        ]
        with torch.no_grad():
            generated = model.generate(
                **inputs,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        width = inputs["input_ids"].shape[1]
        expected += [
            tokenizer.decode(r, skip_special_tokens=True).strip() for r in generated[:, width:]
        ]
    flat = [a for video in answers for a in video]
    assert flat == expected
    assert len(set(flat)) > 1 and all(flat)  # the answers depend on video and question


@pytest.mark.slow  # the real processor in the side venv (tests/hf_reference.py)
def test_too_long_prompts_and_the_grid(reference):
    folders, *_ = reference
    backend = load_backend(folders["qwen2_vl"])
    video = DecodedVideo(np.zeros((3, 60, 90, 3), np.uint8), None)
    (features,) = backend.encode([video])
    height, width = backend.processing.target_size(60, 90)  # 3 frames: 2 temporal patches
    assert backend.grid(features) == (2, height // 14, width // 14)
    assert [f.shape[:2] for f in features] == [(height // 28, width // 28)] * 2
    options = GenerationOptions(max_new_tokens=4, batch_size=2)
    (answers,) = backend.answer([features], [["short?", "what " * 2100]], options)
    assert isinstance(answers[1], PromptTooLong) and isinstance(answers[0], str)
