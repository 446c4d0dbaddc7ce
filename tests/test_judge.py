"""The GPT-assisted judge against a real local OpenAI-compatible server (tests/openai_server.py).

Expected verdicts follow the server's rule: match(a, p) = 5 if equal (case-insensitive), 3 if one
contains the other, else 1; QA says "yes" when the score is at least 3.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from tests.openai_server import (
    FAKE_KEY,
    FakeOpenAI,
    bad_reply,
    error_echoing_credentials,
    model_not_found,
    out_of_quota,
    rate_limited,
    raw_body,
    server_error,
    slow,
)
from tests.openai_server import openai_server as openai_server_fixture  # noqa: F401
from videopanda_cluster.eval import layout
from videopanda_cluster.eval.judge import (
    JudgeConfig,
    JudgeError,
    JudgeTask,
    judge_run,
    tasks_for_run,
)
from videopanda_cluster.eval.prompts import builtin_prompts, load_prompts
from videopanda_cluster.eval.protocol import builtin_protocol, custom_protocol
from videopanda_cluster.eval.replies import ReplyError, parse_reply
from videopanda_cluster.storage.local import LocalStore

KEY_ENV = "VPC_TEST_JUDGE_KEY"
MODEL = "gpt-judge-2024-01-01"

# (question, answer, pred) -> server verdict in the comment
QA_ROWS = [
    ("what animal runs?", "dog", "dog"),  # yes 5
    ("what animal barks?", "dog", "a dog"),  # yes 3
    ("what animal sleeps?", "cat", "Dog"),  # no 1
    ("how many people?", "Two", "two"),  # yes 5
    ("what is parked?", "red car", "car"),  # yes 3
]
GENERIC_ROWS = [
    ("what happens?", "a man rides a horse", "a man rides a horse"),  # 5
    ("what is she doing?", "a woman is cooking pasta", "cooking"),  # 3
    ("who plays?", "two kids play football", "a cat sleeps"),  # 1
]
TEMPORAL_ROWS = [
    ("what happens first?", "he opens the door then leaves", "he opens the door then leaves"),  # 5
    ("what comes last?", "she sings and then dances", "dances"),  # 3
]
CONSISTENCY_ROWS = [  # (Q1, Q2, A, pred1, pred2) -> min of the two matches
    ("what colour is the ball?", "which colour has the ball?", "blue", "blue", "it is blue"),  # 3
    ("how many cars?", "count the cars", "three", "three", "three"),  # 5
    ("is it raining?", "does it rain?", "yes", "yes", "Yes"),  # 5
]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def write_qa_run(store: LocalStore, run_id: str, rows=QA_ROWS) -> None:
    lines = [
        {"id": str(i), "question": q, "answer": a, "pred": p} for i, (q, a, p) in enumerate(rows)
    ]
    store.put(layout.predictions_key(run_id, "qa"), _jsonl(lines))


def write_vcg_run(store: LocalStore, run_id: str) -> None:
    for subset, rows in (("generic", GENERIC_ROWS), ("temporal", TEMPORAL_ROWS)):
        lines = [
            {"id": f"v{i}_0", "video_name": f"v{i}", "Q": q, "A": a, "pred": p}
            for i, (q, a, p) in enumerate(rows)
        ]
        store.put(layout.predictions_key(run_id, subset), _jsonl(lines))
    lines = [
        {
            "id": f"c{i}_0",
            "video_name": f"c{i}",
            "Q1": q1,
            "Q2": q2,
            "A": a,
            "pred1": p1,
            "pred2": p2,
        }
        for i, (q1, q2, a, p1, p2) in enumerate(CONSISTENCY_ROWS)
    ]
    store.put(layout.predictions_key(run_id, "consistency"), _jsonl(lines))


def read_verdicts(store: LocalStore, run_id: str) -> list[dict]:
    data = store.get(layout.run_key(run_id, "verdicts.jsonl")).decode()
    return [json.loads(line) for line in data.splitlines()]


def read_summary(store: LocalStore, run_id: str) -> dict:
    return json.loads(store.get(layout.run_key(run_id, "judge.json")))


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(autouse=True)
def judge_key(monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)


def config(server: FakeOpenAI, **overrides) -> JudgeConfig:
    settings = dict(
        model=MODEL, base_url=server.base_url, api_key_env=KEY_ENV, backoff=0.01, timeout=5.0
    )
    return JudgeConfig(**(settings | overrides))


# --- parser ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "dimension", "expected"),
    [
        ("{'pred': 'yes', 'score': 4}", "qa", ("yes", 4)),
        ('{"pred": "no", "score": 0}', "qa", ("no", 0)),
        ("```python\n{'pred': 'Yes.', 'score': 4.8}\n```", "qa", ("yes", 4)),
        ("Sure. {'pred': 'NO', 'score': 2} Hope this helps.", "qa", ("no", 2)),
        ("{'pred': 'not sure', 'score': 2}", "qa", ("no", 2)),  # the reference's substring rule
        ("{'score': 5}", "correctness", (None, 5)),
        ("{'score': '3'}", "temporal", (None, 3)),
        ("{'pred': 'yes', 'score': 3}", "detail", (None, 3)),
        ("I rate it {x} first, then {'score': 2.0}", "consistency", (None, 2)),
    ],
)
def test_parse_reply_accepts_reference_style_dicts(text, dimension, expected):
    assert parse_reply(text, dimension) == expected


@pytest.mark.parametrize(
    ("text", "dimension", "reason"),
    [
        ("yes, I would give it a 4", "qa", "no dict"),
        ("{'pred': 'yes'}", "qa", "no 'score'"),
        ("{'score': 4}", "qa", "no 'pred'"),
        ("{'pred': 'maybe', 'score': 3}", "qa", "neither yes nor no"),
        ("{'pred': 'yes', 'score': 7}", "qa", "outside 0..5"),
        ("{'score': -1}", "context", "outside 0..5"),
        ("{'score': 'high'}", "context", "not a number"),
        ("{'score': True}", "context", "not a number"),
        ("{'pred': __import__('os').getcwd(), 'score': 1}", "qa", "no dict"),  # never evaluated
    ],
)
def test_parse_reply_rejects_malformed_replies(text, dimension, reason):
    with pytest.raises(ReplyError, match=reason):
        parse_reply(text, dimension)


# --- tasks and prompts -------------------------------------------------------------------------


def test_tasks_for_run_maps_prediction_lines_to_dimensions(store):
    write_vcg_run(store, "vcg")
    tasks = tasks_for_run(store, "vcg")
    dims = [(t.id, t.dimension) for t in tasks]
    assert dims[:3] == [("v0_0", "correctness"), ("v0_0", "detail"), ("v0_0", "context")]
    assert len(tasks) == 3 * len(GENERIC_ROWS) + len(TEMPORAL_ROWS) + len(CONSISTENCY_ROWS)
    assert tasks[-1] == JudgeTask(
        id="c2_0",
        subset="consistency",
        dimension="consistency",
        question="is it raining?",
        answer="yes",
        pred="yes",
        question2="does it rain?",
        pred2="Yes",
    )
    store.put(layout.predictions_key("bad", "qa"), _jsonl([{"id": "1", "question": "q?"}]))
    with pytest.raises(ValueError, match="line 1: missing 'answer'"):
        tasks_for_run(store, "bad")


def test_prompt_hashes_versions_and_custom_prompt_files(tmp_path):
    builtin = builtin_prompts()
    assert len({builtin[d].hash for d in builtin.prompts}) == 6
    custom = tmp_path / "prompts.yaml"
    custom.write_text(
        "version: ref-1\n"
        "prompts:\n"
        "  qa:\n"
        "    system: Judge answers.\n"
        "    user: \"Q {question} A {answer} P {pred}. Reply like {'pred': 'yes', 'score': 5}\"\n"
    )
    loaded = load_prompts(custom)
    assert loaded["qa"].version == "ref-1" and loaded["qa"].hash != builtin["qa"].hash
    assert loaded["detail"] == builtin["detail"]
    user = loaded["qa"].render(question="q?", answer="a", pred="{answer}")[1]["content"]
    assert user == "Q q? A a P {answer}. Reply like {'pred': 'yes', 'score': 5}"
    custom.write_text("prompts:\n  qa: {system: s, user: 'Q {question} P {pred}'}\n")
    with pytest.raises(ValueError, match=r"lacks \{answer\}"):
        load_prompts(custom)
    (tmp_path / "p.json").write_text(
        json.dumps({"prompts": {"speed": {"system": "s", "user": "u"}}})
    )
    with pytest.raises(ValueError, match="unknown judge dimension"):
        load_prompts(tmp_path / "p.json")


# --- judge_run against the fake server ---------------------------------------------------------


def test_aggregates_equal_hand_computed_values(store, openai_server):
    write_qa_run(store, "qa")
    write_vcg_run(store, "vcg")
    cfg = config(openai_server)
    qa = judge_run(store, "qa", cfg)
    vcg = judge_run(store, "vcg", cfg)

    assert qa["dimensions"] == {
        "qa": {"judged": 5, "failed": 0, "yes": 4, "no": 1, "accuracy": 0.8, "mean_score": 3.4}
    }
    means = {dim: v["mean_score"] for dim, v in vcg["dimensions"].items()}
    assert means == pytest.approx(
        {"correctness": 3.0, "detail": 3.0, "context": 3.0, "temporal": 4.0, "consistency": 13 / 3}
    )
    assert all(v["accuracy"] is None and v["failed"] == 0 for v in vcg["dimensions"].values())
    assert qa["http_calls"] + vcg["http_calls"] == 5 + 14 == openai_server.counts["ok"]
    assert openai_server.counts["total"] == 19

    verdicts = read_verdicts(store, "qa")
    assert [(v["id"], v["pred"], v["score"]) for v in verdicts] == [
        ("0", "yes", 5), ("1", "yes", 3), ("2", "no", 1), ("3", "yes", 5), ("4", "yes", 3)
    ]  # fmt: skip
    prompts = builtin_prompts()
    for v in verdicts + read_verdicts(store, "vcg"):
        assert v["status"] == "ok" and v["attempts"] == 1 and not v["cached"] and v["error"] is None
        assert v["judge_model"] == MODEL and v["prompt_hash"] == prompts[v["dimension"]].hash
    assert read_summary(store, "vcg")["prompt_hashes"]["temporal"] == prompts["temporal"].hash
    # each request carried its dimension's prompt, both consistency questions, temperature 0
    systems = {prompts[d].system: d for d in layout.DIMENSIONS["generic"]}
    seen = [systems.get(r.messages[0]["content"]) for r in openai_server.requests]
    assert seen.count("detail") == seen.count("context") == len(GENERIC_ROWS)
    consistency = [r.user for r in openai_server.requests if "Question 2:" in r.user]
    assert len(consistency) == len(CONSISTENCY_ROWS)
    for q1, q2, *_ in CONSISTENCY_ROWS:
        assert any(f"Question 1: {q1}\nQuestion 2: {q2}\n" in user for user in consistency)
    assert {r.temperature for r in openai_server.requests} == {0.0}
    assert {r.model for r in openai_server.requests} == {MODEL}


def test_rerun_is_served_from_the_cache(store, openai_server):
    write_vcg_run(store, "vcg")
    cfg = config(openai_server)
    first = judge_run(store, "vcg", cfg)
    before = read_verdicts(store, "vcg")
    second = judge_run(store, "vcg", cfg)
    after = read_verdicts(store, "vcg")

    assert first["http_calls"] == 14 and second["http_calls"] == 0
    assert openai_server.counts["total"] == 14
    assert second["dimensions"] == first["dimensions"]
    assert all(v["cached"] and v["attempts"] == 0 for v in after)
    drop = ("cached", "attempts")
    assert [{k: v for k, v in row.items() if k not in drop} for row in after] == [
        {k: v for k, v in row.items() if k not in drop} for row in before
    ]
    # the cache belongs to the store: another run with the same predictions makes no call either
    write_vcg_run(store, "vcg-again")
    assert judge_run(store, "vcg-again", cfg)["http_calls"] == 0
    # a different consistency prompt (the reference's Q1-twice bug) re-asks only consistency
    bugged = builtin_protocol(reference_consistency_bug=True)
    summary = judge_run(store, "vcg", cfg, bugged)
    assert summary["http_calls"] == len(CONSISTENCY_ROWS)
    assert summary["reference_consistency_bug"] is True
    assert summary["prompt_hashes"]["consistency"] != first["prompt_hashes"]["consistency"]
    last = openai_server.requests[-1].user
    q1 = next(row[0] for row in CONSISTENCY_ROWS if row[0] in last)
    assert last.count(q1) == 2 and "Question 2: " + q1 in last
    # a different judge model is a different verdict
    assert judge_run(store, "vcg", config(openai_server, model="other-model"))["http_calls"] == 14


def test_faults_are_retried_and_no_verdict_is_lost(store, openai_server):
    write_qa_run(store, "qa", [*QA_ROWS, ("what colour?", "green", "green")])
    server = openai_server
    server.when("what animal runs?", rate_limited(retry_after=0.3))
    server.when(
        "what animal barks?", rate_limited(retry_after=30), server_error(500), server_error(503)
    )
    server.when("what animal sleeps?", slow(1.6))
    server.when(
        "how many people?",
        bad_reply("I think yes"),
        bad_reply("{'pred': 'yes'}"),
        bad_reply("{'pred': 'yes', 'score': 9}"),
    )
    server.when("what is parked?", bad_reply("{'pred': 'maybe', 'score': 3}"), forever=True)
    server.when("what colour?", rate_limited())
    cfg = config(server, max_attempts=4, timeout=1.0, max_wait=0.5)

    summary = judge_run(store, "qa", cfg)
    assert server.wait_idle()

    verdicts = {v["id"]: v for v in read_verdicts(store, "qa")}
    assert len(verdicts) == 6
    assert {i: v["attempts"] for i, v in verdicts.items()} == {
        "0": 2, "1": 4, "2": 2, "3": 4, "4": 4, "5": 2
    }  # fmt: skip
    failed = verdicts["4"]
    assert failed["status"] == "failed" and failed["pred"] is None and failed["score"] is None
    assert failed["raw"] == "{'pred': 'maybe', 'score': 3}"
    assert "neither yes nor no" in failed["error"] and "4 attempts" in failed["error"]
    ok = [v for v in verdicts.values() if v["status"] == "ok"]
    assert [(v["pred"], v["score"]) for v in ok] == [
        ("yes", 5), ("yes", 3), ("no", 1), ("yes", 5), ("yes", 5)
    ]  # fmt: skip
    assert summary["dimensions"]["qa"] == {
        "judged": 5, "failed": 1, "yes": 4, "no": 1, "accuracy": 0.8, "mean_score": 19 / 5
    }  # fmt: skip
    assert dict(server.counts) == {
        "total": 18, "ok": 5, "429": 3, "500": 1, "503": 1, "slow": 1, "reply": 7
    }  # fmt: skip
    assert summary["http_calls"] == 18
    first, second = (r.at for r in server.requests if "what animal runs?" in r.user)
    assert second - first >= 0.28  # Retry-After honoured (backoff alone would be ~0.01 s)

    # only the failure is asked again
    rerun = judge_run(store, "qa", cfg)
    assert rerun["http_calls"] == 4 and rerun["dimensions"]["qa"]["failed"] == 1


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_is_bounded(store, openai_server, concurrency):
    rows = [(f"question {i}?", "x", "x") for i in range(12)]
    write_qa_run(store, "qa", rows)
    openai_server.delay = 0.1
    summary = judge_run(store, "qa", config(openai_server, concurrency=concurrency))
    assert summary["dimensions"]["qa"]["judged"] == 12
    assert openai_server.max_in_flight == concurrency


def test_api_key_is_never_written_or_logged(store, openai_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    write_qa_run(store, "qa")
    openai_server.when("what animal sleeps?", error_echoing_credentials(400))
    openai_server.when("how many people?", server_error(502), bad_reply(f"echo {FAKE_KEY}"))
    summary = judge_run(store, "qa", config(openai_server, max_attempts=2))

    verdicts = {v["id"]: v for v in read_verdicts(store, "qa")}
    assert verdicts["2"]["status"] == "failed" and verdicts["2"]["attempts"] == 1  # 400: no retry
    assert "Bad request from client Bearer ***" in verdicts["2"]["error"]
    assert verdicts["3"]["raw"] == "echo ***" and verdicts["3"]["status"] == "failed"
    assert summary["dimensions"]["qa"]["failed"] == 2
    files = [p for p in Path(store.root).rglob("*") if p.is_file()]
    assert len(files) > 5
    for path in files:
        assert FAKE_KEY not in path.read_text(), path
    assert FAKE_KEY not in caplog.text
    # a refused key stops the run with a message that does not carry it either
    openai_server.when("who refuses?", error_echoing_credentials(401), forever=True)
    write_qa_run(store, "qa2", [("who refuses?", "x", "x")])
    with pytest.raises(JudgeError, match=r"refused.*Bearer \*\*\*") as info:
        judge_run(store, "qa2", config(openai_server))
    assert FAKE_KEY not in str(info.value)


def test_missing_key_is_reported_by_variable_name(store, openai_server, monkeypatch):
    write_qa_run(store, "qa")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(JudgeError, match=KEY_ENV):
        judge_run(store, "qa", config(openai_server))
    assert openai_server.counts["total"] == 0


def test_azure_openai_client(store, openai_server):
    write_qa_run(store, "qa")
    cfg = JudgeConfig(
        model="judge-deployment",
        azure_endpoint=openai_server.endpoint,
        api_version="2024-06-01",
        api_key_env=KEY_ENV,
        backoff=0.01,
    )
    summary = judge_run(store, "qa", cfg)
    assert summary["dimensions"]["qa"]["accuracy"] == 0.8
    assert summary["judge_model"] == "judge-deployment"
    paths = {r.path for r in openai_server.requests}
    assert paths == {"/openai/deployments/judge-deployment/chat/completions"}
    assert openai_server.counts["ok"] == 5
    with pytest.raises(ValueError, match="api_version"):
        JudgeConfig(model="m", azure_endpoint=openai_server.endpoint)


# --- unusable replies and fatal refusals -------------------------------------------------------

_CHOICE = {"index": 0, "message": {"role": "assistant", "content": "{'pred': 'yes', 'score': 5}"}}
MALFORMED_200 = [
    raw_body("Expecting value? not json at all"),
    raw_body("<html><body>Gateway says hi</body></html>", "text/html"),
    raw_body(json.dumps({"id": "x", "object": "chat.completion", "model": MODEL})),  # no choices
    raw_body(json.dumps({"model": MODEL, "choices": []})),
    raw_body(json.dumps({"model": MODEL, "choices": "yes"})),  # wrong shape
    raw_body(json.dumps({"model": MODEL, "choices": [{"index": 0, "message": "yes"}]})),
    raw_body(json.dumps({"model": MODEL, "choices": [{"message": {"content": ""}}]})),  # empty
    raw_body(json.dumps({"model": MODEL, "choices": [{"message": {"content": None}}]})),
    raw_body(json.dumps([_CHOICE])),  # a list, not an object
]


def test_malformed_200_replies_are_failed_attempts_of_one_question(store, openai_server):
    """Every unusable 200 is retried; a question that only gets those fails alone."""
    write_qa_run(store, "qa")
    openai_server.when("what animal runs?", *MALFORMED_200[:4])  # then a good reply
    openai_server.when("what animal sleeps?", *MALFORMED_200[4:])  # all bad: fails
    cfg = config(openai_server, max_attempts=len(MALFORMED_200[4:]))
    summary = judge_run(store, "qa", cfg)
    verdicts = {v["id"]: v for v in read_verdicts(store, "qa")}
    assert verdicts["0"]["status"] == "ok" and verdicts["0"]["attempts"] == 5
    failed = verdicts["2"]
    assert failed["status"] == "failed" and failed["attempts"] == 5
    assert "unusable reply" in failed["error"]
    assert summary["dimensions"]["qa"]["judged"] == 4
    assert summary["dimensions"]["qa"]["failed"] == 1


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (out_of_quota(), "insufficient_quota"),
        (error_echoing_credentials(401), "refused"),
        (error_echoing_credentials(403), "refused"),
        (model_not_found(MODEL), "does not exist"),
    ],
)
def test_fatal_refusals_stop_at_once_and_keep_the_verdicts_obtained(
    store, openai_server, fault, reason
):
    write_qa_run(store, "qa")
    openai_server.when("what animal sleeps?", fault, forever=True)  # the third question
    cfg = config(openai_server, concurrency=1, max_attempts=5, backoff=5.0)
    with pytest.raises(JudgeError, match=reason) as info:
        judge_run(store, "qa", cfg)
    assert "\n" not in str(info.value)
    assert openai_server.counts[str(fault.status)] == 1  # not retried
    assert openai_server.counts["ok"] == 2
    openai_server.clear()
    assert judge_run(store, "qa", cfg)["dimensions"]["qa"]["judged"] == 5
    assert openai_server.counts["ok"] == 5  # the first two came from the cache


# --- generation settings -----------------------------------------------------------------------

SERVED = "gpt-judge-2024-01-01-served-snapshot"


@pytest.mark.parametrize(
    "change",
    [{"temperature": 0.9}, {"top_p": 0.5}, {"max_tokens": 64}, {"model": "gpt-judge-other"}],
)
def test_verdict_cache_key_holds_every_generation_setting(store, openai_server, change):
    write_qa_run(store, "qa")
    openai_server.served_model = SERVED
    judge_run(store, "qa", config(openai_server))
    assert openai_server.counts["total"] == 5

    summary = judge_run(store, "qa", config(openai_server, **change))
    assert openai_server.counts["total"] == 10  # nothing reused from other settings
    sent = openai_server.requests[-1]
    settings = {"model": MODEL, "temperature": 0.0, "top_p": 1.0, "max_tokens": None} | change
    assert (sent.model, sent.temperature, sent.top_p, sent.max_tokens) == tuple(settings.values())
    again = judge_run(store, "qa", config(openai_server, **change))
    assert openai_server.counts["total"] == 10 and again["http_calls"] == 0
    for verdict in read_verdicts(store, "qa"):
        assert verdict["cached"] and verdict["served_model"] == SERVED
        assert verdict["judge_model"] == settings["model"]
        assert {k: verdict[k] for k in ("temperature", "top_p", "max_tokens")} == {
            k: settings[k] for k in ("temperature", "top_p", "max_tokens")
        }
        assert verdict["prompt_version"] == builtin_prompts()["qa"].version
    assert summary["temperature"] == settings["temperature"]
    assert summary["top_p"] == settings["top_p"] and summary["max_tokens"] == settings["max_tokens"]
    assert summary["served_models"] == [SERVED]


def test_verdict_cache_key_holds_the_prompt_version(store, openai_server, tmp_path):
    write_qa_run(store, "qa")
    judge_run(store, "qa", config(openai_server))
    builtin = builtin_prompts()["qa"]
    path = tmp_path / "prompts.json"
    entry = {"system": builtin.system, "user": builtin.user}
    path.write_text(json.dumps({"version": "renamed-1", "prompts": {"qa": entry}}))
    judge_run(store, "qa", config(openai_server), custom_protocol(load_prompts(path)))
    assert openai_server.counts["total"] == 10
    assert {v["prompt_version"] for v in read_verdicts(store, "qa")} == {"renamed-1"}


def test_a_refusal_also_stops_verdicts_waiting_to_retry(store, openai_server):
    write_qa_run(store, "qa", QA_ROWS[:2])
    openai_server.when("what animal runs?", rate_limited(retry_after=30), forever=True)
    openai_server.when("what animal barks?", out_of_quota())
    cfg = config(openai_server, concurrency=2, max_wait=30)
    started = time.monotonic()
    with pytest.raises(JudgeError, match="insufficient_quota"):
        judge_run(store, "qa", cfg)
    assert time.monotonic() - started < 5
