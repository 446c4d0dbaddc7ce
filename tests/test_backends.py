"""The backend registry and the Video-Panda backend: a folder that no backend runs is refused in
one line naming its model_type, and the Video-Panda backend's encode + answer path gives the
model's own answers."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from tests.model_helpers import randomize_
from videopanda_cluster.backends import (
    BACKENDS,
    DecodedVideo,
    UnsupportedModel,
    backend_kind,
    load_backend,
)
from videopanda_cluster.cli import app
from videopanda_cluster.model.config import VideoPandaConfig
from videopanda_cluster.model.modeling import VideoPanda
from videopanda_cluster.model.prompt import load_tokenizer
from videopanda_cluster.model.tokenizer_builder import build_sentencepiece_tokenizer
from videopanda_cluster.video.extract import PreprocessOptions, extract_video
from videopanda_cluster.video.normalize import to_model_input

MLLAMA = {  # the top of a Llama-3.2-Vision config.json: no hidden_size at the top level
    "model_type": "mllama",
    "architectures": ["MllamaForConditionalGeneration"],
    "text_config": {"model_type": "mllama_text_model", "hidden_size": 4096},
    "vision_config": {"model_type": "mllama_vision_model"},
}
SUPPORTED = ", ".join(sorted(BACKENDS))


def _folder(tmp_path, config: dict | None):
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (MLLAMA, f"no backend for model_type 'mllama'; supported: {SUPPORTED}"),
        ({"architectures": ["X"]}, "no backend for model_type '(none)'"),
    ],
)
def test_a_folder_no_backend_runs_is_refused_in_one_line(tmp_path, config, message):
    folder = _folder(tmp_path, config)
    with pytest.raises(UnsupportedModel, match=message.replace("(", r"\(").replace(")", r"\)")):
        backend_kind(folder)
    out = CliRunner().invoke(
        app,
        ["qa", str(tmp_path), "--question", "what?", "--checkpoint", str(folder),
         "--output", str(tmp_path / "out")],
    )  # fmt: skip
    assert out.exit_code == 2, out.output
    line = out.output.strip().splitlines()[-1]  # after the progress line
    assert line.startswith("error: ") and message in line
    assert "KeyError" not in out.output and "hidden_size" not in out.output


def test_the_registry(tmp_path):
    assert {"videopanda", "video_llava", "llava_next_video", "qwen2_vl", "qwen2_5_vl"} <= set(
        BACKENDS
    )
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        backend_kind(_folder(tmp_path, None))
    assert backend_kind(tmp_path / "anything", "videopanda") == "videopanda"
    with pytest.raises(UnsupportedModel, match="'qwen9'"):
        backend_kind(tmp_path, "qwen9")


def test_the_video_panda_backend_answers_as_the_model(corpus, tmp_path):
    tokenizer = load_tokenizer(build_sentencepiece_tokenizer(tmp_path / "tok"))
    torch.manual_seed(0)
    model = VideoPanda(replace(VideoPandaConfig.tiny(len(tokenizer)), image_size=112))
    randomize_(model, seed=1, llm_std=0.3)  # large enough that answers depend on the input
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "model")
    backend = load_backend(tmp_path / "model", device="cpu")
    assert backend.kind == "videopanda" and backend.image_size == 112
    options = PreprocessOptions(size=112, isolate=False)
    videos = sorted(corpus.glob("*.mp4"))[:2]
    decoded = [extract_video(str(v), options) for v in videos]
    inputs = [DecodedVideo(d.frames, d.geometry) for d in decoded]
    questions = [["what moves?", "what colour?"], ["how many?"]]
    features = backend.encode(inputs)
    assert [len(f) for f in features] == [8, 8]
    from videopanda_cluster.model.generation import GenerationOptions

    ours = backend.answer(features, questions, GenerationOptions(max_new_tokens=5))
    pixels = torch.stack([to_model_input(d.frames, d.geometry, 8) for d in decoded])
    assert ours == model.eval().answer(pixels, questions, max_new_tokens=5)
    assert backend.prompt_text("what moves?", features[0]).endswith("ASSISTANT:")
    assert backend.feature_identity() == load_backend(tmp_path / "model").feature_identity()
