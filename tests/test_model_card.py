"""The bundled model's card: per-type exact match read from an eval report, files copied."""

from __future__ import annotations

import json

import pytest

from videopanda_cluster.train.model_card import per_type_exact_match, write_card
from videopanda_cluster.train.synth import SynthOptions, load_metadata, write_synth


def _report(values: dict[str, float]) -> dict:
    return {
        "question_types": {
            "test": {
                qtype: {
                    "counts": {"items": 10, "answered": 9},
                    "offline": {"exact_match": v, "exact_match_ci": [v - 5, v + 5]},
                }
                for qtype, v in values.items()
            }
        }
    }


def _training(ablations: list[str]) -> dict:
    stage = {
        "stage": "finetune",
        "data": "train/finetune.json",
        "samples": 8,
        "steps": 2,
        "first_loss": 3.0,
        "last_loss": 1.5,
        "losses": [3.0, 1.5],
        "seconds": 12.0,
        "config": {"global_batch": 8, "micro_batch": 8, "max_grad_norm": 1.0},
    }
    return {
        "stages": [stage],
        "init_seed": 0,
        "image_size": 112,
        "vocab_size": 300,
        "corpus": {"seed": 4},
        "wall_seconds": 90.0,
        "ablations": ablations,
        "model": "x",
    }


def test_card_reports_every_type_of_both_models(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        (model / name).write_bytes(name.encode())
    (model / "training.json").write_text(json.dumps(_training([])))
    full = {"colour": 95.0, "shape": 91.5, "direction": 82.0, "count": 70.0}
    ablated = {"colour": 93.0, "shape": 90.0, "direction": 41.0, "count": 66.0}
    (tmp_path / "full.json").write_text(json.dumps(_report(full)))
    (tmp_path / "abl.json").write_text(json.dumps(_report(ablated)))
    (tmp_path / "abl-training.json").write_text(json.dumps(_training(["no_gstra", "no_lste"])))
    dest = tmp_path / "bundled"
    results = write_card(
        model,
        tmp_path / "full.json",
        dest,
        "scripts/train-small-model.sh",
        tmp_path / "abl.json",
        tmp_path / "abl-training.json",
        "Direction needs the temporal blocks.",
    )
    assert {k: v["exact_match"] for k, v in results["exact_match"].items()} == full
    assert results["ablation"]["switches"] == ["no_gstra", "no_lste"]
    card = (dest / "README.md").read_text()
    # below its target (colour 95, shape 90, direction 90, count 90) a value is bold
    assert (
        "| full (test) | 95.0 [90.0, 100.0] | 91.5 [86.5, 96.5] | **82.0** [77.0, 87.0] | **70.0**"
        in card
    )
    assert "| no GSTRA, no LSTE | **93.0** [88.0, 98.0] | 90.0 [85.0, 95.0] | **41.0**" in card
    assert "Direction needs the temporal blocks." in card
    assert "scripts/train-small-model.sh" in card and "| first |" not in card.split("\n")[-1]
    assert (dest / "model.safetensors").read_bytes() == b"model.safetensors"
    saved = json.loads((dest / "training.json").read_text())
    assert "losses" not in saved["stages"][0] and "model" not in saved
    assert json.loads((dest / "eval.json").read_text())["exact_match"]["shape"]["items"] == 10


def test_missing_types_read_as_absent():
    scores = per_type_exact_match(_report({"colour": 50.0}))
    assert list(scores) == ["colour"] and scores["colour"]["answered"] == 9
    assert per_type_exact_match({}) == {}


def test_card_describes_the_corpus_layers_and_prompt(tmp_path):
    model, corpus = tmp_path / "model", tmp_path / "corpus"
    model.mkdir()
    corpus.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        (model / name).write_bytes(b"x")
    training = {**_training([]), "llm_layers": 2, "system_prompt": "eval"}
    (model / "training.json").write_text(json.dumps(training))
    (tmp_path / "r.json").write_text(json.dumps(_report({"colour": 90.0})))
    options = {"width": 128, "height": 96, "frames": 16, "fps": 8}
    options |= {"radius": [0.16, 0.24], "travel": [0.6, 1.0]}
    synth = {"options": options, "videos": {"train": 80, "val": 10, "test": 10}}
    (corpus / "synth.json").write_text(json.dumps(synth))
    write_card(model, tmp_path / "r.json", tmp_path / "out", "cmd", corpus=corpus)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "seed 4, 100 videos (80 train), 128x96 px, 16 frames at 8 fps" in card
    assert "radius 0.16–0.24" in card and "travel 0.6–1.0" in card
    assert "2-layer Llama" in card and "system prompt of the training conversations: eval" in card
    copied = json.loads((tmp_path / "out" / "training.json").read_text())
    assert copied["corpus"] == {"seed": 4, "options": options}


def test_card_names_the_warm_start_and_the_distillation(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        (model / name).write_bytes(b"x")
    training = _training([])
    training["stages"][0]["config"]["distill_weight"] = 10.0
    accuracy = {"kind": 0.91, "colour": 0.99, "motion": 0.955}
    training["warmup"] = {"config": {"steps": 800}, "seconds": 240.0}
    training["wall_seconds"] = 260.0  # one run: the warm-up and the stage
    training["warmup"]["cell_accuracy_last_tenth"] = accuracy
    (model / "training.json").write_text(json.dumps(training))
    (tmp_path / "r.json").write_text(json.dumps(_report({"colour": 90.0})))
    write_card(model, tmp_path / "r.json", tmp_path / "out", "cmd", limits="Binding is weak.")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Limits\n\nBinding is weak." in card
    assert "per-token kind labels" in card
    assert "`--warmup-steps 800`" in card and "in 4.0 min before stage 1" in card
    assert "kind 91%, colour 99%, motion 96%" in card
    assert "Distillation (spec §7.3) with weight 10 in every stage" in card
    assert "(warm-up and all three stages)" in card
    del training["warmup"], training["stages"][0]["config"]["distill_weight"]
    (model / "training.json").write_text(json.dumps(training))
    write_card(model, tmp_path / "r.json", tmp_path / "plain", "cmd")
    card = (tmp_path / "plain" / "README.md").read_text()
    assert "Warm start" not in card and "Distillation" not in card and "Limits" not in card
    assert "(all three stages)" in card
    assert "Question-focus" not in card and "attention while training" not in card
    assert "bf16" not in card
    assert "Shape-attention" not in card and "Question-copy" not in card
    training["stages"][0]["config"] |= {"focus_weight": 1.0, "focus_layer": 1}
    training["stages"][0]["config"] |= {"copy_weight": 2.0, "copy_layer": 1}
    training["stages"][0]["config"] |= {"attend_weight": 1.0, "attend_layer": 2}
    training["attention"] = "sdpa"
    training["stages"][0]["config"]["precision"] = "bf16"
    (model / "training.json").write_text(json.dumps(training))
    write_card(model, tmp_path / "r.json", tmp_path / "focus", "cmd")
    card = (tmp_path / "focus" / "README.md").read_text()
    assert "Question-focus loss (`train/forward.py`) with weight 1 in finetune" in card
    assert "hidden state after layer 1" in card and "attention while training: sdpa" in card
    assert "Shape-attention loss (`train/shape_attention.py`) with weight 1 in finetune" in card
    assert "Llama layer 2's attention" in card
    assert "Question-copy loss (`train/question_copy.py`) with weight 2 in finetune" in card
    assert "some head of Llama layer 1 should attend" in card
    assert "- bf16 autocast in finetune (`--precision`" in card


def test_a_stage_without_a_recorded_time_shows_a_dash(tmp_path):
    """A stage finished before stage summaries were stored has no time (seconds None)."""
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        (model / name).write_bytes(b"x")
    training = _training([])
    training["stages"][0] |= {"seconds": None, "resumed": True}
    (model / "training.json").write_text(json.dumps(training))
    (tmp_path / "r.json").write_text(json.dumps(_report({"colour": 90.0})))
    write_card(model, tmp_path / "r.json", tmp_path / "out", "cmd")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| finetune | train/finetune.json | 8 | 2 | 3.000 | 1.500 | - |" in card


def test_a_resumed_training_states_the_time_of_every_part(tmp_path):
    """A rerun that reused a warm-up or stages trained by earlier runs took less wall time than
    the training did; the card states the sum of the parts' own times instead."""
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        (model / name).write_bytes(b"x")
    (tmp_path / "r.json").write_text(json.dumps(_report({"colour": 90.0})))
    training = _training([])  # one run: 90 s of wall time, 12 s of it in its stage
    training["warmup"] = {"config": {"steps": 8}, "seconds": 60.0}
    training["warmup"]["cell_accuracy_last_tenth"] = {"kind": 0.9}
    cards = {}
    for name, wall in (("one", 90.0), ("resumed", 30.0)):
        (model / "training.json").write_text(json.dumps(training | {"wall_seconds": wall}))
        write_card(model, tmp_path / "r.json", tmp_path / name, "cmd")
        cards[name] = (tmp_path / name / "README.md").read_text()
    assert "Training time 1.5 min (warm-up and all three stages)" in cards["one"]
    assert "summed" not in cards["one"]
    assert (
        "Training time 1.2 min (warm-up and all three stages, summed over the runs "
        in (cards["resumed"])
    )
    training["stages"][0]["seconds"] = None  # a stage of a store from before stage summaries
    (model / "training.json").write_text(json.dumps(training | {"wall_seconds": 30.0}))
    write_card(model, tmp_path / "r.json", tmp_path / "untimed", "cmd")
    assert "Training time at least 1.0 min (" in (tmp_path / "untimed" / "README.md").read_text()


def _caption_report(values: dict[str, float], precision: float, recall: float) -> dict:
    report = _report(values)
    report["question_types"]["test"]["caption"] = {
        "counts": {"items": 10, "answered": 10},
        "offline": {"exact_match": 0.0, "exact_match_ci": [0.0, 0.0]},
        "caption_facts": {
            "fact_precision": precision,
            "fact_precision_ci": [precision - 2, precision + 2],
            "fact_recall": recall,
            "fact_recall_ci": [recall - 3, recall + 3],
        },
    }
    return report


def test_card_has_validation_robustness_and_shape_counts(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        (model / name).write_bytes(b"x")
    (model / "training.json").write_text(json.dumps(_training([])))
    corpus, test = tmp_path / "corpus", tmp_path / "test"
    write_synth(corpus, 0, 3, SynthOptions(frames=4, width=64, height=64))
    write_synth(test, 7, 6, SynthOptions(frames=4, width=64, height=64))
    videos = load_metadata(test)
    run = tmp_path / "eval" / "full"
    (run / "predictions").mkdir(parents=True)
    lines = []
    for video, _ in videos:  # colour right on clips of one shape only; shape always right
        for qa in video.questions:
            pred = qa["answer"] if qa["type"] != "colour" or len(video.shapes) == 1 else "nope"
            lines.append({"id": f"{video.name}_{qa['type']}", "answer": qa["answer"], "pred": pred})
        # captions: right on clips of one shape; else only the first shape, stated right
        first = video.caption.split(" and ")[0].split(", then")[0].removesuffix(".")
        pred = video.caption if len(video.shapes) == 1 else f"{first}."
        lines.append({"id": f"{video.name}_caption", "answer": video.caption, "pred": pred})
    (run / "predictions" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "report.json").write_text(json.dumps(_caption_report({"colour": 96.0}, 93.0, 80.0)))
    (tmp_path / "val.json").write_text(json.dumps(_report({"colour": 99.0})))
    (tmp_path / "wide.json").write_text(json.dumps(_caption_report({"shape": 61.0}, 91.0, 86.0)))
    results = write_card(
        model,
        run / "report.json",
        tmp_path / "out",
        "cmd",
        corpus=corpus,
        val_report=tmp_path / "val.json",
        test_corpus=test,
        robustness=[("640x272", tmp_path / "wide.json")],
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "validation split of the training corpus (seed 0)" in card and "seed 7" in card
    assert "| full (test) | 96.0 [91.0, 101.0] | n/a |" in card
    assert "| 93.0 [91.0, 95.0] | **80.0** [77.0, 83.0] |" in card  # caption P / R, R < 85
    assert "| full (validation) | 99.0 [94.0, 104.0] |" in card
    assert "| 640x272 | n/a | **61.0** | n/a | n/a | n/a | n/a | 91.0 | 86.0 |" in card
    assert "- shape (target 90): 640x272 (61.0)\n" in card
    counts = {len(v.shapes) for v, _ in videos}
    assert len(counts) > 1  # the fixture has clips of one and of several shapes
    expected = {n: 100.0 if n == 1 else 0.0 for n in counts}
    assert {n: s["colour"]["exact_match"] for n, s in results["shape_counts"].items()} == expected
    assert all(s["shape"]["exact_match"] == 100.0 for s in results["shape_counts"].values())
    for n, scores in results["shape_counts"].items():  # one fact stated (right) of n
        clips = sum(len(v.shapes) == n for v, _ in videos)
        assert scores["fact_precision"] == {"exact_match": 100.0, "items": clips}
        assert scores["fact_recall"] == {"exact_match": pytest.approx(100 / n), "items": clips}
    several = sorted(counts - {1})
    labels = ", ".join(f"{n} shapes (of the test split) (0.0)" for n in several)
    assert f"- colour (target 95): {labels}\n" in card
    assert results["robustness"]["640x272"]["shape"]["exact_match"] == 61.0
