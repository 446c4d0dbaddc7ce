"""A distillation teacher for the synthetic corpus, read off the scene instead of a network.

Distillation (spec §7.3, ``distill.py``) needs teacher tokens per frame on a square grid. The
reference takes them from a pretrained video encoder (LanguageBind). For a corpus written by
``videopanda synth`` the ground truth of every frame is known, so this teacher's features come
from ``metadata.json``: for each sampled frame and each STAB cell (S/28 per side, one student
token), how much of the cell is covered by each shape kind, each colour and each motion, by a
shape that appears late, and by background. It is privileged information, used only in
training; evaluation never sees it.

Channels (:data:`CHANNELS`, width 16, a multiple of the compressor's 8 heads): 4 kinds, 4
colours, 5 motions (the 4 directions and still), late, background, and one always-zero pad.
Kind and motion cover are weighted up (``kind_weight``, ``motion_weight``): the cosine loss is
dominated by the large channels, and at weight 1 the background decides it and direction does
not learn (docs/training.md). Frames are the ones the decoder samples (spec §4.1), placed like the
preprocessor's letterbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..storage import Store
from ..video.geometry import compute_geometry, grid_cells
from ..video.samples import SHAPES, draw_shape
from ..video.sampling import sample_positions
from .distill import TeacherFeatures, write_teacher_features, write_teacher_info
from .synth import DIRECTIONS, SYNTH_COLOURS, SynthVideo, load_metadata

MOTIONS = (*DIRECTIONS, "still")
CHANNELS = (
    *(f"kind:{k}" for k in SHAPES),
    *(f"colour:{c}" for c in SYNTH_COLOURS),
    *(f"motion:{m}" for m in MOTIONS),
    "late",
    "background",
    "pad",
)


@dataclass(frozen=True)
class SceneTeacherOptions:
    """Input size of the student and the channel weights."""

    image_size: int = 112
    num_frames: int = 8
    kind_weight: float = 3.0
    motion_weight: float = 3.0
    background_weight: float = 0.3

    @property
    def cells(self) -> int:
        return grid_cells(self.image_size)


def _planes(video: SynthVideo, index: int, options: SceneTeacherOptions) -> np.ndarray:
    """(channels, H, W) float32 cover of frame ``index`` at the source resolution."""
    h, w = video.options.height, video.options.width
    planes = np.zeros((len(CHANNELS), h, w), np.float32)
    covered = np.zeros((h, w), bool)
    canvas = np.zeros((h, w, 3), np.uint8)
    for shape in video.shapes:
        if index < shape.appear:
            continue
        canvas[:] = 0
        draw_shape(
            canvas, shape.kind, (1, 1, 1), shape.centre(index, video.options.frames), shape.radius
        )
        ys, xs = np.nonzero(canvas[..., 0])  # the pixels the shape covers
        planes[CHANNELS.index(f"kind:{shape.kind}"), ys, xs] = options.kind_weight
        planes[CHANNELS.index(f"colour:{shape.colour}"), ys, xs] = 1.0
        planes[CHANNELS.index(f"motion:{shape.motion}"), ys, xs] = options.motion_weight
        if shape.appear > 0:
            planes[CHANNELS.index("late"), ys, xs] = 1.0
        covered[ys, xs] = True
    planes[CHANNELS.index("background"), ~covered] = options.background_weight
    return planes


def _letterboxed_cells(planes: np.ndarray, options: SceneTeacherOptions) -> np.ndarray:
    """Source-size (channels, H, W) planes → (cells·cells, channels): resized and pasted like
    the letterbox, padding zero, then averaged over each cell. An all-zero plane stays zero and
    equal planes are resized once (the result is the same as resizing each)."""
    channels, h, w = planes.shape
    geom = compute_geometry(w, h, options.image_size)
    size = options.image_size
    square = np.zeros((size, size, channels), np.float32)
    x0, y0 = geom.offset
    rw, rh = geom.resize
    resized: dict[bytes, np.ndarray] = {}
    for c in range(channels):
        plane = planes[c]
        if not plane.any():
            continue
        key = plane.tobytes()
        if key not in resized:
            image = Image.fromarray(plane).resize((rw, rh), Image.Resampling.BILINEAR)
            resized[key] = np.asarray(image)
        square[y0 : y0 + rh, x0 : x0 + rw, c] = resized[key]
    n = options.cells
    return square.reshape(n, size // n, n, size // n, channels).mean((1, 3)).reshape(n * n, -1)


def scene_features(video: SynthVideo, options: SceneTeacherOptions) -> TeacherFeatures:
    """One video's teacher tokens: (num_frames, cells², 16), every frame valid."""
    indices = sample_positions(video.options.frames, float(video.options.fps), options.num_frames)
    frames = [_letterboxed_cells(_planes(video, i, options), options) for i in indices]
    tokens = torch.from_numpy(np.stack(frames))
    return TeacherFeatures(tokens, torch.ones(len(frames), dtype=torch.bool))


def write_scene_teacher(
    corpus: str | Path,
    store: Store,
    prefix: str = "teacher",
    options: SceneTeacherOptions | None = None,
    splits: tuple[str, ...] = ("train",),
) -> int:
    """Store the features of every video of ``splits`` for ``StoredTeacher`` (keyed by video
    name, which is the training records' id); returns how many were written."""
    options = options or SceneTeacherOptions()
    grid_cells(options.image_size)  # raises unless a positive multiple of 28
    count = 0
    for video, split in load_metadata(corpus):
        if split in splits:
            write_teacher_features(store, prefix, video.name, scene_features(video, options))
            count += 1
    write_teacher_info(
        store,
        prefix,
        len(CHANNELS),
        videos=count,
        teacher="scene (synthetic ground truth)",
        channels=list(CHANNELS),
        options=options.__dict__,
    )
    return count
