"""Where results, the job ledger and the feature cache live: a local directory or Azure Blob.

:func:`open_store` turns a URL into a :class:`Store`; keys are relative POSIX paths checked by
:func:`validate_key`, and :func:`safe_key_component` makes untrusted ids usable in them. The
Azure backend (imported lazily) needs ``azure-storage-blob``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    Store,
    StoreAccessDenied,
    StoreUnavailable,
    safe_key_component,
    validate_key,
    validate_prefix,
)
from .local import LocalStore
from .open import open_store

if TYPE_CHECKING:
    from .azure import AzureBlobStore

__all__ = [
    "AzureBlobStore",
    "LocalStore",
    "Store",
    "StoreAccessDenied",
    "StoreUnavailable",
    "open_store",
    "safe_key_component",
    "validate_key",
    "validate_prefix",
]


def __getattr__(name: str):
    if name == "AzureBlobStore":
        from .azure import AzureBlobStore

        return AzureBlobStore
    raise AttributeError(name)
