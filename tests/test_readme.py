"""The READMEs' code runs as written: their Python blocks run, and every command they show exists.

A block that cannot run here is marked on the line right before it with ``<!-- not run: REASON -->``;
the reason must be given. A Python block that talks to ``http://127.0.0.1:7860/`` runs against a real
app that the test starts on a free loopback port. Commands are taken from the ```bash blocks and from
inline code that starts like a command (``.venv/bin/...``, ``bash ...``, ``python ...``); each one must
run after the quick start without an activated virtual environment.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import serving

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", REPO / "bench" / "README.md"]
APP_URL = "http://127.0.0.1:7860/"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*not run\b:?(.*?)-->", re.S)
INLINE = re.compile(r"(?<!`)`((?:\.venv/bin/|python3? |pip3? |attnviz |bash |source )[^`]*)`(?!`)")
NEEDS_THE_VENV = {"python", "python3", "pip", "pip3", "attnviz"}
OUTPUT_OPTIONS = {"--out", "--json"}  # their values are written, so they need not exist
OPERATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Block:
    document: Path
    line: int
    language: str
    code: str
    not_run: str | None  # the reason given by the marker before it, "" when the marker gives none

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


@dataclass(frozen=True)
class Command:
    where: str
    tokens: tuple[str, ...]
    not_run: bool

    def __str__(self) -> str:
        return shlex.join(self.tokens)


def read_blocks(document: Path) -> list[Block]:
    text = document.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        blocks.append(Block(document, text.count("\n", 0, match.start()) + 1, match[1], match[2],
                            marker[1].strip() if marker else None))
    return blocks


def prose_of(document: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) for the lines outside fenced blocks."""
    text = document.read_text(encoding="utf-8")
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            yield number, line


def split_commands(where: str, line: str, not_run: bool) -> Iterator[Command]:
    tokens = shlex.split(line, comments=True)
    current: list[str] = []
    for token in [*tokens, ";"]:
        if token in OPERATORS:
            while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):  # VAR=value command
                current.pop(0)
            if current:
                yield Command(where, tuple(current), not_run)
            current = []
        else:
            current.append(token)


def all_blocks() -> list[Block]:
    return [block for document in DOCUMENTS for block in read_blocks(document)]


def all_commands() -> list[Command]:
    commands = []
    for block in all_blocks():
        if block.language not in ("bash", "sh", "shell", "console"):
            continue
        for offset, line in enumerate(block.code.replace("\\\n", " ").splitlines(), 1):
            commands.extend(split_commands(f"{block.where}+{offset}", line, block.not_run is not None))
    for document in DOCUMENTS:
        for number, line in prose_of(document):
            for match in INLINE.finditer(line):
                where = f"{document.relative_to(REPO)}:{number}"
                commands.extend(split_commands(where, match[1], False))
    return commands


def python_blocks() -> list[Block]:
    return [block for block in all_blocks() if block.language == "python"]


BLOCKS = all_blocks()
COMMANDS = all_commands()
RUNNABLE_PYTHON = [block for block in python_blocks() if block.not_run is None]


# --------------------------------------------------------------------------- what the READMEs contain


def test_the_readme_has_python_blocks_to_run_and_commands_to_check():
    assert any("explain(" in block.code for block in RUNNABLE_PYTHON)
    assert any(APP_URL in block.code for block in RUNNABLE_PYTHON)
    shown = {str(command) for command in COMMANDS}
    assert {"bash scripts/app.sh", "bash scripts/test.sh", ".venv/bin/python -m attnviz.weights list"} <= shown
    assert any(command.where.startswith("bench/") for command in COMMANDS)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.not_run is not None], ids=lambda b: b.where)
def test_a_block_that_is_not_run_says_why(block):
    assert len(block.not_run) >= 10, f"{block.where}: give the reason: <!-- not run: needs ... -->"


# --------------------------------------------------------------------------- commands


def program_problem(command: Command) -> str | None:
    """What is wrong with the program a command runs and the files it names, or None."""
    program, *args = command.tokens
    if program in NEEDS_THE_VENV:
        return (f"{program!r} needs an activated virtual environment; write .venv/bin/{program} "
                f"(or bash scripts/...)")
    if program in ("bash", "sh", "source", "."):
        if not args or not (REPO / args[0]).is_file():
            return f"{program} runs {args[0] if args else 'nothing'}, which is not in the repository"
        return None
    if "/" in program:
        if not (REPO / program).is_file() or not os.access(REPO / program, os.X_OK):
            return f"{program} is not an executable file here (the quick start creates .venv/bin/...)"
    elif shutil.which(program) is None and not command.not_run:
        return f"{program} is not installed here; mark the block <!-- not run: needs {program} -->"
    if Path(program).name.startswith("python") and args:
        if args[0] == "-m":
            if len(args) < 2 or importlib.util.find_spec(args[1]) is None:
                return f"module {args[1] if len(args) > 1 else '?'} does not exist"
        elif not args[0].startswith("-") and not (REPO / args[0]).is_file():
            return f"script {args[0]} is not in the repository"
    if not command.not_run:
        for previous, arg in zip(command.tokens, command.tokens[1:], strict=False):
            looks_like_a_path = "/" in arg or re.search(r"\.(png|jpg|py|sh|pth|safetensors|txt|json)$", arg)
            if previous in OUTPUT_OPTIONS or arg.startswith("-") or not looks_like_a_path:
                continue
            if not (REPO / arg).exists():
                return f"{arg} does not exist in the repository (mark the block <!-- not run: ... --> if it is yours)"
    return None


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where} {c}")
def test_each_command_runs_its_program_module_and_files_as_written(command):
    problem = program_problem(command)
    assert problem is None, f"{command.where}: {command}: {problem}"


def help_command(command: Command) -> tuple[str, ...] | None:
    """The command up to its subcommand, with --help: None for commands that are not attnviz's or the repo's."""
    program, *args = command.tokens
    if program.startswith(".venv/bin/python") and args:
        head = args[:2] if args[0] == "-m" else args[:1]
    elif program == ".venv/bin/attnviz":
        head = []
    else:
        return None
    rest = args[len(head):]
    subcommand = []
    for arg in rest:
        if arg.startswith("-"):
            break
        if re.fullmatch(r"[a-z]+", arg):
            subcommand.append(arg)
    return (program, *head, *subcommand, "--help")


def help_commands() -> dict[tuple[str, ...], list[Command]]:
    found: dict[tuple[str, ...], list[Command]] = {}
    for command in COMMANDS:
        key = help_command(command)
        if key is not None:
            found.setdefault(key, []).append(command)
    return found


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ATTNVIZ_WEIGHTS"}
    env.update(GRADIO_ANALYTICS_ENABLED="False", MPLBACKEND="Agg", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost")
    return env


@pytest.mark.slow
@pytest.mark.parametrize(("help_args", "commands"), list(help_commands().items()),
                         ids=[shlex.join(key) for key in help_commands()])
def test_each_option_a_command_uses_is_in_its_help(help_args, commands):
    done = subprocess.run(help_args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{shlex.join(help_args)}: {done.stderr[-2000:]}"
    for command in commands:
        for option in (token.split("=", 1)[0] for token in command.tokens if token.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", done.stdout), (
                f"{command.where}: {command}: {option} is not an option of {shlex.join(help_args[:-1])}")


# Commands that take seconds are run as written (those that end in --help already are, above).
RUN_AS_WRITTEN = [command for command in COMMANDS
                  if command.tokens[:4] in ((".venv/bin/python", "-m", "attnviz.weights", "list"),
                                            (".venv/bin/python", "-m", "attnviz.weights", "verify"))]


@pytest.mark.slow
@pytest.mark.parametrize("command", RUN_AS_WRITTEN, ids=lambda c: f"{c.where} {c}")
def test_cheap_commands_run_as_written(command):
    done = subprocess.run(command.tokens, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{command.where}: {command}: {done.stdout[-1000:]}{done.stderr[-2000:]}"
    assert done.stdout.strip()


def test_the_weights_commands_are_among_those_run():
    run = {str(command) for command in RUN_AS_WRITTEN}
    assert {".venv/bin/python -m attnviz.weights list", ".venv/bin/python -m attnviz.weights verify"} <= run


# --------------------------------------------------------------------------- Python blocks


def claims(code: str) -> list[str]:
    """What a block's comments say it prints: the 'key': 'value' pairs in the comment of a print line."""
    found = []
    for line in code.splitlines():
        if line.lstrip().startswith("print(") and "#" in line:
            found += re.findall(r"'[^']*': '[^']*'", line.split("#", 1)[1])
    return found


def run_python(block: Block, code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{block.where}: {done.stderr[-3000:]}"
    for claim in claims(code):
        assert claim in done.stdout, f"{block.where}: prints {done.stdout[-500:]!r}, the README says {claim}"


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in RUNNABLE_PYTHON if APP_URL not in b.code], ids=lambda b: b.where)
def test_python_block_runs(block):
    run_python(block, block.code)


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    """``python app.py`` with the repository's own weights (the built-in set), on a free loopback port."""
    with serving("app.py", env=subprocess_env()) as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in RUNNABLE_PYTHON if APP_URL in b.code], ids=lambda b: b.where)
def test_python_block_against_the_app_runs(block, app_url):
    run_python(block, block.code.replace(APP_URL, app_url))


def test_the_performance_tables_are_those_bench_report_writes_from_the_results():
    """No benchmark figure in the README is copied by hand: rewriting its tables from bench/results changes
    nothing (after a benchmark run: bench/report.py --readme README.md)."""
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    readme = (REPO / "README.md").read_text()
    assert report.readme_text(readme, REPO / "bench" / "results") == readme
