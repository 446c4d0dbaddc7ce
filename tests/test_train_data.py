"""Training data: template, LLaVA-v1 labels, label expansion, length policy, padding, videos."""

from __future__ import annotations

import pytest
import torch

from tests.test_train_helpers import ANSWERS, SIZE, build, dataset
from videopanda_cluster.model.generation import splice
from videopanda_cluster.model.prompt import IGNORE_INDEX, IMAGE_TOKEN_INDEX, SYSTEM_PROMPT_TRAIN
from videopanda_cluster.train.data import (
    SampleError,
    VideoConversationDataset,
    encode_record,
    expand_labels,
    fit_length,
    load_records,
    pad_batch,
    parse_records,
    render,
)
from videopanda_cluster.video.errors import VideoDecodeError

ROW = {
    "id": "v1",
    "video": "a.mp4",
    "conversations": [
        {"from": "human", "value": "What moves?\n<video>"},
        {"from": "gpt", "value": "A red circle."},
        {"from": "human", "value": "Where to?"},
        {"from": "gpt", "value": "To the left."},
    ],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build(tmp_path_factory.mktemp("train_data"))


def test_render_moves_a_trailing_marker_to_the_front_and_uses_the_training_template():
    (record,) = parse_records([ROW])
    assert render(record, 3) == (
        f"{SYSTEM_PROMPT_TRAIN} USER: <image><image><image>\nWhat moves? ASSISTANT: A red circle."
        "</s>USER: Where to? ASSISTANT: To the left.</s>"
    )


@pytest.mark.parametrize(
    "turns",
    [
        [("human", "no marker"), ("gpt", "x")],
        [("human", "<video> two <image>"), ("gpt", "x")],
        [("human", "<video> q"), ("gpt", "x"), ("human", "<video> again"), ("gpt", "y")],
        [("gpt", "<video> answer first")],
    ],
)
def test_bad_marker_placement_is_rejected(turns):
    row = {
        "id": "bad",
        "video": "a.mp4",
        "conversations": [{"from": r, "value": v} for r, v in turns],
    }
    (record,) = parse_records([row])
    with pytest.raises(SampleError, match="bad"):
        render(record, 8)


def test_rows_without_required_fields_are_rejected():
    with pytest.raises(SampleError, match="missing field"):
        parse_records([{"id": "x", "conversations": []}])
    with pytest.raises(SampleError, match="human/gpt"):
        parse_records([{"id": "x", "video": "v", "conversations": [{"from": "bot", "value": "?"}]}])


def test_only_answers_and_their_eos_are_supervised(setup):
    _, tokenizer, _ = setup
    (record,) = parse_records([ROW])
    ids, labels = encode_record(record, tokenizer, num_frames=8)
    assert len(ids) == len(labels)
    assert ids.count(IMAGE_TOKEN_INDEX) == 8
    assert all(lab == IGNORE_INDEX for i, lab in zip(ids, labels, strict=True) if i < 0)
    # supervised positions form one run per answer, each ending with EOS
    runs, current = [], []
    for i, lab in enumerate(labels):
        if lab != IGNORE_INDEX:
            assert lab == ids[i]
            current.append(lab)
        elif current:
            runs.append(current)
            current = []
    runs.append(current)  # the last answer ends the sequence
    assert len(runs) == 2
    for run, answer in zip(runs, ["A red circle.", "To the left."], strict=True):
        assert run[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(run, skip_special_tokens=True).strip() == answer
    assert labels[0] == IGNORE_INDEX  # BOS


def test_expanded_labels_align_with_the_spliced_sequence(setup):
    _, tokenizer, _ = setup
    (record,) = parse_records([ROW])
    ids, labels = encode_record(record, tokenizer, num_frames=2)
    embed = torch.nn.Embedding(len(tokenizer), 4)
    frames = [torch.full((5, 4), 7.0), torch.full((3, 4), 9.0)]
    seq = splice(embed, ids, frames)
    expanded = expand_labels(labels, ids, [5, 3])
    assert expanded.shape[0] == seq.shape[0]
    visual = (seq[:, 0] == 7.0) | (seq[:, 0] == 9.0)
    assert int(visual.sum()) == 8 and (expanded[visual] == IGNORE_INDEX).all()
    text = ~visual  # the text positions keep their labels, in order
    assert expanded[text].tolist() == [lab for i, lab in zip(ids, labels, strict=True) if i >= 0]


def test_length_policy():
    embeds, labels = torch.zeros(10, 4), torch.arange(10)
    assert fit_length(embeds, labels, 10, "skip")[2] is None
    assert fit_length(embeds, labels, 9, "skip") is None
    cut_e, cut_l, outcome = fit_length(embeds, labels, 6, "truncate")
    assert outcome == "truncated" and cut_e.shape[0] == 6 and cut_l.tolist() == list(range(6))


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch_masks_and_positions(side):
    a, b = torch.ones(2, 3), torch.full((4, 3), 2.0)
    out = pad_batch([a, b], [torch.tensor([5, 6]), torch.tensor([1, 2, 3, 4])], side=side)
    assert out["inputs_embeds"].shape == (2, 4, 3)
    row = [1, 1, 0, 0] if side == "right" else [0, 0, 1, 1]
    assert out["attention_mask"].tolist() == [row, [1, 1, 1, 1]]
    assert out["inputs_embeds"][0][torch.tensor(row) == 0].abs().sum() == 0
    assert out["labels"][0].tolist() == (
        [5, 6, -100, -100] if side == "right" else [-100, -100, 5, 6]
    )
    assert out["position_ids"][0][torch.tensor(row) == 1].tolist() == [0, 1]
    assert out["position_ids"][1].tolist() == [0, 1, 2, 3]


def test_dataset_loads_frames_and_a_seeded_flip(setup):
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    sample = ds.load(0)
    assert sample.id == "s0" and sample.pixels.shape == (4, 4, SIZE, SIZE)
    assert (
        tokenizer.decode([t for t in sample.labels if t >= 0], skip_special_tokens=True).strip()
        == ANSWERS[0]
    )
    flips = {s: not torch.equal(ds.load(0, s).pixels, sample.pixels) for s in range(8)}
    assert set(flips.values()) == {True, False}  # the coin depends on the seed
    seed = next(s for s, f in flips.items() if f)
    flipped = ds.load(0, seed).pixels
    assert torch.equal(flipped[:, :3], sample.pixels[:, :3].flip(-1))
    assert torch.equal(flipped[:, 3], sample.pixels[:, 3])  # the mask is not flipped
    assert torch.equal(ds.load(0, seed).pixels, flipped)  # same seed, same coin


def test_decoded_frames_are_cached_within_the_byte_budget(tmp_path):
    _, tokenizer, data = build(tmp_path, count=3)  # records 0, 1, 2 use three different clips
    cached = dataset(data, tokenizer)
    uncached = VideoConversationDataset(
        load_records(data),
        data.parent,
        tokenizer,
        num_frames=4,
        size=SIZE,
        isolate=False,
        cache_bytes=0,
    )
    first = [cached.load(i, seed=i).pixels for i in range(3)]
    for record in cached.records:  # from now on only the cache can serve the frames
        (data.parent / record.video).unlink()
    for i in range(3):  # same frames as a fresh decode, flip still applied per seed
        assert torch.equal(cached.load(i, seed=i).pixels, first[i])
    with pytest.raises(VideoDecodeError):
        uncached.load(0)


def test_every_load_gives_a_records_own_tokens_and_a_bad_record_fails_each_time(tmp_path):
    _, tokenizer, data = build(tmp_path, count=2)
    ds = dataset(data, tokenizer)
    bad = parse_records([{**ROW, "id": "bad", "conversations": [{"from": "gpt", "value": "x"}]}])
    ds.records.append(bad[0])
    first = ds.load(0)
    assert (first.input_ids, first.labels) == encode_record(ds.records[0], tokenizer, 4)
    first.input_ids.append(7)  # a caller's change does not reach the next load
    first.labels.clear()
    again = ds.load(0)
    assert (again.input_ids, again.labels) == encode_record(ds.records[0], tokenizer, 4)
    for _ in range(2):
        with pytest.raises(SampleError, match="bad"):
            ds.load(len(ds) - 1)
