"""The pipeline side of backends: the decoder as a backend's FrameSpec asks (sampling rules, frames
as decoded), too-short videos as error rows, the feature cache per backend, and --backend /
--num-frames on the job and eval commands."""

from __future__ import annotations

import hashlib
import json
import shutil

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from videopanda_cluster.cli import app
from videopanda_cluster.cluster.features import CacheIdentity, FeatureCache, preprocess_fingerprint
from videopanda_cluster.jobs.layout import FEATURES_PREFIX, feature_key
from videopanda_cluster.video.errors import Reason, VideoDecodeError
from videopanda_cluster.video.extract import PreprocessOptions, decoder_version, extract
from videopanda_cluster.video.sampling import FrameSpec, qwen2_vl_count, uniform_positions

NATIVE = ["vga_640x480_150f_30fps.mkv", "sd_340x256_40f_10fps.webm", "hd_1280x720_90f_30fps.mp4"]
ROTATED = ["rotated_640x480_60f_30fps_rot90.mp4", "rotated_480x360_30f_25fps_rot270.mp4"]


def pyav_frames(path) -> list[np.ndarray]:
    """Every frame as plain PyAV decodes it, MP4 frames turned by their display rotation (the
    reference decoder's rule, which the pipeline keeps)."""
    with av.open(str(path)) as container:
        turn = "mp4" in container.format.name.split(",")
        frames = []
        for frame in container.decode(video=0):
            pixels = frame.to_ndarray(format="rgb24")
            quarter_turns = round(frame.rotation / 90) % 4 if turn else 0
            frames.append(np.rot90(pixels, quarter_turns))
        return frames


@pytest.mark.parametrize("name", NATIVE + ROTATED)
def test_frames_as_decoded_equal_pyav_at_the_sampled_indices(corpus, name):
    spec = FrameSpec(num_frames=4, rule="uniform", size=None)
    got = extract(corpus / name, PreprocessOptions.of(spec, isolate=False))
    full = pyav_frames(corpus / name)
    indices = uniform_positions(len(full), 4)
    prov = got.provenance
    assert prov.sampled_indices == indices and got.geometry is None
    assert got.frames.dtype == np.uint8 and got.frames.shape[0] == 4
    for frame, i in zip(got.frames, indices, strict=True):
        np.testing.assert_array_equal(frame, full[i])
    height, width = full[0].shape[:2]
    assert prov.source_size == prov.frame_size == [width, height]
    # no letterbox: nothing about one is claimed, and the token count is the encoder's
    assert (prov.valid_box, prov.token_grid, prov.tokens_per_frame, prov.input_size) == (None,) * 4
    assert prov.visual_tokens is None and prov.padded_frames == 0
    assert prov.to_dict()["visual_tokens"] is None


def test_rotation_turns_frames_as_decoded(corpus, manifest):
    name = ROTATED[0]  # 640x480 stored, tagged 90 degrees
    got = extract(corpus / name, PreprocessOptions(num_frames=2, rule="uniform", size=None))
    assert manifest[name]["width"] == 640 and got.frames.shape == (2, 640, 480, 3)
    assert got.provenance.rotated and got.provenance.frame_size == [480, 640]


def test_decode_limits_apply_to_frames_as_decoded(corpus):
    """Frames above DecodeLimits.exact_pixels come scaled down by FFmpeg, as for the letterbox;
    the provenance says so (frame_size below source_size)."""
    from videopanda_cluster.video.probe import DecodeLimits

    limits = DecodeLimits(exact_pixels=320 * 180)
    options = PreprocessOptions(num_frames=2, rule="uniform", size=None, limits=limits)
    got = extract(corpus / "hd_1280x720_90f_30fps.mp4", options)
    assert got.frames.shape == (2, 180, 320, 3)
    assert got.provenance.source_size == [1280, 720] and got.provenance.frame_size == [320, 180]
    tight = PreprocessOptions(size=None, rule="uniform", limits=DecodeLimits(max_side=1000))
    with pytest.raises(VideoDecodeError) as caught:
        extract(corpus / "hd_1280x720_90f_30fps.mp4", tight)
    assert caught.value.reason == Reason.BAD_DIMENSIONS


def test_qwen2_vl_and_uniform_rules_through_the_decoder(corpus):
    path = corpus / "square_500x500_300f_30fps.mp4"
    spec = FrameSpec(
        num_frames=None, rule="qwen2_vl", fps=2.0, temporal_patch_size=2, min_frames=4,
        max_frames=16, size=None,
    )  # fmt: skip
    got = extract(path, PreprocessOptions.of(spec, isolate=False))
    assert qwen2_vl_count(300, 30.0, spec) == 16  # 10 s at 2 fps = 20, capped at max_frames
    assert got.provenance.sampled_indices == uniform_positions(300, 16) == spec.positions(300, 30)
    assert got.frames.shape == (16, 500, 500, 3)
    # a rule with Video-Panda's letterbox: the same frames, square at the model's size
    boxed = extract(path, PreprocessOptions(num_frames=6, rule="uniform", size=224, isolate=False))
    assert boxed.provenance.sampled_indices == [0, 50, 100, 150, 200, 250]
    assert boxed.frames.shape == (6, 224, 224, 3) and boxed.provenance.input_size == 224


@pytest.mark.parametrize("isolate", [False, True])
def test_a_video_shorter_than_the_rule_is_too_few_frames(corpus, isolate):
    options = PreprocessOptions(num_frames=8, rule="uniform", size=None, isolate=isolate)
    from videopanda_cluster.video.extract import extract_video

    with pytest.raises(VideoDecodeError) as caught:
        extract_video(corpus / "qcif_176x144_5f_10fps.mp4", options)
    assert caught.value.reason == Reason.TOO_FEW_FRAMES
    assert "the video has 5 frames" in caught.value.message and "\n" not in caught.value.message
    # a rate-based rule whose count floors to no frame at all (Qwen2-VL's temporal patch of 2)
    qwen = FrameSpec(num_frames=None, rule="qwen2_vl", fps=2.0, temporal_patch_size=2, size=None)
    with pytest.raises(VideoDecodeError) as caught:
        extract_video(corpus / "single_frame_640x480.mp4", PreprocessOptions.of(qwen))
    assert caught.value.reason == Reason.TOO_FEW_FRAMES
    # the reference rule (Video-Panda) pads short videos instead
    padded = extract(corpus / "qcif_176x144_5f_10fps.mp4", PreprocessOptions(isolate=False))
    assert padded.provenance.padded_frames == 3


def test_preprocess_fingerprint_of_todays_options_is_unchanged():
    """The feature cache keys of Video-Panda's options are those of the code before sampling
    rules: the hash of the same five fields."""

    def before(num_frames, size, flip, flip_seed):
        fields = {
            "num_frames": num_frames, "size": size, "flip": flip,
            "flip_seed": flip_seed if flip == "reference" else None, "decoder": decoder_version(),
        }  # fmt: skip
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    assert preprocess_fingerprint(PreprocessOptions()) == before(8, 448, "off", None)
    seeded = PreprocessOptions(size=224, flip="reference", flip_seed=3)
    assert preprocess_fingerprint(seeded) == before(8, 224, "reference", 3)
    panda = PreprocessOptions.of(FrameSpec(num_frames=8, rule="reference", size=448))
    assert preprocess_fingerprint(panda) == before(8, 448, "off", None)
    others = {
        preprocess_fingerprint(PreprocessOptions(rule="uniform")),
        preprocess_fingerprint(PreprocessOptions(size=None)),
        preprocess_fingerprint(PreprocessOptions(rule="qwen2_vl", temporal_patch_size=2)),
        preprocess_fingerprint(PreprocessOptions(rule="qwen2_vl", temporal_patch_size=2, fps=2.0)),
    }
    assert len(others) == 4 and before(8, 448, "off", None) not in others


def test_backends_never_share_feature_cache_entries(tmp_path):
    options = PreprocessOptions()
    panda = CacheIdentity.of(str(tmp_path), "weights", options)
    other = CacheIdentity.of(str(tmp_path), "weights", options, backend="video_llava")
    assert panda is not None and other is not None
    video = "cd" * 32
    keys = {FeatureCache(panda).key(video), FeatureCache(other).key(video)}
    assert len(keys) == 2
    # Video-Panda's key is the one written before backends existed: old caches still hit
    text = f"{video}|{preprocess_fingerprint(options)}|weights"
    assert FeatureCache(panda).key(video) == feature_key(
        FEATURES_PREFIX, hashlib.sha256(text.encode()).hexdigest()
    )
    assert CacheIdentity(**json.loads(json.dumps(other.__dict__))) == other  # to the decoders


# --- commands -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from videopanda_cluster.model.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def one_line_usage_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("command", ["caption", "qa", "features"])
def test_job_commands_refuse_an_unknown_backend_or_frame_count(tiny, inputs_dir, tmp_path, command):
    base = [command, str(inputs_dir), "--output", str(tmp_path), "--checkpoint", str(tiny)]
    base += ["--question", "why?"] if command == "qa" else []
    line = one_line_usage_error([*base, "--backend", "qwen9"])
    from videopanda_cluster.backends import BACKENDS

    assert f"no backend 'qwen9'; supported: {', '.join(sorted(BACKENDS))}" in line
    line = one_line_usage_error([*base, "--num-frames", "16"])
    assert line == "error: Video-Panda takes 8 frames per video, not 16"
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def test_eval_run_refuses_an_unknown_backend_or_frame_count(tiny, corpus, tmp_path):
    from tests.eval_fixtures import make_benchmark_fixture

    make_benchmark_fixture("msvd-qa", tmp_path / "data", corpus)
    base = ["eval", "run", "--benchmark", "msvd-qa", "--data-root", str(tmp_path / "data")]
    base += ["--output", str(tmp_path / "out"), "--checkpoint", str(tiny)]
    assert "no backend 'qwen9'" in one_line_usage_error([*base, "--backend", "qwen9"])
    line = one_line_usage_error([*base, "--num-frames", "4"])
    assert line == "error: Video-Panda takes 8 frames per video, not 4"


def test_the_plan_takes_the_backends_frame_spec(tiny, inputs_dir, tmp_path):
    from videopanda_cluster.cluster.driver import plan_job
    from videopanda_cluster.jobs.config import build_config
    from videopanda_cluster.storage.local import LocalStore

    values = {"kind": "features", "inputs": str(inputs_dir), "output": str(tmp_path)}
    cfg = build_config({}, {**values, "checkpoint": str(tiny), "num_frames": 8})
    plan, _ = plan_job(cfg, LocalStore(tmp_path))
    assert plan.backend == "videopanda" and plan.input_size == 448
    assert plan.frames == FrameSpec(num_frames=8, rule="reference", size=448)
    assert plan.job["model"]["backend"] == "videopanda"


# --- a real local Ray job ---------------------------------------------------------------------


@pytest.mark.slow
def test_too_short_videos_are_error_rows_of_a_qa_job(tiny, inputs_dir, tmp_path, monkeypatch):
    """A backend sampling 8 uniform frames (Video-Panda's model with transformers' rule, planned
    by the driver): videos of fewer frames are ``too_few_frames`` rows, the others answered."""
    import ray

    from videopanda_cluster import __version__, backends
    from videopanda_cluster.backends.video_panda import VideoPandaBackend
    from videopanda_cluster.cluster.driver import run_job
    from videopanda_cluster.eval.run import read_result_rows
    from videopanda_cluster.jobs.config import build_config
    from videopanda_cluster.storage.local import LocalStore

    class UniformPanda(VideoPandaBackend):
        @classmethod
        def frame_spec(cls, folder, num_frames=None):
            return FrameSpec(num_frames=8, rule="uniform", size=448)

    # the driver plans with this class; the workers load the registered Video-Panda model
    monkeypatch.setitem(backends.BACKENDS, "videopanda", lambda: UniformPanda)
    names = ["qcif_176x144_5f_10fps.mp4", "single_frame_640x480.mp4", "sd_340x256_40f_10fps.webm"]
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in names:
        shutil.copy(inputs_dir / name, videos / name)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        cfg = build_config(
            {},
            {
                "kind": "qa", "inputs": str(videos), "output": str(tmp_path / "out"),
                "checkpoint": str(tiny), "questions": ["what moves?"], "max_new_tokens": 4,
                "decode_workers": 1,
            },
        )  # fmt: skip
        summary = run_job(cfg)
    finally:
        ray.shutdown()
    rows = {
        r["video_id"]: r
        for r in read_result_rows(LocalStore(tmp_path / "out"), cfg.job_id or summary["job_id"])
    }
    assert len(rows) == 3 and summary["this_run"]["errors"] == {"too_few_frames": 2}
    for name, frames in [("qcif_176x144_5f_10fps", 5), ("single_frame_640x480", 1)]:
        row = rows[name]
        assert (row["status"], row["error"]) == ("error", Reason.TOO_FEW_FRAMES.value)
        assert f"the video has {frames} frames" in row["message"]
    ok = rows["sd_340x256_40f_10fps"]
    assert ok["status"] == "ok" and ok["answer"] is not None
    assert ok["provenance"]["sampled_indices"] == uniform_positions(40, 8)
    assert ok["model"]["backend"] == "videopanda"
    assert ok["model"]["fingerprint"] == f"videopanda/{__version__}"
    assert summary["model"]["fingerprint"] == ok["model"]["fingerprint"]
