"""The question-focus loss: focus words in the records, the answering positions, the head in
training (exact resume, never exported) and the synthetic corpus's focus words."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tests.test_train_helpers import Stop, build, dataset, tiny_model
from videopanda_cluster.model.prompt import IGNORE_INDEX
from videopanda_cluster.storage import LocalStore
from videopanda_cluster.train.data import SampleError, answer_spans, parse_records
from videopanda_cluster.train.forward import FocusHead
from videopanda_cluster.train.loop import train_stage
from videopanda_cluster.train.stages import stage_config
from videopanda_cluster.train.synth import CAPTION_PROMPTS, SynthOptions, load_metadata, write_synth


def _row(*turns: dict) -> dict:
    return {"id": "r", "video": "v.mp4", "conversations": list(turns)}


def test_records_carry_the_focus_of_each_answer():
    human = {"from": "human", "value": "<video>\nWhat colour is the circle?", "focus": "circle"}
    gpt = {"from": "gpt", "value": "red"}
    plain = {"from": "human", "value": "How many shapes?"}
    (record,) = parse_records([_row(human, gpt, plain, gpt)])
    assert record.focus == ("circle", None)
    (record,) = parse_records([_row({**human, "focus": None}, gpt)])
    assert record.focus == ()  # no focus word at all
    with pytest.raises(SampleError, match="focus must be a string"):
        parse_records([_row({**human, "focus": 3}, gpt)])


def test_answer_spans_are_the_positions_that_predict_each_answer():
    x = IGNORE_INDEX
    labels = torch.tensor([x, x, x, 7, 2, x, x, 9, 9, 2])
    assert answer_spans(labels) == [range(2, 4), range(6, 9)]
    head = FocusHead(4, ["circle", "red"])
    # every position that predicts a token of the answer, so a word the answer repeats from
    # the question ("there is no circle") is named where it is written, not only at the start
    assert head.targets(3, labels, ("red", None)) == [(3, 2, 1), (3, 3, 1)]
    spans = [(0, 2, 1), (0, 3, 1), (0, 6, 0), (0, 7, 0), (0, 8, 0)]
    assert head.targets(0, labels, ("red", "circle", "red")) == spans
    with pytest.raises(ValueError, match="needs focus words"):
        FocusHead(4, [])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("focus")
    _, tokenizer, data = build(folder)
    rows = json.loads(data.read_text())
    for i, row in enumerate(rows):  # every question names a word; two words in all
        for turn in row["conversations"][::2]:
            turn["focus"] = ("circle", "red")[i % 2]
    focused = data.with_name("focused.json")
    focused.write_text(json.dumps(rows))
    return tokenizer, data, focused


def _cfg(**kw):
    return stage_config(
        "finetune", global_batch=1, micro_batch=1, save_every=2, epochs=1, warmup_ratio=0.5, **kw
    )


def test_focus_loss_adds_to_the_loss_resumes_exactly_and_is_not_exported(setup, tmp_path):
    tokenizer, data, focused = setup
    plain = train_stage(
        tiny_model(tokenizer), dataset(focused, tokenizer), _cfg(), LocalStore(tmp_path / "p"), "ft"
    )
    cfg = _cfg(focus_weight=1.0)
    full = tiny_model(tokenizer)
    whole = train_stage(full, dataset(focused, tokenizer), cfg, LocalStore(tmp_path / "a"), "ft")
    # the same first step's CE (same init and data) plus a positive cross-entropy
    assert whole.losses[0] > plain.losses[0]

    def kill_after_3(step):
        if step.step == 3:
            raise Stop

    store = LocalStore(tmp_path / "b")
    with pytest.raises(Stop):
        train_stage(
            tiny_model(tokenizer),
            dataset(focused, tokenizer),
            cfg,
            store,
            "ft",
            on_step=kill_after_3,
        )
    resumed = tiny_model(tokenizer)
    again = train_stage(resumed, dataset(focused, tokenizer), cfg, store, "ft")
    assert again.losses == whole.losses
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(tmp_path / "b" / "ft" / "step-00000004" / "trainer_state.pt")
    assert set(state["focus_head"]) == {"linear.weight", "linear.bias"}
    with safe_open(tmp_path / "b" / "ft" / "step-00000004" / "model.safetensors", "pt") as f:
        exported = set(f.keys())
    assert exported and not any("focus" in k for k in exported)  # the head stays in training
    with pytest.raises(ValueError, match="needs focus words"):
        train_stage(
            tiny_model(tokenizer), dataset(data, tokenizer), cfg, LocalStore(tmp_path / "c"), "ft"
        )


def test_synth_marks_the_word_each_question_is_about(tmp_path):
    write_synth(tmp_path, seed=4, videos=30, options=SynthOptions(frames=8, width=64, height=64))
    videos = {v.name: v for v, _ in load_metadata(tmp_path)}
    seen = set()
    for row in json.loads((tmp_path / "train" / "finetune.json").read_text()):
        video = videos[row["id"]]
        kinds, colours = {s.kind for s in video.shapes}, {s.colour for s in video.shapes}
        turns = row["conversations"]
        for turn, reply in zip(turns[::2], turns[1::2], strict=True):
            focus, question = turn.get("focus"), turn["value"].replace("<video>\n", "")
            if reply["value"].startswith("there is no "):  # about a kind or colour not shown
                assert focus not in kinds | colours and f" {focus} " in f" {question[:-1]} "
                seen.add("absent")
            elif len(video.shapes) == 1 or question in CAPTION_PROMPTS or "How" in question:
                assert focus is None  # "How many", a caption, or a lone shape
            elif "first" in question:
                assert focus is None
            else:
                assert focus in kinds | colours and f" {focus} " in f" {question[:-1]} "
                seen.add(question.split()[1])
    assert seen == {"colour", "shape", "way", "absent"}
    # the eval lists stay in the reference format
    answers = json.loads((tmp_path / "eval/test/MSVD_Zero_Shot_QA/test_a.json").read_text())
    assert all(set(a) == {"answer", "type", "question_id"} for a in answers)
