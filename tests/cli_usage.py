"""How the repository's texts use the `videopanda` CLI: finding its command lines in shell
snippets, Markdown code blocks and manifests, and checking each against the real CLI (every
subcommand exists, every --flag is in its --help). Shared by the deploy and docs tests."""

from __future__ import annotations

import re
import shlex

import typer
import typer.rich_utils
from typer.testing import CliRunner

from videopanda_cluster.cli import app

SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", "$(", "`"}
REDIRECTIONS = {">", ">>", "<", "2>", "2>>", "&>"}
IMAGE = re.compile(r"(\S+/)?videopanda-cluster(-cuda)?:\S+")


def code_lines(markdown: str) -> list[str]:
    """The logical lines of the fenced code blocks (backslash continuations joined, a leading
    ``$ `` prompt removed)."""
    lines: list[str] = []
    fenced = False
    pending = ""
    for raw in markdown.splitlines():
        if raw.lstrip().startswith("```"):
            fenced, pending = not fenced, ""
            continue
        if not fenced:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line.removeprefix("$ "))
    return lines


def _is_cli(token: str) -> bool:
    return token == "videopanda" or token.endswith("/videopanda")


def command_lines(text: str) -> list[list[str]]:
    """Each `videopanda ...` command in a shell command line, as argv without redirections or
    comments: at the start of a command (also ``.venv/bin/videopanda``), after ``--`` as in
    ``kubectl exec``, after a YAML key (``entrypoint: videopanda ...``), or as the arguments of
    our image in ``docker run``. ``kubectl -n videopanda`` (the namespace) is not one."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # not shell (e.g. YAML with an apostrophe)
        tokens = text.split()
    segments, current = [], []
    for token in [*tokens, ";"]:
        if token in SHELL_OPERATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    commands = []
    for segment in segments:
        argv, target = [], False
        for token in segment:
            if token in REDIRECTIONS:
                target = True  # the next token is the redirection's file
            elif target:
                target = False
            else:
                argv.append(token)
        for i, token in enumerate(argv):
            before = argv[i - 1] if i else ""
            if _is_cli(token) and (i == 0 or before == "--" or before.endswith(":")):
                commands.append(["videopanda", *argv[i + 1 :]])
                break
            if IMAGE.fullmatch(token) and "run" in argv:
                commands.append(["videopanda", *argv[i + 1 :]])
                break
    return commands


def markdown_commands(markdown: str) -> list[list[str]]:
    """Every `videopanda ...` command in the code blocks of a Markdown text."""
    return [argv for line in code_lines(markdown) for argv in command_lines(line)]


def cli_problems(argv: list[str]) -> list[str]:
    """Why ``argv`` (a `videopanda ...` command) would not parse: unknown subcommand or flags.

    Runs ``videopanda <subcommand> --help`` and looks every ``--flag`` up in its output."""
    command = typer.main.get_command(app)
    path = []
    for token in argv[1:]:
        if not hasattr(command, "commands") or token.startswith("-"):  # not a group
            break
        if token not in command.commands:
            return [f"{' '.join(argv)}: no subcommand {token!r} in `videopanda {' '.join(path)}`"]
        command = command.commands[token]
        path.append(token)
    if hasattr(command, "commands") and argv[1:] != ["--help"]:
        return [f"{' '.join(argv)}: `videopanda {' '.join(path)}` needs a subcommand"]
    typer.rich_utils.MAX_WIDTH = 400  # no truncated option names in the help
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="videopanda")
    if result.exit_code != 0:
        return [f"videopanda {' '.join(path)} --help exited {result.exit_code}"]
    help_flags = set(re.findall(r"--[a-z][a-z0-9-]*", result.output))
    used = {token.split("=", 1)[0] for token in argv[1:] if token.startswith("--")}
    return [
        f"{' '.join(argv)}: `videopanda {' '.join(path)}` has no {flag}"
        for flag in sorted(used - help_flags)
    ]
