"""The defaults of an eval run, shared by ``run_eval`` and ``videopanda eval run``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EvalConfig:
    """Job settings an eval run defaults to where they differ from :class:`JobConfig`'s, for
    ``run_eval`` and ``eval run`` alike: the reference eval's (spec §5.3)."""

    max_new_tokens: int = 1024  # answers end at EOS; JobConfig's 64 is for ad-hoc jobs

    def job_settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """These defaults under ``overrides`` (JobConfig fields)."""
        return {**asdict(self), **overrides}
