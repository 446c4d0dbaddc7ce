"""The bundled small model's card: training record, held-out accuracies per question type, and
the GSTRA+LSTE ablation beside them.

``python -m videopanda_cluster.train.model_card --model DIR --report FILE [--corpus DIR]
[--ablation-report FILE --ablation-training FILE --ablation-finding TEXT] [--limits TEXT]
--command TEXT --dest DIR`` copies the model
(``training.json`` without the stages' loss curves) to ``DEST`` and writes ``README.md`` and
``eval.json`` there.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json")
QUESTION_TYPES = ("colour", "shape", "direction", "count", "first")
CHANCE = {"colour": 25.0, "shape": 25.0, "direction": 25.0, "count": 100 / 3, "first": 50.0}


def per_type_exact_match(report: dict[str, Any]) -> dict[str, dict[str, float | int | None]]:
    """Exact match (percent, with its 95% CI and item count) per question type of a report."""
    out: dict[str, dict[str, float | int | None]] = {}
    for types in report.get("question_types", {}).values():
        for qtype, metrics in types.items():
            offline = metrics.get("offline") or {}
            ci = offline.get("exact_match_ci") or [None, None]
            out[qtype] = {
                "exact_match": offline.get("exact_match"),
                "ci_low": ci[0],
                "ci_high": ci[1],
                "items": metrics["counts"]["items"],
                "answered": metrics["counts"]["answered"],
            }
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _row(name: str, scores: dict) -> str:
    cells = []
    for qtype in QUESTION_TYPES:
        s = scores.get(qtype)
        cells.append(
            "n/a"
            if not s
            else f"{_pct(s['exact_match'])} [{_pct(s['ci_low'])}, {_pct(s['ci_high'])}]"
        )
    return f"| {name} | " + " | ".join(cells) + " |"


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
        line += (
            f", {sum(synth['videos'].values())} videos ({synth['videos']['train']} train), "
            f"{o['width']}x{o['height']} px, {o['frames']} frames at {o['fps']} fps, shape "
            f"radius {o['radius'][0]}–{o['radius'][1]} of the shorter side, travel "
            f"{o['travel'][0]}–{o['travel'][1]} of the free span"
        )
    return line + (
        " (training conversations: captions for prealign/pretrain; for finetune, multi-turn QA"
        " and, per clip with several shapes, its colour and shape questions with roles swapped)."
    )


def _warm_start_lines(training: dict[str, Any]) -> list[str]:
    """What the card says of the scene warm-up, the distillation and the question-focus loss,
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
    focus = [s for s in training["stages"] if s["config"].get("focus_weight")]
    if focus:
        cfg = focus[0]["config"]
        lines.append(
            f"- Question-focus loss (`train/forward.py`) with weight {cfg['focus_weight']:g} in "
            f"{' and '.join(s['stage'] for s in focus)}: a training-only linear head on the "
            f"Llama's hidden state after layer {cfg['focus_layer']}, at the position that "
            "answers, names the word the question is about (the records' `focus`)."
        )
    if training.get("attention", "eager") != "eager":
        lines.append(f"- Llama attention while training: {training['attention']}.")
    return lines


def _minutes(training: dict[str, Any]) -> str:
    return f"{training['wall_seconds'] / 60:.1f} min"


def render_card(
    training: dict[str, Any],
    scores: dict,
    command: str,
    ablation: tuple[dict[str, Any], dict] | None = None,
    ablation_finding: str = "",
    synth: dict[str, Any] | None = None,
    limits: str = "",
) -> str:
    """The model card's Markdown; ``synth`` is the training corpus's ``synth.json``,
    ``limits`` a paragraph on what the model does not do well."""
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
        f"- Wall time {_minutes(training)} ("
        + ("warm-up and " if training.get("warmup") else "")
        + "all three stages) on this machine's 2 CPU cores.",
        "",
        *_stage_table(training),
        "",
        "## Held-out accuracy",
        "",
        "Exact match in percent, with 95% bootstrap intervals (clustered by video), on the test",
        "split of a corpus generated with a seed not used in training, through",
        "`videopanda eval run --benchmark msvd-qa` and `videopanda eval report`. Chance: 25% for",
        "colour, shape and direction; 33% for count; 50% for first.",
        "",
        "| model | " + " | ".join(QUESTION_TYPES) + " |",
        "|---|" + "---|" * len(QUESTION_TYPES),
        _row("full", scores),
    ]
    if ablation:
        lines.append(_row("no GSTRA, no LSTE", ablation[1]))
        lines += [
            "",
            f"The ablation trained with the same command and `--ablate no_gstra "
            f"--ablate no_lste` in {_minutes(ablation[0])}.",
        ]
        lines += ["", ablation_finding] if ablation_finding else []
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
) -> dict[str, Any]:
    """Copy the model files to ``dest`` and write its README.md and eval.json; ``corpus`` is
    the training corpus (its ``synth.json`` describes the data in the card)."""
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
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(model / name, dest / name)
    summary = {k: v for k, v in training.items() if k not in ("stages", "model")}
    if synth:  # so that a corpus like the training one can be generated again
        summary["corpus"] = {**summary.get("corpus", {}), "options": synth["options"]}
    summary["stages"] = [{k: v for k, v in s.items() if k != "losses"} for s in training["stages"]]
    (dest / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    results = {"exact_match": scores, "chance": CHANCE}
    if ablation:
        results["ablation"] = {"switches": ablation[0].get("ablations"), "exact_match": ablation[1]}
    (dest / "eval.json").write_text(json.dumps(results, indent=1) + "\n")
    card = render_card(training, scores, command, ablation, ablation_finding, synth, limits)
    (dest / "README.md").write_text(card)
    return results


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
    )
    print(json.dumps(results["exact_match"], indent=1))


if __name__ == "__main__":
    main()
