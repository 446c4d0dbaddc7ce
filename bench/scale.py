"""Planning, ledger and read costs at corpus scale: 10k to 1M videos (10M with ``--big``).

    python bench/scale.py [--big] [--dir .cache/bench-scale] [--only plan,status,bytes]
                          [--sizes 10000,100000] [--status-shards 62500]

Sections (``--only`` picks some; results merge into ``--dir/scale.json``):

- ``plan``: a caption job over a JSONL manifest of N videos (cached in ``--dir``; the files do not
  exist, planning does not open them) is planned by ``plan_job`` into a LocalStore in a fresh
  child process: wall time and peak RSS (sampled every 2 ms in the child). The child first plans
  a 1-video job (imports, model config: ``fixed_s``); base RSS is taken after that, and RSS per
  video is (peak - base) / N.
  Then a resubmission, in another fresh child: ``plan_job`` again on the planned job, timed until
  ``ledger.pending()`` gives the first shard. Also the bytes under ``jobs/<job_id>/`` (ledger and
  any plan pieces) after planning.
- ``status``: on Azurite (``node_modules/.bin/azurite-blob``), a job of ``--status-shards``
  shards of 16 videos is planned and every shard committed (``ledger.commit``, 48 threads; the
  setup time is printed), then timed in this process: ``progress()`` as a run's end does it
  (fold the stats records, list the markers) and ``progress(exact=False)`` as ``status`` does
  it; and ``videopanda status --json`` as a subprocess. The requests of a status are counted by
  a loopback proxy (tests/fault_proxy.py), in a separate untimed run.
- ``bytes``: 1-, 5- and 20-minute 720p samples (``video.samples``; cached in ``--dir``) are
  uploaded to Azurite and decoded by ``DecodeWorker``; bytes fetched ÷ blob size and ranged GETs
  come from the store's reader counters in the decode's metadata.

Every figure is printed with the 1-minute load average when it was taken, and with its target.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import psutil

from loadavg import load
from peak_rss import RssSampler
from videopanda_cluster.video.samples import SampleSpec, default_specs, write_video

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.azurite, tests.fault_proxy

SIZES = (10_000, 100_000, 1_000_000)
BIG = 10_000_000
SHARD_SIZE = 16
RSS_TARGET_MB = 1536  # at 10M, and flat in N
RESUBMIT_TARGET_S = 60  # first shard of a resubmitted 1M-video job
STATUS_TARGET_S = 10  # 62,500 shards
READ_RATIO_TARGET = 1.15
COMMIT_THREADS = 48
VIDEOS = [s for s in default_specs(long=True) if s.name.startswith("bench_")] + [
    SampleSpec("bench_1280x720_20min_30fps.mp4", 1280, 720, 36_000, Fraction(30), "libx264")
]
SECTIONS = ("plan", "status", "bytes")


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def _manifest(directory: Path, videos: int) -> Path:
    """The cached JSONL manifest of ``videos`` ids ``v0000001``... (uris of files that need not
    exist)."""
    path = directory / f"manifest-{videos}.jsonl"
    if not path.exists():
        if videos > 1:
            print(f"writing {path} ...", file=sys.stderr)
        tmp = path.with_name(f".{path.name}.partial")
        with open(tmp, "w") as out:
            for start in range(1, videos + 1, 100_000):
                out.writelines(
                    f'{{"video_id": "v{i:07d}", "uri": "videos/v{i:07d}.mp4"}}\n'
                    for i in range(start, min(start + 100_000, videos + 1))
                )
        tmp.replace(path)
    return path


def _caption_config(manifest: Path, output: str, job_id: str) -> Any:
    from videopanda_cluster.jobs.config import build_config

    values = {"kind": "caption", "inputs": str(manifest), "output": output, "job_id": job_id}
    return build_config({}, {**values, "shard_size": SHARD_SIZE})


def _plan_child(manifest: str, output: str, job_id: str) -> None:
    """Plan (or resubmit) the job once, after planning a 1-video job (imports, checkpoint
    config: the fixed cost, timed apart); print wall times and RSS as JSON."""
    from videopanda_cluster.cluster.driver import plan_job
    from videopanda_cluster.storage.open import open_store

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as warm:
        plan_job(_caption_config(_manifest(Path(warm), 1), warm, "warmup"), open_store(warm))
    warmup = time.perf_counter() - start
    cfg = _caption_config(Path(manifest), output, job_id)
    store = open_store(cfg.output)
    base = psutil.Process().memory_info().rss
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    _plan, ledger = plan_job(cfg, store)
    planned = time.perf_counter() - start
    first = ledger.pending()[:1]
    first_s = time.perf_counter() - start
    peak = sampler.finish()
    print(json.dumps({"warmup_s": warmup, "plan_s": planned, "first_shard_s": first_s,
                      "first_shard": first, "base": base, "peak": peak}))  # fmt: skip


def _run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _job_bytes(store: Any, job_id: str) -> int:
    from videopanda_cluster.jobs.layout import job_prefix

    return sum(store.size(key) for key in store.list(f"{job_prefix(job_id)}/"))


def bench_plan(directory: Path, sizes: list[int]) -> dict[str, list[dict]]:
    from videopanda_cluster.storage.open import open_store

    plans, ledgers = [], []
    for n in sizes:
        manifest = _manifest(directory, n)
        job_id = f"scale-{n}"
        with tempfile.TemporaryDirectory(dir=directory, prefix="store-") as store_dir:
            print(f"planning {n} videos ...", file=sys.stderr)
            fresh = _run_child(str(manifest), store_dir, job_id)
            fresh_load = load()
            size = _job_bytes(open_store(store_dir), job_id)
            again = _run_child(str(manifest), store_dir, job_id)
            again_load = load()
        plans.append(
            {
                "videos": n,
                "plan_s": round(fresh["plan_s"], 2),
                "fixed_s": round(fresh["warmup_s"], 2),
                "base_rss_mb": _mb(fresh["base"]),
                "peak_rss_mb": _mb(fresh["peak"]),
                "rss_kb_per_video": round((fresh["peak"] - fresh["base"]) / n / 1024, 3),
                "rss_target": f"<= {RSS_TARGET_MB} MB at 10M, flat",
                "load": fresh_load,
                "resubmit_first_shard_s": round(again["first_shard_s"], 2),
                "resubmit_peak_rss_mb": _mb(again["peak"]),
                "resubmit_target": f"<= {RESUBMIT_TARGET_S} s at 1M",
                "resubmit_load": again_load,
            }
        )
        ledgers.append(
            {
                "videos": n,
                "job_bytes": size,
                "bytes_per_video": round(size / n, 1),
                "load": fresh_load,
            }
        )
    return {"plan": plans, "ledger": ledgers}


@contextmanager
def _azurite(directory: Path) -> Iterator[Any]:
    """A fresh Azurite on a loopback port (data in a temporary folder of ``directory``), with
    AZURE_STORAGE_CONNECTION_STRING set for this process and its children."""
    from tests.azurite import AzuriteServer

    with (
        tempfile.TemporaryDirectory(dir=directory, prefix="azurite-") as data,
        AzuriteServer(Path(data) / "data") as server,
    ):
        previous = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = server.connection_string
        try:
            yield server
        finally:
            if previous is None:
                os.environ.pop("AZURE_STORAGE_CONNECTION_STRING")
            else:
                os.environ["AZURE_STORAGE_CONNECTION_STRING"] = previous


def _progress(
    url: str, connection_string: str, job_id: str, exact: bool
) -> tuple[float, dict[str, Any]]:
    """``exact``: what a run's start and end do (fold, list markers); else what status does."""
    from videopanda_cluster.jobs.ledger import Ledger
    from videopanda_cluster.storage.open import open_store

    start = time.perf_counter()
    store = open_store(url, connection_string=connection_string)
    progress = Ledger.load(store, job_id).progress(exact=exact)
    return time.perf_counter() - start, progress


def _committed_job(manifest: Path, url: str, job_id: str) -> tuple[float, float]:
    """Plan the job and commit every shard; (plan s, commit s). The plan is freed on return."""
    from videopanda_cluster.cluster.driver import plan_job
    from videopanda_cluster.storage.open import open_store

    print(f"status setup: planning {job_id} on Azurite ...", file=sys.stderr)
    start = time.perf_counter()
    _plan, ledger = plan_job(_caption_config(manifest, url, job_id), open_store(url))
    plan_s = time.perf_counter() - start
    ids = ledger.pending()
    print(f"status setup: committing {len(ids)} shards ...", file=sys.stderr)
    start = time.perf_counter()
    with ThreadPoolExecutor(COMMIT_THREADS) as pool:
        commits = pool.map(lambda s: ledger.commit(s, rows=SHARD_SIZE, failed=0, counters={}), ids)
        for n, _ in enumerate(commits, 1):
            if n % 10_000 == 0:
                print(f"  {n} committed ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return plan_s, time.perf_counter() - start


def bench_status(directory: Path, server: Any, shards: int) -> dict[str, Any]:
    from tests.azurite import ACCOUNT, ACCOUNT_KEY
    from tests.fault_proxy import FaultProxy

    videos = shards * SHARD_SIZE
    url, job_id = "az://scale-status", f"status-{shards}"
    plan_s, commit_s = _committed_job(_manifest(directory, videos), url, job_id)
    setup_load = load()
    gc.collect()  # the plan's objects are gone: no slower collections in the timed part
    exact_s, progress = _progress(url, server.connection_string, job_id, exact=True)
    exact_load = load()
    assert progress["committed_shards"] == shards, progress
    seconds, quick = _progress(url, server.connection_string, job_id, exact=False)
    progress_load = load()
    assert quick == progress, (quick, progress)
    start = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "videopanda_cluster.cli", "status", job_id, "--output", url,
         "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    cli_s = time.perf_counter() - start
    cli_load = load()
    assert json.loads(cli.stdout)["committed_shards"] == shards, cli.stdout
    with FaultProxy(server.port) as proxy:
        _progress(url, proxy.connection_string(ACCOUNT, ACCOUNT_KEY), job_id, exact=False)
        requests = sum(proxy.requests.values())
    return {
        "shards": shards,
        "videos": videos,
        "setup_plan_s": round(plan_s, 1),
        "setup_commit_s": round(commit_s, 1),
        "setup_load": setup_load,
        "run_end_progress_s": round(exact_s, 2),
        "run_end_load": exact_load,
        "status_s": round(seconds, 2),
        "status_requests": requests,
        "status_load": progress_load,
        "cli_status_s": round(cli_s, 2),
        "cli_load": cli_load,
        "target": f"<= {STATUS_TARGET_S} s at 62500 shards",
    }


def _video(directory: Path, n: int, spec: SampleSpec) -> Path:
    path = directory / spec.name
    if not path.exists():
        print(f"writing {path} ({spec.frames} frames) ...", file=sys.stderr)
        tmp = path.with_name(f".{path.name}.partial.mp4")
        write_video(tmp, spec, seed=n)
        tmp.replace(path)
    return path


def bench_bytes(directory: Path, server: Any) -> list[dict]:
    from videopanda_cluster.cluster.stages import DecodeWorker
    from videopanda_cluster.storage.open import open_store
    from videopanda_cluster.video.extract import PreprocessOptions

    store = open_store("az://scale-bytes", connection_string=server.connection_string)
    worker = DecodeWorker(PreprocessOptions())
    rows = []
    for n, spec in enumerate(VIDEOS):
        path = _video(directory, n, spec)
        store.put(path.name, path.read_bytes())
        start = time.perf_counter()
        meta, _payload = worker.decode(spec.name, f"az://scale-bytes/{path.name}")
        seconds = time.perf_counter() - start
        assert meta["ok"], meta
        size = path.stat().st_size
        rows.append(
            {
                "file": spec.name,
                "blob_mb": _mb(size),
                "bytes_fetched": meta["bytes_fetched"],
                "ratio": round(meta["bytes_fetched"] / size, 3),
                "target": f"<= {READ_RATIO_TARGET}",
                "ranged_gets": meta["fetch_requests"],
                "decode_s": round(seconds, 2),
                "load": load(),
            }
        )
    return rows


def _table(title: str, rows: list[dict]) -> None:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print(f"\n{title}")
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".cache/bench-scale"))
    parser.add_argument("--big", action="store_true", help=f"also plan {BIG:,} videos")
    parser.add_argument("--sizes", help="comma-separated video counts (default 10k,100k,1M)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="plan,status,bytes")
    parser.add_argument("--status-shards", type=int, default=62_500)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _plan_child(*args.child)
        return
    only = args.only.split(",")
    if unknown := set(only) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)} (choose from {', '.join(SECTIONS)})")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SIZES)
    if args.big:
        sizes.append(BIG)
    args.dir.mkdir(parents=True, exist_ok=True)
    out = args.dir / "scale.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    results["machine"] = {"cpus": os.cpu_count(), "memory_gb": memory_gb}
    if "plan" in only:
        results.update(bench_plan(args.dir, sizes))
    if "status" in only or "bytes" in only:
        with _azurite(args.dir) as server:
            if "status" in only:
                results["status"] = bench_status(args.dir, server, args.status_shards)
            if "bytes" in only:
                results["bytes"] = bench_bytes(args.dir, server)
    out.write_text(json.dumps(results, indent=2))
    ran = {"plan": "plan" in only, "ledger": "plan" in only, "status": "status" in only,
           "bytes": "bytes" in only}  # fmt: skip
    titles = {
        "plan": "plan_job of a caption job, then a resubmission (fresh child each; LocalStore)",
        "ledger": "bytes under jobs/<job_id>/ after planning",
        "status": "progress of a fully committed job on Azurite",
        "bytes": "bytes fetched ÷ blob size, DecodeWorker on Azurite",
    }
    for key, title in titles.items():
        if ran[key]:
            value = results[key]
            _table(title, value if isinstance(value, list) else [value])
    print(f"\nmachine: {results['machine']}; results in {out}")


if __name__ == "__main__":
    main()
