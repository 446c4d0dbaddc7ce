"""The bundled small model's card: training record, test accuracies per question type and
caption fact precision/recall, the validation figures that chose the recipe, a robustness table
(frame sizes, radii, fps, shape counts) against the targets, and the GSTRA+LSTE ablation.

``python -m videopanda_cluster.train.model_card --model DIR --report FILE [--corpus DIR]
[--val-report FILE] [--test-corpus DIR] [--robustness LABEL=FILE ...]
[--ablation-report FILE --ablation-training FILE --ablation-finding TEXT] [--limits TEXT]
--command TEXT --dest DIR`` copies the model (``training.json`` without the stages' loss
curves) to ``DEST`` and writes ``README.md`` and ``eval.json`` there.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..eval.caption_facts import CaptionScore, score_caption
from ..eval.metrics import exact_match
from .synth import CAPTION_TYPE, QUESTION_TYPES, load_metadata

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json")
CHANCE = {"colour": 25.0, "shape": 25.0, "direction": 25.0, "count": 100 / 3, "first": 50.0}
CAPTION_METRICS = ("fact_precision", "fact_recall")  # of the caption items (eval.caption_facts)
# The bar the card measures against (issue "the embedded default"), per column of its tables.
TARGETS = {
    "colour": 95.0,
    "shape": 90.0,
    "direction": 90.0,
    "count": 90.0,
    "first": 85.0,
    "absent": 90.0,
    "fact_precision": 90.0,
    "fact_recall": 85.0,
}
COLUMNS = (*QUESTION_TYPES, *CAPTION_METRICS)
HEADERS = (*QUESTION_TYPES, "caption fact precision", "caption fact recall")
Scores = dict[str, dict[str, float | int | None]]


def _entry(value: float | None, ci: list | None, counts: dict) -> dict[str, float | int | None]:
    ci = ci or [None, None]
    return {
        "exact_match": value,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "items": counts["items"],
        "answered": counts["answered"],
    }


def per_type_exact_match(report: dict[str, Any]) -> Scores:
    """Per question type of a report, exact match (percent, with its 95% CI and item count);
    for caption items, fact precision and recall (keyed by metric, value under "exact_match"
    so every cell reads alike)."""
    out: Scores = {}
    for types in report.get("question_types", {}).values():
        for qtype, metrics in types.items():
            facts = metrics.get("caption_facts")
            if facts:
                for name in CAPTION_METRICS:
                    out[name] = _entry(facts[name], facts[f"{name}_ci"], metrics["counts"])
                continue
            offline = metrics.get("offline") or {}
            out[qtype] = _entry(
                offline.get("exact_match"), offline.get("exact_match_ci"), metrics["counts"]
            )
    return out


def by_shape_count(predictions: Path, corpus: Path) -> dict[int, Scores]:
    """Exact match per question type, and the caption items' fact precision and recall, for
    clips of 1, 2 and 3 shapes, from a run's ``predictions/*.jsonl`` (ids ``<video>_<type>``)
    and the test corpus's ``metadata.json``."""
    shapes = {v.name: len(v.shapes) for v, _ in load_metadata(corpus)}
    hits: dict[int, dict[str, list[float]]] = {}
    captions: dict[int, CaptionScore] = {}
    for path in sorted(predictions.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            video, _, qtype = str(row["id"]).rpartition("_")
            if video not in shapes:
                continue
            count, pred, answer = shapes[video], str(row["pred"]), str(row["answer"])
            if qtype in QUESTION_TYPES:
                hits.setdefault(count, {}).setdefault(qtype, []).append(exact_match(pred, answer))
            elif qtype == CAPTION_TYPE:
                captions[count] = captions.get(count, CaptionScore()) + score_caption(pred, answer)
    out: dict[int, Scores] = {
        count: {
            qtype: {"exact_match": 100 * sum(v) / len(v), "items": len(v)}
            for qtype, v in types.items()
        }
        for count, types in hits.items()
    }
    for count, score in captions.items():
        for name, value in zip(CAPTION_METRICS, (score.precision, score.recall), strict=True):
            cell = {"exact_match": None if value is None else 100 * value, "items": score.captions}
            out.setdefault(count, {})[name] = cell
    return dict(sorted(out.items()))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _row(name: str, scores: dict, ci: bool = True) -> str:
    """A table row: per column its value (with CI), bold where it misses its target."""
    cells = []
    for column in COLUMNS:
        s = scores.get(column)
        if not s:
            cells.append("n/a")
            continue
        text = _pct(s["exact_match"])
        if s["exact_match"] is not None and s["exact_match"] < TARGETS[column]:
            text = f"**{text}**"
        if ci and s.get("ci_low") is not None:
            text += f" [{_pct(s['ci_low'])}, {_pct(s['ci_high'])}]"
        cells.append(text)
    return f"| {name} | " + " | ".join(cells) + " |"


def _table_head(first: str) -> list[str]:
    return [f"| {first} | " + " | ".join(HEADERS) + " |", "|---|" + "---|" * len(HEADERS)]


def misses(rows: list[tuple[str, Scores]]) -> list[str]:
    """Per column below its target somewhere: "column: where (values)", every row or the
    labels of the rows that miss it."""
    out = []
    for column in COLUMNS:
        scored = [(label, s[column]["exact_match"]) for label, s in rows if column in s]
        low = [(label, v) for label, v in scored if v is not None and v < TARGETS[column]]
        if not low:
            continue
        values = [float(v) for _, v in low]
        if len(low) == len(scored):
            where = f"every row ({min(values):.1f}–{max(values):.1f})"
        else:
            where = ", ".join(f"{label} ({float(v):.1f})" for label, v in low)
        out.append(f"{column} (target {TARGETS[column]:g}): {where}")
    return out


def _robustness_lines(robustness: list[tuple[str, Scores]], counts: dict[int, Scores]) -> list[str]:
    rows = robustness + [
        (f"{n} shape{'s' if n > 1 else ''} (of the test split)", s) for n, s in counts.items()
    ]
    if not rows:
        return []
    below = misses(rows)
    return [
        "",
        "## Robustness",
        "",
        "The same model on test splits of corpora generated with the test seed, each changing",
        "one setting of `videopanda synth`'s defaults (50 test clips per row unless the",
        "held-out table above gives 200); shape counts split the defaults' test split. In",
        "bold: below the target of its column ("
        + ", ".join(f"{c} {TARGETS[c]:g}" for c in COLUMNS)
        + ").",
        "",
        *_table_head("setting"),
        *(_row(label, scores, ci=False) for label, scores in rows),
        "",
        "Where it falls short of its targets:",
        "",
        *([f"- {line}" for line in below] or ["- nowhere"]),
    ]


def _stage_table(training: dict[str, Any]) -> list[str]:
    lines = ["| stage | data | samples | steps | first loss | last loss | seconds |"]
    lines.append("|---|---|---|---|---|---|---|")
    for s in training["stages"]:
        seconds = "-" if s["seconds"] is None else f"{s['seconds']:.0f}"  # no record of its run
        lines.append(
            f"| {s['stage']} | {s['data']} | {s['samples']} | {s['steps']} | "
            f"{s['first_loss']:.3f} | {s['last_loss']:.3f} | {seconds} |"
        )
    return lines


def _corpus_line(training: dict[str, Any], synth: dict[str, Any] | None) -> str:
    line = f"- Data: `videopanda synth` corpus, seed {training['corpus']['seed']}"
    if synth:
        o = synth["options"]
        size = f"{o['width']}x{o['height']} px"
        if o.get("size_range"):
            lo, hi = o["size_range"]
            size = f"frame sizes drawn per video (longer side {lo}–{hi} px; "
            size += "landscape, portrait, square)"
        line += (
            f", {sum(synth['videos'].values())} videos ({synth['videos']['train']} train), "
            f"{size}, {o['frames']} frames at {o['fps']} fps, shape "
            f"radius {o['radius'][0]}–{o['radius'][1]} of the shorter side, travel "
            f"{o['travel'][0]}–{o['travel'][1]} of the free span"
        )
    return line + (
        " (training conversations: captions for prealign/pretrain; for finetune, multi-turn QA"
        " with an absent-object question, per clip with several shapes its colour and shape"
        " questions with roles swapped, and a caption conversation per clip)."
    )


# The training-only losses a stage may add: its weight's setting, its name, what it asks for
# (formatted with the stage's settings).
TRAINING_LOSSES = (
    (
        "focus_weight",
        "Question-focus loss (`train/forward.py`)",
        "a training-only linear head on the Llama's hidden state after layer {focus_layer}, at "
        "each position that predicts an answer token, names the word the question is about (the "
        "records' `focus`).",
    ),
    (
        "attend_weight",
        "Shape-attention loss (`train/shape_attention.py`)",
        "at each position that predicts an answer token, Llama layer {attend_layer}'s attention "
        "should fall on the cells of the shape it asks about or names (the scene teacher's "
        "cover).",
    ),
    (
        "copy_weight",
        "Question-copy loss (`train/question_copy.py`)",
        "at each position that predicts an answer to a question with a focus word, some head of "
        "Llama layer {copy_layer} should attend to that word in the question.",
    ),
)


def _warm_start_lines(training: dict[str, Any]) -> list[str]:
    """What the card says of the scene warm-up, the distillation and the training-only losses,
    when the run had them."""
    lines = []
    warmup = training.get("warmup")
    if warmup:
        accuracy = warmup["cell_accuracy_last_tenth"].items()
        acc = ", ".join(f"{group} {100 * a:.0f}%" for group, a in accuracy)
        groups = " and ".join(warmup["config"].get("groups", ["kind"]))
        lines.append(
            f"- Warm start: the scene warm-up (`--warmup-steps {warmup['config']['steps']}`, "
            f"`train/warmup.py`) fitted STAB and the projector to per-token {groups} labels "
            f"of the corpus's ground truth in {warmup['seconds'] / 60:.1f} min "
            f"before stage 1 (per-token accuracy over its last tenth: {acc})."
        )
    weight = training["stages"][0]["config"].get("distill_weight", 0)
    if weight:
        lines.append(
            f"- Distillation (spec §7.3) with weight {weight:g} in every stage, against the "
            "scene teacher of `videopanda synth-teacher` (ground-truth cover per frame and token)."
        )
    for key, name, what in TRAINING_LOSSES:
        stages = [s for s in training["stages"] if s["config"].get(key)]
        if stages:
            cfg = stages[0]["config"]
            lines.append(
                f"- {name} with weight {cfg[key]:g} in {' and '.join(s['stage'] for s in stages)}: "
                + what.format(**cfg)
            )
    if training.get("attention", "eager") != "eager":
        lines.append(f"- Llama attention while training: {training['attention']}.")
    in_bf16 = [s["stage"] for s in training["stages"] if s["config"].get("precision") == "bf16"]
    if warmup and warmup["config"].get("precision") == "bf16":
        in_bf16.insert(0, "the warm-up")
    if in_bf16:
        lines.append(
            f"- bf16 autocast in {' and '.join(in_bf16)} (`--precision`, `--stage-precision`; "
            "weights, gradients and optimiser state stay fp32)."
        )
    return lines


def _training_time(training: dict[str, Any]) -> tuple[str, str]:
    """How long the training took, and how that was counted: its run's wall time, unless that
    run reused a warm-up or stages of earlier runs (their own times then sum to more)."""
    parts = [s["seconds"] for s in training["stages"]]
    if training.get("warmup"):
        parts.append(training["warmup"]["seconds"])
    summed = sum(p for p in parts if p is not None)
    if summed <= training["wall_seconds"]:
        return f"{training['wall_seconds'] / 60:.1f} min", ""
    least = "at least " if None in parts else ""
    return f"{least}{summed / 60:.1f} min", "summed over the runs that trained them"


def _minutes(training: dict[str, Any]) -> str:
    minutes, counted = _training_time(training)
    return f"{minutes}, {counted}" if counted else minutes


def _time_line(training: dict[str, Any]) -> str:
    minutes, counted = _training_time(training)
    parts = ("warm-up and " if training.get("warmup") else "") + "all three stages"
    parts += f", {counted}" if counted else ""
    return f"- Training time {minutes} ({parts}) on this machine's 2 CPU cores."


@dataclass(frozen=True)
class Evidence:
    """What the card shows beside the test figures: the validation split's (which chose the
    recipe), the robustness rows (label, scores) and the test split by shape count."""

    val: Scores | None = None
    robustness: list[tuple[str, Scores]] = field(default_factory=list)
    shape_counts: dict[int, Scores] = field(default_factory=dict)
    test_seed: int | None = None
    train_seed: int | None = None


def _selection_text(evidence: Evidence) -> str:
    if evidence.test_seed is None:
        return "On the test split of a corpus generated with a seed not used in training."
    return (
        f"The validation split of the training corpus (seed {evidence.train_seed}) is the "
        f"only one used to compare recipes; the test figures come from corpora generated with seed "
        f"{evidence.test_seed}, which served neither training nor selection, computed once "
        "for the final model."
    )


def render_card(
    training: dict[str, Any],
    scores: dict,
    command: str,
    ablation: tuple[dict[str, Any], dict] | None = None,
    ablation_finding: str = "",
    synth: dict[str, Any] | None = None,
    limits: str = "",
    evidence: Evidence | None = None,
) -> str:
    """The model card's Markdown; ``synth`` is the training corpus's ``synth.json``,
    ``limits`` a paragraph on what the model does not do well, ``evidence`` the validation and
    robustness figures beside the test ones."""
    evidence = evidence or Evidence()
    stages = training["stages"]
    cfg = stages[0]["config"]
    layers = training.get("llm_layers")
    lines = [
        "# videopanda-small",
        "",
        "A small Video-Panda (same blocks as the released model: STAB, 2-layer MLP projector,",
        "Llama) trained from random weights by our three-stage recipe on the synthetic corpus of",
        "`videopanda synth`, on CPU. It answers questions about coloured moving shapes; it is the",
        "model the README demo and the pipeline use by default. It knows nothing of real video.",
        "",
        "## Training",
        "",
        f"- Command: `{command}`",
        _corpus_line(training, synth),
        f"- Init seed {training['init_seed']}; image size {training['image_size']}; "
        + (f"{layers}-layer Llama; " if layers else "")
        + f"tokenizer: SentencePiece, {training['vocab_size']} pieces, trained on the corpus; "
        f"system prompt of the training conversations: {training.get('system_prompt', 'train')}.",
        f"- Global batch {cfg['global_batch']}, micro-batch {cfg['micro_batch']}, AdamW, cosine "
        f"schedule, clipping {cfg['max_grad_norm']}; horizontal flip off (left/right labels).",
        *_warm_start_lines(training),
        _time_line(training),
        "",
        *_stage_table(training),
        "",
        "## Held-out accuracy",
        "",
        "Exact match in percent per question type, and the caption items' fact precision and",
        "recall (`eval/caption_facts.py`: each (colour, kind, motion) a caption states, against",
        "the reference caption's), with 95% bootstrap intervals clustered by video, through",
        "`videopanda eval run --benchmark msvd-qa` and `videopanda eval report`. "
        + _selection_text(evidence),
        "Chance: 25% for colour, shape and direction; 33% for count; 50% for first. In bold:",
        "below the target of its column.",
        "",
        *_table_head("model"),
        _row("full (test)", scores),
    ]
    if evidence.val:
        lines.append(_row("full (validation)", evidence.val))
    if ablation:
        lines.append(_row("no GSTRA, no LSTE", ablation[1]))
        lines += [
            "",
            f"The ablation trained with the same command and `--ablate no_gstra "
            f"--ablate no_lste` in {_minutes(ablation[0])}.",
        ]
        lines += ["", ablation_finding] if ablation_finding else []
    lines += _robustness_lines(evidence.robustness, evidence.shape_counts)
    lines += ["", "## Limits", "", limits] if limits else []
    lines.append("")
    return "\n".join(lines)


def write_card(
    model: Path,
    report: Path,
    dest: Path,
    command: str,
    ablation_report: Path | None = None,
    ablation_training: Path | None = None,
    ablation_finding: str = "",
    corpus: Path | None = None,
    limits: str = "",
    val_report: Path | None = None,
    test_corpus: Path | None = None,
    robustness: list[tuple[str, Path]] | None = None,
) -> dict[str, Any]:
    """Copy the model files to ``dest`` and write its README.md and eval.json; ``corpus`` is
    the training corpus (its ``synth.json`` describes the data in the card), ``test_corpus``
    the one ``report`` evaluated (its clips' shape counts split the test figures),
    ``robustness`` (label, report) pairs."""
    training = json.loads((model / "training.json").read_text())
    synth_file = corpus / "synth.json" if corpus else None
    synth = json.loads(synth_file.read_text()) if synth_file and synth_file.is_file() else None
    scores = per_type_exact_match(json.loads(report.read_text()))
    ablation = None
    if ablation_report and ablation_training:
        ablation = (
            json.loads(ablation_training.read_text()),
            per_type_exact_match(json.loads(ablation_report.read_text())),
        )
    evidence = Evidence(
        val=per_type_exact_match(json.loads(val_report.read_text())) if val_report else None,
        robustness=[
            (label, per_type_exact_match(json.loads(path.read_text())))
            for label, path in robustness or []
        ],
        shape_counts=by_shape_count(report.parent / "predictions", test_corpus)
        if test_corpus
        else {},
        test_seed=_seed(test_corpus),
        train_seed=_seed(corpus),
    )
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(model / name, dest / name)
    summary = {k: v for k, v in training.items() if k not in ("stages", "model")}
    if synth:  # so that a corpus like the training one can be generated again
        summary["corpus"] = {**summary.get("corpus", {}), "options": synth["options"]}
    summary["stages"] = [{k: v for k, v in s.items() if k != "losses"} for s in training["stages"]]
    (dest / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    results: dict[str, Any] = {"exact_match": scores, "chance": CHANCE, "targets": TARGETS}
    if evidence.val:
        results["validation"] = evidence.val
    if evidence.robustness:
        results["robustness"] = dict(evidence.robustness)
    if evidence.shape_counts:
        results["shape_counts"] = evidence.shape_counts
    if ablation:
        results["ablation"] = {"switches": ablation[0].get("ablations"), "exact_match": ablation[1]}
    (dest / "eval.json").write_text(json.dumps(results, indent=1) + "\n")
    card = render_card(
        training, scores, command, ablation, ablation_finding, synth, limits, evidence
    )
    (dest / "README.md").write_text(card)
    return results


def _seed(corpus: Path | None) -> int | None:
    summary = corpus / "synth.json" if corpus else None
    if summary is None or not summary.is_file():
        return None
    seed = json.loads(summary.read_text()).get("seed")
    return None if seed is None else int(seed)


def _labelled(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=REPORT, got {text!r}")
    return label, Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--ablation-report", type=Path)
    parser.add_argument("--ablation-training", type=Path)
    parser.add_argument("--ablation-finding", default="")
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--limits", default="")
    parser.add_argument("--val-report", type=Path)
    parser.add_argument("--test-corpus", type=Path)
    parser.add_argument("--robustness", type=_labelled, action="append", default=[])
    args = parser.parse_args(argv)
    results = write_card(
        args.model,
        args.report,
        args.dest,
        args.command,
        args.ablation_report,
        args.ablation_training,
        args.ablation_finding,
        args.corpus,
        args.limits,
        args.val_report,
        args.test_corpus,
        args.robustness,
    )
    print(json.dumps(results["exact_match"], indent=1))


if __name__ == "__main__":
    main()
