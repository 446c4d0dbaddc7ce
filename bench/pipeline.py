"""Pipeline throughput vs the slowest stage, and the feature cache's speedup, on embedded Ray.

    python bench/pipeline.py [--dir .cache/bench-pipeline] [--videos 24] [--threads 1]
                             [--attention eager|sdpa]

One run, one local Ray (loopback), a fresh local store under ``--dir``, the tiny random model.

1. Standalone stages: DecodeWorker, EncodeWorker and GenerateWorker used directly in this process
   (no Ray) over the corpus, after one untimed warm-up call each, with ``--threads`` torch threads
   (1 = what Ray gives a ``num_cpus=1`` actor). A stage's videos/s is for one instance.
2. End to end: a QA job (2 questions, feature cache off) through ``run_job`` after a warm-up job
   (so Ray start-up is excluded; the job's own actor construction is included), and the same
   job driven shard by shard through ``Pipeline`` once its actors are ready (construction
   excluded). Both are compared with the slowest standalone stage.
3. Feature cache: a ``features`` job fills the cache, then the same QA job with the cache on is
   compared with the cache-off QA job: through ``run_job`` (whole job, actor start-up included)
   and with ready actors (steady state); also the decode+encode stage seconds the cache replaces,
   and the bound the standalone stages put on a QA job's speedup: generation is not cached, so
   cache-on work per video is at least the generate stage's (Amdahl).

The corpus is ``write_corpus`` (15 files) plus renamed copies up to ``--videos``; a copy has the
same content hash as its original.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from videopanda_cluster.cluster.driver import (
    TINY_MODEL_DIR,
    Pipeline,
    generation_options,
    plan_job,
    preprocess_options,
    run_job,
    start_ray,
    video_key,
)
from videopanda_cluster.cluster.stages import DecodeWorker, EncodeWorker, GenerateWorker
from videopanda_cluster.jobs.config import JobConfig, build_config
from videopanda_cluster.model.config import ATTENTION_IMPLS
from videopanda_cluster.model.tiny import ensure_tiny_checkpoint
from videopanda_cluster.storage.open import open_store
from videopanda_cluster.video.geometry import REFERENCE_SIZE
from videopanda_cluster.video.samples import write_corpus

# Set before Ray is imported (the package imports it lazily): Ray stays on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

QUESTIONS = ["What happens in this video?", "Which colours do the moving shapes have?"]
SETTINGS = {
    "kind": "qa",
    "questions": QUESTIONS,
    "use_feature_cache": False,
    "decode_workers": 2,
    "encode_workers": 1,
    "generate_workers": 1,
    "shard_size": 4,
    "max_in_flight": 4,
    "max_new_tokens": 8,
    "encode_batch": 4,
    "generate_batch": 8,
}


def _corpus(root: Path, count: int) -> Path:
    """``count`` videos: the sample corpus, then renamed copies of it, in a fresh folder."""
    write_corpus(root / "corpus")
    originals = sorted(p for p in (root / "corpus").iterdir() if p.name != "manifest.json")
    folder = root / f"videos-{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(count):
        src = originals[i % len(originals)]
        name = src.name if i < len(originals) else f"copy{i // len(originals)}_{src.name}"
        shutil.copyfile(src, folder / name)
    return folder


def _standalone(cfg: JobConfig, videos: list[Path], checkpoint: str) -> dict[str, dict]:
    """Seconds and videos/s of each stage run alone in this process (one instance each)."""
    options = preprocess_options(cfg, REFERENCE_SIZE)
    decoder = DecodeWorker(options)
    decoder.decode("warm-up", str(videos[0]))
    start = time.perf_counter()
    decoded = [decoder.decode(p.name, str(p)) for p in videos]
    decode_s = time.perf_counter() - start
    assert all(meta["ok"] for meta, _ in decoded), [m for m, _ in decoded if not m["ok"]]

    batches = [decoded[i : i + cfg.encode_batch] for i in range(0, len(decoded), cfg.encode_batch)]
    encoder = EncodeWorker(checkpoint, "cpu", options, None)

    def encode(batch: list) -> list:
        return encoder.encode([video_key(m) for m, _ in batch], *[p for _, p in batch])[1]

    encode(batches[0])
    start = time.perf_counter()
    tokens = [encode(batch) for batch in batches]
    encode_s = time.perf_counter() - start

    generator = GenerateWorker(checkpoint, "cpu", cfg.attention)
    generation = generation_options(cfg)

    def generate(batch: list, batch_tokens: list) -> list:
        requests = [
            {
                "video_id": meta["video_id"],
                "index": j,
                "prompts": [
                    {"question_id": f"{meta['video_id']}#{q}", "question": text}
                    for q, text in enumerate(cfg.questions)
                ],
            }
            for j, (meta, _) in enumerate(batch)
        ]
        return generator.generate(requests, generation, batch_tokens)

    generate(batches[0], tokens[0])
    start = time.perf_counter()
    rows = [r for batch, toks in zip(batches, tokens, strict=True) for r in generate(batch, toks)]
    generate_s = time.perf_counter() - start
    assert len(rows) == len(videos) * len(cfg.questions)

    n = len(videos)
    return {
        stage: {"seconds": round(s, 3), "videos_per_s": round(n / s, 3)}
        for stage, s in (("decode", decode_s), ("encode", encode_s), ("generate", generate_s))
    }


def _job(cfg: JobConfig) -> dict[str, Any]:
    """run_job, timed from outside (wall clock, perf_counter)."""
    start = time.perf_counter()
    summary = run_job(cfg)
    wall = time.perf_counter() - start
    this = summary["this_run"]
    assert this["failed_rows"] == 0 and this["videos"] > 0, this
    return {
        "job_id": summary["job_id"],
        "videos": this["videos"],
        "rows": this["rows"],
        "seconds": round(wall, 3),
        "videos_per_s": round(this["videos"] / wall, 3),
        "stage_seconds": this["stage_seconds"],
    }


def _steady(cfg: JobConfig) -> dict[str, Any]:
    """The shards of ``cfg`` through a Pipeline whose actors are already constructed and ready."""
    import ray

    store = open_store(cfg.output)
    plan, ledger = plan_job(cfg, store)
    start = time.perf_counter()
    pipeline = Pipeline(cfg, plan, ledger, store.url)
    actors = [*pipeline.decoders, *pipeline.encoders, *pipeline.generators, pipeline.writer]
    ray.get([a.__ray_ready__.remote() for a in actors])
    construct_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=cfg.max_in_flight) as pool:
            shards = list(pool.map(pipeline.run_shard, ledger.pending()))
        seconds = time.perf_counter() - start
    finally:
        pipeline.close()
    videos = sum(s["videos"] for s in shards)
    assert sum(s["failed"] for s in shards) == 0
    return {
        "job_id": plan.job_id,
        "videos": videos,
        "actor_construction_s": round(construct_s, 3),
        "seconds": round(seconds, 3),
        "videos_per_s": round(videos / seconds, 3),
    }


def _actor_threads() -> int:
    """torch threads inside a ``num_cpus=1`` Ray worker (as the stage actors get)."""
    import ray

    return ray.get(ray.remote(num_cpus=1)(lambda: torch.get_num_threads()).remote())


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _table(title: str, rows: list[dict[str, Any]]) -> None:
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print(f"\n{title}")
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".cache/bench-pipeline"))
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, standalone stages")
    parser.add_argument("--attention", choices=ATTENTION_IMPLS, default="eager")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    _log("writing the corpus ...")
    corpus = _corpus(args.dir, args.videos)
    warm_corpus = args.dir / "warm-up"
    shutil.rmtree(warm_corpus, ignore_errors=True)
    warm_corpus.mkdir()
    for p in sorted(corpus.iterdir())[:2]:
        shutil.copyfile(p, warm_corpus / p.name)
    checkpoint = str(ensure_tiny_checkpoint(TINY_MODEL_DIR))
    store = tempfile.mkdtemp(prefix="store-", dir=args.dir)
    base = {**SETTINGS, "inputs": str(corpus), "output": store, "attention": args.attention}

    def config(job_id: str, **changes: Any) -> JobConfig:
        return build_config({}, {**base, "job_id": job_id, **changes})

    try:
        qa = config("qa-nocache")
        _log(f"standalone stages ({args.threads} torch thread(s)) ...")
        torch.set_num_threads(args.threads)
        stages = _standalone(qa, sorted(corpus.iterdir()), checkpoint)
        slowest = min(stages, key=lambda s: stages[s]["videos_per_s"])
        slowest_rate = stages[slowest]["videos_per_s"]

        _log("starting Ray ...")
        start = time.perf_counter()
        start_ray(qa)
        ray_start_s = time.perf_counter() - start
        actor_threads = _actor_threads()
        _log("warm-up job ...")
        warm = _job(config("warm-up", inputs=str(warm_corpus)))
        _log("QA job, feature cache off (run_job) ...")
        nocache = _job(qa)
        _log("QA job, feature cache off (Pipeline with ready actors) ...")
        steady = _steady(config("qa-steady"))
        _log("features job ...")
        features = _job(config("features", kind="features", use_feature_cache=True))
        _log("QA job, feature cache on (run_job) ...")
        cached = _job(config("qa-cache", use_feature_cache=True))
        _log("QA job, feature cache on (Pipeline with ready actors) ...")
        cached_steady = _steady(config("qa-cache-steady", use_feature_cache=True))
    finally:
        shutil.rmtree(store, ignore_errors=True)

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    e2e = {
        "run_job_videos_per_s": nocache["videos_per_s"],
        "run_job_over_slowest": ratio(nocache["videos_per_s"], slowest_rate),
        "ready_actors_videos_per_s": steady["videos_per_s"],
        "ready_actors_over_slowest": ratio(steady["videos_per_s"], slowest_rate),
    }

    def visual(job: dict[str, Any]) -> float:
        return job["stage_seconds"].get("decode_s", 0) + job["stage_seconds"].get("encode_s", 0)

    per_video = {s: v["seconds"] / args.videos for s, v in stages.items()}
    cache = {
        "job_speedup": ratio(nocache["seconds"], cached["seconds"]),
        "ready_actors_speedup": ratio(steady["seconds"], cached_steady["seconds"]),
        "decode_encode_speedup": ratio(visual(nocache), visual(cached)),
        "qa_speedup_bound": ratio(sum(per_video.values()), per_video["generate"]),
    }
    _table(
        f"Standalone stages, in-process, {args.threads} torch thread(s), {args.videos} videos"
        f" (Ray actors get {actor_threads})",
        [
            {"stage": s, **v, "workers_in_pipeline": qa.model_dump()[f"{s}_workers"]}
            for s, v in stages.items()
        ],
    )
    print(f"slowest stage: {slowest} ({slowest_rate} videos/s)")
    _table(
        f"Embedded Ray jobs (Ray start-up {ray_start_s:.2f} s, before the warm-up job)",
        [
            {"run": name, **{k: v for k, v in r.items() if k != "job_id"}}
            for name, r in (
                ("warm-up qa (2 videos, actors built)", warm),
                ("qa, cache off, run_job (actors built)", nocache),
                ("qa, cache off, ready actors", steady),
                ("features, cache on (fills it)", features),
                ("qa, cache on (after features)", cached),
                ("qa, cache on, ready actors", cached_steady),
            )
        ],
    )
    print(
        f"\nend to end / slowest stage: run_job {e2e['run_job_over_slowest']}, "
        f"ready actors {e2e['ready_actors_over_slowest']} (target >= 0.8)"
    )
    print(
        f"feature cache, qa cache-on vs cache-off: run_job {cache['job_speedup']}x, "
        f"ready actors {cache['ready_actors_speedup']}x (target >= 5x); decode+encode stages "
        f"{cache['decode_encode_speedup']}x; bound from the standalone stages, "
        f"(decode+encode+generate)/generate: {cache['qa_speedup_bound']}x"
    )
    result = {
        "videos": args.videos,
        "questions_per_video": len(QUESTIONS),
        "attention": args.attention,
        "settings": {k: v for k, v in SETTINGS.items() if k not in ("kind", "questions")},
        "cpu_count": os.cpu_count(),
        "standalone_torch_threads": args.threads,
        "actor_torch_threads": actor_threads,
        "standalone": stages,
        "slowest_stage": slowest,
        "ray_start_s": round(ray_start_s, 3),
        "jobs": {
            "warm_up": warm,
            "qa_nocache": nocache,
            "qa_ready_actors": steady,
            "features": features,
            "qa_cache": cached,
            "qa_cache_ready_actors": cached_steady,
        },
        "end_to_end": e2e,
        "feature_cache": cache,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
