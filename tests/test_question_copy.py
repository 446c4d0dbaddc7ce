"""The question-copy loss: it finds the focus word in each answer's own question, training on it
moves one head of the layer onto that word, and a stage trains with it on the synthetic corpus."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import pytest
import torch

from tests.test_train_helpers import tiny_llama
from videopanda_cluster.model.modeling import VideoPanda
from videopanda_cluster.model.prompt import IGNORE_INDEX, load_tokenizer
from videopanda_cluster.storage import LocalStore
from videopanda_cluster.train.data import VideoConversationDataset, answer_focus, load_records
from videopanda_cluster.train.loop import train_stage
from videopanda_cluster.train.question_copy import QuestionCopyLoss, spliced_ids, word_positions
from videopanda_cluster.train.recipe import init_small_model
from videopanda_cluster.train.stages import stage_config
from videopanda_cluster.train.synth import SynthOptions, write_synth

SIZE = 112


class _Words:
    """A tokenizer of whole words: "red" → [10], "dark red" → [11, 10]."""

    ids: ClassVar = {"red": [10], "circle": [12], "dark red": [11, 10]}

    def encode(self, word: str, add_special_tokens: bool = True) -> list[int]:
        assert not add_special_tokens
        return self.ids[word]


def test_the_focus_word_is_found_in_its_own_question():
    x = IGNORE_INDEX
    #      0  1  2   3   4  5  6  7  8   9  10  11 12 13
    ids = [1, x, x, 10, 12, 5, 7, 2, 6, 11, 10, 5, 8, 2]
    labels = torch.full((14,), x)
    labels[6:8] = torch.tensor([7, 2])  # the first answer, predicted from 5 and 6
    labels[12:14] = torch.tensor([8, 2])  # the second, from 11 and 12
    asked = answer_focus(labels, ["circle", "dark red"])
    loss = QuestionCopyLoss(1, _Words(), ["circle", "dark red"])
    # each answer position looks at its own question's word, not at an earlier question's
    assert loss.targets(torch.tensor(ids), asked) == [
        (5, [4]),
        (6, [4]),
        (11, [9, 10]),
        (12, [9, 10]),
    ]
    # a word its question does not hold (the second question has no circle) is left out
    asked = answer_focus(labels, [None, "circle"])
    assert loss.targets(torch.tensor(ids), asked) == []
    # "red" is in both questions: the second answer looks only at its own
    asked = answer_focus(labels, [None, "red"])
    red = QuestionCopyLoss(1, _Words(), ["red"])
    assert red.targets(torch.tensor(ids), asked) == [(11, [10]), (12, [10])]
    assert word_positions(ids, 0, 14, [10]) == [3, 10]
    assert word_positions(ids, 4, 10, [10]) == []  # the end is exclusive
    # visual positions (a placeholder spliced into three frame tokens) never match a word
    assert spliced_ids([1, -200, 10], [3], 5).tolist() == [1, x, x, x, 10]
    with pytest.raises(ValueError, match="1-based"):
        QuestionCopyLoss(0, _Words(), ["red"])
    with pytest.raises(ValueError, match="needs focus words"):
        QuestionCopyLoss(1, _Words(), [])


def test_training_on_the_loss_moves_one_head_onto_the_word():
    llm = tiny_llama()
    loss = QuestionCopyLoss(1, _Words(), ["red"])
    embeds = torch.randn(1, 16, 32)
    position_ids = torch.arange(16)[None]
    answers = {0: [(12, [5]), (13, [5]), (14, [8, 9])]}

    def masses() -> torch.Tensor:
        """(heads, 3): each head's attention of each answer position on its word."""
        with torch.no_grad():
            out = llm(inputs_embeds=embeds, position_ids=position_ids, output_attentions=True)
        rows = out.attentions[0][0]  # (heads, L, L)
        return torch.stack([rows[:, 12, 5], rows[:, 13, 5], rows[:, 14, 8:10].sum(-1)], dim=1)

    before = masses()
    optimizer = torch.optim.Adam(llm.parameters(), lr=1e-2)
    for _ in range(30):
        out = llm(inputs_embeds=embeds, position_ids=position_ids, output_hidden_states=True)
        value = loss.loss_sum(llm, out.hidden_states, position_ids, answers)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    after = masses()
    assert before.max() < 0.5 and after.amax(dim=0).min() > 0.9, (before, after)
    # some head per position, not all of them: the others are left free
    assert after.amin(dim=0).max() < 0.5, after
    with pytest.raises(ValueError, match="layer 3 of a 2-layer"):
        QuestionCopyLoss(3, _Words(), ["red"]).loss_sum(
            llm, out.hidden_states, position_ids, answers
        )


def test_copy_settings_are_checked_and_old_stores_stay_resumable():
    with pytest.raises(ValueError, match="copy_layer >= 1"):
        stage_config("finetune", copy_layer=0, copy_weight=1.0)
    with pytest.raises(ValueError, match="copy_weight must be >= 0"):
        stage_config("finetune", copy_weight=-1.0)
    cfg = stage_config("finetune")
    stored = {k: v for k, v in cfg.to_dict().items() if not k.startswith("copy_")}
    cfg.check_resumable(stored, "a store from before the setting")  # the defaults: no change
    with pytest.raises(ValueError, match=r"copy_weight 0\.0 → 1\.0"):
        replace(cfg, copy_weight=1.0).check_resumable(stored, "here")


def test_a_stage_trains_with_the_copy_loss(tmp_path):
    corpus = tmp_path / "corpus"
    write_synth(corpus, seed=4, videos=6, options=SynthOptions(frames=8, width=96, height=64))
    folder = init_small_model(corpus, tmp_path / "init", image_size=SIZE, llm_layers=2)
    tokenizer = load_tokenizer(folder)
    records = load_records(corpus / "train/finetune.json")
    assert any(w is not None for r in records for w in r.focus)
    data = VideoConversationDataset(records, corpus, tokenizer, size=SIZE, flip=False)
    base = stage_config("finetune", global_batch=2, micro_batch=2, save_every=10, max_steps=2)
    first, terms = {}, {}
    for weight in (0.0, 1.0):
        model = VideoPanda.from_pretrained(folder)
        result = train_stage(
            model,
            data,
            replace(base, copy_weight=weight),
            LocalStore(tmp_path / f"w{weight}"),
            "ft",
        )
        first[weight] = result.losses[0]
        terms[weight] = {k: v[0] for k, v in result.terms.items()}
    # the same CE (same init and data) plus a positive −log(attention mass)
    assert set(terms[0.0]) == {"ce"} and set(terms[1.0]) == {"ce", "copy"}
    assert terms[1.0]["ce"] == pytest.approx(terms[0.0]["ce"])
    assert terms[1.0]["copy"] > 0
    assert first[1.0] == pytest.approx(terms[1.0]["ce"] + terms[1.0]["copy"])
