"""Seek-based 8-frame sampling vs a full sequential decode, on 1- and 5-minute 720p samples.

    python bench/decode.py [--dir .cache/bench] [--repeats 3]

Each measurement runs in a fresh process, so peak RSS is that of one decode. The ratio
(full / seek) is measured in the same run on the same file.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def _idle(path: str) -> list[int]:
    """Imports only: the RSS floor of a measuring process."""
    import av  # noqa: F401

    from videopanda_cluster.video import extract  # noqa: F401

    return []


MODES = {"seek": _seek, "full": _full, "idle": _idle}


def _child(mode: str, path: str) -> None:
    start = time.perf_counter()
    indices = MODES[mode](path)
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb, "indices": indices}))


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
        idle = _measure("idle", path)
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
                "seek_peak_rss_mb": round(max(r["rss_mb"] for r in runs["seek"]), 1),
                "full_peak_rss_mb": round(max(r["rss_mb"] for r in runs["full"]), 1),
                "idle_rss_mb": round(idle["rss_mb"], 1),
            }
        )
    cols = list(rows[0])
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
