"""docs/operations.md matches the repository: every `videopanda` command in its code blocks exists
with the flags it uses (checked against the CLI's --help), and every repository path, kustomize
directory, make target and relative link it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.cli_usage import cli_problems, code_lines, markdown_commands

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
SECTIONS = (
    "Sizing",
    "1M-video captioning job",
    "Head loss",
    "Cost and throughput",
    "Monitoring",
    "Troubleshooting",
    "Out of memory",
    "Stuck decodes",
    "Storage throttling",
)
REPO_PATH = re.compile(r"(?<![\w./$-])(?:deploy|docs|bench|scripts|src|tests)/[^\s`'\")\]]*")
MANIFEST_VERBS = {"apply", "create", "delete", "diff", "replace"}  # kubectl verbs taking -k/-f


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # not shell (e.g. YAML with an apostrophe)
        return line.split()


def _repo_paths(markdown: str) -> set[str]:
    paths = set()
    for match in REPO_PATH.findall(markdown):
        path = match.rstrip(".,:;")
        if not re.search(r"[<>{}*$]", path):
            paths.add(path)
    return paths


def path_problems(markdown: str, root: Path = ROOT) -> list[str]:
    """Repository paths, `kubectl -k/-f` and `kustomize build` arguments, make targets and
    relative links that do not exist."""
    problems = [
        f"no such path: {p}" for p in sorted(_repo_paths(markdown)) if not (root / p).exists()
    ]
    for line in code_lines(markdown):
        tokens = _tokens(line)
        for i, token in enumerate(tokens[:-1]):
            arg = tokens[i + 1]
            manifest = token in ("-k", "-f", "--kustomize", "--filename") and bool(
                tokens[:1] == ["kubectl"] and MANIFEST_VERBS & set(tokens)
            )
            built = token == "build" and i > 0 and tokens[i - 1] == "kustomize"
            local = arg != "-" and "://" not in arg
            if (manifest or built) and local and not (root / arg).exists():
                problems.append(f"`{line}`: no such path {arg}")
        if tokens[:1] == ["make"]:
            problems += _make_problems(tokens, line, root)
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", markdown):
        if "://" not in target and not (root / "docs" / target).exists():
            problems.append(f"broken link: {target}")
    return problems


def _make_problems(tokens: list[str], line: str, root: Path) -> list[str]:
    directory, targets, args = root, [], iter(tokens[1:])
    for arg in args:
        if arg == "-C":
            directory = root / next(args, "")
        elif not arg.startswith("-") and "=" not in arg:
            targets.append(arg)
    makefile = directory / "Makefile"
    if not makefile.is_file():
        return [f"`{line}`: no Makefile in {directory.relative_to(root) or '.'}"]
    rules = set(re.findall(r"^([\w.-]+(?:[ \t]+[\w.-]+)*)[ \t]*:(?!=)", makefile.read_text(), re.M))
    defined = {name for rule in rules for name in rule.split()}
    return [f"`{line}`: no make target {t} in {makefile.relative_to(root)}" for t in targets
            if t not in defined]  # fmt: skip


# --- the checkers themselves ----------------------------------------------------------------------


def test_command_extraction_handles_prompts_continuations_pipes_and_yaml():
    markdown = (
        "text `videopanda ignored --x` outside code\n"
        "```bash\n"
        "$ videopanda status JOB --output az://c/p --json | jq .committed_videos\n"
        "videopanda caption az://videos/corpus \\\n"
        "    --job-id run-1 --shard-size 64  # comment --not-a-flag\n"
        "kubectl exec pod -- videopanda eval run --benchmark msvd-qa --data-root d\n"
        "```\n"
        "```yaml\n"
        "entrypoint: videopanda caption --config /config/job.yaml --address auto\n"
        "image: videopanda:cuda\n"
        "```\n"
    )
    assert markdown_commands(markdown) == [
        ["videopanda", "status", "JOB", "--output", "az://c/p", "--json"],
        ["videopanda", "caption", "az://videos/corpus", "--job-id", "run-1", "--shard-size", "64"],
        ["videopanda", "eval", "run", "--benchmark", "msvd-qa", "--data-root", "d"],
        ["videopanda", "caption", "--config", "/config/job.yaml", "--address", "auto"],
    ]


def _problems(command: str) -> str:
    return " ".join(cli_problems(shlex.split(command)))


def test_the_command_checker_reports_planted_mistakes():
    assert _problems("videopanda caption az://v/p --config c.yaml --job-id j --address auto") == ""
    assert _problems("videopanda qa in --question 'a?' --question b --no-feature-cache") == ""
    assert _problems("videopanda eval run --benchmark msvd-qa --data-root d --run-id r") == ""
    assert "--no-such-flag" in _problems("videopanda caption x --no-such-flag")
    # eval run names its job with --run-id; --job-id belongs to caption, qa and features
    assert "--job-id" in _problems("videopanda eval run --job-id x")
    assert "no subcommand 'frobnicate'" in _problems("videopanda frobnicate")
    assert "no subcommand 'runn' in `videopanda eval`" in _problems("videopanda eval runn")
    assert "`videopanda eval` needs a subcommand" in _problems("videopanda eval")


def test_the_path_checker_reports_planted_mistakes(tmp_path):
    (tmp_path / "deploy" / "k8s" / "base").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "Makefile").write_text("image image-cuda: Dockerfile\n\tbuild\nTAG := x\n")
    good = (
        "See deploy/k8s/base and deploy/k8s/<overlay>.\n"
        "```bash\nkubectl apply -k deploy/k8s/base\nmake image image-cuda\n```\n"
    )
    assert path_problems(good, tmp_path) == []
    bad = (
        "See deploy/k8s/overlays/nope.\n[pipeline](pipeline.md)\n"
        "```bash\nkubectl apply -k deploy/k8s/missing\nmake push\nmake TAG\n```\n"
    )
    found = " ".join(path_problems(bad, tmp_path))
    for expected in ("deploy/k8s/overlays/nope", "deploy/k8s/missing", "target push", "target TAG",
                     "pipeline.md"):  # fmt: skip
        assert expected in found


# --- the document ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_operations_doc_has_its_sections(doc):
    headings = [line.lstrip("#").strip() for line in doc.splitlines() if line.startswith("#")]
    for section in SECTIONS:
        assert any(section.lower() in h.lower() for h in headings), section


def test_every_videopanda_command_in_the_doc_exists_with_its_flags(doc):
    found = markdown_commands(doc)
    assert len(found) >= 10
    assert {"caption", "status"} <= {c[1] for c in found if len(c) > 1}
    problems = [p for c in found for p in cli_problems(c)]
    assert problems == []


def test_every_path_target_and_link_in_the_doc_exists(doc):
    assert any(p.startswith("deploy/k8s/overlays/") for p in _repo_paths(doc))
    assert path_problems(doc) == []
