"""The pipeline's stage workers. Each class becomes one Ray actor kind (see ``driver.py``).

DecodeWorker    video URI -> sampled uint8 frames (as the backend's FrameSpec asks) + provenance
EncodeWorker    frames -> a backend's features per frame, via the feature cache   (GPU if any)
GenerateWorker  features + questions -> answers (the backend's answer path)      (GPU if any)
WriterWorker    rows -> a Parquet shard of RESULT_SCHEMA (+ JSONL if asked)          (I/O)
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from ..model.config import AttentionImpl
from ..video.errors import Reason, VideoDecodeError, is_environment_fault
from ..video.extract import PreprocessOptions

if TYPE_CHECKING:  # torch is imported by the model workers only: decoders start faster
    import torch

    from .features import VideoKey


def worker_id() -> str:
    """host:pid of this worker, recorded in every row."""
    return f"{socket.gethostname()}:{os.getpid()}"


class DecodeWorker:
    """Hash, decode and letterbox one video; faults of the video come back as data with a reason
    code, faults of the environment (store outage, denied access) as exceptions."""

    def __init__(self, options: PreprocessOptions) -> None:
        from ..video.isolation import IsolatedRunner
        from . import sources  # noqa: F401  (imported as the actor starts, not at its first video)

        self.options = options
        self.runner = IsolatedRunner(options.timeout)
        self.runner.start()  # the child's start-up is the actor's, not its first video's
        self.stores: dict = {}  # for the store check after a timeout

    def decode(
        self, video_id: str, uri: str, cache: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(metadata, payload): the driver reads only the small metadata; the payload (frames,
        geometry, provenance) goes from the object store straight to an encoder.

        Hashing and decoding run together in the killable child process (``options.isolate``)
        under one deadline of ``options.timeout`` seconds, for local files and blobs alike. With
        ``cache`` (a feature-cache identity), a video whose tokens are cached is only hashed: its
        provenance comes from the cache and the payload is None. A blob is downloaded once
        (hash and decode share the download); the metadata's ``bytes_fetched`` and
        ``fetch_requests`` count that traffic (0 for local files).

        Raises :class:`~..storage.base.StoreUnavailable` or :class:`PermissionError` when the
        input cannot be read for a reason outside the video (never an error row).
        """
        from .sources import decode_uri

        start = time.perf_counter()
        out: dict[str, Any] = {"video_id": video_id, "uri": uri, "decode_worker": worker_id()}
        payload = None
        try:
            if self.options.isolate:
                result = self.runner.call(
                    decode_uri, uri, self.options, cache, timeout=self.options.timeout
                )
            else:
                result = decode_uri(uri, self.options, cache)
        except VideoDecodeError as exc:
            if exc.reason == Reason.TIMEOUT:
                self._check_store(uri)  # an outage that outlasted the deadline is no timeout
            out.update(ok=False, error=exc.reason.value, message=exc.message)
        else:
            out["content_hash"] = result.content_hash
            out.update(bytes_fetched=result.bytes_fetched, fetch_requests=result.requests)
            if result.error is not None:
                out.update(ok=False, error=result.error.reason.value, message=result.error.message)
            elif result.extracted is None:
                out.update(ok=True, provenance=result.provenance, decode_skipped=True)
            else:
                out.update(ok=True, provenance=result.provenance)
                payload = {
                    "frames": result.extracted.frames,
                    "geometry": result.extracted.geometry,
                    "provenance": result.provenance,
                }
        out["decode_s"] = time.perf_counter() - start
        return out, payload

    def _check_store(self, uri: str) -> None:
        """Raise StoreUnavailable when the blob's store cannot be reached now."""
        from .sources import local_path, open_uri

        if local_path(uri) is not None:
            return
        try:
            with open_uri(uri, self.stores):
                pass
        except Exception as exc:
            if is_environment_fault(exc):
                raise
            # otherwise (the blob is gone, ...) the timeout stands


class EncodeWorker:
    """A backend's visual encoder over batches of videos; reads and fills the feature cache."""

    def __init__(
        self,
        checkpoint: str,
        device: str | None,
        options: PreprocessOptions,
        cache_url: str | None,
        backend: str | None = None,
    ) -> None:
        """``backend``: a key of ``BACKENDS`` (default: the folder's ``model_type``)."""
        from ..backends import load_backend
        from .features import CacheIdentity, FeatureCache

        self.backend = load_backend(checkpoint, kind=backend, device=device, with_llm=False)
        self.options = options
        identity = (
            CacheIdentity.of(
                cache_url, self.backend.feature_identity(), options, backend=self.backend.kind
            )
            if cache_url
            else None
        )
        self.cache = FeatureCache(identity) if identity else None

    def fingerprint(self) -> str:
        """The loaded backend's fingerprint (recorded in every row)."""
        return self.backend.fingerprint()

    def cache_identity(self) -> dict[str, str] | None:
        """What decoders need to find this encoder's cache entries (None: no cache)."""
        from .features import identity_dict

        return identity_dict(self.cache.identity if self.cache else None)

    def encode(
        self, videos: list[VideoKey], *payloads: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], list[list[torch.Tensor]]]:
        """(metadata, features): the backend's features per frame (CPU) for each video, via the
        cache, with the RGB mirrored where the decoder's coin said so. A None payload (the
        decoder found the entry) must be a cache hit."""
        from ..backends import DecodedVideo

        start = time.perf_counter()
        tokens: list[list[torch.Tensor]] = [[] for _ in payloads]
        hits = [False] * len(payloads)
        todo: list[tuple[int, dict[str, Any]]] = []  # (index, payload) of each cache miss
        for i, (video, payload) in enumerate(zip(videos, payloads, strict=True)):
            cached = self.cache.get(video.content_hash, video.flipped) if self.cache else None
            if cached is not None:
                tokens[i], hits[i] = cached, True
            elif payload is None:  # removed since the decoder saw it: the shard is retried
                raise RuntimeError(f"feature cache entry for {video.content_hash} disappeared")
            else:
                todo.append((i, payload))
        if todo:
            decoded = [
                DecodedVideo(payload["frames"], payload["geometry"], videos[i].flipped)
                for i, payload in todo
            ]
            for (i, payload), features in zip(todo, self.backend.encode(decoded), strict=True):
                tokens[i] = features
                if self.cache:
                    self.cache.put(videos[i].content_hash, features, payload["provenance"])
        elapsed = (time.perf_counter() - start) / max(1, len(payloads))
        metas = [
            {
                "cache_hit": hit,
                "feature_key": self.cache.key(v.content_hash, v.flipped) if self.cache else None,
                "encode_s": elapsed,
                "encode_worker": worker_id(),
                "visual_tokens": self.backend.visual_tokens(features),
            }
            for hit, v, features in zip(hits, videos, tokens, strict=True)
        ]
        return metas, tokens


class GenerateWorker:
    """A backend's answer path: every prompt of a batch of videos."""

    def __init__(
        self,
        checkpoint: str,
        device: str | None,
        attention: AttentionImpl = "eager",
        backend: str | None = None,
    ) -> None:
        from ..backends import load_backend

        self.backend = load_backend(checkpoint, kind=backend, device=device, attention=attention)

    def generate(
        self,
        requests: list[dict[str, Any]],
        options: dict[str, Any],
        tokens: list[list[torch.Tensor]],
    ) -> list[dict]:
        """requests: {video_id, index (into ``tokens``), prompts: [{question_id, question}]}
        → one {video_id, question_id, question, prompt, answer} per prompt, in order. A prompt
        that does not fit the model's context gets ``answer`` None with ``error``
        (``question_too_long``) and ``message`` instead; the others are answered."""
        from ..model.generation import GenerationOptions, PromptTooLong

        start = time.perf_counter()
        features = [tokens[r["index"]] for r in requests]
        questions = [[p["question"] for p in r["prompts"]] for r in requests]
        answers = self.backend.answer(features, questions, GenerationOptions(**options))
        elapsed = (time.perf_counter() - start) / max(1, sum(map(len, questions)))
        rows = []
        for req, video_features, video_answers in zip(requests, features, answers, strict=True):
            for p, answer in zip(req["prompts"], video_answers, strict=True):
                row = {
                    "video_id": req["video_id"],
                    **p,
                    "prompt": self.backend.prompt_text(p["question"], video_features),
                    "answer": answer,
                }
                if isinstance(answer, PromptTooLong):
                    row.update(
                        answer=None, error=Reason.QUESTION_TOO_LONG.value, message=str(answer)
                    )
                rows.append({**row, "generate_s": elapsed, "generate_worker": worker_id()})
        return rows


class WriterWorker:
    """Writes a shard's rows under deterministic names (atomic puts): Parquet of
    :data:`~.results.RESULT_SCHEMA`, and JSON lines if ``jsonl`` (keys: ``jobs.layout``)."""

    def __init__(self, store_url: str, jsonl: bool = False) -> None:
        from ..storage.open import open_store
        from . import results  # noqa: F401  (pyarrow imported while the actor starts)

        self.store = open_store(store_url)
        self.jsonl = jsonl

    def write(self, prefix: str, shard_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from ..jobs import layout
        from . import results

        parquet = results.to_parquet(rows)
        # The driver commits the shard in the ledger only after both puts returned.
        if self.jsonl:
            self.store.put(layout.jsonl_key(prefix, shard_id), results.to_jsonl(rows))
        self.store.put(layout.parquet_key(prefix, shard_id), parquet)
        return {"rows": len(rows), "failed": sum(r.get("status") != "ok" for r in rows)}
