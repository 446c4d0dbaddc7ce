"""Seek-based 8-frame sampling vs a full sequential decode, on 1- and 5-minute 720p samples.

    python bench/decode.py [--dir .cache/bench] [--repeats 3]

Each measurement runs in a fresh process. Peak RSS is the highest resident set size sampled
(every 2 ms) while the decode runs; base RSS is the process after its imports, before the work.
(The kernel's ru_maxrss is not used: a child inherits its parent's high-water mark.) The ratio
(full / seek) is measured in the same run on the same file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from peak_rss import RssSampler
from videopanda_cluster.video.samples import default_specs, write_video

BENCH_FILES = [s for s in default_specs(long=True) if s.name.startswith("bench_")]


def _seek(path: str) -> list[int]:
    from videopanda_cluster.video.extract import PreprocessOptions, extract

    return extract(path, PreprocessOptions(isolate=False, timeout=None)).provenance.sampled_indices


def _full(path: str) -> list[int]:
    """Decode every frame in order; keep RGB of the same 8 positions (the naive baseline)."""
    from videopanda_cluster.video.probe import DecodeLimits, open_container, video_stream

    wanted = set(_positions(path))
    kept = []
    with open_container(path) as container:
        stream = video_stream(container, DecodeLimits())
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept.append(frame.to_ndarray(format="rgb24"))
    return sorted(wanted)


def _positions(path: str) -> list[int]:
    import av

    from videopanda_cluster.video.sampling import sample_positions

    with av.open(path) as c:
        s = c.streams.video[0]
        return sample_positions(s.frames, float(s.average_rate))


MODES = {"seek": _seek, "full": _full}


def _child(mode: str, path: str) -> None:
    import av  # noqa: F401  (imports are part of the base, not of the work)

    from videopanda_cluster.video import extract  # noqa: F401

    before = psutil.Process().memory_info().rss
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    indices = MODES[mode](path)
    seconds = time.perf_counter() - start
    peak = sampler.finish()
    result = {
        "seconds": seconds,
        "base_mb": before / 2**20,
        "peak_mb": peak / 2**20,
        "indices": indices,
    }
    print(json.dumps(result))


def _measure(mode: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, spec in enumerate(BENCH_FILES):
        path = args.dir / spec.name
        if not path.exists():
            print(f"writing {path} ({spec.frames} frames) ...", file=sys.stderr)
            tmp = path.with_name(f".{path.name}.partial.mp4")
            write_video(tmp, spec, seed=n)
            tmp.replace(path)
        runs = {m: [_measure(m, path) for _ in range(args.repeats)] for m in ("seek", "full")}
        assert runs["seek"][0]["indices"] == runs["full"][0]["indices"]
        seek = statistics.median(r["seconds"] for r in runs["seek"])
        full = statistics.median(r["seconds"] for r in runs["full"])
        rows.append(
            {
                "file": spec.name,
                "frames": spec.frames,
                "seek_s": round(seek, 3),
                "full_s": round(full, 3),
                "speedup": round(full / seek, 1),
                "seek_peak_rss_mb": round(max(r["peak_mb"] for r in runs["seek"]), 1),
                "full_peak_rss_mb": round(max(r["peak_mb"] for r in runs["full"]), 1),
                "base_rss_mb": round(min(r["base_mb"] for r in runs["seek"] + runs["full"]), 1),
            }
        )
    cols = list(rows[0])
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
