"""The ``videopanda`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import eval_cli, jobs_cli, train_cli
from .train.synth import SynthOptions
from .video.errors import VideoDecodeError
from .video.extract import PreprocessOptions, extract_video

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console() if sys.stdout.isatty() else Console(width=160)

TimeoutOpt = Annotated[
    float, typer.Option(help="Per-video decode timeout in seconds (0 disables).", min=0)
]


@app.command()
def samples(
    directory: Annotated[Path, typer.Argument(help="Where to write the sample videos.")],
    seed: Annotated[int, typer.Option(help="Seed of the scenes.")] = 0,
    long: Annotated[bool, typer.Option(help="Also write 1- and 5-minute 720p files.")] = False,
) -> None:
    """Write the deterministic sample corpus (moving coloured shapes) and its manifest.json."""
    from .video.samples import write_corpus

    rows = write_corpus(directory, seed=seed, long=long)
    console.print(f"wrote {len(rows)} videos and manifest.json to {directory}")


@app.command()
def synth(
    directory: Annotated[Path, typer.Argument(help="New or empty folder for the corpus.")],
    seed: Annotated[int, typer.Option(help="Seed of scenes, questions and splits.")] = 0,
    videos: Annotated[int, typer.Option(help="Number of videos.", min=3)] = 1000,
    frames: Annotated[int, typer.Option(help="Frames per video.", min=4)] = 16,
    size: Annotated[str, typer.Option(help="Frame size WxH (even, at least 64x64).")] = "160x120",
    size_range: Annotated[
        str | None,
        typer.Option(
            help="Draw each video's size instead: longer side LO,HI px; landscape, portrait or "
            "square (overrides --size)."
        ),
    ] = None,
    fps: Annotated[int, typer.Option(help="Frames per second.", min=1)] = SynthOptions.fps,
    radius: Annotated[
        str, typer.Option(help="Shape radius range LO,HI as fractions of the shorter side.")
    ] = "0.09,0.13",
    travel: Annotated[
        str, typer.Option(help="Moving shape's travel range LO,HI as fractions of the free span.")
    ] = "0.35,0.6",
) -> None:
    """Write a deterministic synthetic video-QA corpus: videos, training JSON, eval layouts."""
    from .train.synth import write_synth

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"--size must look like 160x120, got {size!r}") from None
    ranges: dict = {}
    for name, text, cast in (
        ("radius", radius, float),
        ("travel", travel, float),
        ("size_range", size_range, int),
    ):
        if text is None:
            continue
        try:
            lo, hi = (cast(v) for v in text.split(","))
        except ValueError:
            flag = name.replace("_", "-")
            raise typer.BadParameter(f"--{flag} must look like LO,HI, got {text!r}") from None
        ranges[name] = (lo, hi)
    try:
        options = SynthOptions(frames, width, height, fps, **ranges)
        summary = write_synth(directory, seed, videos, options)
    except (ValueError, FileExistsError) as exc:
        raise typer.BadParameter(str(exc)) from None
    table = Table(title=f"synthetic corpus in {directory} (seed {seed})")
    for column in ("split", "videos", "questions", *summary["vocabularies"]):
        table.add_column(column)
    for split, count in summary["videos"].items():
        types = summary["question_types"][split]
        row = [split, str(count), str(summary["questions"][split])]
        table.add_row(*row, *(str(types.get(t, 0)) for t in summary["vocabularies"]))
    console.print(table)


@app.command("synth-teacher")
def synth_teacher(
    corpus: Annotated[Path, typer.Argument(help="Corpus folder written by `videopanda synth`.")],
    output: Annotated[str, typer.Option(help="Store for the features (directory or az://...).")],
    prefix: Annotated[str, typer.Option(help="Key prefix of the features in the store.")] = (
        "teacher"
    ),
    image_size: Annotated[int, typer.Option(help="Input size of the student model.")] = 112,
    kind_weight: Annotated[float, typer.Option(help="Weight of the shape-kind cover.")] = 3.0,
    motion_weight: Annotated[float, typer.Option(help="Weight of the motion cover.")] = 3.0,
) -> None:
    """Write scene-teacher features (ground-truth cover per frame and STAB cell) of the corpus's
    training videos, for `videopanda train --distill-weight W --teacher-store STORE`."""
    from .storage import open_store
    from .train.scene_teacher import SceneTeacherOptions, write_scene_teacher

    try:
        options = SceneTeacherOptions(
            image_size, kind_weight=kind_weight, motion_weight=motion_weight
        )
        count = write_scene_teacher(corpus, open_store(output), prefix, options)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    console.print(f"scene teacher: {count} videos → {output} ({prefix}/)", markup=False)


@app.command()
def inspect(
    video: Annotated[Path, typer.Argument(help="Video file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Show the frames the reference preprocessing samples from VIDEO and its token grid."""
    options = PreprocessOptions(timeout=timeout or None)
    try:
        info = extract_video(video, options).provenance.to_dict()
    except VideoDecodeError as exc:
        if as_json:
            print(json.dumps(exc.to_dict()))
        else:
            console.print(f"[red]{exc.reason.value}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(info))
        return
    table = Table(show_header=False, title=str(video))
    for key, value in info.items():
        table.add_row(key, str(value))
    console.print(table)


def _demo_job(values: dict) -> dict:
    """A demo job's settings with an id that follows the model's files (``model_job_id``): a
    rerun after the bundled model changed starts new jobs instead of refusing the old ones. A
    model that cannot plan keeps the values as given; the job then fails in one line."""
    from .cluster.driver import model_job_id
    from .jobs.config import build_config

    try:
        return {**values, "job_id": model_job_id(build_config({}, values))}
    except (ValueError, OSError):
        return values


@app.command()
def demo(
    directory: Annotated[Path, typer.Option(help="Where to write the demo's videos.")] = Path(
        "demo"
    ),
    output: Annotated[str, typer.Option(help="Result store.")] = "out",
    checkpoint: Annotated[
        str | None,
        typer.Option(help="Model folder (default: the bundled model, else tiny random)."),
    ] = None,
) -> None:
    """The main job on the embedded default: caption + QA over clips of the model's own world
    (scored against their ground truth) and a few odd sample files (local Ray, local store)."""
    from .demo import DemoCorpus, demo_tables, manifest_path, score_demo, write_demo
    from .eval.run import read_result_rows
    from .storage.open import open_store

    corpus = DemoCorpus()
    videos = write_demo(directory, corpus)
    clips = sum(v.has_truth for v in videos)
    console.print(
        f"demo corpus in {directory}: {clips} clips of the model's world (synth seed "
        f"{corpus.seed}, with ground truth) and {len(videos) - clips} odd sample files",
        markup=False,
    )
    if checkpoint is None:
        from .bundled import has_small_model

        console.print(
            "model: videopanda-small, bundled (trained from scratch on synthetic coloured shapes; "
            "its model card: src/videopanda_cluster/bundled/videopanda-small/README.md)"
            if has_small_model()
            else "[yellow]model: a tiny RANDOM Video-Panda generated on the fly (untrained, its "
            "answers are noise): the bundled trained model is not in this checkout[/yellow]"
        )
    base = {"inputs": str(manifest_path(directory)), "output": output, "checkpoint": checkpoint}
    jobs = [
        jobs_cli.run(_demo_job({**base, "kind": kind, "max_new_tokens": tokens}), None)
        for kind, tokens in (("caption", corpus.caption_tokens), ("qa", corpus.answer_tokens))
    ]
    store = open_store(output)
    rows = [row for job in jobs for row in read_result_rows(store, job["job_id"])]
    for table in demo_tables(videos, rows):
        console.print(table)
    console.print(score_demo(videos, rows).line(), markup=False, soft_wrap=True)


@app.command("model-info")
def model_info_cmd(
    preset: Annotated[
        str | None, typer.Option(help="Built-in configuration: official or tiny.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="HF-layout checkpoint folder (reads config.json only).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Parameter counts per block and multiply-adds of STAB + projector per 8-frame video."""
    from .model.config import VideoPandaConfig
    from .model.info import model_info

    try:
        if preset is not None and checkpoint is None:
            config = VideoPandaConfig.preset(preset)
        elif checkpoint is not None and preset is None:
            config = VideoPandaConfig.from_pretrained(checkpoint)
        else:
            raise typer.BadParameter("give exactly one of --preset or --checkpoint")
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    info = model_info(config)
    if as_json:
        print(json.dumps(info))
        return
    table = Table(title="Video-Panda model", show_header=False)
    for key, value in info.items():
        table.add_row(key, f"{value:,}")
    console.print(table)


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Checkpoint folder (.bin or .safetensors shards).")],
    dst: Annotated[Path, typer.Argument(help="Output folder.")],
    shard_gb: Annotated[float, typer.Option(help="Largest shard size in GiB.", min=0.0001)] = 2.0,
) -> None:
    """Re-save a checkpoint as safetensors shards (keys unchanged) with config and tokenizer."""
    from .model.checkpoint import CheckpointError
    from .model.checkpoint import convert as convert_checkpoint

    try:
        names = convert_checkpoint(src, dst, int(shard_gb * 2**30))
    except CheckpointError as exc:
        console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(1) from None
    console.print(f"wrote {len(names)} shard(s) to {dst}")


jobs_cli.register(app)
eval_cli.register(app)
train_cli.register(app)

if __name__ == "__main__":
    app()
