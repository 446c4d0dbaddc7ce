"""A deterministic corpus of real encoded videos with known content, for tests, demo and benchmarks.

Each frame shows coloured shapes moving on a plain background, with the frame's own index drawn
as a 16-bit barcode along the top edge, so a decoded frame can be identified without metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np

CODE_BITS = 16
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "diamond", "triangle")
BACKGROUNDS = ((30, 30, 30), (60, 60, 90), (90, 70, 50), (40, 80, 70))


@dataclass(frozen=True)
class SampleSpec:
    """One sample video: geometry, length, codec and timing."""

    name: str
    width: int
    height: int
    frames: int
    fps: Fraction
    codec: str  # PyAV encoder name
    vfr: bool = False  # alternate frame durations of 1 and 2 ticks of 1/fps
    rotation: int = 0  # display-matrix rotation tag in degrees
    gop: int = 0  # keyframe interval; 0 = two seconds
    pix_fmt: str = "yuv420p"  # encoder input format (MJPEG takes yuvj420p)

    @property
    def filename(self) -> str:
        return self.name


def default_specs(long: bool = False) -> list[SampleSpec]:
    """The standard corpus; ``long`` adds the 1- and 5-minute 720p files used by benchmarks."""
    f = Fraction
    specs = [
        SampleSpec("square_500x500_300f_30fps.mp4", 500, 500, 300, f(30), "libx264"),
        SampleSpec("vga_640x480_150f_30fps.mkv", 640, 480, 150, f(30), "mpeg4"),
        SampleSpec("sd_340x256_40f_10fps.webm", 340, 256, 40, f(10), "libvpx-vp9"),
        SampleSpec("qcif_176x144_5f_10fps.mp4", 176, 144, 5, f(10), "libx264"),
        SampleSpec("hd_1280x720_90f_30fps.mp4", 1280, 720, 90, f(30), "libx264"),
        SampleSpec("portrait_240x320_60f_30fps.webm", 240, 320, 60, f(30), "libvpx"),
        SampleSpec("portrait_720x1280_45f_30fps.mp4", 720, 1280, 45, f(30), "libx264"),
        SampleSpec(
            "rotated_640x480_60f_30fps_rot90.mp4", 640, 480, 60, f(30), "libx264", rotation=90
        ),
        SampleSpec(
            "rotated_480x360_30f_25fps_rot270.mp4", 480, 360, 30, f(25), "libx264", rotation=270
        ),
        # Matroska rotation tags are recorded but not applied (as the reference decoder)
        SampleSpec(
            "rotated_320x240_20f_25fps_rot90.mkv", 320, 240, 20, f(25), "libx264", rotation=90
        ),
        SampleSpec("single_frame_640x480.mp4", 640, 480, 1, f(25), "libx264"),
        SampleSpec("vfr_640x480_120f.mkv", 640, 480, 120, f(30), "libx264", vfr=True),
        SampleSpec("vfr_340x256_90f.mp4", 340, 256, 90, f(24), "libx264", vfr=True),
        SampleSpec("slow_176x144_12f_0.4fps.mkv", 176, 144, 12, f(2, 5), "mpeg4", gop=4),
        SampleSpec("long_176x144_2min_25fps.mp4", 176, 144, 3000, f(25), "libx264"),
    ]
    if long:
        specs += [
            SampleSpec("bench_1280x720_1min_30fps.mp4", 1280, 720, 1800, f(30), "libx264"),
            SampleSpec("bench_1280x720_5min_30fps.mp4", 1280, 720, 9000, f(30), "libx264"),
        ]
    return specs


class _Scene:
    """Shapes with seeded colours, sizes, start points and velocities, bouncing off the edges."""

    def __init__(self, width: int, height: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        self.background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        names = list(COLOURS)
        self.shapes = []
        for kind, colour in zip(
            ("circle", "square", "diamond"), rng.choice(names, size=3, replace=False), strict=True
        ):
            r = max(4, int(min(width, height) * rng.uniform(0.08, 0.15)))
            pos = rng.uniform([r, r], [width - r, height - r])
            vel = rng.uniform(-1, 1, size=2) * min(width, height) * 0.02
            self.shapes.append((kind, COLOURS[colour], r, pos, vel))

    def render(self, index: int) -> np.ndarray:
        frame = np.empty((self.height, self.width, 3), dtype=np.uint8)
        frame[:] = self.background
        for kind, colour, r, pos, vel in self.shapes:
            cx, cy = (
                _bounce(pos[i] + vel[i] * index, r, size)
                for i, size in enumerate((self.width, self.height))
            )
            draw_shape(frame, kind, colour, (cx, cy), r)
        draw_code(frame, index)
        return frame


def draw_shape(
    frame: np.ndarray,
    kind: str,
    colour: tuple[int, int, int],
    centre: tuple[float, float],
    r: float,
) -> None:
    """Paint a filled shape (one of :data:`SHAPES`) of radius ``r`` at ``centre`` = (x, y).

    A square fills its bounding box; a triangle points up, its base on the box's bottom edge.
    """
    height, width = frame.shape[:2]
    cx, cy = centre
    x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 1)
    y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    frame[y0:y1, x0:x1][_shape_mask(kind, xx - cx, yy - cy, r)] = colour


def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Which pixels of a bounding box, at offsets ``dx, dy`` from the centre, the shape covers."""
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        return np.ones_like(dx, dtype=bool)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if kind == "triangle":
        return 2 * np.abs(dx) <= dy + r
    raise ValueError(f"unknown shape {kind!r} (choose from {', '.join(SHAPES)})")


def _bounce(x: float, r: float, size: int) -> float:
    """Reflect a coordinate moving freely into [r, size - r]."""
    span = max(size - 2 * r, 1)
    t = (x - r) % (2 * span)
    return r + (t if t <= span else 2 * span - t)


def _code_band(width: int, height: int) -> tuple[int, int]:
    return max(8, height // 12), width // CODE_BITS


def draw_code(frame: np.ndarray, value: int) -> None:
    """Draw ``value`` as CODE_BITS black/white cells along the top edge (MSB first)."""
    band, cell = _code_band(frame.shape[1], frame.shape[0])
    for bit in range(CODE_BITS):
        on = (value >> (CODE_BITS - 1 - bit)) & 1
        frame[:band, bit * cell : (bit + 1) * cell] = 255 if on else 0


def read_code(frame: np.ndarray) -> int:
    """Read back the frame index drawn by :func:`draw_code` from a decoded RGB frame."""
    band, cell = _code_band(frame.shape[1], frame.shape[0])
    value = 0
    for bit in range(CODE_BITS):
        patch = frame[
            band // 4 : 3 * band // 4, bit * cell + cell // 4 : (bit + 1) * cell - cell // 4
        ]
        value = (value << 1) | int(patch.mean() > 127)
    return value


def _timestamps(spec: SampleSpec) -> list[int]:
    """Frame timestamps in ticks of 1/fps (VFR alternates 1- and 2-tick gaps)."""
    if not spec.vfr:
        return list(range(spec.frames))
    stamps, t = [], 0
    for i in range(spec.frames):
        stamps.append(t)
        t += 1 if i % 2 == 0 else 2
    return stamps


def write_video(path: Path, spec: SampleSpec, seed: int) -> None:
    """Encode ``spec`` to ``path`` with a scene seeded by ``seed``."""
    encode_video(path, spec, _Scene(spec.width, spec.height, seed).render)


def encode_video(path: Path, spec: SampleSpec, render: Callable[[int], np.ndarray]) -> None:
    """Encode frames ``render(0) .. render(spec.frames - 1)`` (HxWx3 RGB uint8) to ``path``.

    Repeatable byte for byte: the same frames give the same file.
    """
    # bitexact: no random Matroska segment UID or other run-dependent bytes
    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        # spec.codec is always a video encoder; the stubs type a plain str as any stream kind
        stream = cast(av.VideoStream, container.add_stream(spec.codec, rate=spec.fps))
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
        tick = 1 / spec.fps
        stream.codec_context.gop_size = spec.gop or max(1, int(2 * spec.fps))
        stream.codec_context.thread_count = 1  # repeatable output, byte for byte
        if spec.codec.startswith("libvpx"):
            stream.codec_context.bit_rate = 2_000_000
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
        elif spec.codec == "libx264":
            # no macroblock tree: its floating-point lookahead made the bytes vary between runs
            stream.codec_context.options = {
                "preset": "veryfast",
                "crf": "20",
                "x264-params": "mbtree=0",
            }
        elif spec.codec == "libx265":
            stream.codec_context.options = {"preset": "veryfast", "x265-params": "log-level=none"}
        else:
            stream.codec_context.bit_rate = 2_000_000
        if spec.rotation:
            stream.set_display_rotation(spec.rotation)
        for index, stamp in enumerate(_timestamps(spec)):
            frame = av.VideoFrame.from_ndarray(render(index), format="rgb24")
            frame.pts, frame.time_base = stamp, tick
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_corpus(
    directory: Path, seed: int = 0, long: bool = False, names: Collection[str] | None = None
) -> list[dict]:
    """Write every default sample (skipping codecs this build cannot encode) and a manifest;
    with ``names``, only those files (each file's scene is the same either way).

    Returns the manifest rows: file name, size, frames, fps, vfr, rotation, codec.
    """
    specs = default_specs(long)
    unknown = sorted(set(names or ()) - {spec.filename for spec in specs})
    if unknown:
        raise ValueError(f"no sample file named {', '.join(unknown)} (see default_specs)")
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, spec in enumerate(specs):
        if names is not None and spec.filename not in names:
            continue
        try:
            av.codec.Codec(spec.codec, "w")
        except Exception:
            continue
        path = directory / spec.filename
        if not path.exists():
            tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
            write_video(tmp, spec, seed * 1000 + n)
            tmp.replace(path)
        row = asdict(spec)
        row["fps"] = str(spec.fps)
        rows.append(row)
    (directory / "manifest.json").write_text(json.dumps(rows, indent=2))
    return rows
