"""The Store interface, key rules and the errors shared by every backend."""

from __future__ import annotations

import hashlib
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAX_KEY_BYTES = 1024
MAX_COMPONENT_BYTES = 255  # NAME_MAX of common filesystems
MAX_COMPONENT_CHARS = 120
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


class StoreUnavailable(Exception):
    """The backend could not be reached, even after retries (outage, timeouts, 5xx, throttling).

    A fault of the environment, never of the data: callers leave the work uncommitted. Messages
    never carry credentials.
    """


class StoreAccessDenied(StoreUnavailable):
    """The backend refused the credentials (401/403: wrong or expired key or SAS, no permission)."""


class StoreNotConfigured(StoreAccessDenied, ValueError):
    """No credentials are configured for the backend (a fault of the environment, not of data)."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a relative POSIX path safe on every backend, else raise ValueError.

    Rejected: empty keys, absolute paths, empty, ``.`` and ``..`` components (``a//b``, ``a/``),
    components ending in ``.`` (Azure drops trailing dots), backslashes, control characters (NUL
    included), keys over 1024 UTF-8 bytes and components over 255 (the filesystem limit).
    """
    if not isinstance(key, str):
        raise TypeError(f"store key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("invalid store key: empty")
    shown = _shown(key)
    _check_chars(key, shown)
    if key.startswith("/"):
        raise ValueError(f"invalid store key {shown}: absolute paths are not allowed")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(
                f"invalid store key {shown}: empty, '.' and '..' path components are not allowed"
            )
        if part.endswith("."):
            raise ValueError(
                f"invalid store key {shown}: path components may not end with '.' "
                "(Azure Blob Storage drops trailing dots)"
            )
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ValueError(
                f"invalid store key {shown}: a path component is over {MAX_COMPONENT_BYTES} bytes"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is ``""`` or a key, optionally ending in ``/``; else ValueError."""
    if not isinstance(prefix, str):
        raise TypeError(f"store prefix must be a str, got {type(prefix).__name__}")
    if prefix:
        stem = prefix[:-1] if prefix.endswith("/") else prefix
        try:
            validate_key(stem)
        except ValueError as exc:
            raise ValueError(
                f"invalid store prefix {_shown(prefix)}: must be empty or a valid key, optionally "
                f"ending in '/' ({exc})"
            ) from None
    return prefix


def _shown(key: str) -> str:
    return repr(key) if len(key) <= 120 else f"{key[:120]!r}... ({len(key)} characters)"


def _check_chars(key: str, shown: str) -> None:
    if "\\" in key:
        raise ValueError(f"invalid store key {shown}: backslashes are not allowed")
    if any(unicodedata.category(c) == "Cc" for c in key):
        raise ValueError(
            f"invalid store key {shown}: control characters (e.g. NUL) are not allowed"
        )
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"invalid store key {shown}: not encodable as UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(f"invalid store key {shown}: {size} bytes long (at most {MAX_KEY_BYTES})")


def safe_key_component(text: str) -> str:
    """Turn any string into one safe, distinct path component (for ids from untrusted input).

    ``[A-Za-z0-9._-]`` is kept and every other UTF-8 byte becomes ``%XX``, as does a leading or
    trailing ``.`` (so never ``.``, ``..``, a hidden name or a trailing dot); ``""`` becomes
    ``%empty``. An encoding longer
    than 120 characters is cut there (not inside an escape) and ``-`` plus 16 hex digits of the
    SHA-256 of the full encoding are appended; such results are always longer than 120 characters,
    so they cannot collide with an uncut one. Distinct inputs give distinct results.
    """
    if not text:
        return "%empty"
    data = text.encode("utf-8", "surrogatepass")
    out = "".join(chr(b) if b in _SAFE_BYTES else f"%{b:02X}" for b in data)
    if out.startswith("."):
        out = "%2E" + out[1:]
    if out.endswith("."):
        out = out[:-1] + "%2E"
    if len(out) <= MAX_COMPONENT_CHARS:
        return out
    cut = MAX_COMPONENT_CHARS
    escape = out.rfind("%", cut - 2, cut)
    if escape != -1:
        cut = escape  # do not split a %XX escape
    digest = hashlib.sha256(out.encode("ascii")).hexdigest()[:16]
    return f"{out[:cut]}-{digest}"


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and its version: an opaque token that changes on every write."""

    data: bytes
    version: str


class Store(ABC):
    """A flat namespace of immutable-per-write byte objects addressed by relative POSIX keys.

    Writes are atomic: a reader sees a whole old object, a whole new one, or none.
    """

    # listings are paged requests: disjoint prefixes are faster listed concurrently
    concurrent_listing = False

    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store lives (``file:///...`` or ``az://container/prefix``); never secrets."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Create or replace ``key`` atomically."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if missing; False (nothing written) if it already existed."""

    @abstractmethod
    def get_versioned(self, key: str) -> Versioned:
        """The whole object and its current version; ``KeyError(key)`` if missing."""

    @abstractmethod
    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        """Replace ``key`` only if its version is still ``version`` (compare-and-swap).

        Returns the new version, or None (nothing written) if the object changed or is gone.
        An object that already holds exactly ``data`` counts as written (a retried request whose
        first attempt succeeded): its version is returned.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; ``KeyError(key)`` if missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix`` (a plain string prefix, so ``a/`` is a folder)."""

    def iter_list(self, prefix: str = "") -> Iterator[str]:
        """The keys of :meth:`list`, streamed (stores that page their listings override it)."""
        yield from self.list(prefix)

    def iter_names(self, prefix: str = "") -> Iterator[str]:
        """The fastest listing of names under ``prefix``, in no promised order; on a
        hierarchical-namespace account it may include folder entries (for flat folders whose
        names the caller parses)."""
        yield from self.iter_list(prefix)

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is missing."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size of the object in bytes; ``KeyError(key)`` if missing."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A seekable read-only binary file object; ``KeyError(key)`` if missing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
