"""Feature cache: a backend's visual features per video in the store, keyed by (video content
hash, preprocessing settings, the video's flip decision, the backend's feature identity: for
Video-Panda the STAB weights hash, for any other backend its kind and weights, so backends never
share entries).

An entry is ``<key>.safetensors`` with ``frame_000`` … ``frame_007`` (each ``(tokens, width)``)
and the decode provenance (sampled indices, pts, …) in its metadata, then ``<key>.json``, a
small copy of that provenance written last: it marks the entry complete. A decoder that finds the
JSON has everything a row needs, so a cached video is hashed but never decoded again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from ..jobs.layout import FEATURES_PREFIX, feature_key
from ..video.extract import PreprocessOptions, decoder_version
from ..video.sampling import FrameSpec

if TYPE_CHECKING:  # decoders use this module without importing torch
    import torch


# FrameSpec fields beside num_frames and size: hashed only when they differ from FrameSpec's
# defaults, so the keys of entries written before sampling rules existed stay the same
_SAMPLING_FIELDS = tuple(f.name for f in fields(FrameSpec) if f.name not in ("num_frames", "size"))
# The backend whose entries predate backends: its kind is implied, not hashed (old keys still hit)
IMPLIED_BACKEND = "videopanda"


def preprocess_fingerprint(options: PreprocessOptions) -> str | None:
    """What of the preprocessing changes the pixels; None when they are not reproducible
    (reference flip with an unseeded coin), which disables caching."""
    if options.flip == "reference" and options.flip_seed is None:
        return None
    fields = {
        "num_frames": options.num_frames,
        "size": options.size,
        "flip": options.flip,
        "flip_seed": options.flip_seed if options.flip == "reference" else None,
        "decoder": decoder_version(),
    }
    default = FrameSpec()
    for name in _SAMPLING_FIELDS:
        if getattr(options, name) != getattr(default, name):
            fields[name] = getattr(options, name)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class VideoKey:
    """One video as the encoder sees it: its content hash and its flip decision (provenance)."""

    content_hash: str
    flipped: bool


@dataclass(frozen=True)
class CacheIdentity:
    """What, besides the video's bytes, the cached tokens depend on."""

    store_url: str
    preprocess: str
    stab: str  # the backend's feature identity (the STAB weights hash for Video-Panda)
    prefix: str = FEATURES_PREFIX
    backend: str = IMPLIED_BACKEND

    @classmethod
    def of(
        cls,
        store_url: str,
        features: str,
        options: PreprocessOptions,
        backend: str = IMPLIED_BACKEND,
    ) -> CacheIdentity | None:
        """``features``: the backend's :meth:`~..backends.VideoBackend.feature_identity`;
        ``backend``: its kind."""
        fingerprint = preprocess_fingerprint(options)
        if fingerprint is None:
            return None
        return cls(store_url, fingerprint, features, backend=backend)


class FeatureCache:
    def __init__(self, identity: CacheIdentity, store=None) -> None:
        from ..storage.open import open_store

        self.identity = identity
        self.store = store if store is not None else open_store(identity.store_url)

    def key(self, content_hash: str, flipped: bool = False) -> str:
        """The tokens' key; the provenance is at the same name with ``.json``. ``flipped`` (the
        video's reference-flip decision) is part of a mirrored video's key, so tokens cached
        unflipped are never served for it."""
        ident = self.identity
        text = f"{content_hash}|{ident.preprocess}|{ident.stab}" + ("|flipped" if flipped else "")
        if ident.backend != IMPLIED_BACKEND:
            text += f"|backend={ident.backend}"
        return feature_key(ident.prefix, hashlib.sha256(text.encode()).hexdigest())

    def _provenance_key(self, content_hash: str, flipped: bool) -> str:
        return self.key(content_hash, flipped).removesuffix(".safetensors") + ".json"

    def get(self, content_hash: str, flipped: bool = False) -> list[torch.Tensor] | None:
        from safetensors.torch import load

        try:
            data = self.store.get(self.key(content_hash, flipped))
        except KeyError:
            return None
        tensors = load(data)
        return [tensors[name] for name in sorted(tensors)]

    def provenance(self, content_hash: str, flipped: bool = False) -> dict[str, Any] | None:
        """The decode provenance of a complete entry, or None (no entry, or an unreadable one)."""
        try:
            return json.loads(self.store.get(self._provenance_key(content_hash, flipped)))
        except (KeyError, ValueError):
            return None

    def put(self, content_hash: str, frames: list[torch.Tensor], provenance: dict[str, Any]) -> str:
        """Store tokens under the key of the content hash and ``provenance["flipped"]``."""
        from safetensors.torch import save

        flipped = bool(provenance.get("flipped", False))
        key = self.key(content_hash, flipped)
        blob = save(
            {f"frame_{i:03d}": t.contiguous() for i, t in enumerate(frames)},
            metadata={"provenance": json.dumps(provenance, sort_keys=True)},
        )
        self.store.put(key, blob)
        self.store.put(self._provenance_key(content_hash, flipped), json.dumps(provenance).encode())
        return key


def identity_dict(identity: CacheIdentity | None) -> dict[str, str] | None:
    """A plain dict for passing between Ray workers."""
    return asdict(identity) if identity else None
