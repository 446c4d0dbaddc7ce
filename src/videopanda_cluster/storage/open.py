"""Open a Store from a URL: a local path, ``file://`` URL or ``az://container/prefix``."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from .base import Store, StoreNotConfigured
from .local import LocalStore

_HELP = "use a local path, file:///abs/path or az://container/prefix"
# Operators tune the Azure SDK's retries of every process (driver and workers) by environment:
# (variable, AzureBlobStore argument, type).
_RETRY_ENV = (
    ("VIDEOPANDA_AZURE_RETRIES", "retry_total", int),
    ("VIDEOPANDA_AZURE_BACKOFF", "retry_backoff", float),
)


def open_store(url: str, **options: Any) -> Store:
    """The Store at ``url``; ``options`` go to the backend's constructor.

    ``az://`` authenticates with ``AZURE_STORAGE_CONNECTION_STRING`` when set, else with
    ``DefaultAzureCredential`` at ``AZURE_STORAGE_ACCOUNT_URL`` (or
    ``https://$AZURE_STORAGE_ACCOUNT.blob.core.windows.net``). A ``file://`` path is
    percent-decoded (as ``Path.as_uri`` encodes it); an ``az://`` prefix is taken as written, like
    the blob keys of ``az://`` video URIs. ``VIDEOPANDA_AZURE_RETRIES`` and
    ``VIDEOPANDA_AZURE_BACKOFF`` override the Azure SDK's retry count and first backoff (s).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"empty store URL ({_HELP})")
    if "://" not in url:
        return LocalStore(url, **options)
    parts = urlsplit(url)
    shown = repr(url.split("?", 1)[0].split("#", 1)[0])  # a query may hold a SAS token
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// store URL with a remote host {parts.netloc!r}: {shown}")
        if parts.query or parts.fragment or not parts.path:
            raise ValueError(f"file:// store URL needs an absolute path and nothing else: {shown}")
        return LocalStore(unquote(parts.path), **options)
    if scheme == "az":
        if parts.query or parts.fragment:
            raise ValueError(
                "az:// store URLs take no query string or fragment (credentials go "
                "in AZURE_STORAGE_CONNECTION_STRING)"
            )
        if not parts.netloc:
            raise ValueError(f"az:// store URL without a container: {shown} ({_HELP})")
        return _open_azure(parts.netloc, parts.path.strip("/"), options)
    raise ValueError(f"unsupported store URL scheme {parts.scheme!r} in {shown} ({_HELP})")


def _open_azure(container: str, prefix: str, options: dict[str, Any]) -> Store:
    from .azure import AzureBlobStore

    if not options.get("connection_string") and not options.get("account_url"):
        connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").strip()
        account_url = os.environ.get("AZURE_STORAGE_ACCOUNT_URL", "").strip()
        account = os.environ.get("AZURE_STORAGE_ACCOUNT", "").strip()
        if connection_string:
            options["connection_string"] = connection_string
        elif account_url:
            options["account_url"] = account_url
        elif account:
            options["account_url"] = f"https://{account}.blob.core.windows.net"
        else:
            raise StoreNotConfigured(
                "az:// store needs AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT_URL "
                "or AZURE_STORAGE_ACCOUNT to be set"
            )
    for name, key, kind in _RETRY_ENV:
        value = os.environ.get(name, "").strip()
        if value and key not in options:
            try:
                options[key] = kind(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a number") from None
    return AzureBlobStore(container, prefix, **options)
