"""Result rows: one per (video, question) for QA, per video for captions and features.

Every row carries its provenance; failures are rows with ``status = "error"`` and a reason code,
never answers.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..video.errors import Reason
from .results import ResultRow, Timings, Workers


def base_row(job: dict[str, Any], decoded: dict[str, Any]) -> dict[str, Any]:
    """A :class:`ResultRow` (as a dict) with the job's and the decode's fields."""
    row = ResultRow(
        job_id=job["job_id"],
        kind=job["kind"],
        video_id=decoded["video_id"],
        uri=decoded["uri"],
        content_hash=decoded.get("content_hash"),
        provenance=decoded.get("provenance"),
        model=job["model"],
        generation=job["generation"] if job["kind"] != "features" else None,
        timings=asdict(Timings(decode_s=decoded.get("decode_s"))),
        workers=asdict(Workers(decode=decoded.get("decode_worker"))),
        decode_skipped=decoded.get("decode_skipped", False),  # tokens were cached: hashed only
    )
    return asdict(row)


def error_rows(job: dict[str, Any], decoded: dict[str, Any], questions: list[dict]) -> list[dict]:
    """One error row per question (per video for captions/features)."""
    rows = []
    for q in questions or [{"question_id": None, "question": None}]:
        row = base_row(job, decoded)
        row.update(
            question_id=q["question_id"],
            question=q["question"],
            status="error",
            error=decoded["error"],
            message=decoded["message"],
        )
        rows.append(row)
    return rows


def encoded_fields(row: dict[str, Any], encoded: dict[str, Any]) -> None:
    """The encoder's fields of a row; the visual token count is the encoder's where the decode
    could not tell it (frames as decoded)."""
    provenance = row["provenance"]
    if provenance is not None and provenance.get("visual_tokens") is None:
        row["provenance"] = {**provenance, "visual_tokens": encoded.get("visual_tokens")}
    row["timings"]["encode_s"] = encoded["encode_s"]
    row["workers"]["encode"] = encoded["encode_worker"]
    row["feature_cache_hit"] = encoded["cache_hit"]
    row["feature_key"] = encoded["feature_key"]


def no_question_row(job: dict[str, Any], video_id: str, uri: str) -> dict[str, Any]:
    """The one row of a qa job's video that has no question (the video is not read)."""
    video = {"video_id": video_id, "uri": uri, "error": Reason.NO_QUESTION.value}
    video["message"] = "no question for this video: none in the manifest and no --question"
    return error_rows(job, video, [])[0]


def answer_row(
    job: dict[str, Any], decoded: dict[str, Any], encoded: dict[str, Any], answer: dict[str, Any]
) -> dict[str, Any]:
    """The row of one generated answer, or of a prompt the generator refused (``error`` set,
    e.g. ``question_too_long``)."""
    row = base_row(job, decoded)
    encoded_fields(row, encoded)
    row.update(
        question_id=answer["question_id"],
        question=answer["question"],
        prompt=answer["prompt"],
        answer=answer["answer"],
        status="ok",
    )
    if answer.get("error"):
        row.update(status="error", error=answer["error"], message=answer["message"])
    row["timings"]["generate_s"] = answer["generate_s"]
    row["workers"]["generate"] = answer["generate_worker"]
    return row


def feature_row(
    job: dict[str, Any], decoded: dict[str, Any], encoded: dict[str, Any]
) -> dict[str, Any]:
    row = base_row(job, decoded)
    encoded_fields(row, encoded)
    row["status"] = "ok"
    return row
