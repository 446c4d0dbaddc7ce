"""A job's shard plan in the store, in pieces: one small Parquet file per block of consecutive
shards (about :data:`PIECE_VIDEOS` videos), written once when the plan is made and read a piece
at a time by the driver, so no process ever holds the whole plan.

Piece ``k`` of a plan holds shards ``k * piece_shards`` to ``(k + 1) * piece_shards - 1``, one row
per video in shard order; a shard with no rows has no videos (all of them left the inputs).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage.base import Store
from .spool import PlannedVideo, Question

PIECE_VIDEOS = 4_096
CACHED_PIECES = 2

PLAN_SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("digest", pa.string()),
        ("questions", pa.list_(pa.struct([("question_id", pa.string()), ("text", pa.string())]))),
        ("removed", pa.bool_()),  # in a committed shard, no longer in the inputs
    ]
)


def piece_shards_for(shard_size: int) -> int:
    """Shards per piece for shards of ``shard_size`` videos."""
    return max(1, PIECE_VIDEOS // max(1, shard_size))


def piece_key(prefix: str, piece: int) -> str:
    return f"{prefix}/{piece:06d}.parquet"


class PlanWriter:
    """Writes plan rows, given in shard order, as pieces under ``prefix``."""

    def __init__(self, store: Store, prefix: str, piece_shards: int) -> None:
        self.store, self.prefix, self.piece_shards = store, prefix, piece_shards
        self.pieces: dict[str, int] = {}  # piece number (str, for JSON) -> videos
        self._piece = -1
        self._new_piece()

    def _new_piece(self) -> None:
        self._rows: dict[str, list] = {name: [] for name in PLAN_SCHEMA.names}
        self._asked: tuple[list[int], list[str], list[str]] = ([0], [], [])  # offsets, ids, texts

    def add(self, shard: int, video: PlannedVideo, removed: bool = False) -> None:
        piece = shard // self.piece_shards
        if piece != self._piece:
            if piece < self._piece:
                raise ValueError(f"plan rows out of shard order (shard {shard})")
            self._flush()
            self._piece = piece
        rows = self._rows
        rows["shard"].append(shard)
        rows["video_id"].append(video.video_id)
        rows["uri"].append(video.uri)
        rows["digest"].append(video.digest)
        offsets, ids, texts = self._asked
        for question in video.questions:
            ids.append(question.question_id)
            texts.append(question.text)
        offsets.append(len(ids))
        rows["removed"].append(removed)

    def close(self) -> dict[str, int]:
        """Write the last piece; the number of videos of each written piece."""
        self._flush()
        return self.pieces

    def _flush(self) -> None:
        if not self._rows["shard"]:
            return
        offsets, ids, texts = self._asked
        questions = pa.StructArray.from_arrays(
            [pa.array(ids, pa.string()), pa.array(texts, pa.string())], ["question_id", "text"]
        )
        self._rows["questions"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), questions)
        table = pa.table(self._rows, schema=PLAN_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.store.put(piece_key(self.prefix, self._piece), buffer.getvalue())
        self.pieces[str(self._piece)] = table.num_rows
        self._new_piece()


Row = tuple[int, PlannedVideo, bool]  # (shard, video, removed)


class PlanReader:
    """Reads a stored plan by shard, keeping the last :data:`CACHED_PIECES` pieces in memory."""

    def __init__(self, store: Store, prefix: str, piece_shards: int, pieces: dict[str, int]):
        self.store, self.prefix, self.piece_shards = store, prefix, piece_shards
        self.pieces = pieces
        self._cache: OrderedDict[int, dict[int, list[Row]]] = OrderedDict()
        self._lock = threading.Lock()

    def shard(self, index: int) -> list[Row]:
        """The rows of shard ``index`` (empty for a shard with no videos)."""
        piece = index // self.piece_shards
        with self._lock:
            shards = self._cache.get(piece)
            if shards is None:
                shards = {}
                for row in self._read(piece):
                    shards.setdefault(row[0], []).append(row)
                self._cache[piece] = shards
                while len(self._cache) > CACHED_PIECES:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(piece)
            return list(shards.get(index, []))

    def rows(self) -> Iterator[Row]:
        """Every row of the plan, in shard order, a piece at a time."""
        for piece in sorted(int(p) for p in self.pieces):
            yield from self._read(piece)

    def _read(self, piece: int) -> Iterator[Row]:
        if str(piece) not in self.pieces:
            return
        key = piece_key(self.prefix, piece)
        try:
            table = pq.read_table(pa.BufferReader(self.store.get(key)))
        except KeyError:
            raise ValueError(f"plan piece {key} in {self.store.url} is missing") from None
        except pa.ArrowException as exc:
            raise ValueError(f"plan piece {key} in {self.store.url} is corrupt: {exc}") from None
        for batch in table.to_batches(max_chunksize=8192):
            columns = batch.to_pydict()
            for shard, video_id, uri, digest, questions, removed in zip(
                *(columns[name] for name in PLAN_SCHEMA.names), strict=True
            ):
                asked = tuple(Question(q["question_id"], q["text"]) for q in questions)
                yield shard, PlannedVideo(video_id, uri, asked, digest), removed

    def delete(self) -> None:
        """Remove the pieces (best effort: an old plan left behind costs only space)."""
        for piece in self.pieces:
            try:
                self.store.delete(piece_key(self.prefix, int(piece)))
            except Exception:
                return
