"""A Store in a local (or mounted shared) directory."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO

from .base import Store, Versioned, validate_key, validate_prefix

# Writers stage data in ``.tmp-<32 hex>`` files next to the target; listings skip them.
_TMP_NAME = re.compile(r"\.tmp-[0-9a-f]{32}")


class LocalStore(Store):
    """Objects are files under ``root``; writes go through an fsynced temp file in the same folder.

    ``root`` is created if missing, unless ``create`` is False (then FileNotFoundError).

    Unlike blob storage, a key cannot also be the folder of other keys (``a`` and ``a/b``).
    """

    def __init__(self, root: str | os.PathLike[str], create: bool = True) -> None:
        path = Path(root).expanduser()
        if not create and not path.is_dir():
            raise FileNotFoundError(f"no store at {path}")
        path.mkdir(parents=True, exist_ok=True)
        self.root = path.resolve()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def path(self, key: str) -> Path:
        """The file that holds ``key``, guaranteed to lie inside the root."""
        validate_key(key)
        path = self.root / key
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root) or resolved == self.root:
            raise ValueError(f"invalid store key {key!r}: resolves outside the store root")
        return path

    def _write_temp(self, path: Path, data: bytes) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise self._conflict(path) from None
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    @staticmethod
    def _sync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except IsADirectoryError:
            tmp.unlink(missing_ok=True)
            raise self._conflict(path) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._sync_dir(path.parent)

    def _conflict(self, path: Path) -> FileExistsError:
        key = path.relative_to(self.root).as_posix()
        return FileExistsError(
            f"cannot write {key!r} in {self.url}: a local store cannot hold both a key and keys "
            "under it as a folder (e.g. 'a' and 'a/b')"
        )

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self.path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic create-if-missing of a complete file
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_dir(path.parent)
        return True

    def get(self, key: str) -> bytes:
        with self._open(key) as fh:
            return fh.read()

    def get_versioned(self, key: str) -> Versioned:
        with self._open(key) as fh:
            data = fh.read()
            return Versioned(data, _version(os.fstat(fh.fileno()), data))

    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        """Compare-and-swap under an exclusive ``flock`` of the current file.

        Atomic against other conditional writes (put_if_version, put_if_absent), also from other
        hosts where the shared filesystem supports locks (NFSv4 does); a plain ``put`` racing
        with it may be lost.
        """
        path = self.path(key)
        while True:
            try:
                fh = open(path, "rb")  # noqa: SIM115 - closed below
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
            with fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # released when fh closes
                held = os.fstat(fh.fileno())
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    return None
                if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                    continue  # replaced while we waited for the lock: compare with the new file
                current = fh.read()
                if _version(held, current) != version:
                    return _version(held, current) if current == data else None
                tmp = self._write_temp(path, data)
                new_version = _version(os.stat(tmp), data)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                self._sync_dir(path.parent)
                return new_version

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        folder = self.root / prefix.rpartition("/")[0]
        keys = []
        for dirpath, _dirnames, filenames in os.walk(folder):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if _TMP_NAME.fullmatch(name):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self.path(key).unlink()

    def size(self, key: str) -> int:
        path = self.path(key)
        if not path.is_file():
            raise KeyError(key)
        return path.stat().st_size

    def open_read(self, key: str) -> BinaryIO:
        return self._open(key)

    def _open(self, key: str) -> BinaryIO:
        path = self.path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None
        return fh


def _version(stat: os.stat_result, data: bytes) -> str:
    """Inode, modification time and content digest: every write makes a new file, so a new one."""
    return f"{stat.st_ino}-{stat.st_mtime_ns}-{hashlib.sha256(data).hexdigest()[:32]}"
