"""Job inputs: directories, globs, manifests (JSONL, CSV, Parquet), az:// prefixes, hostile ids."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from videopanda_cluster.jobs.inputs import (
    MAX_ID_CHARS,
    InputError,
    Question,
    VideoItem,
    item_key,
    read_inputs,
)
from videopanda_cluster.storage.local import LocalStore


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- directories and globs -----------------------------------------------------------------------


def test_directory_is_recursive_sorted_and_keeps_only_videos(tmp_path):
    touch(
        tmp_path, "b.mp4", "a/z.MKV", "a/clip.v2.webm", "notes.txt", "c.gif", "d/e/f.ts", "x.json"
    )
    items = read_inputs(str(tmp_path))
    assert [it.video_id for it in items] == ["a/clip.v2", "a/z", "b", "c", "d/e/f"]
    assert items[1].uri == str(tmp_path / "a" / "z.MKV")
    assert all(os.path.isabs(it.uri) and os.path.isfile(it.uri) for it in items)
    assert all(it.questions == [] for it in items)


def test_directory_with_two_files_of_one_id_is_refused(tmp_path):
    touch(tmp_path, "clip.mp4", "clip.mkv")
    with pytest.raises(InputError, match=r"clip\.mkv.*clip\.mp4.*video_id 'clip'"):
        read_inputs(str(tmp_path))


def test_directory_without_videos_is_an_error(tmp_path):
    touch(tmp_path, "readme.md")
    with pytest.raises(InputError, match="no videos found"):
        read_inputs(str(tmp_path))


def test_directory_over_the_limit_is_refused(tmp_path):
    touch(tmp_path, "a.mp4", "b.mp4", "c.mp4")
    with pytest.raises(InputError, match="more than 2 videos"):
        read_inputs(str(tmp_path), max_rows=2)


def test_glob_ids_are_relative_to_the_fixed_part(tmp_path):
    touch(tmp_path, "set/one/a.mp4", "set/two/b.mp4", "set/two/c.mkv", "set/top.mp4", "set/d.txt")
    items = read_inputs(f"{tmp_path}/set/**/*.mp4")
    assert [it.video_id for it in items] == ["one/a", "top", "two/b"]
    assert items[0].uri == str(tmp_path / "set" / "one" / "a.mp4")
    with pytest.raises(InputError, match="no videos found"):
        read_inputs(f"{tmp_path}/set/*.avi")


def test_single_video_file_and_missing_paths(tmp_path):
    touch(tmp_path, "solo.mov")
    assert read_inputs(str(tmp_path / "solo.mov")) == [
        VideoItem("solo", str(tmp_path / "solo.mov"), [])
    ]
    with pytest.raises(InputError, match="no such file"):
        read_inputs(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match="no such file"):
        read_inputs(str(tmp_path / "missing_dir"))
    with pytest.raises(InputError, match="contains a NUL byte"):
        read_inputs(f"{tmp_path}/a\0.mp4")


# --- JSONL ---------------------------------------------------------------------------------------


def test_jsonl_uris_and_questions(tmp_path):
    (tmp_path / "m").mkdir()
    manifest = write_jsonl(
        tmp_path / "m" / "set.jsonl",
        [
            {"video_id": "rel", "uri": "clips/a.mp4", "extra": "ignored"},
            {"video_id": "up", "uri": "../other/b.mp4", "questions": ["What?", "Why?"]},
            {
                "video_id": "abs",
                "uri": "/data/c.mp4",
                "questions": [{"question_id": "q-1", "question": "Who?"}, {"question": "Where?"}],
            },
            {"video_id": "blob", "uri": "az://box/v/d.mp4"},
            {"video_id": 42, "uri": "file:///srv/e.mp4"},
        ],
    )
    items = {it.video_id: it for it in read_inputs(str(manifest))}
    assert list(items) == ["rel", "up", "abs", "blob", "42"]
    assert items["rel"].uri == str(tmp_path / "m" / "clips" / "a.mp4")
    assert items["up"].uri == str(tmp_path / "m" / ".." / "other" / "b.mp4")
    assert items["abs"].uri == "/data/c.mp4"
    assert items["blob"].uri == "az://box/v/d.mp4"
    assert items["42"].uri == "file:///srv/e.mp4"
    assert items["up"].questions == [Question("up#0", "What?"), Question("up#1", "Why?")]
    assert items["abs"].questions == [Question("q-1", "Who?"), Question("abs#1", "Where?")]
    assert items["rel"].questions == []


def test_jsonl_blank_lines_and_byte_order_mark_are_fine(tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = ['{"video_id": "a", "uri": "a.mp4"}', "", "  ", '{"video_id": "b", "uri": "b.mp4"}']
    manifest.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())  # no final newline
    assert [it.video_id for it in read_inputs(str(manifest))] == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"video_id": "a", "uri": ', r"line 2: malformed JSON"),
        ('["a", "a.mp4"]', r"line 2: expected a JSON object, got list"),
        ('{"uri": "x.mp4"}', r"line 2: field `video_id` is missing or empty"),
        ('{"video_id": "", "uri": "x.mp4"}', r"line 2: field `video_id` is missing or empty"),
        ('{"video_id": ["x"], "uri": "x.mp4"}', r"line 2: field `video_id` must be a string"),
        ('{"video_id": "b"}', r"line 2: field `uri` is missing"),
        ('{"video_id": "b", "uri": "x\\u0000.mp4"}', r"line 2: field `uri` contains a NUL"),
        ('{"video_id": "b", "uri": "https://h/x.mp4"}', r"line 2: field `uri` has unsupported"),
        ('{"video_id": "a", "uri": "again.mp4"}', r"line 2: duplicate video_id 'a' .*line 1"),
        ('{"video_id": "b", "uri": "b.mp4", "questions": "q"}', r"field `questions` must be a"),
        ('{"video_id": "b", "uri": "b.mp4", "questions": [""]}', r"field `questions\[0\]`"),
        (
            '{"video_id": "b", "uri": "b.mp4", "questions": [{"question_id": "q"}]}',
            r"field `questions\[0\]\.question` must be a non-empty string",
        ),
        (
            '{"video_id": "b", "uri": "b.mp4", "questions": [{"question_id": "q\\n", '
            '"question": "x"}]}',
            r"field `questions\[0\]\.question_id` contains the control character U\+000A",
        ),
        (
            '{"video_id": "b", "uri": "b.mp4", "questions": [{"question_id": "b#1", '
            '"question": "x"}, "y"]}',
            r"line 2: duplicate question_id 'b#1'",
        ),
    ],
)
def test_jsonl_errors_name_file_line_and_field(tmp_path, line, message):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"video_id": "a", "uri": "a.mp4"}\n' + line + "\n")
    with pytest.raises(InputError, match=message) as info:
        read_inputs(str(manifest))
    assert str(manifest) in str(info.value)


def test_jsonl_that_is_not_utf8_is_refused(tmp_path):
    manifest = tmp_path / "latin1.jsonl"
    manifest.write_bytes(
        b'{"video_id": "a", "uri": "a.mp4"}\n{"video_id": "caf\xe9", "uri": "b"}\n'
    )
    with pytest.raises(InputError, match="line 2: not valid UTF-8"):
        read_inputs(str(manifest))


def test_manifest_row_limit(tmp_path):
    manifest = write_jsonl(
        tmp_path / "m.jsonl", [{"video_id": str(i), "uri": "x"} for i in range(4)]
    )
    assert len(read_inputs(str(manifest), max_rows=4)) == 4
    with pytest.raises(InputError, match=r"m\.jsonl: more than 3 rows"):
        read_inputs(str(manifest), max_rows=3)


# --- hostile ids ---------------------------------------------------------------------------------

ACCEPTED_IDS = [
    "../../etc/passwd",
    "..",
    ".",
    "/abs/olute",
    "a/b/../../../c",
    ".hidden",
    "%2e%2e",
    "back\\slash\\..\\x",
    "emoji 🎬 ünïcode",
    "x" * MAX_ID_CHARS,
]


def test_hostile_but_valid_ids_are_accepted_and_encoded_into_one_safe_component(tmp_path):
    manifest = write_jsonl(
        tmp_path / "m.jsonl", [{"video_id": v, "uri": "/etc/passwd"} for v in ACCEPTED_IDS]
    )
    items = read_inputs(str(manifest))
    assert [it.video_id for it in items] == ACCEPTED_IDS
    keys = [item_key(it.video_id) for it in items]
    assert len(set(keys)) == len(keys)
    store = LocalStore(tmp_path / "store")
    for key in keys:
        # One component: no separator, never "." or ".." (a leading dot is escaped). Dots inside
        # are kept by safe_key_component, so "..%2F" can occur but is inert within one component.
        assert "/" not in key and "\\" not in key
        assert key not in ("", ".", "..") and not key.startswith(".")
        assert len(key) <= 140
        store.put(f"videos/{key}", b"x")
    written = sorted(p.relative_to(store.root) for p in store.root.rglob("*") if p.is_file())
    assert all(p.parent == Path("videos") for p in written)
    assert len(written) == len(keys)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("video_id", "problem"),
    [
        ("a\x00b", "contains a NUL byte"),
        ("new\nline", "contains the control character U+000A"),
        ("tab\tid", "contains the control character U+0009"),
        ("esc\x1b[31m", "contains the control character U+001B"),
        ("del\x7f", "contains the control character U+007F"),
        ("c1\x85", "contains the control character U+0085"),
        ("lone\ud800", "contains an unpaired surrogate"),
        ("n" * (MAX_ID_CHARS + 1), f"is {MAX_ID_CHARS + 1} characters long"),
        ("n" * 10_240, "is 10240 characters long"),
    ],
)
def test_invalid_ids_are_rejected_in_every_manifest_format(tmp_path, video_id, problem):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        json.dumps({"video_id": "ok", "uri": "ok.mp4"})
        + "\n"
        + json.dumps({"video_id": video_id, "uri": "x.mp4"})
        + "\n"
    )
    problem = re.escape(problem)
    with pytest.raises(InputError, match=rf"m\.jsonl, line 2: field `video_id` {problem}"):
        read_inputs(str(jsonl))
    if "\ud800" in video_id:
        return  # not encodable into CSV/Parquet text
    write_csv(tmp_path / "m.csv", ["video_id", "uri"], [["ok", "ok.mp4"], [video_id, "x.mp4"]])
    with pytest.raises(InputError, match=rf"m\.csv, line 3: field `video_id` {problem}"):
        read_inputs(str(tmp_path / "m.csv"))
    pq.write_table(
        pa.table({"video_id": ["ok", video_id], "uri": ["a", "b"]}), tmp_path / "m.parquet"
    )
    with pytest.raises(InputError, match=rf"m\.parquet, row 2: field `video_id` {problem}"):
        read_inputs(str(tmp_path / "m.parquet"))


def test_item_key_is_distinct_for_distinct_ids():
    ids = ["a/b", "a%2Fb", "a_b", "A/B", "x" * 2000, "x" * 2001, "", "..", "%2E%2E"]
    keys = [item_key(v) for v in ids]
    assert len(set(keys)) == len(ids)
    assert item_key("clip-01.v2") == "clip-01.v2"  # plain ids stay readable


# --- CSV -----------------------------------------------------------------------------------------


def test_csv_rows_are_grouped_into_questions(tmp_path):
    manifest = write_csv(
        tmp_path / "qa.csv",
        ["video_id", "uri", "question", "question_id"],
        [
            ["v1", "v1.mp4", "What colour?", "c1"],
            ["v2", "az://box/v2.mp4", "How many?", ""],
            ["v1", "v1.mp4", "Which way?", ""],
            ["v3", "v3.mp4", "", ""],
            ["v2", "az://box/v2.mp4", "Is it day?", "d2"],
        ],
    )
    items = read_inputs(str(manifest))
    assert [it.video_id for it in items] == ["v1", "v2", "v3"]
    v1, v2, v3 = items
    assert v1.uri == str(tmp_path / "v1.mp4") and v2.uri == "az://box/v2.mp4"
    assert v1.questions == [Question("c1", "What colour?"), Question("v1#1", "Which way?")]
    assert v2.questions == [Question("v2#0", "How many?"), Question("d2", "Is it day?")]
    assert v3.questions == []


def test_csv_without_question_column_and_default_questions(tmp_path):
    manifest = write_csv(
        tmp_path / "m.csv", [" video_id", "uri "], [["a", "a.mp4"], ["b", "b.mp4"]]
    )
    items = read_inputs(str(manifest), default_questions=["Q one", "Q two"])
    assert items[1] == VideoItem(
        "b", str(tmp_path / "b.mp4"), [Question("b#0", "Q one"), Question("b#1", "Q two")]
    )


def test_default_questions_only_fill_videos_without_questions(tmp_path):
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [{"video_id": "a", "uri": "a", "questions": ["own"]}, {"video_id": "b", "uri": "b"}],
    )
    a, b = read_inputs(str(manifest), default_questions=["shared"])
    assert a.questions == [Question("a#0", "own")]
    assert b.questions == [Question("b#0", "shared")]
    with pytest.raises(InputError, match="default question 0"):
        read_inputs(str(manifest), default_questions=[""])


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (
            ["video_id", "url"],
            [["a", "a.mp4"]],
            r"missing column\(s\) `uri` \(found: video_id, url",
        ),
        (["id", "path"], [["a", "a.mp4"]], r"missing column\(s\) `video_id`, `uri`"),
        (["video_id", "uri"], [["a", "a.mp4"], ["a", "b.mp4"]], r"line 3: duplicate video_id 'a'"),
        (["video_id", "uri"], [["a", "a.mp4"], ["b"]], r"line 3: field `uri` is missing"),
        (["video_id", "uri"], [["", "a.mp4"]], r"line 2: field `video_id` is missing or empty"),
        (
            ["video_id", "uri", "question"],
            [["a", "a.mp4", "q1"], ["a", "b.mp4", "q2"]],
            r"line 3: video_id 'a' has uri .*b\.mp4.* here but .*a\.mp4.* at .*line 2",
        ),
        (
            ["video_id", "uri", "question", "question_id"],
            [["a", "a.mp4", "q1", "x"], ["a", "a.mp4", "q2", "x"]],
            r"line 3: duplicate question_id 'x' for video_id 'a'",
        ),
    ],
)
def test_csv_errors(tmp_path, header, rows, message):
    manifest = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(InputError, match=message) as info:
        read_inputs(str(manifest))
    assert str(info.value).startswith(str(manifest))


def test_csv_empty_and_row_limit(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty file"):
        read_inputs(str(tmp_path / "empty.csv"))
    write_csv(tmp_path / "m.csv", ["video_id", "uri"], [[str(i), "x"] for i in range(5)])
    with pytest.raises(InputError, match="more than 4 rows"):
        read_inputs(str(tmp_path / "m.csv"), max_rows=4)
    write_csv(tmp_path / "h.csv", ["video_id", "uri"], [])
    with pytest.raises(InputError, match="no videos found"):
        read_inputs(str(tmp_path / "h.csv"))


# --- Parquet -------------------------------------------------------------------------------------


def test_parquet_round_trip_with_questions(tmp_path):
    table = pa.table(
        {
            "video_id": ["a", "a", "b", "c"],
            "uri": ["a.mp4", "a.mp4", "/abs/b.mp4", "az://box/c.mp4"],
            "question": ["first?", "second?", "only?", None],
            "question_id": [None, "a-2", None, None],
            "answer": ["x", "y", "z", "w"],  # other columns are ignored
        }
    )
    pq.write_table(table, tmp_path / "qa.parquet", row_group_size=2)
    items = read_inputs(str(tmp_path / "qa.parquet"))
    assert items == [
        VideoItem(
            "a",
            str(tmp_path / "a.mp4"),
            [Question("a#0", "first?"), Question("a-2", "second?")],
        ),
        VideoItem("b", "/abs/b.mp4", [Question("b#0", "only?")]),
        VideoItem("c", "az://box/c.mp4", []),
    ]


def test_parquet_without_questions_numeric_ids_and_errors(tmp_path):
    pq.write_table(pa.table({"video_id": [7, 8], "uri": ["x", "y"]}), tmp_path / "n.parquet")
    assert [it.video_id for it in read_inputs(str(tmp_path / "n.parquet"))] == ["7", "8"]
    pq.write_table(pa.table({"video_id": ["a", "a"], "uri": ["x", "y"]}), tmp_path / "d.parquet")
    with pytest.raises(InputError, match=r"d\.parquet, row 2: duplicate video_id 'a'"):
        read_inputs(str(tmp_path / "d.parquet"))
    pq.write_table(pa.table({"video_id": ["a"], "path": ["x"]}), tmp_path / "m.parquet")
    with pytest.raises(InputError, match=r"m\.parquet: missing column\(s\) `uri`"):
        read_inputs(str(tmp_path / "m.parquet"))
    pq.write_table(pa.table({"video_id": ["a", None], "uri": ["x", "y"]}), tmp_path / "z.parquet")
    with pytest.raises(InputError, match=r"row 2: field `video_id` is missing"):
        read_inputs(str(tmp_path / "z.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_inputs(str(tmp_path / "junk.parquet"))


def test_parquet_row_limit_is_checked_from_metadata(tmp_path):
    pq.write_table(
        pa.table({"video_id": ["a", "b", "c"], "uri": ["x"] * 3}), tmp_path / "m.parquet"
    )
    with pytest.raises(InputError, match="more than 2 rows"):
        read_inputs(str(tmp_path / "m.parquet"), max_rows=2)


# --- az:// ---------------------------------------------------------------------------------------


def test_az_prefix_lists_videos_through_the_store(tmp_path):
    opened: list[str] = []

    def factory(url: str) -> LocalStore:
        opened.append(url)
        return LocalStore(tmp_path / url.removeprefix("az://"))

    touch(tmp_path / "box", "clips/b.mp4", "clips/sub/a.webm", "clips/readme.txt", "clipsx/c.mp4")
    items = read_inputs("az://box/clips/", store_factory=factory)
    assert opened == ["az://box"]
    assert [(it.video_id, it.uri) for it in items] == [
        ("b", "az://box/clips/b.mp4"),
        ("sub/a", "az://box/clips/sub/a.webm"),
    ]
    assert [it.video_id for it in read_inputs("az://box", store_factory=factory)] == [
        "clips/b",
        "clips/sub/a",
        "clipsx/c",
    ]
    single = read_inputs("az://box/clips/sub/a.webm", store_factory=factory)
    assert [(it.video_id, it.uri) for it in single] == [("a", "az://box/clips/sub/a.webm")]
    with pytest.raises(InputError, match="no videos found"):
        read_inputs("az://box/nothing", store_factory=factory)
    with pytest.raises(InputError, match="no container"):
        read_inputs("az:///clips", store_factory=factory)
    with pytest.raises(InputError, match=r"az://box/\.\./up: invalid store prefix"):
        read_inputs("az://box/../up", store_factory=factory)


def test_a_large_manifest_reports_the_first_bad_line_across_batches(tmp_path):
    manifest = tmp_path / "big.jsonl"
    lines = [json.dumps({"video_id": f"v{i}", "uri": f"{i}.mp4"}) for i in range(10_000)]
    lines[9_000] = json.dumps({"video_id": "v17", "uri": "again.mp4"})  # a later batch
    lines[9_500] = "{not json"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InputError, match=r"line 9001: duplicate video_id 'v17' \(first on line 18\)"
    ):
        read_inputs(str(manifest))
    lines[9_000] = json.dumps({"video_id": "v9000", "uri": "9000.mp4"})
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"line 9501: malformed JSON"):
        read_inputs(str(manifest))
    del lines[9_500]
    lines.insert(4_000, json.dumps({"video_id": "v4001", "uri": "x.mp4"}))  # same batch
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InputError, match=r"line 4003: duplicate video_id 'v4001' \(first on line 4001\)"
    ):
        read_inputs(str(manifest))
