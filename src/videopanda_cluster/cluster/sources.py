"""Open a video URI for decoding: a local path, ``file://`` URL, or ``az://container/key`` blob."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse


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

    ``stores`` caches one Store per container across calls.
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
    stream: BinaryIO = stores[container].open_read(key)
    try:
        yield stream
    finally:
        stream.close()
