"""The Video-LLaVA and LLaVA-NeXT-Video backends on tiny random folders (tests/hf_tiny.py):
``encode`` + ``answer`` give exactly the tokens of the model's own ``generate`` on the real
processor's outputs (pixel values, prompt ids and padding made by the real ``*Processor`` with
its chat template in the side venv of tests/hf_reference.py); frame specs from the JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.hf_reference import run_reference
from tests.hf_tiny import write_llava_next_video, write_video_llava
from videopanda_cluster.backends import DecodedVideo, load_backend
from videopanda_cluster.backends.hf import TransformersVideoBackend
from videopanda_cluster.backends.llava_next_video import LlavaNextVideoBackend
from videopanda_cluster.backends.video_llava import VideoLlavaBackend
from videopanda_cluster.model.generation import GenerationOptions, PromptTooLong

WRITERS = {"video_llava": write_video_llava, "llava_next_video": write_llava_next_video}
SIZES = [(48, 64), (90, 40), (25, 31)]  # landscape, portrait, smaller than the crop (odd)
QUESTIONS = [["what moves?", "what colour is the big thing on the left?"], ["why?"],
             ["how many?", "where is it?", "is it day or night in this clip?"]]  # fmt: skip
OPTIONS = GenerationOptions(max_new_tokens=8, batch_size=4)
TOO_LONG = "why " * 300  # over the tiny models' 512 positions

REFERENCE = """
from transformers import AutoProcessor
out = {}
for kind, folder in ARGS["folders"].items():
    proc = AutoProcessor.from_pretrained(folder, local_files_only=True)
    proc.tokenizer.padding_side = "left"
    n = ARGS["frames"][kind]
    videos = [ARRAYS[f"{kind}_{i}"] for i in range(ARGS["videos"])]
    pairs = [(v, q) for v, qs in enumerate(ARGS["questions"]) for q in qs]
    texts = [proc.apply_chat_template([{"role": "user", "content": [
        {"type": "video"}, {"type": "text", "text": q}]}], add_generation_prompt=True)
        for _, q in pairs]
    out[kind] = {"texts": texts, "batches": 0, "class": type(proc).__name__}
    for b, start in enumerate(range(0, len(pairs), ARGS["batch_size"])):
        rows = list(range(start, min(start + ARGS["batch_size"], len(pairs))))
        enc = proc(text=[texts[r] for r in rows], videos=[videos[pairs[r][0]] for r in rows],
                   padding=True, return_tensors="pt")
        for key in ("input_ids", "attention_mask", "pixel_values_videos"):
            OUT_ARRAYS[f"{kind}_{b}_{key}"] = enc[key].numpy()
        out[kind]["batches"] += 1
OUT = out
"""


@dataclass
class Case:
    backend: TransformersVideoBackend
    folder: Path
    videos: list[np.ndarray]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    out = {}
    for kind, write in WRITERS.items():
        folder = write(root / kind)
        backend = load_backend(folder, device="cpu")
        assert isinstance(backend, TransformersVideoBackend) and backend.kind == kind
        n = backend.num_frames
        videos = [rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8) for h, w in SIZES]
        out[kind] = Case(backend, folder, videos)
    return out


@pytest.fixture(scope="module")
def reference(cases) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {f"{k}_{i}": v for k, c in cases.items() for i, v in enumerate(c.videos)}
    args = {
        "folders": {k: str(c.folder) for k, c in cases.items()},
        "frames": {k: c.backend.num_frames for k, c in cases.items()},
        "videos": len(SIZES),
        "questions": QUESTIONS,
        "batch_size": OPTIONS.batch_size,
    }
    return run_reference(REFERENCE, arrays, args)


def _own_generate(case: Case, arrays, kind: str, batches: int) -> list[list[int]]:
    """The model loaded by transformers itself, its generate on the processor's batches."""
    import transformers

    cls = getattr(transformers, case.backend.model_class)
    model = cls.from_pretrained(case.folder, local_files_only=True, dtype=torch.float32).eval()
    tok = case.backend.tokenizer
    rows = []
    for b in range(batches):
        ids = torch.from_numpy(arrays[f"{kind}_{b}_input_ids"])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.from_numpy(arrays[f"{kind}_{b}_attention_mask"]),
            pixel_values_videos=torch.from_numpy(arrays[f"{kind}_{b}_pixel_values_videos"]),
            max_new_tokens=OPTIONS.max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        rows += out[:, ids.shape[1] :].tolist()
    return rows


@pytest.mark.parametrize("kind", list(WRITERS))
@pytest.mark.slow  # the real processor in the side venv (tests/hf_reference.py)
def test_answers_equal_the_models_own_generate(cases, reference, kind):
    arrays, facts = reference
    case, backend = cases[kind], cases[kind].backend
    pairs = [(v, q) for v, qs in enumerate(QUESTIONS) for q in qs]
    # the prompt and its ids are the processor's (placeholder expanded to the feature tokens)
    features = backend.encode([DecodedVideo(v, None) for v in case.videos])
    assert [len(f) for f in features] == [backend.num_frames] * len(SIZES)
    assert [backend.prompt_text(q) for _, q in pairs] == facts[kind]["texts"]
    b0 = arrays[f"{kind}_0_input_ids"][0][arrays[f"{kind}_0_attention_mask"][0] == 1]
    tokens = sum(f.shape[0] for f in features[pairs[0][0]])
    assert backend.prompt_ids(pairs[0][1], tokens) == b0.tolist()

    # the answer path's generated tokens, recorded on their way out of the model's generate
    generated: list[list[int]] = []
    own_generate = backend.model.generate

    def recording(**kwargs):
        out = own_generate(**kwargs)
        generated.extend(out[:, kwargs["input_ids"].shape[1] :].tolist())
        return out

    backend.model.generate = recording
    try:
        answers = backend.answer(features, QUESTIONS, OPTIONS)
    finally:
        del backend.model.generate
    want = _own_generate(case, arrays, kind, facts[kind]["batches"])
    assert generated == want
    tok = backend.tokenizer
    eos = tok.eos_token_id
    texts = [tok.decode(r[: r.index(eos)] if eos in r else r, skip_special_tokens=True).strip()
             for r in want]  # fmt: skip
    assert [a for video in answers for a in video] == texts
    assert len({tuple(r) for r in want}) > 1  # the answers depend on the video and question


@pytest.mark.parametrize("kind", list(WRITERS))
def test_too_long_questions_and_sampling(cases, kind):
    backend = cases[kind].backend
    features = backend.encode([DecodedVideo(cases[kind].videos[0], None)])
    answers = backend.answer(features, [["why?", TOO_LONG]], OPTIONS)
    assert isinstance(answers[0][0], str) and isinstance(answers[0][1], PromptTooLong)
    sampling = GenerationOptions(max_new_tokens=6, do_sample=True, top_k=5, seed=3, batch_size=1)
    first = backend.answer(features, [["why?", "how?"]], sampling)
    assert backend.answer(features, [["why?", "how?"]], sampling) == first


def test_frame_specs_identities_and_fingerprints(cases, tmp_path):
    llava, next_video = cases["video_llava"], cases["llava_next_video"]
    assert VideoLlavaBackend.frame_spec(llava.folder).num_frames == 8  # the model's usual
    spec = LlavaNextVideoBackend.frame_spec(next_video.folder)  # do_sample_frames, num_frames 4
    assert (spec.num_frames, spec.rule, spec.size) == (4, "uniform", None)
    assert LlavaNextVideoBackend.frame_spec(next_video.folder, 6).num_frames == 6
    assert spec.positions(20, 30.0) == [0, 5, 10, 15]

    config = json.loads((next_video.folder / "video_preprocessor_config.json").read_text())
    (tmp_path / "video_preprocessor_config.json").write_text(
        json.dumps({**config, "num_frames": None, "fps": 2})
    )
    assert LlavaNextVideoBackend.frame_spec(tmp_path).fps == 2

    encoder = load_backend(llava.folder, device="cpu", with_llm=False)  # an encode worker's
    assert encoder.model.model.language_model is None
    video = [DecodedVideo(llava.videos[1], None)]
    assert all(map(torch.equal, encoder.encode(video)[0], llava.backend.encode(video)[0]))
    assert encoder.feature_identity() == llava.backend.feature_identity()

    identities = {llava.backend.feature_identity(), next_video.backend.feature_identity()}
    assert len(identities) == 2
    weight = next(llava.backend.model.model.multi_modal_projector.parameters())
    with torch.no_grad():
        weight[0, 0] += 1.0
        changed = llava.backend.feature_identity()
        weight[0, 0] -= 1.0
    assert changed not in identities and changed.startswith("video_llava:")
    assert llava.backend.fingerprint().startswith("video_llava/transformers-")
    assert llava.backend.fingerprint() != next_video.backend.fingerprint()


def test_a_flipped_video_is_encoded_mirrored_and_letterboxed_frames_are_refused(cases, tmp_path):
    from tests.hf_tiny import write_qwen_folder
    from videopanda_cluster.video.geometry import compute_geometry

    backends = [c.backend for c in cases.values()] + [
        load_backend(write_qwen_folder(tmp_path, "qwen2_vl"))
    ]
    frames = np.random.default_rng(1).integers(0, 256, (8, 28, 56, 3), dtype=np.uint8)
    for backend in backends:
        flipped, mirrored, plain = backend.encode(
            [
                DecodedVideo(frames, None, True),
                DecodedVideo(frames[:, :, ::-1].copy(), None),
                DecodedVideo(frames, None),
            ]
        )
        # one batch: rows of one batch agree to rounding only
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(flipped, mirrored, strict=True))
        assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(flipped, plain, strict=True))
        with pytest.raises(ValueError, match="takes frames as decoded"):
            backend.encode([DecodedVideo(frames, compute_geometry(56, 28, 112))])
