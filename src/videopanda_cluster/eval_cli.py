"""`videopanda eval run | judge | report | protocol`: benchmark evaluation on the pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .eval.config import EvalConfig
from .eval.judge import JudgeConfig
from .eval.protocol import BUILTIN, REFERENCE
from .jobs.failures import ExitCode
from .jobs_cli import BACKEND_HELP, NUM_FRAMES_HELP
from .model.config import AttentionImpl

Opt = typer.Option
app = typer.Typer(no_args_is_help=True, help=__doc__)
console = Console()

_JUDGE = {name: field.default for name, field in JudgeConfig.model_fields.items()}


def _fail(code: int, message: str) -> typer.Exit:
    console.print(message, markup=False, soft_wrap=True)  # one line, never wrapped
    return typer.Exit(code)


@app.command("run")
def run_command(
    benchmark: Annotated[str, Opt(help="msvd-qa, msrvtt-qa, tgif-qa, activitynet-qa or vcgbench.")],
    data_root: Annotated[Path, Opt(help="Folder holding the benchmark's reference layout.")],
    output: Annotated[str, Opt(help="Store: a directory or az://container/prefix.")] = "out",
    run_id: Annotated[str | None, Opt(help="Run id (default: from the data and settings).")] = None,
    config: Annotated[Path | None, Opt(help="YAML or TOML job settings (as for `qa`).")] = None,
    checkpoint: Annotated[
        str | None, Opt(help="Model folder (default: bundled, else tiny random).")
    ] = None,
    backend: Annotated[str | None, Opt(help=BACKEND_HELP)] = None,
    num_frames: Annotated[int | None, Opt(help=NUM_FRAMES_HELP)] = None,
    max_new_tokens: Annotated[
        int | None, Opt(help=f"Tokens per answer at most (default {EvalConfig.max_new_tokens}).")
    ] = None,
    attention: Annotated[
        AttentionImpl | None, Opt(help="LLM attention (eager: reference).")
    ] = None,
    decode_workers: Annotated[int | None, Opt(help="Decode actors.")] = None,
    encode_workers: Annotated[int | None, Opt(help="STAB actors.")] = None,
    generate_workers: Annotated[int | None, Opt(help="LLM actors.")] = None,
    generate_batch: Annotated[int | None, Opt(help="Prompts per generate call.")] = None,
    num_gpus_encode: Annotated[float | None, Opt(help="GPUs per STAB actor.")] = None,
    num_gpus_generate: Annotated[float | None, Opt(help="GPUs per LLM actor.")] = None,
    device: Annotated[str | None, Opt(help="torch device in the model actors.")] = None,
    address: Annotated[str | None, Opt(help="Join this Ray cluster.")] = None,
) -> None:
    """Answer every question of a benchmark through the pipeline; write reference-format
    predictions, our items and the missing videos under eval/<run_id>/ in the store."""
    from .eval.run import run_eval
    from .jobs.config import load_config
    from .jobs.failures import JobError, describe
    from .storage.base import StoreUnavailable
    from .video.errors import is_environment_fault

    flags = {
        "checkpoint": checkpoint,
        "backend": backend,
        "num_frames": num_frames,
        "max_new_tokens": max_new_tokens,
        "attention": attention,
        "decode_workers": decode_workers,
        "encode_workers": encode_workers,
        "generate_workers": generate_workers,
        "generate_batch": generate_batch,
        "num_gpus_encode": num_gpus_encode,
        "num_gpus_generate": num_gpus_generate,
        "device": device,
        "address": address,
    }
    try:
        settings: dict[str, Any] = load_config(config) if config else {}
        settings.update({k: v for k, v in flags.items() if v is not None})
        with console.status(f"{benchmark}: running the pipeline ..."):
            info = run_eval(benchmark, data_root, output, run_id=run_id, **settings)
    except (JobError, StoreUnavailable, ValueError) as exc:  # one line, the documented code
        raise _fail(*describe(exc)) from None
    except OSError as exc:  # a benchmark file that cannot be read, unless the disk is at fault
        code, line = describe(exc) if is_environment_fault(exc) else (2, f"error: {exc}")
        raise _fail(code, line) from None
    _print_run(info)


def _print_run(info: dict[str, Any]) -> None:
    table = Table(title=f"eval run {info['run_id']} ({info['benchmark']})", show_header=False)
    for key, value in info["counts"].items():
        table.add_row(key, str(value))
    table.add_row("job", info["job_id"])
    table.add_row("files", f"eval/{info['run_id']}/ (predictions/, items.jsonl, missing.json)")
    console.print(table)


@app.command("judge")
def judge_command(
    run: Annotated[
        str,
        typer.Argument(help="A run id in the store, or a reference-format predictions file."),
    ],
    judge_model: Annotated[
        str | None, Opt(help="Judge model id (pinned, recorded; default: the protocol's).")
    ] = None,
    protocol: Annotated[
        str, Opt(help="Judge protocol: builtin, or a name imported with `eval protocol import`.")
    ] = BUILTIN,
    output: Annotated[str, Opt(help="Store of the run (and of the verdict cache).")] = "out",
    subset: Annotated[
        str, Opt(help="Subset of a predictions file: qa, generic, temporal or consistency.")
    ] = "qa",
    benchmark: Annotated[
        str | None, Opt(help="Benchmark of a predictions file (for the paper comparison).")
    ] = None,
    base_url: Annotated[str | None, Opt(help="OpenAI-compatible endpoint (default: OpenAI).")] = (
        None
    ),
    api_key_env: Annotated[str, Opt(help="Environment variable holding the key.")] = _JUDGE[
        "api_key_env"
    ],
    azure_endpoint: Annotated[str | None, Opt(help="Azure OpenAI endpoint.")] = None,
    api_version: Annotated[str | None, Opt(help="Azure OpenAI API version.")] = None,
    temperature: Annotated[
        float | None,
        Opt(help=f"Judge temperature (default: the protocol's; builtin {_JUDGE['temperature']})."),
    ] = None,
    top_p: Annotated[
        float | None,
        Opt(help=f"Judge top-p (default: the protocol's; builtin {_JUDGE['top_p']})."),
    ] = None,
    max_tokens: Annotated[
        int | None, Opt(help="Reply tokens at most (default: the endpoint's).")
    ] = _JUDGE["max_tokens"],
    concurrency: Annotated[int, Opt(help="Requests in flight at most.")] = _JUDGE["concurrency"],
    max_attempts: Annotated[int, Opt(help="Attempts per verdict.")] = _JUDGE["max_attempts"],
    timeout: Annotated[float, Opt(help="Seconds per request.")] = _JUDGE["timeout"],
    prompts: Annotated[
        Path | None, Opt(help="JSON/YAML prompt set (builtin protocol only; default: built in).")
    ] = None,
    reference_consistency_bug: Annotated[
        bool,
        Opt(
            help="Show Q1 twice in the consistency prompt, as the reference script does "
            "(builtin protocol only; the reference protocol does it anyway)."
        ),
    ] = False,
    allow_failures: Annotated[
        bool, Opt(help=f"Exit 0 even if some verdicts failed (else {ExitCode.JUDGE_FAILURES}).")
    ] = False,
) -> None:
    """Judge a run's predictions with the GPT-assisted protocol (verdicts cached in the store).

    Exit codes: 0 every verdict obtained; 2 bad input, unknown protocol or model; 5 key or
    access refused, or out of credit; 8 some verdicts failed after retries (unless
    --allow-failures)."""
    from pydantic import ValidationError

    from .eval.imported import import_predictions
    from .eval.judge import JudgeError, judge_run, protocol_config
    from .eval.prompts import load_prompts
    from .eval.protocol import builtin_protocol, custom_protocol, load_protocol
    from .storage.open import open_store

    try:
        store = open_store(output)
        if protocol == BUILTIN:
            chosen = (
                custom_protocol(
                    load_prompts(prompts, reference_consistency_bug=reference_consistency_bug)
                )
                if prompts
                else builtin_protocol(reference_consistency_bug=reference_consistency_bug)
            )
        elif prompts or reference_consistency_bug:
            raise ValueError("--prompts and --reference-consistency-bug go with --protocol builtin")
        else:
            chosen = load_protocol(store, protocol)
        cfg = protocol_config(
            chosen,
            model=judge_model,
            temperature=temperature,
            top_p=top_p,
            base_url=base_url,
            api_key_env=api_key_env,
            azure_endpoint=azure_endpoint,
            api_version=api_version,
            max_tokens=max_tokens,
            concurrency=concurrency,
            max_attempts=max_attempts,
            timeout=timeout,
        )
        run_id = run
        if Path(run).is_file():
            run_id = import_predictions(store, Path(run), subset, benchmark)
        with console.status(f"judging {run_id} with {cfg.model} ({chosen.name} protocol) ..."):
            summary = judge_run(store, run_id, cfg, chosen)
    except JudgeError as exc:
        raise _fail(exc.exit_code, f"error: {exc}") from None
    except (ValidationError, ValueError, OSError) as exc:
        raise _fail(ExitCode.USAGE, f"error: {' '.join(str(exc).split())}") from None
    table = Table(title=f"judge {run_id} ({cfg.model}, {chosen.name} protocol)")
    for col in ("dimension", "judged", "failed", "accuracy", "mean score"):
        table.add_column(col)
    for dim, agg in summary["dimensions"].items():
        acc = agg["accuracy"]
        table.add_row(
            dim,
            str(agg["judged"]),
            str(agg["failed"]),
            "-" if acc is None else f"{100 * acc:.1f}%",
            "-" if agg["mean_score"] is None else f"{agg['mean_score']:.2f}",
        )
    console.print(table)
    console.print(f"HTTP calls this run: {summary['http_calls']}; verdicts: eval/{run_id}/")
    failed = sum(agg["failed"] for agg in summary["dimensions"].values())
    total = failed + sum(agg["judged"] for agg in summary["dimensions"].values())
    console.print(f"{failed} of {total} verdicts failed", markup=False)
    if failed and not allow_failures:
        raise typer.Exit(ExitCode.JUDGE_FAILURES)


@app.command("report")
def report_command(
    run_ids: Annotated[
        list[str], typer.Argument(help="Run ids in the store; two or more: side by side.")
    ],
    output: Annotated[str, Opt(help="Store of the runs.")] = "out",
    samples: Annotated[int, Opt(help="Items shown with their frames in report.html.")] = 6,
    seed: Annotated[int, Opt(help="Seed of the bootstrap and of the sample.")] = 0,
    name: Annotated[
        str | None, Opt(help="Name of a side-by-side report (default: RUN1-vs-RUN2...).")
    ] = None,
    as_json: Annotated[bool, Opt("--json", help="Print report.json.")] = False,
) -> None:
    """Write report.json, report.md, report.png and report.html for a run; for several runs of
    one benchmark, a side-by-side report (each metric per run, and each run's paired difference
    to the first over the items both answered) in eval-compare/NAME/comparison.{json,md,html}."""
    from .storage.open import open_store

    store = open_store(output)
    if len(run_ids) > 1:
        from .eval.compare import compare_runs
        from .eval.layout import comparison_key

        try:
            report = compare_runs(store, run_ids, name=name, seed=seed)
        except (KeyError, OSError, ValueError) as exc:
            raise _fail(2, f"error: {' '.join(str(exc).split())}") from None
        if as_json:
            print(json.dumps(report))
            return
        key = comparison_key(report["name"], "comparison.md")
        console.print(store.get(key).decode(), markup=False)
        console.print(f"files: {store.url}/{key.removesuffix('.md')}.{{json,md,html}}")
        return
    from .eval.report import build_report

    (run_id,) = run_ids
    try:
        report = build_report(store, run_id, sample_items=samples, seed=seed)
    except (KeyError, OSError, ValueError) as exc:
        raise _fail(2, f"error: {exc}") from None
    if as_json:
        print(json.dumps(report, default=str))
        return
    console.print(store.get(f"eval/{run_id}/report.md").decode(), markup=False)
    console.print(f"files: {store.url}/eval/{run_id}/report.{{json,md,png,html}}")


protocol_app = typer.Typer(no_args_is_help=True, help="Judge protocols: import and show.")
app.add_typer(protocol_app, name="protocol")


@protocol_app.command("import")
def protocol_import(
    repository: Annotated[
        Path, typer.Argument(help="A checkout of the reference repository (its eval scripts).")
    ],
    output: Annotated[str, Opt(help="Store to keep the protocol in (the runs' store).")] = "out",
    name: Annotated[str, Opt(help="Name to store it under (`eval judge --protocol NAME`).")] = (
        REFERENCE
    ),
    allow_modified: Annotated[
        bool, Opt(help="Import prompts that differ from the reference's SHA-256 (recorded).")
    ] = False,
) -> None:
    """Read the judge prompts, model, temperature and consistency input of the reference
    evaluation scripts and store them as a named protocol.

    Exit codes: 0 imported; 2 not a reference checkout, prompts that differ (without
    --allow-modified) or a bad name."""
    from .eval.protocol import ProtocolError, import_reference, save_protocol
    from .storage.open import open_store

    try:
        imported = import_reference(repository, name=name, allow_modified=allow_modified)
        key = save_protocol(open_store(output), imported)
    except (ProtocolError, OSError) as exc:
        raise _fail(ExitCode.USAGE, f"error: {' '.join(str(exc).split())}") from None
    _print_protocol(imported)
    console.print(f"stored as {output}/{key}; use: videopanda eval judge RUN --protocol {name}")


@protocol_app.command("show")
def protocol_show(
    name: Annotated[str, typer.Argument(help="builtin or an imported protocol's name.")],
    output: Annotated[str, Opt(help="Store the protocol is kept in.")] = "out",
) -> None:
    """Print a protocol's settings and prompt hashes, against the reference's."""
    from .eval.protocol import ProtocolError, load_protocol
    from .storage.open import open_store

    try:
        _print_protocol(load_protocol(open_store(output), name))
    except (ProtocolError, OSError) as exc:
        raise _fail(ExitCode.USAGE, f"error: {' '.join(str(exc).split())}") from None


def _print_protocol(chosen: Any) -> None:
    from .eval.protocol import REFERENCE_PROMPT_HASHES

    files = chosen.source.get("files", {})
    table = Table(title=f"judge protocol {chosen.name}")
    for col in ("dimension", "script", "sha256", "reference's"):
        table.add_column(col)
    for dim, digest in chosen.template_hashes().items():
        same = "same" if digest == REFERENCE_PROMPT_HASHES.get(dim) else "differs"
        table.add_row(dim, files.get(dim, "-"), digest[:16], same)
    console.print(table)
    unsent = "not sent (the API's default)"
    for label, value in (
        ("model", chosen.model or "named by --judge-model"),
        ("temperature", unsent if chosen.temperature is None else f"{chosen.temperature:g}"),
        ("top_p", unsent if chosen.top_p is None else f"{chosen.top_p:g}"),
        ("consistency", "Q1 twice" if chosen.prompts.reference_consistency_bug else "Q1 and Q2"),
        ("replies", f"{chosen.replies} rule"),
        ("source", f"{chosen.source.get('repository', chosen.prompts.source)} "
                   f"{chosen.source.get('commit') or ''}".strip()),
    ):  # fmt: skip
        console.print(f"{label}: {value}", markup=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")
