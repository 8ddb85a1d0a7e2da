"""The Dockerfile, checked without a Docker engine: its structure, and its start command and health check run here.

No image is built in these tests (no Docker engine runs on our machines): the start command and the exact
HEALTHCHECK command run on this machine against the real app, with the Dockerfile's environment.
"""

from __future__ import annotations

import json
import os
import re
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
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # python:3.11-slim's and Debian's
# Set by the Dockerfile for its own folders; running the app here keeps this machine's values.
IMAGE_PATHS = {"PATH", "VIRTUAL_ENV", "HOME", "MPLCONFIGDIR", "GRADIO_TEMP_DIR"}


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


def build_arguments(steps: list[tuple[str, str]]) -> dict[str, str]:
    """Every ARG name=default of the Dockerfile (before and after FROM)."""
    defaults = {}
    for arguments in arguments_of(steps, "ARG"):
        name, _, default = arguments.partition("=")
        defaults[name.strip()] = default.strip()
    return defaults


def expand(value: str, variables: dict[str, str]) -> str:
    """$NAME and ${NAME} replaced as Docker does for ENV and FROM (unknown names: empty)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), ""), value)


def environment(steps: list[tuple[str, str]]) -> dict[str, str]:
    """Every ENV key=value of the Dockerfile, in order, with earlier values expanded ($PATH: the base's PATH)."""
    env = {"PATH": BASE_PATH}
    for arguments in arguments_of(steps, "ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = expand(value, env)
    return env


def app_environment(steps: list[tuple[str, str]]) -> dict[str, str]:
    """The Dockerfile's ENV less the variables that name the image's own folders (its venv, HOME, caches)."""
    return {k: v for k, v in environment(steps).items() if k not in IMAGE_PATHS}


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


def test_base_image_is_a_build_argument_that_defaults_to_python_311_slim(steps):
    names = [name for name, _ in steps]
    assert set(names[: names.index("FROM")]) == {"ARG"}, "only ARGs may come before FROM"
    for stage in arguments_of(steps, "FROM"):
        base = stage.split()[0]
        assert base.startswith("$"), "FROM names a build argument, so that scripts/image.sh can give a local base"
        assert expand(base, build_arguments(steps)).split("@")[0] == "python:3.11-slim"


def test_torch_is_the_pinned_cpu_build_installed_before_the_requirements(steps):
    runs = arguments_of(steps, "RUN")
    torch_step = next(i for i, r in enumerate(runs) if "torch==" in r)
    requirements_step = next(i for i, r in enumerate(runs) if "-r requirements.txt" in r)
    assert torch_step < requirements_step
    words = shlex.split(runs[torch_step].split("&&")[-1])
    index = words[words.index("--index-url") + 1]
    assert index.startswith("$"), "the torch index is a build argument"
    assert expand(index, build_arguments(steps)) == "https://download.pytorch.org/whl/cpu"
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


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    names = [name for name, _ in steps]
    return steps[len(names) - names[::-1].index("FROM") :]


def test_builtin_weights_are_copied_into_the_image(steps):
    """From the context into the files stage, and from there to /app/weights (WORKDIR /app)."""
    copies = [shlex.split(a) for a in arguments_of(steps, "COPY")]
    (staged,) = [c[-1] for c in copies if "--from=files" not in c and "weights/" in c[:-1]]
    (final,) = [c[-1] for c in copies if "--from=files" in c and staged in c[1:-1]]
    assert final.rstrip("/") in ("weights", "/app/weights")
    assert arguments_of(final_stage(steps), "WORKDIR") == ["/app"]
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert not [p for p in ignored if p.strip().rstrip("/") in ("weights", "weights/*", "weights/**")]


def test_every_copied_path_exists_in_the_repository(steps):
    for arguments in arguments_of(steps, "COPY"):
        if "--from=" in arguments:
            continue
        parts = [p for p in shlex.split(arguments) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_a_cjk_font_is_installed(steps):
    installs = [r for r in arguments_of(steps, "RUN") if "apt-get install" in r]
    assert any(font in r.split() for r in installs for font in ("fonts-noto-cjk", "fonts-wqy-microhei"))


def test_what_the_app_serves_comes_through_the_stage_that_sets_its_modes(steps):
    """Only requirements.txt (made read-only after use) comes into the image straight from the build context."""
    first, second = [i for i, (name, _) in enumerate(steps) if name == "FROM"]
    assert steps[first][1].split()[1:] == ["AS", "files"]
    assert any("chmod -R u=rwX,go=rX /files" in r for r in arguments_of(steps[first:second], "RUN"))
    direct = [shlex.split(a) for a in arguments_of(final_stage(steps), "COPY") if "--from=files" not in a]
    assert direct == [["requirements.txt", "./"]]
    assert any("chmod 644 requirements.txt" in r for r in arguments_of(final_stage(steps), "RUN"))


def test_python_packages_go_into_a_venv_on_the_path(steps):
    runs = arguments_of(steps, "RUN")
    venv_step = next(i for i, r in enumerate(runs) if "python3 -m venv /opt/venv" in r)
    assert all(i > venv_step for i, r in enumerate(runs) if "pip install" in r)
    assert environment(steps)["PATH"].split(":")[0] == "/opt/venv/bin"


def test_pip_settings_come_as_build_secrets_and_are_not_stored_in_the_image(steps):
    installs = [r for r in arguments_of(steps, "RUN") if "pip install" in r]
    assert installs and all("--mount=type=secret,id=pipconf" in r for r in installs)
    stored = set(build_arguments(steps)) | set(environment(steps))
    assert not stored & {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT", "PIP_CONFIG_FILE", "PIP_TRUSTED_HOST"}


def test_the_apps_writable_paths_are_fixed_and_open_to_any_uid(steps):
    """Hugging Face Spaces run the image as uid 1000, not as the Dockerfile's user: no path may be that user's."""
    env = environment(steps)
    opened = [shlex.split(r.partition("install -d -m 1777")[2].split("&&")[0])
              for r in arguments_of(steps, "RUN") if "install -d -m 1777" in r]
    assert opened, "no folder is made writable for any uid"
    for name in ("HOME", "MPLCONFIGDIR"):
        assert env[name] in opened[0], f"{name}={env[name]} is not made writable for any uid"
    assert env["GRADIO_TEMP_DIR"].startswith("/tmp/")


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
    env = {**os.environ, **app_environment(steps), "GRADIO_SERVER_PORT": str(port)}
    return subprocess.run(here(healthcheck_command(steps)), env=env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


@contextmanager
def started_app(steps, weights_dir: Path, **extra_env: str) -> Iterator[int]:
    """The Dockerfile's CMD, run in the repository with its ENV, on a free port; yields the port."""
    port = free_port()
    env = {**os.environ, **app_environment(steps), "GRADIO_SERVER_PORT": str(port), "ATTNVIZ_WEIGHTS": str(weights_dir),
           "PYTHONUNBUFFERED": "1", **extra_env}
    process = subprocess.Popen(here(start_command(steps)), cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", process, STARTUP_TIMEOUT_S)
        yield port
    finally:
        stop(process)


def app_reads_the_password() -> bool:
    return "ATTNVIZ_PASSWORD" in (REPO / "attnviz" / "serve.py").read_text(encoding="utf-8")  # app.py's main


@pytest.fixture(scope="module")
def app_port(steps, tiny_weights_dir) -> Iterator[int]:
    """The app as the image starts it, with a password set (used once attnviz.serve reads ATTNVIZ_PASSWORD)."""
    with started_app(steps, tiny_weights_dir, ATTNVIZ_USER="tester", ATTNVIZ_PASSWORD="s3cret") as port:
        yield port


@pytest.mark.slow
def test_healthcheck_passes_against_the_started_app(steps, app_port):
    result = health(steps, app_port)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_listens(steps):
    assert health(steps, free_port()).returncode != 0


@pytest.mark.slow
@pytest.mark.skipif(not app_reads_the_password(), reason="attnviz.serve does not read ATTNVIZ_PASSWORD yet")
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
