"""A Store in an Azure Blob Storage container (or Azurite), with retries and ranged reads."""

from __future__ import annotations

import contextlib
import io
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobClient, ContainerClient, ExponentialRetry

from .base import (
    Store,
    StoreAccessDenied,
    StoreUnavailable,
    Versioned,
    validate_key,
    validate_prefix,
)

READ_AHEAD = 4 * 1024 * 1024  # bytes fetched per ranged read of open_read()
SINGLE_PUT_SIZE = 64 * 1024 * 1024  # larger objects are uploaded as staged blocks + commit
_CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_SECRET_FIELDS = re.compile(r"(?i)\b(sig|AccountKey|SharedAccessSignature)=[^&;\s'\"]*")


def _redactor(connection_string: str | None) -> Callable[[str], str]:
    """A function masking this connection string's key and SAS token (and any ``sig=``) in text."""
    secrets = []
    for field in (connection_string or "").split(";"):
        name, _, value = field.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and value.strip():
            secrets.append(value.strip())

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return _SECRET_FIELDS.sub(r"\1=***", text)

    return redact


class _Backoff(ExponentialRetry):
    """Retry every kind of transient failure ``retry_total`` times, after ``backoff * 2**n`` s.

    The SDK's own ExponentialRetry adds ``increment_base ** n`` whole seconds and ±3 s of jitter,
    and caps connection failures at 3 retries whatever ``retry_total`` says.
    """

    def __init__(self, backoff: float, retry_total: int, max_backoff: float = 30.0) -> None:
        super().__init__(
            initial_backoff=backoff,  # type: ignore[arg-type]
            retry_total=retry_total,
            random_jitter_range=0,
            retry_connect=retry_total,
            retry_read=retry_total,
            retry_status=retry_total,
        )
        self.max_backoff = max_backoff

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        # ``count`` is already 1 before the first retry
        base = min(self.max_backoff, self.initial_backoff * 2 ** (settings["count"] - 1))
        return base * random.uniform(0.8, 1.2)


class AzureBlobStore(Store):
    """Objects are block blobs named ``<prefix>/<key>`` in one container.

    Authenticates with ``connection_string``, else ``account_url`` plus ``credential`` (by default
    ``DefaultAzureCredential()``). Creates the container if missing (unless ``create`` is False:
    FileNotFoundError). Transient failures (connection
    errors, timeouts, 5xx) are retried ``retry_total`` times with exponential backoff starting at
    ``retry_backoff`` seconds; after that operations raise :class:`StoreUnavailable`.
    """

    concurrent_listing = True

    def __init__(
        self,
        container: str,
        prefix: str = "",
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: Any = None,
        retry_total: int = 5,
        retry_backoff: float = 0.5,
        timeout: float = 30,
        *,
        single_put_size: int = SINGLE_PUT_SIZE,
        create: bool = True,
    ) -> None:
        if not _CONTAINER_NAME.fullmatch(container):
            raise ValueError(
                f"invalid Azure container name {container!r}: 3-63 lowercase letters, digits "
                "and single hyphens, starting and ending with a letter or digit"
            )
        prefix = prefix.strip("/")
        if prefix:
            validate_prefix(prefix)
        self.container, self.prefix = container, prefix
        self.retry_total = retry_total
        options: dict[str, Any] = {
            "retry_policy": _Backoff(retry_backoff, retry_total),
            "connection_timeout": timeout,
            "read_timeout": timeout,
            "max_single_put_size": single_put_size,
        }
        if connection_string:
            try:
                client = ContainerClient.from_connection_string(
                    connection_string, container, **options
                )
            except ValueError:
                raise ValueError(
                    "invalid Azure Storage connection string (its contents are not shown)"
                ) from None
        elif account_url:
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            client = ContainerClient(account_url, container, credential=credential, **options)
        else:
            raise ValueError("AzureBlobStore needs a connection_string or an account_url")
        self._client = client
        self._redact = _redactor(connection_string)
        with self._errors("create container"):
            if not client.exists():
                if not create:
                    raise FileNotFoundError(f"no store at {self.url}: no container {container!r}")
                with contextlib.suppress(ResourceExistsError):
                    client.create_container()

    @property
    def url(self) -> str:
        return f"az://{self.container}/{self.prefix}" if self.prefix else f"az://{self.container}"

    def __repr__(self) -> str:
        return f"AzureBlobStore({self.url!r}, account={self._client.account_name!r})"

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Faults of the environment as :class:`StoreUnavailable`, after the SDK's retries:
        transport errors, cut-off bodies, 408, 429 (throttling) and 5xx; 401/403 and failed
        credential look-ups as :class:`StoreAccessDenied`. Other HTTP errors (404, 409, 412, ...)
        propagate unchanged: they are answers about the object, not about the store.
        """
        try:
            yield
        except (ServiceRequestError, ServiceResponseError, HttpResponseError) as exc:
            status = getattr(exc, "status_code", None)
            denied = isinstance(exc, ClientAuthenticationError) or status in (401, 403)
            transient = (
                not isinstance(exc, HttpResponseError)
                or isinstance(exc, IncompleteReadError)
                or status in (408, 429)
                or (status is not None and status >= 500)
            )
            if not (denied or transient):
                raise
            detail = self._redact(str(exc).splitlines()[0] if str(exc) else "")[:300]
            kind = f"{type(exc).__name__}{f' {status}' if status else ''}"
            if denied:
                raise StoreAccessDenied(
                    f"Azure store {self.url} refused access ({action}): {kind}: {detail}"
                ) from None
            raise StoreUnavailable(
                f"Azure store {self.url} unavailable ({action}) after {self.retry_total} "
                f"retries: {kind}: {detail}"
            ) from None

    def blob_name(self, key: str) -> str:
        """The blob that holds ``key``."""
        validate_key(key)
        name = f"{self.prefix}/{key}" if self.prefix else key
        if len(name.encode()) > 1024:
            raise ValueError(f"invalid store key {key!r}: blob name over 1024 bytes with prefix")
        return name

    def put(self, key: str, data: bytes) -> None:
        name = self.blob_name(key)
        with self._errors(f"put {key!r}"):
            self._client.upload_blob(name, data, overwrite=True)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create-if-missing (``If-None-Match: *``).

        A retried request whose first attempt did succeed reports False: the object is there.
        """
        name = self.blob_name(key)
        with self._errors(f"put_if_absent {key!r}"):
            try:
                self._client.upload_blob(name, data, overwrite=False)
            except (ResourceExistsError, ResourceModifiedError):
                return False
        return True

    def get(self, key: str) -> bytes:
        return self.get_versioned(key).data

    def get_versioned(self, key: str) -> Versioned:
        name = self.blob_name(key)
        for attempt in range(3):
            with self._errors(f"get {key!r}"):
                try:
                    download = self._client.download_blob(name)
                    return Versioned(download.readall(), download.properties.etag)
                except ResourceNotFoundError:
                    raise KeyError(key) from None
                except ResourceModifiedError:  # replaced between the chunks of a large download
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        """Replace-if-unchanged (``If-Match: <etag>``); the version is the blob's ETag."""
        blob = self._client.get_blob_client(self.blob_name(key))
        with self._errors(f"put_if_version {key!r}"):
            try:
                result = blob.upload_blob(
                    data,
                    overwrite=True,
                    etag=version,
                    match_condition=MatchConditions.IfNotModified,
                )
                return result["etag"]
            except (ResourceModifiedError, ResourceNotFoundError):
                pass
        try:
            current = self.get_versioned(key)
        except KeyError:
            return None
        return current.version if current.data == data else None

    def exists(self, key: str) -> bool:
        name = self.blob_name(key)
        with self._errors(f"exists {key!r}"):
            return self._client.get_blob_client(name).exists()

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self.iter_list(prefix))

    def iter_list(self, prefix: str = "") -> Iterator[str]:
        """Keys in the service's order (by name), a page at a time."""
        validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        with self._errors(f"list {prefix!r}"):
            blobs = self._client.list_blobs(name_starts_with=base + prefix, include=["metadata"])
            for blob in blobs:
                if (blob.metadata or {}).get("hdi_isfolder") != "true":  # ADLS Gen2 folders
                    yield blob.name[len(base) :]

    def iter_names(self, prefix: str = "") -> Iterator[str]:
        """Names only: no blob properties are parsed (about 4× faster per blob)."""
        validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        with self._errors(f"list {prefix!r}"):
            for name in self._client.list_blob_names(name_starts_with=base + prefix):
                yield name[len(base) :]

    def delete(self, key: str) -> None:
        name = self.blob_name(key)
        with self._errors(f"delete {key!r}"), contextlib.suppress(ResourceNotFoundError):
            self._client.delete_blob(name)

    def size(self, key: str) -> int:
        return self._properties(key).size

    def _properties(self, key: str) -> Any:
        name = self.blob_name(key)
        with self._errors(f"size {key!r}"):
            try:
                return self._client.get_blob_client(name).get_blob_properties()
            except ResourceNotFoundError:
                raise KeyError(key) from None

    def open_read(self, key: str) -> BlobReader:
        """Ranged reads of the version current at open time, with a 4 MiB read-ahead buffer."""
        props = self._properties(key)
        blob = self._client.get_blob_client(self.blob_name(key))
        return BlobReader(_BlobRaw(self, key, blob, props.size, props.etag), READ_AHEAD)


class _BlobRaw(io.RawIOBase):
    """Unbuffered seekable view of one blob version; each read is one ranged GET."""

    def __init__(self, store: AzureBlobStore, key: str, blob: BlobClient, size: int, etag: str):
        super().__init__()
        self.name = key
        self.size = size
        self.bytes_fetched = 0
        self.requests = 0
        self._store, self._blob, self._etag = store, blob, etag
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        view = memoryview(buffer).cast("B")
        length = min(len(view), self.size - self._pos)
        if length <= 0:
            return 0
        data = self._fetch(self._pos, length)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        self._check_open()
        if self._pos >= self.size:
            return b""
        data = self._fetch(self._pos, self.size - self._pos)
        self._pos += len(data)
        return data

    def _fetch(self, offset: int, length: int) -> bytes:
        with self._store._errors(f"read {self.name!r}"):
            try:
                data = self._blob.download_blob(
                    offset=offset,
                    length=length,
                    etag=self._etag,
                    match_condition=MatchConditions.IfNotModified,
                ).readall()
            except ResourceModifiedError:
                raise OSError(
                    f"{self.name!r} in {self._store.url} was replaced while being read"
                ) from None
            except ResourceNotFoundError:
                raise FileNotFoundError(
                    f"{self.name!r} in {self._store.url} was deleted while being read"
                ) from None
        self.requests += 1
        self.bytes_fetched += len(data)
        if not data:
            raise OSError(f"{self.name!r} in {self._store.url}: empty read at offset {offset}")
        return data

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")


class BlobReader(io.BufferedReader):
    """What :meth:`AzureBlobStore.open_read` returns: a buffered reader that counts its traffic."""

    raw: _BlobRaw

    @property
    def bytes_fetched(self) -> int:
        """Bytes downloaded so far (read-ahead included)."""
        return self.raw.bytes_fetched

    @property
    def requests(self) -> int:
        """Ranged GET requests made so far."""
        return self.raw.requests
