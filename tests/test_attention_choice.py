"""The attention choice is one type (model.config.AttentionImpl): the job config, the model, the
training recipe and every CLI command accept exactly its values."""

from __future__ import annotations

import pydantic
import pytest
from typer.testing import CliRunner

from videopanda_cluster.cli import app
from videopanda_cluster.jobs.config import JobConfig
from videopanda_cluster.model.config import ATTENTION_IMPLS, VideoPandaConfig
from videopanda_cluster.model.modeling import VideoPanda
from videopanda_cluster.train.config import RecipeConfig

# each command with the arguments it needs besides --attention
COMMANDS = {
    "qa": ["qa", "inputs"],
    "caption": ["caption", "inputs"],
    "features": ["features", "inputs"],
    "eval run": ["eval", "run", "--benchmark", "msvd-qa", "--data-root", "data"],
    "train": ["train", "--corpus", "corpus", "--output", "store"],
}


def _words(text: str) -> str:
    return " ".join(w for w in text.split() if w not in "│╭╮╰╯")


@pytest.mark.parametrize("args", COMMANDS.values(), ids=COMMANDS)
def test_every_command_offers_exactly_the_attention_choices(args):
    assert ATTENTION_IMPLS == ("eager", "sdpa")
    path = args[: 2 if args[0] == "eval" else 1]
    usage = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert "<eager|sdpa>" in usage.output
    result = CliRunner().invoke(app, [*args, "--attention", "flash"], terminal_width=200)
    assert result.exit_code == 2
    assert "'flash' is not one of 'eager', 'sdpa'" in _words(result.output)


def test_the_job_config_model_and_recipe_reject_another_attention(tmp_path):
    for name in ATTENTION_IMPLS:
        assert JobConfig(kind="qa", inputs="x", attention=name).attention == name
    with pytest.raises(pydantic.ValidationError, match="attention"):
        JobConfig(kind="qa", inputs="x", attention="flash")
    tiny = VideoPandaConfig(
        stab_width=64, stab_heads=2, gstra_heads=2, image_size=56, num_frames=4,
        llm={"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2},
    )  # fmt: skip
    model = VideoPanda(tiny)
    with pytest.raises(ValueError, match="attention must be eager or sdpa, got 'flash'"):
        model.set_attention("flash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attention must be eager or sdpa, got 'flash'"):
        RecipeConfig(attention="flash")  # type: ignore[arg-type]
