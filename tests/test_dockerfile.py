"""The Dockerfile, checked without a Docker engine: its structure, and its start command and health check run here.

No image is built in these tests (no Docker engine runs on our machines): the start command and the exact
HEALTHCHECK command run on this machine against the real app, with the Dockerfile's environment.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from servers import free_port, stop, wait_until_serving

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
STARTUP_TIMEOUT_S = 600  # a ceiling, not a wait: on a machine busy training, importing torch and gradio is slow
COMMAND_TIMEOUT_S = 120


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments and blank lines dropped."""
    result, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].strip() + " "
            continue
        keyword, _, arguments = (current + stripped).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        current = ""
    return result


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def arguments_of(steps: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for name, arguments in steps if name == keyword]


def environment(steps: list[tuple[str, str]]) -> dict[str, str]:
    """Every ENV key=value of the Dockerfile, in order."""
    env = {}
    for arguments in arguments_of(steps, "ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def healthcheck_command(steps: list[tuple[str, str]]) -> list[str]:
    (arguments,) = arguments_of(steps, "HEALTHCHECK")
    return json.loads(arguments[arguments.index("CMD ") + 4 :])


def start_command(steps: list[tuple[str, str]]) -> list[str]:
    (arguments,) = arguments_of(steps, "CMD")
    return json.loads(arguments)


def here(command: list[str]) -> list[str]:
    """The image's command with this interpreter for ``python``."""
    return [sys.executable if part == "python" else part for part in command]


# --------------------------------------------------------------------------- structure


def test_base_image_is_python_311_slim(steps):
    assert steps[0][0] == "FROM"
    assert steps[0][1].split("@")[0] == "python:3.11-slim"


def test_torch_is_the_pinned_cpu_build_installed_before_the_requirements(steps):
    runs = arguments_of(steps, "RUN")
    torch_step = next(i for i, r in enumerate(runs) if "torch==" in r)
    requirements_step = next(i for i, r in enumerate(runs) if "-r requirements.txt" in r)
    assert torch_step < requirements_step
    words = runs[torch_step].split()
    assert words[words.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    pins = {w.split("==")[0]: w.split("==")[1] for w in words if "==" in w}
    assert set(pins) == {"torch", "torchvision"}
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    wanted = {r.name: r.specifier for r in map(Requirement, (x for x in lines if x and not x.startswith("#")))}
    for name, version in pins.items():
        assert wanted[name].contains(version), f"{name}=={version} does not meet requirements.txt's {wanted[name]}"


def test_app_runs_as_a_non_root_user(steps):
    names = [name for name, _ in steps]
    users = [arguments for name, arguments in steps[: names.index("CMD")] if name == "USER"]
    assert users, "no USER before CMD: the app would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_port_7860_is_exposed(steps):
    assert "7860" in " ".join(arguments_of(steps, "EXPOSE")).replace("/tcp", "").split()


def test_gradio_listens_on_all_interfaces_without_analytics(steps):
    env = environment(steps)
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0"
    assert env["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert env.get("GRADIO_SERVER_PORT", "7860") == "7860"


def test_builtin_weights_are_copied_into_the_image(steps):
    copies = [shlex.split(a) for a in arguments_of(steps, "COPY")]
    weights = [c for c in copies if any(s.rstrip("/") == "weights" for s in c[:-1])]
    assert weights and weights[0][-1].rstrip("/") in ("weights", "/app/weights")
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert not [p for p in ignored if p.strip().rstrip("/") in ("weights", "weights/*", "weights/**")]


def test_every_copied_path_exists_in_the_repository(steps):
    for arguments in arguments_of(steps, "COPY"):
        parts = [p for p in shlex.split(arguments) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_a_cjk_font_is_installed(steps):
    installs = [r for r in arguments_of(steps, "RUN") if "apt-get install" in r]
    assert any(font in r.split() for r in installs for font in ("fonts-noto-cjk", "fonts-wqy-microhei"))


def test_start_command_is_python_app_py(steps):
    assert start_command(steps) == ["python", "app.py"]


def test_healthcheck_requests_the_app_over_http_in_exec_form(steps):
    command = healthcheck_command(steps)
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:" in command[2]


def test_dockerignore_keeps_the_virtualenv_and_git_history_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()}
    assert {".git", ".venv"} <= ignored


# --------------------------------------------------------------------------- the start command and the health check


def health(steps, port: int) -> subprocess.CompletedProcess:
    """The Dockerfile's exact HEALTHCHECK command, run here with the container's environment and ``port``."""
    env = {**os.environ, **environment(steps), "GRADIO_SERVER_PORT": str(port)}
    return subprocess.run(here(healthcheck_command(steps)), env=env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


@contextmanager
def started_app(steps, weights_dir: Path, **extra_env: str) -> Iterator[int]:
    """The Dockerfile's CMD, run in the repository with its ENV, on a free port; yields the port."""
    port = free_port()
    env = {**os.environ, **environment(steps), "GRADIO_SERVER_PORT": str(port), "ATTNVIZ_WEIGHTS": str(weights_dir),
           "PYTHONUNBUFFERED": "1", **extra_env}
    process = subprocess.Popen(here(start_command(steps)), cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", process, STARTUP_TIMEOUT_S)
        yield port
    finally:
        stop(process)


def app_reads_the_password() -> bool:
    return "ATTNVIZ_PASSWORD" in (REPO / "app.py").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def app_port(steps, tiny_weights_dir) -> Iterator[int]:
    """The app as the image starts it, with a password set (used once app.py reads ATTNVIZ_PASSWORD)."""
    with started_app(steps, tiny_weights_dir, ATTNVIZ_USER="tester", ATTNVIZ_PASSWORD="s3cret") as port:
        yield port


@pytest.mark.slow
def test_healthcheck_passes_against_the_started_app(steps, app_port):
    result = health(steps, app_port)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_listens(steps):
    assert health(steps, free_port()).returncode != 0


@pytest.mark.slow
@pytest.mark.skipif(not app_reads_the_password(), reason="app.py does not read ATTNVIZ_PASSWORD yet")
def test_password_from_the_environment_guards_the_app(app_port):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor())
    base = f"http://127.0.0.1:{app_port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(f"{base}/config", timeout=30)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError):
        opener.open(f"{base}/login", data=b"username=tester&password=wrong", timeout=30)
    opener.open(f"{base}/login", data=b"username=tester&password=s3cret", timeout=30)
    with opener.open(f"{base}/config", timeout=30) as response:
        assert response.status == 200
