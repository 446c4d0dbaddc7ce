"""The default model: the bundled small model when the package has it, else a tiny random one."""

from __future__ import annotations

import pytest

from videopanda_cluster import bundled
from videopanda_cluster.cluster import driver


def test_bundled_model_is_the_default_when_present(tmp_path, monkeypatch):
    folder = tmp_path / "videopanda-small"
    folder.mkdir()
    monkeypatch.setattr(bundled, "SMALL_MODEL_DIR", folder)
    with pytest.raises(FileNotFoundError, match=r"train-small-model\.sh"):
        bundled.small_model()
    monkeypatch.setattr(driver, "TINY_MODEL_DIR", tmp_path / "tiny")
    path, model_id = driver.default_checkpoint()
    assert path == tmp_path / "tiny" and "tiny-random" in model_id
    assert (path / "model.safetensors").is_file()
    (folder / "model.safetensors").write_bytes(b"weights")
    assert driver.default_checkpoint() == (folder, bundled.SMALL_MODEL_ID)


@pytest.mark.slow  # scripts/check.sh leaves it to the full suite
def test_the_shipped_model_answers_questions_about_new_videos(tmp_path):
    """The committed weights are the ones the card describes: on 40 clips at `videopanda
    synth`'s defaults from a seed used neither in training (0) nor in the card's test corpora
    (7), each answer type's accuracy is above chance and no lower than the card's test figure
    allows: a count of right answers at most that likely (0.135%, the one-sided tail beyond 3
    standard deviations) under a binomial at the card's rate (Jeffreys estimate) fails. The
    tail is exact, as the normal approximation is far too tight for rates near 100%."""
    import json
    import math
    from collections import defaultdict

    import torch

    from videopanda_cluster.eval.metrics import exact_match
    from videopanda_cluster.model.modeling import VideoPanda
    from videopanda_cluster.train.data import load_video
    from videopanda_cluster.train.synth import SynthOptions, load_metadata, write_synth

    folder = bundled.small_model()
    card = json.loads((folder / "eval.json").read_text())["exact_match"]
    write_synth(tmp_path, seed=2, videos=40, options=SynthOptions())
    model = VideoPanda.from_pretrained(folder, device="cpu", dtype=torch.float32)
    scores = defaultdict(list)
    for video, _ in load_metadata(tmp_path):
        pixels = load_video(tmp_path / "videos" / f"{video.name}.mp4", 8, model.config.image_size)
        answers = model.answer([pixels], [[q["question"] for q in video.questions]])[0]
        for qa, answer in zip(video.questions, answers, strict=True):
            scores[qa["type"]].append(exact_match(answer, qa["answer"]))
    accuracy = {t: sum(s) / len(s) for t, s in scores.items()}
    for qtype, chance in (("colour", 0.25), ("shape", 0.25), ("direction", 0.25), ("count", 1 / 3)):
        # the card's rate from its own count, shrunk by half an answer (Jeffreys): a card figure
        # of 100% from 200 clips must not fail a single miss here
        items = card[qtype]["items"]
        p = (card[qtype]["exact_match"] / 100 * items + 0.5) / (items + 1)
        n, right = len(scores[qtype]), round(sum(scores[qtype]))
        tail = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(right + 1))
        assert tail > 0.00135 and accuracy[qtype] > chance, (qtype, accuracy, tail)
