"""Benchmark adapters and the reference prediction format (no Ray, no model)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.eval_fixtures import EXTENSIONS, make_benchmark_fixture
from videopanda_cluster.eval.benchmarks import (
    BenchmarkError,
    EvalItem,
    find_video,
    load_benchmark,
)
from videopanda_cluster.eval.layout import BENCHMARKS
from videopanda_cluster.eval.predictions import (
    PREDICTION_FIELDS,
    PredictionFormatError,
    prediction_line,
    prediction_record,
    predictions_text,
    read_reference_predictions,
)


def by_subset(bench) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in bench.items:
        out.setdefault(item.subset, []).append(item.id)
    return out


@pytest.mark.parametrize("name", BENCHMARKS)
def test_layout_ids_videos_and_missing(name, tmp_path):
    fx = make_benchmark_fixture(name, tmp_path, None, missing=2, corrupt=True)
    bench = load_benchmark(name, tmp_path)
    assert by_subset(bench) == fx["ids"]
    assert all(isinstance(item.id, str) for item in bench.items)
    for item in bench.items:
        assert item.video_name == fx["video_names"][(item.subset, item.id)]
        expected = fx["files"].get(item.video_name)
        assert item.uri == (str(expected) if expected else None)
    missing_ids = {(m["subset"], m["id"]) for m in bench.missing}
    assert missing_ids == {(s, i) for s, ids in fx["missing"].items() for i in ids}
    for entry in bench.missing:
        stem = fx["video_dir"] / f"{fx['prefix']}{entry['video_name']}"
        assert entry["tried"] == [f"{stem}{ext}" for ext in EXTENSIONS]
        assert set(entry) == {"id", "subset", "video_name", "tried"}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_extension_order_and_decoy(name, tmp_path):
    fx = make_benchmark_fixture(name, tmp_path, None)
    uris = {item.video_name: item.uri for item in load_benchmark(name, tmp_path).items}
    prefix = fx["prefix"]
    assert Path(uris["clip_a"]).name == f"{prefix}clip_a.mp4"  # not the .mkv decoy
    assert Path(uris["clip_b"]).name == f"{prefix}clip_b.mkv"  # found by the last extension
    assert Path(uris["clip_c"]).name == f"{prefix}clip_c.mov"


def test_find_video_tries_extensions_in_reference_order(tmp_path):
    for ext in (".mkv", ".mov", ".avi", ".mp4", ".webm"):
        (tmp_path / f"x{ext}").write_text("v")
    for expected in (".mp4", ".avi", ".mov", ".mkv"):
        path, tried = find_video(tmp_path, "x")
        assert path == tmp_path / f"x{expected}"
        assert tried[-1] == str(path) and len(tried) == EXTENSIONS.index(expected) + 1
        path.unlink()
    path, tried = find_video(tmp_path, "x")  # .webm is not a reference extension
    assert path is None and len(tried) == 4
    (tmp_path / "y.mp4").mkdir()  # a folder is not a video
    assert find_video(tmp_path, "y")[0] is None


def test_activitynet_prefix_on_disk_only(tmp_path):
    fx = make_benchmark_fixture("activitynet-qa", tmp_path, None, missing=0)
    bench = load_benchmark("activitynet-qa", tmp_path)
    assert {item.video_name for item in bench.items} == {"clip_a", "clip_b", "clip_c"}
    assert all(Path(item.uri).name.startswith("v_clip_") for item in bench.items)
    # a file without the v_ prefix is not the reference's file name
    (fx["video_dir"] / "v_clip_a.mp4").rename(fx["video_dir"] / "clip_a.mp4")
    (fx["video_dir"] / "v_clip_a.mkv").unlink()
    bench = load_benchmark("activitynet-qa", tmp_path)
    assert {m["video_name"] for m in bench.missing} == {"clip_a"}
    assert bench.missing[0]["tried"][0].endswith("/all_test/v_clip_a.mp4")


def test_answers_and_types_aligned_by_index(tmp_path):
    make_benchmark_fixture("activitynet-qa", tmp_path, None)
    folder = tmp_path / "Activitynet_Zero_Shot_QA"
    questions = json.loads((folder / "test_q.json").read_text())
    answers = json.loads((folder / "test_a.json").read_text())
    bench = load_benchmark("activitynet-qa", tmp_path)
    assert len(bench.items) == len(questions) == 7
    for item, q, a in zip(bench.items, questions, answers, strict=True):
        assert (item.id, item.question) == (q["question_id"], q["question"])
        assert item.answer == a["answer"]
        assert item.question_type == str(a["type"])
    assert [i.answer for i in bench.items if "sign" in i.question] == ['it\'s "stop"']


def test_question_type_from_test_q_or_none(tmp_path):
    make_benchmark_fixture("msrvtt-qa", tmp_path / "msrvtt", None)
    make_benchmark_fixture("msvd-qa", tmp_path / "msvd", None)
    msrvtt = load_benchmark("msrvtt-qa", tmp_path / "msrvtt").items
    assert [i.question_type for i in msrvtt[:2]] == ["what", "how"]
    assert all(i.question_type is None for i in load_benchmark("msvd-qa", tmp_path / "msvd").items)
    assert msrvtt[0].id == "1000"  # JSON integer ids become strings


def test_vcgbench_ids_renamed_per_video_and_subset(tmp_path):
    make_benchmark_fixture("vcgbench", tmp_path, None, missing=0)
    bench = load_benchmark("vcgbench", tmp_path)
    assert by_subset(bench) == {
        "generic": ["clip_a_0", "clip_b_0", "clip_a_1"],
        "temporal": ["clip_c_0", "clip_a_0"],
        "consistency": ["clip_b_0", "clip_c_0"],
    }
    consistency = [i for i in bench.items if i.subset == "consistency"]
    assert (consistency[0].question, consistency[0].question2, consistency[0].answer) == (
        "which shape is largest?",
        "what is the biggest shape?",
        "the square",
    )
    assert all(i.question2 is None for i in bench.items if i.subset != "consistency")
    assert len(bench.files) == 3


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _pop(index: int, field: str):
    def change(data):
        del data[index][field]
        return data

    return change


def _set(index: int, field: str, value):
    def change(data):
        data[index][field] = value
        return data

    return change


QA_DIR = "MSVD_Zero_Shot_QA"
MALFORMED = [
    # (file, change, message pattern)
    ("test_a.json", lambda d: d[:-1], r"has 7 questions but .*test_a\.json has 6 answers"),
    ("test_q.json", lambda d: {"items": d}, r"test_q\.json: expected a JSON list, got dict"),
    ("test_q.json", lambda d: [*d, "x"], r"test_q\.json, item 7: expected a JSON object"),
    ("test_q.json", _pop(3, "question"), r"test_q\.json, item 3: field `question` is missing"),
    ("test_q.json", _pop(0, "video_name"), r"item 0: field `video_name` is missing"),
    ("test_q.json", _pop(5, "question_id"), r"item 5: field `question_id` is missing"),
    ("test_a.json", _pop(2, "answer"), r"test_a\.json, item 2: field `answer` is missing"),
    ("test_a.json", _set(1, "answer", True), r"item 1: field `answer` must be a string"),
    ("test_q.json", _set(4, "question_id", 1000), r"item 4: duplicate question_id '1000' .*item 0"),
    ("test_q.json", _set(2, "video_name", "../x"), r"item 2: field `video_name` must be a file"),
    ("test_q.json", _set(6, "question", "  "), r"item 6: field `question` is empty"),
    ("test_q.json", _set(1, "question", "a\0b"), r"item 1: field `question` contains a NUL"),
]


@pytest.mark.parametrize(("name", "change", "pattern"), MALFORMED)
def test_malformed_qa_files_name_file_index_and_field(tmp_path, name, change, pattern):
    make_benchmark_fixture("msvd-qa", tmp_path, None)
    _edit(tmp_path / QA_DIR / name, change)
    with pytest.raises(BenchmarkError, match=pattern):
        load_benchmark("msvd-qa", tmp_path)


def test_unreadable_and_absent_files(tmp_path):
    with pytest.raises(BenchmarkError, match="unknown benchmark 'nope'"):
        load_benchmark("nope", tmp_path)
    with pytest.raises(BenchmarkError, match="not a directory"):
        load_benchmark("msvd-qa", tmp_path / "absent")
    with pytest.raises(BenchmarkError, match=r"MSVD_Zero_Shot_QA/test_q\.json: file not found"):
        load_benchmark("msvd-qa", tmp_path)
    make_benchmark_fixture("msvd-qa", tmp_path, None)
    (tmp_path / QA_DIR / "test_q.json").write_text('[{"video_name": "a",')
    with pytest.raises(BenchmarkError, match=r"test_q\.json: malformed JSON .* line 1"):
        load_benchmark("msvd-qa", tmp_path)


def test_malformed_vcgbench_files(tmp_path):
    make_benchmark_fixture("vcgbench", tmp_path, None)
    qa = tmp_path / "Benchmarking_QA"
    _edit(qa / "consistency_qa.json", _pop(1, "Q2"))
    with pytest.raises(BenchmarkError, match=r"consistency_qa\.json, item 1: field `Q2`"):
        load_benchmark("vcgbench", tmp_path)
    (qa / "temporal_qa.json").unlink()
    with pytest.raises(BenchmarkError, match=r"temporal_qa\.json: file not found"):
        load_benchmark("vcgbench", tmp_path)


# --- predictions ---------------------------------------------------------------------------------

TRICKY = [
    'say "null", true or false',
    "back\\slash and 'quotes'",
    "line\nbreak\r\tand\x1f control",
    "unicode: é 中文 😀 \u2028 \u0085 \x7f",
    "",
]


def _item(subset: str, n: int) -> EvalItem:
    question2 = f"paraphrase {n}" if subset == "consistency" else None
    return EvalItem(f"vid_{n}", subset, "vid", "/v.mp4", TRICKY[n % 4], TRICKY[n % 5], question2)


@pytest.mark.parametrize("subset", PREDICTION_FIELDS)
def test_prediction_lines_read_back_by_the_reference_reader(subset):
    items = [_item(subset, n) for n in range(6)]
    preds = [TRICKY[(n + 1) % 5] for n in range(6)]
    records = [
        prediction_record(item, [p, p + "!"] if subset == "consistency" else [p])
        for item, p in zip(items, preds, strict=True)
    ]
    text = predictions_text(records)
    assert text.count("\n") == len(records)  # one physical line per record
    read = read_reference_predictions(text, subset)
    assert read == records
    assert [list(r) for r in read] == [list(PREDICTION_FIELDS[subset])] * len(records)
    # Windows line endings read the same way
    assert read_reference_predictions(text.replace("\n", "\r\n"), subset) == records


def test_prediction_record_needs_one_answer_per_generation():
    with pytest.raises(ValueError, match="needs 2 predictions"):
        prediction_record(_item("consistency", 0), ["only one"])
    with pytest.raises(PredictionFormatError, match="every value must be a str"):
        prediction_line({"id": "a", "question": "q", "answer": None, "pred": "p"})


QA_LINE = '{"id": "1", "question": "q", "answer": "a", "pred": "p"}'
BAD_LINES = [
    ('{"id": "1", "question": "q", "answer": "a", "pred": null}', "not a Python literal"),
    ('{"id": "1", "question": "q", "answer": true, "pred": "p"}', "not a Python literal"),
    ('{"id": __import__("os").getpid(), "question": "q", "answer": "a", "pred": "p"}', "literal"),
    ('{"id": True, "question": "q", "answer": "a", "pred": "p"}', "field `id` must be a str or"),
    ('{"id": 1.5, "question": "q", "answer": "a", "pred": "p"}', "field `id` must be a str or"),
    ('{"id": "1", "question": 2, "answer": "a", "pred": "p"}', "field `question` must be a str"),
    ('{"id": "1", "question": "q", "answer": "a"}', r"missing fields \['pred'\]"),
    ('{"id": "1", "question": "q", "answer": "a", "pred": "p", "x": 1}', r"extra fields \['x'\]"),
    ('["1", "q", "a", "p"]', "expected a dict, got list"),
    ("", "not a Python literal"),
    (QA_LINE, r"duplicate id '1' \(first on line 1\)"),
]


def test_reference_reader_accepts_integer_ids_as_strings():
    """The reference's own files (MSVD, MSRVTT, TGIF) have integer ids."""
    text = '{"id": 7, "question": "q", "answer": "a", "pred": "p"}\n' + QA_LINE + "\n"
    records = read_reference_predictions(text, "qa")
    assert [r["id"] for r in records] == ["7", "1"]
    assert predictions_text(records)  # written back as the reference reads it
    with pytest.raises(PredictionFormatError, match=r"line 2: duplicate id '7'"):
        read_reference_predictions(text.replace('"1"', '"7"'), "qa")


@pytest.mark.parametrize(("line", "pattern"), BAD_LINES)
def test_reference_reader_rejects_bad_lines(line, pattern):
    with pytest.raises(PredictionFormatError, match=r"line 2: .*" + pattern):
        read_reference_predictions(f"{QA_LINE}\n{line}\n{QA_LINE.replace('1', '2')}\n", "qa")


def test_reference_reader_accepts_python_literals_and_rejects_unknown_subsets():
    line = "{'id': 'x', 'question': 'q', 'answer': 'a', 'pred': 'p'}"
    assert read_reference_predictions(line, "qa") == [ast.literal_eval(line)]
    assert read_reference_predictions("", "generic") == []
    with pytest.raises(ValueError, match="unknown subset"):
        read_reference_predictions(QA_LINE, "nope")
