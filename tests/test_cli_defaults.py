"""The CLI's defaults are the library's: every option of `train`, `eval run` and `eval judge`
either maps to a field of the library's config object with the same default, or is named here
as the CLI's own (so a new option cannot silently take another default)."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import typer

from videopanda_cluster.cli import app
from videopanda_cluster.eval.config import EvalConfig
from videopanda_cluster.eval.judge import JudgeConfig
from videopanda_cluster.eval.protocol import builtin_protocol
from videopanda_cluster.jobs.config import JobConfig
from videopanda_cluster.train.config import WARMUP_GROUPS, RecipeConfig


def _command(*path: str) -> click.Command:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _defaults(*path: str) -> dict[str, Any]:
    return {p.name: p.default for p in _command(*path).params}


def test_train_defaults_are_the_recipe_configs():
    own = {"corpus", "output", "stage"}  # run_recipe's arguments, not options
    renamed = {"gpu": "use_gpu", "ablate": "ablations", "warmup_steps": "warmup"}
    as_field = {"ablate": lambda v: tuple(v or ()), "warmup_steps": lambda v: v or None}
    as_field["stage_steps"] = as_field["ablate"]  # a list of STAGE=N, none by default
    as_field["stage_set"] = as_field["ablate"]  # a list of STAGE.SETTING=NUMBER, none by default
    as_field["stage_precision"] = as_field["ablate"]  # a list of STAGE=PRECISION, none by default
    library = RecipeConfig()
    fields = {f.name for f in dataclasses.fields(RecipeConfig)}
    checked = set()
    for name, default in _defaults("train").items():
        if name in own:
            continue
        if name == "warmup_group":  # a field of the warm-up's own config: None means its default
            from videopanda_cluster.train.warmup import WarmupConfig

            assert default is None and WarmupConfig().groups == WARMUP_GROUPS
            continue
        field = renamed.get(name, name)
        assert field in fields, f"--{name} maps to no RecipeConfig field"
        value = as_field.get(name, lambda v: v)(default)
        assert value == getattr(library, field), f"--{name}: CLI {default!r} vs library"
        checked.add(field)
    # every option a CLI user would miss is named: the rest are the library's own
    assert fields - checked == {"threads"}


def test_eval_run_defers_to_run_evals_defaults():
    """Job settings default to None in the CLI (a --config file, then run_eval's EvalConfig,
    then JobConfig decide), and the help shows EvalConfig's values."""
    own = {"benchmark", "data_root", "run_id", "config"}
    command = _command("eval", "run")
    for param in command.params:
        if param.name in own:
            continue
        assert param.name in JobConfig.model_fields, f"--{param.name} is no JobConfig field"
        expected = (
            EvalConfig()
            .job_settings({})
            .get(param.name, JobConfig.model_fields[param.name].default)
        )
        assert param.default in (None, expected), f"--{param.name}: {param.default!r}"
        if param.name in {f.name for f in dataclasses.fields(EvalConfig)}:
            assert f"(default {expected})" in param.help
    assert EvalConfig().job_settings({"max_new_tokens": 4}) == {"max_new_tokens": 4}


def test_eval_judge_defaults_are_the_judge_configs():
    own = {"run", "output", "subset", "benchmark", "prompts", "reference_consistency_bug"}
    own |= {"allow_failures", "protocol"}
    renamed = {"judge_model": "model"}
    builtin = builtin_protocol()
    for name, default in _defaults("eval", "judge").items():
        if name in own:
            continue
        if name in ("temperature", "top_p"):  # None: the protocol's, the config's for builtin
            assert default is None
            assert getattr(builtin, name) == JudgeConfig.model_fields[name].default
            continue
        field = JudgeConfig.model_fields.get(renamed.get(name, name))
        assert field is not None, f"--{name} maps to no JudgeConfig field"
        if field.is_required():
            assert default is None
        else:
            assert default == field.default, f"--{name}: CLI {default!r} vs {field.default!r}"
