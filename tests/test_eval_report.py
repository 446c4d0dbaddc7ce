"""``build_report`` on synthetic runs written to a LocalStore exactly as ``eval/layout.py`` says.

The QA run mixes answered, failed, missing and unpredicted items, failed verdicts and hostile
text; every number below is computed by hand from the rows written here.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videopanda_cluster.eval.layout import predictions_key, run_key
from videopanda_cluster.eval.metrics import bootstrap_ci
from videopanda_cluster.eval.report import REPORT_FILES, build_report
from videopanda_cluster.storage.local import LocalStore

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_QUESTION = "what is <script>alert('q')</script> doing?"
HOSTILE_PRED = '<img src=x onerror="alert(1)"> & more'
RESAMPLES = 400


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _item(id_: str, subset: str, video: str | None, status: str = "ok", **fields) -> dict:
    row = {
        "id": id_,
        "subset": subset,
        "video_name": video and Path(video).stem,
        "video_id": video and f"vid-{Path(video).stem}",
        "uri": video,
        "question": f"question {id_}?",
        "question2": None,
        "answer": f"answer {id_}",
        "question_type": None,
        "status": status,
        "error": None,
        "message": None,
        "sampled_indices": None,
    }
    return {**row, **fields}


def _verdict(
    id_: str, subset: str, dimension: str, score: int | None, pred: str | None = None
) -> dict:
    failed = score is None
    return {
        "id": id_,
        "subset": subset,
        "dimension": dimension,
        "status": "failed" if failed else "ok",
        "pred": pred,
        "score": score,
        "raw": "garbled" if failed else json.dumps({"pred": pred, "score": score}),
        "error": "unparseable reply" if failed else None,
        "attempts": 3 if failed else 1,
        "cached": False,
        "judge_model": "judge-test",
        "prompt_version": "v1",
        "prompt_hash": "abc123",
    }


def _write_run(store: LocalStore, run_id: str, benchmark: str, items, predictions, verdicts):
    subsets = list(predictions)
    counts = {
        "items": len(items),
        "answered": sum(len(rows) for rows in predictions.values()),
        "missing": sum(i["status"] == "missing" for i in items),
        "failed": sum(i["status"] == "error" for i in items),
    }
    run = {
        "benchmark": benchmark,
        "run_id": run_id,
        "job_id": f"job-{run_id}",
        "data_root": "/data",
        "model": {"name": "video-panda-7b", "num_frames": 8},
        "generation": {"do_sample": False, "max_new_tokens": 64},
        "counts": counts,
        "subsets": subsets,
    }
    store.put(run_key(run_id, "run.json"), json.dumps(run).encode())
    store.put(run_key(run_id, "items.jsonl"), _jsonl(items))
    for subset, rows in predictions.items():
        store.put(predictions_key(run_id, subset), _jsonl(rows))
    if verdicts is not None:
        store.put(run_key(run_id, "verdicts.jsonl"), _jsonl(verdicts))
        judge = {
            "dimensions": {},
            "judge_model": "judge-test",
            "prompt_hashes": {},
            "http_calls": 9,
        }
        store.put(run_key(run_id, "judge.json"), json.dumps(judge).encode())


# (id, video, answer, prediction, question type, verdict (pred, score) or None = failed)
QA_ANSWERED = [
    ("1", "square_500x500_300f_30fps.mp4", "a dog", "The dog.", "what", ("yes", 5)),
    ("2", "square_500x500_300f_30fps.mp4", "red", "blue", "what", ("no", 1)),
    ("3", "vga_640x480_150f_30fps.mkv", "two cats", "three cats", "how many", None),
    ("4", "vga_640x480_150f_30fps.mkv", "running", "running", "what", ("yes", 4)),
    ("5", "qcif_176x144_5f_10fps.mp4", "<b>x</b>", HOSTILE_PRED, "who", ("no", 0)),
    ("9", "GONE", "no", "yes", None, ("yes", 3)),  # the video was removed after the run
    ("11", "az://nocontainer/clip.mp4", "cat", "a cat", None, ("yes", 2)),
]
QA_FRAMES = {"1": 8, "2": 8, "3": 8, "4": 8, "5": 5, "9": 0, "11": 0}


@pytest.fixture(scope="module")
def qa_store(corpus, tmp_path_factory) -> LocalStore:
    root = tmp_path_factory.mktemp("qa-run")
    store = LocalStore(root / "store")

    def uri(video: str) -> str:
        if video == "GONE":
            return str(root / "deleted.mp4")
        return video if video.startswith("az://") else str(corpus / video)

    items = [
        _item(i, "qa", uri(v), answer=a, question_type=t)
        | ({"question": HOSTILE_QUESTION} if i == "5" else {})
        | ({"sampled_indices": [0, 1, 2]} if i == "4" else {})  # not the frames decoded now
        for i, v, a, _, t, _ in QA_ANSWERED
    ]
    items += [
        _item("6", "qa", str(corpus / "x.mp4"), "error", error="truncated", question_type="what"),
        _item("7", "qa", None, "missing"),
        _item("8", "qa", str(corpus / "y.mp4"), "error", error="not_a_video"),
        _item("10", "qa", uri(QA_ANSWERED[0][1])),  # ok, but no prediction line
    ]
    preds = [
        {"id": i, "question": f"question {i}?", "answer": a, "pred": p}
        for i, _, a, p, _, _ in QA_ANSWERED
    ]
    verdicts = [
        _verdict(i, "qa", "qa", None if v is None else v[1], None if v is None else v[0])
        for i, _, _, _, _, v in QA_ANSWERED
    ]
    verdicts.append(_verdict("6", "qa", "qa", 5, "yes"))  # not an answered item: ignored
    _write_run(store, "qa1", "msvd-qa", items, {"qa": preds}, verdicts)
    _write_run(store, "qa-nojudge", "msvd-qa", items, {"qa": preds}, None)
    return store


@pytest.fixture(scope="module")
def qa_report(qa_store) -> dict:
    return build_report(qa_store, "qa1", sample_items=10, seed=0, n_resamples=RESAMPLES)


@pytest.fixture(scope="module", autouse=True)
def _no_azure_credentials():
    """az:// frames must fail to open here (a placeholder), never reach a real account."""
    with pytest.MonkeyPatch.context() as mp:
        for name in (
            "AZURE_STORAGE_CONNECTION_STRING",
            "AZURE_STORAGE_ACCOUNT_URL",
            "AZURE_STORAGE_ACCOUNT",
        ):
            mp.delenv(name, raising=False)
        yield mp


def test_qa_counts_exclude_failures(qa_report):
    counts = qa_report["counts"]
    assert {k: counts[k] for k in ("items", "answered", "missing", "decode_failed")} == {
        "items": 11,
        "answered": 7,
        "missing": 1,
        "decode_failed": 2,
    }
    assert counts["decode_failures"] == {"not_a_video": 1, "truncated": 1}
    assert counts["ok_without_prediction"] == 1
    assert counts["judge_failed"] == 1
    assert qa_report["judge"]["unmatched_verdicts"] == 1
    assert qa_report["judge"]["judge_model"] == "judge-test"


def test_qa_accuracy_and_score_by_hand(qa_report):
    qa = qa_report["metrics"]["qa"]
    # ok verdicts: yes 1, 4, 9, 11; no 2, 5; item 3 failed and is not scored
    assert (qa["judged"], qa["failed"], qa["not_judged"]) == (6, 1, 0)
    assert (qa["yes"], qa["no"]) == (4, 2)
    assert qa["accuracy"] == pytest.approx(100 * 4 / 6)
    assert qa["mean_score"] == pytest.approx((5 + 1 + 4 + 0 + 3 + 2) / 6)
    assert qa["videos"] == 5
    # the intervals resample videos: the same calls by hand give the same numbers
    videos = ["vid-square", "vid-square", "vid-vga", "vid-qcif", "vid-deleted", "vid-clip"]
    marks, scores = [100.0, 0.0, 100.0, 0.0, 100.0, 100.0], [5.0, 1.0, 4.0, 0.0, 3.0, 2.0]
    expected = bootstrap_ci(marks, videos, n_resamples=RESAMPLES, seed=0)
    assert qa["accuracy_ci"] == pytest.approx(list(expected))
    expected = bootstrap_ci(scores, videos, n_resamples=RESAMPLES, seed=0)
    assert qa["mean_score_ci"] == pytest.approx(list(expected))
    assert expected != bootstrap_ci(scores, None, n_resamples=RESAMPLES, seed=0)
    assert qa["accuracy_ci"][0] <= qa["accuracy"] <= qa["accuracy_ci"][1]


def test_qa_offline_metrics_over_answered_items(qa_report):
    offline = qa_report["offline"]["qa"]
    assert offline["answered"] == 7
    # exact: 1 (dog = dog), 4, 11 (cat = cat); item 3 has F1 0.5
    assert offline["exact_match"] == pytest.approx(100 * 3 / 7)
    assert offline["token_f1"] == pytest.approx(100 * 3.5 / 7)


def test_qa_question_types(qa_report):
    types = qa_report["question_types"]["qa"]
    assert set(types) == {"what", "how many", "who"}
    what = types["what"]
    assert what["counts"]["items"] == 4  # 1, 2, 4 answered; 6 failed to decode
    assert what["counts"]["decode_failed"] == 1
    assert what["judged"]["qa"]["accuracy"] == pytest.approx(100 * 2 / 3)
    assert what["judged"]["qa"]["mean_score"] == pytest.approx(10 / 3)
    how_many = types["how many"]["judged"]["qa"]
    assert (how_many["judged"], how_many["failed"], how_many["accuracy"]) == (0, 1, None)


def test_qa_paper_comparison(qa_report, qa_store):
    paper = qa_report["paper"]
    assert paper["table"] == "Table 1"
    assert paper["source"]["arxiv"] == "2412.18609v2"
    panda = next(r for r in paper["rows"] if r["model"] == "Video-Panda")
    assert panda["values"] == {"accuracy": 64.7, "score": 3.8}
    assert paper["delta_vs_reference"]["accuracy"] == pytest.approx(100 * 4 / 6 - 64.7)
    markdown = qa_store.get(run_key("qa1", "report.md")).decode()
    assert "## Comparison with the paper (Table 1)" in markdown
    assert "| Video-Panda (paper) | 45M | yes | 64.7 | 3.8 |" in markdown
    assert "| Video-LLaVA (video-only data) | 425M | yes | 64.8 | – |" in markdown
    assert "66.7 \\[" in markdown  # 4 of 6, with its interval (brackets escaped)


def test_qa_failed_items_are_listed(qa_report, qa_store):
    """Every failed item, with its video, stage and reason; collapsible in HTML and Markdown."""
    rows = [(f["id"], f["video"], f["stage"], f["reason"]) for f in qa_report["failed_items"]]
    assert rows == [
        ("3", "vga_640x480_150f_30fps", "judge (qa)", "unparseable reply"),
        ("6", "x", "decode", "truncated"),
        ("7", "–", "missing video", "not found"),
        ("8", "y", "decode", "not_a_video"),
        ("10", "square_500x500_300f_30fps", "prediction", "no prediction line"),
    ]
    page = qa_store.get(run_key("qa1", "report.html")).decode()
    found = re.search(
        r"<details[^>]*><summary>Failed items \(5\)</summary><table>(.*?)</details>", page
    )
    assert found and found.group(1).count("<tr>") == 1 + 5
    assert "<td>8</td><td>qa</td><td>y</td><td>decode</td><td>not_a_video</td>" in found.group(1)
    markdown = qa_store.get(run_key("qa1", "report.md")).decode()
    block = markdown.split("<details><summary>Failed items (5)</summary>")[1].split("</details>")[0]
    assert "| 6 | qa | x | decode | truncated |" in block and block.count("\n| ") == 1 + 5


def test_coverage_warns_beside_the_paper_comparison(qa_report, qa_store, vcg_report):
    assert qa_report["coverage"] == {
        "items": 11, "split_items": 13157, "split_source": "published", "fraction": 11 / 13157,
        "partial": True,
    }  # fmt: skip
    warning = "Warning: this run covers 11 of the 13157 items of the msvd-qa test split (0.08%)"
    markdown = qa_store.get(run_key("qa1", "report.md")).decode()
    paper = markdown.split("## Comparison with the paper")[1]
    assert warning in paper.replace("\\", "")
    assert "| coverage | 11 / 13157 (0.08%) |" in markdown
    page = qa_store.get(run_key("qa1", "report.html")).decode()
    section = page.split('<section id="paper">')[1].split("</section>")[0]
    assert f'<p class="warning">{warning}' in section
    store, report = vcg_report  # a run of the benchmark's own files covers its split
    assert report["coverage"]["fraction"] == 1 and not report["coverage"]["partial"]
    markdown = store.get(run_key("vcg1", "report.md")).decode()
    assert "Warning" not in markdown
    # judged by an earlier version, which did not record its protocol
    assert report["paper"]["comparable"] is False
    assert "Not comparable with the paper: the judge protocol is not recorded" in markdown


def test_qa_outputs_written(qa_store):
    for name in REPORT_FILES:
        assert qa_store.exists(run_key("qa1", name)), name
    saved = json.loads(qa_store.get(run_key("qa1", "report.json")))
    assert saved["metrics"]["qa"]["yes"] == 4
    chart = Image.open(io.BytesIO(qa_store.get(run_key("qa1", "report.png"))))
    assert chart.format == "PNG"
    assert chart.width >= 400 and chart.height >= 200


def test_qa_samples_and_frames(qa_report):
    samples = {s["id"]: s for s in qa_report["samples"]}
    assert list(samples) == [row[0] for row in QA_ANSWERED]  # all 7, in file order
    assert {i: s["frames"]["count"] for i, s in samples.items()} == QA_FRAMES
    assert samples["9"]["frames"]["error"] == "not_found"
    assert "az://" in samples["11"]["uri"] and samples["11"]["frames"]["error"]
    assert samples["3"]["verdicts"]["qa"]["status"] == "failed"


def test_qa_html_escapes_untrusted_text(qa_store):
    page = qa_store.get(run_key("qa1", "report.html")).decode()
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;q&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; more" in page
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []
    assert page.count('class="note frames-note"') == 1
    assert "the run recorded frames [0, 1, 2]" in page


def test_sample_choice_is_seeded(qa_store):
    def picked(seed: int) -> list[str]:
        report = build_report(qa_store, "qa-nojudge", sample_items=3, seed=seed, n_resamples=50)
        return [s["id"] for s in report["samples"]]

    first = picked(0)
    assert len(first) == 3 and first == picked(0)
    assert any(picked(seed) != first for seed in (1, 2, 3))


def test_report_without_judge_run(qa_store):
    report = build_report(qa_store, "qa-nojudge", sample_items=0, n_resamples=50)
    assert report["metrics"] is None and report["judge"] is None
    assert report["counts"]["judge_failed"] is None
    assert report["offline"]["qa"]["exact_match"] == pytest.approx(100 * 3 / 7)
    assert report["paper"]["ours"]["values"] == {"accuracy": None, "score": None}
    markdown = qa_store.get(run_key("qa-nojudge", "report.md")).decode()
    assert "No judge run: offline metrics only." in markdown
    assert "| Video-Panda (paper) |" in markdown


@pytest.fixture(scope="module")
def vcg_report(corpus, tmp_path_factory) -> tuple[LocalStore, dict]:
    store = LocalStore(tmp_path_factory.mktemp("vcg-run"))
    v1, v2 = str(corpus / "hd_1280x720_90f_30fps.mp4"), str(corpus / "vfr_340x256_90f.mp4")
    items = [
        _item("0", "generic", v1),
        _item("1", "generic", v2),
        _item("0", "temporal", v1),
        _item("1", "temporal", v2, "error", error="timeout"),
        _item("0", "consistency", v2, question2="asked again?"),
    ]
    row = {"video_name": "v", "Q": "q", "A": "answer 0"}
    predictions = {
        "generic": [{**row, "id": "0", "pred": "answer 0"}, {**row, "id": "1", "pred": "other"}],
        "temporal": [{**row, "id": "0", "pred": "first this then that"}],
        "consistency": [
            {"id": "0", "video_name": "v", "Q1": "q", "Q2": "q2", "A": "answer 0"}
            | {"pred1": "answer 0", "pred2": "something else"}
        ],
    }
    verdicts = [
        _verdict("0", "generic", "correctness", 3),
        _verdict("0", "generic", "detail", 2),
        _verdict("0", "generic", "context", 4),
        _verdict("1", "generic", "correctness", 1),
        _verdict("1", "generic", "detail", None),
        _verdict("1", "generic", "context", 2),
        _verdict("0", "temporal", "temporal", 2),
        _verdict("0", "consistency", "consistency", 4),
    ]
    _write_run(store, "vcg1", "vcgbench", items, predictions, verdicts)
    return store, build_report(store, "vcg1", sample_items=2, seed=0, n_resamples=RESAMPLES)


def test_vcgbench_scores_by_dimension(vcg_report):
    store, report = vcg_report
    metrics = report["metrics"]
    expected = {"correctness": 2.0, "detail": 2.0, "context": 3.0, "temporal": 2.0}
    expected["consistency"] = 4.0
    assert {dim: m["mean_score"] for dim, m in metrics.items()} == pytest.approx(expected)
    assert metrics["detail"]["failed"] == 1 and metrics["detail"]["judged"] == 1
    assert "accuracy" not in metrics["correctness"]
    assert report["counts"]["decode_failures"] == {"timeout": 1}
    assert report["counts"]["subsets"]["temporal"] == {
        "items": 2,
        "answered": 1,
        "missing": 0,
        "decode_failed": 1,
        "decode_failures": {"timeout": 1},
        "ok_without_prediction": 0,
    }
    # consistency: one of its two predictions matches exactly
    assert report["offline"]["consistency"]["exact_match"] == pytest.approx(50.0)
    paper = report["paper"]
    assert paper["table"] == "Table 2"
    assert paper["ours"]["values"]["average"] == pytest.approx(13 / 5)
    assert paper["delta_vs_reference"]["average"] == pytest.approx(13 / 5 - 2.57)
    markdown = store.get(run_key("vcg1", "report.md")).decode()
    header = "| model | vision params | same training data | correctness | detail | context |"
    assert header in markdown
    assert (
        "| Video-Panda (paper) | 45M | yes | 2.74 | 2.47 | 3.01 | 2.26 | 2.36 | 2.57 |" in markdown
    )


def _render(html_path: Path, screenshot: Path) -> dict:
    """Run tests/render_report.mjs; fail (never skip) when its tools are missing."""
    node = shutil.which("node")
    needs = {
        "node on PATH": node is not None,
        str(CHROMIUM): CHROMIUM.exists(),
        "node_modules/playwright-core (npm ci)": (REPO / "node_modules/playwright-core").is_dir(),
    }
    missing = [name for name, ok in needs.items() if not ok]
    if missing:
        pytest.fail(f"report rendering needs {', '.join(missing)}; the test setup installs them")
    proc = subprocess.run(
        [node, str(REPO / "tests/render_report.mjs"), str(html_path), str(screenshot)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _render_clean(store: LocalStore, run_id: str, tmp_path: Path) -> dict:
    """Render the run's report.html; no errors, no requests, key elements present, a real page."""
    html_path, screenshot = tmp_path / "report.html", tmp_path / "screenshot.png"
    html_path.write_bytes(store.get(run_key(run_id, "report.html")))
    result = _render(html_path, screenshot)
    assert result["console_errors"] == [] and result["page_errors"] == []
    assert result["failed_requests"] == [] and result["blocked_requests"] == []
    assert all(result["elements"].values()), result["elements"]
    assert result["scripts"] == 0
    assert result["frame_images"] == result["frame_images_loaded"]
    assert result["chart_natural_width"] > 300
    image = Image.open(screenshot)
    assert image.format == "PNG" and image.width == 1200
    assert image.height == result["page_height"] > 900
    assert len(np.unique(np.asarray(image.convert("L")))) > 20  # not a blank page
    return result


def test_qa_html_renders_in_chromium(qa_store, qa_report, tmp_path):
    result = _render_clean(qa_store, "qa1", tmp_path)
    assert result["item_ids"] == [row[0] for row in QA_ANSWERED]
    assert result["frame_images_loaded"] == sum(QA_FRAMES.values())
    assert result["placeholders"] == 2


def test_vcgbench_html_renders_in_chromium(vcg_report, tmp_path):
    store, report = vcg_report
    result = _render_clean(store, "vcg1", tmp_path)
    assert result["items"] == 2 and result["placeholders"] == 0
    assert result["frame_images_loaded"] == sum(s["frames"]["count"] for s in report["samples"]) > 0


# A synthetic-corpus run with caption items: (id, video, type, reference, prediction). Facts
# (eval/caption_facts.py): c1 predicts 1 (red circle left ✓) of 2 true; c2 predicts 3 (blue
# square down ✗, yellow diamond still ✓ twice, the second unmatched) of 2 true; c3 predicts
# none of 1 true. Predicted 4, true 5, matched 2: precision 50%, recall 40%.
CAPTION_RUN = [
    ("c1", "v1", "caption", "A red circle moves left and a green triangle stays still.",
     "A red circle moves left."),
    ("c2", "v2", "caption", "A blue square moves up, then a yellow diamond appears and stays "
     "still.", "A blue square moves down and a yellow diamond stays still and a yellow diamond "
     "stays still."),
    ("c3", "v3", "caption", "A red circle moves left.", "two"),
    ("q1", "v1", "colour", "red", "red"),
]  # fmt: skip


@pytest.fixture(scope="module")
def caption_report(tmp_path_factory) -> tuple[LocalStore, dict]:
    store = LocalStore(tmp_path_factory.mktemp("caption-run"))
    items = [
        _item(i, "qa", f"/synth/{v}.mp4", answer=a, question_type=t)
        for i, v, t, a, _ in CAPTION_RUN
    ]
    items.append(
        _item("c4", "qa", "/synth/v4.mp4", "error", error="truncated", question_type="caption")
    )
    preds = [{"id": i, "question": "q", "answer": a, "pred": p} for i, _, _, a, p in CAPTION_RUN]
    _write_run(store, "cap1", "msvd-qa", items, {"qa": preds}, None)
    _write_run(store, "cap0", "msvd-qa", items[3:4], {"qa": preds[3:4]}, None)  # colour only
    return store, build_report(store, "cap1", sample_items=0, n_resamples=RESAMPLES)


def test_caption_fact_metrics_by_hand(caption_report):
    _, report = caption_report
    types = report["question_types"]["qa"]
    assert types["caption"]["counts"]["items"] == 4 and types["caption"]["counts"]["answered"] == 3
    facts = types["caption"]["caption_facts"]
    assert {k: facts[k] for k in ("answered", "videos", "captions")} == {
        "answered": 3,
        "videos": 3,
        "captions": 3,
    }
    counts = {k: facts[k] for k in ("predicted_facts", "true_facts", "matched_facts")}
    assert counts == {"predicted_facts": 4, "true_facts": 5, "matched_facts": 2}
    assert facts["fact_precision"] == pytest.approx(50.0)
    assert facts["fact_recall"] == pytest.approx(40.0)
    # each predicted (true) fact is a 0/100 value clustered by its video
    precision = bootstrap_ci([100, 100, 0, 0], ["vid-v1", "vid-v2", "vid-v2", "vid-v2"],
                             n_resamples=RESAMPLES, seed=0)  # fmt: skip
    recall = bootstrap_ci([100, 0, 100, 0, 0], ["vid-v1", "vid-v1", "vid-v2", "vid-v2", "vid-v3"],
                          n_resamples=RESAMPLES, seed=0)  # fmt: skip
    assert facts["fact_precision_ci"] == pytest.approx(list(precision))
    assert facts["fact_recall_ci"] == pytest.approx(list(recall))
    assert "caption_facts" not in types["colour"]  # other types keep their metrics only
    assert types["colour"]["offline"]["exact_match"] == pytest.approx(100.0)
    assert types["caption"]["offline"]["exact_match"] == pytest.approx(0.0)


def test_caption_fact_metrics_in_the_files(caption_report):
    store, report = caption_report
    saved = json.loads(store.get(run_key("cap1", "report.json")))
    assert saved["question_types"]["qa"]["caption"]["caption_facts"]["matched_facts"] == 2
    facts = report["question_types"]["qa"]["caption"]["caption_facts"]
    lo, hi = facts["fact_precision_ci"]
    markdown = store.get(run_key("cap1", "report.md")).decode()
    section = markdown.split("## By question type")[1].split("##")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = {tuple(c.strip() for c in line.strip("|").split(" | "))[1]: line for line in lines[2:]}
    assert headers[-2:] == ["fact precision % (95% CI)", "fact recall % (95% CI)"]
    caption = [c.strip() for c in rows["caption"].strip("|").split(" | ")]
    assert caption[-2] == f"50.0 \\[{lo:.1f}, {hi:.1f}\\]"
    assert caption[-1].startswith("40.0 \\[")
    colour = [c.strip() for c in rows["colour"].strip("|").split(" | ")]
    assert colour[-2:] == ["–", "–"]
    page = store.get(run_key("cap1", "report.html")).decode()
    assert "<th>fact precision % (95% CI)</th>" in page
    assert f"<td>50.0 [{lo:.1f}, {hi:.1f}]</td>" in page
    # a run without caption items keeps its question-type table as it was
    build_report(store, "cap0", sample_items=0, n_resamples=50)
    markdown = store.get(run_key("cap0", "report.md")).decode()
    assert "| subset | question type | items | answered | dimension |" in markdown
    assert "fact precision" not in markdown and "token F1 % |\n" in markdown
