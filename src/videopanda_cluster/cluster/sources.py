"""Open a video URI for decoding: a local path, ``file://`` URL, or ``az://container/key`` blob.

:func:`decode_uri` hashes and decodes one input under one deadline; the decode workers run it in
their killable child process (``video.isolation``), for local files and blobs alike.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypedDict
from urllib.parse import unquote, urlparse

from ..video.errors import Reason, VideoDecodeError, is_environment_fault

if TYPE_CHECKING:
    from ..video.extract import Extracted, PreprocessOptions
    from ..video.probe import Deadline, VideoSource

SPILL_CHUNK = 8 * 1024 * 1024  # bytes per ranged read while a blob is copied to its spill file


def local_path(uri: str) -> Path | None:
    """The filesystem path of a local URI, or None for remote ones."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" in uri:
        return None
    return Path(uri)


@contextmanager
def open_uri(uri: str, stores: dict):
    """Yield a path (local files) or a seekable binary stream (blobs, ranged reads).

    ``stores`` caches one Store per container across calls. A missing blob is ``not_found``.
    """
    path = local_path(uri)
    if path is not None:
        yield os.fspath(path)
        return
    scheme = uri.split("://", 1)[0]
    if scheme != "az":
        raise ValueError(f"unsupported URI scheme {scheme!r} (use a path, file:// or az://)")
    # split by hand: blob names may hold '#', '?' or '%', which URL parsing would eat
    container, _, key = uri[len("az://") :].partition("/")
    if container not in stores:
        from ..storage.open import open_store

        stores[container] = open_store(f"az://{container}")
    try:
        stream: BinaryIO = stores[container].open_read(key)
    except KeyError:
        raise VideoDecodeError(Reason.NOT_FOUND, f"no such blob: {uri}") from None
    try:
        yield stream
    finally:
        stream.close()


@dataclass
class DecodedSource:
    """What one input became: its content hash, then either model input or a decode error.

    ``provenance`` alone (``extracted`` None) means the feature cache already holds the video's
    tokens, so it was hashed only.
    """

    content_hash: str
    provenance: dict[str, Any] | None = None
    extracted: Extracted | None = None
    error: VideoDecodeError | None = None  # a fault of the video found after hashing
    bytes_fetched: int = 0  # bytes downloaded from the store for this input (0 for a local file)
    requests: int = 0  # ranged GETs that downloaded them


# The child process's stores and feature caches, kept across calls.
_stores: dict = {}
_caches: dict = {}


def decode_uri(
    uri: str, options: PreprocessOptions, cache: dict[str, str] | None = None
) -> DecodedSource:
    """Hash ``uri``, draw its flip coin, then (unless its tokens are in the feature cache
    ``cache``) decode it; the provenance records the coin (``flipped``).

    Hashing and decoding share one deadline of ``options.timeout`` seconds. Faults of the video
    before its hash is known raise :class:`VideoDecodeError`; faults of the environment
    (:func:`~..video.errors.is_environment_fault`, a full spill disk included) always raise.
    """
    from ..video.extract import extract, flip_coin
    from ..video.probe import Deadline

    deadline = Deadline(options.timeout)
    try:
        with _hashed(uri, deadline) as (source, content_hash, traffic):
            flipped = flip_coin(options, content_hash)
            cached = _cached_provenance(cache, content_hash, flipped)
            if cached is not None:
                return DecodedSource(content_hash, provenance=cached, **traffic)
            try:
                extracted = extract(source, options, deadline)
            except VideoDecodeError as exc:
                return DecodedSource(content_hash, error=exc, **traffic)
            extracted.provenance.flipped = flipped
            provenance = extracted.provenance.to_dict()
            return DecodedSource(content_hash, provenance, extracted, **traffic)
    except FileNotFoundError as exc:  # a blob deleted while being read, a file gone
        raise VideoDecodeError(Reason.NOT_FOUND, str(exc)) from None
    except VideoDecodeError:
        raise
    except Exception as exc:
        if is_environment_fault(exc):
            raise
        raise VideoDecodeError(Reason.SOURCE_UNREADABLE, f"{type(exc).__name__}: {exc}") from None


class Traffic(TypedDict, total=False):
    """A blob download's counters (none for a local file), as :class:`DecodedSource` keywords."""

    bytes_fetched: int
    requests: int


@contextmanager
def _hashed(uri: str, deadline: Deadline) -> Iterator[tuple[VideoSource, str, Traffic]]:
    """Yield (what to decode, content hash, the download's ``bytes_fetched`` and ``requests``).

    A local file is hashed, then decoded in place. A blob is read once, in ``SPILL_CHUNK`` ranged
    reads that feed the hasher and a spill file in the temp directory (``$TMPDIR``); the decode
    reads that file. The spill file is unlinked from the start, so its space is freed when it is
    closed or when the child holding it is killed.
    """
    from ..video.probe import check_file
    from .fingerprint import stream_sha256

    with open_uri(uri, _stores) as source:
        if isinstance(source, str):
            check_file(source)
            with open(source, "rb") as fh:
                content_hash = stream_sha256(fh, deadline)
            yield source, content_hash, Traffic()
            return
        with tempfile.TemporaryFile(prefix="videopanda-spill-") as spill:
            content_hash = stream_sha256(source, deadline, copy_to=spill, chunk=SPILL_CHUNK)
            spill.seek(0)
            yield (
                spill,
                content_hash,
                Traffic(bytes_fetched=source.bytes_fetched, requests=source.requests),
            )


def _cached_provenance(
    cache: dict[str, str] | None, content_hash: str, flipped: bool
) -> dict | None:
    if cache is None:
        return None
    from .features import CacheIdentity, FeatureCache

    identity = CacheIdentity(**cache)
    if identity not in _caches:
        _caches[identity] = FeatureCache(identity)
    return _caches[identity].provenance(content_hash, flipped)
