"""The evaluation report (``eval report``): metrics with bootstrap CIs, paper comparison, HTML.

:func:`build_report` reads a run's files (see :mod:`.layout`) and writes ``report.json``,
``report.md``, ``report.png`` and a self-contained ``report.html`` next to them. Accuracy, exact
match, token F1 and caption fact precision and recall are in percent; scores on the judge's 0-5
scale. Intervals are 95% percentile bootstrap intervals that resample videos, so questions about
one video move together. Items that were missing, failed to decode or failed judging are counted,
never scored.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ..cluster.sources import open_uri
from ..storage.base import Store
from ..video.errors import VideoDecodeError
from ..video.extract import PreprocessOptions, extract_video
from .caption_facts import CaptionScore, score_caption
from .layout import BENCHMARKS, DIMENSIONS, QA_BENCHMARKS, json_lines, predictions_key, run_key
from .metrics import bootstrap_ci, exact_match, token_f1
from .paper import paper_table, split_items
from .protocol import differences_from_reference

REPORT_FILES = ("report.json", "report.md", "report.png", "report.html")
THUMBNAIL_SIZE = 112
UNITS = {
    "accuracy": "percent",
    "exact_match": "percent",
    "token_f1": "percent",
    "fact_precision": "percent",
    "fact_recall": "percent",
    "score": "judge scale 0-5",
}
_YES_NO_SUBSET = "qa"  # the only subset judged yes/no as well as scored


# ---------------------------------------------------------------------------- reading the run


@dataclass
class Answer:
    """An answered item: its ``items.jsonl`` row, prediction row and verdicts by dimension."""

    item: dict
    prediction: dict
    verdicts: dict[str, dict] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return _item_key(self.item)

    @property
    def video(self) -> str:
        """The cluster for the bootstrap: one video."""
        return str(self.item.get("video_id") or self.item.get("video_name"))

    @property
    def predicted(self) -> list[str]:
        """The answer texts: ``pred``, or ``pred1`` and ``pred2`` for consistency items."""
        if "pred" in self.prediction:
            return [str(self.prediction["pred"])]
        return [str(self.prediction["pred1"]), str(self.prediction["pred2"])]


@dataclass
class _RunFiles:
    run: dict
    items: list[dict]
    predictions: dict[tuple[str, str], dict]
    verdicts: list[dict] | None
    judge: dict | None


def _item_key(row: dict) -> tuple[str, str]:
    return (str(row["subset"]), str(row["id"]))


def _read_json(store: Store, key: str) -> dict:
    try:
        return json.loads(store.get(key))
    except KeyError:
        raise FileNotFoundError(f"{key} not found in {store.url}") from None


def _read_jsonl(store: Store, key: str) -> list[dict]:
    return json_lines(store.get(key), key)


def _load_run(store: Store, run_id: str) -> _RunFiles:
    run = _read_json(store, run_key(run_id, "run.json"))
    items = _read_jsonl(store, run_key(run_id, "items.jsonl"))
    predictions: dict[tuple[str, str], dict] = {}
    for key in store.list(run_key(run_id, "predictions/")):
        subset = key.rsplit("/", 1)[-1].removesuffix(".jsonl")
        if key == predictions_key(run_id, subset):
            predictions.update(((subset, str(row["id"])), row) for row in _read_jsonl(store, key))
    verdicts_key, judge_key = run_key(run_id, "verdicts.jsonl"), run_key(run_id, "judge.json")
    verdicts = _read_jsonl(store, verdicts_key) if store.exists(verdicts_key) else None
    judge = _read_json(store, judge_key) if store.exists(judge_key) else None
    return _RunFiles(run, items, predictions, verdicts, judge)


def load_answers(store: Store, run_id: str) -> tuple[dict, list[Answer]]:
    """A run's ``run.json`` and its answered items with their verdicts, in file order."""
    files = _load_run(store, run_id)
    return files.run, _answers(files)[0]


def _answers(files: _RunFiles) -> tuple[list[Answer], int]:
    """Answered items in file order with their verdicts, and the number of unmatched verdicts."""
    answers = [
        Answer(item, files.predictions[_item_key(item)])
        for item in files.items
        if item.get("status") == "ok" and _item_key(item) in files.predictions
    ]
    by_key = {answer.key: answer for answer in answers}
    unmatched = 0
    for verdict in files.verdicts or []:
        answer = by_key.get(_item_key(verdict))
        if answer is None:
            unmatched += 1
        else:
            answer.verdicts[str(verdict["dimension"])] = verdict  # a later line wins
    return answers, unmatched


# ------------------------------------------------------------------------------- computing


@dataclass(frozen=True)
class Bootstrap:
    n_resamples: int
    alpha: float
    seed: int

    def mean_ci(self, pairs: list[tuple[float, str]]) -> tuple[float | None, list[float] | None]:
        """Mean of (value, video) pairs and its interval over videos; ``None`` for no pairs."""
        if not pairs:
            return None, None
        values, videos = zip(*pairs, strict=True)
        low, high = bootstrap_ci(
            values, videos, n_resamples=self.n_resamples, alpha=self.alpha, seed=self.seed
        )
        return float(np.mean(values)), [low, high]


def _counts(items: Iterable[dict], answered: set[tuple[str, str]]) -> dict:
    """Items by outcome; decode failures also by reason code."""
    items = list(items)
    status = Counter(item.get("status") for item in items)
    reasons = Counter(
        str(item.get("error") or "unknown") for item in items if item.get("status") == "error"
    )
    n_answered = sum(_item_key(item) in answered for item in items)
    return {
        "items": len(items),
        "answered": n_answered,
        "missing": status["missing"],
        "decode_failed": status["error"],
        "decode_failures": dict(sorted(reasons.items())),
        "ok_without_prediction": status["ok"] - n_answered,
    }


def _judged(answers: list[Answer], dimension: str, yes_no: bool, boot: Bootstrap) -> dict:
    """Judge metrics of one dimension over ``answers``; failed verdicts are counted, not scored."""
    given = [(a, a.verdicts[dimension]) for a in answers if dimension in a.verdicts]
    ok = [(a, v) for a, v in given if v.get("status") == "ok"]
    values = [(judged_values(a, dimension), a.video) for a, _ in ok]
    scores = [(v["mean_score"], video) for v, video in values if "mean_score" in v]
    mean_score, score_ci = boot.mean_ci(scores)
    out = {
        "answered": len(answers),
        "videos": len({a.video for a in answers}),
        "judged": len(ok),
        "failed": len(given) - len(ok),
        "not_judged": len(answers) - len(given),
        "mean_score": mean_score,
        "mean_score_ci": score_ci,
    }
    if yes_no:
        marks = [(v["accuracy"], video) for v, video in values if "accuracy" in v]
        accuracy, accuracy_ci = boot.mean_ci(marks)
        yes = sum(value > 0 for value, _ in marks)
        out.update(yes=yes, no=len(marks) - yes, accuracy=accuracy, accuracy_ci=accuracy_ci)
    return out


def offline_values(a: Answer) -> dict[str, float]:
    """One answer's exact match and token F1 (percent) against its reference answer; a
    consistency item scores the mean over its two predictions."""
    reference = str(a.item.get("answer", ""))
    return {
        "exact_match": 100 * float(np.mean([exact_match(p, reference) for p in a.predicted])),
        "token_f1": 100 * float(np.mean([token_f1(p, reference) for p in a.predicted])),
    }


def judged_values(a: Answer, dimension: str) -> dict[str, float]:
    """One answer's successful verdict on ``dimension``: its score and, for a yes/no verdict,
    ``accuracy`` 100 (yes) or 0 (no); empty without one."""
    verdict = a.verdicts.get(dimension)
    if verdict is None or verdict.get("status") != "ok":
        return {}
    out = {} if verdict.get("score") is None else {"mean_score": float(verdict["score"])}
    if str(verdict.get("pred")).lower() in ("yes", "no"):
        out["accuracy"] = 100.0 * (str(verdict["pred"]).lower() == "yes")
    return out


def _offline(answers: list[Answer], boot: Bootstrap) -> dict:
    """Exact match and token F1 (percent) of the predictions against the reference answers."""
    values = [(offline_values(a), a.video) for a in answers]
    em = [(v["exact_match"], video) for v, video in values]
    f1 = [(v["token_f1"], video) for v, video in values]
    (em_value, em_ci), (f1_value, f1_ci) = boot.mean_ci(em), boot.mean_ci(f1)
    return {
        "answered": len(answers),
        "videos": len({a.video for a in answers}),
        "exact_match": em_value,
        "exact_match_ci": em_ci,
        "token_f1": f1_value,
        "token_f1_ci": f1_ci,
    }


def _subset_metrics(answers: list[Answer], subset: str, judged: bool, boot: Bootstrap) -> dict:
    """Offline metrics and, after a judge run, each of the subset's dimensions."""
    dims = DIMENSIONS.get(subset, ())
    return {
        "offline": _offline(answers, boot),
        "judged": (
            {dim: _judged(answers, dim, subset == _YES_NO_SUBSET, boot) for dim in dims}
            if judged
            else None
        ),
    }


def _caption_facts(answers: list[Answer], boot: Bootstrap) -> dict:
    """Caption fact precision and recall (percent, :mod:`.caption_facts`) of the predictions
    against the reference captions, micro-averaged: each predicted (true) fact is a value of
    100 if matched else 0, clustered by its video, so their mean is matched ÷ predicted (true)
    facts and its interval resamples videos."""
    total, precision, recall = CaptionScore(), [], []
    for a in answers:
        for predicted in a.predicted:
            score = score_caption(predicted, str(a.item.get("answer", "")))
            total += score
            precision += _facts_matched(score.matched, score.predicted, a.video)
            recall += _facts_matched(score.matched, score.true, a.video)
    (p_value, p_ci), (r_value, r_ci) = boot.mean_ci(precision), boot.mean_ci(recall)
    return {
        "answered": len(answers),
        "videos": len({a.video for a in answers}),
        "captions": total.captions,
        "predicted_facts": total.predicted,
        "true_facts": total.true,
        "matched_facts": total.matched,
        "fact_precision": p_value,
        "fact_precision_ci": p_ci,
        "fact_recall": r_value,
        "fact_recall_ci": r_ci,
    }


def _facts_matched(matched: int, facts: int, video: str) -> list[tuple[float, str]]:
    return [(100.0, video)] * matched + [(0.0, video)] * (facts - matched)


@dataclass(frozen=True)
class _TypeScorer:
    """Metrics a question type gets beside those every type gets (counts, offline, judged)."""

    key: str  # its entry in the type's record in report.json
    score: Callable[[list[Answer], Bootstrap], dict]
    columns: tuple[tuple[str, str], ...]  # (metric, header) in the question-type table


TYPE_SCORERS: dict[str, _TypeScorer] = {
    "caption": _TypeScorer(
        "caption_facts",
        _caption_facts,
        (
            ("fact_precision", "fact precision % (95% CI)"),
            ("fact_recall", "fact recall % (95% CI)"),
        ),
    ),
}


def _question_types(
    files: _RunFiles, answers: list[Answer], judged: bool, boot: Bootstrap
) -> dict[str, dict[str, dict]]:
    """Counts and metrics per (subset, question type), for items that have a type; a type in
    :data:`TYPE_SCORERS` gets its scorer's metrics too."""
    answered = {a.key for a in answers}
    groups: dict[tuple[str, str], list[dict]] = {}
    for item in files.items:
        if item.get("question_type") is not None:
            groups.setdefault((str(item["subset"]), str(item["question_type"])), []).append(item)
    out: dict[str, dict[str, dict]] = {}
    for (subset, qtype), items in sorted(groups.items()):
        keys = {_item_key(item) for item in items}
        chosen = [a for a in answers if a.key in keys]
        record = {"counts": _counts(items, answered)}
        record.update(_subset_metrics(chosen, subset, judged, boot))
        scorer = TYPE_SCORERS.get(qtype)
        if scorer is not None:
            record[scorer.key] = scorer.score(chosen, boot)
        out.setdefault(subset, {})[qtype] = record
    return out


def _our_values(benchmark: str, metrics: dict | None) -> tuple[dict, dict]:
    """Our numbers under the paper's metric names, with their intervals."""
    if benchmark in QA_BENCHMARKS:
        qa = (metrics or {}).get("qa") or {}
        values = {"accuracy": qa.get("accuracy"), "score": qa.get("mean_score")}
        return values, {"accuracy": qa.get("accuracy_ci"), "score": qa.get("mean_score_ci")}
    dims = [dim for subset in ("generic", "temporal", "consistency") for dim in DIMENSIONS[subset]]
    found = {dim: (metrics or {}).get(dim) or {} for dim in dims}
    values = {dim: found[dim].get("mean_score") for dim in dims}
    scored = [v for v in values.values() if v is not None]
    values["average"] = float(np.mean(scored)) if len(scored) == len(dims) else None
    return values, {dim: found[dim].get("mean_score_ci") for dim in dims}


def _paper_comparison(
    benchmark: str, metrics: dict | None, judge: dict | None, coverage: dict
) -> dict | None:
    """The paper's table for ``benchmark`` with our values and the difference to Video-Panda,
    and whether the two are comparable: ``differences`` lists each way this run's judging
    differs from the reference protocol; ``comparable`` also needs the whole split."""
    if benchmark not in BENCHMARKS:
        return None
    table = paper_table(benchmark)
    values, cis = _our_values(benchmark, metrics)
    reference = next(r for r in table["rows"] if r["model"] == table["reference_model"])
    delta = {m: _difference(values.get(m), reference["values"].get(m)) for m in table["metrics"]}
    differences = _judging_differences(metrics, judge)
    return {
        **table,
        "ours": {"values": values, "ci": cis},
        "delta_vs_reference": delta,
        "comparable": not differences and not coverage["partial"],
        "differences": differences,
    }


def _judging_differences(metrics: dict | None, judge: dict | None) -> list[str]:
    """How this run's verdicts differ from the reference protocol's over the whole split."""
    if judge is None or not metrics:
        return ["no judge run: the paper's numbers are judged"]
    out = differences_from_reference(judge["protocol"], metrics)
    failed = sum(m["failed"] for m in metrics.values())
    unjudged = sum(m["not_judged"] for m in metrics.values())
    if failed:
        out.append(f"{failed} verdicts failed (the reference retries until every item has one)")
    if unjudged:
        out.append(f"{unjudged} answered items were not judged")
    return out


def _difference(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else ours - theirs


def _flat_metrics(by_subset: dict[str, dict]) -> dict[str, dict] | None:
    """Judge metrics keyed by dimension (``None`` without a judge run)."""
    found = {
        dim: {"subset": subset, **values}
        for subset, metrics in by_subset.items()
        for dim, values in (metrics["judged"] or {}).items()
    }
    return found if any(m["judged"] is not None for m in by_subset.values()) else None


@dataclass(frozen=True)
class FailedItem:
    """One row of the failed-items table: an item (or one of its verdicts) with no score."""

    id: str
    subset: str
    video: str
    stage: str  # "missing video" | "decode" | "prediction" | "judge (<dimension>)"
    reason: str


def _failed_items(files: _RunFiles, answers: list[Answer]) -> list[FailedItem]:
    """Every item that failed at some stage, in ``items.jsonl`` order."""
    by_key = {answer.key: answer for answer in answers}
    failed = []
    for item in files.items:
        key, video = _item_key(item), str(item.get("video_name") or "–")

        def row(stage: str, reason: str, key=key, video=video) -> FailedItem:
            return FailedItem(key[1], key[0], video, stage, reason)

        status, message = item.get("status"), item.get("message")
        if status == "missing":
            failed.append(row("missing video", str(message or "not found")))
        elif status == "error":
            code = str(item.get("error") or "unknown")
            failed.append(row("decode", f"{code}: {message}" if message else code))
        elif key not in by_key:
            failed.append(row("prediction", "no prediction line"))
        else:
            failed += [
                row(f"judge ({dim})", str(v.get("error") or "failed"))
                for dim, v in by_key[key].verdicts.items()
                if v.get("status") != "ok"
            ]
    return failed


def _coverage(files: _RunFiles, benchmark: str) -> dict:
    """Items in this run ÷ items in the benchmark's test split: the published size where
    recorded, else the run's own benchmark files (a run of them covers them); unknown for
    imported predictions of a split whose size is not recorded."""
    items, published = len(files.items), split_items(benchmark)
    if published is not None:
        split, source = published, "published"
    elif files.run.get("data_root"):
        split, source = items, "benchmark files"
    else:
        split, source = None, None
    fraction = items / split if split else None
    return {
        "items": items,
        "split_items": split,
        "split_source": source,
        "fraction": fraction,
        "partial": fraction is None or fraction < 1,
    }


def _judge_summary(files: _RunFiles, metrics: dict | None, unmatched: int) -> dict | None:
    if files.verdicts is None:
        return None
    judge = files.judge or {}
    return {
        "judge_model": judge.get("judge_model"),
        "served_models": judge.get("served_models"),
        "protocol": judge.get("protocol"),
        "prompt_hashes": judge.get("prompt_hashes"),
        "http_calls": judge.get("http_calls"),
        "verdicts": len(files.verdicts),
        "failed": {dim: m["failed"] for dim, m in (metrics or {}).items()},
        "not_judged": {dim: m["not_judged"] for dim, m in (metrics or {}).items()},
        "unmatched_verdicts": unmatched,
        "judge_json_found": files.judge is not None,
    }


# --------------------------------------------------------------------------- sample frames


@dataclass
class _Frames:
    thumbnails: list[str]  # base64 JPEG
    sampled_indices: list[int]
    error: str | None = None


def _pick(answers: list[Answer], count: int, seed: int) -> list[Answer]:
    """A seeded sample of ``count`` answered items, in file order."""
    if count <= 0 or not answers:
        return []
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(answers), size=min(count, len(answers)), replace=False))
    return [answers[int(i)] for i in picks]


def _thumbnail(frame: np.ndarray) -> str:
    image = Image.fromarray(frame).resize(
        (THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _frames(uri: str | None, stores: dict) -> _Frames:
    """Decode the model's frames of one video as thumbnails; any failure becomes ``error``."""
    if not uri:
        return _Frames([], [], "no video uri")
    try:
        with open_uri(uri, stores) as source:
            extracted = extract_video(source, PreprocessOptions())
    except VideoDecodeError as exc:
        return _Frames([], [], exc.reason.value)
    except Exception as exc:  # the report shows a placeholder whatever went wrong
        return _Frames([], [], f"{type(exc).__name__}: {exc}")
    indices = list(extracted.provenance.sampled_indices)
    return _Frames([_thumbnail(f) for f in extracted.frames[: len(indices)]], indices)


def _sample_record(answer: Answer, frames: _Frames) -> dict:
    item = answer.item
    return {
        "id": str(item["id"]),
        "subset": item["subset"],
        "video_name": item.get("video_name"),
        "uri": item.get("uri"),
        "question_type": item.get("question_type"),
        "question": item.get("question"),
        "question2": item.get("question2"),
        "answer": item.get("answer"),
        "predictions": answer.predicted,
        "verdicts": {
            dim: _verdict_summary(answer.verdicts.get(dim))
            for dim in DIMENSIONS.get(str(item["subset"]), ())
        },
        "frames": {
            "count": len(frames.thumbnails),
            "sampled_indices": frames.sampled_indices,
            "recorded_indices": item.get("sampled_indices"),
            "error": frames.error,
        },
    }


def _verdict_summary(verdict: dict | None) -> dict | None:
    if verdict is None:
        return None
    return {key: verdict.get(key) for key in ("status", "pred", "score", "error")}


# ---------------------------------------------------------------------------- build + write


def build_report(
    store: Store,
    run_id: str,
    sample_items: int = 6,
    seed: int = 0,
    *,
    n_resamples: int = 2000,
) -> dict:
    """Compute the report of ``run_id``, write the four report files into ``store``, return it.

    ``seed`` drives both the bootstrap and the choice of the ``sample_items`` items shown with
    their frames in the HTML.
    """
    files = _load_run(store, run_id)
    boot = Bootstrap(n_resamples, 0.05, seed)
    answers, unmatched = _answers(files)
    judged = files.verdicts is not None
    answered = {a.key for a in answers}
    subsets = list(dict.fromkeys(str(item["subset"]) for item in files.items))
    by_subset = {
        s: _subset_metrics([a for a in answers if a.key[0] == s], s, judged, boot) for s in subsets
    }
    metrics = _flat_metrics(by_subset)
    benchmark = str(files.run.get("benchmark"))
    stores: dict = {}
    samples = [(a, _frames(a.item.get("uri"), stores)) for a in _pick(answers, sample_items, seed)]
    judge = _judge_summary(files, metrics, unmatched)
    coverage = _coverage(files, benchmark)
    report = {
        "run_id": run_id,
        "benchmark": benchmark,
        "run": {key: files.run.get(key) for key in ("job_id", "model", "generation", "counts")},
        "units": UNITS,
        "bootstrap": {
            "resample": "videos",
            "n_resamples": n_resamples,
            "alpha": boot.alpha,
            "seed": seed,
            "interval": "percentile",
        },
        "counts": _all_counts(files.items, answered, subsets, metrics),
        "judge": judge,
        "metrics": metrics,
        "offline": {s: m["offline"] for s, m in by_subset.items()},
        "question_types": _question_types(files, answers, judged, boot),
        "coverage": coverage,
        "failed_items": [asdict(f) for f in _failed_items(files, answers)],
        "paper": _paper_comparison(benchmark, metrics, judge, coverage),
        "samples": [_sample_record(a, f) for a, f in samples],
    }
    report = _json_safe(report)
    _write(store, run_id, report, [f.thumbnails for _, f in samples])
    return report


def _all_counts(
    items: list[dict], answered: set[tuple[str, str]], subsets: list[str], metrics: dict | None
) -> dict:
    """:func:`_counts` of the run, of each subset, and the failed verdicts (None: no judge)."""
    counts = _counts(items, answered)
    counts["subsets"] = {
        s: _counts((i for i in items if i["subset"] == s), answered) for s in subsets
    }
    counts["judge_failed"] = sum(m["failed"] for m in metrics.values()) if metrics else None
    return counts


def _json_safe(value):
    """The report with NaN/inf replaced by None, so it is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write(store: Store, run_id: str, report: dict, thumbnails: list[list[str]]) -> None:
    chart = render_chart(report)
    sections = _sections(report)
    store.put(run_key(run_id, "report.json"), json.dumps(report, indent=2).encode("utf-8"))
    store.put(run_key(run_id, "report.md"), render_markdown(report, sections).encode("utf-8"))
    store.put(run_key(run_id, "report.png"), chart)
    page = render_html(report, sections, chart, thumbnails)
    store.put(run_key(run_id, "report.html"), page.encode("utf-8"))


# ---------------------------------------------------------------------------------- tables


@dataclass
class Section:
    id: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown first, marked as warnings
    collapsible: str | None = None  # the summary line of a collapsed table


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_ci(value: float | None, ci: list[float] | None, digits: int) -> str:
    if value is None or ci is None or None in ci:
        return _fmt(value, digits)
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def digits(metric: str) -> int:
    return 1 if UNITS.get(metric) == "percent" else 2


def _summary_section(report: dict) -> Section:
    counts, judge = report["counts"], report["judge"] or {}
    rows = [
        ["benchmark", report["benchmark"]],
        ["run", report["run_id"]],
        ["job", str(report["run"].get("job_id"))],
        ["items", str(counts["items"])],
        ["coverage", _coverage_text(report["coverage"])],
        ["answered", str(counts["answered"])],
        ["missing videos", str(counts["missing"])],
        ["decode failures", str(counts["decode_failed"])],
        ["ok items without a prediction", str(counts["ok_without_prediction"])],
        ["judge failures", "no judge run" if judge == {} else str(counts["judge_failed"])],
        ["judge model", str(judge.get("judge_model", "–"))],
        *_protocol_rows(judge),
    ]
    for part in ("model", "generation"):
        rows += [
            [f"{part}.{k}", str(v)]
            for k, v in (report["run"].get(part) or {}).items()
            if isinstance(v, (str, int, float, bool))
        ]
    return Section("summary", "Summary", ["field", "value"], rows)


def _protocol_rows(judge: dict) -> list[list[str]]:
    """The judge protocol of the summary table (nothing without a judge run)."""
    if not judge:
        return []
    protocol = judge.get("protocol")
    if protocol is None:
        return [["judge protocol", "not recorded (judged by an earlier version)"]]

    def sent(value: float | None) -> str:
        return "not sent (the API's default)" if value is None else f"{value:g}"

    hashes = ", ".join(
        f"{dim} {digest[:12]}"
        + ("" if protocol["reference_prompts"].get(dim) else " (not reference)")
        for dim, digest in protocol["template_hashes"].items()
        if dim in (judge.get("failed") or {})
    )
    return [
        ["judge protocol", f"{protocol['name']} ({protocol['prompt_source']})"],
        ["judge model served", ", ".join(judge.get("served_models") or []) or "–"],
        ["judge temperature", sent(protocol["temperature"])],
        ["judge top_p", sent(protocol["top_p"])],
        ["judge consistency input", protocol["consistency"]],
        ["judge replies read by", f"the {protocol['replies']} rule"],
        ["judge prompt sha256", hashes or "–"],
    ]


def _coverage_text(coverage: dict) -> str:
    if coverage["fraction"] is None:
        return f"{coverage['items']} / unknown"
    return f"{coverage['items']} / {coverage['split_items']} ({100 * coverage['fraction']:.2f}%)"


def _coverage_warning(report: dict) -> list[str]:
    coverage = report["coverage"]
    if not coverage["partial"]:
        return []
    if coverage["fraction"] is None:
        return [
            "Warning: the size of the test split is not recorded, so this run's coverage of it is "
            "unknown; the paper's numbers are over the whole split."
        ]
    return [
        f"Warning: this run covers {coverage['items']} of the {coverage['split_items']} items of "
        f"the {report['benchmark']} test split ({100 * coverage['fraction']:.2f}%); the paper's "
        "numbers are over the whole split."
    ]


def _cell(metrics: dict, name: str, ci: bool = True) -> str:
    """``metrics[name]`` formatted, with ``metrics[name + "_ci"]`` unless ``ci`` is False."""
    interval = metrics.get(f"{name}_ci") if ci else None
    return fmt_ci(metrics.get(name), interval, digits(name))


def _strs(m: dict, *keys: str) -> list[str]:
    return [str(m[key]) for key in keys]


def _headers(text: str) -> list[str]:
    return text.split("|")


def _metrics_section(report: dict) -> Section:
    headers = _headers(
        "dimension|subset|answered|judged|failed|not judged|videos|accuracy % (95% CI)|"
        "mean score (95% CI)"
    )
    counted = ("subset", "answered", "judged", "failed", "not_judged", "videos")
    rows = [
        [dim, *_strs(m, *counted), _cell(m, "accuracy"), _cell(m, "mean_score")]
        for dim, m in (report["metrics"] or {}).items()
    ]
    notes = [] if report["metrics"] else ["No judge run: offline metrics only."]
    return Section("metrics", "Judged metrics", headers, rows, notes)


def _offline_section(report: dict) -> Section:
    headers = _headers("subset|answered|videos|exact match % (95% CI)|token F1 % (95% CI)")
    rows = [
        [subset, *_strs(m, "answered", "videos"), _cell(m, "exact_match"), _cell(m, "token_f1")]
        for subset, m in report["offline"].items()
    ]
    notes = ["Normalised answers (lowercase, no punctuation or articles), over answered items."]
    return Section("offline", "Offline metrics", headers, rows, notes)


def _failures_section(report: dict) -> Section:
    counts, judge = report["counts"], report["judge"]
    rows = [["missing video", "not_found", str(counts["missing"])]] if counts["missing"] else []
    rows += [["decode", reason, str(n)] for reason, n in counts["decode_failures"].items()]
    rows += [["judge", dim, str(n)] for dim, n in ((judge or {}).get("failed") or {}).items() if n]
    notes = ["Failures are counted here and never scored."]
    return Section("failures", "Failures", ["stage", "reason / dimension", "count"], rows, notes)


def _failed_items_section(report: dict) -> Section:
    failed = report["failed_items"]
    rows = [[f["id"], f["subset"], f["video"], f["stage"], f["reason"]] for f in failed]
    headers = ["id", "subset", "video", "stage", "reason"]
    title = f"Failed items ({len(failed)})"
    return Section("failed-items", "Failed items", headers, rows, collapsible=title)


def _question_type_section(report: dict) -> Section:
    """One row per (subset, type, dimension); the columns of a type scorer only where the run has
    its type, "–" in other types' rows."""
    present = {qtype for types in report["question_types"].values() for qtype in types}
    scorers = [scorer for qtype, scorer in TYPE_SCORERS.items() if qtype in present]
    headers = _headers(
        "subset|question type|items|answered|dimension|accuracy % (95% CI)|mean score (95% CI)|"
        "exact match %|token F1 %"
    ) + [header for scorer in scorers for _, header in scorer.columns]
    rows = []
    for subset, types in report["question_types"].items():
        for qtype, m in types.items():
            head = [subset, qtype, *_strs(m["counts"], "items", "answered")]
            tail = [_cell(m["offline"], "exact_match", ci=False)]
            tail += [_cell(m["offline"], "token_f1", ci=False)]
            tail += [
                _cell(m[scorer.key], metric) if scorer.key in m else "–"
                for scorer in scorers
                for metric, _ in scorer.columns
            ]
            rows += [
                [*head, dim, _cell(j, "accuracy"), _cell(j, "mean_score"), *tail]
                for dim, j in (m["judged"] or {"–": {}}).items()
            ]
    return Section("question-types", "By question type", headers, rows)


def _paper_section(report: dict) -> Section:
    paper = report["paper"]
    warnings = _coverage_warning(report)
    if paper is None:
        notes = ["No paper numbers for this benchmark."]
        return Section("paper", "Paper comparison", [], [], notes, warnings)
    metrics, ours = paper["metrics"], paper["ours"]
    headers = ["model", "vision params", "same training data", *metrics]
    rows = [
        ["this run", "", ""]
        + [fmt_ci(ours["values"].get(m), ours["ci"].get(m), digits(m)) for m in metrics]
    ]
    rows += [
        [
            row["model"] + (" (paper)" if row["model"] == paper["reference_model"] else ""),
            row["vision_params"] or "–",
            "yes" if row["same_training_data"] else "no",
            *[_fmt(row["values"].get(m), paper["decimals"]) for m in metrics],
        ]
        for row in paper["rows"]
    ]
    rows.append(
        [f"this run − {paper['reference_model']}", "", ""]
        + [_fmt(paper["delta_vs_reference"].get(m), digits(m)) for m in metrics]
    )
    if paper["differences"]:
        warnings.append(f"Not comparable with the paper: {'; '.join(paper['differences'])}.")
    src = paper["source"]
    notes = [f"{paper['table']} of “{src['title']}” ({src['venue']}, arXiv {src['arxiv']})."]
    if paper["comparable"]:
        notes.insert(0, "Comparable: judged under the reference protocol over the whole split.")
    notes += [f"Caveat: {paper['caveat']}"] if paper["caveat"] else []
    title = f"Comparison with the paper ({paper['table']})"
    return Section("paper", title, headers, rows, notes, warnings)


def _sections(report: dict) -> list[Section]:
    return [
        _summary_section(report),
        _metrics_section(report),
        _offline_section(report),
        _failures_section(report),
        _failed_items_section(report),
        _question_type_section(report),
        _paper_section(report),
    ]


# -------------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    text = " ".join(str(text).split())
    for ch in "\\|*_`<>[]":
        text = text.replace(ch, "\\" + ch)
    return text


def render_markdown(report: dict, sections: list[Section] | None = None) -> str:
    """``report.md``: the tables as GitHub-flavoured Markdown, and the chart."""
    title = f"Evaluation report: {report['run_id']} ({report['benchmark']})"
    out = markdown_sections(title, sections or _sections(report))
    out += ["", "## Chart", "", "![our results next to the paper's](report.png)", ""]
    return "\n".join(out)


def markdown_sections(title: str, sections: list[Section]) -> list[str]:
    """A title and the sections as GitHub-flavoured Markdown lines."""
    out = [f"# {_md_cell(title)}"]
    for section in sections:
        out += ["", f"## {section.title}", ""]
        for warning in section.warnings:
            out += [f"**{_md_cell(warning)}**", ""]
        if section.rows:
            if section.collapsible:
                out += [f"<details><summary>{html.escape(section.collapsible)}</summary>", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in section.headers) + " |")
            out.append("|" + "---|" * len(section.headers))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in section.rows]
            out += ["", "</details>"] if section.collapsible else []
        elif section.headers:
            out.append("(none)")
        for note in section.notes:
            out += ["", _md_cell(note)]
    return out


# ----------------------------------------------------------------------------------- chart


def _panels(report: dict) -> list[tuple[str, list[str], list[float], list[float] | None]]:
    """One panel per paper metric: (title, bar labels, values, our interval)."""
    paper = report["paper"]
    if paper is None:
        return []
    ours = paper["ours"]
    panels = []
    for metric in paper["metrics"]:
        labels = ["this run"] + [row["model"] for row in paper["rows"]]
        values = [ours["values"].get(metric)] + [row["values"].get(metric) for row in paper["rows"]]
        unit = " (%)" if metric == "accuracy" else " (0-5)"
        title = metric + unit
        panels.append(
            (title, labels, [math.nan if v is None else v for v in values], ours["ci"].get(metric))
        )
    return panels


def render_chart(report: dict) -> bytes:
    """``report.png``: our value with its interval beside the paper's rows, a panel per metric."""
    panels = _panels(report)
    reference = (report["paper"] or {}).get("reference_model")
    cols = 2 if len(panels) > 1 else 1
    rows = max(1, math.ceil(len(panels) / cols))
    bars = max((len(p[1]) for p in panels), default=1)
    fig = Figure(figsize=(6 * cols, rows * (0.32 * bars + 1.3)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, labels, values, ci) in zip(axes, panels, strict=False):
        colours = ["#d9480f"] + ["#1c7ed6" if m == reference else "#adb5bd" for m in labels[1:]]
        ax.barh(labels, values, color=colours)
        if ci is not None and not math.isnan(values[0]):
            err = [[values[0] - ci[0]], [ci[1] - values[0]]]
            ax.errorbar(values[0], 0, xerr=err, fmt="none", ecolor="black", capsize=4)
        if math.isnan(values[0]):
            ax.text(0, 0, " not judged", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    if not panels:
        axes[0].text(0.5, 0.5, "no paper numbers for this benchmark", ha="center")
    fig.suptitle(f"{report['benchmark']}: run {report['run_id']} vs. the paper", fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px;
       color: #212529; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #dee2e6; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f1f3f5; }
.note { color: #495057; font-size: 0.85rem; }
.warning { color: #c92a2a; font-weight: 600; font-size: 0.9rem; }
#chart img { max-width: 100%; }
.item { border: 1px solid #dee2e6; border-radius: 6px; padding: 0.75rem; margin: 0.75rem 0; }
.frames { display: flex; flex-wrap: wrap; gap: 4px; margin-bottom: 0.5rem; }
.frames img { width: 112px; height: 112px; }
.frames figure { margin: 0; font-size: 0.7rem; text-align: center; }
.placeholder { background: #f8f9fa; color: #868e96; padding: 1rem; font-size: 0.85rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 0.75rem; margin: 0; }
dt { font-weight: 600; } dd { margin: 0; white-space: pre-wrap; }
"""


def _e(value: object) -> str:
    return html.escape("–" if value is None else str(value), quote=True)


def _html_section(section: Section) -> str:
    parts = [f'<section id="{section.id}">', f"<h2>{_e(section.title)}</h2>"]
    parts += [f'<p class="warning">{_e(warning)}</p>' for warning in section.warnings]
    if section.rows:
        head = "".join(f"<th>{_e(h)}</th>" for h in section.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in section.rows
        )
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        if section.collapsible:
            table = f"<details><summary>{_e(section.collapsible)}</summary>{table}</details>"
        parts.append(table)
    elif section.headers:
        parts.append('<p class="note">(none)</p>')
    parts += [f'<p class="note">{_e(note)}</p>' for note in section.notes]
    return "".join(parts) + "</section>"


def _html_verdict(verdict: dict | None) -> str:
    if verdict is None:
        return "not judged"
    if verdict["status"] != "ok":
        return f"judge failed: {verdict['error']}"
    pred = "" if verdict["pred"] is None else f"{verdict['pred']}, "
    return f"{pred}score {verdict['score']}"


def _html_item(sample: dict, thumbnails: list[str]) -> str:
    frames = sample["frames"]
    if thumbnails:
        strip = "".join(
            f'<figure><img alt="frame {i}" src="data:image/jpeg;base64,{b64}">'
            f"<figcaption>#{i}</figcaption></figure>"
            for i, b64 in zip(frames["sampled_indices"], thumbnails, strict=True)
        )
        frames_html = f'<div class="frames">{strip}</div>'
        if frames["recorded_indices"] not in (None, frames["sampled_indices"]):
            recorded = _e(frames["recorded_indices"])
            frames_html += f'<p class="note frames-note">the run recorded frames {recorded}</p>'
    else:
        frames_html = (
            f'<div class="frames placeholder">frames unavailable: {_e(frames["error"])}</div>'
        )
    fields = [("video", sample["video_name"]), ("question", sample["question"])]
    fields += [("question 2", sample["question2"])] if sample["question2"] else []
    fields += [("answer", sample["answer"])]
    fields += [("prediction", p) for p in sample["predictions"]]
    fields += [(f"verdict ({dim})", _html_verdict(v)) for dim, v in sample["verdicts"].items()]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in fields)
    sid, subset = _e(sample["id"]), _e(sample["subset"])
    return (
        f'<article class="item" data-id="{sid}" data-subset="{subset}">'
        f"<h3>{subset} / {sid}</h3>{frames_html}<dl>{rows}</dl></article>"
    )


def render_html(
    report: dict, sections: list[Section], chart: bytes, thumbnails: list[list[str]]
) -> str:
    """``report.html``: one self-contained page (inline CSS, images as data URIs, no scripts)."""
    chart_b64 = base64.b64encode(chart).decode("ascii")
    items = (
        "".join(_html_item(s, t) for s, t in zip(report["samples"], thumbnails, strict=True))
        or '<p class="note">No answered items.</p>'
    )
    title = f"Evaluation report: {report['run_id']} ({report['benchmark']})"
    chart_img = f'<img alt="our results next to the paper" src="data:image/png;base64,{chart_b64}">'
    return html_document(
        title,
        sections,
        f'<section id="chart"><h2>Chart</h2>{chart_img}</section>',
        f'<section id="items"><h2>Sample items</h2>{items}</section>',
    )


def html_document(title: str, sections: list[Section], *more: str) -> str:
    """One self-contained page: the title, the sections, then ``more`` HTML."""
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
        *(_html_section(s) for s in sections),
        *more,
        "</body></html>\n",
    ]
    return "\n".join(parts)
