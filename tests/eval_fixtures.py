"""Small benchmarks in the exact reference layouts (spec §6), built from the sample corpus.

The layout below is written out here, not imported from the code under test, so a wrong folder
name or prefix in the adapters fails the tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

# benchmark -> (question folder, video folder, video file prefix), relative to the data root
LAYOUTS = {
    "msvd-qa": ("MSVD_Zero_Shot_QA", "MSVD_Zero_Shot_QA/videos", ""),
    "msrvtt-qa": ("MSRVTT_Zero_Shot_QA", "MSRVTT_Zero_Shot_QA/videos/all", ""),
    "tgif-qa": ("TGIF_Zero_Shot_QA", "TGIF_Zero_Shot_QA/mp4", ""),
    "activitynet-qa": ("Activitynet_Zero_Shot_QA", "Activitynet_Zero_Shot_QA/all_test", "v_"),
    "vcgbench": ("Benchmarking_QA", "Test_Videos", ""),
}
EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")

# video name -> (corpus file, extension on disk): clip_b exists only as .mkv (the last lookup)
VIDEOS = {
    "clip_a": ("qcif_176x144_5f_10fps.mp4", ".mp4"),
    "clip_b": ("slow_176x144_12f_0.4fps.mkv", ".mkv"),
    "clip_c": ("rotated_320x240_20f_25fps_rot90.mkv", ".mov"),
}
DECOY = ("clip_a", ".mkv")  # a text file the lookup must never reach (clip_a.mp4 comes first)
BROKEN = "broken"  # a text file named .mp4: decoding fails with not_a_video

QA = [  # (video, question, answer)
    ("clip_a", "what colour is the circle?", "red"),
    ("clip_b", "how many shapes are there?", "three"),
    ("clip_a", "which way does the square move?", "to the left"),
    ("clip_c", "is the background dark?", "yes"),
    ("clip_b", 'what does the sign say? "stop" or \\ "go"', 'it\'s "stop"'),
    ("clip_c", "what moves fastest?", "the circle"),
]
GENERIC = [("clip_a", "describe the video", "shapes move"), ("clip_b", "what is shown?", "shapes")]
GENERIC += [("clip_a", "what colours appear?", "red and blue")]
TEMPORAL = [("clip_c", "what happens first?", "the circle moves"), ("clip_a", "then?", "it stops")]
CONSISTENCY = [  # (video, Q1, Q2, A)
    ("clip_b", "which shape is largest?", "what is the biggest shape?", "the square"),
    ("clip_c", "is it daytime?", "does it look like day?", "no"),
]


def _video_file(video_dir: Path, stem: str, ext: str, source: Path | None) -> Path:
    path = video_dir / f"{stem}{ext}"
    if source is None:
        path.write_bytes(b"placeholder for " + stem.encode())
    else:
        shutil.copy(source, path)
    return path


def _place_videos(
    video_dir: Path, prefix: str, corpus: Path | None, corrupt: bool
) -> dict[str, Path]:
    """Write the videos (placeholders if ``corpus`` is None); returns video name -> file."""
    video_dir.mkdir(parents=True, exist_ok=True)
    files = {
        name: _video_file(video_dir, prefix + name, ext, corpus / src if corpus else None)
        for name, (src, ext) in VIDEOS.items()
    }
    (video_dir / f"{prefix}{DECOY[0]}{DECOY[1]}").write_text("not a video\n")
    if corrupt:
        files[BROKEN] = video_dir / f"{prefix}{BROKEN}.mp4"
        files[BROKEN].write_text("this is a text file, not a video\n" * 20)
    return files


def _extra_videos(missing: int, corrupt: bool) -> list[str]:
    return [f"gone_{i}" for i in range(missing)] + ([BROKEN] if corrupt else [])


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))


def _qa_benchmark(name: str, folder: Path, missing: int, corrupt: bool) -> list[tuple]:
    """Write test_q/test_a; returns (subset, id, video) in file order."""
    rows = list(QA)
    for n, video in enumerate(_extra_videos(missing, corrupt)):
        rows.insert(2 + n, (video, f"question about {video}?", "unknown"))
    questions, answers, order = [], [], []
    for i, (video, question, answer) in enumerate(rows):
        # ActivityNet ids are strings; the others are JSON integers (ids become strings)
        qid: str | int = f"{video}_{i}" if name == "activitynet-qa" else 1000 + i
        q = {"video_name": video, "question": question, "question_id": qid}
        a = {"answer": answer, "id": qid}
        if name == "activitynet-qa":
            a["type"] = i % 3
        if name == "msrvtt-qa":
            q["question_type"] = question.split()[0]
        questions.append(q)
        answers.append(a)
        order.append(("qa", str(qid), video))
    _write_json(folder / "test_q.json", questions)
    _write_json(folder / "test_a.json", answers)
    return order


def _vcg_benchmark(folder: Path, missing: int, corrupt: bool) -> list[tuple]:
    subsets: dict[str, list[dict]] = {
        "generic": [{"video_name": v, "Q": q, "A": a} for v, q, a in GENERIC],
        "temporal": [{"video_name": v, "Q": q, "A": a} for v, q, a in TEMPORAL],
        "consistency": [
            {"video_name": v, "Q1": q, "Q2": q2, "A": a} for v, q, q2, a in CONSISTENCY
        ],
    }
    for n, video in enumerate(_extra_videos(missing, corrupt)):
        subset = list(subsets)[n % 3]
        item = {"video_name": video, "A": "unknown"}
        if subset == "consistency":
            item.update(Q1=f"about {video}?", Q2=f"regarding {video}?")
        else:
            item["Q"] = f"about {video}?"
        subsets[subset].insert(1, item)
    order = []
    for subset, items in subsets.items():
        _write_json(folder / f"{subset}_qa.json", items)
        seen: dict[str, int] = {}
        for item in items:
            video = item["video_name"]
            order.append((subset, f"{video}_{seen.get(video, 0)}", video))
            seen[video] = seen.get(video, 0) + 1
    return order


def make_benchmark_fixture(
    name: str, data_root: Path, corpus: Path | None, missing: int = 1, corrupt: bool = False
) -> dict[str, Any]:
    """Build benchmark ``name`` under ``data_root`` in its reference layout.

    ``corpus`` None writes placeholder files instead of videos (enough for the adapters).
    ``missing`` videos have questions but no file; ``corrupt`` adds a text file named .mp4.
    Returns ids by subset in file order: ``ids`` (all), ``answerable`` (a decodable video),
    ``missing``, ``corrupt``; plus ``video_dir``, ``prefix`` and ``files`` (video name -> path).
    """
    folder, video_dir, prefix = LAYOUTS[name]
    files = _place_videos(data_root / video_dir, prefix, corpus, corrupt)
    if name == "vcgbench":
        order = _vcg_benchmark(data_root / folder, missing, corrupt)
    else:
        order = _qa_benchmark(name, data_root / folder, missing, corrupt)
    subsets = list(dict.fromkeys(subset for subset, _, _ in order))

    def ids(keep) -> dict[str, list[str]]:
        return {s: [i for sub, i, v in order if sub == s and keep(v)] for s in subsets}

    return {
        "name": name,
        "data_root": data_root,
        "video_dir": data_root / video_dir,
        "prefix": prefix,
        "files": files,
        "ids": ids(lambda v: True),
        "answerable": ids(lambda v: v in VIDEOS),
        "missing": ids(lambda v: v not in files),
        "corrupt": ids(lambda v: v == BROKEN),
        "video_names": {(s, i): v for s, i, v in order},
    }
