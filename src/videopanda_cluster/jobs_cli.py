"""`videopanda caption | qa | features | status`: the pipeline's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .model.config import AttentionImpl

Opt = typer.Option
BACKEND_HELP = "Backend to run the folder with (default: its config.json model_type)."
NUM_FRAMES_HELP = "Frames per video (default: the model's; others where the model allows)."


def _job_command(kind: str):
    def command(
        inputs: Annotated[
            str | None,
            typer.Argument(help="Video directory, glob, manifest (.jsonl/.csv/.parquet) or az://."),
        ] = None,
        output: Annotated[
            str | None, Opt(help="Store: a directory or az://container/prefix.")
        ] = None,
        config: Annotated[Path | None, Opt(help="YAML or TOML job config file.")] = None,
        job_id: Annotated[
            str | None, Opt(help="Job id (default: derived from the settings).")
        ] = None,
        checkpoint: Annotated[
            str | None, Opt(help="Model folder (default: the bundled model, else tiny random).")
        ] = None,
        backend: Annotated[str | None, Opt(help=BACKEND_HELP)] = None,
        num_frames: Annotated[int | None, Opt(help=NUM_FRAMES_HELP)] = None,
        question: Annotated[
            list[str] | None, Opt(help="Question for every video (qa; repeatable).")
        ] = None,
        caption_prompt: Annotated[str | None, Opt(help="Caption instruction (caption).")] = None,
        max_new_tokens: Annotated[int | None, Opt(help="Tokens to generate at most.")] = None,
        seed: Annotated[int | None, Opt(help="Seed of sampling and of the flip coins.")] = None,
        attention: Annotated[
            AttentionImpl | None,
            Opt(help="LLM attention: eager (reference numerics) or sdpa (faster)."),
        ] = None,
        decode_workers: Annotated[int | None, Opt(help="Decode actors.")] = None,
        encode_workers: Annotated[int | None, Opt(help="STAB actors.")] = None,
        generate_workers: Annotated[int | None, Opt(help="LLM actors.")] = None,
        encode_batch: Annotated[int | None, Opt(help="Videos per STAB call.")] = None,
        encode_batch_wait_s: Annotated[
            float | None,
            Opt(help="Seconds a decoded video waits for others to fill its STAB batch."),
        ] = None,
        generate_batch: Annotated[int | None, Opt(help="Prompts per generate call.")] = None,
        shard_size: Annotated[int | None, Opt(help="Videos per result shard.")] = None,
        max_in_flight: Annotated[int | None, Opt(help="Shards in the pipeline at once.")] = None,
        num_gpus_encode: Annotated[float | None, Opt(help="GPUs per STAB actor.")] = None,
        num_gpus_generate: Annotated[float | None, Opt(help="GPUs per LLM actor.")] = None,
        device: Annotated[str | None, Opt(help="torch device in the model actors.")] = None,
        decode_timeout: Annotated[float | None, Opt(help="Seconds per video decode.")] = None,
        feature_cache: Annotated[
            bool | None, Opt("--feature-cache/--no-feature-cache", help="Reuse STAB tokens.")
        ] = None,
        results_jsonl: Annotated[
            bool | None,
            Opt("--results-jsonl/--no-results-jsonl", help="Also write results as JSON lines."),
        ] = None,
        address: Annotated[
            str | None, Opt(help="Join this Ray cluster (e.g. ray://head:10001 or auto).")
        ] = None,
        update: Annotated[
            bool,
            Opt(
                "--update",
                help="Inputs changed since the job was planned: process new videos in new "
                "shards, skip removed ones (committed results stay).",
            ),
        ] = False,
        store_retry_window: Annotated[
            float | None, Opt(help="Seconds a shard retries an unreachable or throttling store.")
        ] = None,
        stop_grace: Annotated[
            float | None, Opt(help="Seconds in-flight shards get after the first Ctrl-C/SIGTERM.")
        ] = None,
        debug: Annotated[bool, Opt("--debug", help="Show the traceback of a failure.")] = False,
    ) -> None:
        cli_values = {
            "kind": kind,
            "inputs": inputs,
            "output": output,
            "job_id": job_id,
            "checkpoint": checkpoint,
            "backend": backend,
            "num_frames": num_frames,
            "questions": question or None,
            "caption_prompt": caption_prompt,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "attention": attention,
            "decode_workers": decode_workers,
            "encode_workers": encode_workers,
            "generate_workers": generate_workers,
            "encode_batch": encode_batch,
            "encode_batch_wait_s": encode_batch_wait_s,
            "generate_batch": generate_batch,
            "shard_size": shard_size,
            "max_in_flight": max_in_flight,
            "num_gpus_encode": num_gpus_encode,
            "num_gpus_generate": num_gpus_generate,
            "device": device,
            "decode_timeout": decode_timeout,
            "use_feature_cache": feature_cache,
            "results_jsonl": results_jsonl,
            "address": address,
            "update": update or None,
            "store_retry_window": store_retry_window,
            "stop_grace": stop_grace,
        }
        run(cli_values, config, debug=debug)

    command.__doc__ = {
        "caption": "Caption every video of INPUTS.",
        "qa": "Answer questions about every video of INPUTS (manifest questions or --question).",
        "features": "Compute and cache the visual features of every video of INPUTS.",
    }[kind]
    return command


def run(cli_values: dict[str, Any], config_file: Path | None, debug: bool = False) -> dict:
    """Build the config, run the job with a progress bar, print its summary; a failure prints
    one line (the traceback too with ``debug``) and exits with its documented code."""
    from .cluster.driver import plan_model, run_job
    from .jobs.config import build_config, load_config

    console = Console()
    try:
        file_values = load_config(config_file) if config_file else {}
        cfg = build_config(file_values, cli_values)
    except (ValueError, OSError) as exc:
        fail(console, exc, debug, prefix="configuration error")
    try:
        plan_model(cfg)  # the model's folder and frame count, before the progress bar
    except Exception as exc:
        fail(console, exc, debug)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} videos · {task.fields[failed]} failed rows"),
        TextColumn("{task.fields[rate]} videos/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(cfg.kind, total=None, failed=0, rate="-")

        def on_progress(stats, before: dict, elapsed: float) -> None:
            total = before.get("total_videos")
            done = before.get("committed_videos", 0) + stats.videos
            rate = f"{stats.videos / elapsed:.2f}" if elapsed > 0 else "-"
            bar.update(task, total=total, completed=done, failed=stats.failed, rate=rate)

        try:
            summary = run_job(cfg, on_progress=on_progress)
        except Exception as exc:
            bar.stop()
            fail(console, exc, debug)
        final = summary["progress"]
        bar.update(task, total=final.get("total_videos"), completed=final.get("committed_videos"))
    print_summary(console, summary)
    return summary


def fail(console: Console, exc: BaseException, debug: bool, prefix: str | None = None) -> NoReturn:
    """Print ``exc`` as one line (see docs/pipeline.md, exit codes) and exit with its code."""
    from .jobs.failures import ExitCode, describe, one_line

    if debug:
        console.print_exception()
    if prefix is None:
        code, line = describe(exc)
    else:
        code, line = ExitCode.USAGE, f"{prefix}: {one_line(exc)}"
    console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title=f"job {summary['job_id']} ({summary['kind']})", show_header=False)
    progress, run = summary["progress"], summary["this_run"]
    for key, value in progress.items():
        table.add_row(key, str(value))
    for key in ("shards", "videos", "rows", "failed_rows", "seconds", "videos_per_s"):
        table.add_row(f"this run: {key}", str(run[key]))
    for stage, seconds in run["stage_seconds"].items():
        table.add_row(f"stage time: {stage}", f"{seconds:.2f} s")
    for code, count in sorted(run["errors"].items()):
        table.add_row(f"errors: {code}", str(count))
    update = summary.get("inputs_update")
    if update:
        table.add_row("inputs update: new shards", str(update["new_shards_count"]))
        for name in ("added", "removed", "dropped", "changed"):
            examples = ", ".join(update[f"{name}_examples"][:5])
            more = ", ..." if update[f"{name}_videos"] > 5 else ""
            shown = f" ({examples}{more})" if examples else ""
            table.add_row(f"inputs update: {name} videos", f"{update[f'{name}_videos']}{shown}")
    table.add_row("results", f"{summary['store']}/{summary['results']}")
    table.add_row("model", summary["model"]["id"])
    console.print(table)


def status(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    output: Annotated[str, Opt(help="Store of the job.")] = "out",
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
) -> None:
    """Progress of a job, from its ledger (the store is only read: nothing is created)."""
    from .jobs.ledger import Ledger
    from .storage.open import open_store

    console = Console()
    try:
        store = open_store(output, create=False)
        ledger = Ledger.load(store, job_id)
    except (KeyError, FileNotFoundError) as exc:
        where = store.url if isinstance(exc, KeyError) else output
        console.print(f"no job {job_id!r} in {where}", style="red", markup=False)
        raise typer.Exit(1) from None
    except Exception as exc:
        fail(console, exc, debug=False)
    info = {"job_id": job_id, **ledger.progress(exact=False)}
    if as_json:
        print(json.dumps(info))
        return
    table = Table(title=f"job {job_id}", show_header=False)
    for key, value in info.items():
        table.add_row(key, str(value))
    Console().print(table)


def register(app: typer.Typer) -> None:
    for kind in ("caption", "qa", "features"):
        app.command(kind)(_job_command(kind))
    app.command()(status)
