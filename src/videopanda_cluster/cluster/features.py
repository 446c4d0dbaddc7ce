"""Feature cache: STAB tokens per video in the store, keyed by (video content hash,
preprocessing settings, STAB weights hash)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from ..video.extract import PreprocessOptions, decoder_version
from .fingerprint import module_hash


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
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass
class FeatureCache:
    store: object  # a Store
    preprocess: str
    stab: str
    prefix: str = "features"

    @classmethod
    def open(cls, url: str, model, options: PreprocessOptions) -> FeatureCache | None:
        from ..storage.open import open_store

        fingerprint = preprocess_fingerprint(options)
        if fingerprint is None:
            return None
        return cls(open_store(url), fingerprint, module_hash(model.video_tower))

    def key(self, content_hash: str) -> str:
        digest = hashlib.sha256(f"{content_hash}|{self.preprocess}|{self.stab}".encode())
        return f"{self.prefix}/{digest.hexdigest()}.safetensors"

    def get(self, content_hash: str) -> list[torch.Tensor] | None:
        from safetensors.torch import load

        try:
            data = self.store.get(self.key(content_hash))
        except KeyError:
            return None
        tensors = load(data)
        return [tensors[name] for name in sorted(tensors)]

    def put(self, content_hash: str, frames: list[torch.Tensor]) -> str:
        from safetensors.torch import save

        key = self.key(content_hash)
        blob = save({f"frame_{i:03d}": t.contiguous() for i, t in enumerate(frames)})
        self.store.put(key, blob)
        return key
