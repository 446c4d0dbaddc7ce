"""The job driver: inputs → shards → ledger → stage actors on Ray → committed result shards.

Shards are the unit of work and of commit. Up to ``max_in_flight`` shards are in the pipeline at
once (bounded memory); within a shard, videos are decoded in parallel, encoded as they are
decoded in batches of up to ``encode_batch`` and answered in batches of ``generate_batch``
prompts. Each video is encoded once for all its questions. A shard whose actors die is retried
(actors restart, possibly on another node); a committed shard is never written again, so every
row exists exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..jobs.failures import (
    ExitCode,
    Interrupted,
    JobError,
    JobFailed,
    environment_fault,
    one_line,
    root_cause,
)
from ..jobs.layout import results_prefix, summary_key
from ..video.extract import PreprocessOptions
from ..video.sampling import FrameSpec
from .batching import ArrivalBatcher
from .features import VideoKey
from .rows import answer_row, error_rows, feature_row, no_question_row

if TYPE_CHECKING:
    from ..backends import VideoBackend

__all__ = ["JobFailed", "run_job"]

MAX_ATTEMPTS = 4
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray uses 127.0.0.1 as the node address
TINY_MODEL_DIR = Path(os.environ.get("VIDEOPANDA_CACHE", ".cache")) / "tiny-random-model"


@dataclass
class JobPlan:
    """What every shard of a job shares (its videos are read from the ledger's plan by shard)."""

    job_id: str
    prefix: str  # store prefix of this job
    job: dict[str, Any]  # fields copied into every row
    checkpoint: str
    backend: str = "videopanda"  # a key of backends.BACKENDS
    frames: FrameSpec = field(default_factory=FrameSpec)  # what the backend asks of the decoder

    @property
    def input_size(self) -> int | None:
        """The letterbox side frames are preprocessed to (None: frames as decoded)."""
        return self.frames.size


@dataclass
class Stats:
    rows: int = 0
    failed: int = 0
    videos: int = 0
    shards: int = 0
    stage_s: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, shard: dict[str, Any]) -> None:
        with self.lock:
            self.rows += shard["rows"]
            self.failed += shard["failed"]
            self.videos += shard["videos"]
            self.shards += 1
            self.stage_s.update(shard["stage_s"])
            self.errors.update(shard["errors"])


def _questions_for(cfg, video) -> list[dict]:
    """The prompts of a planned video (its questions already include the job's defaults)."""
    if cfg.kind == "caption":
        return [{"question_id": f"{video.video_id}#caption", "question": cfg.caption_prompt}]
    if cfg.kind == "features":
        return []
    return [{"question_id": q.question_id, "question": q.text} for q in video.questions]


def start_ray(cfg) -> None:
    """Join ``cfg.address`` or start a local Ray bound to loopback, sized for the stage actors."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False)
        return
    # Embedded mode stays on loopback: Ray otherwise advertises the machine's external address.
    os.environ.setdefault(LOOPBACK_ENV, "0")
    if os.environ[LOOPBACK_ENV] == "0":
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by Ray's IP lookup
    cpus = cfg.decode_workers + cfg.encode_workers + cfg.generate_workers + 1
    ray.init(
        address="local",  # a new in-process cluster, never one that happens to run here
        num_cpus=max(cpus, os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
    )


def generation_options(cfg) -> dict[str, Any]:
    """The GenerationOptions fields a job's config sends to its GenerateWorkers."""
    return {
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": cfg.do_sample,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "seed": cfg.seed,
        "batch_size": cfg.generate_batch,
    }


def preprocess_options(cfg, frames: FrameSpec) -> PreprocessOptions:
    """How a job's decoders preprocess: as the backend's ``frames`` spec asks; the reference
    flip's coins are seeded by the job's seed."""
    return PreprocessOptions.of(
        frames, flip=cfg.flip, flip_seed=cfg.seed, timeout=cfg.decode_timeout
    )


def video_key(decoded: dict[str, Any]) -> VideoKey:
    """A decoded video's content hash and flip decision, for the encoder and its cache."""
    return VideoKey(decoded["content_hash"], decoded["provenance"]["flipped"])


def _input_get(refs: list) -> list[dict[str, Any]]:
    """The decode metadata behind ``refs``; a fault of the input store stops the shard."""
    import ray

    try:
        return ray.get(refs)
    except Exception as exc:  # the input store failed, not the result store
        fault = environment_fault(exc, "input store")
        if fault is None:
            raise
        raise fault from None


class Pipeline:
    """The stage actors of one job and the per-shard flow through them."""

    def __init__(self, cfg, plan: JobPlan, ledger, store_url: str) -> None:
        import ray

        from .stages import DecodeWorker, EncodeWorker, GenerateWorker, WriterWorker

        self.cfg, self.plan, self.ledger = cfg, plan, ledger
        self.options = preprocess_options(cfg, plan.frames)
        restart = {"max_restarts": -1, "max_task_retries": 3}
        device = cfg.device
        cache = store_url if cfg.use_feature_cache else None
        self.decoders = [
            ray.remote(DecodeWorker).options(num_cpus=1, **restart).remote(self.options)
            for _ in range(cfg.decode_workers)
        ]
        self.encoders = [
            ray.remote(EncodeWorker)
            .options(num_cpus=1, num_gpus=cfg.num_gpus_encode, **restart)
            .remote(plan.checkpoint, device, self.options, cache, plan.backend)
            for _ in range(cfg.encode_workers)
        ]
        self.generators = []
        if cfg.kind != "features":
            self.generators = [
                ray.remote(GenerateWorker)
                .options(num_cpus=1, num_gpus=cfg.num_gpus_generate, **restart)
                .remote(plan.checkpoint, device, cfg.attention, plan.backend)
                for _ in range(cfg.generate_workers)
            ]
        self.writer = (
            ray.remote(WriterWorker)
            .options(num_cpus=0, **restart)
            .remote(store_url, cfg.results_jsonl)
        )
        self.generation = generation_options(cfg)
        self.stop = threading.Event()  # set: start no new shard attempt, retry nothing
        # Decoders skip cached videos; they wait (inside Ray, not here) for the cache identity,
        # which needs the weights an encoder loads.
        self.cache_identity = self.encoders[0].cache_identity.remote() if cache else None
        # the backend's fingerprint, for every row, once an encoder has loaded it (row_fields)
        self.fingerprint = self.encoders[0].fingerprint.remote()
        self.lock = threading.Lock()

    def row_fields(self) -> dict[str, Any]:
        """The job's fields of every row (``plan.job``), with the loaded backend's fingerprint
        in ``model`` (asked of an encoder once; again after a failure)."""
        import ray

        with self.lock:
            if self.plan.job["model"].get("fingerprint") is None:
                try:
                    fingerprint = ray.get(self.fingerprint)
                except Exception:
                    self.fingerprint = self.encoders[0].fingerprint.remote()
                    raise
                model = {**self.plan.job["model"], "fingerprint": fingerprint}
                self.plan.job = {**self.plan.job, "model": model}
            return self.plan.job

    def run_shard(self, shard_id: str) -> dict[str, Any] | None:
        """Process and commit one shard; None if the job stopped before it was committed.

        A dead worker (actors restart, possibly elsewhere) retries the shard up to
        ``MAX_ATTEMPTS`` times. A store that is unreachable or throttling retries it with
        exponential backoff for ``cfg.store_retry_window`` seconds, then fails the job
        (:class:`JobFailed`, resumable). Other faults of the environment (credentials, full
        disk) fail the job at once. Nothing is committed for an attempt that failed.
        """
        import ray
        from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

        crashes, delay, outage_since = 0, 1.0, None
        while not self.stop.is_set():
            try:
                self.ledger.record_attempt(shard_id)
                rows, videos, stage_s = self._process(shard_id)
                stats = ray.get(self.writer.write.remote(self.plan.prefix, shard_id, rows))
                errors = Counter(r["error"] for r in rows if r["status"] != "ok")
                self.ledger.commit(
                    shard_id, rows=stats["rows"], failed=stats["failed"], counters=dict(errors)
                )
                return {**stats, "videos": videos, "stage_s": stage_s, "errors": errors}
            except Exception as exc:
                if self.stop.is_set():
                    return None  # interrupted or failed elsewhere: leave the shard pending
                fault = environment_fault(exc)
                if fault is not None:
                    if fault.exit_code != ExitCode.STORE_UNAVAILABLE:
                        raise fault from None
                    now = time.monotonic()
                    outage_since = outage_since or now
                    waited = now - outage_since
                    if waited >= self.cfg.store_retry_window:
                        raise JobFailed(
                            f"after {waited:.0f} s of retries: {fault}", fault.exit_code
                        ) from None
                    self.stop.wait(min(delay, self.cfg.store_retry_window - waited))
                    delay = min(2 * delay, 30.0)
                    continue
                if not isinstance(exc, (RayActorError, RayTaskError, ObjectLostError)):
                    raise
                crashes += 1
                if crashes >= MAX_ATTEMPTS:
                    raise JobFailed(
                        f"shard {shard_id} failed {crashes} times: {one_line(root_cause(exc))}; "
                        "rerun to resume",
                        ExitCode.CLUSTER if isinstance(exc, RayActorError) else ExitCode.INTERNAL,
                    ) from None
        return None

    def _process(self, shard_id: str) -> tuple[list[dict], int, Counter]:
        """Decode, encode and answer the videos of one shard → its rows, its video count and
        the seconds per stage.

        Every decode is submitted at once. A decoded video goes to an encoder as soon as
        ``encode_batch`` decoded videos wait, or the first of them has waited
        ``encode_batch_wait_s`` (:class:`~.batching.ArrivalBatcher`); each encode batch's
        generate call takes the encoder's tokens from the object store. Rows come in plan
        order: videos without a question, then failed decodes, then the others.
        """
        import ray

        videos = self.ledger.shard_plan(shard_id)
        uri = {v.video_id: v.uri for v in videos}
        prompts = {v.video_id: _questions_for(self.cfg, v) for v in videos}
        offset = int(shard_id) if shard_id.isdigit() else 0
        # a qa video without a question is accounted by one error row and not read
        unasked = {v for v in uri if self.cfg.kind == "qa" and not prompts[v]}
        calls = [
            self.decoders[(offset + i) % len(self.decoders)]
            .decode.options(num_returns=2)
            .remote(vid, uri[vid], self.cache_identity)
            for i, vid in enumerate(v for v in uri if v not in unasked)
        ]
        metas: dict[int, dict[str, Any]] = {}  # decode metadata by position in ``calls``
        decoding = {meta: i for i, (meta, _) in enumerate(calls)}
        batcher = ArrivalBatcher(self.cfg.encode_batch, self.cfg.encode_batch_wait_s)
        batches: list[tuple[list[int], Any, Any]] = []
        while decoding or batcher.waiting:
            if decoding:
                timeout = batcher.wait_for(time.monotonic())
                ready, rest = ray.wait(list(decoding), num_returns=1, timeout=timeout)
                if ready and rest:  # with every other decode done by now
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                arrived = [decoding.pop(ref) for ref in ready]
                metas.update(zip(arrived, _input_get(ready), strict=True))
                batcher.add([i for i in arrived if metas[i]["ok"]], time.monotonic())
            for members in batcher.take(time.monotonic(), closed=not decoding):
                batches.append(self._submit(len(batches), offset, members, metas, calls, prompts))
        stage_s = Counter(decode_s=sum(m["decode_s"] for m in metas.values()))
        job = self.row_fields()
        rows = [no_question_row(job, v, uri[v]) for v in uri if v in unasked]
        for i in sorted(metas):
            if not metas[i]["ok"]:
                rows += error_rows(job, metas[i], prompts[metas[i]["video_id"]])
        done: dict[int, list[dict]] = {}  # the rows of each encoded video, by position
        for members, enc_meta, gen in batches:
            encoded = dict(zip(members, ray.get(enc_meta), strict=True))
            stage_s["encode_s"] += sum(e["encode_s"] for e in encoded.values())
            if gen is None:
                done.update({i: [feature_row(job, metas[i], encoded[i])] for i in members})
                continue
            at = {metas[i]["video_id"]: i for i in members}
            for answer in ray.get(gen):
                i = at[answer["video_id"]]
                stage_s["generate_s"] += answer["generate_s"]
                done.setdefault(i, []).append(answer_row(job, metas[i], encoded[i], answer))
        rows += [row for i in sorted(done) for row in done[i]]
        return rows, len(videos), stage_s

    def _submit(
        self,
        n: int,
        offset: int,
        members: list[int],
        metas: dict[int, dict[str, Any]],
        calls: list,
        prompts: dict[str, list[dict]],
    ) -> tuple[list[int], Any, Any]:
        """Submit the ``n``-th encode batch of a shard and its generate call (round-robin over
        the actors from the shard's offset) → (members, encode metadata ref, answers ref)."""
        encoder = self.encoders[(offset + n) % len(self.encoders)]
        enc_meta, enc_tokens = encoder.encode.options(num_returns=2).remote(
            [video_key(metas[i]) for i in members], *[calls[i][1] for i in members]
        )
        gen = None
        if self.generators:
            requests = [
                {
                    "video_id": metas[i]["video_id"],
                    "index": j,
                    "prompts": prompts[metas[i]["video_id"]],
                }
                for j, i in enumerate(members)
            ]
            generator = self.generators[(offset + n) % len(self.generators)]
            gen = generator.generate.remote(requests, self.generation, enc_tokens)
        return members, enc_meta, gen

    def close(self) -> None:
        import ray

        for actor in [*self.decoders, *self.encoders, *self.generators, self.writer]:
            ray.kill(actor)


def default_checkpoint() -> tuple[Path, str]:
    """The bundled small model when the package has it, else a tiny random one made on the fly."""
    from ..bundled import SMALL_MODEL_ID, has_small_model, small_model

    if has_small_model():
        return small_model(), SMALL_MODEL_ID
    from ..model.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(TINY_MODEL_DIR), "tiny-random (generated, untrained)"


def job_id_of(cfg) -> str:
    """``cfg.job_id``, else the default id derived from the settings."""
    from ..jobs.config import default_job_id

    return cfg.job_id or default_job_id(cfg)


def job_hash(cfg, checkpoint_hash: str) -> str:
    """The hash a job's ledger keeps: its settings' and its model files'."""
    from ..jobs.config import config_hash

    return hashlib.sha256(f"{config_hash(cfg)}|{checkpoint_hash}".encode()).hexdigest()


def model_job_id(cfg) -> str:
    """``<kind>-<12 hex digits of job_hash>``: an id that changes with the model's files too, for
    a command whose settings are fixed (the demo), so that a new model starts a new job."""
    from .fingerprint import checkpoint_fingerprint

    return f"{cfg.kind}-{job_hash(cfg, checkpoint_fingerprint(plan_model(cfg).checkpoint))[:12]}"


@dataclass(frozen=True)
class ModelPlan:
    """The model a job runs, found from the checkpoint folder's JSON files alone."""

    checkpoint: Path
    default_id: str | None  # the model id when the job names no checkpoint
    backend: type[VideoBackend]
    frames: FrameSpec  # what the backend asks of the decoder


def plan_model(cfg) -> ModelPlan:
    """The job's checkpoint, backend and frame spec, before any model loads: a folder that no
    backend runs, or a frame count its model does not take, raises ValueError (one line)."""
    from ..backends import backend_class

    checkpoint, default_id = Path(cfg.checkpoint or "."), None
    if not cfg.checkpoint:
        checkpoint, default_id = default_checkpoint()
    backend = backend_class(checkpoint, cfg.backend)
    frames = backend.frame_spec(checkpoint, cfg.num_frames)
    return ModelPlan(checkpoint, default_id, backend, frames)


def plan_job(cfg, store) -> tuple[JobPlan, Any]:
    """Read inputs, fix the job id, and open (or resume) the ledger.

    Inputs that differ from the job's plan are refused (InputsChanged), or with ``cfg.update``
    planned in new shards; ``ledger.plan_update`` then tells what changed.
    """
    from ..jobs.inputs import spool_inputs
    from ..jobs.ledger import Ledger
    from .fingerprint import checkpoint_fingerprint

    model = plan_model(cfg)
    checkpoint, backend = model.checkpoint, model.backend
    ckpt_hash = checkpoint_fingerprint(checkpoint)
    job_id = job_id_of(cfg)
    with spool_inputs(cfg.inputs, default_questions=cfg.questions or None) as inputs:
        if cfg.kind == "qa" and not inputs.asked:
            raise ValueError("a qa job needs questions: in the manifest or with --question")
        ledger = Ledger.open_or_create(
            store,
            job_id,
            job_hash(cfg, ckpt_hash),
            inputs,
            shard_size=cfg.shard_size,
            update=cfg.update,
        )
    job = {
        "job_id": job_id,
        "kind": cfg.kind,
        "model": {
            "id": model.default_id or checkpoint.name,
            "checkpoint_hash": ckpt_hash,
            "backend": backend.kind,
            "fingerprint": None,  # the loaded backend's (Pipeline)
        },
        "generation": {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": cfg.do_sample,
            "temperature": cfg.temperature if cfg.do_sample else None,
            "top_p": cfg.top_p if cfg.do_sample else None,
            "top_k": cfg.top_k if cfg.do_sample else None,
            "seed": cfg.seed,
            "attention": cfg.attention,
        },
    }
    plan = JobPlan(
        job_id=job_id,
        prefix=results_prefix(job_id),
        job=job,
        checkpoint=str(checkpoint),
        backend=backend.kind,
        frames=model.frames,
    )
    return plan, ledger


def run_job(cfg, on_progress=None) -> dict[str, Any]:
    """Run (or resume) a job to completion; returns the summary (also stored as summary.json).

    The driver holds the job's lease (:class:`~videopanda_cluster.jobs.lease.JobLease`) from
    before planning to after the summary: a second driver of the job gets JobLocked. Raises a
    :class:`JobError` when the job cannot finish (store down, interrupted, lease lost, ...) after
    writing the summary of what this run committed; a rerun resumes from the ledger.
    """
    from ..jobs.lease import JobLease
    from ..storage.open import open_store

    started = time.time()
    store = open_store(cfg.output)
    with JobLease(store, job_id_of(cfg), cfg.lease_seconds) as lease:
        return _run_leased(cfg, store, lease, started, on_progress)


def _run_leased(cfg, store, lease, started: float, on_progress) -> dict[str, Any]:
    plan, ledger = plan_job(cfg, store)
    pending = ledger.pending()
    progress = ledger.progress()
    stats = Stats()
    failure: JobError | None = None
    if pending:
        try:
            start_ray(cfg)
        except Exception as exc:
            raise JobFailed(f"Ray did not start: {one_line(exc)}", ExitCode.CLUSTER) from None
        pipeline = Pipeline(cfg, plan, ledger, store.url)
        try:
            with StopOnSignal(pipeline.stop) as signals:
                failure = _run_shards(
                    pipeline, pending, stats, progress, started, on_progress, lease
                )
                if failure is None and signals.received:
                    failure = Interrupted("interrupted")
        finally:
            pipeline.close()
    summary = _write_summary(cfg, store, plan, ledger, stats, started, failure)
    if failure is not None:
        final = summary["progress"]
        if isinstance(failure, Interrupted):
            failure = Interrupted(
                f"interrupted; {final['committed_shards']} of {final['total_shards']} shards "
                "committed: rerun to resume"
            )
        raise failure
    return summary


def _run_shards(pipeline, pending, stats, progress, started, on_progress, lease) -> JobError | None:
    """Run ``pending`` shards, ``max_in_flight`` at a time, until done or stopped.

    When ``pipeline.stop`` is set (a signal, a shard failed the job, or another driver took the
    job's lease) no new shard starts;
    shards in flight get ``cfg.stop_grace`` seconds to commit, then their actors are killed.
    Returns the failure that stopped the job, if any.
    """
    cfg = pipeline.cfg
    failure: JobError | None = None
    pool = ThreadPoolExecutor(max_workers=cfg.max_in_flight)
    queue = iter(pending)  # submitted as slots free up: the driver holds only shards in flight
    try:
        running = {pool.submit(pipeline.run_shard, s) for s in islice(queue, cfg.max_in_flight)}
        stopped_at = None
        while running:
            done, running = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            if not pipeline.stop.is_set():
                running |= {pool.submit(pipeline.run_shard, s) for s in islice(queue, len(done))}
            for future in done:
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except Exception as exc:
                    if failure is None:
                        failure = exc if isinstance(exc, JobError) else _unexpected(exc)
                    pipeline.stop.set()
                    continue
                if result is not None:
                    stats.add(result)
                    if on_progress:
                        on_progress(stats, progress, time.time() - started)
            if failure is None:
                try:
                    lease.check()
                except JobError as exc:
                    failure = exc
                    pipeline.stop.set()
            if pipeline.stop.is_set():
                if stopped_at is None:
                    stopped_at = time.monotonic()
                    # results of abandoned attempts are dropped on purpose: no Ray log for each
                    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
                    for future in running:
                        future.cancel()  # shards not started yet
                elif time.monotonic() - stopped_at > cfg.stop_grace:
                    pipeline.close()  # in-flight attempts fail and are left uncommitted
                    wait(running, timeout=30)
                    break
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return failure


def _unexpected(exc: Exception) -> JobError:
    """A failure no rule knows: kept as the job's error with its one-line description."""
    from ..jobs.failures import describe

    code, line = describe(exc)
    error = JobFailed(line.removeprefix("job failed: "), code)
    error.__cause__ = exc
    return error


class StopOnSignal:
    """First SIGINT/SIGTERM sets ``event`` (stop submitting, let in-flight shards finish);
    a second exits the process at once with code 130. Only in the main thread."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.received = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received += 1
        if self.received > 1:
            os.write(2, b"interrupted again: exiting now\n")
            os._exit(ExitCode.INTERRUPTED)
        os.write(2, b"interrupted: stopping; in-flight shards may finish (again to exit now)\n")
        self.event.set()

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.received:
            return  # stay installed: a second signal while the process winds down exits at once
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _write_summary(cfg, store, plan, ledger, stats, started, failure) -> dict[str, Any]:
    """The run's summary, stored as summary.json when the store takes it."""
    import json

    final = None
    if failure is None:
        final = ledger.progress()
    elif _store_ok(failure):
        with contextlib.suppress(Exception):  # the failure is what gets reported
            final = ledger.progress()
    elapsed = time.time() - started
    summary = {
        "job_id": plan.job_id,
        "kind": cfg.kind,
        "store": store.url,
        "results": f"{plan.prefix}/",
        "progress": final or _progress_unknown(ledger),
        "this_run": {
            "shards": stats.shards,
            "videos": stats.videos,
            "rows": stats.rows,
            "failed_rows": stats.failed,
            "errors": dict(stats.errors),
            "stage_seconds": {k: round(v, 3) for k, v in stats.stage_s.items()},
            "seconds": round(elapsed, 3),
            "videos_per_s": round(stats.videos / elapsed, 3) if elapsed > 0 else None,
        },
        "stopped": None
        if failure is None
        else {
            "reason": one_line(failure),
            "exit_code": int(failure.exit_code),
        },
        "model": _summary_model(store, plan),
    }
    if ledger.plan_update is not None:
        summary["inputs_update"] = ledger.plan_update.summary()
    if final is not None:
        with contextlib.suppress(Exception):  # the failure is reported either way
            store.put(summary_key(plan.job_id), json.dumps(summary, indent=2).encode())
    return summary


def _summary_model(store, plan) -> dict[str, Any]:
    """``plan.job["model"]``; a run that loaded no backend (nothing left to run) takes the
    fingerprint from the job's earlier summary when that names the same checkpoint and backend."""
    import json

    model = plan.job["model"]
    if model.get("fingerprint") is not None:
        return model
    with contextlib.suppress(Exception):  # no earlier summary, or unreadable: leave it unknown
        earlier = json.loads(store.get(summary_key(plan.job_id)))["model"]
        same = ("checkpoint_hash", "backend")
        if earlier.get("fingerprint") and all(earlier.get(k) == model.get(k) for k in same):
            return {**model, "fingerprint": earlier["fingerprint"]}
    return model


def _store_ok(failure: JobError) -> bool:
    """Whether the result store can still be read after ``failure``."""
    return failure.exit_code not in (
        ExitCode.STORE_UNAVAILABLE,
        ExitCode.ACCESS_DENIED,
        ExitCode.LOCAL_RESOURCE,
    )


def _progress_unknown(ledger) -> dict[str, Any]:
    return {
        "total_shards": ledger.total_shards,
        "total_videos": ledger.total_videos,
        "committed_shards": None,
        "committed_videos": None,
    }
