"""A fake checkout of the reference repository for judge-protocol tests, and a way to run its
judge scripts (or a real checkout's) as the reference runs them, recording what they send.

:func:`write_reference_repo` writes the six judge scripts in the reference layout
(``videopanda/eval/video/eval_video_qa.py``, ``eval_benchmark_{1..5}_*.py``) and structure: an
``annotate`` worker that calls ``openai.ChatCompletion.create(model=..., messages=[system, user])``
with f-string user messages, and a ``main`` that reads a predictions file line by line with
``eval``, keys items like the reference and fans out over a process pool. The prompt wording is
this module's own (:data:`PROMPTS`), not the reference's, so its hashes differ from the shipped
ones; the labels ("Correct answer: ", "Predicted answer: ") are the ones ``tests/openai_server``
reads.

:func:`run_reference_script` runs a script with a stand-in ``openai`` package (openai 0.x API)
first on ``PYTHONPATH``: it appends every ``ChatCompletion.create`` call's keyword arguments to
a file and replies ``{'pred': 'yes', 'score': 4}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = {
    "qa": "videopanda/eval/video/eval_video_qa.py",
    "correctness": "videopanda/eval/video/eval_benchmark_1_correctness.py",
    "detail": "videopanda/eval/video/eval_benchmark_2_detailed_orientation.py",
    "context": "videopanda/eval/video/eval_benchmark_3_context.py",
    "temporal": "videopanda/eval/video/eval_benchmark_4_temporal.py",
    "consistency": "videopanda/eval/video/eval_benchmark_5_consistency.py",
}
SHIM_REPLY = "{'pred': 'yes', 'score': 4}"

_SCORE_USER = [
    ("lit", "Rate this answer to a question about a video.\n\n"),
    ("f", "Question: {question}\n"),
    ("f", "Correct answer: {answer}\n"),
    ("f", "Predicted answer: {pred}\n\n"),
    ("lit", "Answer with a Python dict such as {'score': 2}, and nothing else."),
]
# dimension -> (system message, user message pieces: literal text or f-string text)
PROMPTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "qa": (
        "You grade short answers to questions about videos. "
        "Decide whether the predicted answer means what the correct one means.",
        [
            ("lit", "Grade this pair:\n\n"),
            ("f", "Question: {question}\n"),
            ("f", "Correct answer: {answer}\n"),
            ("f", "Predicted answer: {pred}\n\n"),
            ("lit", "Answer with a Python dict with the keys 'pred' (yes or no) and 'score' "),
            ("lit", "(0 to 5), such as {'pred': 'no', 'score': 1}."),
        ],
    ),
    "correctness": ("You rate how correct an answer is.", _SCORE_USER),
    "detail": ("You rate how detailed an answer is.", _SCORE_USER),
    "context": ("You rate how well an answer fits the whole video.", _SCORE_USER),
    "temporal": ("You rate whether an answer keeps events in order.", _SCORE_USER),
    "consistency": (
        "You rate whether two answers to one question, asked twice, agree.",
        [
            ("lit", "Two wordings of one question:\n\n"),
            ("f", "Question 1: {question1}\n"),
            ("f", "Question 2: {question2}\n"),
            ("f", "Correct answer: {answer}\n"),
            ("f", "Predicted answer 1: {pred1}\n"),
            ("f", "Predicted answer 2: {pred2}\n\n"),
            ("lit", "Answer with a Python dict such as {'score': 2}, and nothing else."),
        ],
    ),
}

_UNPACK = {
    "qa": "question, answer, pred = qa_set['q'], qa_set['a'], qa_set['pred']",
    "score": "question, answer, pred = qa_set['q'], qa_set['a'], qa_set['pred']",
    "consistency": (
        "question1, question2, answer = qa_set['q1'], qa_set['q2'], qa_set['a']\n"
        "        pred1, pred2 = qa_set['pred1'], qa_set['pred2']"
    ),
}
_BUILD = {
    "qa": """    for sample in pred_contents:
        prediction_set[sample['id']] = {
            "q": sample['question'], "a": sample['answer'], "pred": sample['pred']}""",
    "score": """    counts = {}
    for sample in pred_contents:
        counts[sample['video_name']] = counts.get(sample['video_name'], -1) + 1
        key = f"{sample['video_name']}_{counts[sample['video_name']]}"
        prediction_set[key] = {"q": sample['Q'], "a": sample['A'], "pred": sample['pred']}""",
    "consistency": """    counts = {}
    for sample in pred_contents:
        counts[sample['video_name']] = counts.get(sample['video_name'], -1) + 1
        key = f"{sample['video_name']}_{counts[sample['video_name']]}"
        question1 = sample['Q1']
        question2 = sample['%s']
        prediction_set[key] = {"q1": question1, "q2": question2, "a": sample['A'],
                               "pred1": sample['pred1'], "pred2": sample['pred2']}""",
}
_TEMPLATE = """import argparse
import ast
import json
import os
from multiprocessing.pool import Pool

import openai


def annotate(prediction_set, keys, output_dir):
    for key in keys:
        qa_set = prediction_set[key]
        %(unpack)s
        completion = openai.ChatCompletion.create(
            model=%(model)r,%(extra)s
            messages=[
                {"role": "system", "content": %(system)s},
                {"role": "user", "content":
                    %(user)s},
            ],
        )
        reply = ast.literal_eval(completion["choices"][0]["message"]["content"])
        with open(os.path.join(output_dir, key + ".json"), "w") as f:
            json.dump([reply, qa_set], f)


def main():
    parser = argparse.ArgumentParser()
    for name in ("--pred_path", "--output_dir", "--output_json", "--api_key", "--num_tasks"):
        parser.add_argument(name)
    args = parser.parse_args()
    pred_contents = [eval(line.strip()) for line in open(args.pred_path)]
    prediction_set = {}
%(build)s
    os.makedirs(args.output_dir, exist_ok=True)
    keys = list(prediction_set)
    with Pool(2) as pool:
        pool.starmap(annotate, [(prediction_set, keys[i::2], args.output_dir) for i in range(2)])


if __name__ == "__main__":
    main()
"""


def _source(pieces: list[tuple[str, str]]) -> str:
    return "\n                    ".join(
        ("f" if kind == "f" else "") + repr(t) for kind, t in pieces
    )


def script_text(
    dimension: str,
    *,
    system: str | None = None,
    model: str = "gpt-3.5-turbo",
    extra: str = "",
    question2_key: str = "Q1",
) -> str:
    """One judge script's source; ``extra`` adds keyword arguments to the call."""
    default_system, user = PROMPTS[dimension]
    kind = dimension if dimension in ("qa", "consistency") else "score"
    build = _BUILD[kind] % question2_key if kind == "consistency" else _BUILD[kind]
    return _TEMPLATE % {
        "unpack": _UNPACK[kind],
        "model": model,
        "extra": f"\n            {extra}," if extra else "",
        "system": repr(system if system is not None else default_system),
        "user": _source(user),
        "build": build,
    }


def write_reference_repo(root: Path, **overrides: str) -> Path:
    """The six scripts under ``root``; ``overrides`` maps a dimension to its script's text."""
    for dimension, rel in SCRIPTS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(overrides.get(dimension) or script_text(dimension))
    return root


_SHIM = """import json, os

api_key = None
api_base = None


class ChatCompletion:
    @staticmethod
    def create(**kwargs):
        with open(os.environ["REFERENCE_CALLS"], "a") as f:
            f.write(json.dumps(kwargs) + "\\n")
        return {"choices": [{"message": {"content": REPLY}}]}
""".replace("REPLY", repr(SHIM_REPLY))


def run_reference_script(script: Path, predictions: Path, work: Path) -> list[dict]:
    """Run ``script`` on a predictions file as the reference does; every chat call it made
    (its keyword arguments), in no particular order."""
    shim = work / "shim" / "openai"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text(_SHIM)
    calls = work / f"{script.stem}.calls.jsonl"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(shim.parent), "REFERENCE_CALLS": str(calls)}
    args = ["--pred_path", str(predictions), "--output_dir", str(work / f"{script.stem}-out")]
    args += ["--output_json", str(work / f"{script.stem}.json"), "--api_key", "x"]
    args += ["--num_tasks", "2"]
    done = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
