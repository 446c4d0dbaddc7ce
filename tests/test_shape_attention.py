"""The shape-attention loss: its attention rows are the layer's own, the scene teacher's colour
cover marks the cells it asks for, training on it moves attention onto them, and a stage trains
with it (and refuses a teacher without cover channels)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.test_train_helpers import tiny_llama
from videopanda_cluster.model.modeling import VideoPanda
from videopanda_cluster.model.prompt import IGNORE_INDEX, load_tokenizer
from videopanda_cluster.storage import LocalStore
from videopanda_cluster.train.data import VideoConversationDataset, answer_focus, load_records
from videopanda_cluster.train.distill import (
    FrameTarget,
    StoredTeacher,
    precompute_teacher_features,
    random_teacher,
    write_teacher_info,
)
from videopanda_cluster.train.loop import train_stage
from videopanda_cluster.train.recipe import init_small_model
from videopanda_cluster.train.scene_teacher import SceneTeacherOptions, write_scene_teacher
from videopanda_cluster.train.shape_attention import (
    SHAPE_COVER,
    ShapeAttentionLoss,
    attention_rows,
    check_channels,
    predicted_words,
    shape_cells,
)
from videopanda_cluster.train.stages import stage_config
from videopanda_cluster.train.synth import SynthOptions, write_synth

SIZE = 112


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_rows_are_the_layers_own(kv_heads):
    llm = tiny_llama(kv_heads).eval()
    embeds = torch.randn(2, 12, 32)
    position_ids = torch.stack([torch.arange(12), torch.arange(12) + 5])
    with torch.no_grad():
        out = llm(
            inputs_embeds=embeds,
            position_ids=position_ids,
            output_attentions=True,
            output_hidden_states=True,
        )
        queries = torch.tensor([3, 7, 11])
        for layer in (1, 2):
            for row in (0, 1):
                rows = attention_rows(
                    llm, out.hidden_states[layer - 1][row], position_ids[row], layer, queries
                )
                expected = out.attentions[layer - 1][row][:, queries]  # (heads, Q, L)
                torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-4)


def test_shape_cells_are_read_off_the_cover_channels():
    channels = ["kind:circle", "kind:square", "colour:red", "colour:blue", "background"]
    for bad in (None, ["kind:circle", "background"], ["colour:red"]):
        with pytest.raises(ValueError, match="needs the scene teacher"):
            ShapeAttentionLoss(2, bad)
    # cells: a red circle, a sliver below SHAPE_COVER, background, a blue square
    target = torch.tensor(
        [
            [3.0, 0.0, 1.0, 0.0, 0.0],
            [0.2, 0.0, SHAPE_COVER - 0.01, 0.0, 0.3],
            [0.0, 0.0, 0.0, 0.0, 0.3],
            [0.0, 1.8, 0.0, 0.6, 0.1],
        ]
    )
    frames = [
        FrameTarget(1, torch.tensor([10, 11, 12, 13]), target),
        FrameTarget(1, torch.tensor([20, 21, 22, 23]), target.flip(0)),
        FrameTarget(0, torch.tensor([4, 5, 6, 7]), torch.zeros(4, 5)),
    ]
    cells = shape_cells(frames, channels)
    assert cells[1].all.tolist() == [10, 13, 20, 23]
    assert cells[1].asked("circle").tolist() == cells[1].asked("red").tolist() == [10, 23]
    assert cells[1].asked("blue").tolist() == [13, 20]
    # no focus word, or one that names nothing in the clip ("there is no triangle"): all shapes
    assert cells[1].asked(None).tolist() == cells[1].asked("triangle").tolist() == [10, 13, 20, 23]
    assert cells[0].all.tolist() == []


def test_answer_focus_pairs_each_answer_with_its_word():
    x = IGNORE_INDEX
    labels = torch.tensor([x, x, x, 7, 2, x, x, 9, 9, 2])
    spans = [(range(2, 4), "red"), (range(6, 9), None)]
    assert answer_focus(labels, ("red", None)) == spans
    assert answer_focus(labels, ()) == [(range(2, 4), None), (range(6, 9), None)]
    assert answer_focus(labels[:6], ("red", "circle")) == [(range(2, 4), "red")]  # cut off


def test_an_answer_without_focus_looks_at_the_shape_of_each_word_it_writes():
    words = "a red circle moves left and green triangle appears stays still then , . two"
    ids = {w: i + 10 for i, w in enumerate(words.split())}
    vocab = {i: w for w, i in ids.items() if w not in {"a", "and", "then", ",", ".", "two"}}
    x = IGNORE_INDEX
    caption = "a red circle moves left and a green triangle appears and stays still ."
    tokens = [ids[w] for w in caption.split()]
    # a question with focus "red" answered "circle", a count answer, then the caption
    labels = torch.tensor([x, x, ids["circle"], 2, x, ids["two"], 2, x, x, *tokens, 2])
    asked = answer_focus(labels, ("red", None, None))
    got = dict(predicted_words(asked, labels, vocab))
    assert got[1] == got[2] == "red"  # the focus word wins over the word predicted
    assert got[4] is None and got[5] is None  # "two", end of answer: no shape
    caption_words = [got[p] for p in range(8, 8 + len(tokens) + 1)]
    assert caption_words == [
        None, "red", "circle", "circle", "circle",  # a red circle moves left
        None, None, "green", "triangle", "triangle",  # and a green triangle appears
        None, "triangle", "triangle", None, None,  # and stays still . </s>
    ]  # fmt: skip
    # a second caption does not inherit the first one's shape
    again = torch.tensor([x, *tokens[:2], 2, x, x, ids["moves"], 2])
    assert predicted_words(answer_focus(again, ()), again, vocab)[-2:] == [(5, None), (6, None)]


def test_training_on_the_loss_moves_attention_onto_the_shape_cells():
    llm = tiny_llama(4)
    loss = ShapeAttentionLoss(2, ["kind:circle", "kind:square", "colour:red", "colour:blue"])
    embeds = torch.randn(1, 16, 32)
    position_ids = torch.arange(16)[None]
    circle, square = [3.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 1.0]
    target = torch.tensor([circle, circle, square, square, square])
    frames = [FrameTarget(0, torch.tensor([2, 3, 4, 5, 6]), target)]
    answers = {0: [(12, "circle"), (13, "circle"), (14, None)]}

    def mass() -> tuple[float, float]:
        """Attention of the answer positions on what each asks for: the circle, all shapes."""
        with torch.no_grad():
            out = llm(inputs_embeds=embeds, position_ids=position_ids, output_attentions=True)
        rows = out.attentions[1][0]  # (heads, L, L)
        return float(rows[:, 12:14, 2:4].sum(-1).mean()), float(rows[:, 14, 2:7].sum(-1).mean())

    before = mass()
    optimizer = torch.optim.Adam(llm.parameters(), lr=1e-2)
    for _ in range(30):
        out = llm(inputs_embeds=embeds, position_ids=position_ids, output_hidden_states=True)
        value = loss.loss_sum(llm, out.hidden_states, position_ids, answers, frames)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    after = mass()
    assert max(before) < 0.5 and min(after) > 0.9, (before, after)
    with pytest.raises(ValueError, match="layer 3 of a 2-layer"):
        ShapeAttentionLoss(3, loss.channels).loss_sum(
            llm, out.hidden_states, position_ids, answers, frames
        )


def test_attend_weight_needs_distillation_and_old_stores_stay_resumable():
    with pytest.raises(ValueError, match="needs distill_weight"):
        stage_config("finetune", attend_weight=1.0)
    with pytest.raises(ValueError, match="attend_layer >= 1"):
        stage_config("finetune", attend_layer=0, attend_weight=1.0, distill_weight=1.0)
    cfg = stage_config("finetune")
    stored = {k: v for k, v in cfg.to_dict().items() if not k.startswith("attend_")}
    cfg.check_resumable(stored, "a store from before the setting")  # the defaults: no change
    with pytest.raises(ValueError, match=r"attend_weight 0\.0 → 1\.0"):
        replace(cfg, attend_weight=1.0, distill_weight=1.0).check_resumable(
            {**stored, "distill_weight": 1.0}, "here"
        )


def test_a_stage_trains_with_the_scene_teacher_and_refuses_another(tmp_path):
    corpus = tmp_path / "corpus"
    write_synth(corpus, seed=4, videos=6, options=SynthOptions(frames=8, width=96, height=64))
    folder = init_small_model(corpus, tmp_path / "init", image_size=SIZE, llm_layers=2)
    tokenizer = load_tokenizer(folder)
    records = load_records(corpus / "train/finetune.json")
    data = VideoConversationDataset(records, corpus, tokenizer, size=SIZE, flip=False)
    store = LocalStore(tmp_path / "teachers")
    write_scene_teacher(corpus, store, "scene", SceneTeacherOptions(image_size=SIZE))
    scene = StoredTeacher(store, "scene")
    assert check_channels(scene.channels) == scene.channels
    vocab = ShapeAttentionLoss(2, scene.channels, tokenizer).vocab  # the corpus's own words
    assert {"red", "circle", "moves", "left", "still"} <= set(vocab.values())
    assert all(tokenizer.decode([i]).strip() == w for i, w in vocab.items())
    base = stage_config(
        "finetune", global_batch=2, micro_batch=2, save_every=10, max_steps=2, distill_weight=1.0
    )
    first, terms = {}, {}
    for weight in (0.0, 1.0):
        model = VideoPanda.from_pretrained(folder)
        cfg = replace(base, attend_weight=weight)
        out = LocalStore(tmp_path / f"w{weight}")
        result = train_stage(model, data, cfg, out, "ft", teacher=scene)
        first[weight] = result.losses[0]
        terms[weight] = {k: v[0] for k, v in result.terms.items()}
    # the same CE and distillation (same init and data) plus a positive −log(attention mass)
    assert first[1.0] > first[0.0]
    assert set(terms[0.0]) == {"ce", "distill"} and set(terms[1.0]) == {"ce", "distill", "attend"}
    assert terms[1.0]["ce"] == pytest.approx(terms[0.0]["ce"])
    assert terms[1.0]["distill"] == pytest.approx(terms[0.0]["distill"])
    for weight, parts in terms.items():  # the loss is the weighted sum of its logged terms
        assert first[weight] == pytest.approx(
            parts["ce"] + base.distill_weight * parts["distill"] + weight * parts.get("attend", 0)
        )
    random = random_teacher(dim=16, image_size=SIZE // 2)
    assert precompute_teacher_features(random, data, store, "random") == []
    write_teacher_info(store, "random", 16)
    other = StoredTeacher(store, "random")
    with pytest.raises(ValueError, match="needs the scene teacher"):
        train_stage(
            VideoPanda.from_pretrained(folder),
            data,
            replace(base, attend_weight=1.0),
            LocalStore(tmp_path / "x"),
            "ft",
            teacher=other,
        )
