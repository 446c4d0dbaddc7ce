"""Judge protocols: importing the reference protocol from a checkout of the reference scripts
(a fake one, written by tests/reference_repo.py), hash checks, byte-identical requests against
the reference scripts run on the same predictions, the reference reply rule, and reports that
say whether they are comparable with the paper.

With ``VIDEOPANDA_REFERENCE_REPO`` set to a real checkout of the reference repository, the
last test also imports it without ``--allow-modified`` and compares our requests with its
scripts' (skipped otherwise: the tests have no network).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.openai_server import FAKE_KEY
from tests.openai_server import openai_server as openai_server_fixture  # noqa: F401
from tests.reference_repo import (
    SCRIPTS,
    run_reference_script,
    script_text,
    write_reference_repo,
)
from tests.test_judge import KEY_ENV, _jsonl, write_qa_run, write_vcg_run
from videopanda_cluster.cli import app
from videopanda_cluster.eval import layout, protocol
from videopanda_cluster.eval.judge import judge_run, protocol_config
from videopanda_cluster.eval.protocol import (
    ProtocolError,
    builtin_protocol,
    differences_from_reference,
    import_reference,
    load_protocol,
    protocol_key,
    save_protocol,
)
from videopanda_cluster.eval.replies import ReplyError, parse_reply, parse_reply_as_reference
from videopanda_cluster.eval.report import build_report
from videopanda_cluster.storage.local import LocalStore

DIMENSIONS = tuple(SCRIPTS)
HOSTILE = [  # values a template must not re-read: placeholders, braces, quotes, newlines
    ("what is {answer}?", "it's {pred}", "{'score': 5}"),
    ("café\nnext line", "naïve 'quoted' \"double\"", "  spaced  "),
]


@pytest.fixture
def fake_repo(tmp_path) -> Path:
    return write_reference_repo(tmp_path / "reference")


@pytest.fixture
def own_hashes(fake_repo) -> dict[str, str]:
    """The fake repository's prompt hashes, as if they were the shipped reference's."""
    imported = import_reference(fake_repo, allow_modified=True)
    return imported.template_hashes()


@pytest.fixture
def as_reference(monkeypatch, own_hashes) -> None:
    """Make the fake repository's prompts the reference's for the comparison."""
    monkeypatch.setattr(protocol, "REFERENCE_PROMPT_HASHES", own_hashes)


@pytest.fixture(autouse=True)
def judge_key(monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), prog_name="videopanda")


# --- import --------------------------------------------------------------------------------


def test_import_reads_prompts_model_temperature_and_the_consistency_input(fake_repo, own_hashes):
    imported = import_reference(fake_repo, expected=own_hashes)
    assert imported.name == "reference" and imported.replies == "reference"
    assert imported.model == "gpt-3.5-turbo"
    assert imported.temperature is None and imported.top_p is None  # not sent: API defaults
    assert imported.prompts.reference_consistency_bug  # question2 = sample['Q1']
    assert imported.source["modified"] == [] and imported.source["files"] == SCRIPTS
    qa = imported.prompts["qa"]
    assert qa.system.startswith("You grade short answers") and "{question}" in qa.user
    assert "such as {'pred': 'no', 'score': 1}." in qa.user  # literal braces kept as they are
    consistency = imported.prompts.prompts["consistency"]
    assert "Question 1: {question}\nQuestion 2: {question2}\n" in consistency.user
    # applied: question 2 shows Q1, as the reference script sends it
    assert "Question 2: {question}\n" in imported.prompts["consistency"].user


def test_import_refuses_prompts_that_differ_unless_allowed(fake_repo, own_hashes, tmp_path):
    with pytest.raises(ProtocolError, match="pass --allow-modified") as refused:
        import_reference(fake_repo)  # the shipped hashes: the fake wording is not the reference's
    for dimension, rel in SCRIPTS.items():
        assert f"{dimension} ({rel})" in str(refused.value)
    (fake_repo / SCRIPTS["detail"]).write_text(script_text("detail", system="Edited."))
    with pytest.raises(ProtocolError) as refused:
        import_reference(fake_repo, expected=own_hashes)
    assert "detail (" in str(refused.value) and "qa (" not in str(refused.value)
    allowed = import_reference(fake_repo, expected=own_hashes, allow_modified=True)
    assert allowed.source["modified"] == ["detail"]
    assert allowed.prompts["detail"].system == "Edited."

    store = tmp_path / "store"
    out = _cli("eval", "protocol", "import", str(fake_repo), "--output", str(store))
    assert out.exit_code == 2 and "--allow-modified" in out.output
    assert not (store / protocol_key("reference")).exists()
    out = _cli(
        "eval", "protocol", "import", str(fake_repo), "--output", str(store), "--allow-modified"
    )
    assert out.exit_code == 0, out.output
    assert (store / protocol_key("reference")).exists()
    assert "differs" in out.output and "gpt-3.5-turbo" in out.output


@pytest.mark.parametrize(
    ("dimension", "text", "match"),
    [
        ("qa", "print('no judge here')\n", "one chat-completion call, found 0"),
        ("qa", "def broken(:\n", "not readable Python"),
        ("context", script_text("context", extra="temperature=0.7"), "different judge settings"),
        ("consistency", script_text("consistency", question2_key="Q3"), "question 2"),
        (
            "qa",
            script_text("qa").replace("f'Question: {question}", "f'Question: {question!r}"),
            "unsupported f-string field",
        ),
        ("qa", script_text("qa").replace("{pred}", "{other}"), "unsupported f-string field"),
    ],
)
def test_import_explains_what_it_cannot_read(tmp_path, dimension, text, match):
    repo = write_reference_repo(tmp_path / "reference", **{dimension: text})
    with pytest.raises(ProtocolError, match=match):
        import_reference(repo, allow_modified=True)


def test_import_needs_every_script(fake_repo):
    (fake_repo / SCRIPTS["temporal"]).unlink()
    with pytest.raises(ProtocolError, match="no judge script for temporal"):
        import_reference(fake_repo, allow_modified=True)
    with pytest.raises(ProtocolError, match="not a directory"):
        import_reference(fake_repo / "nowhere")


def test_a_stored_protocol_round_trips_and_an_edited_one_is_refused(fake_repo, tmp_path):
    store = LocalStore(tmp_path / "store")
    imported = import_reference(fake_repo, allow_modified=True)
    key = save_protocol(store, imported)
    loaded = load_protocol(store, "reference")
    assert loaded.template_hashes() == imported.template_hashes()
    assert (loaded.model, loaded.temperature, loaded.replies) == (
        "gpt-3.5-turbo",
        None,
        "reference",
    )
    assert loaded.prompts["consistency"].user == imported.prompts["consistency"].user
    data = json.loads(store.get(key))
    data["prompts"]["qa"]["user"] += " Be kind."
    store.put(key, json.dumps(data).encode())
    with pytest.raises(ProtocolError, match="edited after its import"):
        load_protocol(store, "reference")
    with pytest.raises(ProtocolError, match="import it first"):
        load_protocol(store, "other")
    with pytest.raises(ProtocolError, match="protocol name"):
        load_protocol(store, "../escape")


# --- requests ------------------------------------------------------------------------------


def _reference_calls(store: LocalStore, run_id: str, repo: Path, work: Path) -> list[dict]:
    """Every call the checkout's judge scripts make when run on the run's prediction files."""
    files = import_reference(repo, allow_modified=True).source["files"]
    calls = []
    for subset, dimensions in layout.DIMENSIONS.items():
        key = layout.predictions_key(run_id, subset)
        if not store.exists(key):
            continue
        predictions = work / run_id / f"{subset}.jsonl"
        predictions.parent.mkdir(parents=True, exist_ok=True)
        predictions.write_bytes(store.get(key))
        for dimension in dimensions:
            calls += run_reference_script(repo / files[dimension], predictions, work / run_id)
    return calls


def _canonical(bodies: list[dict]) -> list[str]:
    return sorted(json.dumps(body, ensure_ascii=False, sort_keys=True) for body in bodies)


def test_requests_under_the_imported_protocol_equal_the_reference_scripts(
    fake_repo, own_hashes, tmp_path, openai_server
):
    store = LocalStore(tmp_path / "store")
    write_qa_run(store, "qa", rows=[("what animal runs?", "dog", "dog"), *HOSTILE])
    write_vcg_run(store, "vcg")
    imported = import_reference(fake_repo, expected=own_hashes)
    cfg = protocol_config(
        imported, base_url=openai_server.base_url, api_key_env=KEY_ENV, max_attempts=1
    )
    assert (cfg.model, cfg.temperature, cfg.top_p) == ("gpt-3.5-turbo", None, None)
    judge_run(store, "qa", cfg, imported)
    judge_run(store, "vcg", cfg, imported)
    ours = [seen.body for seen in openai_server.requests]
    assert all(set(body) == {"model", "messages"} for body in ours)  # nothing else sent
    theirs = _reference_calls(store, "qa", fake_repo, tmp_path / "ref")
    theirs += _reference_calls(store, "vcg", fake_repo, tmp_path / "ref")
    assert all(set(call) == {"model", "messages"} for call in theirs)
    assert len(ours) == len(theirs) == 3 + 3 * 3 + 2 + 3
    assert _canonical(ours) == _canonical(theirs)  # byte for byte, as JSON strings
    # Q1 twice: the consistency requests never show a second question
    consistency = [b for b in ours if "Question 1: " in b["messages"][1]["content"]]
    for body in consistency:
        user = body["messages"][1]["content"]
        q1 = user.split("Question 1: ")[1].split("\n")[0]
        assert f"Question 2: {q1}\n" in user
    # the built-in protocol sends its temperature and top-p, and other words
    common = {"base_url": openai_server.base_url, "api_key_env": KEY_ENV}
    judge_run(store, "qa", protocol_config(builtin_protocol(), model="m", **common))
    assert openai_server.requests[-1].body.keys() == {"model", "messages", "temperature", "top_p"}


# --- replies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "dimension", "builtin", "reference"),
    [
        ("{'pred': 'yes', 'score': 4}", "qa", ("yes", 4), ("yes", 4)),
        ("Sure! {'pred': 'yes', 'score': 4}", "qa", ("yes", 4), "not a Python literal"),
        ("{'score': '4'}", "context", (None, 4), (None, 4)),
        ("{'pred': 'no', 'score': '4.8'}", "qa", ("no", 4), (None, 0)),
        ("{'score': '4.8'}", "correctness", (None, 4), "not an integer"),
        ("{'score': 7}", "temporal", "outside 0..5", (None, 7)),
        ("{'score': -1}", "detail", "outside 0..5", (None, -1)),
        ("{'score': True}", "detail", "not a number", (None, 1)),
        ("{'pred': 'maybe', 'score': 2}", "qa", "neither yes nor no", (None, 2)),
        ("{'score': 4.8}", "consistency", (None, 4), (None, 4)),
        ("['score', 4]", "context", "no dict literal", "not a dict"),
    ],
)
def test_the_two_reply_rules(text, dimension, builtin, reference):
    for parse, expected in ((parse_reply, builtin), (parse_reply_as_reference, reference)):
        if isinstance(expected, str):
            with pytest.raises(ReplyError, match=expected):
                parse(text, dimension)
        else:
            assert parse(text, dimension) == expected


def test_the_reference_rule_is_used_under_the_imported_protocol(
    fake_repo, own_hashes, tmp_path, openai_server
):
    store = LocalStore(tmp_path / "store")
    write_qa_run(store, "qa", rows=[("q?", "a", "a")])
    imported = import_reference(fake_repo, expected=own_hashes)
    cfg = protocol_config(
        imported, base_url=openai_server.base_url, api_key_env=KEY_ENV, max_attempts=1
    )
    from tests.openai_server import bad_reply

    openai_server.script(bad_reply("{'pred': 'yes', 'score': 9}"))
    summary = judge_run(store, "qa", cfg, imported)
    assert summary["dimensions"]["qa"]["mean_score"] == 9  # the reference keeps it
    openai_server.script(bad_reply("{'pred': 'yes', 'score': 9}"))
    builtin = protocol_config(builtin_protocol(), model="m", base_url=openai_server.base_url,
                              api_key_env=KEY_ENV, max_attempts=1)  # fmt: skip
    assert judge_run(store, "qa", builtin)["dimensions"]["qa"]["failed"] == 1


# --- reports -------------------------------------------------------------------------------


def _vcg_report(store: LocalStore, run_id: str, cfg, chosen) -> dict:
    """A judged run of the Video-ChatGPT benchmark that covers its whole split."""
    write_vcg_run(store, run_id)
    items = []
    for subset in ("generic", "temporal", "consistency"):
        lines = layout.json_lines(store.get(layout.predictions_key(run_id, subset)), subset)
        items += [
            {"id": row["id"], "subset": subset, "video_name": row["video_name"], "status": "ok",
             "uri": None, "question": row.get("Q") or row["Q1"], "answer": row["A"]}
            for row in lines
        ]  # fmt: skip
    run = {"benchmark": "vcgbench", "run_id": run_id, "data_root": "/data", "counts": {}}
    store.put(layout.run_key(run_id, "run.json"), json.dumps(run).encode())
    store.put(layout.run_key(run_id, "items.jsonl"), _jsonl(items))
    judge_run(store, run_id, cfg, chosen)
    return build_report(store, run_id, sample_items=0, n_resamples=50)


def test_reports_are_comparable_only_under_the_reference_protocol_on_the_whole_split(
    fake_repo, own_hashes, as_reference, tmp_path, openai_server
):
    store = LocalStore(tmp_path / "store")
    imported = import_reference(fake_repo)  # the fake prompts now hash as the reference's
    common = {"base_url": openai_server.base_url, "api_key_env": KEY_ENV, "max_attempts": 1}
    report = _vcg_report(store, "ref", protocol_config(imported, **common), imported)
    paper = report["paper"]
    assert paper["differences"] == [] and paper["comparable"] is True
    assert report["judge"]["protocol"]["name"] == "reference"
    assert report["judge"]["protocol"]["temperature"] is None
    markdown = store.get(layout.run_key("ref", "report.md")).decode()
    assert "Comparable: judged under the reference protocol" in markdown
    assert "Not comparable" not in markdown
    assert "| judge temperature | not sent (the API's default) |" in markdown.replace("\\", "")

    builtin = builtin_protocol()
    report = _vcg_report(store, "own", protocol_config(builtin, model="gpt-x", **common), builtin)
    paper = report["paper"]
    assert paper["comparable"] is False
    text = "; ".join(paper["differences"])
    for expected in (
        "judge prompts of correctness, detail, context, temporal, consistency: builtin wording",
        "judge model gpt-x (reference: gpt-3.5-turbo)",
        "temperature 0 sent",
        "top_p 1 sent",
        "the consistency prompt shows Q1 and Q2 (reference: Q1 twice)",
        "replies read by the builtin rule",
    ):
        assert expected in text
    page = store.get(layout.run_key("own", "report.html")).decode()
    section = page.split('<section id="paper">')[1].split("</section>")[0]
    assert '<p class="warning">Not comparable with the paper: judge prompts of' in section
    markdown = store.get(layout.run_key("own", "report.md")).decode()
    assert "**Not comparable with the paper: " in markdown


def test_differences_cover_modified_prompts_an_unrecorded_protocol_and_partial_runs(
    fake_repo, own_hashes, as_reference, tmp_path, openai_server
):
    (fake_repo / SCRIPTS["qa"]).write_text(script_text("qa", system="Edited."))
    modified = import_reference(fake_repo, allow_modified=True)
    store = LocalStore(tmp_path / "store")
    write_qa_run(store, "qa")
    cfg = protocol_config(modified, base_url=openai_server.base_url, api_key_env=KEY_ENV)
    judge_run(store, "qa", cfg, modified)
    record = json.loads(store.get(layout.run_key("qa", "judge.json")))["protocol"]
    assert record["reference_prompts"]["qa"] is False
    assert differences_from_reference(record, ["qa"]) == [
        "judge prompts of qa: reference wording, not the reference's"
    ]
    assert differences_from_reference(None, ["qa"])[0].startswith("the judge protocol is not")
    # a run of a few msvd-qa items: the paper's split is larger
    run = {"benchmark": "msvd-qa", "run_id": "qa", "counts": {}}
    store.put(layout.run_key("qa", "run.json"), json.dumps(run).encode())
    items = [{"id": str(i), "subset": "qa", "status": "ok", "uri": None} for i in range(5)]
    store.put(layout.run_key("qa", "items.jsonl"), _jsonl(items))
    report = build_report(store, "qa", sample_items=0, n_resamples=50)
    assert report["paper"]["comparable"] is False and report["coverage"]["partial"]


# --- a real checkout (opt-in) --------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("VIDEOPANDA_REFERENCE_REPO"),
    reason="set VIDEOPANDA_REFERENCE_REPO to a checkout of the reference repository",
)
def test_a_real_reference_checkout(tmp_path, openai_server):
    repo = Path(os.environ["VIDEOPANDA_REFERENCE_REPO"])
    imported = import_reference(repo)  # the shipped hashes: refused if its prompts differ
    store = LocalStore(tmp_path / "store")
    write_qa_run(store, "qa", rows=HOSTILE)
    write_vcg_run(store, "vcg")
    cfg = protocol_config(
        imported, base_url=openai_server.base_url, api_key_env=KEY_ENV, max_attempts=1
    )
    for run_id in ("qa", "vcg"):
        judge_run(store, run_id, cfg, imported)
    ours = [seen.body for seen in openai_server.requests]
    theirs = _reference_calls(store, "qa", repo, tmp_path / "ref")
    theirs += _reference_calls(store, "vcg", repo, tmp_path / "ref")
    assert all(set(body) == {"model", "messages"} for body in ours)
    assert len(ours) == len(theirs) == len(HOSTILE) + 3 * 3 + 2 + 3
    assert _canonical(ours) == _canonical(theirs)


def test_the_cli_judges_under_an_imported_protocol(fake_repo, tmp_path, openai_server):
    store = tmp_path / "store"
    write_qa_run(LocalStore(store), "qa")
    common = ["--output", str(store), "--base-url", openai_server.base_url]
    common += ["--api-key-env", KEY_ENV]
    out = _cli("eval", "judge", "qa", "--protocol", "reference", *common)
    assert out.exit_code == 2 and "import it first" in out.output
    imported = _cli(
        "eval", "protocol", "import", str(fake_repo), "--output", str(store), "--allow-modified"
    )
    assert imported.exit_code == 0, imported.output
    out = _cli("eval", "judge", "qa", "--protocol", "reference", "--prompts", "p.json", *common)
    assert out.exit_code == 2 and "--protocol builtin" in out.output
    out = _cli("eval", "judge", "qa", *common)  # builtin: a model must be named
    assert out.exit_code == 2 and "name the judge model" in out.output
    out = _cli("eval", "judge", "qa", "--protocol", "reference", *common)
    assert out.exit_code == 0, out.output
    assert {seen.model for seen in openai_server.requests} == {"gpt-3.5-turbo"}
    assert all(seen.body.keys() == {"model", "messages"} for seen in openai_server.requests)
    summary = json.loads((store / layout.run_key("qa", "judge.json")).read_text())
    assert summary["protocol"]["name"] == "reference"
    assert summary["protocol"]["source"]["modified"] == list(SCRIPTS)
    shown = _cli("eval", "protocol", "show", "reference", "--output", str(store))
    assert shown.exit_code == 0 and "not sent (the API's default)" in shown.output
